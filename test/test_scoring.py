"""Anomaly scoring (METHOD.md 5.1-5.5): hand-computed scores per Table-3 row and baseline, mask refinement,
flip TTA, padding crop and resize order, chunking, quarter resolution, and the image-level call."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.model.scoring import (
    TABLE3_ROWS,
    ScoringConfig,
    anomaly_from_class_scores,
    anomaly_segmentation,
    class_scores,
    postprocess,
    refine_anomaly,
    refinement_keep,
    refinement_response,
    resize_shortest_edge,
    segment,
    tta_batch,
)

HAS_MODEL = (Path(__file__).resolve().parents[1] / "m2a_perception" / "model" / "mask2anomaly.py").exists()
K19 = 19  # Cityscapes classes; logits carry K19 + 1


# ---------------------------------------------------------------------------------------------------------
# Plain-python reference (no torch) for the hand-computed checks


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _reference_scores(c: list[list[float]], m: list[list[float]], cfg: ScoringConfig) -> list[float]:
    """c: Q rows of K+1 class logits; m: Q rows of P mask logits. Returns the P anomaly scores."""
    nq, k, npix = len(c), len(c[0]) - 1, len(m[0])
    if cfg.class_fn == "softmax":
        pc = [_softmax(row)[:k] for row in c]
    elif cfg.class_fn == "sigmoid":
        pc = [[_sigmoid(x) for x in row[:k]] for row in c]
    else:
        pc = [row[:k] for row in c]
    if cfg.mask_fn == "sigmoid":
        pm = [[_sigmoid(x) for x in row] for row in m]
    elif cfg.mask_fn == "softmax":
        cols = [_softmax([m[q][p] for q in range(nq)]) for p in range(npix)]
        pm = [[cols[p][q] for p in range(npix)] for q in range(nq)]
    else:
        pm = m
    out = []
    for p in range(npix):
        lk = [sum(pc[q][j] * pm[q][p] for q in range(nq)) for j in range(k)]
        if cfg.score == "mask2anomaly":
            out.append(1.0 - max(_softmax(lk) if cfg.post_fn == "softmax" else lk))
        elif cfg.score == "max_softmax":
            out.append(1.0 - max(_softmax(lk)))
        elif cfg.score == "max_logit":
            out.append(-max(lk))
        elif cfg.score == "entropy":
            out.append(-sum(q * math.log(q) for q in _softmax(lk)))
        else:
            mx = max(lk)
            out.append(-(mx + math.log(sum(math.exp(x - mx) for x in lk))))
    return out


C3 = [[2.0, 0.5, -1.0, 0.3], [-0.5, 1.5, 0.2, -1.0], [0.1, -0.3, 2.2, 0.8]]  # Q=3, K=3 (+ no-object)
M3 = [[1.2, -0.7], [-0.4, 2.0], [0.3, 0.9]]  # Q=3 masks over 1x2 pixels


def _tensors(c: list[list[float]], m: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([c], dtype=torch.float64)  # (1, Q, K+1)
    masks = torch.tensor([m], dtype=torch.float64).unsqueeze(2)  # (1, Q, 1, P)
    return logits, masks


def _score(logits: torch.Tensor, masks: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """The tensor-level API composed at mask resolution: (B, h, w)."""
    f = anomaly_from_class_scores(class_scores(logits, masks, cfg), cfg)
    if cfg.refine:
        f = refine_anomaly(f, refinement_response(logits, masks, cfg), refinement_keep(logits, cfg), cfg)
    return f


# ---------------------------------------------------------------------------------------------------------
# Scores: literal numbers, every Table-3 row, every baseline


def test_default_score_matches_numbers_worked_by_hand():
    # q0: softmax(ln2, 0, 0) = (.5, .25 | .25);  q1: softmax(0, ln3, 0) = (.2, .6 | .2)
    # pixel 0: sigmoid(0) = .5 for both -> L = (.35, .425) -> f = .575
    # pixel 1: sigmoid(ln3) = .75 for q0, .5 for q1 -> L = (.475, .4875) -> f = .5125
    logits, masks = _tensors([[math.log(2), 0.0, 0.0], [0.0, math.log(3), 0.0]], [[0.0, math.log(3)], [0.0, 0.0]])
    f = _score(logits, masks, ScoringConfig(refine=False))
    assert f.shape == (1, 1, 2)
    torch.testing.assert_close(f[0, 0], torch.tensor([0.575, 0.5125], dtype=torch.float64))


@pytest.mark.parametrize("row", TABLE3_ROWS, ids=["/".join(r) for r in TABLE3_ROWS])
def test_each_table3_row_matches_hand_computation(row):
    class_fn, mask_fn, post_fn = row
    cfg = ScoringConfig(class_fn=class_fn, mask_fn=mask_fn, post_fn=post_fn, refine=False)
    logits, masks = _tensors(C3, M3)
    got = _score(logits, masks, cfg)[0, 0].tolist()
    assert got == pytest.approx(_reference_scores(C3, M3, cfg), abs=1e-12)


def test_table3_rows_give_different_scores():
    logits, masks = _tensors(C3, M3)
    results = set()
    for class_fn, mask_fn, post_fn in TABLE3_ROWS:
        cfg = ScoringConfig(class_fn=class_fn, mask_fn=mask_fn, post_fn=post_fn, refine=False)
        results.add(tuple(round(v, 9) for v in _score(logits, masks, cfg)[0, 0].tolist()))
    assert len(results) == len(TABLE3_ROWS)


@pytest.mark.parametrize("score", ["max_softmax", "max_logit", "entropy", "energy"])
@pytest.mark.parametrize("fns", [("softmax", "sigmoid"), ("identity", "identity")])
def test_each_baseline_matches_hand_computation(score, fns):
    cfg = ScoringConfig(score=score, class_fn=fns[0], mask_fn=fns[1], refine=False)
    logits, masks = _tensors(C3, M3)
    got = _score(logits, masks, cfg)[0, 0].tolist()
    assert got == pytest.approx(_reference_scores(C3, M3, cfg), abs=1e-12)


def test_score_is_not_clipped_when_class_map_exceeds_one():
    # Three identical confident queries on the same pixel: L(0) ~ 3 -> f ~ -2 (METHOD 5.3: no clipping).
    logits, masks = _tensors([[20.0, 0.0, 0.0]] * 3, [[20.0]] * 3)
    f = _score(logits, masks, ScoringConfig(refine=False))
    assert f.item() == pytest.approx(-2.0, abs=1e-6)


def test_semantic_is_argmax_of_class_map():
    # Pixel 0 covered by the class-1 query, pixel 1 by the class-0 query.
    logits = torch.tensor([[[-5.0, 5.0, -5.0], [5.0, -5.0, -5.0]]])  # (1, 2, K=2 + 1)
    masks = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]]).repeat_interleave(4, 2).repeat_interleave(4, 3)
    # masks (1, 2, 4, 8): left half query 0, right half query 1; canvas 16x32
    anomaly, semantic = segment(logits, masks, (16, 32), (16, 32), ScoringConfig(refine=False))
    assert semantic.dtype == torch.int64 and anomaly.dtype == torch.float32
    assert (semantic[0, :, :8] == 1).all() and (semantic[0, :, -8:] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# Mask refinement (5.4)


def _refine_case(stuff_classes: list[int], thing_class: int = 13, stuff_logit: float = 10.0):
    """K=19. A 'thing' query over both pixels plus one confident query per entry of stuff_classes, whose mask
    covers pixel 0 only. Returns (logits (1, Q, 20), masks (1, Q, 1, 2)) as python-built tensors."""
    c, m = [], []
    row = [-2.0] * (K19 + 1)
    row[thing_class] = 1.0
    c.append(row)
    m.append([0.5, 0.5])
    for cls in stuff_classes:
        row = [-10.0] * (K19 + 1)
        row[cls] = stuff_logit
        c.append(row)
        m.append([8.0, -8.0])
    return c, m


@pytest.mark.parametrize("n_stuff", [0, 1])
def test_refinement_needs_two_kept_queries(n_stuff):
    c, m = _refine_case([8] * n_stuff)
    logits, masks = _tensors(c, m)
    assert refinement_keep(logits, ScoringConfig()).sum().item() == n_stuff
    refined = _score(logits, masks, ScoringConfig())[0, 0].tolist()
    unrefined = _score(logits, masks, ScoringConfig(refine=False))[0, 0].tolist()
    assert refined == unrefined == pytest.approx(_reference_scores(c, m, ScoringConfig()), abs=1e-12)


def test_refinement_with_two_kept_queries_zeroes_inside_stuff_only():
    c, m = _refine_case([2, 10])  # building and sky: the ends of the default class range
    logits, masks = _tensors(c, m)
    assert refinement_keep(logits, ScoringConfig())[0].tolist() == [0.0, 1.0, 1.0]
    expected = _reference_scores(c, m, ScoringConfig())
    refined = _score(logits, masks, ScoringConfig())[0, 0].tolist()
    assert expected[0] != 0.0
    assert refined[0] == 0.0  # R = p * sigmoid(8) > 0.5 inside the stuff masks
    assert refined[1] == pytest.approx(expected[1], abs=1e-12)  # R = p * sigmoid(-8) < 0.5 outside


@pytest.mark.parametrize("cls", [0, 1, 11, 13, 18, K19])  # road, sidewalk, person, car, bicycle, no-object
def test_refinement_ignores_classes_outside_2_to_10(cls):
    c, m = _refine_case([cls, cls, cls])
    logits, masks = _tensors(c, m)
    assert refinement_keep(logits, ScoringConfig()).sum().item() == 0
    assert _score(logits, masks, ScoringConfig())[0, 0].tolist() == pytest.approx(
        _score(logits, masks, ScoringConfig(refine=False))[0, 0].tolist(), abs=0
    )


def test_refinement_score_threshold():
    # softmax probability of the stuff class = e^a / (e^a + 19) with all other logits 0
    def logit_for(p: float) -> float:
        return math.log(p * K19 / (1.0 - p))

    rows = []
    for p in (0.90, 0.949, 0.951, 0.96):
        row = [0.0] * (K19 + 1)
        row[5] = logit_for(p)
        rows.append(row)
    logits = torch.tensor([rows], dtype=torch.float64)
    assert refinement_keep(logits, ScoringConfig())[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    # Two queries at 0.9 do not refine
    c, m = _refine_case([5, 5], stuff_logit=0.0)
    for row in c[1:]:
        row[:] = [0.0] * (K19 + 1)
        row[5] = logit_for(0.9)
    logits, masks = _tensors(c, m)
    assert _score(logits, masks, ScoringConfig())[0, 0, 0].item() != 0.0


def test_refinement_is_decided_per_image():
    c2, m2 = _refine_case([3, 4])  # two kept -> refined
    c1, m1 = _refine_case([3, 0])  # one kept -> not refined
    logits = torch.tensor([c2, c1], dtype=torch.float64)
    masks = torch.tensor([m2, m1], dtype=torch.float64).unsqueeze(2)
    f = _score(logits, masks, ScoringConfig())
    assert f[0, 0, 0].item() == 0.0
    assert f[1, 0, 0].item() == pytest.approx(_reference_scores(c1, m1, ScoringConfig())[0], abs=1e-12)


def test_refinement_options_are_honoured():
    c, m = _refine_case([13])  # one confident car
    logits, masks = _tensors(c, m)
    cfg = ScoringConfig(refine_classes=(13,), refine_min_queries=1)
    assert _score(logits, masks, cfg)[0, 0, 0].item() == 0.0
    assert _score(logits, masks, cfg.replace(refine_mask_threshold=1.0))[0, 0, 0].item() != 0.0


@pytest.mark.parametrize("resolution", ["full", "quarter"])
def test_refinement_end_to_end_zeroes_the_stuff_region(resolution):
    # Canvas 32x64: the stuff queries cover the left half; a thing query covers everything weakly.
    c, m = _refine_case([8, 10])
    logits = torch.tensor([c])
    masks = torch.tensor([m]).repeat_interleave(8, dim=2)[:, :, None, :].expand(1, 3, 8, 16)
    cfg = ScoringConfig(resolution=resolution)
    refined, _ = postprocess(logits, masks, (30, 60), (45, 90), cfg)
    plain, _ = postprocess(logits, masks, (30, 60), (45, 90), cfg.replace(refine=False))
    changed = refined != plain
    assert changed[..., :20].all() and not changed[..., -20:].any()
    assert (refined[changed] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# Resolution handling: crop, resize, chunking, quarter


def _random_outputs(seed: int, batch: int = 1, queries: int = 10, h: int = 6, w: int = 8, stuff: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, queries, K19 + 1, generator=g) * 2
    for q in range(stuff):  # a few confident stuff queries (classes 2, 3, ...) so that refinement acts
        logits[:, q, 2 + q] = 12.0
    masks = torch.randn(batch, queries, h, w, generator=g) * 3
    return logits, masks


@pytest.mark.parametrize("resolution", ["full", "quarter"])
@pytest.mark.parametrize("output_size", [(3, 3), (6, 6), (12, 12)])
def test_padding_is_cropped_before_resizing(resolution, output_size):
    # Mask logits 4x4 -> canvas 16x16; the image is the top-left 6x6, whose bilinear upsampling only reads
    # source rows/cols 0-1. Those are constant; the padding (rows/cols 2-3) holds extreme values.
    logits = torch.tensor([[[3.0, -1.0, 0.0, -2.0], [-1.0, 2.0, 0.0, -2.0]]])  # K=3
    masks = torch.empty(1, 2, 4, 4)
    masks[:, 0], masks[:, 1] = -50.0, 50.0
    masks[:, 0, :2, :2], masks[:, 1, :2, :2] = 1.0, -0.5
    cfg = ScoringConfig(resolution=resolution, refine=False)
    anomaly, semantic = segment(logits, masks, (6, 6), output_size, cfg)
    expected = _reference_scores([[3.0, -1.0, 0.0, -2.0], [-1.0, 2.0, 0.0, -2.0]], [[1.0], [-0.5]], cfg)[0]
    assert anomaly.shape == (1, *output_size)
    torch.testing.assert_close(anomaly, torch.full_like(anomaly, expected), atol=1e-5, rtol=0)
    assert (semantic == 0).all()


@pytest.mark.parametrize("resolution", ["full", "quarter"])
def test_crop_keeps_the_top_left_of_the_canvas(resolution):
    logits, masks = _random_outputs(0)  # canvas 24x32
    cfg = ScoringConfig(resolution=resolution)
    whole_a, whole_l = postprocess(logits, masks, (24, 32), (24, 32), cfg)
    crop_a, crop_l = postprocess(logits, masks, (19, 27), (19, 27), cfg)
    torch.testing.assert_close(crop_a, whole_a[:, :19, :27])
    torch.testing.assert_close(crop_l, whole_l[:, :, :19, :27])


@pytest.mark.parametrize("resolution", ["full", "quarter"])
def test_scores_come_from_the_resized_class_map(resolution):
    logits, masks = _random_outputs(1)
    cfg = ScoringConfig(resolution=resolution, refine=False)
    _, at_input = postprocess(logits, masks, (19, 27), (19, 27), cfg)
    anomaly, at_output = postprocess(logits, masks, (19, 27), (40, 13), cfg)
    resized = F.interpolate(at_input, size=(40, 13), mode="bilinear", align_corners=False)
    torch.testing.assert_close(at_output, resized, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(anomaly, 1.0 - resized.amax(dim=1), atol=1e-5, rtol=1e-5)


def test_full_resolution_upsamples_logits_before_the_sigmoid():
    # A mask logit step from -10 to +10: sigmoid-after-upsampling keeps a sharp edge (0.5 crossing in the
    # middle), while combining at 1/4 and then upsampling spreads it. Guards the official order.
    logits = torch.tensor([[[10.0, -10.0, -10.0]]])  # one query, class 0, K=2
    masks = torch.tensor([[[[-10.0, 10.0]]]])  # (1, 1, 1, 2) -> canvas 4x8
    full, _ = postprocess(logits, masks, (4, 8), (4, 8), ScoringConfig(refine=False))
    manual = torch.sigmoid(F.interpolate(masks, size=(4, 8), mode="bilinear", align_corners=False))[0, 0]
    torch.testing.assert_close(full[0], 1.0 - manual, atol=1e-5, rtol=0)
    quarter, _ = postprocess(logits, masks, (4, 8), (4, 8), ScoringConfig(refine=False, resolution="quarter"))
    assert (quarter - full).abs().max() > 0.1


def _official_order(logits, masks, input_size, output_size):
    """The authors' evaluator written out unchunked (5.2-5.4): upsample, sigmoid, combine, per-query refinement
    channels, crop, resize every channel, then 1 - max and the stuff mask. Returns (anomaly, semantic, R)."""
    h, w = input_size
    sig = torch.sigmoid(F.interpolate(masks, size=(masks.shape[2] * 4, masks.shape[3] * 4), mode="bilinear"))
    probs = logits.softmax(-1)
    sem = torch.einsum("bqk,bqhw->bkhw", probs[..., :-1], sig)
    score, label = probs.max(-1)
    keep = (label >= 2) & (label <= 10) & (score > 0.95)
    extra = (score * keep)[:, :, None, None] * sig  # one refinement channel per query (0 when not kept)
    sem, extra = (F.interpolate(x[..., :h, :w], size=output_size, mode="bilinear") for x in (sem, extra))
    response = extra.amax(1)
    stuff = (response >= 0.5) & (keep.sum(1) > 1)[:, None, None]
    return torch.where(stuff, 0.0, 1.0 - sem.amax(1)), sem.argmax(1), extra


@pytest.mark.parametrize("chunk", [None, 4])
def test_full_resolution_matches_the_official_order(chunk):
    logits, masks = _random_outputs(0, batch=2)
    ref_a, ref_s, extra = _official_order(logits, masks, (21, 30), (9, 13))
    anomaly, semantic = segment(logits, masks, (21, 30), (9, 13), ScoringConfig(chunk_queries=chunk))
    torch.testing.assert_close(anomaly, ref_a, atol=1e-5, rtol=1e-5)
    assert torch.equal(semantic, ref_s)
    # Resizing R after the max over queries would give another stuff mask here: the order is being checked.
    _, _, extra_at_input = _official_order(logits, masks, (21, 30), (21, 30))
    max_then_resize = F.interpolate(extra_at_input.amax(1, keepdim=True), size=(9, 13), mode="bilinear")[:, 0]
    assert ((max_then_resize >= 0.5) != (extra.amax(1) >= 0.5)).any()


@pytest.mark.parametrize("mask_fn", ["sigmoid", "softmax", "identity"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_equals_unchunked(mask_fn, chunk):
    logits, masks = _random_outputs(2, batch=2)
    cfg = ScoringConfig(mask_fn=mask_fn, chunk_queries=None)
    ref_a, ref_l = postprocess(logits, masks, (21, 30), (17, 41), cfg)
    got_a, got_l = postprocess(logits, masks, (21, 30), (17, 41), cfg.replace(chunk_queries=chunk))
    torch.testing.assert_close(got_a, ref_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_l, ref_l, atol=1e-5, rtol=1e-5)
    plain_a, _ = postprocess(logits, masks, (21, 30), (17, 41), cfg.replace(refine=False, chunk_queries=chunk))
    assert ((got_a == 0) & (plain_a != 0)).any()  # refinement took part in the comparison


def test_quarter_is_close_to_full_on_smooth_masks():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 6, K19 + 1, generator=g) * 2
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 24), indexing="ij")
    phases = torch.rand(6, 2, generator=g) * 6
    masks = torch.stack([0.5 * torch.sin(2 * xx + a) + 0.5 * torch.cos(2 * yy + b) for a, b in phases])[None]
    full_a, full_l = postprocess(logits, masks, (61, 90), (61, 90), ScoringConfig())
    quarter_a, quarter_l = postprocess(logits, masks, (61, 90), (61, 90), ScoringConfig(resolution="quarter"))
    assert (quarter_a - full_a).abs().max() < 2e-3
    assert (quarter_l - full_l).abs().max() < 2e-3


# ---------------------------------------------------------------------------------------------------------
# Flip TTA (5.5)


@pytest.mark.parametrize("resolution", ["full", "quarter"])
def test_flip_tta_is_the_mean_of_the_two_refined_maps(resolution):
    logits, masks = _random_outputs(4, batch=2)  # [original outputs, outputs of the flipped image]
    cfg = ScoringConfig(resolution=resolution)
    a0, l0 = postprocess(logits[:1], masks[:1], (22, 29), (30, 40), cfg)
    a1, l1 = postprocess(logits[1:], masks[1:], (22, 29), (30, 40), cfg)
    anomaly, semantic = segment(logits, masks, (22, 29), (30, 40), cfg.replace(flip_tta=True))
    assert anomaly.shape == semantic.shape == (1, 30, 40)
    torch.testing.assert_close(anomaly, 0.5 * (a0 + a1.flip(-1)))
    assert torch.equal(semantic, (0.5 * (l0 + l1.flip(-1))).argmax(1))
    assert not torch.allclose(anomaly, a0)


def test_flip_tta_needs_pairs():
    logits, masks = _random_outputs(5, batch=3)
    with pytest.raises(ValueError, match="even"):
        postprocess(logits, masks, (24, 32), (24, 32), ScoringConfig(flip_tta=True))


def test_tta_batch_appends_flipped_copies():
    images = torch.arange(24.0).view(1, 3, 2, 4)
    assert torch.equal(tta_batch(images, ScoringConfig()), images)
    batch = tta_batch(images, ScoringConfig(flip_tta=True))
    assert batch.shape == (2, 3, 2, 4) and torch.equal(batch[1, :, :, 0], images[0, :, :, 3])


# ---------------------------------------------------------------------------------------------------------
# Export safety


@pytest.mark.parametrize(
    "cfg",
    [ScoringConfig(), ScoringConfig(resolution="quarter", flip_tta=True), ScoringConfig(mask_fn="softmax")],
    ids=["default", "quarter-flip", "mask-softmax-chunked"],
)
def test_segment_exports_with_fixed_shapes(cfg):
    class Wrapper(nn.Module):
        def forward(self, logits, masks):
            return segment(logits, masks, (19, 27), (30, 40), cfg)

    logits, masks = _random_outputs(6, batch=2, queries=20)
    program = torch.export.export(Wrapper(), (logits, masks), strict=False)
    other_logits, other_masks = _random_outputs(7, batch=2, queries=20)
    got = program.module()(other_logits, other_masks)
    ref = Wrapper()(other_logits, other_masks)
    torch.testing.assert_close(got[0], ref[0])
    assert torch.equal(got[1], ref[1])


# ---------------------------------------------------------------------------------------------------------
# Config and argument validation


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"score": "msp"}, "'msp'"),
        ({"class_fn": "relu"}, "'relu'"),
        ({"mask_fn": "tanh"}, "'tanh'"),
        ({"post_fn": "sigmoid"}, "'sigmoid'"),
        ({"score": "energy", "post_fn": "softmax"}, "'energy'"),
        ({"resolution": "half"}, "'half'"),
        ({"refine_classes": ()}, r"\(\)"),
        ({"refine_classes": (2, 2)}, r"\(2, 2\)"),
        ({"refine_score_threshold": 1.5}, "1.5"),
        ({"refine_mask_threshold": 0.0}, "0.0"),
        ({"refine_min_queries": 0}, "got 0"),
        ({"chunk_queries": 0}, "got 0"),
        ({"refine": 1}, "got 1"),
    ],
)
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ScoringConfig(**kwargs)


def test_postprocess_rejects_bad_arguments():
    logits, masks = _random_outputs(8)  # canvas 24x32
    with pytest.raises(ValueError, match="exceeds the padded canvas"):
        postprocess(logits, masks, (25, 32), (25, 32))
    with pytest.raises(ValueError, match="pred_masks"):
        postprocess(logits, masks[:, :5], (24, 32), (24, 32))
    with pytest.raises(ValueError, match="output_size"):
        postprocess(logits, masks, (24, 32), (0, 32))
    with pytest.raises(ValueError, match="refine_classes"):
        postprocess(logits[..., :5], masks, (24, 32), (24, 32))  # K=4 < class 10


# ---------------------------------------------------------------------------------------------------------
# Image-level call


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((1024, 2048), (1024, 2048)),  # Cityscapes stays
        ((720, 1280), (1024, 1820)),  # 1280 * 1024 / 720 = 1820.4
        ((1280, 720), (1820, 1024)),
        ((500, 2000), (512, 2048)),  # long side 4096 capped to 2048
        ((97, 203), (979, 2048)),  # 2143.0 capped: 1024 * 2048 / 2143.0 = 978.6
        ((1000, 1000), (1024, 1024)),
    ],
)
def test_resize_shortest_edge_matches_detectron2(hw, expected):
    assert resize_shortest_edge(*hw) == expected


class _FakeModel(nn.Module):
    """Follows Mask2Anomaly's contract (pads to 32, masks at 1/4 of the padded canvas); records input shapes."""

    def __init__(self, num_queries: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.num_queries = num_queries
        self.mask_proj = nn.Parameter(torch.randn(num_queries, 3, generator=g) * 4)
        self.cls_proj = nn.Parameter(torch.randn(num_queries * (K19 + 1), 3, generator=g) * 4)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images):
        self.seen.append(tuple(images.shape))
        b, _, h, w = images.shape
        x = F.pad(images / 255.0 - 0.5, (0, -w % 32, 0, -h % 32))
        feats = F.avg_pool2d(x, 4)
        masks = torch.einsum("qc,bchw->bqhw", self.mask_proj, feats)
        logits = (images.mean((2, 3)) / 255.0 - 0.5) @ self.cls_proj.T
        return {"pred_logits": logits.view(b, self.num_queries, K19 + 1), "pred_masks": masks, "aux_outputs": []}


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("input_size", [None, (64, 128)])
def test_anomaly_segmentation_returns_maps_at_image_size(input_size):
    model = _FakeModel()
    anomaly, semantic = anomaly_segmentation(model, _image(97, 203), input_size=input_size)
    assert anomaly.shape == semantic.shape == (97, 203)
    assert anomaly.dtype == np.float32 and semantic.dtype == np.uint8
    assert semantic.max() < K19 and np.isfinite(anomaly).all()
    assert model.seen == [(1, 3, *(input_size or (97, 203)))]


