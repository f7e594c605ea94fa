"""The ROS 2 anomaly segmentation node: camera frames in, anomaly mask / score / semantic map / instances out.

    image (sensor_msgs/Image) or image/compressed (sensor_msgs/CompressedImage)   [input_transport]
      -> conversions -> newest-frame slot -> worker thread: backend.infer -> Postprocessor.process -> publish
    anomaly/mask (mono8 0/255), anomaly/score (32FC1), semantic/labels (mono8 trainIds), semantic/color and
    anomaly/overlay (rgb8, for RViz), anomaly/result (m2a/AnomalySegmentation), diagnostics (DiagnosticArray)

Every output carries the input's header. Topic names are relative (remap or namespace them). The subscription
uses sensor-data QoS with depth 1; the callback only converts (malformed frames are counted, logged throttled
and skipped) and puts the frame into a one-slot box, replacing (and counting as dropped) a frame the worker has
not taken yet, so a slow model never builds a backlog. Outputs nobody subscribes to are not computed; with no
subscriber at all, inference is skipped. Parameters come from the one table `PARAMETERS` (description and
range each); `m2a-perception --help` prints it. Start: `m2a-perception --ros-args --params-file
config/m2a_perception.yaml` or `ros2 run m2a anomaly_segmentation`.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from m2a_perception.conversions import (
    MalformedImageError,
    compressed_msg_to_rgb,
    image_msg_sharing,
    image_msg_to_rgb,
)

try:  # ROS is optional for importing this module (`--help`, the parameter table, docs)
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.qos_overriding_options import QoSOverridingOptions
    from sensor_msgs.msg import CompressedImage, Image

    _ROS_IMPORT_ERROR: ImportError | None = None
except ImportError as e:  # pragma: no cover - exercised only where ROS is missing
    _ROS_IMPORT_ERROR = e
    Node = object  # type: ignore[assignment,misc]

__all__ = [
    "OUTPUTS",
    "PARAMETERS",
    "AnomalySegmentationNode",
    "LatestFrameSlot",
    "ParamSpec",
    "SequenceGaps",
    "backend_config",
    "main",
    "parameter_table",
    "postprocess_config",
    "validate_parameters",
]

NODE_NAME = "anomaly_segmentation"
OUTPUT_QUEUE_DEPTH = 5  # per output publisher (QoS overrides may change it)
# Keep in sync with m2a_perception.backends.BACKENDS / PRESET_NAMES and model.scoring.SCORES / RESOLUTIONS
# (a test checks); repeated here so that `--help` and the table import neither torch nor rclpy.
_BACKENDS = ("torch", "onnxruntime", "tensorrt")
_PRESETS = ("r50", "small")
_SCORES = ("mask2anomaly", "max_softmax", "max_logit", "entropy", "energy")
_RESOLUTIONS = ("full", "quarter")
_TRANSPORTS = ("raw", "compressed")
_MAX_SIDE = 8192


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, typed default, description, allowed values or range, read-only or not."""

    name: str
    default: bool | int | float | str
    description: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    read_only: bool = False

    def constraints(self) -> str:
        """The allowed values as text (also the descriptor's additional_constraints)."""
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.low is not None:
            parts.append(f"range {self.low} .. {self.high}")
        if self.read_only:
            parts.append("read-only (set at start)")
        return "; ".join(parts)


