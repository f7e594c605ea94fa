"""`m2a-replay`: ROS 2 bags for the anomaly node: make a demo bag, play a bag live, or process one offline.

    m2a-replay make-demo-bag OUT        a generated drive toward a small obstacle, as a camera Image topic
    m2a-replay play BAG                 publish the bag's image topic at its recorded rate (needs rclpy)
    m2a-replay process BAG --out OUT    run the model over every frame, write the node's outputs to a new bag

Bags are read and written with `rosbags` (no ROS install needed, except rclpy for `play`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2a_perception import bags

DEMO_TOPIC = "/camera/image_raw"
DEMO_START_NS = 1_700_000_000 * 1_000_000_000  # first stamp of a demo bag (fixed: same seed, same bag)
STORAGES = ("mcap", "sqlite3")
BAG_VERSION = 9  # rosbag2 metadata version of Jazzy and Kilted
SETTLE_S = 0.5  # `play --wait-for-subscriber`: pause after the subscriber appears, before the first message


# ----------------------------------------------------------------------------------------------------------
# make-demo-bag
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoBagConfig:
    """What `make-demo-bag` writes: a generated small-obstacle sequence as a camera topic."""

    frames: int = 60
    height: int = 512
    width: int = 1024
    rate_hz: float = 15.0
    seed: int = 3
    encoding: str = "bgr8"
    frame_id: str = "camera"
    topic: str = DEMO_TOPIC
    storage: str = "mcap"
    start_ns: int = DEMO_START_NS

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 0.0 < self.rate_hz <= 1000.0:
            raise ValueError(f"rate_hz must be in (0, 1000], got {self.rate_hz}")
        if self.encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {self.encoding!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if not self.topic.startswith("/"):
            raise ValueError(f"topic must be absolute (start with '/'), got {self.topic!r}")

    def stamp_ns(self, index: int) -> int:
        """Camera stamp of frame `index`: the start plus index / rate."""
        return self.start_ns + round(index * 1e9 / self.rate_hz)


def _writer(path: Path, storage: str) -> Any:
    """A rosbags Writer for a new bag folder (refusing an existing path)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    if path.exists():
        raise FileExistsError(f"{path} already exists; a bag needs a new folder")
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    return Writer(path, version=BAG_VERSION, storage_plugin=plugin)


def make_demo_bag(out: str | Path, config: DemoBagConfig = DemoBagConfig()) -> Path:
    """Write a ROS 2 bag of a generated drive toward an obstacle (one Image topic at camera rate); returns it."""
    from m2a_perception.synthroad import SceneConfig, generate_sequence

    out = Path(out)
    scenes = generate_sequence(config.seed, config.frames, SceneConfig(height=config.height, width=config.width))
    store = bags.typestore()
    with _writer(out, config.storage) as writer:
        connection = writer.add_connection(config.topic, bags.IMAGE_TYPE, typestore=store)
        for index, scene in enumerate(scenes):
            stamp = config.stamp_ns(index)
            message = bags.rgb_to_image(scene.image, config.encoding, bags.header(stamp, config.frame_id))
            writer.write(connection, stamp, bags.serialize(message))
    return out


# ----------------------------------------------------------------------------------------------------------
# play
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlayConfig:
    """How `play` publishes: which topic, how fast, from where, how often."""

    topic: str | None = None  # the bag's topic; None = its only image topic
    out_topic: str | None = None  # where to publish (relative names follow the node's namespace); None = 'image'
    # (or 'image/compressed' for a CompressedImage topic), the anomaly node's input
    rate: float = 1.0  # playback speed factor: 2.0 = twice the recorded rate
    loop: bool = False
    start_offset_s: float = 0.0  # skip this much of the bag's beginning
    wait_for_subscriber_s: float = 0.0  # wait up to this long for a subscriber before the first message

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1000.0:
            raise ValueError(f"rate must be in (0, 1000], got {self.rate}")
        if self.start_offset_s < 0.0:
            raise ValueError(f"start offset must be >= 0 s, got {self.start_offset_s}")
        if self.wait_for_subscriber_s < 0.0:
            raise ValueError(f"wait for subscriber must be >= 0 s, got {self.wait_for_subscriber_s}")


@dataclass
class PlayStats:
    """What `play` did."""

    published: int = 0
    loops: int = 0
    late_s: float = 0.0  # the most a message went out after its due time (the machine could not keep up)
    malformed: int = 0  # messages skipped because their image is malformed
    first_malformed: str = ""


