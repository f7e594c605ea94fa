"""The anomaly segmentation node with real rclpy: started in-process (small preset, random weights, small frames)
with real publishers and subscribers in the same process, spun by a dedicated executor thread.

Every test uses a namespace of its own, so nodes (and parallel runs in the same DDS domain) never cross-talk.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from conftest import ROS_REQUIRED, require_ros

from m2a_perception.classes import CITYSCAPES_PALETTE
from m2a_perception.node import OUTPUTS, PARAMETERS, LatestFrameSlot, SequenceGaps, main, validate_parameters

ROOT = Path(__file__).resolve().parents[1]
NET = {"input_height": 64, "input_width": 128}  # keep the network input small: the suite runs on 2 CPU cores
TIMEOUT = 20.0
_ids = itertools.count()


# ------------------------------------------------------------------------------------------------------------
# Without ROS: the parameter table, the YAML file, --help


def test_yaml_holds_every_parameter_with_its_default() -> None:
    data = yaml.safe_load((ROOT / "config" / "m2a_perception.yaml").read_text())
    params = data["/**"]["ros__parameters"]
    assert list(params) == [spec.name for spec in PARAMETERS]
    for spec in PARAMETERS:
        assert params[spec.name] == spec.default and type(params[spec.name]) is type(spec.default), spec.name


def test_parameter_table_entries_are_complete() -> None:
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    for spec in PARAMETERS:
        assert spec.description.strip(), spec.name
        assert isinstance(spec.default, bool | int | float | str), spec.name
        if isinstance(spec.default, int | float) and not isinstance(spec.default, bool):
            assert spec.low is not None and spec.low <= spec.default <= spec.high, spec.name
        if spec.choices:
            assert spec.default in spec.choices, spec.name
    for key, (param, _) in OUTPUTS.items():
        assert param in names, key
    assert {s.name for s in PARAMETERS if s.read_only} >= {"backend", "model_path", "device"}
    assert validate_parameters({s.name: s.default for s in PARAMETERS}) is None


def test_help_prints_the_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for spec in PARAMETERS:
        assert spec.name in text
    assert "--params-file" in text
    assert main(["--no-such-option"]) == 2


def test_latest_frame_slot_keeps_only_the_newest() -> None:
    slot = LatestFrameSlot()
    assert slot.take(timeout=0.01) is None and slot.pending == 0
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True  # 1 and 2 replaced, never taken
    assert slot.pending == 1 and slot.dropped == 2
    assert slot.take(timeout=0) == 3 and slot.pending == 0
    # a slow consumer: a fast producer never makes more than one wait
    taken: list[int] = []

    def consume() -> None:
        while (item := slot.take(timeout=1.0)) is not None:
            taken.append(item)
            time.sleep(0.01)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(10, 110):
        slot.put(i)
        assert slot.pending <= 1
        time.sleep(0.0005)
    wait_for(lambda: slot.pending == 0, timeout=5.0)
    slot.close()
    consumer.join(timeout=5.0)
    assert taken[-1] == 109 and taken == sorted(taken)
    assert len(taken) + slot.dropped == 100 + 2


def test_sequence_gaps_count_frames_the_callback_never_saw() -> None:
    gaps = SequenceGaps()

    def info(seq: int, gid: bytes = b"a") -> dict:
        return {"publication_sequence_number": seq, "publisher_gid": {"data": gid}}

    assert gaps.see(info(1000)) == 0  # the first frame seen: history before it is not "dropped"
    assert gaps.see(info(1001)) == 0
    assert gaps.see(info(1005)) == 3
    assert gaps.see(info(7, b"b")) == 0 and gaps.see(info(9, b"b")) == 1  # per publisher
    assert gaps.see(info(1)) == 0  # a restarted publisher
    assert gaps.see(info(3)) == 1
    assert gaps.see({"publication_sequence_number": None, "publisher_gid": None}) == 0  # rmw without them
    assert gaps.see({}) == 0
    assert gaps.missed == 5


# ------------------------------------------------------------------------------------------------------------
# Harness


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


class Harness:
    """One executor thread spinning a tester node and the nodes under test."""

    def __init__(self, context: Any) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = context
        self.tester = rclpy.create_node(f"m2a_tester_{os.getpid()}", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.nodes: list[Any] = []

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def start(self, **params: Any) -> Any:
        """A node in a namespace of its own, with ``params`` overriding the defaults."""
        from rclpy.parameter import Parameter

        from m2a_perception.node import AnomalySegmentationNode

        namespace = f"/m2a_test_{os.getpid()}_{next(_ids)}"
        node = AnomalySegmentationNode(
            namespace=namespace,
            context=self.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def stop(self, node: Any) -> None:
        """Remove ``node`` from the executor and close it."""
        self.executor.remove_node(node)
        node.close()
        self.nodes.remove(node)

    def close(self) -> None:
        """Stop everything."""
        for node in list(self.nodes):
            self.stop(node)
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.tester.destroy_node()


class Outputs:
    """Subscriptions to all of a node's outputs (reliable, deep), collecting messages per topic."""

    def __init__(self, harness: Harness, node: Any, topics: dict[str, tuple[str, type]] | None = None) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from m2a.msg import AnomalySegmentation
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image

        ns = node.get_namespace()
        if topics is None:
            topics = {
                key: (topic, AnomalySegmentation if key == "result" else Image) for key, (_, topic) in OUTPUTS.items()
            }
        self.got: dict[str, list[Any]] = {key: [] for key in topics}
        self._subs = []
        for key, (topic, msg_type) in topics.items():
            self._subs.append(
                harness.tester.create_subscription(
                    msg_type, f"{ns}/{topic}", self.got[key].append, QoSProfile(depth=200)
                )
            )
        self.diagnostics: list[Any] = []
        self._subs.append(
            harness.tester.create_subscription(DiagnosticArray, f"{ns}/diagnostics", self.diagnostics.append, 10)
        )
        self.harness = harness
        wait_for(
            lambda: all(node._pubs[k].get_subscription_count() >= 1 for k in topics),
            what="the node's publishers to match the test's subscriptions",
        )

    def stamps(self, key: str) -> list[tuple[int, int, str]]:
        return [(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) for m in self.got[key]]

    def close(self) -> None:
        for sub in self._subs:
            self.harness.tester.destroy_subscription(sub)


