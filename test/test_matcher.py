"""Hungarian matcher (METHOD.md 2.1): hand-computed costs, known optimal assignments, shared points, targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from m2a_training.matcher import HungarianMatcher, class_cost, dice_cost, sigmoid_ce_cost
from m2a_training.point_sampling import importance_sampled_points, point_sample
from m2a_training.targets import Target, semantic_targets


def _bce(logit: float, label: float) -> float:
    return math.log1p(math.exp(logit)) - logit * label


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_class_cost_is_minus_softmax_probability_of_the_target_class():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    cost = class_cost(logits, torch.tensor([1, 0]))
    e = [math.exp(1), 1.0, math.exp(-1)]
    f = [1.0, math.exp(2), 1.0]
    expected = [[-e[1] / sum(e), -e[0] / sum(e)], [-f[1] / sum(f), -f[0] / sum(f)]]
    np.testing.assert_allclose(cost.numpy(), expected, rtol=1e-6)


def test_mask_costs_match_hand_computed_values():
    pred = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])  # Q=2 predictions, P=2 points
    gt = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # M=3 masks
    ce = sigmoid_ce_cost(pred, gt)
    dice = dice_cost(pred, gt)
    for q in range(2):
        for m in range(3):
            p, g = pred[q].tolist(), gt[m].tolist()
            exp_ce = sum(_bce(a, b) for a, b in zip(p, g)) / 2
            s = [_sig(a) for a in p]
            exp_dice = 1 - (2 * sum(x * y for x, y in zip(s, g)) + 1) / (sum(s) + sum(g) + 1)
            assert ce[q, m].item() == pytest.approx(exp_ce, rel=1e-5)
            assert dice[q, m].item() == pytest.approx(exp_dice, rel=1e-5)


class _FixedCost(HungarianMatcher):
    def __init__(self, cost: torch.Tensor) -> None:
        super().__init__()
        self.fixed = cost

    def cost_matrix(self, pred_logits, pred_masks, target, *, generator=None):  # noqa: ANN001
        return self.fixed


def test_assignment_minimises_the_total_cost_where_greedy_would_not():
    # Greedy (row 0 takes its cheapest column 0) totals 1 + 10; the optimum is row 0 -> 1, row 1 -> 0 (2 + 1),
    # and the third prediction stays unmatched.
    cost = torch.tensor([[1.0, 2.0], [1.0, 10.0], [5.0, 5.0]])
    target = Target(labels=torch.tensor([0, 1]), masks=torch.zeros(2, 4, 4))
    ((rows, cols),) = _FixedCost(cost)(torch.zeros(1, 3, 3), torch.zeros(1, 3, 1, 1), [target])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    assert rows.dtype == cols.dtype == torch.int64


def _one_hot_logits(classes: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.full((len(classes), num_classes + 1), -8.0)
    for q, c in enumerate(classes):
        logits[q, c] = 8.0
    return logits


def test_matcher_recovers_a_permutation_of_perfect_predictions():
    # Three regions of a 32x32 canvas (ground truth at full resolution, predictions at 1/4), classes 2, 0, 1.
    semantic = torch.full((1, 32, 32), 255, dtype=torch.uint8)
    semantic[0, :, :16] = 2
    semantic[0, :16, 16:] = 0
    semantic[0, 16:, 16:] = 1
    (target,) = semantic_targets(semantic, num_classes=3, padded_size=(32, 32))
    assert target.labels.tolist() == [0, 1, 2]
    # Queries 4, 1, 3 predict classes 0, 1, 2 with their masks; queries 0 and 2 predict no-object and nothing.
    small = torch.nn.functional.interpolate(target.masks[None], size=(8, 8), mode="nearest")[0]
    masks = torch.full((5, 8, 8), -10.0)
    logits = torch.full((5, 4), -8.0)
    logits[:, 3] = 8.0
    for query, gt in ((4, 0), (1, 1), (3, 2)):
        masks[query] = small[gt] * 20 - 10
        logits[query] = _one_hot_logits([int(target.labels[gt])], 3)[0]
    matcher = HungarianMatcher(num_points=2000)
    ((rows, cols),) = matcher(logits[None], masks[None], [target], generator=torch.Generator().manual_seed(0))
    assert dict(zip(rows.tolist(), cols.tolist())) == {1: 1, 3: 2, 4: 0}


def test_mask_costs_use_one_shared_point_set_per_image():
    # With the same generator state, the points drawn for the cost equal those drawn by random_points: so a
    # prediction identical to a ground-truth mask gets exactly the cost of that mask against itself.
    torch.manual_seed(0)
    target = Target(labels=torch.tensor([0]), masks=(torch.rand(1, 16, 16) > 0.5).float())
    pred = torch.nn.functional.interpolate(target.masks[None], size=(4, 4), mode="bilinear")[0] * 8 - 4
    matcher = HungarianMatcher(num_points=64)
    a = matcher.cost_matrix(
        _one_hot_logits([0], 1), pred.repeat(2, 1, 1), target, generator=torch.Generator().manual_seed(3)
    )
    # two identical predictions, same points -> the same cost (to rounding: batched sums may differ in the last bit)
    torch.testing.assert_close(a[0, 0], a[1, 0], rtol=1e-6, atol=1e-6)
    b = matcher.cost_matrix(_one_hot_logits([0], 1), pred, target, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a[0, 0], b[0, 0], rtol=1e-6, atol=1e-6)


def test_image_without_ground_truth_gets_an_empty_match():
    target = Target(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 8, 8))
    ((rows, cols),) = HungarianMatcher()(torch.zeros(1, 3, 4), torch.zeros(1, 3, 2, 2), [target])
    assert rows.numel() == 0 and cols.numel() == 0


def test_matcher_rejects_mismatched_batch():
    target = Target(labels=torch.tensor([0]), masks=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        HungarianMatcher()(torch.zeros(2, 3, 4), torch.zeros(2, 3, 2, 2), [target])


def test_semantic_targets_pad_and_skip_ignore_and_pasted_pixels():
    semantic = torch.tensor([[[0, 254, 3], [255, 3, 0]]], dtype=torch.uint8)
    (target,) = semantic_targets(semantic, num_classes=4, padded_size=(4, 4))
    assert target.labels.tolist() == [0, 3]
    assert target.masks.shape == (2, 4, 4)
    np.testing.assert_array_equal(target.masks[0, :2, :3].numpy(), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(target.masks[1, :2, :3].numpy(), [[0, 0, 1], [0, 1, 0]])
    assert target.masks[:, 2:, :].sum() == 0 and target.masks[:, :, 3:].sum() == 0
    with pytest.raises(ValueError, match=r"ids \[7\]"):
        semantic_targets(torch.tensor([[[7]]]), num_classes=4, padded_size=(1, 1))


def test_point_sample_reads_pixel_centres_exactly():
    maps = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    coords = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [1.5 / 4, 1.5 / 3]]])
    np.testing.assert_allclose(point_sample(maps, coords)[0, 0].numpy(), [0.0, 11.0, 5.0], atol=1e-5)


def test_importance_sampling_puts_the_uncertain_share_on_the_boundary():
    logits = torch.full((1, 1, 16, 16), 20.0)
    logits[..., 3:13, 3:13] = 0.0  # the only uncertain region (~95 of the 300 candidates read exactly 0)
    coords = importance_sampled_points(logits, 100, 3.0, 0.75, generator=torch.Generator().manual_seed(0))
    assert coords.shape == (1, 100, 2)
    inside = ((coords[0] >= 3 / 16) & (coords[0] <= 13 / 16)).all(dim=1)
    assert inside[:75].all()  # the 75 most uncertain candidates
    assert not inside[75:].all()  # the 25 uniform points land anywhere