def _message_class(msgtype: str) -> Any:
    """The rclpy message class of sensor_msgs Image or CompressedImage."""
    from sensor_msgs.msg import CompressedImage, Image

    return {bags.IMAGE_TYPE: Image, bags.COMPRESSED_TYPE: CompressedImage}[msgtype]


class Player:
    """Publishes a bag's image topic through an rclpy node at the recorded rate (raw CDR, stamps untouched)."""

    def __init__(self, node: Any, bag: str | Path, config: PlayConfig = PlayConfig()) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.bag = Path(bag)
        self.config = config
        self._reader = bags.open_reader(self.bag)
        try:
            self.connection = bags.image_connection(self._reader, config.topic, self.bag)
            if self.connection.msgcount == 0:
                raise bags.BagError(f"bag {self.bag}: topic {self.connection.topic} has no messages")
            self._start_ns = self._reader.start_time + round(config.start_offset_s * 1e9)
            if self._start_ns >= self._reader.end_time:
                raise bags.BagError(
                    f"bag {self.bag}: start offset {config.start_offset_s} s is past its end "
                    f"({(self._reader.end_time - self._reader.start_time) / 1e9:.3f} s long)"
                )
        except Exception:
            self._reader.close()
            raise
        default = "image/compressed" if self.connection.msgtype == bags.COMPRESSED_TYPE else "image"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)  # like `ros2 bag play` without QoS
        self.publisher = node.create_publisher(
            _message_class(self.connection.msgtype), config.out_topic or default, qos
        )
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask `run` to return after the message it is waiting on (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Close the bag."""
        self._reader.close()

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Wait until someone subscribes to the output topic (True), or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while self.publisher.get_subscription_count() == 0:
            if time.monotonic() >= deadline or self._stop.wait(0.05):
                return False
        return True

    def run(self, on_publish: Callable[[bags.BagImage, float], None] | None = None) -> PlayStats:
        """Publish until the bag ends (or forever with `loop`, or until `stop`); `on_publish(image, wall_time)`."""
        stats = PlayStats()
        if self.config.wait_for_subscriber_s > 0 and self.wait_for_subscriber(self.config.wait_for_subscriber_s):
            # we see the subscription; the subscriber may not have matched us yet (a best-effort one would
            # miss the first frames): give discovery a moment on its side
            self._stop.wait(SETTLE_S)
        while not self._stop.is_set():
            wall_start = None  # set at the first message, so opening the bag does not make it late
            for image in bags.read_images(self._reader, self.connection, self.bag, start_ns=self._start_ns):
                offset_s = (image.log_time_ns - self._start_ns) / 1e9 / self.config.rate
                wall_start = time.monotonic() - offset_s if wall_start is None else wall_start
                due = wall_start + offset_s
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return stats
                try:
                    self._check(image)
                except bags.BagError as e:
                    stats.malformed += 1
                    stats.first_malformed = stats.first_malformed or str(e)
                    continue
                now = time.monotonic()
                stats.late_s = max(stats.late_s, now - due)
                self.publisher.publish(image.raw)
                stats.published += 1
                if on_publish is not None:
                    on_publish(image, time.time())
            stats.loops += 1
            if not self.config.loop:
                break
        return stats

    def _check(self, image: bags.BagImage) -> None:
        """BagError for a malformed image, which is skipped rather than sent (sizes only: no pixel copy)."""
        where = f"bag {self.bag}, {self.connection.topic} message {image.index}"
        if self.connection.msgtype == bags.IMAGE_TYPE:
            bags.check_image(image.msg, where)
        else:
            bags.check_compressed(image.msg, where)


def play(bag: str | Path, config: PlayConfig, ros_args: Sequence[str] | None = None) -> PlayStats:
    """Start rclpy, play the bag into the ROS graph (node 'm2a_replay'), shut down; Ctrl-C stops it."""
    import rclpy

    rclpy.init(args=list(ros_args) if ros_args else None)
    node = rclpy.create_node("m2a_replay")
    player = None
    try:
        player = Player(node, bag, config)
        node.get_logger().info(
            f"playing {player.connection.topic} ({player.connection.msgcount} messages) of {bag} on "
            f"{player.publisher.topic_name} at x{config.rate}{' in a loop' if config.loop else ''}"
        )
        try:
            stats = player.run()
        except KeyboardInterrupt:
            stats = PlayStats()
        node.get_logger().info(f"published {stats.published} messages; most late {stats.late_s * 1000:.1f} ms")
        if stats.malformed:
            node.get_logger().warning(
                f"skipped {stats.malformed} malformed message(s), the first: {stats.first_malformed}"
            )
        return stats
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


# ----------------------------------------------------------------------------------------------------------
# process
# ----------------------------------------------------------------------------------------------------------
def default_params_file() -> Path | None:
    """config/m2a_perception.yaml of the source tree, else of an installed share/m2a; None if neither exists."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "m2a_perception.yaml"]
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(Path(prefix) / "share" / "m2a" / "config" / "m2a_perception.yaml")
    return next((c for c in candidates if c.is_file()), None)


def _section_matches(key: str, node_fqn: str) -> bool:
    """Whether a parameter file's top-level key (`/**`, `node`, `/ns/node`, with * and ** wildcards) names the node."""
    if "/" not in key.strip("/") and "*" not in key:
        return key.strip("/") == node_fqn.rsplit("/", 1)[-1]
    pattern = re.escape("/" + key.lstrip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(pattern, node_fqn) is not None


def _typed(name: str, value: Any, default: Any, where: str) -> Any:
    """`value` checked against the type of the parameter's default (ints pass for floats, as in rclpy)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{where}: parameter {name} must be a {type(default).__name__}, got {value!r}")
    return value


def node_parameters(
    params_file: str | Path | None = None, overrides: dict[str, Any] | None = None, namespace: str = "/m2a"
) -> dict[str, Any]:
    """The node's parameter values: its table's defaults, then a ROS parameter file's, then `overrides`.

    The file is read like `--params-file`: every top-level section that names the node (`/**`, its name, or
    its namespace and name, with wildcards) applies, in file order. Unknown parameters and wrong types are
    errors naming the file; the result is validated like the node validates its parameters.
    """
    import yaml

    from m2a_perception.node import NODE_NAME, PARAMETERS, validate_parameters

    specs = {spec.name: spec for spec in PARAMETERS}
    values = {spec.name: spec.default for spec in PARAMETERS}
    sources: list[tuple[str, dict[str, Any]]] = []
    if params_file is not None:
        path = Path(params_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"parameter file {path}: cannot read it ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"parameter file {path}: expected a mapping of node sections, got {type(data).__name__}")
        node_fqn = f"{namespace.rstrip('/')}/{NODE_NAME}" if namespace.strip("/") else f"/{NODE_NAME}"
        matched = [key for key in data if isinstance(key, str) and _section_matches(key, node_fqn)]
        if not matched:
            raise ValueError(f"parameter file {path}: no section for node {node_fqn} (keys: {list(data)})")
        for key in matched:
            section = data[key]
            params = section.get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(params, dict):
                raise ValueError(f"parameter file {path}: section {key!r} has no 'ros__parameters' mapping")
            sources.append((f"parameter file {path}, section {key!r}", params))
    if overrides:
        sources.append(("command line", overrides))
    for where, params in sources:
        for name, value in params.items():
            if name not in specs:
                raise ValueError(f"{where}: unknown parameter {name!r}; the node declares {sorted(specs)}")
            values[name] = _typed(name, value, specs[name].default, where)
    reason = validate_parameters(values)
    if reason is not None:
        raise ValueError(f"invalid parameters: {reason}")
    return values


@dataclass(frozen=True)
class ProcessConfig:
    """How `process` reads and writes: input topic, output namespace, storage, frame limit, progress bar."""

    topic: str | None = None  # the bag's image topic; None = its only one
    namespace: str = "/m2a"  # output topics are <namespace>/anomaly/mask ... (the launch files' namespace)
    storage: str = "mcap"
    limit: int | None = None  # process at most this many frames
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.namespace.startswith("/"):
            raise ValueError(f"namespace must be absolute (start with '/'), got {self.namespace!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass
class ProcessStats:
    """What `process` did; times in seconds."""

    frames_in: int = 0
    frames_out: int = 0
    malformed: int = 0
    first_malformed: str = ""
    topics: dict[str, str] | None = None  # output key -> topic written
    seconds: float = 0.0
    inference_s: list[float] | None = None  # the backend's "inference" stage per frame
    frame_s: list[float] | None = None  # each written frame, decode to serialised outputs


def output_topics(values: dict[str, Any], namespace: str) -> dict[str, str]:
    """Output key -> absolute topic, for the outputs the parameters switch on (as the node would publish)."""
    from m2a_perception.node import OUTPUTS

    base = namespace.rstrip("/")
    return {key: f"{base}/{topic}" for key, (param, topic) in OUTPUTS.items() if values[param]}


def process_bag(
    bag: str | Path, out: str | Path, values: dict[str, Any], config: ProcessConfig = ProcessConfig()
) -> ProcessStats:
    """Run the backend and postprocessing over every frame of the bag; write the enabled outputs to a new bag.

    Each output message keeps its input's header (stamp, frame_id) and is logged at its input's log time.
    Malformed frames are skipped and counted, as the node skips them.
    """
    from tqdm import tqdm

    from m2a_perception.backends import create_backend
    from m2a_perception.node import backend_config, postprocess_config
    from m2a_perception.postprocess import Postprocessor

    bag, out = Path(bag), Path(out)
    reader = bags.open_reader(bag)
    stats = ProcessStats(inference_s=[], frame_s=[])
    try:
        connection = bags.image_connection(reader, config.topic, bag)
        topics = output_topics(values, config.namespace)
        if not topics:
            raise ValueError("every output is switched off (publish_* parameters): nothing to write")
        stats.topics = topics
        backend = create_backend(backend_config(values))
        post = Postprocessor(postprocess_config(values))
        store = bags.typestore()
        total = connection.msgcount if config.limit is None else min(config.limit, connection.msgcount)
        start = time.perf_counter()
        with _writer(out, config.storage) as writer:
            conns = {
                key: writer.add_connection(
                    topic, bags.RESULT_TYPE if key == "result" else bags.IMAGE_TYPE, typestore=store
                )
                for key, topic in topics.items()
            }
            frames = bags.read_images(reader, connection, bag)
            for image in tqdm(frames, total=total, unit="frame", disable=not config.progress, desc="process"):
                if stats.frames_in == total:
                    break
                stats.frames_in += 1
                where = f"bag {bag}, {connection.topic} message {image.index}"
                frame_start = time.perf_counter()
                try:
                    rgb = bags.decode_image(image.msg, where)
                except bags.BagError as e:
                    stats.malformed += 1
                    stats.first_malformed = stats.first_malformed or str(e)
                    continue
                result = backend.infer(rgb)
                stats.inference_s.append(result.timings.get("inference", 0.0))
                header = image.msg.header
                outputs = post.process(
                    rgb,
                    result,
                    bags.stamp_ns(header) / 1e9,
                    semantic_color="semantic_color" in topics,
                    overlay="overlay" in topics,
                )
                for key, msg in _output_messages(outputs, header, topics, values["scoring_variant"]).items():
                    writer.write(conns[key], image.log_time_ns, bags.serialize(msg))
                stats.frames_out += 1
                stats.frame_s.append(time.perf_counter() - frame_start)
        stats.seconds = time.perf_counter() - start
    finally:
        reader.close()
    return stats


def _output_messages(outputs: Any, header: Any, topics: dict[str, str], scoring_variant: str) -> dict[str, Any]:
    """The rosbags messages of one frame for the enabled outputs (the node's topics and encodings)."""
    images = {
        "mask": (outputs.anomaly_mask, "mono8"),
        "score": (outputs.anomaly_score, "32FC1"),
        "semantic": (outputs.semantic, "mono8"),
        "semantic_color": (outputs.semantic_color, "rgb8"),
        "overlay": (outputs.overlay, "rgb8"),
    }
    msgs = {key: bags.numpy_to_image(images[key][0], images[key][1], header) for key in topics if key in images}
    if "result" in topics:
        msgs["result"] = bags.result_message(outputs, header, scoring_variant)
    return msgs


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def _flag(text: str) -> bool:
    """'true'/'false' (any case, or 1/0) -> bool, for options a launch file fills in."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2a-replay", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = "commands: make-demo-bag, play, process (m2a-replay COMMAND --help for each)"
    commands = parser.add_subparsers(dest="command", required=True, metavar="{make-demo-bag,play,process}")

    demo = commands.add_parser("make-demo-bag", help="write a bag of a generated drive toward a small obstacle")
    defaults = DemoBagConfig()
    demo.add_argument("out", help="bag folder to create (must not exist)")
    demo.add_argument("--frames", type=int, default=defaults.frames)
    demo.add_argument("--height", type=int, default=defaults.height)
    demo.add_argument("--width", type=int, default=defaults.width)
    demo.add_argument("--rate", type=float, default=defaults.rate_hz, help="camera rate, Hz (stamps 1/rate apart)")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="scene seed (same seed, same bag)")
    demo.add_argument("--encoding", choices=("rgb8", "bgr8"), default=defaults.encoding)
    demo.add_argument("--frame-id", default=defaults.frame_id)
    demo.add_argument("--topic", default=defaults.topic)
    demo.add_argument("--storage", choices=STORAGES, default=defaults.storage)

    player = commands.add_parser("play", help="publish a bag's image topic at its recorded rate (needs rclpy)")
    player.add_argument("bag", help="ROS 2 bag folder")
    player.add_argument("--topic", default=None, help="image topic in the bag (default: its only image topic)")
    player.add_argument(
        "--out-topic", default=None, help="topic to publish on (default: 'image', or 'image/compressed')"
    )
    player.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice the recorded rate)")
    player.add_argument(
        "--loop",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        metavar="BOOL",
        help="start over at the end, until Ctrl-C (`--loop` or `--loop true|false`, for launch files)",
    )
    player.add_argument("--start-offset", type=float, default=0.0, help="skip this many seconds of the bag")
    player.add_argument(
        "--wait-for-subscriber", type=float, default=0.0, metavar="S", help="wait up to S s for a subscriber"
    )

    process = commands.add_parser("process", help="run the model offline over every frame into a new bag")
    process.add_argument("bag", help="ROS 2 bag folder with an image topic")
    process.add_argument("--out", required=True, help="bag folder to create with the node's output topics")
    process.add_argument("--topic", default=None, help="image topic in the bag (default: its only image topic)")
    process.add_argument(
        "--params-file",
        default="default",
        help="the node's ROS parameter file (default: config/m2a_perception.yaml; 'none': the node's defaults)",
    )
    process.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="override one node parameter, as `--ros-args -p` does (e.g. -p publish_score:=false); repeatable",
    )
    process.add_argument("--namespace", default="/m2a", help="output topics are NAMESPACE/anomaly/mask ...")
    process.add_argument("--storage", choices=STORAGES, default="mcap")
    process.add_argument("--limit", type=int, default=None, help="process at most this many frames")
    process.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _param_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`NAME:=VALUE` strings -> {name: value}, values read as YAML (like `--ros-args -p`)."""
    import yaml

    overrides = {}
    for item in items:
        name, sep, text = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"-p expects NAME:=VALUE, got {item!r}")
        value = yaml.safe_load(text) if text else ""
        overrides[name] = "" if value is None else value
    return overrides


def _run_process(args: argparse.Namespace) -> None:
    """`m2a-replay process`: parameters, then `process_bag`, then a summary line."""
    params_file = default_params_file() if args.params_file == "default" else args.params_file
    params_file = None if args.params_file == "none" else params_file
    values = node_parameters(params_file, _param_overrides(args.param), args.namespace)
    config = ProcessConfig(
        topic=args.topic,
        namespace=args.namespace,
        storage=args.storage,
        limit=args.limit,
        progress=not args.no_progress,
    )
    stats = process_bag(args.bag, args.out, values, config)
    per_frame = stats.seconds / max(stats.frames_out, 1)
    print(
        f"processed {stats.frames_out}/{stats.frames_in} frames of {args.bag} into {args.out} "
        f"({per_frame:.2f} s per frame; topics {', '.join(stats.topics.values())})"
    )
    if stats.malformed:
        print(f"skipped {stats.malformed} malformed frame(s), the first: {stats.first_malformed}", file=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line (bad input, missing file, unusable backend), not as a traceback."""
    errors: list[type[BaseException]] = [bags.BagError, FileExistsError, FileNotFoundError, ValueError]
    backends = sys.modules.get("m2a_perception.backends.base")  # only when `process` got that far (torch)
    if backends is not None:
        errors.append(backends.BackendError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (`m2a-replay`)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    ros_args = None
    if "--ros-args" in raw:  # launch files append `--ros-args -r __node:=...`: rclpy gets them, argparse not
        split = raw.index("--ros-args")
        raw, ros_args = raw[:split], ["m2a-replay", *raw[split:]]
    args = _parser().parse_args(raw)
    try:
        if args.command == "make-demo-bag":
            config = DemoBagConfig(
                frames=args.frames,
                height=args.height,
                width=args.width,
                rate_hz=args.rate,
                seed=args.seed,
                encoding=args.encoding,
                frame_id=args.frame_id,
                topic=args.topic,
                storage=args.storage,
            )
            start = time.perf_counter()
            out = make_demo_bag(args.out, config)
            print(
                f"wrote {config.frames} frames {config.height}x{config.width} (HxW) {config.encoding} "
                f"at {config.rate_hz} Hz "
                f"on {config.topic} to {out} ({time.perf_counter() - start:.1f} s)"
            )
        elif args.command == "play":
            config = PlayConfig(
                topic=args.topic or None,  # "" from a launch file = the bag's only image topic
                out_topic=args.out_topic or None,
                rate=args.rate,
                loop=args.loop,
                start_offset_s=args.start_offset,
                wait_for_subscriber_s=args.wait_for_subscriber,
            )
            play(args.bag, config, ros_args)
        else:
            _run_process(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"m2a-replay {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
