"""From a backend `Result` to what the node publishes: fused score, mask, instances, colour images.

Pure numpy/OpenCV (no ROS, no torch): the node and `replay`'s offline processing share it. Per frame:
    1. temporal fusion (optional): exponential moving average of the anomaly score over about N frames, reset
       when the time stamps jump (or go backwards) or the image size changes;
    2. mask = fused score > threshold;
    3. road gating (optional, the obstacle-track view): only connected anomaly regions that touch the road /
       sidewalk area (dilated by `gating_dilation_px`) stay in the mask;
    4. instances: connected regions (8-connectivity) of at least `min_instance_area` pixels, largest first;
    5. colour images for RViz: semantic map in the Cityscapes palette, overlay (anomalies red over the frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from m2a_perception.classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

__all__ = [
    "DRIVABLE_CLASSES",
    "FrameOutputs",
    "Instance",
    "PostprocessConfig",
    "Postprocessor",
    "class_name",
    "colorize",
]

DRIVABLE_CLASSES: tuple[int, ...] = (0, 1)  # road, sidewalk: where road gating lets anomalies count
_RING_PX = 3  # width of the ring around an instance in which `semantic_class` is looked up
_OVERLAY_ALPHA = 0.55  # weight of red over anomalous pixels
_RED = (255, 0, 0)
_PALETTE_LUT = np.zeros((256, 1, 3), dtype=np.uint8)  # trainId -> RGB (cv2.LUT layout); 255 and unknown: black
_PALETTE_LUT[: len(CITYSCAPES_PALETTE), 0] = CITYSCAPES_PALETTE
_PALETTE_LUT.setflags(write=False)
_DRIVABLE_LUT = np.zeros(256, dtype=np.uint8)  # trainId -> 1 on road / sidewalk
_DRIVABLE_LUT[list(DRIVABLE_CLASSES)] = 1
_DRIVABLE_LUT.setflags(write=False)


def class_name(train_id: int) -> str:
    """The Cityscapes class name of a trainId ("road" ... "bicycle"), "unknown" outside the 19 classes."""
    return CITYSCAPES_CLASSES[train_id] if 0 <= train_id < len(CITYSCAPES_CLASSES) else "unknown"


def colorize(semantic: np.ndarray) -> np.ndarray:
    """(H, W) uint8 trainIds -> (H, W, 3) uint8 RGB in the Cityscapes palette (255 and unknown ids black)."""
    if not isinstance(semantic, np.ndarray) or semantic.ndim != 2 or semantic.dtype != np.uint8:
        got = f"{semantic.dtype} {semantic.shape}" if isinstance(semantic, np.ndarray) else type(semantic).__name__
        raise ValueError(f"semantic must be an (H, W) uint8 array of trainIds, got {got}")
    return cv2.applyColorMap(semantic, _PALETTE_LUT)  # a user colour map: one LUT pass, ~2x merge + LUT, 10x indexing


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholding, gating, temporal fusion and instance extraction settings.

    threshold: a pixel is anomalous when its (fused) score is > threshold. Scores are about 0..1 for the default
        "mask2anomaly" scoring but are not clipped (and negative for "max_logit" / "energy"); any finite value.
    min_instance_area: smallest connected region, in pixels, reported as an instance (the mask keeps smaller ones).
    road_gating: keep only anomaly regions on or next to road / sidewalk (`DRIVABLE_CLASSES`).
    gating_dilation_px: how far (in x and y) from road / sidewalk pixels a region may be and still count as "next to".
    temporal_frames: 0 = off; N >= 1: EMA with alpha = 2 / (N + 1) (the span-N EMA; 1 = no smoothing).
    temporal_max_gap_s: the fusion restarts when consecutive stamps differ by more than this, or go backwards.
    max_instances: at most this many instances per frame (the largest).
    """

    threshold: float = 0.5
    min_instance_area: int = 50
    road_gating: bool = False
    gating_dilation_px: int = 15
    temporal_frames: int = 0
    temporal_max_gap_s: float = 0.5
    max_instances: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int | float) or isinstance(self.threshold, bool):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        checks = (
            ("min_instance_area", 1),
            ("gating_dilation_px", 0),
            ("temporal_frames", 0),
            ("max_instances", 1),
        )
        for name, minimum in checks:
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not isinstance(self.road_gating, bool):
            raise ValueError(f"road_gating must be a bool, got {self.road_gating!r}")
        gap = self.temporal_max_gap_s
        if not isinstance(gap, int | float) or isinstance(gap, bool) or not (gap > 0 and math.isfinite(gap)):
            raise ValueError(f"temporal_max_gap_s must be a finite number > 0, got {gap!r}")

    @property
    def ema_alpha(self) -> float:
        """Weight of the newest frame in the moving average (1.0 when fusion is off)."""
        return 1.0 if self.temporal_frames <= 1 else 2.0 / (self.temporal_frames + 1)


