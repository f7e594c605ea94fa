"""The node's own cost against the ROS transport floor, and its resident memory over a long run.

Overhead (default): 1024x2048 bgr8 frames (6 MB) go from a driver node through real rclpy to the system under
test and its outputs come back; latency = publish of the frame -> arrival of the frame's last output. Two systems
under test, in alternation, per output set:
  node   the real AnomalySegmentationNode (conversions, newest-frame slot, worker thread, Postprocessor, message
         building, publishing), with a fixed backend: it returns a precomputed score and semantic map (from the
         generated scene's labels) and times itself; its time is subtracted from the node's latency
  floor  a bare rclpy node that receives the same frame and publishes the same output bytes (prebuilt)
One frame at a time (the next after every output of the last arrived). Driver and system under test run in one
process, each with its own rclpy context (so its own DDS participant) and executor thread: Fast DDS then delivers
in-process. (Across processes, with Fast DDS's default transports here, a best-effort subscription - the node's
camera input, sensor-data QoS - receives no message of 2 MB or more at all.)
Target: median (node latency - backend time) <= 1.3 x median floor latency.

Memory (--memory): the node with the real small-preset torch backend gets FRAMES frames at RATE Hz (it drops
what it cannot process); the process's resident memory (VmRSS) is sampled. Target: growth < 2 % from the
warmed-up level (after the first 10 % of the frames) to the end.

    nice .venv/bin/python bench/node_overhead.py [--frames 40] [--sets default,planner,rviz]
    nice .venv/bin/python bench/node_overhead.py --memory [--memory-frames 10000 --rate 30]
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

# Keep DDS on this machine, in a domain of this run's own (shared/design/ROS2_ON_PIP.md); before rclpy loads.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(80 + os.getpid() % 20))

import numpy as np  # noqa: E402

OUTPUT_SETS = {
    # every output on: what config/m2a_perception.yaml enables (the node computes only subscribed ones)
    "default": ("mask", "score", "semantic", "semantic_color", "overlay", "result"),
    "planner": ("result",),  # what a planner needs: one message with mask, score, labels and instances
    "rviz": ("mask", "semantic_color", "overlay"),  # what config/m2a.rviz shows
}
HEIGHT, WIDTH = 1024, 2048
FRAME_TIMEOUT_S = 20.0


# ----------------------------------------------------------------------------------------------------------
# Inputs shared by parent and children
# ----------------------------------------------------------------------------------------------------------
def scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generated road frame (H, W, 3) RGB, a plausible anomaly score (H, W) float32 and its trainIds (H, W)."""
    import cv2

    from m2a_perception.synthroad import SceneConfig, generate_scene

    s = generate_scene(11, SceneConfig(height=height, width=width, num_anomalies=2))
    anomaly = (s.anomaly == 1).astype(np.float32)
    score = cv2.GaussianBlur(anomaly, (0, 0), 3.0) * 0.9 + 0.05
    semantic = np.where(s.semantic == 255, 0, s.semantic).astype(np.uint8)
    return s.image, score.astype(np.float32), semantic


def _topics(keys: tuple[str, ...]) -> dict[str, str]:
    from m2a_perception.node import OUTPUTS

    return {key: OUTPUTS[key][1] for key in keys}


# ----------------------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------------------
class FixedBackend:
    """A backend that returns a precomputed Result and records how long each call took."""

    name = "fixed"
    input_size = None
    model_description = "fixed result (bench)"

    def __init__(self, score: np.ndarray, semantic: np.ndarray) -> None:
        self.score, self.semantic = score, semantic
        self.times: list[float] = []

    def warmup(self) -> None:
        """Nothing to warm up."""

    def update(self, **_: Any) -> None:
        """Nothing to change."""

    def infer(self, frame_rgb: np.ndarray) -> Any:
        """The precomputed maps (the node's postprocessing does not modify them)."""
        from m2a_perception.backends import Result

        start = time.perf_counter()
        if frame_rgb.shape[:2] != self.score.shape:
            raise ValueError(f"bench frame {frame_rgb.shape} does not match the fixed result {self.score.shape}")
        result = Result(anomaly_score=self.score, semantic=self.semantic, timings={})
        self.times.append(time.perf_counter() - start)
        return result