# The one parameter table (STYLE.md 13): config/m2a_perception.yaml holds each with its default.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("backend", "torch", "Inference runtime: torch (checkpoint), onnxruntime (.onnx from m2a-export) or "
              "tensorrt (.engine, or an .onnx built into a cached engine on first start).", choices=_BACKENDS,
              read_only=True),
    ParamSpec("model_path", "", "Model file: a checkpoint (m2a format, or the authors' detectron2 .pth/.pkl) for "
              "torch, .onnx for onnxruntime, .engine/.onnx for tensorrt. Empty (torch only): the preset with RANDOM "
              "weights (a loud warning; scores are meaningless).", read_only=True),
    ParamSpec("preset", "small", "Architecture when model_path is empty or a detectron2 file (r50 = the paper's).",
              choices=_PRESETS, read_only=True),
    ParamSpec("device", "cpu", "'cpu', 'cuda' or 'cuda:N'.", read_only=True),
    ParamSpec("fp16", False, "Half precision (CUDA only).", read_only=True),
    ParamSpec("input_height", 0, "Height frames are resized to before the network; 0 (with input_width 0) = as "
              "is. Outputs always have the frame's size.", low=0, high=_MAX_SIDE),
    ParamSpec("input_width", 0, "Width frames are resized to before the network; 0 (with input_height 0) = as is.",
              low=0, high=_MAX_SIDE),
    ParamSpec("score_threshold", 0.5, "A pixel is anomalous when its score is > this. Scores are about 0..1 for "
              "mask2anomaly and max_softmax (mask2anomaly can dip below 0), 0..2.94 for entropy, negative for "
              "max_logit and energy, hence the wide range.", low=-200.0, high=200.0),
    ParamSpec("scoring_variant", "mask2anomaly", "Anomaly score: mask2anomaly (1 - max_k L) or a per-pixel "
              "baseline (turn refine off for max_logit and energy).", choices=_SCORES),
    ParamSpec("scoring_resolution", "full", "full = the authors' order (upsample masks, then combine); quarter = "
              "combine at 1/4 resolution and upsample class maps (much faster on the CPU, close but not equal).",
              choices=_RESOLUTIONS),
    ParamSpec("refine", True, "Mask refinement: zero the score on confident 'stuff' masks (paper 5.4)."),
    ParamSpec("flip_tta", False, "Average with the horizontally flipped frame (2x the inference cost)."),
    ParamSpec("road_gating", False, "Keep only anomaly regions on or next to road/sidewalk (obstacle-track view)."),
    ParamSpec("gating_dilation_px", 15, "With road_gating: how many pixels from road/sidewalk a region may start.",
              low=0, high=500),
    ParamSpec("temporal_frames", 0, "Temporal fusion: exponential moving average of the score over about this many "
              "frames; 0 = off.", low=0, high=100),
    ParamSpec("temporal_max_gap_s", 0.5, "Temporal fusion restarts when stamps jump by more than this (seconds) or "
              "go backwards.", low=0.001, high=60.0),
    ParamSpec("min_instance_area", 50, "Smallest anomaly region (pixels) reported as an instance in "
              "anomaly/result.", low=1, high=_MAX_SIDE * _MAX_SIDE),
    ParamSpec("input_transport", "raw", "raw: subscribe to 'image' (sensor_msgs/Image); compressed: to "
              "'image/compressed' (sensor_msgs/CompressedImage, decoded with OpenCV).", choices=_TRANSPORTS,
              read_only=True),
    ParamSpec("publish_mask", True, "Publish anomaly/mask (mono8, 0/255)."),
    ParamSpec("publish_score", True, "Publish anomaly/score (32FC1)."),
    ParamSpec("publish_semantic", True, "Publish semantic/labels (mono8 Cityscapes trainIds)."),
    ParamSpec("publish_semantic_color", True, "Publish semantic/color (rgb8, Cityscapes palette, for RViz)."),
    ParamSpec("publish_overlay", True, "Publish anomaly/overlay (rgb8: anomalies in red over the frame, for RViz)."),
    ParamSpec("publish_result", True, "Publish anomaly/result (m2a/AnomalySegmentation, for planners)."),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the diagnostics message (rates over this window).",
              low=0.1, high=60.0),
)  # fmt: skip
_SPECS = {spec.name: spec for spec in PARAMETERS}
# parameters the backend applies (`Backend.update`); the others are the node's and the postprocessor's
_BACKEND_SETTINGS = ("input_height", "input_width", "scoring_variant", "scoring_resolution", "refine", "flip_tta")

# output key -> (parameter, topic)
OUTPUTS: dict[str, tuple[str, str]] = {
    "mask": ("publish_mask", "anomaly/mask"),
    "score": ("publish_score", "anomaly/score"),
    "semantic": ("publish_semantic", "semantic/labels"),
    "semantic_color": ("publish_semantic_color", "semantic/color"),
    "overlay": ("publish_overlay", "anomaly/overlay"),
    "result": ("publish_result", "anomaly/result"),
}


