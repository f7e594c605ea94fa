"""m2a-replay: demo bags, offline processing into a result bag, and live playback through real rclpy.

Small frames and the small preset with random weights keep it fast on 2 CPU cores. The bag tests need only
`rosbags`; the playback tests run the real node and player in this process (no mocks of ROS).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_ros

from m2a_perception import bags, replay
from m2a_perception.node import OUTPUTS
from m2a_perception.synthroad import SceneConfig, generate_sequence

DEMO = replay.DemoBagConfig(frames=4, height=64, width=128, rate_hz=10.0, seed=5)
NET = ["-p", "input_height:=64", "-p", "input_width:=128"]
TIMEOUT = 30.0


def _messages(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time, deserialised message)] of a bag."""
    store = bags.typestore()
    out: dict[str, list[tuple[int, Any]]] = {}
    with contextlib.closing(bags.open_reader(path)) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for topic in types:
            out[topic] = []
        for connection, log_time, raw in reader.messages():
            out[connection.topic].append((log_time, store.deserialize_cdr(raw, connection.msgtype)))
    return out


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replay.make_demo_bag(tmp_path_factory.mktemp("bags") / "demo", DEMO)


# ------------------------------------------------------------------------------------------------------------
# make-demo-bag and process (rosbags only)


def test_demo_bag_holds_the_generated_frames_at_camera_rate(demo_bag: Path) -> None:
    topics = _messages(demo_bag)
    assert list(topics) == [DEMO.topic]
    frames = topics[DEMO.topic]
    scenes = generate_sequence(DEMO.seed, DEMO.frames, SceneConfig(height=DEMO.height, width=DEMO.width))
    assert len(frames) == DEMO.frames
    for index, (log_time, msg) in enumerate(frames):
        assert log_time == bags.stamp_ns(msg.header) == DEMO.start_ns + round(index * 1e9 / DEMO.rate_hz)
        assert (msg.encoding, msg.header.frame_id, msg.width, msg.height) == ("bgr8", "camera", 128, 64)
        assert np.array_equal(bags.decode_image(msg, "test"), scenes[index].image)  # bgr8 -> RGB round trip