class _Spinner:
    """An rclpy context of its own with an executor thread spinning the nodes added to it."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        rclpy.try_shutdown(context=self.context)


def start_node(
    spinner: _Spinner, namespace: str, keys: tuple[str, ...], fixed: FixedBackend | None, input_size: str | None
) -> Any:
    """The real node in `spinner`: with the fixed backend (overhead), or the configured small preset (memory)."""
    from rclpy.parameter import Parameter

    import m2a_perception.backends as backends
    from m2a_perception.node import OUTPUTS, AnomalySegmentationNode

    params = {param: key in keys for key, (param, _) in OUTPUTS.items()}
    if input_size:
        params["input_height"], params["input_width"] = (int(v) for v in input_size.split("x"))
    create = backends.create_backend
    if fixed is not None:
        backends.create_backend = lambda config: fixed  # the node looks it up while it starts
    try:
        node = AnomalySegmentationNode(
            namespace=namespace,
            context=spinner.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
        )
    finally:
        backends.create_backend = create
    spinner.executor.add_node(node)
    return node


def start_floor(spinner: _Spinner, namespace: str, keys: tuple[str, ...], height: int, width: int) -> Any:
    """A bare node: receive the frame, publish prebuilt outputs of the node's sizes, encodings and QoS."""
    import rclpy
    from m2a.msg import AnomalyInstance, AnomalySegmentation
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, RegionOfInterest
    from std_msgs.msg import Header

    from m2a_perception.backends import Result
    from m2a_perception.conversions import rgb_to_image_msg
    from m2a_perception.node import OUTPUT_QUEUE_DEPTH
    from m2a_perception.postprocess import Postprocessor, class_name

    frame, score, semantic = scene(height, width)
    out = Postprocessor().process(frame, Result(score, semantic, {}), 0.0)
    node = rclpy.create_node("floor", namespace=namespace, context=spinner.context)
    header = Header()
    images = {
        "mask": rgb_to_image_msg(out.anomaly_mask, header, "mono8"),
        "score": rgb_to_image_msg(out.anomaly_score, header, "32FC1"),
        "semantic": rgb_to_image_msg(out.semantic, header, "mono8"),
        "semantic_color": rgb_to_image_msg(out.semantic_color, header, "rgb8"),
        "overlay": rgb_to_image_msg(out.overlay, header, "rgb8"),
    }
    result = AnomalySegmentation(
        anomaly_mask=images["mask"], anomaly_score=images["score"], semantic_labels=images["semantic"]
    )
    result.instances = [
        AnomalyInstance(
            bbox=RegionOfInterest(x_offset=i.bbox[0], y_offset=i.bbox[1], width=i.bbox[2], height=i.bbox[3]),
            area=i.area,
            max_score=i.max_score,
            mean_score=i.mean_score,
            centroid_x=i.centroid[0],
            centroid_y=i.centroid[1],
            semantic_class=i.semantic_class,
            semantic_class_name=class_name(i.semantic_class),
        )
        for i in out.instances
    ]
    msgs = {**images, "result": result}
    # the node's output QoS (reliable, keep last OUTPUT_QUEUE_DEPTH)
    out_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE
    )
    pubs = {key: node.create_publisher(type(msgs[key]), topic, out_qos) for key, topic in _topics(keys).items()}
    in_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=qos_profile_sensor_data.reliability,
        durability=qos_profile_sensor_data.durability,
    )

    def on_frame(msg: Any) -> None:
        for key, pub in pubs.items():
            outgoing = msgs[key]
            outgoing.header = msg.header
            if key == "result":
                for image in (outgoing.anomaly_mask, outgoing.anomaly_score, outgoing.semantic_labels):
                    image.header = msg.header
            pub.publish(outgoing)

    node.create_subscription(Image, "image", on_frame, in_qos)
    spinner.executor.add_node(node)
    return node


