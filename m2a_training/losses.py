"""Mask2Anomaly's training losses (METHOD.md 2.1-2.2): class CE, point-sampled BCE and dice, mask contrastive loss.

Every prediction set (the final one and each of the `aux_outputs`, deep supervision) gets its own Hungarian
matching and the same terms. `MaskClassificationLoss` returns UNWEIGHTED terms under fixed keys:
``loss_ce``, ``loss_mask``, ``loss_dice`` (+ ``loss_ood`` with the contrastive loss) for the final prediction
and the same names with ``_aux{i}`` appended for aux prediction i (0 = the first, from the learnable queries).
`loss_weights` builds the exact-key weight table and `weighted_total` sums with it, refusing any key without a
weight (or a weight without a loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher, Match
from .point_sampling import importance_sampled_points, point_sample
from .targets import OOD_LABEL, Target

BASE_TERMS = ("loss_ce", "loss_mask", "loss_dice")
OOD_TERM = "loss_ood"


# ----------------------------------------------------------------------------------------------------------
# The terms, each usable alone


def classification_loss(pred_logits: Tensor, target_classes: Tensor, no_object_weight: float) -> Tensor:
    """pred_logits (B, Q, K+1), target_classes (B, Q) int64 (K = no-object) -> weighted-mean cross-entropy.

    Class weights are 1 for the K classes and `no_object_weight` (0.1) for no-object; the mean divides by the
    sum of the weights of the targets (PyTorch's weighted-mean reduction).
    """
    num_classes = pred_logits.shape[-1] - 1
    weight = torch.ones(num_classes + 1, device=pred_logits.device, dtype=torch.float32)
    weight[-1] = no_object_weight
    return F.cross_entropy(pred_logits.float().transpose(1, 2), target_classes, weight=weight)


def sigmoid_ce_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float) -> Tensor:
    """point_logits, point_labels (N, P) -> sum over masks of the mean-over-points BCE, divided by num_masks."""
    loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float) -> Tensor:
    """point_logits, point_labels (N, P) -> sum over masks of 1 - (2 sum s*g + 1) / (sum s + sum g + 1), / num_masks."""
    probs = point_logits.sigmoid()
    numerator = 2.0 * (probs * point_labels).sum(-1)
    denominator = probs.sum(-1) + point_labels.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum() / num_masks


def inlier_confidence(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
    """l_N = -max_k sum_q softmax(C_q)[k] * sigmoid(M_q): (B, Q, K+1), (B, Q, h, w) -> (B, h, w), about [-1, 0]."""
    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # (B, Q, K), no-object dropped, not renormalised
    class_map = torch.einsum("bqk,bqhw->bkhw", class_probs, pred_masks.float().sigmoid())
    return -class_map.max(dim=1).values


def mask_contrastive_loss(
    pred_logits: Tensor,
    pred_masks: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    ood_label: int = OOD_LABEL,
) -> Tensor:
    """The mask contrastive loss L_CL of METHOD.md 2.2 (the release's "margin" loss_ood).

    pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) over the padded canvas, labels (B, H, W) label maps of the
    unpadded crops. l_N is stretched onto (H, W) (bilinear, align_corners=True: the release's quirk, which maps
    the padded canvas onto the unpadded labels). OUT = pixels labelled `ood_label`, IN = all others (void
    included): 0.5 * (mean_IN l_N^2 + mean_OUT max(0, margin - l_N)^2), the OUT term only when the batch has
    OUT pixels. Release default margin 1.0; the paper's 0.75 is an option.
    """
    score = inlier_confidence(pred_logits, pred_masks)
    score = F.interpolate(score.unsqueeze(1), size=labels.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
    out = labels == ood_label
    inside = ~out
    loss = (score.square() * inside).sum() / inside.sum().clamp(min=1)
    num_out = out.sum()
    if num_out > 0:
        loss = loss + ((margin - score).clamp(min=0.0).square() * out).sum() / num_out
    return 0.5 * loss


# ----------------------------------------------------------------------------------------------------------
# The criterion


@dataclass(frozen=True)
class LossConfig:
    """Weights and sampling of the losses; defaults are the release's."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    contrastive: bool = False  # stage 2: add L_CL ("loss_ood") to every prediction set
    contrastive_weight: float = 1.0
    contrastive_margin: float = 1.0  # the release; the paper (per the authors' issue 8) says 0.75
    deep_supervision: bool = True

    def __post_init__(self) -> None:
        for name in ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_points < 1:
            raise ValueError(f"loss.num_points must be >= 1, got {self.num_points}")
        if self.oversample_ratio < 1:
            raise ValueError(f"loss.oversample_ratio must be >= 1, got {self.oversample_ratio}")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError(f"loss.importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}")
        if self.contrastive_margin <= 0:
            raise ValueError(f"loss.contrastive_margin must be > 0, got {self.contrastive_margin}")


def loss_weights(config: LossConfig, num_aux: int) -> dict[str, float]:
    """Exact key -> weight for the final prediction and `num_aux` aux predictions (none without deep supervision)."""
    per_term = {"loss_ce": config.class_weight, "loss_mask": config.mask_weight, "loss_dice": config.dice_weight}
    if config.contrastive:
        per_term[OOD_TERM] = config.contrastive_weight
    suffixes = [""] + ([f"_aux{i}" for i in range(num_aux)] if config.deep_supervision else [])
    return {f"{term}{suffix}": weight for suffix in suffixes for term, weight in per_term.items()}


def weighted_total(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """sum_k weights[k] * losses[k]; the key sets must be equal (a typo or a forgotten term is an error)."""
    missing, extra = sorted(set(losses) - set(weights)), sorted(set(weights) - set(losses))
    if missing or extra:
        raise KeyError(f"loss keys without a weight: {missing}; weights without a loss: {extra}")
    return sum((losses[k] * weights[k] for k in sorted(losses)), torch.zeros((), device=_device(losses)))


def _device(losses: Mapping[str, Tensor]) -> torch.device:
    return next(iter(losses.values())).device if losses else torch.device("cpu")


def num_masks_across_ranks(targets: Sequence[Target], device: torch.device) -> float:
    """Ground-truth masks in the batch, averaged over the distributed ranks, at least 1."""
    count = torch.tensor(float(sum(int(t.labels.numel()) for t in targets)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count.item()), 1.0)


class MaskClassificationLoss(nn.Module):
    """Matching + losses for every prediction set; `forward` returns the unweighted terms under fixed keys."""

    def __init__(self, num_classes: int, config: LossConfig | None = None, matcher: HungarianMatcher | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.config = LossConfig() if config is None else config
        self.matcher = matcher or HungarianMatcher(
            cost_class=self.config.class_weight,
            cost_mask=self.config.mask_weight,
            cost_dice=self.config.dice_weight,
            num_points=self.config.num_points,
        )

    def forward(
        self,
        outputs: Mapping[str, object],
        targets: list[Target],
        labels: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """outputs: the network's `pred_logits`, `pred_masks`, `aux_outputs`; targets: one per image.

        labels (B, H, W): the crops' label maps, needed only for the contrastive loss (pasted pixels = 254).
        `generator` drives every random point (matching and importance sampling).
        """
        if self.config.contrastive and labels is None:
            raise ValueError("the contrastive loss needs the label maps: pass labels=(B, H, W)")
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if pred_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {pred_logits.shape[-1]} classes, expected {self.num_classes} + 1 (no-object)"
            )
        num_masks = num_masks_across_ranks(targets, pred_masks.device)
        sets: list[tuple[str, Tensor, Tensor]] = [("", pred_logits, pred_masks)]
        if self.config.deep_supervision:
            aux = outputs.get("aux_outputs") or []
            sets += [(f"_aux{i}", a["pred_logits"], a["pred_masks"]) for i, a in enumerate(aux)]
        losses: dict[str, Tensor] = {}
        for suffix, logits, masks in sets:
            matches = self.matcher(logits, masks, targets, generator=generator)
            terms = self.set_losses(logits, masks, targets, matches, num_masks, generator=generator)
            if self.config.contrastive:
                terms[OOD_TERM] = mask_contrastive_loss(logits, masks, labels, margin=self.config.contrastive_margin)
            losses.update({f"{name}{suffix}": value for name, value in terms.items()})
        return losses

    def set_losses(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        targets: list[Target],
        matches: list[Match],
        num_masks: float,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """loss_ce, loss_mask, loss_dice of one prediction set given its matches."""
        batch, num_queries = pred_logits.shape[:2]
        target_classes = torch.full(
            (batch, num_queries), self.num_classes, dtype=torch.int64, device=pred_logits.device
        )
        batch_idx, src_idx, gt_masks = [], [], []
        for b, ((pred_i, gt_i), target) in enumerate(zip(matches, targets)):
            target_classes[b, pred_i.to(pred_logits.device)] = target.labels[gt_i.to(target.labels.device)].to(
                pred_logits.device
            )
            batch_idx.append(torch.full_like(pred_i, b))
            src_idx.append(pred_i)
            gt_masks.append(target.masks[gt_i.to(target.masks.device)])
        loss_ce = classification_loss(pred_logits, target_classes, self.config.no_object_weight)
        b_idx, q_idx = torch.cat(batch_idx), torch.cat(src_idx)
        if b_idx.numel() == 0:  # no ground truth anywhere: zero losses that keep the graph (DDP needs the grads)
            zero = pred_masks.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero.clone()}
        src = pred_masks[b_idx.to(pred_masks.device), q_idx.to(pred_masks.device)].float()[:, None]  # (N,1,h,w)
        gt = torch.cat(gt_masks).to(src.device, torch.float32)[:, None]  # (N, 1, H_pad, W_pad)
        coords = importance_sampled_points(
            src,
            self.config.num_points,
            self.config.oversample_ratio,
            self.config.importance_sample_ratio,
            generator=generator,
        )
        with torch.no_grad():
            point_labels = point_sample(gt, coords)[:, 0]
        point_logits = point_sample(src, coords)[:, 0]
        return {
            "loss_ce": loss_ce,
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }


__all__ = [
    "BASE_TERMS",
    "OOD_TERM",
    "LossConfig",
    "MaskClassificationLoss",
    "classification_loss",
    "dice_loss",
    "inlier_confidence",
    "loss_weights",
    "mask_contrastive_loss",
    "num_masks_across_ranks",
    "sigmoid_ce_loss",
    "weighted_total",
]
