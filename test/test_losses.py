"""Losses (METHOD.md 2.1-2.2), each against hand-computed values on tiny tensors, and the criterion's contract."""

from __future__ import annotations

import math

import pytest
import torch

from m2a_training.losses import (
    LossConfig,
    MaskClassificationLoss,
    classification_loss,
    dice_loss,
    inlier_confidence,
    loss_weights,
    mask_contrastive_loss,
    sigmoid_ce_loss,
    weighted_total,
)
from m2a_training.targets import semantic_targets


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _softmax(v: list[float]) -> list[float]:
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_classification_loss_weights_no_object_by_a_tenth():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]]])  # B=1, Q=2, K=2 (+ no-object)
    targets = torch.tensor([[0, 2]])  # query 0 -> class 0, query 1 -> no-object
    nll0 = -math.log(_softmax([2.0, 0.0, 0.0])[0])
    nll1 = -math.log(_softmax([0.0, 1.0, 0.5])[2])
    expected = (1.0 * nll0 + 0.1 * nll1) / (1.0 + 0.1)
    assert classification_loss(logits, targets, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_ce_loss_is_mean_over_points_summed_over_masks_over_num_masks():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    per_mask = [(math.log(2) + math.log1p(math.exp(2))) / 2, (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2]
    assert sigmoid_ce_loss(logits, labels, 4.0).item() == pytest.approx(sum(per_mask) / 4, rel=1e-6)


def test_dice_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0, -2.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    s = [_sig(0.0), _sig(2.0), _sig(-2.0)]
    expected = 1 - (2 * (s[0] + s[1]) + 1) / (sum(s) + 2 + 1)
    assert dice_loss(logits, labels, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(logits, labels, 2.0).item() == pytest.approx(expected / 2, rel=1e-6)


def test_inlier_confidence_is_minus_the_max_class_map():
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # Q=2, K=2
    masks = torch.tensor([[[[0.0]], [[1.0]]]])  # (1, 2, 1, 1)
    p0, p1 = _softmax([1.0, 0.0, 0.0]), _softmax([0.0, 2.0, 0.0])
    m0, m1 = _sig(0.0), _sig(1.0)
    class_map = [p0[0] * m0 + p1[0] * m1, p0[1] * m0 + p1[1] * m1]
    assert inlier_confidence(logits, masks).item() == pytest.approx(-max(class_map), rel=1e-6)


def _single_query(class_logit: float, mask_logit: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    logits = torch.tensor([[[class_logit, 0.0]]])  # K=1
    masks = torch.full((1, 1, 1, 1), mask_logit)
    l_n = -_softmax([class_logit, 0.0])[0] * _sig(mask_logit)
    return logits, masks, l_n


@pytest.mark.parametrize("margin", [1.0, 0.75])
def test_mask_contrastive_loss_with_and_without_outlier_pixels(margin):
    logits, masks, l_n = _single_query(1.5, 0.5)
    labels = torch.tensor([[[0, 254], [255, 0]]])  # one pasted pixel; void counts as inlier
    expected = 0.5 * (l_n**2 + max(0.0, margin - l_n) ** 2)
    assert mask_contrastive_loss(logits, masks, labels, margin=margin).item() == pytest.approx(expected, rel=1e-6)
    no_out = torch.zeros(1, 2, 2, dtype=torch.int64)
    assert mask_contrastive_loss(logits, masks, no_out, margin=margin).item() == pytest.approx(0.5 * l_n**2, rel=1e-6)


def test_mask_contrastive_loss_stretches_the_padded_map_with_align_corners():
    # l_N over a 1x2 canvas stretched onto 1x3 labels (align_corners=True): the middle pixel is the average.
    logits = torch.tensor([[[3.0, 0.0]]])
    masks = torch.tensor([[[[0.0, 2.0]]]])
    p = _softmax([3.0, 0.0])[0]
    left, right = -p * _sig(0.0), -p * _sig(2.0)
    labels = torch.tensor([[[0, 254, 0]]])
    mid = (left + right) / 2
    expected = 0.5 * ((left**2 + right**2) / 2 + (1.0 - mid) ** 2)
    assert mask_contrastive_loss(logits, masks, labels).item() == pytest.approx(expected, rel=1e-6)


def test_loss_weights_and_weighted_total_use_exact_keys():
    weights = loss_weights(LossConfig(contrastive=True), num_aux=2)
    assert weights == {
        **{f"loss_ce{s}": 2.0 for s in ("", "_aux0", "_aux1")},
        **{f"loss_mask{s}": 5.0 for s in ("", "_aux0", "_aux1")},
        **{f"loss_dice{s}": 5.0 for s in ("", "_aux0", "_aux1")},
        **{f"loss_ood{s}": 1.0 for s in ("", "_aux0", "_aux1")},
    }
    losses = {k: torch.tensor(float(i)) for i, k in enumerate(sorted(weights))}
    expected = sum(weights[k] * float(i) for i, k in enumerate(sorted(weights)))
    assert weighted_total(losses, weights).item() == pytest.approx(expected)
    with pytest.raises(KeyError, match="loss_ce_aux2"):
        weighted_total({**losses, "loss_ce_aux2": torch.tensor(1.0)}, weights)
    del losses["loss_ood"]
    with pytest.raises(KeyError, match="loss_ood"):
        weighted_total(losses, weights)


def _perfect_outputs(semantic: torch.Tensor, num_classes: int, num_queries: int, num_aux: int):
    targets = semantic_targets(semantic, num_classes, tuple(semantic.shape[1:]))
    b, h, w = semantic.shape
    logits = torch.full((b, num_queries, num_classes + 1), -10.0)
    logits[..., num_classes] = 10.0
    masks = torch.full((b, num_queries, h // 4, w // 4), -30.0)
    for i, t in enumerate(targets):
        if t.labels.numel() == 0:
            continue
        small = torch.nn.functional.interpolate(t.masks[None], size=(h // 4, w // 4), mode="nearest")[0]
        for j, label in enumerate(t.labels.tolist()):
            logits[i, j] = -10.0
            logits[i, j, label] = 10.0
            masks[i, j] = small[j] * 60 - 30
    out = {"pred_logits": logits, "pred_masks": masks}
    out["aux_outputs"] = [{"pred_logits": logits.clone(), "pred_masks": masks.clone()} for _ in range(num_aux)]
    return out, targets


def test_criterion_keys_and_near_zero_loss_for_a_perfect_prediction():
    semantic = torch.zeros(2, 64, 64, dtype=torch.int64)
    semantic[0, :32] = 1
    semantic[1, :, :16] = 2
    out, targets = _perfect_outputs(semantic, num_classes=3, num_queries=5, num_aux=3)
    # Uniform points: importance sampling would put most points on the boundaries, where the ground truth read
    # bilinearly is soft (0.5 exactly on it) and even a perfect prediction pays BCE log(2).
    criterion = MaskClassificationLoss(3, LossConfig(num_points=4096, importance_sample_ratio=0.0))
    losses = criterion(out, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == set(loss_weights(criterion.config, num_aux=3))
    for key, value in losses.items():
        assert value.item() < (1e-3 if key.startswith("loss_ce") else 0.1), (key, value.item())
    # masks that cover nothing cost BCE ~30 on the positive half of the points and dice ~1
    out["pred_masks"] = torch.full_like(out["pred_masks"], -30.0)
    worse = criterion(out, targets, generator=torch.Generator().manual_seed(0))
    assert worse["loss_mask"] > 1 and worse["loss_dice"] > 0.5


def test_criterion_without_deep_supervision_and_with_contrastive_term():
    semantic = torch.zeros(1, 16, 16, dtype=torch.int64)
    semantic[0, 4:8, 4:8] = 254
    out, targets = _perfect_outputs(semantic, num_classes=2, num_queries=3, num_aux=2)
    config = LossConfig(num_points=64, contrastive=True, deep_supervision=False)
    losses = MaskClassificationLoss(2, config)(out, targets, semantic)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ood"}
    with pytest.raises(ValueError, match="labels"):
        MaskClassificationLoss(2, config)(out, targets)


def test_criterion_gradients_flow_and_no_ground_truth_keeps_the_graph():
    semantic = torch.full((1, 16, 16), 255, dtype=torch.int64)
    out, targets = _perfect_outputs(semantic, num_classes=2, num_queries=3, num_aux=0)
    out["pred_masks"].requires_grad_(True)
    out["pred_logits"].requires_grad_(True)
    losses = MaskClassificationLoss(2, LossConfig(num_points=32))(out, targets)
    total = weighted_total(losses, loss_weights(LossConfig(), 0))
    total.backward()
    assert out["pred_masks"].grad is not None and out["pred_logits"].grad.abs().sum() > 0
    assert losses["loss_mask"].item() == 0.0