@dataclass
class Instance:
    """One connected anomaly region.

    bbox: (x, y, w, h) in pixels, (x, y) the top-left pixel. area: pixel count. max_score, mean_score: of the
    (fused) score inside the region. centroid: (x, y) mean pixel position. semantic_class: the trainId the
    region stands on: the most frequent label in a thin ring around its lower half (e.g. 0 = road).
    """

    bbox: tuple[int, int, int, int]
    area: int
    max_score: float
    mean_score: float
    centroid: tuple[float, float]
    semantic_class: int

    def roi_fields(self) -> dict[str, Any]:
        """`bbox` as sensor_msgs/RegionOfInterest fields."""
        x, y, w, h = self.bbox
        return {"x_offset": x, "y_offset": y, "width": w, "height": h, "do_rectify": False}

    def message_fields(self) -> dict[str, Any]:
        """The m2a/msg/AnomalyInstance fields besides `bbox`: one mapping for the node and the bag writer."""
        return {
            "area": self.area,
            "max_score": self.max_score,
            "mean_score": self.mean_score,
            "centroid_x": self.centroid[0],
            "centroid_y": self.centroid[1],
            "semantic_class": self.semantic_class,
            "semantic_class_name": class_name(self.semantic_class),
        }


@dataclass
class FrameOutputs:
    """Everything published for one frame; all (H, W) at the frame's resolution.

    anomaly_score: (H, W) float32, the (fused) score. anomaly_mask: (H, W) uint8, 255 = anomalous, 0 = not.
    semantic: (H, W) uint8 trainIds. semantic_color: (H, W, 3) uint8 RGB palette image, or None when not asked
    for. overlay: (H, W, 3) uint8 RGB frame with anomalies in red and instance boxes, or None when not asked for.
    instances: largest first. threshold: the one used for the mask.
    """

    anomaly_score: np.ndarray
    anomaly_mask: np.ndarray
    semantic: np.ndarray
    semantic_color: np.ndarray | None
    overlay: np.ndarray | None
    instances: list[Instance] = field(default_factory=list)
    threshold: float = 0.5