@pytest.fixture(scope="module")
def harness(rclpy_context: Any):
    h = Harness(rclpy_context)
    yield h
    h.close()


def input_publisher(harness: Harness, node: Any, compressed: bool = False) -> Any:
    """A reliable publisher on the node's input topic, matched with its (best-effort) subscription."""
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import CompressedImage, Image

    topic = f"{node.get_namespace()}/image" + ("/compressed" if compressed else "")
    pub = harness.tester.create_publisher(CompressedImage if compressed else Image, topic, QoSProfile(depth=100))
    wait_for(lambda: pub.get_subscription_count() >= 1, what=f"the node to subscribe to {topic}")
    return pub


def header(i: int, frame_id: str = "camera") -> Any:
    from std_msgs.msg import Header

    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1_000 + i, 1_000 * i + 7
    return h


def image_msg(pixels: np.ndarray, encoding: str, hdr: Any, pad: int = 0) -> Any:
    import array

    from sensor_msgs.msg import Image

    rows = pixels.reshape(pixels.shape[0], -1)
    padded = np.zeros((rows.shape[0], rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=padded.shape[1])
    msg.header = hdr
    msg.data = array.array("B", padded.tobytes())
    return msg


def frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_array(msg: Any) -> np.ndarray:
    dtype = np.float32 if msg.encoding == "32FC1" else np.uint8
    channels = 3 if msg.encoding == "rgb8" else 1
    a = np.frombuffer(msg.data, dtype=dtype).reshape(msg.height, msg.width, channels)
    return a[..., 0] if channels == 1 else a


def diag_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


# ------------------------------------------------------------------------------------------------------------
# With ROS


@pytest.fixture(autouse=True)
def _ros_for_ros_tests(request: pytest.FixtureRequest) -> None:
    if "harness" in request.fixturenames:
        require_ros()


def test_outputs_copy_the_header_with_correct_encodings_and_sizes(harness: Harness) -> None:
    node = harness.start(**NET)
    out = Outputs(harness, node)
    pub = input_publisher(harness, node)
    h, w = 72, 120  # not the network size: outputs come back at the frame's size
    sent = []
    encodings = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "rgb8"]
    for i, encoding in enumerate(encodings):
        rgb = frame(h, w, i)
        pixels = {
            "rgb8": rgb,
            "bgr8": rgb[..., ::-1],
            "mono8": rgb[..., 0],
            "rgba8": np.dstack([rgb, np.full((h, w), 255, np.uint8)]),
            "bgra8": np.dstack([rgb[..., ::-1], np.full((h, w), 255, np.uint8)]),
        }[encoding]
        hdr = header(i, frame_id=f"cam_{i}")
        pub.publish(image_msg(np.ascontiguousarray(pixels), encoding, hdr, pad=4 * (i % 2)))
        sent.append((hdr.stamp.sec, hdr.stamp.nanosec, hdr.frame_id))
        wait_for(lambda n=i + 1: all(len(v) >= n for v in out.got.values()), what=f"the outputs of frame {i}")
    for key in OUTPUTS:
        assert out.stamps(key) == sent, key
    expected = {
        "mask": "mono8",
        "score": "32FC1",
        "semantic": "mono8",
        "semantic_color": "rgb8",
        "overlay": "rgb8",
    }
    for key, encoding in expected.items():
        for msg in out.got[key]:
            assert (msg.encoding, msg.height, msg.width) == (encoding, h, w), key
            assert len(msg.data) == msg.step * msg.height
    threshold = node.get_parameter("score_threshold").value
    for i in range(len(encodings)):
        score = as_array(out.got["score"][i])
        mask = as_array(out.got["mask"][i])
        labels = as_array(out.got["semantic"][i])
        np.testing.assert_array_equal(mask, np.where(score > threshold, 255, 0).astype(np.uint8))
        np.testing.assert_array_equal(as_array(out.got["semantic_color"][i]), CITYSCAPES_PALETTE[labels])
        result = out.got["result"][i]
        assert result.threshold == pytest.approx(threshold) and result.scoring_variant == "mask2anomaly"
        np.testing.assert_array_equal(as_array(result.anomaly_score), score)
        np.testing.assert_array_equal(as_array(result.anomaly_mask), mask)
        np.testing.assert_array_equal(as_array(result.semantic_labels), labels)
        for inst in result.instances:
            assert inst.area >= node.get_parameter("min_instance_area").value
            assert inst.bbox.x_offset + inst.bbox.width <= w and inst.bbox.y_offset + inst.bbox.height <= h
    assert node.totals["malformed"] == 0 and node.totals["errors"] == 0
    out.close()
    harness.stop(node)