def parameter_table() -> str:
    """The parameters as text: name, default, allowed values, description (for --help and docs)."""
    lines = []
    for spec in PARAMETERS:
        default = repr(spec.default) if isinstance(spec.default, str) else str(spec.default).lower()
        lines.append(f"  {spec.name} (default {default}{'; ' + spec.constraints() if spec.constraints() else ''})")
        lines.append(f"      {spec.description}")
    return "\n".join(lines)


def validate_parameters(values: dict[str, Any]) -> str | None:
    """Why this full set of parameter values is invalid (choices and combinations), or None when valid.

    Types and numeric ranges are also enforced by rclpy from the descriptors; this adds the choices and the
    rules that involve several parameters.
    """
    for name, value in values.items():
        spec = _SPECS.get(name)
        if spec is None:
            continue
        if spec.choices and value not in spec.choices:
            return f"{name}: expected one of {list(spec.choices)}, got {value!r}"
        if spec.low is not None and isinstance(value, int | float) and not spec.low <= value <= spec.high:
            return f"{name}: expected {spec.low} .. {spec.high}, got {value!r}"
    if (values["input_height"] == 0) != (values["input_width"] == 0):
        return (
            "input_height, input_width: expected both 0 (frame as is) or both > 0, "
            f"got {values['input_height']} x {values['input_width']}"
        )
    if not math.isfinite(values["score_threshold"]):
        return f"score_threshold: expected a finite number, got {values['score_threshold']}"
    try:
        backend_config(values)
        postprocess_config(values)
    except ValueError as e:
        return str(e)
    return None  # CUDA availability and the model file are checked when the backend is created


def _scoring_config(values: dict[str, Any]) -> Any:
    """The `ScoringConfig` of the node parameters."""
    from m2a_perception.model.scoring import ScoringConfig

    return ScoringConfig(
        score=values["scoring_variant"],
        refine=values["refine"],
        flip_tta=values["flip_tta"],
        resolution=values["scoring_resolution"],
    )


def _input_size(values: dict[str, Any]) -> tuple[int, int] | None:
    h, w = values["input_height"], values["input_width"]
    return None if h == 0 and w == 0 else (h, w)


def backend_config(values: dict[str, Any]) -> Any:
    """The `BackendConfig` a full set of node parameter values describes (also used by `replay process`)."""
    from m2a_perception.backends import BackendConfig

    return BackendConfig(
        backend=values["backend"],
        model_path=values["model_path"],
        preset=values["preset"],
        device=values["device"],
        fp16=values["fp16"],
        input_size=_input_size(values),
        scoring=_scoring_config(values),
    )


def postprocess_config(values: dict[str, Any]) -> Any:
    """The `PostprocessConfig` a full set of node parameter values describes (also used by `replay process`)."""
    from m2a_perception.postprocess import PostprocessConfig

    return PostprocessConfig(
        threshold=float(values["score_threshold"]),
        min_instance_area=values["min_instance_area"],
        road_gating=values["road_gating"],
        gating_dilation_px=values["gating_dilation_px"],
        temporal_frames=values["temporal_frames"],
        temporal_max_gap_s=float(values["temporal_max_gap_s"]),
    )


_backend_config = backend_config  # the first names replay.py used
_postprocess_config = postprocess_config