class Postprocessor:
    """Stateful per-stream post-processing (the temporal fusion remembers the previous frames)."""

    def __init__(self, config: PostprocessConfig = PostprocessConfig()) -> None:
        if not isinstance(config, PostprocessConfig):
            raise ValueError(f"config must be a PostprocessConfig, got {type(config).__name__}")
        self.config = config
        self._fused: np.ndarray | None = None
        self._last_stamp: float | None = None
        self.resets = 0  # how often the fusion restarted on a stamp jump or size change (for diagnostics)

    def reset(self) -> None:
        """Forget the temporal state (next frame starts a new average)."""
        self._fused = None
        self._last_stamp = None

    def configure(self, config: PostprocessConfig) -> None:
        """Switch to a new config; the temporal state restarts when the fusion settings change."""
        if not isinstance(config, PostprocessConfig):
            raise ValueError(f"config must be a PostprocessConfig, got {type(config).__name__}")
        if (config.temporal_frames, config.temporal_max_gap_s) != (
            self.config.temporal_frames,
            self.config.temporal_max_gap_s,
        ):
            self.reset()
        self.config = config

    def process(
        self,
        frame_rgb: np.ndarray,
        result: object,
        stamp_s: float,
        *,
        semantic_color: bool = True,
        overlay: bool = True,
        instances: bool = True,
    ) -> FrameOutputs:
        """Fuse, threshold, gate and extract instances for one frame; `result` is a backend `Result`.

        frame_rgb: (H, W, 3) uint8 RGB, the frame the result belongs to (for the overlay).
        stamp_s: the frame's time stamp in seconds (for the temporal fusion's jump detection).
        semantic_color / overlay: compute these images (False: None in the outputs, saves time).
        instances: extract instances (False: an empty list; saves the connected components without road gating).
        """
        cfg = self.config
        score, semantic = _check_result(frame_rgb, result)
        fused = self._fuse(score, float(stamp_s))
        mask = (fused > cfg.threshold).view(np.uint8)  # 0/1, no copy
        box = _anomaly_box(mask)
        found: list[Instance] = []
        if box is not None and (cfg.road_gating or instances):
            mask, found = _components(mask, box, fused, semantic, cfg, instances)
        anomaly_mask = mask * np.uint8(255)
        color = colorize(semantic) if semantic_color else None
        over = _overlay(frame_rgb, anomaly_mask, box, found) if overlay else None
        return FrameOutputs(
            anomaly_score=fused,
            anomaly_mask=anomaly_mask,
            semantic=semantic,
            semantic_color=color,
            overlay=over,
            instances=found,
            threshold=float(cfg.threshold),
        )

    def _fuse(self, score: np.ndarray, stamp_s: float) -> np.ndarray:
        cfg = self.config
        if cfg.temporal_frames <= 1:
            return score
        previous, last = self._fused, self._last_stamp
        jump = last is None or stamp_s < last or stamp_s - last > cfg.temporal_max_gap_s
        if previous is None or previous.shape != score.shape or jump:
            if previous is not None:
                self.resets += 1
            fused = score.astype(np.float32, copy=True)
        else:
            alpha = cfg.ema_alpha
            fused = cv2.addWeighted(score, alpha, previous, 1.0 - alpha, 0.0)
        self._fused, self._last_stamp = fused, stamp_s
        return fused


def _check_result(frame: object, result: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame_rgb must be an (H, W, 3) uint8 RGB array, got {got}")
    score = getattr(result, "anomaly_score", None)
    semantic = getattr(result, "semantic", None)
    size = frame.shape[:2]
    if not isinstance(score, np.ndarray) or score.shape != size or score.dtype != np.float32:
        got = f"{score.dtype} {score.shape}" if isinstance(score, np.ndarray) else type(score).__name__
        raise ValueError(f"result.anomaly_score must be {size} float32 (the frame's size), got {got}")
    if not isinstance(semantic, np.ndarray) or semantic.shape != size or semantic.dtype != np.uint8:
        got = f"{semantic.dtype} {semantic.shape}" if isinstance(semantic, np.ndarray) else type(semantic).__name__
        raise ValueError(f"result.semantic must be {size} uint8 (the frame's size), got {got}")
    return score, semantic


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), a window of the image


def _anomaly_box(mask: np.ndarray) -> Box | None:
    """The window around all anomalous pixels, widened by the instance ring; None when there are none.

    Connected components, gating and the overlay then work on this window only: with a few anomalies in a
    2 MP frame that is a small fraction of the image (labelling the whole frame costs ~35 ms on a CPU core).
    """
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    height, width = mask.shape
    m = _RING_PX + 1
    return max(y - m, 0), min(y + h + m, height), max(x - m, 0), min(x + w + m, width)


def _components(
    mask: np.ndarray, box: Box, score: np.ndarray, semantic: np.ndarray, cfg: PostprocessConfig, instances: bool
) -> tuple[np.ndarray, list[Instance]]:
    """Connected components of ``mask`` inside ``box``: the gated mask (0/1) and the instances (absolute pixels)."""
    y0, y1, x0, x1 = box
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask[y0:y1, x0:x1]), connectivity=8, ltype=cv2.CV_32S
    )
    stats[:, cv2.CC_STAT_LEFT] += x0
    stats[:, cv2.CC_STAT_TOP] += y0
    centroids += (x0, y0)
    keep = np.ones(count, dtype=bool)
    keep[0] = False  # background
    if cfg.road_gating and count > 1:
        keep &= _touching_drivable(labels, count, semantic, box, cfg.gating_dilation_px)
        gated = np.zeros_like(mask)
        gated[y0:y1, x0:x1] = keep.view(np.uint8)[labels]
        mask = gated
    found = _instances(labels, box, stats, centroids, keep, score, semantic, cfg) if instances else []
    return mask, found


