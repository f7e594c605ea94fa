"""`m2a-demo`: the anomaly node end to end through ROS 2, on a generated drive toward a small obstacle.

    1. `m2a-replay make-demo-bag`: OUT/demo_bag, a camera Image topic at 10 Hz
    2. the node (`m2a-perception`) starts in a child process, in the namespace /m2a
    3. the bag is played into it (`m2a-replay play`'s Player) while its outputs are recorded into OUT/result_bag
    4. per output frame: the overlay and a panel (overlay | ground truth / score | semantic classes) as PNG, all
       overlays as OUT/overlay.mp4 (if OpenCV can), and OUT/summary.json + summary.txt (frames in / out,
       dropped, latency)

`--no-ros` runs the same bag through `m2a-replay process` instead (no rclpy needed; no transport, no drops).
Without `--checkpoint` the node uses the bundled small model (`m2a_perception/weights/`, trained on generated
scenes by `bench/learning_check.py`); `--random-weights` runs the small preset untrained (plumbing only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2a_perception import bags, replay
from m2a_perception.weights import bundled_checkpoint

NAMESPACE = "/m2a"  # the launch files' and config/m2a.rviz's
RECORDED = ("overlay", "result")  # outputs recorded into the result bag (the others are inside result or derived)
READY_TIMEOUT_S = 180.0  # the node loads torch and the model before it subscribes
DRAIN_TIMEOUT_S = 60.0  # after the last frame: wait this long at most for the node to finish
SETTLE_S = 1.0  # after the node subscribed, before the first frame (discovery finishes on both sides)
RECORD_DEPTH = 10  # publisher history of the recorded outputs (see `_start_node`)
_ARTEFACTS = ("demo_bag", "result_bag", "overlay.mp4", "summary.json", "summary.txt", "node.log")


class DemoError(RuntimeError):
    """The demo could not run (the node did not start, died, or produced nothing)."""


# ----------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------
def score_heatmap(score: np.ndarray) -> np.ndarray:
    """(H, W) anomaly score -> (H, W, 3) uint8 RGB heat map; [0, 1] spans the colour map, values outside clip."""
    scaled = (np.clip(score, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def ground_truth_image(anomaly: np.ndarray) -> np.ndarray:
    """0/1/255 anomaly labels -> RGB: normal black, anomaly red, void grey."""
    out = np.zeros((*anomaly.shape, 3), np.uint8)
    out[anomaly == 1] = (255, 0, 0)
    out[anomaly == 255] = (128, 128, 128)
    return out


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image (PNG by the suffix); OSError if OpenCV cannot."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _pixels(image: Any) -> np.ndarray:
    """A rosbags Image of our outputs (rgb8, mono8, 32FC1) -> numpy (H, W[, 3])."""
    dtype = np.float32 if image.encoding == "32FC1" else np.uint8
    channels = 3 if image.encoding == "rgb8" else 1
    pixels = np.frombuffer(image.data, dtype).reshape(image.height, image.width * channels)
    return pixels.reshape(image.height, image.width, channels) if channels == 3 else pixels


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What one run did; latencies in seconds."""

    mode: str  # "ros" or "offline"
    frames_in: int = 0  # frames played (ros) or read (offline)
    frames_out: int = 0  # results recorded
    node_received: int | None = None  # frames the node received (ros; from its diagnostics)
    node_dropped: int | None = None  # frames the node replaced in its newest-frame slot (ros)
    node_malformed: int | None = None
    recorded: dict[str, int] = field(default_factory=dict)  # messages in the result bag per output
    latencies_s: list[float] = field(default_factory=list)  # ros: publish -> result; offline: per-frame time
    play_s: float = 0.0
    wall_s: float = 0.0


# The bundled model's boundaries between classes score about 0.5-0.7. On 20 held-out generated 256x512 scenes
# (seeds 4,000,000+, "eval" anomalies) its pixel precision / recall are 0.10 / 0.67 at 0.5 and 0.31 / 0.48 at
# 0.8 (best pixel F1 at 0.91): 0.8 keeps the obstacle and drops most of the outline clutter.
BUNDLED_MODEL_THRESHOLD = 0.8


def _node_default(name: str) -> Any:
    """A node parameter's default, from the node's own parameter table."""
    from m2a_perception.node import PARAMETERS

    return next(spec.default for spec in PARAMETERS if spec.name == name)


