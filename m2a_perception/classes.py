"""The class set shared by every part of m2a: the 19 Cityscapes trainIds, their names and colours.

Kept free of torch so that light tools (the scene generator, bag replay, evaluation of score files) can use it.
"""

from __future__ import annotations

import numpy as np

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
TRAIN_IDS: dict[str, int] = {name: train_id for train_id, name in enumerate(CITYSCAPES_CLASSES)}


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names for a model's classes: the Cityscapes names for 19, else "class_0", "class_1", ..."""
    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


IGNORE_ID = 255  # unlabelled / void pixels in semantic label maps
# The official Cityscapes colours, in trainId order (overlays, RViz images, debugging pictures).
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip
CITYSCAPES_PALETTE.setflags(write=False)
