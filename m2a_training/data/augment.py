"""Training augmentation of METHOD.md 4.1 with OpenCV and numpy: shortest-edge resize, random crop, SSD colour
jitter, horizontal flip (in that order; Anomaly Mix, when on, runs before all of them).

Images are (H, W, 3) uint8 RGB, labels (H, W) uint8 trainIds (255 ignore, 254 pasted outlier). Every random
choice comes from the `np.random.Generator` passed in, so a sample is a pure function of its generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Cityscapes' ResizeShortestEdge choices: 0.5-2.0 x 1024 (the Mask2Former Cityscapes configs).
CITYSCAPES_SHORT_EDGES: tuple[int, ...] = (
    512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740, 1843, 1945, 2048,
)  # fmt: skip
IGNORE_LABEL = 255


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation pipeline's settings; defaults are the release's Cityscapes values."""

    min_sizes: tuple[int, ...] = CITYSCAPES_SHORT_EDGES  # shortest-edge targets, one chosen uniformly
    max_size: int = 4096  # longest edge cap after resizing
    crop_size: tuple[int, int] = (380, 760)  # (height, width), absolute
    single_category_max_area: float = 1.0  # 1.0: plain uniform crop
    color_jitter: bool = True  # ColorAugSSD
    flip_prob: float = 0.5
    ignore_label: int = IGNORE_LABEL

    def __post_init__(self) -> None:
        if not self.min_sizes or any(not isinstance(s, int) or s < 1 for s in self.min_sizes):
            raise ValueError(f"augment.min_sizes must be positive integers, got {self.min_sizes!r}")
        if self.max_size < max(self.min_sizes):
            raise ValueError(f"augment.max_size ({self.max_size}) must be >= the largest min_size")
        if len(self.crop_size) != 2 or any(not isinstance(s, int) or s < 1 for s in self.crop_size):
            raise ValueError(f"augment.crop_size must be (height, width) positive integers, got {self.crop_size!r}")
        if not 0.0 < self.single_category_max_area <= 1.0:
            raise ValueError(f"augment.single_category_max_area must be in (0, 1], got {self.single_category_max_area}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"augment.flip_prob must be in [0, 1], got {self.flip_prob}")


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output (h, w): shorter side to `short`, longer side capped, int(x + 0.5)."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear (area averaging when shrinking, like PIL's antialiased bilinear), label nearest."""
    height, width = size
    if (height, width) == image.shape[:2]:
        return image, label
    shrinking = height * width < image.shape[0] * image.shape[1]
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def random_resize_shortest_edge(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, min_sizes: tuple[int, ...], max_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the shorter side is a uniform choice of `min_sizes` (longer side <= max_size)."""
    short = int(min_sizes[int(rng.integers(len(min_sizes)))])
    return resize(image, label, shortest_edge_size(image.shape[0], image.shape[1], short, max_size))


def crop_origin(
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    single_category_max_area: float = 1.0,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[int, int, int, int]:
    """(y0, x0, crop_h, crop_w) of a uniform random crop, clipped to the image.

    With single_category_max_area < 1 (detectron2's category-area constraint), up to 10 draws are tried until
    no class (ignore excluded) covers more than that share of the crop and at least two classes are present.
    """
    height, width = label.shape
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)

    def draw() -> tuple[int, int]:
        return int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1))

    y0, x0 = draw()
    if single_category_max_area < 1.0:
        for _ in range(10):
            window = label[y0 : y0 + crop_h, x0 : x0 + crop_w]
            _, counts = np.unique(window[window != ignore_label], return_counts=True)
            if len(counts) > 1 and counts.max() < single_category_max_area * counts.sum():
                break
            y0, x0 = draw()
    return y0, x0, crop_h, crop_w


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(channel.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """SSD photometric distortion on an RGB uint8 image (worked in BGR / OpenCV HSV, clipping at every step).

    Brightness shift (p 0.5), then either contrast, saturation, hue or saturation, hue, contrast (equal odds),
    each applied with p 0.5: contrast and saturation scale by U(range), hue shifts by an integer in
    [-hue_delta, hue_delta] on OpenCV's 0-180 scale.
    """
    img = np.ascontiguousarray(image[:, :, ::-1])  # BGR

    def brightness(x: np.ndarray) -> np.ndarray:
        return _convert(x, beta=rng.uniform(-brightness_delta, brightness_delta)) if rng.integers(2) else x

    def contrast(x: np.ndarray) -> np.ndarray:
        return _convert(x, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else x

    def saturation(x: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def hue(x: np.ndarray) -> np.ndarray:
        if not rng.integers(2):
            return x
        hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    img = brightness(img)
    order = (contrast, saturation, hue) if rng.integers(2) else (saturation, hue, contrast)
    for step in order:
        img = step(img)
    return np.ascontiguousarray(img[:, :, ::-1])


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The whole pipeline: resize shortest edge -> random crop -> ColorAugSSD -> horizontal flip."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if label.shape != image.shape[:2] or label.dtype != np.uint8:
        raise ValueError(f"label must be {image.shape[:2]} uint8, got shape {label.shape} dtype {label.dtype}")
    image, label = random_resize_shortest_edge(image, label, rng, config.min_sizes, config.max_size)
    y0, x0, h, w = crop_origin(label, config.crop_size, rng, config.single_category_max_area, config.ignore_label)
    image, label = image[y0 : y0 + h, x0 : x0 + w], label[y0 : y0 + h, x0 : x0 + w]
    if config.color_jitter:
        image = color_aug_ssd(image, rng)
    if rng.random() < config.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    return _owned(image), _owned(label)


def _owned(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable array: the input itself when it already is one, else a copy."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


__all__ = [
    "CITYSCAPES_SHORT_EDGES",
    "AugmentConfig",
    "augment",
    "color_aug_ssd",
    "crop_origin",
    "random_resize_shortest_edge",
    "resize",
    "shortest_edge_size",
]