class LatestFrameSlot:
    """A one-slot box between the subscription callback and the worker: `put` replaces, `take` waits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0  # items replaced before the worker took them

    def put(self, item: Any) -> bool:
        """Store ``item`` (not None); True when it replaced one that was never taken (counted as dropped)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item (and empty the slot), or None after ``timeout`` seconds or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    @property
    def pending(self) -> int:
        """1 when a frame waits for the worker, else 0."""
        return int(self._item is not None)

    def close(self) -> None:
        """Wake the worker for good (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SequenceGaps:
    """Frames the subscription never saw: gaps in each publisher's sequence numbers.

    With depth 1, DDS itself replaces a frame that the executor has not taken yet by the newer one; those frames
    never reach the callback. rclpy's MessageInfo carries the publisher's id and sequence number, so the gaps
    count them (and frames lost on the network). Counting starts at a publisher's first frame we see (a node
    joining a running camera has not "dropped" its history); a publisher that restarts (lower number) resumes.
    """

    _MAX_PUBLISHERS = 256

    def __init__(self) -> None:
        self._last: dict[bytes, int] = {}
        self.missed = 0

    def see(self, info: Any) -> int:
        """Record one received frame's MessageInfo; returns how many of its publisher's frames were skipped."""
        try:
            seq = info["publication_sequence_number"]
            gid = info["publisher_gid"]
            key = bytes(gid["data"]) if isinstance(gid, dict) else bytes(gid)
        except (KeyError, TypeError, ValueError):  # an rmw without sequence numbers: nothing to count
            return 0
        if not isinstance(seq, int) or not 0 < seq < 1 << 63:
            return 0
        last = self._last.get(key)
        if last is None and len(self._last) >= self._MAX_PUBLISHERS:
            self._last.clear()
        self._last[key] = seq
        if last is None or seq <= last:
            return 0
        gap = seq - last - 1
        self.missed += gap
        return gap


class _Window:
    """Counters and timings of one diagnostics period (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start a new period."""
        with self._lock:
            self.start = time.monotonic()
            self.received = 0
            self.published = 0
            self.malformed = 0
            self.errors = 0
            self.latencies: list[float] = []
            self.stages: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, field: str, n: int = 1) -> None:
        """Count ``n`` events of ``field`` (received, published, malformed, errors)."""
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def add_timing(self, latency: float, stages: dict[str, float]) -> None:
        """One published frame: receive->publish latency and the backend's stage timings, in seconds."""
        with self._lock:
            self.published += 1
            self.latencies.append(latency)
            for k, v in stages.items():
                self.stages[k].append(v)

    def snapshot(self) -> dict[str, Any]:
        """This period's numbers; the period restarts."""
        with self._lock:
            now = time.monotonic()
            snap = {
                "elapsed": max(now - self.start, 1e-9),
                "received": self.received,
                "published": self.published,
                "malformed": self.malformed,
                "errors": self.errors,
                "latencies": self.latencies,
                "stages": dict(self.stages),
            }
        self.reset()
        return snap


@dataclass
class _Frame:
    rgb: Any  # (H, W, 3) uint8
    header: Any  # std_msgs/Header of the input
    received: float  # time.monotonic() at the callback


def _stamp_seconds(header: Any) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def _mean_ms(values: Sequence[float]) -> float:
    return 1000.0 * sum(values) / len(values) if values else 0.0


class AnomalySegmentationNode(Node):
    """The anomaly segmentation node (see the module docstring); `close()` or `destroy_node()` stops it."""

    def __init__(
        self,
        *,
        node_name: str = NODE_NAME,
        namespace: str | None = None,
        context: Any = None,
        cli_args: list[str] | None = None,
        parameter_overrides: list[Any] | None = None,
    ) -> None:
        if _ROS_IMPORT_ERROR is not None:
            raise ImportError(
                f"rclpy is not importable ({_ROS_IMPORT_ERROR}); install ROS 2 or run `make ros`"
            ) from _ROS_IMPORT_ERROR
        super().__init__(
            node_name,
            namespace=namespace,
            context=context,
            cli_args=cli_args,
            parameter_overrides=parameter_overrides,
        )
        self._closed = False
        self._worker: threading.Thread | None = None
        self._slot = LatestFrameSlot()
        self._gaps = SequenceGaps()
        self._window = _Window()
        self.totals = collections.Counter()  # whole-run counts: received, malformed, published, errors, skipped
        self._last_malformed = ""
        # 1. parameters, from the one table, validated as a whole before anything else
        try:
            self._declare_parameters()  # rclpy checks types, ranges and read-only here
        except Exception as e:
            self.destroy_node()
            raise ValueError(f"invalid parameters: {e}") from e
        values = self._values()
        reason = validate_parameters(values)
        if reason is not None:
            self.destroy_node()
            raise ValueError(f"invalid parameters: {reason}")
        self._result_type = self._import_result_type(values["publish_result"])
        # 2. the backend (slow: loads the model)
        from m2a_perception.backends import create_backend
        from m2a_perception.postprocess import Postprocessor

        try:
            self.backend = create_backend(backend_config(values))
            self.backend.warmup()
        except Exception:
            self.destroy_node()
            raise
        if not values["model_path"]:
            self.get_logger().warning(
                f"model_path is empty: the {values['preset']!r} preset with RANDOM weights; its anomaly scores are "
                "meaningless (plumbing and tests only; the demonstration model trained on generated scenes is "
                "m2a_perception/weights/m2a_small_synthroad.pt)"
            )
        self._values_now = values
        self._post = Postprocessor(postprocess_config(values))
        self._pending_post: Any = None
        self._lock = threading.Lock()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        # 3. publishers, then the subscription
        # Reliable keep-last-5: a recorder or a slow planner gets every result (with depth 1 a new frame replaced
        # an unacknowledged one: ~1 in 4 lost to a reliable recorder); best-effort subscribers still match.
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE
        )
        overrides = QoSOverridingOptions.with_default_policies()
        self._pubs: dict[str, Any] = {}
        for key, (_, topic) in OUTPUTS.items():
            if key == "result":
                if self._result_type is not None:
                    self._pubs[key] = self.create_publisher(
                        self._result_type, topic, out_qos, qos_overriding_options=overrides
                    )
            else:
                self._pubs[key] = self.create_publisher(Image, topic, out_qos, qos_overriding_options=overrides)
        self._diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        in_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
        if values["input_transport"] == "compressed":
            self._convert = compressed_msg_to_rgb
            self._sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, in_qos, qos_overriding_options=overrides
            )
        else:
            self._convert = image_msg_to_rgb
            self._sub = self.create_subscription(
                Image, "image", self._on_image, in_qos, qos_overriding_options=overrides
            )
        # 4. the worker and the diagnostics timer
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="m2a-inference", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(values["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"ready: backend {self.backend.name} on {values['device']} ({self._model_description()}), "
            f"input {self._sub.topic_name} ({values['input_transport']}), "
            f"network input {_input_size(values) or 'as the frame'}"
        )

    # -- parameters -------------------------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        for spec in PARAMETERS:
            descriptor = ParameterDescriptor(
                name=spec.name,
                description=spec.description,
                additional_constraints=spec.constraints(),
                read_only=spec.read_only,
            )
            if spec.low is not None:
                if isinstance(spec.default, int):
                    descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
                else:
                    descriptor.floating_point_range = [
                        FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
                    ]
            self.declare_parameter(spec.name, spec.default, descriptor)

    def _values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    def _import_result_type(self, wanted: bool) -> Any:
        try:
            from m2a.msg import AnomalySegmentation
        except ImportError as e:
            if wanted:
                self.destroy_node()
                raise ImportError(
                    f"m2a.msg is not importable ({e}): build the messages (`make ros`, or `colcon build` and source "
                    "the workspace), or set publish_result false"
                ) from e
            return None
        return AnomalySegmentation

    def _on_set_parameters(self, params: list[Any]) -> Any:
        values = dict(self._values_now)
        for p in params:
            if p.name in _SPECS:
                values[p.name] = p.value
        reason = validate_parameters(values)
        if reason is None and values["publish_result"] and self._result_type is None:
            reason = "publish_result: m2a.msg is not importable here (build the messages first)"
        if reason is None and any(values[k] != self._values_now[k] for k in _BACKEND_SETTINGS):
            try:  # here, not after the change: a backend with a fixed graph (an engine) refuses, with its reason
                self.backend.update(input_size=_input_size(values), scoring=_scoring_config(values))
            except ValueError as e:
                reason = f"backend {self.backend.name} cannot change {', '.join(_BACKEND_SETTINGS)}: {e}"
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Any]) -> None:
        values = self._values()
        old, self._values_now = self._values_now, values
        changed = {k for k in values if values[k] != old.get(k)}
        if not changed:  # e.g. the QoS-override parameters rclpy declares with each publisher
            return
        with self._lock:
            self._pending_post = postprocess_config(values)  # the worker picks it up before its next frame
        if "diagnostics_period_s" in changed:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(values["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={values[k]!r}" for k in sorted(changed)))

    # -- input ------------------------------------------------------------------------------------------------

    def _on_image(self, msg: Any, info: Any) -> None:
        """Convert (malformed: count, log throttled, skip) and hand the newest frame to the worker."""
        received = time.monotonic()
        self._gaps.see(info)
        self.totals["received"] += 1
        self._window.add("received")
        try:
            rgb = self._convert(msg)
        except MalformedImageError as e:
            self._malformed(str(e))
            return
        except Exception as e:  # anything else a hostile message provokes: still a malformed frame
            self._malformed(f"{type(e).__name__}: {e}")
            return
        self._slot.put(_Frame(rgb=rgb, header=msg.header, received=received))

    def _malformed(self, reason: str) -> None:
        self.totals["malformed"] += 1
        self._window.add("malformed")
        self._last_malformed = reason
        self.get_logger().warning(
            f"skipping malformed frame ({self.totals['malformed']} so far): {reason}", throttle_duration_sec=5.0
        )

    @property
    def dropped(self) -> int:
        """Frames dropped for newer ones (whole run): by DDS before the callback, or in the slot before inference."""
        return self._gaps.missed + self._slot.dropped

    @property
    def queued(self) -> int:
        """Frames waiting for the worker: 0 or 1, by construction."""
        return self._slot.pending

    # -- worker -----------------------------------------------------------------------------------------------

    def _wanted(self) -> dict[str, bool]:
        values = self._values_now
        return {
            key: bool(values[param]) and key in self._pubs and self._pubs[key].get_subscription_count() > 0
            for key, (param, _) in OUTPUTS.items()
        }

    def _work(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.2)
            if frame is None:
                continue
            with self._lock:
                pending, self._pending_post = self._pending_post, None
            if pending is not None:
                self._post.configure(pending)
            wanted = self._wanted()
            if not any(wanted.values()):
                self.totals["skipped"] += 1  # nobody listens: no inference
                continue
            try:
                self._process(frame, wanted)
            except Exception as e:
                if self._stop.is_set() or not self.context.ok():
                    break
                self.totals["errors"] += 1
                self._window.add("errors")
                self.get_logger().error(f"inference failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def _process(self, frame: _Frame, wanted: dict[str, bool]) -> None:
        result = self.backend.infer(frame.rgb)
        out = self._post.process(
            frame.rgb,
            result,
            _stamp_seconds(frame.header),
            semantic_color=wanted["semantic_color"],
            overlay=wanted["overlay"],
            instances=wanted["result"] or wanted["overlay"],  # instances go to the result and the overlay's boxes
        )
        header = frame.header
        msgs: dict[str, Any] = {}  # data shares the arrays' buffers: published below, before they change
        if wanted["mask"] or wanted["result"]:
            msgs["mask"] = image_msg_sharing(out.anomaly_mask, header, "mono8")
        if wanted["score"] or wanted["result"]:
            msgs["score"] = image_msg_sharing(out.anomaly_score, header, "32FC1")
        if wanted["semantic"] or wanted["result"]:
            msgs["semantic"] = image_msg_sharing(out.semantic, header, "mono8")
        if wanted["semantic_color"]:
            msgs["semantic_color"] = image_msg_sharing(out.semantic_color, header, "rgb8")
        if wanted["overlay"]:
            msgs["overlay"] = image_msg_sharing(out.overlay, header, "rgb8")
        if wanted["result"]:
            msgs["result"] = self._result_msg(header, msgs, out)
        for key, msg in msgs.items():
            if wanted[key]:
                self._pubs[key].publish(msg)
        self.totals["published"] += 1
        self._window.add_timing(time.monotonic() - frame.received, result.timings)

    def _result_msg(self, header: Any, images: dict[str, Any], out: Any) -> Any:
        from m2a.msg import AnomalyInstance
        from sensor_msgs.msg import RegionOfInterest

        msg = self._result_type()
        msg.header = header
        msg.anomaly_mask = images["mask"]
        msg.anomaly_score = images["score"]
        msg.semantic_labels = images["semantic"]
        msg.threshold = float(out.threshold)
        msg.scoring_variant = str(self._values_now["scoring_variant"])
        msg.instances = [
            AnomalyInstance(bbox=RegionOfInterest(**inst.roi_fields()), **inst.message_fields())
            for inst in out.instances
        ]
        return msg

    # -- diagnostics ------------------------------------------------------------------------------------------

    def _model_description(self) -> str:
        return str(getattr(self.backend, "model_description", self.backend.name))

    def diagnostics(self) -> Any:
        """A DiagnosticStatus for the period since the last call (rates, latency, counts, backend)."""
        snap = self._window.snapshot()
        values = self._values_now
        elapsed = snap["elapsed"]
        lat = snap["latencies"]
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: anomaly segmentation"
        status.hardware_id = f"{self.backend.name}:{values['device']}"
        problems = []
        level = 0  # OK; 1 WARN, 2 ERROR (DiagnosticStatus.level is a byte)
        if snap["errors"]:
            level = 2
            problems.append(f"{snap['errors']} inference error(s)")
        if snap["malformed"]:
            level = max(level, 1)
            problems.append(f"{snap['malformed']} malformed frame(s)")
        if not snap["received"]:
            level = max(level, 1)
            problems.append("no input frames")
        status.level = bytes([level])
        status.message = "; ".join(problems) if problems else "ok"
        items = {
            "input_rate_hz": f"{snap['received'] / elapsed:.2f}",
            "output_rate_hz": f"{snap['published'] / elapsed:.2f}",
            "latency_ms_mean": f"{_mean_ms(lat):.1f}",
            "latency_ms_max": f"{1000.0 * max(lat) if lat else 0.0:.1f}",
            **{f"{k}_ms_mean": f"{_mean_ms(v):.1f}" for k, v in sorted(snap["stages"].items())},
            "received_total": str(self.totals["received"]),
            "published_total": str(self.totals["published"]),
            "dropped_total": str(self.dropped),
            "dropped_before_callback_total": str(self._gaps.missed),
            "dropped_in_slot_total": str(self._slot.dropped),
            "malformed_total": str(self.totals["malformed"]),
            "errors_total": str(self.totals["errors"]),
            "skipped_no_subscribers_total": str(self.totals["skipped"]),
            "queued": str(self.queued),
            "last_malformed_reason": self._last_malformed,
            "backend": self.backend.name,
            "device": str(values["device"]),
            "fp16": str(values["fp16"]).lower(),
            "model": self._model_description(),
            "input_topic": self._sub.topic_name,
            "temporal_resets_total": str(self._post.resets),
        }
        status.values = [KeyValue(key=k, value=v) for k, v in items.items()]
        return status

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostics()]
        self._diag_pub.publish(array)

    # -- shutdown ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker (waits for the frame in progress) and destroy the node; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._stop.set()
            self._slot.close()
            self._worker.join(timeout=30.0)
        super().destroy_node()

    def destroy_node(self) -> None:
        """Same as `close`."""
        if getattr(self, "_worker", None) is None:  # construction failed before the worker existed
            if not getattr(self, "_closed", False):
                self._closed = True
                super().destroy_node()
            return
        self.close()