def _node_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The parameter overrides the demo gives the node: model, network input, threshold."""
    params: dict[str, Any] = {"score_threshold": args.threshold}
    if args.checkpoint:
        params["model_path"] = str(Path(args.checkpoint).resolve())
    if args.input_size:
        params["input_height"], params["input_width"] = args.input_size
    return params


def run_offline(args: argparse.Namespace, bag: Path, result_bag: Path) -> RunStats:
    """`m2a-replay process` over the demo bag (no ROS graph)."""
    start = time.perf_counter()
    overrides = _node_parameters(args)
    for key, (param, _) in _outputs().items():
        overrides[param] = key in RECORDED
    values = replay.node_parameters(replay.default_params_file(), overrides, NAMESPACE)
    stats = replay.process_bag(bag, result_bag, values, replay.ProcessConfig(namespace=NAMESPACE))
    return RunStats(
        mode="offline",
        frames_in=stats.frames_in,
        frames_out=stats.frames_out,
        recorded=dict.fromkeys(RECORDED, stats.frames_out),
        latencies_s=list(stats.frame_s or []),
        play_s=stats.seconds,
        wall_s=time.perf_counter() - start,
    )


def _outputs() -> dict[str, tuple[str, str]]:
    from m2a_perception.node import OUTPUTS

    return OUTPUTS


class _Recorder:
    """Subscribes to the node's outputs and diagnostics; writes outputs into a bag as they arrive (raw CDR)."""

    def __init__(self, node: Any, writer: Any, namespace: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from m2a.msg import AnomalySegmentation
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.topics = {key: f"{namespace}/{_outputs()[key][1]}" for key in RECORDED}
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.received: dict[int, float] = {}  # result stamp (ns) -> wall time it arrived
        self.recorded = dict.fromkeys(self.topics, 0)
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_time = 0.0
        self._lock = threading.Lock()
        store = bags.typestore()
        self._subs = []
        for key, topic in self.topics.items():
            msgtype = bags.RESULT_TYPE if key == "result" else bags.IMAGE_TYPE
            connection = writer.add_connection(topic, msgtype, typestore=store)
            msg_class = AnomalySegmentation if key == "result" else Image
            callback = self._callback(writer, connection, key)
            self._subs.append(node.create_subscription(msg_class, topic, callback, qos, raw=True))
        self._subs.append(node.create_subscription(DiagnosticArray, f"{namespace}/diagnostics", self._on_diag, 10))

    def _callback(self, writer: Any, connection: Any, key: str) -> Any:
        def record(raw: bytes) -> None:
            now = time.time()
            writer.write(connection, time.time_ns(), raw)  # logged at receipt, as `ros2 bag record` does
            self.recorded[key] += 1
            if key == "result":
                header = bags.typestore().deserialize_cdr(raw, bags.RESULT_TYPE).header
                with self._lock:
                    self.received[bags.stamp_ns(header)] = now

        return record

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            with self._lock:
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics_time = time.time()

    def counts(self) -> tuple[dict[str, int], float, int]:
        """The node's latest totals (received, published, dropped, ...), when they came, results recorded."""
        with self._lock:
            totals = {k[: -len("_total")]: int(v) for k, v in self.diagnostics.items() if k.endswith("_total")}
            return totals, self.diagnostics_time, len(self.received)


def _start_node(args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    """The node in a child process (`python -m m2a_perception.node`), in NAMESPACE, logging to `log_path`."""
    params_file = replay.default_params_file()
    cmd = [sys.executable, "-m", "m2a_perception.node", "--ros-args", "-r", f"__ns:={NAMESPACE}"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for name, value in _node_parameters(args).items():
        cmd += ["-p", f"{name}:={json.dumps(value) if not isinstance(value, str) else value}"]
    # The node's outputs are reliable with a 1-deep history: a fragment lost under load is only repaired if the
    # sample is still in the writer's history when the subscriber asks again, and the next frame replaces it.
    # A recorder wants every sample, so it asks for a deeper history (about 1 in 4 overlays was lost without).
    for key in RECORDED:
        cmd += ["-p", f"qos_overrides.{NAMESPACE}/{_outputs()[key][1]}.publisher.depth:={RECORD_DEPTH}"]
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop_node(process: subprocess.Popen) -> None:
    """Ctrl-C the node, then terminate / kill it if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def run_ros(args: argparse.Namespace, bag: Path, result_bag: Path, out: Path) -> RunStats:
    """Start the node, play the bag into it, record its outputs; see the module docstring."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    start = time.perf_counter()
    stats = RunStats(mode="ros")
    log_path = out / "node.log"
    process = _start_node(args, log_path)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("m2a_demo", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    published: dict[int, float] = {}  # input stamp (ns) -> wall time it was published
    writer = replay._writer(result_bag, "mcap")
    writer.open()
    spinner = None
    try:
        recorder = _Recorder(node, writer, NAMESPACE)

        def spin() -> None:
            with contextlib.suppress(ExternalShutdownException):
                executor.spin()

        spinner = threading.Thread(target=spin, name="m2a-demo-executor", daemon=True)
        spinner.start()
        player = replay.Player(node, bag, replay.PlayConfig(out_topic=f"{NAMESPACE}/image", rate=args.play_rate))
        try:
            print(f"waiting for the node (log: {log_path}) ...", flush=True)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not (
                player.wait_for_subscriber(0.5)
                and all(node.count_publishers(topic) >= 1 for topic in recorder.topics.values())
            ):
                if process.poll() is not None:
                    raise DemoError(f"the node exited with code {process.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise DemoError(f"the node did not subscribe within {READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
            time.sleep(SETTLE_S)  # the node may not have matched our publisher yet: a first frame would be lost
            print(f"playing {bag} at x{args.play_rate} into {NAMESPACE}/image ...", flush=True)
            play_start = time.perf_counter()
            played = player.run(lambda image, wall: published.__setitem__(bags.stamp_ns(image.msg.header), wall))
            stats.play_s = time.perf_counter() - play_start
        finally:
            player.close()
        stats.frames_in = played.published
        _drain(recorder, stats.frames_in, process, log_path)
        totals, _, _ = recorder.counts()
        stats.node_received = totals.get("received")
        stats.node_dropped = totals.get("dropped_in_slot")
        stats.node_malformed = totals.get("malformed")
        with recorder._lock:
            received = dict(recorder.received)
            stats.recorded = dict(recorder.recorded)
    finally:
        _stop_node(process)
        executor.shutdown(timeout_sec=5.0)
        if spinner is not None:
            spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        writer.close()
    stats.frames_out = len(received)
    stats.latencies_s = [received[s] - published[s] for s in sorted(received) if s in published]
    stats.wall_s = time.perf_counter() - start
    return stats


def _drain(recorder: _Recorder, frames_in: int, process: subprocess.Popen, log_path: Path) -> None:
    """Wait until the node has handled every frame it received (its diagnostics say so) and we have its results."""
    last_publish = time.time()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the node exited with code {process.returncode}:\n{_tail(log_path)}")
        totals, when, results = recorder.counts()
        outcomes = ("published", "dropped_in_slot", "malformed", "errors", "skipped_no_subscribers")
        handled = sum(totals.get(k, 0) for k in outcomes)
        fresh = when > last_publish + 0.2  # a report made after the last frame went out
        if fresh and totals.get("received", -1) == handled and results >= totals.get("published", 0):
            return
        time.sleep(0.1)
    print(f"warning: the node had not finished {DRAIN_TIMEOUT_S:.0f} s after the last frame", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# Export: PNGs, MP4, summary
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ExportStats:
    """What was written from the result bag."""

    pngs: int = 0
    mp4: str | None = None
    frames_with_instances: int = 0
    instances_max: int = 0


def export(args: argparse.Namespace, bag: Path, result_bag: Path, out: Path) -> ExportStats:
    """Per output frame: overlay PNG and panel PNG; an MP4 of what a viewer saw live (last overlay held)."""
    from m2a_perception.postprocess import colorize
    from m2a_perception.synthroad import SceneConfig, generate_sequence

    store = bags.typestore()
    inputs: list[tuple[int, np.ndarray]] = []  # (stamp, frame) in bag order
    with contextlib.closing(bags.open_reader(bag)) as reader:
        connection = bags.image_connection(reader, None, bag)
        for image in bags.read_images(reader, connection, bag):
            inputs.append((bags.stamp_ns(image.msg.header), bags.decode_image(image.msg, f"{bag} {image.index}")))
    index_of = {stamp: index for index, (stamp, _) in enumerate(inputs)}
    overlays: dict[int, np.ndarray] = {}
    results: dict[int, Any] = {}
    with contextlib.closing(bags.open_reader(result_bag)) as reader:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            index = index_of.get(bags.stamp_ns(msg.header))
            if index is None:
                raise DemoError(f"{result_bag} {conn.topic}: a message with a stamp no input frame has")
            (results if conn.msgtype == bags.RESULT_TYPE else overlays)[index] = msg
    stats = ExportStats()
    scenes = generate_sequence(args.seed, args.frames, SceneConfig(height=args.height, width=args.width))
    for index in sorted(overlays):
        overlays[index] = _pixels(overlays[index])
        write_rgb(out / f"frame_{index:04d}_overlay.png", overlays[index])
        stats.pngs += 1
    for index, result in sorted(results.items()):
        stats.frames_with_instances += bool(result.instances)
        stats.instances_max = max(stats.instances_max, len(result.instances))
        if index not in overlays:
            continue
        score, semantic = _pixels(result.anomaly_score), _pixels(result.semantic_labels)
        panel = np.concatenate(
            [
                np.concatenate([overlays[index], ground_truth_image(scenes[index].anomaly)], axis=1),
                np.concatenate([score_heatmap(score), colorize(semantic)], axis=1),
            ],
            axis=0,
        )
        write_rgb(out / f"frame_{index:04d}_panel.png", panel)
        stats.pngs += 1
    stats.mp4 = _write_mp4(out / "overlay.mp4", [frame for _, frame in inputs], overlays, args.rate)
    return stats


def _write_mp4(path: Path, frames: list[np.ndarray], overlays: dict[int, np.ndarray], fps: float) -> str | None:
    """The video a viewer saw live: each camera frame shows the newest overlay so far (the raw frame before
    the first). None when OpenCV has no MP4 encoder here."""
    if not frames:
        return None
    height, width = frames[0].shape[:2]
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not video.isOpened():
        return None
    shown = None
    try:
        for index, frame in enumerate(frames):
            shown = overlays.get(index, shown)
            video.write(cv2.cvtColor(frame if shown is None else shown, cv2.COLOR_RGB2BGR))
    finally:
        video.release()
    if not path.is_file() or path.stat().st_size == 0:
        path.unlink(missing_ok=True)
        return None
    return str(path)


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "mean": 1000 * statistics.fmean(values),
        "median": 1000 * statistics.median(values),
        "p95": 1000 * p95,
        "max": 1000 * ordered[-1],
    }


def summarise(args: argparse.Namespace, run: RunStats, written: ExportStats, out: Path) -> str:
    """Write summary.json and summary.txt; return the text."""
    latency = _ms(run.latencies_s)
    dropped = run.frames_in - run.frames_out
    how = f"through ROS 2: node in a child process, namespace {NAMESPACE}" if run.mode == "ros" else "offline, no ROS"
    lines = [
        f"m2a demo ({how}): {args.frames} frames {args.height}x{args.width} (HxW) at {args.rate:g} Hz"
        + (f", played at x{args.play_rate:g} ({run.play_s:.1f} s)" if run.mode == "ros" else ""),
        f"frames in {run.frames_in}, out {run.frames_out}, dropped {dropped}"
        + (f" (recorded: {', '.join(f'{n} {k}' for k, n in run.recorded.items())})" if run.recorded else ""),
    ]
    if run.mode == "ros":
        lost = run.frames_in - (run.node_received or 0)
        lines.append(
            f"  node: received {run.node_received}, dropped {run.node_dropped} in its newest-frame slot "
            f"(it was busy), malformed {run.node_malformed}; lost in transport {lost}"
        )
        what = "latency (frame published -> result received)"
    else:
        what = "time per frame (decode, model, postprocess, serialise; no transport)"
    if latency:
        lines.append(
            f"{what}: mean {latency['mean']:.0f} ms, median {latency['median']:.0f}, "
            f"p95 {latency['p95']:.0f}, max {latency['max']:.0f}"
        )
    lines.append(
        f"frames with anomaly instances: {written.frames_with_instances}/{run.frames_out}"
        + (" (random weights: the pipeline is real, the detections are not)" if args.random_weights else "")
    )
    lines.append(
        f"wrote {written.pngs} PNGs (overlays, panels), {written.mp4 or 'no MP4 (OpenCV has no mp4v encoder here)'}, "
        f"{out / 'result_bag'} and this summary (summary.json) to {out.resolve()}"
    )
    text = "\n".join(lines)
    data = {
        "run": asdict(run) | {"dropped": dropped, "latency_ms": latency},
        "export": asdict(written),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
    }
    data["run"].pop("latencies_s")
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "summary.txt").write_text(text + "\n")
    return text


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def _clean(out: Path) -> None:
    """Remove what an earlier demo wrote into `out` (only its own files)."""
    for name in _ARTEFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for path in out.glob("frame_*_*.png"):
        path.unlink()


def _ros_missing() -> str | None:
    """Why the ROS path cannot run here (rclpy or our messages missing), or None."""
    try:
        import rclpy  # noqa: F401
        from m2a.msg import AnomalySegmentation  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def run(args: argparse.Namespace) -> Path:
    """The whole demo into args.out; returns it."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    if not args.no_ros and (missing := _ros_missing()) is not None:
        raise DemoError(f"ROS 2 is not importable here ({missing}): `make ros`, or run `m2a-demo --no-ros`")
    bag, result_bag = out / "demo_bag", out / "result_bag"
    demo = replay.DemoBagConfig(
        frames=args.frames, height=args.height, width=args.width, rate_hz=args.rate, seed=args.seed
    )
    start = time.perf_counter()
    replay.make_demo_bag(bag, demo)
    print(f"wrote {bag} ({args.frames} frames, {time.perf_counter() - start:.1f} s)", flush=True)
    stats = run_offline(args, bag, result_bag) if args.no_ros else run_ros(args, bag, result_bag, out)
    if stats.frames_out == 0:
        raise DemoError(f"no results came back from the node; its log: {out / 'node.log'}")
    written = export(args, bag, result_bag, out)
    print(summarise(args, stats, written, out))
    return out


def _size(text: str) -> tuple[int, int]:
    height, sep, width = text.partition("x")
    if not sep or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 256x512, got {text!r}")
    return int(height), int(width)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The demo's options."""
    parser = argparse.ArgumentParser(
        prog="m2a-demo", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="demo_out", help="output folder (created; earlier demo files replaced)")
    parser.add_argument("--frames", type=int, default=60, help="frames of the generated drive")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate of the demo bag, Hz")
    parser.add_argument(
        "--play-rate",
        type=float,
        default=0.1,
        help="playback speed factor (default 0.1: 1 frame/s, about what the small preset manages on a 2-core CPU; "
        "faster, and the node drops the frames it cannot keep up with)",
    )
    parser.add_argument("--seed", type=int, default=7, help="scene seed (same seed, same drive)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="model file (ours or the authors' .pth/.pkl); default: the bundled small model (generated scenes)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="the small preset untrained (the pipeline without detections)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"anomaly score above which a pixel is anomalous (default: {BUNDLED_MODEL_THRESHOLD} with the bundled "
        "model, chosen on held-out generated scenes; the node's score_threshold default otherwise)",
    )
    parser.add_argument("--input-size", type=_size, default=None, help="network input HEIGHTxWIDTH (default: frame)")
    parser.add_argument("--no-ros", action="store_true", help="process the bag offline (m2a-replay process)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    if not 0 < args.play_rate <= 100:
        parser.error(f"--play-rate must be in (0, 100], got {args.play_rate}")
    if args.checkpoint and args.random_weights:
        parser.error("--checkpoint and --random-weights exclude each other")
    if not args.checkpoint and not args.random_weights:
        bundled = bundled_checkpoint()
        if bundled is None:
            parser.error(
                "this installation has no bundled model (m2a_perception/weights/): "
                "pass --checkpoint FILE or --random-weights"
            )
        args.checkpoint = str(bundled)
        if args.threshold is None:
            args.threshold = BUNDLED_MODEL_THRESHOLD
    if args.threshold is None:
        args.threshold = _node_default("score_threshold")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`m2a-demo`)."""
    args = parse_args(argv)
    try:
        run(args)
    except (DemoError, bags.BagError, ValueError) as e:
        print(f"m2a-demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
