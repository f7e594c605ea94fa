"""Anomaly Mix (METHOD.md 3): paste an outlier object into a training image and label it 254.

An `OutlierSource` hands out objects already cropped to their tight bounding box: an RGB patch and the
boolean mask of the object inside it (COCO objects from `coco_outliers`, or generated ones from
`synthroad_dataset`). `AnomalyMix` pastes one with its probability (0.2 in the release) at a uniformly random
position where the box fits, copying the object's pixels (no blending, no rescaling) and writing the outlier
label into the label map at exactly those pixels. It runs on the full-size image before augmentation.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

OOD_LABEL = 254


class OutlierSource(Protocol):
    """A pool of outlier objects."""

    def __len__(self) -> int: ...

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One object: patch (h, w, 3) uint8 RGB and mask (h, w) bool, cropped to the mask's bounding box."""
        ...


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Tight (rows, cols) slices around the True pixels of mask (H, W); None if there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def paste_outlier(
    image: np.ndarray,
    label: np.ndarray,
    patch: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    ood_label: int = OOD_LABEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copies of image (H, W, 3) and label (H, W) with the object pasted; returns them and the pasted (H, W) mask.

    The top-left corner is uniform over the positions where the patch fits. A patch larger than the image (never
    the case for COCO objects in Cityscapes frames) is first shrunk to fit, keeping its aspect ratio.
    """
    if patch.shape[:2] != mask.shape or patch.ndim != 3:
        raise ValueError(f"patch (h, w, 3) and mask (h, w) must match, got {patch.shape} and {mask.shape}")
    height, width = label.shape
    h, w = mask.shape
    if h > height or w > width:
        scale = min(height / h, width / w)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        h, w = mask.shape
    y0, x0 = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    image, label = image.copy(), label.copy()
    image[y0 : y0 + h, x0 : x0 + w][mask] = patch[mask]
    label[y0 : y0 + h, x0 : x0 + w][mask] = ood_label
    pasted = np.zeros((height, width), dtype=bool)
    pasted[y0 : y0 + h, x0 : x0 + w] = mask
    return image, label, pasted


class AnomalyMix:
    """With probability `probability`, paste one object of `source` into (image, label)."""

    def __init__(self, source: OutlierSource, probability: float = 0.2, ood_label: int = OOD_LABEL) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"anomaly mix probability must be in [0, 1], got {probability}")
        if len(source) == 0:
            raise ValueError("anomaly mix needs a non-empty outlier source")
        self.source = source
        self.probability = probability
        self.ood_label = ood_label

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, label) -> (image, label, pasted mask (H, W) bool); the inputs are never modified."""
        if rng.random() >= self.probability:
            return image, label, np.zeros(label.shape, dtype=bool)
        patch, mask = self.source.sample(rng)
        return paste_outlier(image, label, patch, mask, rng, ood_label=self.ood_label)


__all__ = ["OOD_LABEL", "AnomalyMix", "OutlierSource", "bounding_box", "paste_outlier"]