# ----------------------------------------------------------------------------------------------------------
# Parent: drive a child, time frames
# ----------------------------------------------------------------------------------------------------------
class Driver:
    """Publishes frames to a child's `image` and collects the arrival time of each output per frame stamp."""

    def __init__(self, spinner: _Spinner, namespace: str, keys: tuple[str, ...], frame_rgb: np.ndarray) -> None:
        import rclpy
        from m2a.msg import AnomalySegmentation
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node = rclpy.create_node(f"driver_{namespace.strip('/')}", context=spinner.context)
        self.pub = self.node.create_publisher(
            Image, f"{namespace}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.frame = Image(height=frame_rgb.shape[0], width=frame_rgb.shape[1], encoding="bgr8")
        self.frame.step = frame_rgb.shape[1] * 3
        data = array.array("B")
        data.frombytes(np.ascontiguousarray(frame_rgb[..., ::-1]).tobytes())
        self.frame.data = data
        self.keys = keys
        self.arrivals: dict[int, dict[str, float]] = {}
        self.counts = dict.fromkeys(keys, 0)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.subs = []
        for key, topic in _topics(keys).items():
            msg_type = AnomalySegmentation if key == "result" else Image
            self.subs.append(
                self.node.create_subscription(
                    msg_type, f"{namespace}/{topic}", self._arrived(key), QoSProfile(depth=10), raw=True
                )
            )

        spinner.executor.add_node(self.node)

    def _arrived(self, key: str) -> Any:
        def callback(raw: bytes) -> None:
            now = time.perf_counter()
            sec = int.from_bytes(raw[4:8], "little", signed=True)  # CDR: 4-byte encapsulation, then header.stamp
            with self._cond:
                self.arrivals.setdefault(sec, {})[key] = now
                self.counts[key] += 1
                self._cond.notify_all()

        return callback

    def ready(self) -> bool:
        """The child subscribes to our frames and publishes every output we listen to."""
        topics = [sub.topic_name for sub in self.subs]
        return self.pub.get_subscription_count() >= 1 and all(self.node.count_publishers(t) >= 1 for t in topics)

    def send(self, sec: int) -> float:
        """Publish the frame stamped `sec`; returns the time just before publishing."""
        self.frame.header.stamp.sec = sec
        start = time.perf_counter()
        self.pub.publish(self.frame)
        return start

    def wait(self, sec: int, timeout: float) -> float | None:
        """Arrival time of the frame's last output, or None after `timeout`."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.arrivals.get(sec, {})) < len(self.keys):
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return max(self.arrivals[sec].values())


def _wait_ready(driver: Driver, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not driver.ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not connect within {timeout:.0f} s")
        time.sleep(0.05)


def measure(role: str, keys: tuple[str, ...], args: argparse.Namespace, run: int) -> dict:
    """Latencies (s) of `args.frames` frames through a fresh node or floor; for the node also its backend's times."""
    namespace = f"/bench_{os.getpid()}_{role}_{run}"
    frame, score, semantic = scene(args.height, args.width)
    driver_spinner, sut_spinner = _Spinner(), _Spinner()
    fixed = FixedBackend(score, semantic) if role == "node" else None
    sut = (
        start_node(sut_spinner, namespace, keys, fixed, None)
        if role == "node"
        else start_floor(sut_spinner, namespace, keys, args.height, args.width)
    )
    driver = Driver(driver_spinner, namespace, keys, frame)
    latencies: list[float] = []
    backend: list[float] = []
    lost = 0
    try:
        _wait_ready(driver, role)
        sec = warm = 0
        while warm < args.warmup:  # also lets every output match before timing starts
            sec += 1
            driver.send(sec)
            warm += driver.wait(sec, FRAME_TIMEOUT_S) is not None
            if sec > args.warmup + 10:
                raise RuntimeError(f"{role}: outputs do not come back")
        for _ in range(args.frames):
            sec += 1
            time.sleep(args.gap)
            calls = len(fixed.times) if fixed is not None else 0
            start = driver.send(sec)
            end = driver.wait(sec, FRAME_TIMEOUT_S)
            if end is None:
                lost += 1
                continue
            latencies.append(end - start)
            if fixed is not None:
                backend.append(sum(fixed.times[calls:]))  # this frame's call (one frame in flight at a time)
    finally:
        driver_spinner.executor.remove_node(driver.node)
        sut_spinner.executor.remove_node(sut)
        driver.node.destroy_node()
        if role == "node":
            sut.close()
        else:
            sut.destroy_node()
        driver_spinner.close()
        sut_spinner.close()
    return {"latencies": latencies, "backend": backend or [0.0] * len(latencies), "lost": lost}


def overhead(args: argparse.Namespace) -> None:
    """Node vs floor for each output set; prints a table and the verdicts."""
    print(
        f"frames {args.height}x{args.width} (HxW) bgr8 ({args.width * args.height * 3 / 1e6:.1f} MB), "
        f"{args.frames} timed "
        f"(+{args.warmup} warm-up) per system and round, {args.rounds} rounds alternating floor/node, one process, "
        f"RMW {os.environ.get('RMW_IMPLEMENTATION', 'default (rmw_fastrtps_cpp)')}, {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    for name in args.sets.split(","):
        keys = OUTPUT_SETS[name]
        floor: list[float] = []
        node: list[float] = []
        backend: list[float] = []
        lost = 0
        for run in range(args.rounds):
            f = measure("floor", keys, args, run)
            n = measure("node", keys, args, run)
            floor += f["latencies"]
            node += n["latencies"]
            backend += n["backend"]
            lost += f["lost"] + n["lost"]
        own = [a - b for a, b in zip(node, backend)]
        row = {
            "set": name,
            "outputs": ",".join(keys),
            "floor_ms": 1000 * statistics.median(floor),
            "node_ms": 1000 * statistics.median(node),
            "backend_ms": 1000 * statistics.median(backend),
            "overhead_ms": 1000 * statistics.median(own),
            "floor_ms_p90": 1000 * statistics.quantiles(floor, n=10)[-1],
            "overhead_ms_p90": 1000 * statistics.quantiles(own, n=10)[-1],
            "lost": lost,
        }
        row["ratio"] = row["overhead_ms"] / row["floor_ms"]
        rows.append(row)
        print(
            f"{name:8s} {row['outputs']:49s} floor {row['floor_ms']:6.1f} ms (p90 {row['floor_ms_p90']:5.1f})  "
            f"node {row['node_ms']:6.1f} ms  backend {row['backend_ms']:5.2f} ms  "
            f"node-backend {row['overhead_ms']:6.1f} ms (p90 {row['overhead_ms_p90']:5.1f})  "
            f"ratio {row['ratio']:.2f} ({'meets' if row['ratio'] <= 1.3 else 'MISSES'} <= 1.3)"
            + (f"  lost {lost}" if lost else ""),
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory(args: argparse.Namespace) -> None:
    """The real node (small preset) fed `args.memory_frames` frames at `args.rate` Hz; RSS growth."""
    keys = OUTPUT_SETS["default"]
    namespace = f"/bench_{os.getpid()}_memory"
    frame, _, _ = scene(args.height, args.width)
    driver_spinner, node_spinner = _Spinner(), _Spinner()
    node = start_node(node_spinner, namespace, keys, None, args.input_size)
    driver = Driver(driver_spinner, namespace, keys, frame)
    samples: list[tuple[int, float, int]] = []  # (frames sent, seconds, rss)
    try:
        _wait_ready(driver, "node")
        start = time.monotonic()
        period = 1.0 / args.rate
        next_sample = start
        late = 0
        for index in range(args.memory_frames):
            pause = start + index * period - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                late += pause < -period
            driver.send(index + 1)
            if time.monotonic() >= next_sample:
                samples.append((index + 1, time.monotonic() - start, _rss_bytes()))
                next_sample += 1.0
        elapsed = time.monotonic() - start
        time.sleep(2.0)
        samples.append((args.memory_frames, time.monotonic() - start, _rss_bytes()))
    finally:
        driver_spinner.executor.remove_node(driver.node)
        node_spinner.executor.remove_node(node)
        driver.node.destroy_node()
        totals = {kv.key: kv.value for kv in node.diagnostics().values if kv.key.endswith("_total")}
        node.close()
        driver_spinner.close()
        node_spinner.close()
    # RSS swings by the model's working memory during each inference: compare medians of whole windows
    first = [s[2] for s in samples if 0.1 * args.memory_frames <= s[0] <= 0.2 * args.memory_frames]
    last = [s[2] for s in samples if s[0] >= 0.9 * args.memory_frames]
    base, end = statistics.median(first), statistics.median(last)
    peak = max(s[2] for s in samples if s[0] >= 0.1 * args.memory_frames)
    growth = (end - base) / base
    print(
        f"memory: {args.memory_frames} frames {args.height}x{args.width} (HxW) bgr8 at {args.rate:g} Hz "
        f"in {elapsed:.0f} s "
        f"({late} sent more than a period late), network input {args.input_size or 'as the frame'}, small preset, "
        f"all outputs subscribed; the node received {totals['received_total']} (missed "
        f"{totals.get('dropped_before_callback_total', '?')} before its callback), answered "
        f"{totals['published_total']}, dropped {totals.get('dropped_in_slot_total', '?')} for newer frames while busy"
    )
    print(
        f"VmRSS (driver + node, one process): first sample {samples[0][2] / 2**20:.0f} MiB; median over frames "
        f"10-20 % {base / 2**20:.0f} MiB, over the last 10 % {end / 2**20:.0f} MiB (peak after warm-up "
        f"{peak / 2**20:.0f} MiB) -> growth {100 * growth:+.2f} % ({'meets' if growth < 0.02 else 'MISSES'} < 2 %)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "growth": growth, "totals": totals}) + "\n")


def main() -> None:
    """Command line: the overhead table, or the memory run with --memory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="timed frames per child and round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="floor/node alternations per output set")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between a frame's outputs and the next frame")
    parser.add_argument("--sets", default="default,planner,rviz", help=f"output sets, of {list(OUTPUT_SETS)}")
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--memory", action="store_true", help="the resident-memory run instead")
    parser.add_argument("--memory-frames", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=30.0, help="frame rate of the memory run, Hz")
    parser.add_argument("--input-size", default="512x1024", help="memory run: the node's network input HxW")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.memory:
        memory(args)
    else:
        overhead(args)


if __name__ == "__main__":
    main()
