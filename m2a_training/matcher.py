"""Hungarian matching of predicted (class, mask) pairs to ground-truth masks (METHOD.md 2.1).

Per image and per prediction set: cost = w_class * cost_class + w_mask * cost_mask + w_dice * cost_dice, with
cost_class = -softmax(logits)[gt class] and the two mask costs on one shared set of uniform random points
(the same points for every prediction and every ground-truth mask of that image). Solved with scipy's
`linear_sum_assignment`, in float32 without autocast. This module is the only one that imports scipy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .point_sampling import point_sample, random_points
from .targets import Target

Match = tuple[Tensor, Tensor]  # (prediction indices, target indices), int64, equal length


def class_cost(pred_logits: Tensor, labels: Tensor) -> Tensor:
    """pred_logits (Q, K+1), labels (M,) -> (Q, M) = -softmax(logits)[q, label_m] (softmax over all K+1)."""
    return -pred_logits.float().softmax(-1)[:, labels]


def sigmoid_ce_cost(point_logits: Tensor, point_labels: Tensor) -> Tensor:
    """point_logits (Q, P), point_labels (M, P) in [0, 1] -> (Q, M) mean over points of BCE-with-logits.

    BCE(x, g) = softplus(x) - x * g, so the whole matrix is one row sum and one matrix product.
    """
    num_points = point_logits.shape[1]
    return (F.softplus(point_logits).sum(-1)[:, None] - point_logits @ point_labels.T) / num_points


def dice_cost(point_logits: Tensor, point_labels: Tensor) -> Tensor:
    """point_logits (Q, P), point_labels (M, P) -> (Q, M) = 1 - (2 sum s*g + 1) / (sum s + sum g + 1), s = sigmoid."""
    probs = point_logits.sigmoid()
    numerator = 2.0 * probs @ point_labels.T
    denominator = probs.sum(-1)[:, None] + point_labels.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher:
    """One-to-one assignment of predictions to ground-truth masks minimising the weighted matching cost."""

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("matcher costs cannot all be 0")
        if num_points < 1:
            raise ValueError(f"matcher num_points must be >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(
        self, pred_logits: Tensor, pred_masks: Tensor, target: Target, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """One image: pred_logits (Q, K+1), pred_masks (Q, h, w) logits, target -> cost (Q, M) float32."""
        labels, masks = target.labels, target.masks
        coords = random_points(1, self.num_points, device=pred_masks.device, generator=generator)
        gt_points = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]  # (M, P)
        pred_points = point_sample(pred_masks[:, None].float(), coords.expand(pred_masks.shape[0], -1, -1))[:, 0]
        cost = self.cost_mask * sigmoid_ce_cost(pred_points, gt_points)
        cost = cost + self.cost_class * class_cost(pred_logits, labels)
        return cost + self.cost_dice * dice_cost(pred_points, gt_points)

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        targets: list[Target],
        *,
        generator: torch.Generator | None = None,
    ) -> list[Match]:
        """pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) (1/4 of the padded canvas), B targets -> B matches.

        Each match is (prediction indices, target indices) sorted by prediction index, min(Q, M) long.
        """
        if pred_logits.shape[0] != len(targets) or pred_masks.shape[0] != len(targets):
            raise ValueError(
                f"matcher got {pred_logits.shape[0]} predictions for {len(targets)} targets "
                f"(pred_masks batch {pred_masks.shape[0]})"
            )
        matches = []
        device_type = pred_masks.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            for b, target in enumerate(targets):
                if target.labels.numel() == 0:
                    empty = torch.zeros(0, dtype=torch.int64)
                    matches.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(pred_logits[b], pred_masks[b], target, generator=generator)
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols.astype(np.int64))))
        return matches


__all__ = ["HungarianMatcher", "Match", "class_cost", "dice_cost", "sigmoid_ce_cost"]