def test_instances_in_the_result_message(harness: Harness) -> None:
    # a threshold below every score makes the whole frame one anomaly region: a known instance
    node = harness.start(score_threshold=-100.0, min_instance_area=10, **NET)
    out = Outputs(harness, node, topics={"result": ("anomaly/result", _result_type())})
    pub = input_publisher(harness, node)
    pub.publish(image_msg(frame(48, 80, 1), "rgb8", header(1)))
    wait_for(lambda: len(out.got["result"]) == 1, what="the result")
    (inst,) = out.got["result"][0].instances
    assert (inst.bbox.x_offset, inst.bbox.y_offset, inst.bbox.width, inst.bbox.height) == (0, 0, 80, 48)
    assert inst.area == 48 * 80 and inst.mean_score <= inst.max_score
    assert (inst.centroid_x, inst.centroid_y) == pytest.approx((39.5, 23.5))
    assert 0 <= inst.semantic_class < 19 and inst.semantic_class_name
    out.close()
    harness.stop(node)


def _result_type() -> type:
    from m2a.msg import AnomalySegmentation

    return AnomalySegmentation


@pytest.fixture(scope="module")
def compressed_node(harness: Harness):
    node = harness.start(input_transport="compressed", score_threshold=100.0, **NET)  # no anomaly anywhere
    yield node
    harness.stop(node)