def _split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        return argv[:i], argv[i:]
    return argv, []


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point `m2a-perception` (and `ros2 run m2a anomaly_segmentation`); returns the exit code."""
    argv = list(sys.argv[1:] if args is None else args)
    own, ros_args = _split_ros_args(argv)
    parser = argparse.ArgumentParser(
        prog="m2a-perception",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="m2a anomaly segmentation ROS 2 node. Inputs and outputs:\n" + __doc__.split("\n\n")[1],
        epilog=(
            "usage with ROS arguments:\n  m2a-perception --ros-args --params-file config/m2a_perception.yaml "
            "-p device:=cuda -r image:=/camera/image_raw\n\nparameters:\n" + parameter_table()
        ),
    )
    try:
        parser.parse_args(own)
    except SystemExit as e:  # --help, or an unknown argument
        return int(e.code or 0)
    if _ROS_IMPORT_ERROR is not None:
        print(f"m2a-perception: rclpy is not importable ({_ROS_IMPORT_ERROR}); run `make ros`", file=sys.stderr)
        return 1
    rclpy.init(args=["m2a-perception", *ros_args])
    node = None
    code = 0
    try:
        node = AnomalySegmentationNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # invalid parameters, no CUDA, unreadable model file: one clear line, exit 1
        rclpy.logging.get_logger(NODE_NAME).fatal(f"{type(e).__name__}: {e}")
        code = 1
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
