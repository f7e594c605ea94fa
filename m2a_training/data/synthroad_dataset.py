"""Generated road scenes (`m2a_perception.synthroad`) as a training / validation data set and an outlier pool.

Plays Cityscapes' role (scenes labelled with trainIds) and COCO's role (the held-in "train" anomaly family
pasted by Anomaly Mix); evaluation uses the held-out "eval" family, which shares no shape or texture with it.
Scene i of a set is `generate_scene(first_seed + i, config)`, rendered on first access and cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2a_perception.synthroad import AnomalyFamily, SceneConfig, generate_scene, paste_anomaly

from .anomaly_mix import bounding_box


@dataclass(frozen=True)
class LabelledFrame:
    """One evaluation frame: image (H, W, 3) uint8 RGB, semantic (H, W) uint8 trainIds, anomaly (H, W) 0/1/255."""

    image: np.ndarray
    semantic: np.ndarray
    anomaly: np.ndarray


class SynthRoadScenes:
    """`num_images` generated scenes -> (image (H, W, 3) uint8 RGB, semantic (H, W) uint8, 255 at anomalies)."""

    def __init__(self, num_images: int, config: SceneConfig, *, first_seed: int = 0, cache: bool = True) -> None:
        if num_images < 1:
            raise ValueError(f"synthroad num_images must be >= 1, got {num_images}")
        if first_seed < 0:
            raise ValueError(f"synthroad first_seed must be >= 0, got {first_seed}")
        self.num_images = num_images
        self.config = config
        self.first_seed = first_seed
        self._cache: dict[int, LabelledFrame] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_images

    def frame(self, index: int) -> LabelledFrame:
        """Scene `index` with all its labels."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"scene index {index} out of range for {self.num_images} scenes")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        scene = generate_scene(self.first_seed + index, self.config)
        frame = LabelledFrame(scene.image, scene.semantic, scene.anomaly)
        for array in (frame.image, frame.semantic, frame.anomaly):
            array.setflags(write=False)  # cached: a consumer must copy before writing
        if self._cache is not None:
            self._cache[index] = frame
        return frame

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        frame = self.frame(index)
        return frame.image, frame.semantic


class SynthRoadOutliers:
    """Outlier pool of generated anomaly objects of one family (an `OutlierSource`).

    Each sample renders one object (`paste_anomaly`) on a blank canvas of `canvas_size` at a height of
    `scale_range` times the canvas height, and returns it cropped to its bounding box. `size` is the nominal
    pool size (objects are drawn fresh from the generator, so the pool is effectively unbounded).
    """

    def __init__(
        self,
        family: AnomalyFamily = "train",
        canvas_size: tuple[int, int] = (512, 1024),
        scale_range: tuple[float, float] = (0.08, 0.35),
        size: int = 10_000,
    ) -> None:
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"synthroad outlier scale_range must be 0 < low <= high, got {scale_range}")
        self.family = family
        self.canvas_size = canvas_size
        self.scale_range = scale_range
        self.size = size

    def __len__(self) -> int:
        return self.size

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.canvas_size
        for _ in range(20):
            canvas = np.zeros((height, width, 3), dtype=np.uint8)
            semantic = np.zeros((height, width), dtype=np.uint8)
            scale = rng.uniform(*self.scale_range)
            mask = paste_anomaly(canvas, semantic, rng, self.family, center=(0.5, 0.5), scale=scale)
            box = bounding_box(mask)
            if box is not None:
                return canvas[box], mask[box]
        raise RuntimeError(f"could not render a {self.family!r} anomaly on a {self.canvas_size} canvas")


__all__ = ["LabelledFrame", "SynthRoadOutliers", "SynthRoadScenes"]
