"""COCO outliers for Anomaly Mix: the offline preparation (METHOD.md 3) and the pool that reads its output.

`prepare_coco` keeps the COCO images that contain none of the 8 classes overlapping Cityscapes and whose
sides are both >= 480 px, and writes for each a single-channel PNG that is 254 on the union of all its instance
annotations (crowd ones included) and 0 elsewhere, beside a copy (hard link where possible) of the image:

    <out>/ood_annotations/<name>.png     <out>/images/<name>.jpg

`CocoOutliers` is the `OutlierSource` over such a folder (the authors' layout: the image path is the mask path
with "ood_annotations" -> "images" and ".png" -> ".jpg").
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .anomaly_mix import OOD_LABEL, bounding_box
from .cityscapes import read_label, read_rgb

# COCO classes that are also Cityscapes classes: images with any of them are never used as outliers.
EXCLUDED_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign",
)  # fmt: skip
MIN_SIZE = 480


@dataclass
class PrepareStats:
    """What `prepare_coco` did with the split's images."""

    kept: int = 0
    too_small: int = 0
    overlapping: int = 0  # contain an excluded class
    unannotated: int = 0  # no instance annotation at all: nothing to paste

    def summary(self) -> str:
        return (
            f"kept {self.kept} images; skipped {self.overlapping} with Cityscapes classes, {self.too_small} "
            f"smaller than the minimum side, {self.unannotated} without annotations"
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def prepare_coco(
    coco_root: str | Path,
    out: str | Path,
    *,
    split: str = "train2017",
    min_size: int = MIN_SIZE,
    excluded: tuple[str, ...] = EXCLUDED_CLASSES,
    limit: int | None = None,
) -> PrepareStats:
    """Write the outlier masks and images of COCO `split` to `out` (see the module docstring); returns counts.

    Reads ``<coco_root>/annotations/instances_<split>.json`` and the images from ``<coco_root>/<split>/``.
    `limit` stops after that many kept images (quick trials).
    """
    from pycocotools.coco import COCO  # training-only dependency

    coco_root, out = Path(coco_root), Path(out)
    annotations = coco_root / "annotations" / f"instances_{split}.json"
    image_dir = coco_root / split
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO annotations not found: expected {annotations}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO images not found: expected the folder {image_dir}")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco = COCO(str(annotations))
    names = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    unknown = sorted(set(excluded) - set(names))
    if unknown:
        raise ValueError(f"{annotations} has no categories {unknown}; its categories are {sorted(names)}")
    excluded_ids = {names[n] for n in excluded}
    mask_dir, out_images = out / "ood_annotations", out / "images"
    mask_dir.mkdir(parents=True, exist_ok=True)
    out_images.mkdir(parents=True, exist_ok=True)
    stats = PrepareStats()
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        height, width = int(info["height"]), int(info["width"])
        if height < min_size or width < min_size:
            stats.too_small += 1
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        if any(a["category_id"] in excluded_ids for a in anns):
            stats.overlapping += 1
            continue
        if not anns:
            stats.unannotated += 1
            continue
        union = np.zeros((height, width), dtype=bool)
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            for ann in anns:
                union |= coco.annToMask(ann).astype(bool)
        stem = Path(info["file_name"]).stem
        source = image_dir / info["file_name"]
        if not source.is_file():
            raise FileNotFoundError(f"COCO image {source} (id {image_id}) listed in {annotations} is missing")
        if not cv2.imwrite(str(mask_dir / f"{stem}.png"), np.where(union, OOD_LABEL, 0).astype(np.uint8)):
            raise OSError(f"could not write {mask_dir / f'{stem}.png'}")
        _link_or_copy(source, out_images / f"{stem}.jpg")
        stats.kept += 1
        if limit is not None and stats.kept >= limit:
            break
    return stats


class CocoOutliers:
    """The `OutlierSource` over a prepared folder: a random object union, cropped to its bounding box."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.masks = sorted((self.root / "ood_annotations").glob("*.png"))
        if not self.masks:
            raise FileNotFoundError(
                f"no outlier masks in {self.root / 'ood_annotations'} (run `m2a-train prepare-coco` first)"
            )

    def __len__(self) -> int:
        return len(self.masks)

    def image_path(self, mask_path: Path) -> Path:
        """The image beside a mask: .../ood_annotations/x.png -> .../images/x.jpg."""
        return mask_path.parent.parent / "images" / f"{mask_path.stem}.jpg"

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(10):
            path = self.masks[int(rng.integers(len(self.masks)))]
            mask = read_label(path) == OOD_LABEL
            box = bounding_box(mask)
            if box is None:
                continue
            image = read_rgb(self.image_path(path))
            if image.shape[:2] != mask.shape:
                raise ValueError(f"{self.image_path(path)} is {image.shape[:2]} but its mask {path} is {mask.shape}")
            return image[box], mask[box]
        raise RuntimeError(f"10 random masks in {self.root / 'ood_annotations'} had no {OOD_LABEL} pixel")


__all__ = ["EXCLUDED_CLASSES", "MIN_SIZE", "CocoOutliers", "PrepareStats", "prepare_coco"]
