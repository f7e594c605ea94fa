"""Cityscapes semantic segmentation (fine annotations) with trainId labels.

Layout (the official download): ``<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
``<root>/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png``. Where the trainId files were never made
(cityscapesScripts' createTrainIdLabelImgs), the ``_gtFine_labelIds.png`` files are converted on load with
the official id -> trainId table.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IGNORE_LABEL = 255
# Cityscapes labelId -> trainId (cityscapesScripts' labels.py); every other id is ignored (255).
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes labelIds -> (H, W) uint8 trainIds (255 for every class not trained on)."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut[label_ids.astype(np.uint8)]


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; OSError naming the file if it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """A single-channel PNG as (H, W) uint8; OSError naming the file if it cannot be read."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise OSError(f"cannot read label map {path}")
    if label.ndim != 2:
        raise OSError(f"label map {path} must be single-channel, got shape {label.shape}")
    return label.astype(np.uint8)


class CityscapesSemantic:
    """Cityscapes `split` -> (image (H, W, 3) uint8 RGB, label (H, W) uint8 trainIds)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root = Path(root)
        image_dir = self.root / "leftImg8bit" / split
        self.images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise FileNotFoundError(
                f"no Cityscapes images under {image_dir} (expected <root>/leftImg8bit/{split}/<city>/*_leftImg8bit.png)"
            )
        self.labels: list[tuple[Path, bool]] = []
        for image in self.images:
            stem = image.name[: -len("_leftImg8bit.png")]
            folder = self.root / "gtFine" / split / image.parent.name
            train_ids, label_ids = folder / f"{stem}_gtFine_labelTrainIds.png", folder / f"{stem}_gtFine_labelIds.png"
            if train_ids.exists():
                self.labels.append((train_ids, False))
            elif label_ids.exists():
                self.labels.append((label_ids, True))
            else:
                raise FileNotFoundError(f"no label for {image}: expected {train_ids} (or {label_ids.name})")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(self.images[index])
        path, convert = self.labels[index]
        label = read_label(path)
        if convert:
            label = label_ids_to_train_ids(label)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{path} is {label.shape}, its image {self.images[index]} is {image.shape[:2]}")
        return image, label


__all__ = ["LABEL_ID_TO_TRAIN_ID", "CityscapesSemantic", "label_ids_to_train_ids", "read_label", "read_rgb"]
