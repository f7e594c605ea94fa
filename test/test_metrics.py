"""Anomaly metrics (shared/design/METRICS.md): the edge cases it lists, agreement with scikit-learn in exact mode,
a hand-computed binned example in smiyc mode, components, mIoU and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from m2a_training import metrics
from m2a_training.metrics import (
    TAUS,
    TRACKS,
    ComponentAccumulator,
    ConfusionAccumulator,
    PixelAccumulator,
    float_keys,
    key_values,
    pixel_metrics,
    smiyc_bins,
)

NONE = TRACKS["none"]


# ----------------------------------------------------------------------------------------------------------
# Pixel level, hand-computed


def _flat(scores: list[float], labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([scores], np.float32), np.asarray([labels], np.uint8)


def test_auprc_is_the_right_step_sum_not_the_trapezoid():
    # points (recall, precision): (0.5, 1), (0.5, 0.5), (1, 2/3) -> 0.5 * 1 + 0 + 0.5 * 2/3
    m = pixel_metrics(*map(lambda a: [a], _flat([0.9, 0.8, 0.7], [1, 0, 1])))
    assert m.auprc == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)
    assert m.auroc == pytest.approx(0.5)  # the positive at 0.7 is below the negative
    assert m.best_f1 == pytest.approx(0.8) and m.best_f1_threshold == pytest.approx(0.7)
    # the curve starts at (recall 0, precision 1: nothing predicted) and ends at (1, P / (P + N))
    assert (m.curve_recall[0], m.curve_precision[0], m.curve_recall[-1]) == (0.0, 1.0, 1.0)
    assert m.curve_precision[-1] == pytest.approx(2 / 3) and (m.curve_fpr[-1], m.curve_tpr[-1]) == (1.0, 1.0)


def test_fpr95_first_point_versus_interpolated():
    # 10 positives, 10 negatives; the 10th positive ties with 2 negatives: (FPR 0.2, TPR 0.9) -> (0.4, 1.0)
    scores = [1.0 - i / 100 for i in range(9)] + [0.8, 0.8, 0.8] + [0.85, 0.84] + [0.1] * 6
    labels = [1] * 9 + [1, 0, 0] + [0, 0] + [0] * 6
    m = pixel_metrics(*map(lambda a: [a], _flat(scores, labels)))
    assert m.fpr95 == pytest.approx(0.4)  # first point with TPR >= 0.95, no interpolation
    assert m.fpr95_interpolated == pytest.approx(0.3)  # halfway along the tie's diagonal
    assert m.auroc == pytest.approx(1 - (9 * 0 + 1 * (2 + 0.5 * 2)) / 100)


def test_no_anomaly_pixel_gives_nan_auprc_with_a_warning_and_fpr95_zero():
    acc = PixelAccumulator()
    acc.update(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), np.uint8))
    with pytest.warns(RuntimeWarning, match="no anomaly pixel"):
        m = acc.compute()
    assert math.isnan(m.auprc) and math.isnan(m.auroc) and m.fpr95 == 0.0 and m.fpr95_interpolated == 0.0


def test_no_normal_pixel_gives_nan_fpr():
    acc = PixelAccumulator()
    acc.update(np.ones((4, 4), np.float32), np.ones((4, 4), np.uint8))
    with pytest.warns(RuntimeWarning, match="no normal pixel"):
        m = acc.compute()
    assert m.auprc == 1.0 and math.isnan(m.fpr95) and math.isnan(m.auroc)


def test_void_pixels_never_count_even_with_nan_scores():
    rng = np.random.default_rng(1)
    score = rng.random((16, 16)).astype(np.float32)
    label = (rng.random((16, 16)) < 0.3).astype(np.uint8)
    label[:4] = 255
    base = pixel_metrics([score], [label])
    other = score.copy()
    other[:4] = np.nan
    changed = pixel_metrics([other], [label])
    assert (changed.auprc, changed.fpr95, changed.auroc) == (base.auprc, base.fpr95, base.auroc)
    assert base.positives + base.negatives == 12 * 16


def test_skipping_images_without_anomaly_is_an_option_default_keep():
    rng = np.random.default_rng(2)
    with_anomaly = (rng.random((8, 8)), (rng.random((8, 8)) < 0.5).astype(np.uint8))
    without = (rng.random((8, 8)) + 0.5, np.zeros((8, 8), np.uint8))
    keep = PixelAccumulator()
    skip = PixelAccumulator(skip_images_without_anomaly=True)
    for acc in (keep, skip):
        acc.update(*with_anomaly)
        acc.update(*without)
    k, s = keep.compute(), skip.compute()
    assert (k.images, k.skipped_images, s.images, s.skipped_images) == (2, 0, 1, 1)
    assert s.negatives == k.negatives - 64 and s.auprc > k.auprc


def test_negative_zero_and_positive_zero_are_one_threshold():
    keys = float_keys(np.array([-0.0, 0.0, -1.5, 2.0, -np.float32(1e-30)], np.float32))
    assert keys[0] == keys[1] and keys[2] < keys[4] < keys[0] < keys[3]
    assert key_values(keys).tolist() == [0.0, 0.0, -1.5, 2.0, float(np.float32(-1e-30))]
    m = pixel_metrics(*map(lambda a: [a], _flat([-0.0, 0.0], [1, 0])))
    assert m.auroc == 0.5  # a tie, not an ordering


@pytest.mark.parametrize(
    ("labels", "match"),
    [(np.full((4, 4), 2, np.uint8), "0, 1 or 255"), (np.full((4, 4), -1, np.int16), "0, 1 or 255")],
)
def test_label_values_outside_0_1_255_are_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        PixelAccumulator().update(np.zeros((4, 4), np.float32), labels, "frame_7")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_on_non_void_pixels_are_errors(bad):
    score = np.zeros((4, 4), np.float32)
    score[1, 1] = bad
    with pytest.raises(ValueError, match="frame_3: 1 non-void pixels have non-finite scores"):
        PixelAccumulator().update(score, np.zeros((4, 4), np.uint8), "frame_3")


def test_mismatched_shapes_and_bad_dtypes_are_errors():
    with pytest.raises(ValueError, match=r"score map shape \(4, 5\) does not match the label map shape \(4, 4\)"):
        PixelAccumulator().update(np.zeros((4, 5), np.float32), np.zeros((4, 4), np.uint8), "x")
    with pytest.raises(ValueError, match="dtype bool"):
        PixelAccumulator().update(np.zeros((4, 4), bool), np.zeros((4, 4), np.uint8), "x")
    with pytest.raises(ValueError, match="mode must be one of"):
        PixelAccumulator("binned")


# ----------------------------------------------------------------------------------------------------------
# Exact mode against scikit-learn


def _sklearn(scores: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    s = np.concatenate([x[y != 255].astype(np.float64) for x, y in zip(scores, labels)])
    y = np.concatenate([y[y != 255] for y in labels]) == 1
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    fpr_d, tpr_d, _ = roc_curve(y, s)  # the authors' ood_metrics call (drop_intermediate=True)
    precision, recall, thresholds = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    best = int(np.nanargmax(f1[:-1]))
    return {
        "auprc": average_precision_score(y, s),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        "fpr95_interpolated": float(np.interp(0.95, tpr_d, fpr_d)),
        "auroc": roc_auc_score(y, s),
        "best_f1": float(f1[best]),
        "best_f1_threshold": float(thresholds[best]),
    }


def _random_images(seed: int, dtype: type, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for _ in range(count):
        h, w = rng.integers(6, 40, 2)
        label = (rng.random((h, w)) < rng.uniform(0.05, 0.5)).astype(np.uint8)
        score = rng.normal(size=(h, w)) + label * rng.uniform(0.0, 1.5)
        quantum = rng.choice([0, 4, 50])  # ties within and across images
        if quantum:
            score = np.round(score * quantum) / quantum
        label[rng.random((h, w)) < 0.1] = 255
        scores.append(score.astype(dtype))
        labels.append(label)
    return scores, labels


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("seed", range(4))
def test_exact_mode_agrees_with_sklearn(monkeypatch, seed, dtype, dense):
    if dense:  # every segment turns dense, merges happen at every image
        monkeypatch.setattr(metrics._KeyCounts, "DENSE_AT", 2)
        monkeypatch.setattr(metrics._KeyCounts, "MIN_MERGE", 1)
    scores, labels = _random_images(seed, dtype, count=1 + seed)
    if sum(int((y == 1).sum()) for y in labels) == 0:
        pytest.skip("no positive drawn")
    got = pixel_metrics(scores, labels)
    want = _sklearn(scores, labels)
    for key, value in want.items():
        assert getattr(got, key) == pytest.approx(value, abs=1e-12), key


def test_exact_mode_float64_beyond_float32_and_mixed_images():
    rng = np.random.default_rng(5)
    labels = [(rng.random((20, 20)) < 0.3).astype(np.uint8) for _ in range(3)]
    # float32 first, then float64 maps whose values float32 cannot hold (the store widens to 64-bit keys)
    scores = [
        rng.random((20, 20)).astype(np.float32),
        (0.5 + rng.integers(0, 3, (20, 20)) * 1e-12).astype(np.float64),
        rng.random((20, 20)) + labels[2],
    ]
    got = pixel_metrics(scores, labels)
    want = _sklearn(scores, labels)
    assert got.auprc == pytest.approx(want["auprc"], abs=1e-12)
    assert got.fpr95 == pytest.approx(want["fpr95"], abs=1e-12)
    assert got.auroc == pytest.approx(want["auroc"], abs=1e-12)


def test_exact_store_memory_does_not_grow_with_repeated_scores():
    rng = np.random.default_rng(6)
    score = rng.random((64, 64)).astype(np.float32)
    label = (rng.random((64, 64)) < 0.2).astype(np.uint8)
    acc = PixelAccumulator()
    acc.update(score, label)
    acc.compute()  # merges the pending batches
    one = acc.nbytes()
    for _ in range(20):
        acc.update(score, label)
    acc.compute()
    assert acc.nbytes() == one  # the same distinct scores: only counts change
    assert acc.positives == 21 * int((label == 1).sum())


def test_dense_counters_widen_before_they_overflow(monkeypatch):
    monkeypatch.setattr(metrics._KeyCounts, "DENSE_AT", 2)
    monkeypatch.setattr(metrics._KeyCounts, "MIN_MERGE", 1)
    store = metrics._KeyCounts(np.int32)
    keys = float_keys(np.array([0.5, 0.50001, 0.50002, 0.50003], np.float32))
    counts = np.array([1, 2, 3, 3_000_000_000])
    store.add_counted(keys, counts)
    (sid,) = store.segments
    assert store.is_dense(sid) and store.segments[sid].dense.dtype == np.uint32
    store.add_counted(keys, counts)  # 6e9 > 2^32 - 1
    store.add_keys(keys[:1])
    got_keys, got_counts = store.segment_items(sid)
    assert got_keys.tolist() == keys.tolist() and got_counts.tolist() == [3, 4, 6, 6_000_000_000]


# ----------------------------------------------------------------------------------------------------------
# smiyc mode


def test_smiyc_bins_hand_computed():
    # 400 negatives at 0, 1, ..., 399 and one positive at 200.5. Negative edges: quantiles at 384 levels,
    # k * 399 / 383; the positive's single level is 200.5 itself. The bin [200.5, 193 * 399 / 383 = 201.057)
    # holds the positive and the negative 201, both credited at 200.5.
    neg = np.arange(400, dtype=np.float32)
    pos = np.array([200.5], np.float32)
    edges, p, n = smiyc_bins(pos, neg)
    assert edges[0] == pytest.approx(-3.99, abs=1e-5)  # vmin - 0.01 * (vmax - vmin)
    assert edges.size == 2 + 384 + 1 - 1  # outer edges + 384 negative quantiles + 200.5, less the top edge
    at = int(np.flatnonzero(edges == 200.5)[0])
    assert (p[at], n[at]) == (1, 1) and p.sum() == 1 and n.sum() == 400
    assert edges[at - 1] == pytest.approx(192 * 399 / 383) and n[at - 1] == 0  # [200.016, 200.5) is empty
    acc = PixelAccumulator("smiyc")
    acc.update(np.concatenate([neg, pos])[None], np.concatenate([np.zeros(400), [1]]).astype(np.uint8)[None])
    m = acc.compute()
    # 201 negatives below the positive's threshold, one tied with it, 198 above it (+ the tied one counted)
    assert m.auroc == pytest.approx((201 + 0.5) / 400)
    assert m.auprc == pytest.approx(1 / 200) and m.fpr95 == pytest.approx(199 / 400)
    exact = pixel_metrics(
        [np.concatenate([neg, pos])[None]], [np.concatenate([np.zeros(400), [1]]).astype(np.uint8)[None]]
    )
    assert exact.auroc == pytest.approx(201 / 400)  # exact mode: the negative 201 is above the positive


def test_smiyc_bins_equal_the_benchmarks_histogram_computation():
    rng = np.random.default_rng(3)
    for _ in range(3):
        score = (rng.random(20000) ** rng.uniform(0.3, 3)).astype(np.float32)
        truth = rng.random(20000) < 0.1
        score[truth] += np.float32(0.1)
        # the benchmark's own steps: quantile edges, np.histogram per class, lower edges as thresholds
        vmin, vmax = np.min(score), np.max(score)
        eps = np.maximum((vmax - vmin) * 1e-2, 1e-2)
        parts = [[vmin - eps, vmax + eps]] + [
            np.quantile(v, np.linspace(0, 1, min(384, v.size))) for v in (score[truth], score[~truth])
        ]
        bins = np.unique(np.concatenate(parts))
        edges, pos, neg = smiyc_bins(score[truth], score[~truth])
        np.testing.assert_array_equal(edges, bins[:-1])
        np.testing.assert_array_equal(pos, np.histogram(score[truth], bins=bins)[0])
        np.testing.assert_array_equal(neg, np.histogram(score[~truth], bins=bins)[0])


def test_smiyc_pools_the_triples_of_all_images():
    img = [(np.array([[0.9, 0.1, 0.5]], np.float32), np.array([[1, 0, 0]], np.uint8))] * 2
    m = pixel_metrics([s for s, _ in img], [y for _, y in img], mode="smiyc")
    assert (m.auprc, m.fpr95, m.auroc) == (1.0, 0.0, 1.0)  # per-image edges coincide and are collapsed
    assert m.positives == 2 and m.negatives == 4


# ----------------------------------------------------------------------------------------------------------
# Component level (192x192 images, threshold 0.5, no size filter unless said)


def _image() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((192, 192), np.float32), np.zeros((192, 192), np.uint8)


def _components(score, label, track=NONE, threshold=0.5):
    acc = ComponentAccumulator(threshold, track)
    acc.update(score, label)
    return acc.compute()


def test_perfect_prediction():
    score, label = _image()
    label[50:80, 50:80] = 1
    score[50:80, 50:80] = 1
    c = _components(score, label)
    assert (c.siou, c.ppv, c.mean_f1) == (1.0, 1.0, 1.0)


def test_empty_prediction():
    score, label = _image()
    label[50:80, 50:80] = 1
    c = _components(score, label)
    assert c.siou == 0.0 and math.isnan(c.ppv) and c.mean_f1 == 0.0


def test_no_ground_truth_one_predicted_blob():
    score, label = _image()
    score[10:40, 10:40] = 1
    c = _components(score, label)
    assert c.ppv == 0.0 and c.mean_f1 == 0.0 and math.isnan(c.siou) and c.fp == (1,) * 11


def test_squares_touching_at_a_corner_are_one_component():
    score, label = _image()
    label[10:20, 10:20] = 1
    label[20:30, 20:30] = 1
    score[label == 1] = 1
    c = _components(score, label)
    assert (c.gt_components, c.pred_components, c.siou) == (1, 1, 1.0)


def test_one_box_over_two_ground_truth_squares_uses_the_adjustment_term():
    score, label = _image()
    score[50:92, 50:152] = 1  # 42 x 102 = 4284 pixels
    label[56:86, 56:86] = 1
    label[56:86, 116:146] = 1
    c = _components(score, label)
    assert c.gt_components == 2 and c.siou == pytest.approx(900 / 3384, abs=1e-15)
    assert c.ppv == pytest.approx(1800 / 4284, abs=1e-15)


def test_left_half_of_a_box_is_a_hit_at_tau_0_5():
    score, label = _image()
    label[50:80, 50:80] = 1
    score[50:80, 50:65] = 1
    c = _components(score, label)
    assert c.siou == 0.5 and c.tp == (1,) * 6 + (0,) * 5 and c.mean_f1 == pytest.approx(6 / 11)


def test_siou_exactly_0_6_misses_the_eighth_tau():
    assert TAUS[7] == 0.6000000000000001
    score, label = _image()
    label[50:80, 50:80] = 1
    score[50:80, 50:68] = 1  # 540 of 900
    c = _components(score, label)
    assert c.siou == 0.6 and c.tp[6:8] == (1, 0) and c.mean_f1 == pytest.approx(7 / 11)


def test_score_equal_to_the_threshold_is_not_predicted():
    score, label = _image()
    label[50:80, 50:80] = 1
    score[50:80, 50:80] = 0.5
    assert _components(score, label).pred_components == 0
    assert _components(score, label, threshold=np.nextafter(0.5, 0)).pred_components == 1


def test_a_void_strip_splits_a_predicted_blob():
    score, label = _image()
    score[50:80, 50:110] = 1
    label[:, 79:81] = 255
    assert _components(score, label).pred_components == 2


def test_anomaly_track_size_filters():
    score, label = _image()
    label[10:19, 10:19] = 1  # 81 px < 100: becomes void
    score[10:19, 10:19] = 1  # 81 px < 500: deleted
    c = _components(score, label, "anomaly")
    assert (c.gt_components, c.pred_components) == (0, 0) and math.isnan(c.mean_f1)
    # a 30 x 30 prediction (900 px) half on a small (void) ground truth: PPV counts only its non-void pixels
    score, label = _image()
    label[100:109, 100:109] = 1
    score[100:130, 100:130] = 1
    c = _components(score, label, "anomaly")
    assert (c.gt_components, c.pred_components, c.ppv) == (0, 1, 0.0)
    # the obstacle track keeps both (GT >= 10 px, prediction >= 50 px)
    c = _components(score, label, "obstacle")
    assert (c.gt_components, c.pred_components) == (1, 1) and c.ppv == pytest.approx(81 / 900)


def test_siou_and_ppv_are_pooled_over_components_not_images():
    acc = ComponentAccumulator(0.5, NONE)
    score, label = _image()
    label[10:40, 10:40] = 1
    label[100:130, 100:130] = 1
    score[10:40, 10:40] = 1  # one hit (1.0), one miss (0.0)
    acc.update(score, label)
    score, label = _image()
    label[10:40, 10:40] = 1
    score[10:40, 10:40] = 1  # another hit
    acc.update(score, label)
    c = acc.compute()
    assert c.siou == pytest.approx(2 / 3) and c.gt_components == 3  # the mean of per-image means would be 0.75


def test_component_inputs_are_checked():
    with pytest.raises(ValueError, match="finite"):
        ComponentAccumulator(math.nan)
    with pytest.raises(ValueError, match="track must be one of"):
        ComponentAccumulator(0.5, "small")
    score, label = _image()
    label[0, 0] = 3
    with pytest.raises(ValueError, match="frame_9: anomaly labels must be 0, 1 or 255"):
        ComponentAccumulator(0.5).update(score, label, "frame_9")


# ----------------------------------------------------------------------------------------------------------
# Semantic level


def test_miou_from_the_confusion_matrix():
    acc = ConfusionAccumulator()
    acc.update(np.array([[0, 1], [0, 5]]), np.array([[0, 1], [1, 255]]))
    acc.update(np.array([[2]]), np.array([[2]]))
    s = acc.compute()
    assert s.iou[0] == 0.5 and s.iou[1] == 0.5 and s.iou[2] == 1.0 and math.isnan(s.iou[3])
    assert s.miou == pytest.approx(2 / 3) and s.pixel_accuracy == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"class ids \[19\] outside 0..18"):
        acc.update(np.array([[19]]), np.array([[0]]), "frame_1")
    with pytest.raises(ValueError, match="does not match"):
        acc.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