def test_compressed_input(harness: Harness, compressed_node: Any) -> None:
    from sensor_msgs.msg import CompressedImage

    from m2a_perception.conversions import compressed_msg_to_rgb

    out = Outputs(harness, compressed_node)
    pub = input_publisher(harness, compressed_node, compressed=True)
    sent = []
    for i, ext in enumerate([".jpg", ".png", ".jpg"]):
        ok, buf = cv2.imencode(ext, frame(60, 100, i))
        assert ok
        msg = CompressedImage(format=ext[1:])
        msg.header = header(i, frame_id="compressed_cam")
        msg.data = buf.tobytes()
        pub.publish(msg)
        sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec, "compressed_cam"))
        wait_for(lambda n=i + 1: all(len(v) >= n for v in out.got.values()), what=f"the outputs of frame {i}")
        # nothing is anomalous (threshold 100): the overlay is the decoded frame itself, in RGB
        assert not as_array(out.got["mask"][i]).any()
        np.testing.assert_array_equal(as_array(out.got["overlay"][i]), compressed_msg_to_rgb(msg))
    for key in OUTPUTS:
        assert out.stamps(key) == sent, key
    assert (out.got["overlay"][0].height, out.got["overlay"][0].width) == (60, 100)
    out.close()


def test_burst_of_50_frames_leaves_at_most_one_queued(harness: Harness) -> None:
    node = harness.start(**NET)
    out = Outputs(harness, node)
    pub = input_publisher(harness, node)
    pixels = frame(240, 320, 3)
    pub.publish(image_msg(pixels, "rgb8", header(100)))  # one frame first: drops count from a publisher's 2nd frame
    wait_for(lambda: len(out.got["result"]) == 1, what="the first frame")
    queued_max = 0
    watching = True

    def watch() -> None:
        nonlocal queued_max
        while watching:
            queued_max = max(queued_max, node.queued)
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # 25 back to back (DDS keeps the newest in the depth-1 queue), then 25 at 500 Hz (the callback sees most of
    # them and the one-slot box drops what the worker has not taken)
    for i, msg in enumerate([image_msg(pixels, "rgb8", header(i)) for i in range(50)]):
        pub.publish(msg)
        if i >= 25:
            time.sleep(0.002)
    # settled: each of the 51 frames was either published or dropped (by DDS before the callback, or in the slot)
    wait_for(lambda: node.totals["published"] + node.dropped == 51, what="all 51 frames accounted for")
    wait_for(lambda: out.stamps("result")[-1] == (1_049, 49_007, "camera"), what="the newest frame's outputs")
    time.sleep(0.3)  # nothing older may come after it
    watching = False
    watcher.join()
    assert queued_max <= 1 and node.queued == 0
    assert out.stamps("result")[-1] == (1_049, 49_007, "camera")  # the newest frame was processed, ...
    burst_published = node.totals["published"] - 1
    assert 1 <= burst_published < 50 and node.dropped >= 50 - burst_published  # ... the backlog dropped and counted
    assert node.totals["published"] + node.dropped == 51
    stamps = [s[0] for s in out.stamps("result")][1:]
    assert stamps == sorted(stamps)
    out.close()
    harness.stop(node)