def test_anomaly_segmentation_matches_segment_on_the_model_outputs():
    model = _FakeModel()
    image = _image(45, 70, seed=1)
    anomaly, semantic = anomaly_segmentation(model, image)
    out = model(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    ref_a, ref_s = segment(out["pred_logits"], out["pred_masks"], (45, 70), (45, 70), ScoringConfig())
    np.testing.assert_allclose(anomaly, ref_a[0].detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(semantic, ref_s[0].numpy())


def test_anomaly_segmentation_flip_tta_equals_manual_average():
    model = _FakeModel()
    image = _image(45, 70, seed=2)
    a, _ = anomaly_segmentation(model, image)
    a_flip, _ = anomaly_segmentation(model, np.ascontiguousarray(image[:, ::-1]))
    model.seen.clear()
    tta, _ = anomaly_segmentation(model, image, ScoringConfig(flip_tta=True))
    assert model.seen == [(2, 3, 45, 70)]
    np.testing.assert_allclose(tta, 0.5 * (a + a_flip[:, ::-1]), atol=1e-6)


def test_anomaly_segmentation_uses_the_model_dtype():
    model = _FakeModel().double()
    anomaly, semantic = anomaly_segmentation(model, _image(33, 40))
    assert anomaly.dtype == np.float32 and semantic.shape == (33, 40)


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros((20, 30), np.uint8), r"\(20, 30\)"),
        (np.zeros((20, 30, 4), np.uint8), r"\(20, 30, 4\)"),
        (np.zeros((20, 30, 3), np.float32), "float32"),
        (np.zeros((0, 30, 3), np.uint8), "non-empty"),
        ([[0, 0, 0]], "list"),
    ],
)
def test_anomaly_segmentation_rejects_bad_images(image, fragment):
    with pytest.raises(ValueError, match=fragment):
        anomaly_segmentation(_FakeModel(), image)


@pytest.mark.skipif(not HAS_MODEL, reason="m2a_perception/model/mask2anomaly.py not written yet")
def test_real_small_model_at_odd_size_with_flip_tta():
    from m2a_perception.model import M2AConfig, Mask2Anomaly

    torch.manual_seed(0)
    model = Mask2Anomaly(M2AConfig.preset("small")).eval()
    image = _image(97, 203, seed=3)
    a, s = anomaly_segmentation(model, image)
    assert a.shape == s.shape == (97, 203) and a.dtype == np.float32 and s.dtype == np.uint8
    assert s.max() < model.config.num_classes and np.isfinite(a).all()
    a_flip, _ = anomaly_segmentation(model, np.ascontiguousarray(image[:, ::-1]))
    tta, s_tta = anomaly_segmentation(model, image, ScoringConfig(flip_tta=True), input_size=(97, 203))
    np.testing.assert_allclose(tta, 0.5 * (a + a_flip[:, ::-1]), atol=1e-4)
    resized, _ = anomaly_segmentation(model, image, input_size=resize_shortest_edge(97, 203, short=64, max_long=160))
    assert resized.shape == (97, 203)