def _touching_drivable(labels: np.ndarray, count: int, semantic: np.ndarray, box: Box, dilation_px: int) -> np.ndarray:
    """(count,) bool: which components (labelled inside ``box``) are on or within `dilation_px` of road / sidewalk."""
    y0, y1, x0, x1 = box
    height, width = semantic.shape
    d = dilation_px
    ey0, ey1, ex0, ex1 = max(y0 - d, 0), min(y1 + d, height), max(x0 - d, 0), min(x1 + d, width)
    drivable = cv2.LUT(semantic[ey0:ey1, ex0:ex1], _DRIVABLE_LUT)
    if d > 0:  # a square neighbourhood: 10x faster than a disk of the same radius
        drivable = cv2.dilate(drivable, np.ones((2 * d + 1, 2 * d + 1), np.uint8))
    drivable = drivable[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
    hits = np.bincount((labels * drivable).ravel(), minlength=count)  # component ids on drivable pixels
    return hits > 0


def _instances(
    labels: np.ndarray,
    box: Box,
    stats: np.ndarray,
    centroids: np.ndarray,
    keep: np.ndarray,
    score: np.ndarray,
    semantic: np.ndarray,
    cfg: PostprocessConfig,
) -> list[Instance]:
    """The kept components of at least `min_instance_area` pixels, largest first (stats in absolute pixels)."""
    oy, _, ox, _ = box
    areas = stats[:, cv2.CC_STAT_AREA]
    ids = np.flatnonzero(keep & (areas >= cfg.min_instance_area))
    ids = ids[np.argsort(-areas[ids], kind="stable")][: cfg.max_instances]
    height, width = semantic.shape
    out = []
    for i in ids:
        x, y, w, h = (int(v) for v in stats[i, :4])
        inside = labels[y - oy : y - oy + h, x - ox : x - ox + w] == i
        values = score[y : y + h, x : x + w][inside]
        # the class it stands on: a ring around the region's lower half (at or below the centroid); the box has
        # a margin of _RING_PX + 1 around every component, so the ring lies inside it (or at the image border)
        cy = float(centroids[i, 1])
        r0, c0 = max(int(cy), 0), max(x - _RING_PX, 0)
        r1, c1 = min(y + h + _RING_PX, height), min(x + w + _RING_PX, width)
        region = (labels[r0 - oy : r1 - oy, c0 - ox : c1 - ox] == i).view(np.uint8)
        ring = cv2.dilate(region, _disk(_RING_PX)).view(bool) & ~region.view(bool)
        under = semantic[r0:r1, c0:c1][ring]
        if under.size == 0:  # the region fills its surroundings: fall back to its own majority label
            under = semantic[y : y + h, x : x + w][inside]
        out.append(
            Instance(
                bbox=(x, y, w, h),
                area=int(areas[i]),
                max_score=float(values.max()),
                mean_score=float(values.mean(dtype=np.float64)),
                centroid=(float(centroids[i, 0]), cy),
                semantic_class=int(np.bincount(under, minlength=1).argmax()),
            )
        )
    return out


def _overlay(frame: np.ndarray, mask: np.ndarray, box: Box | None, instances: list[Instance]) -> np.ndarray:
    """The frame with anomalous pixels (inside ``box``) blended towards red and a red box around each instance."""
    out = np.array(frame, dtype=np.uint8, copy=True, order="C")
    if box is not None:
        y0, y1, x0, x1 = box
        window = out[y0:y1, x0:x1]
        red = np.empty_like(window)
        red[:] = _RED
        blended = cv2.addWeighted(window, 1.0 - _OVERLAY_ALPHA, red, _OVERLAY_ALPHA, 0.0)
        cv2.copyTo(blended, mask[y0:y1, x0:x1], window)  # writes into the view of ``out``
    thickness = max(1, round(min(frame.shape[:2]) / 300))
    for inst in instances:
        x, y, w, h = inst.bbox
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), _RED, thickness)
    return out