def _malformed_images(count_each: int) -> list[Any]:
    """Raw images that are wrong in four ways, ``count_each`` of each (cycling variants)."""
    good = image_msg(frame(16, 24, 0), "rgb8", header(0))
    msgs = []
    for i in range(count_each):
        m = image_msg(frame(16, 24, 0), "rgb8", header(i))
        m.step = 24 * 3 - 1 - i % 5  # wrong step (less than width * 3)
        msgs.append(m)
        m = image_msg(frame(16, 24, 0), "rgb8", header(i))
        m.encoding = ["yuv_bogus", "mono16", "16UC1", "bgr16", "32FC1", ""][i % 6]  # unknown or 16-bit encoding
        msgs.append(m)
        m = image_msg(frame(16, 24, 0), "rgb8", header(i))
        m.height = 16 + 1 + i % 3  # size mismatch
        msgs.append(m)
        m = image_msg(frame(16, 24, 0), "rgb8", header(i))
        m.data = []  # empty data
        msgs.append(m)
    assert good.step == 72
    return msgs


def test_1000_malformed_messages_are_counted_and_the_node_survives(harness: Harness, compressed_node: Any) -> None:
    from sensor_msgs.msg import CompressedImage

    node = harness.start(diagnostics_period_s=0.2, **NET)
    out = Outputs(harness, node)
    pub = input_publisher(harness, node)
    cpub = input_publisher(harness, compressed_node, compressed=True)
    raw = _malformed_images(200)  # 800
    ok, jpeg = cv2.imencode(".jpg", frame(32, 48, 9))
    assert ok
    jpeg = jpeg.tobytes()
    rng = np.random.default_rng(0)
    corrupt = []
    for i in range(200):  # truncated, garbled after the header, random bytes, JPEG magic only
        data = [jpeg[: len(jpeg) // 2], jpeg[:20] + rng.bytes(300), rng.bytes(200), b"\xff\xd8\xff"][i % 4]
        m = CompressedImage(format="jpeg")
        m.header = header(i)
        m.data = data
        corrupt.append(m)
    received_before = compressed_node.totals["received"]
    malformed_before = compressed_node.totals["malformed"]
    # paced: one message at a time, so the depth-1 best-effort subscription sees every one of them
    for n, msg in enumerate(raw, 1):
        pub.publish(msg)
        wait_for(lambda n=n: node.totals["received"] == n, timeout=5.0, what=f"raw malformed message {n}")
    for n, msg in enumerate(corrupt, 1):
        cpub.publish(msg)
        wait_for(
            lambda n=n: compressed_node.totals["received"] == received_before + n,
            timeout=5.0,
            what=f"corrupt JPEG {n}",
        )
    assert node.totals["malformed"] == 800
    assert compressed_node.totals["malformed"] - malformed_before == 200
    assert node.totals["published"] == 0 and node.totals["errors"] == 0
    # diagnostics report them
    wait_for(lambda: any(diag_values(d.status[0]).get("malformed_total") == "800" for d in out.diagnostics))
    status = next(d.status[0] for d in out.diagnostics if diag_values(d.status[0])["malformed_total"] == "800")
    values = diag_values(status)
    assert values["backend"] == "torch" and values["device"] == "cpu" and values["published_total"] == "0"
    assert "Image." in values["last_malformed_reason"]
    warned = [
        d.status[0] for d in out.diagnostics if d.status[0].level == b"\x01" and "malformed" in d.status[0].message
    ]
    assert warned, "no WARN diagnostics for the malformed frames"
    # still alive: a good frame goes through
    pub.publish(image_msg(frame(16, 24, 0), "rgb8", header(5_000)))
    wait_for(lambda: len(out.got["result"]) == 1, what="a good frame after the malformed ones")
    assert out.got["result"][0].header.stamp.sec == 6_000
    out.close()
    harness.stop(node)


def test_diagnostics_report_rates_and_latency(harness: Harness) -> None:
    node = harness.start(diagnostics_period_s=0.25, **NET)
    out = Outputs(harness, node)
    pub = input_publisher(harness, node)
    for i in range(4):
        pub.publish(image_msg(frame(48, 64, i), "rgb8", header(i)))
        wait_for(lambda n=i + 1: len(out.got["result"]) >= n)
    wait_for(lambda: any(float(diag_values(d.status[0])["output_rate_hz"]) > 0 for d in out.diagnostics))
    status = next(d.status[0] for d in out.diagnostics if float(diag_values(d.status[0])["output_rate_hz"]) > 0)
    values = diag_values(status)
    assert float(values["input_rate_hz"]) > 0 and float(values["latency_ms_mean"]) > 0
    assert float(values["latency_ms_max"]) >= float(values["latency_ms_mean"])
    assert {"inference_ms_mean", "preprocess_ms_mean", "postprocess_ms_mean"} <= set(values)
    assert values["model"] == "random weights (small preset)" and status.hardware_id == "torch:cpu"
    assert status.name.startswith(node.get_fully_qualified_name())
    out.close()
    harness.stop(node)


def test_no_subscriber_no_inference_and_switched_off_outputs(harness: Harness) -> None:
    from sensor_msgs.msg import Image

    node = harness.start(publish_overlay=False, **NET)
    pub = input_publisher(harness, node)
    pub.publish(image_msg(frame(32, 48, 0), "rgb8", header(0)))
    wait_for(lambda: node.totals["skipped"] == 1, what="the frame to be skipped (nobody subscribes)")
    assert node.totals["published"] == 0
    topics = {"mask": ("anomaly/mask", Image), "overlay": ("anomaly/overlay", Image)}
    out = Outputs(harness, node, topics=topics)
    pub.publish(image_msg(frame(32, 48, 1), "rgb8", header(1)))
    wait_for(lambda: len(out.got["mask"]) == 1, what="the mask")
    time.sleep(0.2)
    assert out.got["overlay"] == []  # publish_overlay is false
    assert node.set_parameters(_params(publish_overlay=True))[0].successful
    pub.publish(image_msg(frame(32, 48, 2), "rgb8", header(2)))
    wait_for(lambda: len(out.got["overlay"]) == 1, what="the overlay once switched on")
    out.close()
    harness.stop(node)


def _params(**values: Any) -> list[Any]:
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in values.items()]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"scoring_variant": "bogus"}, "scoring_variant: expected one of"),
        ({"backend": "caffe"}, "backend: expected one of"),
        ({"input_transport": "theora"}, "input_transport: expected one of"),
        ({"input_height": 64}, "input_height, input_width: expected both 0"),
        ({"fp16": True}, "fp16 needs a CUDA device"),
        ({"device": "gpu0"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"score_threshold": 500.0}, "out of range"),
        ({"score_threshold": 1}, "expecting type 'DOUBLE'"),
        ({"temporal_frames": -1}, "out of range"),
        ({"model_path": "/nonexistent/model.pt"}, "no such file"),
    ],
)
def test_invalid_parameters_at_start_are_refused_with_a_reason(
    harness: Harness, params: dict[str, Any], expected: str
) -> None:
    with pytest.raises((ValueError, RuntimeError)) as info:
        harness.start(**params)
    assert expected in str(info.value)