def test_round_trip_make_process_read_back(demo_bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "result"
    code = replay.main(["process", str(demo_bag), "--out", str(out), "--no-progress", "--storage", "sqlite3", *NET])
    assert code == 0
    topics = _messages(out)
    expected = {f"/m2a/{topic}" for _, topic in OUTPUTS.values()}
    assert set(topics) == expected
    inputs = _messages(demo_bag)[DEMO.topic]
    for topic, msgs in topics.items():
        assert len(msgs) == DEMO.frames, topic
        for (log_in, msg_in), (log_out, msg_out) in zip(inputs, msgs):
            assert log_out == log_in, topic
            assert bags.stamp_ns(msg_out.header) == bags.stamp_ns(msg_in.header), topic
            assert msg_out.header.frame_id == "camera", topic
    for _, result in topics["/m2a/anomaly/result"]:
        mask = result.anomaly_mask
        assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", 64, 128, 128)
        score = result.anomaly_score
        assert (score.encoding, score.step, len(score.data)) == ("32FC1", 512, 64 * 512)
        values = np.frombuffer(score.data, np.float32).reshape(64, 128)
        assert np.array_equal(mask.data.reshape(64, 128) == 255, values > result.threshold)
        assert result.scoring_variant == "mask2anomaly" and result.threshold == pytest.approx(0.5)
        for instance in result.instances:
            assert instance.area >= 50 and instance.max_score > result.threshold
    overlay = topics["/m2a/anomaly/overlay"][0][1]
    assert (overlay.encoding, overlay.step) == ("rgb8", 128 * 3)


def test_process_honours_output_switches_and_limit(demo_bag: Path, tmp_path: Path) -> None:
    values = replay.node_parameters(
        replay.default_params_file(),
        {"publish_score": False, "publish_overlay": False, "input_height": 64, "input_width": 128},
    )
    config = replay.ProcessConfig(namespace="/car/front", limit=2, progress=False)
    stats = replay.process_bag(demo_bag, tmp_path / "out", values, config)
    assert (stats.frames_in, stats.frames_out, stats.malformed) == (2, 2, 0)
    topics = _messages(tmp_path / "out")
    assert set(topics) == {"/car/front/anomaly/mask", "/car/front/semantic/labels", "/car/front/semantic/color",
                           "/car/front/anomaly/result"}  # fmt: skip
    assert all(len(m) == 2 for m in topics.values())


def _bag_with(path: Path, frames: list[tuple[str, int, int, int, bytes]], topic: str = "/cam") -> Path:
    """A bag of hand-made Image messages (encoding, width, height, step, data): also malformed ones."""
    with replay._writer(path, "mcap") as writer:
        connection = writer.add_connection(topic, bags.IMAGE_TYPE, typestore=bags.typestore())
        for index, (encoding, width, height, step, data) in enumerate(frames):
            msg = bags.typestore().types[bags.IMAGE_TYPE](
                header=bags.header(10**9 * (index + 1), "camera"),
                height=height,
                width=width,
                encoding=encoding,
                is_bigendian=0,
                step=step,
                data=np.frombuffer(data, np.uint8),
            )
            writer.write(connection, 10**9 * (index + 1), bags.serialize(msg))
    return path


def test_malformed_frames_are_skipped_and_named(tmp_path: Path) -> None:
    good = ("rgb8", 128, 64, 384, bytes(64 * 384))
    bag = _bag_with(
        tmp_path / "bad",
        [good, ("rgb8", 128, 64, 384, bytes(100)), ("yuv422", 128, 64, 256, bytes(64 * 256)), good],
    )
    reader = bags.open_reader(bag)
    connection = bags.image_connection(reader, None, bag)
    images = list(bags.read_images(reader, connection, bag))
    with pytest.raises(bags.BagError, match=r"message 1: data has 100 bytes, expected step \* height = 384 \* 64"):
        bags.decode_image(images[1].msg, f"bag {bag}, /cam message 1")
    with pytest.raises(bags.BagError, match="encoding 'yuv422' is not supported"):
        bags.decode_image(images[2].msg, "x")
    reader.close()
    values = replay.node_parameters(None, {"input_height": 64, "input_width": 128})
    stats = replay.process_bag(bag, tmp_path / "out", values, replay.ProcessConfig(progress=False))
    assert (stats.frames_in, stats.frames_out, stats.malformed) == (4, 2, 2)
    assert "message 1" in stats.first_malformed


def test_clear_errors_for_bags_without_the_topic(tmp_path: Path, demo_bag: Path, capsys: Any) -> None:
    assert replay.main(["process", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert replay.main(["process", str(demo_bag), "--out", str(tmp_path / "o"), "--topic", "/nope"]) == 1
    err = capsys.readouterr().err
    assert "no topic '/nope'" in err and DEMO.topic in err
    assert replay.main(["make-demo-bag", str(demo_bag)]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(bags.BagError, match="no image topic"):
        bags.image_connection(type("EmptyReader", (), {"connections": []})(), None, demo_bag)


def test_oversized_image_is_refused_before_allocation() -> None:
    store = bags.typestore()
    msg = store.types[bags.IMAGE_TYPE](
        header=bags.header(0, "c"), height=16000, width=16000, encoding="rgb8", is_bigendian=0, step=48000,
        data=np.zeros(10, np.uint8),
    )  # fmt: skip
    with pytest.raises(bags.BagError, match="exceeds the limit"):
        bags.check_image(msg, "x")
    msg.height = 0
    with pytest.raises(bags.BagError, match="outside 1..16384"):
        bags.check_image(msg, "x")


def test_parameter_files_are_read_like_the_node(tmp_path: Path) -> None:
    values = replay.node_parameters(replay.default_params_file())
    assert values["preset"] == "small" and values["publish_result"] is True
    custom = tmp_path / "p.yaml"
    custom.write_text(
        "/**:\n  ros__parameters:\n    score_threshold: 1\n"
        "other_node:\n  ros__parameters:\n    whatever: 3\n"
        "/m2a/anomaly_segmentation:\n  ros__parameters:\n    publish_score: false\n"
    )
    values = replay.node_parameters(custom, {"publish_mask": False})
    assert values["score_threshold"] == 1.0 and isinstance(values["score_threshold"], float)
    assert values["publish_score"] is False and values["publish_mask"] is False
    assert replay.node_parameters(custom, namespace="/elsewhere")["publish_score"] is True
    custom.write_text("/**:\n  ros__parameters:\n    scor_threshold: 1\n")
    with pytest.raises(ValueError, match=r"p\.yaml.*unknown parameter 'scor_threshold'"):
        replay.node_parameters(custom)
    custom.write_text("/**:\n  ros__parameters:\n    min_instance_area: 1.5\n")
    with pytest.raises(ValueError, match="min_instance_area must be a int"):
        replay.node_parameters(custom)
    with pytest.raises(ValueError, match="score_threshold"):
        replay.node_parameters(None, {"score_threshold": 500.0})
    assert replay._param_overrides(["a:=1", "b:=x", "c:=", "d:=true"]) == {"a": 1, "b": "x", "c": "", "d": True}


def test_help_lists_the_commands(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        replay.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("make-demo-bag", "play", "process"))


# ------------------------------------------------------------------------------------------------------------
# play, through real rclpy


class _Graph:
    """A tester node and an executor thread in one rclpy context."""

    def __init__(self, context: Any) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = context
        self.node = rclpy.create_node(f"m2a_replay_tester_{os.getpid()}", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


@pytest.fixture(scope="module")
def graph(rclpy_context: Any):
    g = _Graph(rclpy_context)
    yield g
    g.close()


def _wait_for(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_play_publishes_at_the_recorded_rate(graph: _Graph, demo_bag: Path) -> None:
    require_ros()
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    got: list[tuple[float, int]] = []
    graph.node.create_subscription(
        Image,
        "/replay_test/image",
        lambda m: got.append((time.monotonic(), bags.stamp_ns(m.header))),
        QoSProfile(depth=50),
    )
    player = replay.Player(graph.node, demo_bag, replay.PlayConfig(out_topic="/replay_test/image", rate=2.0))
    try:
        assert player.wait_for_subscriber(TIMEOUT)
        stats = player.run()
    finally:
        player.close()
    _wait_for(lambda: len(got) == DEMO.frames, "all frames")
    assert stats.published == DEMO.frames
    assert [stamp for _, stamp in got] == [DEMO.stamp_ns(i) for i in range(DEMO.frames)]
    span = got[-1][0] - got[0][0]
    recorded = (DEMO.frames - 1) / DEMO.rate_hz / 2.0  # at rate x2
    assert recorded * 0.8 < span < recorded + 0.5, f"played {DEMO.frames} frames over {span:.3f} s, expected {recorded}"


def test_play_start_offset_and_loop(graph: _Graph, demo_bag: Path) -> None:
    require_ros()
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    got: list[int] = []
    graph.node.create_subscription(
        Image, "/replay_loop/image", lambda m: got.append(bags.stamp_ns(m.header)), QoSProfile(depth=50)
    )
    config = replay.PlayConfig(out_topic="/replay_loop/image", rate=10.0, loop=True, start_offset_s=0.15)
    player = replay.Player(graph.node, demo_bag, config)
    seen: list[int] = []

    def on_publish(image: bags.BagImage, _: float) -> None:
        seen.append(image.log_time_ns)
        if len(seen) == 4:
            player.stop()

    try:
        assert player.wait_for_subscriber(TIMEOUT)
        stats = player.run(on_publish)
    finally:
        player.close()
    later = [DEMO.stamp_ns(i) for i in (2, 3)]  # 0.15 s in at 10 Hz: frames 2 and 3
    assert seen == later + later and stats.loops == 2  # two passes over frames 2, 3
    _wait_for(lambda: len(got) == 4, "looped frames")
    with pytest.raises(bags.BagError, match="past its end"):
        replay.Player(graph.node, demo_bag, replay.PlayConfig(start_offset_s=5.0))


def test_live_node_matches_offline_processing(graph: _Graph, demo_bag: Path, tmp_path: Path) -> None:
    """Bag -> player -> the real node -> anomaly/result equals `process` on the same bag, frame for frame."""
    require_ros()
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile

    from m2a_perception.node import AnomalySegmentationNode

    overrides = {"input_height": 64, "input_width": 128}
    namespace = f"/replay_live_{os.getpid()}"
    node = AnomalySegmentationNode(
        namespace=namespace,
        context=graph.context,
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    graph.executor.add_node(node)
    from m2a.msg import AnomalySegmentation

    raw: list[bytes] = []
    sub = graph.node.create_subscription(
        AnomalySegmentation, f"{namespace}/anomaly/result", raw.append, QoSProfile(depth=50), raw=True
    )
    config = replay.PlayConfig(out_topic=f"{namespace}/image", rate=0.5, wait_for_subscriber_s=TIMEOUT)
    player = replay.Player(graph.node, demo_bag, config)
    try:
        _wait_for(lambda: node._pubs["result"].get_subscription_count() >= 1, "the result subscription")
        assert player.run().published == DEMO.frames
        _wait_for(lambda: len(raw) + node.dropped >= DEMO.frames, "the node's results")
    finally:
        player.close()
        graph.node.destroy_subscription(sub)
        graph.executor.remove_node(node)
        node.close()
    assert len(raw) >= DEMO.frames - 1, f"only {len(raw)} results (dropped {node.dropped}) at a slow rate"
    values = replay.node_parameters(replay.default_params_file(), overrides)
    stats = replay.process_bag(demo_bag, tmp_path / "out", values, replay.ProcessConfig(progress=False))
    offline = {bags.stamp_ns(m.header): m for _, m in _messages(tmp_path / "out")["/m2a/anomaly/result"]}
    assert stats.frames_out == DEMO.frames
    store = bags.typestore()
    for data in raw:
        live = store.deserialize_cdr(data, bags.RESULT_TYPE)
        twin = offline[bags.stamp_ns(live.header)]
        assert live.header.frame_id == twin.header.frame_id
        for field in ("anomaly_mask", "anomaly_score", "semantic_labels"):
            a, b = getattr(live, field), getattr(twin, field)
            assert (a.encoding, a.height, a.width, a.step) == (b.encoding, b.height, b.width, b.step), field
            assert np.array_equal(a.data, b.data), field
        assert (live.threshold, live.scoring_variant) == (twin.threshold, twin.scoring_variant)
        assert len(live.instances) == len(twin.instances)
        for x, y in zip(live.instances, twin.instances):
            assert (x.bbox.x_offset, x.bbox.y_offset, x.bbox.width, x.bbox.height, x.area) == (
                y.bbox.x_offset, y.bbox.y_offset, y.bbox.width, y.bbox.height, y.area,
            )  # fmt: skip
            assert (x.semantic_class, x.semantic_class_name) == (y.semantic_class, y.semantic_class_name)
            assert x.max_score == y.max_score and x.centroid_x == y.centroid_x


def test_play_skips_malformed_frames(graph: _Graph, tmp_path: Path) -> None:
    require_ros()
    good = ("rgb8", 32, 16, 96, bytes(16 * 96))
    bag = _bag_with(tmp_path / "bad", [good, ("rgb8", 32, 16, 96, bytes(7)), good])
    player = replay.Player(graph.node, bag, replay.PlayConfig(out_topic="/replay_bad/image", rate=100.0))
    try:
        stats = player.run()
    finally:
        player.close()
    assert (stats.published, stats.malformed) == (2, 1)
    assert "message 1: data has 7 bytes" in stats.first_malformed
