"""Semantic label maps -> per-image mask-classification targets (one binary mask per class present).

The ground truth the matcher and losses compare with (METHOD.md 2.1): for every class id in an image's label
map (ignore 255 and the pasted-outlier label 254 excluded), a binary mask zero-padded bottom/right to the
padded canvas the network saw. Pasted pixels therefore belong to no mask: every matched mask is pushed to 0
there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_LABEL = 255
OOD_LABEL = 254  # pixels of a pasted outlier (Anomaly Mix)


@dataclass(frozen=True)
class Target:
    """Ground truth of one image: class ids and their binary masks over the padded canvas."""

    labels: Tensor  # (num_masks,) int64 class ids in 0..num_classes-1
    masks: Tensor  # (num_masks, padded_height, padded_width) float 0/1


def semantic_targets(
    semantic: Tensor,
    num_classes: int,
    padded_size: tuple[int, int],
    *,
    ignore_label: int = IGNORE_LABEL,
    ood_label: int = OOD_LABEL,
) -> list[Target]:
    """semantic (B, H, W) integer label maps -> one `Target` per image, masks padded to `padded_size`.

    Classes appear in increasing id order. A label outside 0..num_classes-1 that is neither `ignore_label` nor
    `ood_label` is an error naming it.
    """
    if semantic.dim() != 3:
        raise ValueError(f"semantic must be (batch, height, width), got shape {tuple(semantic.shape)}")
    height, width = int(semantic.shape[1]), int(semantic.shape[2])
    pad_h, pad_w = padded_size
    if pad_h < height or pad_w < width:
        raise ValueError(f"padded_size {padded_size} is smaller than the label maps ({height}, {width})")
    semantic = semantic.long()
    targets = []
    for image in semantic:
        ids = torch.unique(image)
        ids = ids[(ids != ignore_label) & (ids != ood_label)]
        bad = ids[(ids < 0) | (ids >= num_classes)]
        if bad.numel():
            raise ValueError(
                f"label map holds ids {bad.tolist()} outside 0..{num_classes - 1} (and not ignore {ignore_label} "
                f"or outlier {ood_label})"
            )
        masks = torch.zeros(ids.numel(), pad_h, pad_w, dtype=torch.float32, device=semantic.device)
        masks[:, :height, :width] = (image.unsqueeze(0) == ids.view(-1, 1, 1)).float()
        targets.append(Target(labels=ids, masks=masks))
    return targets


__all__ = ["IGNORE_LABEL", "OOD_LABEL", "Target", "semantic_targets"]