def test_parameter_changes_are_validated_and_applied(harness: Harness) -> None:
    node = harness.start(**NET)
    rejected = {
        "scoring_variant": ("nonsense", "scoring_variant: expected one of"),
        "score_threshold": (250.0, "out of range"),
        "input_width": (0, "input_height, input_width"),
        "device": ("cuda", "read-only"),
        "model_path": ("/tmp/other.pt", "read-only"),
        "backend": ("tensorrt", "read-only"),
        "min_instance_area": (0, "out of range"),
    }
    for name, (value, reason) in rejected.items():
        (result,) = node.set_parameters(_params(**{name: value}))
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert node.get_parameter("scoring_variant").value == "mask2anomaly"
    # combinations are checked as a whole: refine stays valid, post_fn is not a parameter
    results = node.set_parameters_atomically(_params(input_height=32, input_width=64, score_threshold=-0.25))
    assert results.successful
    out = Outputs(harness, node, topics={"result": ("anomaly/result", _result_type())})
    pub = input_publisher(harness, node)
    pub.publish(image_msg(frame(40, 60, 0), "rgb8", header(0)))
    wait_for(lambda: len(out.got["result"]) == 1)
    assert out.got["result"][0].threshold == pytest.approx(-0.25)
    assert node.backend.input_size == (32, 64)
    assert node.set_parameters(_params(scoring_variant="entropy", refine=False))[0].successful
    assert node.backend.scoring.score == "entropy" and not node.backend.scoring.refine
    pub.publish(image_msg(frame(40, 60, 1), "rgb8", header(1)))
    wait_for(lambda: len(out.got["result"]) == 2)
    assert out.got["result"][1].scoring_variant == "entropy"
    out.close()
    harness.stop(node)


