"""Point sampling shared by the matcher and the mask losses (PointRend's scheme, as Mask2Former uses it).

Points are (x, y) pairs in [0, 1]^2 over the whole (padded) canvas; values are read by bilinear interpolation
(`grid_sample`, align_corners=False, zero padding), so a 1/4-resolution logit map and a full-resolution ground
truth mask are sampled at the same places.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of maps (N, C, H, W) at coords (N, P, 2) in [0, 1] (x, y) -> (N, C, P)."""
    if maps.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != maps.shape[0]:
        raise ValueError(
            f"point_sample needs maps (N, C, H, W) and coords (N, P, 2) with the same N, got "
            f"{tuple(maps.shape)} and {tuple(coords.shape)}"
        )
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(maps.dtype)  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def uncertainty(logits: Tensor) -> Tensor:
    """PointRend's uncertainty of binary mask logits: -|logit| (highest at the decision boundary)."""
    return -logits.abs()


def random_points(count: int, num_points: int, *, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """(count, num_points, 2) points uniform in [0, 1)^2."""
    return torch.rand(count, num_points, 2, device=device, generator=generator)


def importance_sampled_points(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Points where mask_logits (N, 1, h, w) are most uncertain, plus uniform ones -> (N, num_points, 2).

    Draws int(num_points * oversample_ratio) uniform candidates, keeps the int(importance_sample_ratio *
    num_points) with the highest `uncertainty` and adds num_points minus that many fresh uniform points (the
    authors' 12544, 3, 0.75: 9408 uncertain + 3136 random out of 37632 candidates). No gradient flows.
    """
    if oversample_ratio < 1.0:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    count, device = mask_logits.shape[0], mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        candidates = random_points(count, num_sampled, device=device, generator=generator)
        scores = uncertainty(point_sample(mask_logits.detach().float(), candidates))[:, 0, :]  # (N, S)
        keep = torch.topk(scores, k=num_uncertain, dim=1).indices  # (N, U)
        chosen = torch.gather(candidates, 1, keep.unsqueeze(-1).expand(-1, -1, 2))
        if num_random > 0:
            chosen = torch.cat([chosen, random_points(count, num_random, device=device, generator=generator)], 1)
    return chosen


__all__ = ["importance_sampled_points", "point_sample", "random_points", "uncertainty"]