def test_temporal_fusion_through_the_node(harness: Harness) -> None:
    node = harness.start(temporal_frames=3, temporal_max_gap_s=0.5, **NET)
    out = Outputs(harness, node, topics={"result": ("anomaly/result", _result_type())})
    pub = input_publisher(harness, node)
    a, b = frame(40, 60, 0), frame(40, 60, 1)
    stamps = [(10, 0), (10, 100_000_000), (20, 0)]  # 0.1 s apart, then a 9.9 s jump (reset)
    for i, ((sec, nsec), pixels) in enumerate(zip(stamps, [a, b, b])):
        hdr = header(0)
        hdr.stamp.sec, hdr.stamp.nanosec = sec, nsec
        pub.publish(image_msg(pixels, "rgb8", hdr))
        wait_for(lambda n=i + 1: len(out.got["result"]) == n)
    first, fused, reset = (as_array(m.anomaly_score) for m in out.got["result"])
    alpha = 0.5  # 2 / (3 + 1)
    raw_b = reset  # after the reset the score is frame b's own
    np.testing.assert_allclose(fused, alpha * raw_b + (1 - alpha) * first, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused, raw_b)
    out.close()
    harness.stop(node)


# ------------------------------------------------------------------------------------------------------------
# The executables


def _ros_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_console_script_starts_with_the_params_file_and_stops_on_ctrl_c() -> None:
    require_ros()
    namespace = f"/m2a_main_{os.getpid()}"
    cmd = [
        sys.executable,
        "-m",
        "m2a_perception.node",
        "--ros-args",
        "--params-file",
        str(ROOT / "config" / "m2a_perception.yaml"),
        "-r",
        f"__ns:={namespace}",
        "-p",
        "input_height:=64",
        "-p",
        "input_width:=128",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_ros_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("ready:" in line for line in lines) or proc.poll() is not None, timeout=60.0)
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    text = "".join(lines)
    assert f"{namespace}/image" in text and "network input (64, 128)" in text


def test_console_script_exits_1_with_a_reason_on_bad_parameters() -> None:
    require_ros()
    cmd = [sys.executable, "-m", "m2a_perception.node", "--ros-args", "-p", "scoring_variant:=bogus"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_ros_env())
    assert proc.returncode == 1
    assert "scoring_variant: expected one of" in proc.stdout + proc.stderr


def test_ros2_run_launcher_is_installed() -> None:
    launcher = Path(sys.prefix) / "lib" / "m2a" / "anomaly_segmentation"
    if not launcher.exists():
        message = f"{launcher} not installed (`make ros` installs it with the messages)"
        if ROS_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    assert os.access(launcher, os.X_OK)
    proc = subprocess.run([sys.executable, str(launcher), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "score_threshold" in proc.stdout
