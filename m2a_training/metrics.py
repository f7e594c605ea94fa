"""Anomaly-segmentation metrics (shared/design/METRICS.md) as streaming accumulators: one pass over a data set,
memory independent of the number of images.

- `PixelAccumulator`: AuPRC, FPR95 (first point and the authors' interpolated variant), AUROC, best F1 and its
  threshold, in `exact` mode (every pixel at its own score, what scikit-learn computes) or `smiyc` mode
  (SegmentMeIfYouCan's per-image quantile bins).
- `ComponentAccumulator`: SMIYC's component sIoU, PPV and mean F1* (8-connectivity, strict threshold, track size
  filters).
- `ConfusionAccumulator`: mIoU and per-class IoU over the 19 Cityscapes trainIds.

Labels: 0 = normal, 1 = anomaly, 255 = void (never counted); any other value is an error. Scores: higher = more
anomalous, finite on every non-void pixel (void pixels are never read).

How `exact` streams, exactly and in bounded memory: a score's float32 bit pattern becomes an integer key with the
same order (-0.0 and +0.0 share one), so counting pixels per distinct score is counting integer keys, losslessly.
The key space is cut into 4096 segments by its top 12 bits (each segment = 1/8 of a binary order of magnitude of
float32 values, 2^20 keys). An image's keys are grouped by segment (numpy's radix sort on the 12-bit id); a
segment keeps its distinct keys sparsely (sorted keys + counts, merged in batches) until it holds 2^16 of them,
then becomes a dense table of 2^20 uint32 counters (4 MiB) that counts each image's keys in place. Memory is
therefore bounded by the segments the scores touch (at most 4 MiB each), whatever the number of images; scores in
0.0001 .. 1 touch at most ~110 segments per class. The curve is folded segment by segment from the highest score
down, carrying the running TP / FP counts, after merging each run of scores without positives into one point
(exact for every figure, see `_collapse_negative_runs`), so it never exists in full either. float64 scores are
exact too (64-bit keys, sparse segments only: memory then grows with the number of distinct values); float64 maps
holding float32 values are treated as float32.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

LABEL_NORMAL = 0
LABEL_ANOMALY = 1
LABEL_VOID = 255
NUM_CLASSES = 19  # Cityscapes trainIds 0..18
TPR_TARGET = 0.95
# SMIYC's sIoU / PPV thresholds, numpy's exact values (the 8th is 0.6000000000000001, not 0.6).
TAUS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.25, 0.75, 11))
SMIYC_BINS_PER_CLASS = 384  # SMIYC: num_bins 768 // 2 quantile levels for the positives, as many for the negatives
CURVE_GRID = 1000  # plotting curves keep the points where recall or FPR crosses a multiple of 1 / CURVE_GRID

Mode = Literal["exact", "smiyc"]
MODES: tuple[str, ...] = ("exact", "smiyc")


@dataclass(frozen=True)
class Track:
    """SMIYC component size filters: predicted components below `min_pred_size` pixels are deleted, ground-truth
    components below `min_gt_size` pixels become void."""

    name: str
    min_pred_size: int
    min_gt_size: int


TRACKS: dict[str, Track] = {
    "anomaly": Track("anomaly", 500, 100),
    "obstacle": Track("obstacle", 50, 10),
    "none": Track("none", 0, 0),  # no size filter (the edge-case examples of METRICS.md)
}


# ----------------------------------------------------------------------------------------------------------
# Input checks

_NOT_A_LABEL = np.ones(256, bool)
_NOT_A_LABEL[[LABEL_NORMAL, LABEL_ANOMALY, LABEL_VOID]] = False


def check_label(label: object, where: str = "label") -> np.ndarray:
    """An anomaly label map as (H, W) uint8 with values in {0, 1, 255}; ValueError naming `where` otherwise."""
    if not isinstance(label, np.ndarray) or label.ndim != 2:
        shape = getattr(label, "shape", None)
        raise ValueError(f"{where}: anomaly labels must be an (H, W) array, got {type(label).__name__} shape {shape}")
    if label.dtype != np.uint8:
        if label.dtype.kind not in "iub":
            raise ValueError(f"{where}: anomaly labels must be integers (0, 1, 255), got dtype {label.dtype}")
        bad = ~np.isin(label, (LABEL_NORMAL, LABEL_ANOMALY, LABEL_VOID))
        if bad.any():
            values = np.unique(label[bad])[:8].tolist()
            raise ValueError(f"{where}: anomaly labels must be 0, 1 or 255, got {int(bad.sum())} pixels with {values}")
        return label.astype(np.uint8)
    if np.any(np.subtract(label, 2, dtype=np.uint8) < 253):  # 0, 1, 255 wrap to 254, 255, 253; others < 253
        counts = np.bincount(label.ravel(), minlength=256) * _NOT_A_LABEL
        values = np.flatnonzero(counts)[:8].tolist()
        raise ValueError(
            f"{where}: anomaly labels must be 0, 1 or 255, got {int(counts.sum())} pixels with values {values}"
        )
    return label


def check_score(score: object, shape: tuple[int, ...], where: str = "score") -> np.ndarray:
    """A score map as (H, W) float32 or float64 (smaller floats and integers of <= 32 bits are widened exactly)."""
    if not isinstance(score, np.ndarray) or score.ndim != 2:
        got = getattr(score, "shape", None)
        raise ValueError(f"{where}: scores must be an (H, W) array, got {type(score).__name__} shape {got}")
    if score.shape != tuple(shape):
        raise ValueError(f"{where}: score map shape {score.shape} does not match the label map shape {tuple(shape)}")
    kind, size = score.dtype.kind, score.dtype.itemsize
    if kind == "f" and size <= 4:
        return score.astype(np.float32, copy=False)
    if kind == "f" and size == 8:
        return score
    if kind in "iu" and size <= 2:
        return score.astype(np.float32)
    if kind in "iu" and size <= 4:
        return score.astype(np.float64)
    raise ValueError(f"{where}: scores must be float16/32/64 or integers of at most 32 bits, got dtype {score.dtype}")


def _check_finite(values: np.ndarray, where: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite]
        raise ValueError(
            f"{where}: {bad.size} non-void pixels have non-finite scores "
            f"({int(np.isnan(bad).sum())} NaN, {int(np.isinf(bad).sum())} inf); scores must be finite"
        )


def split_scores(score: np.ndarray, label: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked (anomaly scores, normal scores) of one image, void pixels dropped (1-D, float32 or float64)."""
    label = check_label(label, where)
    score = check_score(score, label.shape, where)
    pos = score[label == LABEL_ANOMALY]
    neg = score[label == LABEL_NORMAL]
    _check_finite(pos, where)
    _check_finite(neg, where)
    return pos, neg


# ----------------------------------------------------------------------------------------------------------
# Order-preserving integer keys for floats


def _narrow(values: np.ndarray) -> np.ndarray:
    """float64 values that are all float32 values, as float32 (lossless); anything else unchanged."""
    if values.dtype == np.float64:
        narrow = values.astype(np.float32)
        if np.array_equal(narrow, values):
            return narrow
    return values


def float_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> int32 / float64 -> int64 keys, ordered like the floats; -0.0 and +0.0 get the same key."""
    dtype = np.int32 if values.dtype == np.float32 else np.int64
    bits = (values + values.dtype.type(0.0)).view(dtype)  # + 0.0 turns -0.0 into +0.0; a fresh array
    negative = bits < 0
    bits[negative] ^= np.iinfo(dtype).max  # negative floats: larger magnitude = smaller key
    return bits


def key_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of `float_keys`, as float64."""
    bits = keys.copy()
    negative = bits < 0
    bits[negative] ^= np.iinfo(bits.dtype).max
    return bits.view(np.float32 if bits.dtype == np.int32 else np.float64).astype(np.float64)


def _run_lengths(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys, int64 counts) of a sorted array."""
    n = sorted_keys.size
    if n == 0:
        return sorted_keys, np.zeros(0, np.int64)
    first = np.empty(n, bool)
    first[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return sorted_keys[starts], np.diff(np.append(starts, n))


def _runs(sorted_ids: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(value, start, stop) of each run of equal values in a sorted array."""
    bounds = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
    starts = [0, *bounds.tolist()]
    stops = [*bounds.tolist(), sorted_ids.size]
    for start, stop in zip(starts, stops):
        yield int(sorted_ids[start]), start, stop


def _merge_counted(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge (sorted distinct keys, counts) runs into one: distinct keys with summed counts."""
    all_keys = np.concatenate(keys)
    all_counts = np.concatenate(counts)
    order = np.argsort(all_keys, kind="stable")  # timsort: merges the sorted runs in linear time
    all_keys = all_keys[order]
    all_counts = all_counts[order]
    distinct, runs = _run_lengths(all_keys)
    starts = np.cumsum(runs) - runs
    return distinct, np.add.reduceat(all_counts, starts) if starts.size else all_counts


# ----------------------------------------------------------------------------------------------------------
# The exact store


class _Segment:
    """The counts of one segment of the key space: sparse (sorted offsets + counts, plus unmerged batches) or
    dense (one uint32 counter per offset; uint64 once the segment has counted 2^32 pixels)."""

    __slots__ = ("offsets", "counts", "pending", "pending_size", "dense", "total")

    def __init__(self, offset_dtype: np.dtype) -> None:
        self.offsets = np.zeros(0, offset_dtype)
        self.counts = np.zeros(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0
        self.dense: np.ndarray | None = None
        self.total = 0  # pixels counted: bounds every counter

    def add(self, offsets: np.ndarray, counts: np.ndarray, store: _KeyCounts) -> None:
        """Add distinct sorted offsets with their counts."""
        self.total += int(counts.sum())
        if self.dense is not None:
            self._widen()
            np.add.at(self.dense, offsets, counts.astype(self.dense.dtype))  # faster than fancy +=
            return
        self.pending.append((offsets.copy(), counts.copy()))  # copies: views would pin the whole image's arrays
        self.pending_size += offsets.size
        store.pending_size += offsets.size
        if self.pending_size >= max(self.offsets.size, store.min_merge):
            self.merge(store)

    def add_raw(self, offsets: np.ndarray, store: _KeyCounts) -> None:
        """Add unsorted offsets, one per pixel."""
        if self.dense is None:
            self.add(*_run_lengths(np.sort(offsets)), store)
            return
        self.total += offsets.size
        self._widen()
        np.add.at(self.dense, offsets, self.dense.dtype.type(1))  # a typed one: a Python 1 is 30x slower

    def _widen(self) -> None:
        if self.dense is not None and self.dense.dtype == np.uint32 and self.total > np.iinfo(np.uint32).max:
            self.dense = self.dense.astype(np.uint64)

    def merge(self, store: _KeyCounts) -> None:
        """Fold the pending batches into the sorted arrays; turn dense when that is smaller."""
        if not self.pending:
            return
        offsets = [self.offsets] + [o for o, _ in self.pending]
        counts = [self.counts] + [c for _, c in self.pending]
        if store.dense_size and self.offsets.size + self.pending_size > store.dense_size >> 2:
            # many keys in a small offset range: one weighted bincount beats sorting (exact below 2^53)
            summed = np.bincount(np.concatenate(offsets), np.concatenate(counts), minlength=store.dense_size)
            nonzero = np.flatnonzero(summed)
            self.offsets, self.counts = nonzero.astype(store.key_dtype), summed[nonzero].astype(np.int64)
        else:
            self.offsets, self.counts = _merge_counted(offsets, counts)
        store.pending_size -= self.pending_size
        self.pending, self.pending_size = [], 0
        if store.dense_size and self.offsets.size > store.dense_at:
            self.dense = np.zeros(store.dense_size, np.uint32)
            self._widen()
            self.dense[self.offsets] = self.counts.astype(self.dense.dtype)
            self.offsets = np.zeros(0, self.offsets.dtype)  # not a [:0] view: that would pin the old array
            self.counts = np.zeros(0, np.int64)

    def items(self, store: _KeyCounts) -> tuple[np.ndarray, np.ndarray]:
        """(sorted offsets, int64 counts)."""
        self.merge(store)  # first: merging may turn the segment dense
        if self.dense is not None:
            offsets = np.flatnonzero(self.dense)
            return offsets.astype(store.key_dtype), self.dense[offsets].astype(np.int64)
        return self.offsets, self.counts

    def nbytes(self) -> int:
        pending = sum(o.nbytes + c.nbytes for o, c in self.pending)
        dense = 0 if self.dense is None else self.dense.nbytes
        return self.offsets.nbytes + self.counts.nbytes + pending + dense


class _KeyCounts:
    """Exact counts of integer keys (int32 or int64), in 4096 segments by the top 12 key bits."""

    SEGMENT_BITS = 12
    DENSE_OFFSET_BITS = 20  # only int32 keys (20 offset bits) may go dense: 2^20 counters per segment
    DENSE_AT = 1 << 16  # a sparse segment with more distinct keys than this turns dense
    MIN_MERGE = 1 << 14  # a sparse segment merges its pending batches once they hold this many keys (or more
    MAX_PENDING = 1 << 22  # than the segment itself); all segments merge when their batches exceed this in total

    def __init__(self, key_dtype: type[np.signedinteger]) -> None:
        self.key_dtype = np.dtype(key_dtype)
        self.offset_bits = self.key_dtype.itemsize * 8 - self.SEGMENT_BITS
        self.offset_mask = self.key_dtype.type((1 << self.offset_bits) - 1)
        self.dense_size = (1 << self.offset_bits) if self.offset_bits <= self.DENSE_OFFSET_BITS else 0
        self.dense_at = self.DENSE_AT
        self.min_merge = self.MIN_MERGE
        self.segments: dict[int, _Segment] = {}
        self.pending_size = 0

    def add_keys(self, keys: np.ndarray) -> None:
        """Count the (unsorted) keys of one image.

        int32 keys are grouped by segment with numpy's radix sort on the 12-bit segment id (about half the cost of
        sorting the keys); a dense segment then counts its keys directly, only a sparse one sorts them.
        """
        if keys.size == 0:
            return
        if not self.dense_size:
            self.add_counted(*_run_lengths(np.sort(keys)))
            return
        segment_ids = ((keys >> self.offset_bits) + (1 << (self.SEGMENT_BITS - 1))).astype(np.uint16)
        order = np.argsort(segment_ids, kind="stable")  # radix sort for 16-bit integers
        segment_ids = segment_ids[order]
        offsets = keys[order] & self.offset_mask
        for sid, start, stop in _runs(segment_ids):
            self._segment(sid).add_raw(offsets[start:stop], self)
        self._merge_if_needed()

    def add_counted(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add sorted distinct keys with their counts."""
        if keys.size == 0:
            return
        segment_ids = (keys >> self.offset_bits) + (1 << (self.SEGMENT_BITS - 1))  # sorted, since keys are
        offsets = keys & self.offset_mask
        for sid, start, stop in _runs(segment_ids):
            self._segment(sid).add(offsets[start:stop], counts[start:stop], self)
        self._merge_if_needed()

    def _segment(self, sid: int) -> _Segment:
        segment = self.segments.get(sid)
        if segment is None:
            segment = self.segments[sid] = _Segment(self.key_dtype)
        return segment

    def _merge_if_needed(self) -> None:
        if self.pending_size > self.MAX_PENDING:
            for segment in self.segments.values():
                segment.merge(self)

    def segment_items(self, sid: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted full keys, int64 counts) of segment `sid` (empty if absent)."""
        segment = self.segments.get(sid)
        if segment is None:
            return np.zeros(0, self.key_dtype), np.zeros(0, np.int64)
        offsets, counts = segment.items(self)
        base = self.key_dtype.type(sid - (1 << (self.SEGMENT_BITS - 1))) << self.key_dtype.type(self.offset_bits)
        return offsets | base, counts

    def dense_counts(self, sid: int) -> np.ndarray:
        """Counts of segment `sid` indexed by offset (dense_size long; a dense segment's own table, not a copy)."""
        segment = self.segments.get(sid)
        if segment is not None:
            segment.merge(self)
            if segment.dense is not None:
                return segment.dense
        out = np.zeros(self.dense_size, np.int64)
        if segment is not None:
            out[segment.offsets] = segment.counts
        return out

    def is_dense(self, sid: int) -> bool:
        segment = self.segments.get(sid)
        return segment is not None and segment.dense is not None

    def widened(self) -> _KeyCounts:
        """The same counts under int64 (float64) keys."""
        wide = _KeyCounts(np.int64)
        for sid in sorted(self.segments):
            keys, counts = self.segment_items(sid)
            wide.add_counted(float_keys(key_values(keys)), counts)
        return wide

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.segments.values())


# ----------------------------------------------------------------------------------------------------------
# The curve


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel-level figures of a data set (fractions, not percent); NaN where undefined (see `warnings`).

    curve_*: the PR and ROC curves thinned for plotting (the points where recall or FPR crosses a multiple of
    1/1000, plus the ends); every figure is computed on the full curve.
    """

    mode: str
    images: int
    skipped_images: int
    positives: int
    negatives: int
    auprc: float
    fpr95: float
    fpr95_interpolated: float
    auroc: float
    best_f1: float
    best_f1_threshold: float
    fpr95_threshold: float
    curve_recall: np.ndarray = field(repr=False)
    curve_precision: np.ndarray = field(repr=False)
    curve_fpr: np.ndarray = field(repr=False)
    curve_tpr: np.ndarray = field(repr=False)
    curve_threshold: np.ndarray = field(repr=False)
    warnings: tuple[str, ...] = ()


class _CurveFold:
    """Consumes (thresholds descending, positives, negatives) chunks from the highest threshold down and
    accumulates every pixel figure; points are distinct thresholds, preceded by the start point (0, 0)."""

    def __init__(self, positives: int, negatives: int) -> None:
        self.P, self.N = positives, negatives
        self.tp = self.fp = 0
        self.ap_sum = 0.0  # sum over points of positives_i * precision_i
        self.auc_sum = 0.0  # sum over points of negatives_i * (tp_i + tp_{i-1})
        self.fpr95: float | None = None
        self.fpr95_threshold = math.nan
        self.fpr95_interp: float | None = None
        self.last_tpr = 0.0  # the previous point, for the interpolated FPR95
        self.last_fpr = 0.0
        self.best_f1 = 0.0
        self.best_f1_threshold = math.nan
        self.samples: list[np.ndarray] = [np.array([[0.0, 1.0, 0.0, 0.0, math.inf]])]

    def add(self, thresholds: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> None:
        if thresholds.size == 0:
            return
        tp = self.tp + np.cumsum(pos)
        fp = self.fp + np.cumsum(neg)
        tp_before = np.concatenate(([self.tp], tp[:-1]))
        has_pos = pos > 0
        self.ap_sum += float(np.sum(pos[has_pos] * (tp[has_pos] / (tp[has_pos] + fp[has_pos]))))
        self.auc_sum += float(np.sum(neg * (tp + tp_before).astype(np.float64)))
        P, N = max(self.P, 1), max(self.N, 1)
        tpr = tp / P
        fpr = fp / N
        if self.fpr95 is None:
            reached = np.flatnonzero(tpr >= TPR_TARGET)
            if reached.size:
                self.fpr95 = float(fpr[reached[0]])
                self.fpr95_threshold = float(thresholds[reached[0]])
        if self.fpr95_interp is None:
            above = np.flatnonzero(tpr > TPR_TARGET)
            if above.size:
                i = int(above[0])
                x0, y0 = (self.last_tpr, self.last_fpr) if i == 0 else (float(tpr[i - 1]), float(fpr[i - 1]))
                x1, y1 = float(tpr[i]), float(fpr[i])
                # np.interp(0.95, tpr, fpr) of the authors' evaluation, with its formula and rounding
                self.fpr95_interp = y0 if x0 == TPR_TARGET else (y1 - y0) / (x1 - x0) * (TPR_TARGET - x0) + y0
        f1 = 2.0 * tp / (tp + fp + self.P)
        best = int(np.argmax(f1))
        if f1[best] > self.best_f1:
            self.best_f1 = float(f1[best])
            self.best_f1_threshold = float(thresholds[best])
        self._sample(thresholds, tp, fp, tpr, fpr)
        self.tp, self.fp = int(tp[-1]), int(fp[-1])
        self.last_tpr, self.last_fpr = float(tpr[-1]), float(fpr[-1])

    def _sample(self, thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, tpr: np.ndarray, fpr: np.ndarray) -> None:
        cells = np.floor(tpr * CURVE_GRID) * (CURVE_GRID + 1) + np.floor(fpr * CURVE_GRID)
        before = np.floor(self.last_tpr * CURVE_GRID) * (CURVE_GRID + 1) + np.floor(self.last_fpr * CURVE_GRID)
        keep = np.flatnonzero(np.diff(np.concatenate(([before], cells))) != 0)
        if keep.size == 0 or keep[-1] != tp.size - 1:
            keep = np.append(keep, tp.size - 1)
        precision = tp[keep] / np.maximum(tp[keep] + fp[keep], 1)
        self.samples.append(np.stack([tpr[keep], precision, fpr[keep], tpr[keep], thresholds[keep]], axis=1))

    def result(self, mode: str, images: int, skipped: int) -> PixelMetrics:
        notes: list[str] = []
        P, N = self.P, self.N
        if P == 0:
            notes.append("no anomaly pixel in the data set: AuPRC, AUROC and best F1 are undefined (NaN), FPR95 = 0")
            auprc = auroc = best_f1 = best_thr = math.nan
            fpr95 = fpr95_interp = 0.0
            fpr95_thr = math.nan
        else:
            auprc = self.ap_sum / P
            best_f1, best_thr = self.best_f1, self.best_f1_threshold
            if N == 0:
                notes.append("no normal pixel in the data set: FPR95 and AUROC are undefined (NaN)")
                auroc = fpr95 = fpr95_interp = fpr95_thr = math.nan
            else:
                auroc = self.auc_sum / (2.0 * P * N)
                fpr95 = 1.0 if self.fpr95 is None else self.fpr95
                fpr95_interp = 1.0 if self.fpr95_interp is None else float(self.fpr95_interp)
                fpr95_thr = self.fpr95_threshold
        samples = np.concatenate(self.samples)
        return PixelMetrics(
            mode=mode,
            images=images,
            skipped_images=skipped,
            positives=P,
            negatives=N,
            auprc=auprc,
            fpr95=fpr95,
            fpr95_interpolated=fpr95_interp,
            auroc=auroc,
            best_f1=best_f1,
            best_f1_threshold=best_thr,
            fpr95_threshold=fpr95_thr,
            curve_recall=samples[:, 0],
            curve_precision=samples[:, 1],
            curve_fpr=samples[:, 2],
            curve_tpr=samples[:, 3],
            curve_threshold=samples[:, 4],
            warnings=tuple(notes),
        )


# ----------------------------------------------------------------------------------------------------------
# Pixel accumulators


class _ExactCounts:
    """Exact (score -> positives, negatives) counts: two `_KeyCounts` stores."""

    def __init__(self) -> None:
        self.pos = _KeyCounts(np.int32)
        self.neg = _KeyCounts(np.int32)

    def add(self, pos: np.ndarray, neg: np.ndarray) -> None:
        pos, neg = _narrow(pos), _narrow(neg)
        if (pos.dtype == np.float64 or neg.dtype == np.float64) and self.pos.key_dtype == np.int32:
            self.pos, self.neg = self.pos.widened(), self.neg.widened()
        if self.pos.key_dtype == np.int64:
            pos, neg = pos.astype(np.float64, copy=False), neg.astype(np.float64, copy=False)
        self.pos.add_keys(float_keys(pos))
        self.neg.add_keys(float_keys(neg))

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(thresholds, positives, negatives) per segment, highest scores first, thresholds descending."""
        for sid in sorted(set(self.pos.segments) | set(self.neg.segments), reverse=True):
            if self.pos.dense_size and (self.pos.is_dense(sid) or self.neg.is_dense(sid)):
                pos_full, neg_full = self.pos.dense_counts(sid), self.neg.dense_counts(sid)
                offsets = np.flatnonzero((pos_full != 0) | (neg_full != 0))
                pos, neg = pos_full[offsets].astype(np.int64), neg_full[offsets].astype(np.int64)
                base = np.int32(sid - (1 << (_KeyCounts.SEGMENT_BITS - 1))) << np.int32(self.pos.offset_bits)
                keys = offsets.astype(np.int32) | base
            else:
                pk, pc = self.pos.segment_items(sid)
                nk, nc = self.neg.segment_items(sid)
                keys, _ = _run_lengths(np.sort(np.concatenate([pk, nk]), kind="stable"))
                pos = np.zeros(keys.size, np.int64)
                neg = np.zeros(keys.size, np.int64)
                pos[np.searchsorted(keys, pk)] = pc
                neg[np.searchsorted(keys, nk)] = nc
            keys, pos, neg = _collapse_negative_runs(keys[::-1], pos[::-1], neg[::-1])
            yield key_values(keys), pos, neg

    def nbytes(self) -> int:
        return self.pos.nbytes() + self.neg.nbytes()


def _collapse_negative_runs(
    keys: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge each run of consecutive points without positives into its last point (the lowest threshold).

    Exact for every figure: such a run is a horizontal stretch of the ROC curve (its trapezoid area depends only on
    its total width), adds nothing to AuPRC, never first reaches a TPR, and lowers F1 along the way; its last point
    (the corner before the next positives) is kept. Most distinct scores hold no positive, so the fold gets shorter.
    """
    n = keys.size
    if n == 0:
        return keys, pos, neg
    has_pos = pos > 0
    keep = has_pos.copy()
    keep[:-1] |= has_pos[1:]  # the last point before a point with positives
    keep[-1] = True
    at = np.flatnonzero(keep)
    fp = np.cumsum(neg)[at]
    return keys[at], pos[at], np.diff(fp, prepend=0)


def smiyc_bins(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMIYC's per-image binning: (lower bin edges, positives per bin, negatives per bin), edges ascending.

    Edges: the sorted distinct union of {vmin - e, vmax + e} (e = max(0.01 * (vmax - vmin), 0.01)) and the
    positives' and negatives' numpy-linear quantiles at min(384, count) evenly spaced levels; each bin
    [edge_i, edge_i+1) is credited at its lower edge.
    """
    prob = np.concatenate([pos, neg])
    vmin, vmax = np.min(prob), np.max(prob)
    eps = np.maximum((vmax - vmin) * 1e-2, 1e-2)  # the benchmark's expressions, dtypes included
    parts = [np.array([vmin - eps, vmax + eps])]
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    for values in (pos_sorted, neg_sorted):
        if values.size:
            parts.append(np.quantile(values, np.linspace(0, 1, min(SMIYC_BINS_PER_CLASS, values.size))))
    edges = np.unique(np.concatenate(parts))
    return edges[:-1], _bin_counts(pos_sorted, edges), _bin_counts(neg_sorted, edges)


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram(values, edges)[0] for sorted values: bins [e_i, e_i+1), the last one closed."""
    values = sorted_values.astype(np.float64)
    at = np.searchsorted(values, edges, side="left")
    at[-1] = np.searchsorted(values, edges[-1], side="right")
    return np.diff(at).astype(np.int64)


class _SmiycBins:
    """SMIYC's binned counts: every image's (lower edge, positives, negatives) triples, pooled."""

    def __init__(self) -> None:
        self.edges: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []

    def add(self, pos: np.ndarray, neg: np.ndarray) -> None:
        edges, p, n = smiyc_bins(pos, neg)
        self.edges.append(edges)
        self.pos.append(p)
        self.neg.append(n)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if not self.edges:
            return
        edges = np.concatenate(self.edges)
        order = np.argsort(-edges, kind="stable")
        edges = edges[order]
        pos = np.concatenate(self.pos)[order]
        neg = np.concatenate(self.neg)[order]
        first = np.concatenate(([True], edges[1:] != edges[:-1]))
        starts = np.flatnonzero(first)
        yield edges[starts], np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.edges + self.pos + self.neg)


class PixelAccumulator:
    """Pixel AuPRC / FPR95 / AUROC / best F1 of a data set, one image at a time.

    mode: "exact" (every pixel at its own score, as scikit-learn) or "smiyc" (the benchmark's per-image bins).
    skip_images_without_anomaly: the authors' protocol (images with no anomaly pixel are left out); SMIYC and
        the default keep them.
    """

    def __init__(self, mode: Mode = "exact", *, skip_images_without_anomaly: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.skip_images_without_anomaly = bool(skip_images_without_anomaly)
        self._counts: _ExactCounts | _SmiycBins = _ExactCounts() if mode == "exact" else _SmiycBins()
        self.positives = 0
        self.negatives = 0
        self.images = 0
        self.skipped = 0

    def update(self, score: np.ndarray, label: np.ndarray, name: str = "image") -> bool:
        """Add one image: score (H, W) float, label (H, W) 0/1/255. Returns False when the image was skipped."""
        pos, neg = split_scores(score, label, name)
        if self.skip_images_without_anomaly and pos.size == 0:
            self.skipped += 1
            return False
        self.images += 1
        if pos.size + neg.size == 0:
            return True
        self.positives += pos.size
        self.negatives += neg.size
        self._counts.add(pos, neg)
        return True

    def compute(self) -> PixelMetrics:
        """Every pixel figure of the images added so far (may be called again after more updates)."""
        fold = _CurveFold(self.positives, self.negatives)
        for thresholds, pos, neg in self._counts.chunks():
            fold.add(thresholds, pos, neg)
        result = fold.result(self.mode, self.images, self.skipped)
        for note in result.warnings:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        return result

    def nbytes(self) -> int:
        """Memory held by the counts (for the benchmark's memory report)."""
        return self._counts.nbytes()


def pixel_metrics(
    scores: list[np.ndarray], labels: list[np.ndarray], mode: Mode = "exact", **kwargs: bool
) -> PixelMetrics:
    """`PixelAccumulator` over in-memory lists of score and label maps."""
    if len(scores) != len(labels):
        raise ValueError(f"got {len(scores)} score maps but {len(labels)} label maps")
    acc = PixelAccumulator(mode, **kwargs)
    for i, (score, label) in enumerate(zip(scores, labels)):
        acc.update(score, label, f"image {i}")
    return acc.compute()


# ----------------------------------------------------------------------------------------------------------
# Components (SMIYC sIoU, PPV, mean F1*)


@dataclass(frozen=True)
class FrameComponents:
    """One image's component figures: sIoU per ground-truth component, PPV per predicted component, and the
    pixel F1 of the prediction after the size filters (for ranking frames; 1 when there is nothing to find)."""

    siou: np.ndarray
    ppv: np.ndarray
    pixel_f1: float


@dataclass(frozen=True)
class ComponentMetrics:
    """Component figures of a data set; NaN where undefined (no component to average over)."""

    threshold: float
    track: str
    siou: float
    ppv: float
    mean_f1: float
    f1_per_tau: tuple[float, ...]
    tp: tuple[int, ...]
    fn: tuple[int, ...]
    fp: tuple[int, ...]
    gt_components: int
    pred_components: int
    taus: tuple[float, ...] = TAUS


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a boolean mask: (count incl. background, int32 labels, int64 areas)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n, labels, stats[:, cv2.CC_STAT_AREA].astype(np.int64)


def frame_components(
    score: np.ndarray, label: np.ndarray, threshold: float, track: Track, where: str = "image"
) -> FrameComponents:
    """SMIYC's per-image component evaluation (METRICS.md, component level, steps 1-4)."""
    label = check_label(label, where)
    score = check_score(score, label.shape, where)
    void = label == LABEL_VOID
    if not np.isfinite(score).all():
        _check_finite(score[~void], where)
    with np.errstate(invalid="ignore"):
        # strict, in float64: a Python float would be rounded to float32 first (NEP 50) and 0.49999999 would
        # act as 0.5; void pixels never predict, whatever their score
        predicted = (score > np.float64(threshold)) & ~void
    gt = label == LABEL_ANOMALY
    box = _bounding_box(predicted | gt)  # everything happens inside this box
    if box is None:
        return FrameComponents(np.zeros(0), np.zeros(0), 1.0)
    predicted, gt, void = np.ascontiguousarray(predicted[box]), gt[box], void[box]
    n_pred, pred_lab, pred_area = _components(predicted)
    keep = pred_area >= track.min_pred_size
    keep[0] = False
    if not keep[1:].all():
        pred_lab = np.where(keep, np.arange(n_pred, dtype=np.int32), 0).astype(np.int32)[pred_lab]
    gt_lab = np.zeros(gt.shape, np.int32)
    n_gt, gt_area = 1, np.zeros(1, np.int64)
    gt_box = _bounding_box(gt)  # the ground truth is compact: label it in its own, smaller box
    if gt_box is not None:
        n_gt, gt_lab[gt_box], gt_area = _components(np.ascontiguousarray(gt[gt_box]))
    small = gt_area < track.min_gt_size
    small[0] = False
    roi = ~void
    if small.any():
        roi &= ~small[gt_lab]
        gt_lab = np.where(small, 0, np.arange(n_gt, dtype=np.int32)).astype(np.int32)[gt_lab]
    touched = roi & ((gt_lab > 0) | (pred_lab > 0))
    g = gt_lab[touched].astype(np.int64)
    p = pred_lab[touched].astype(np.int64)
    code, count = _run_lengths(np.sort(g * n_pred + p))
    g, p = code // n_pred, code % n_pred
    # per predicted component: its ROI pixels on no GT (C[0, p]) and on GT (sum over g > 0 of C[g, p])
    off_gt = np.bincount(p[g == 0], weights=count[g == 0], minlength=n_pred)
    on_gt = np.bincount(p[g > 0], weights=count[g > 0], minlength=n_pred)
    gt_size = np.bincount(g, weights=count, minlength=n_gt)
    pairs = (g > 0) & (p > 0)
    inter = np.bincount(g[pairs], weights=count[pairs], minlength=n_gt)
    # |k u K(k)| - |A(k)| = |k| + (pixels of the touching predictions on no GT)
    union = gt_size + np.bincount(g[pairs], weights=off_gt[p[pairs]], minlength=n_gt)
    gt_ids = np.flatnonzero(gt_size[1:] > 0) + 1
    pred_size = off_gt + on_gt
    pred_ids = np.flatnonzero(pred_size[1:] > 0) + 1
    tp, fp, fn = inter.sum(), off_gt.sum(), gt_size[1:].sum() - inter.sum()  # pixels, for the frame's F1
    return FrameComponents(
        siou=inter[gt_ids] / union[gt_ids],
        ppv=on_gt[pred_ids] / pred_size[pred_ids],
        pixel_f1=1.0 if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn)),
    )


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (rows, cols) slices holding every True pixel of a 2-D mask; None if there is none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


class ComponentAccumulator:
    """SMIYC component metrics of a data set at one pixel threshold (prediction = score > threshold)."""

    def __init__(self, threshold: float, track: str | Track = "anomaly") -> None:
        if not isinstance(threshold, int | float | np.floating) or not math.isfinite(threshold):
            raise ValueError(f"component threshold must be a finite number, got {threshold!r}")
        if isinstance(track, str):
            if track not in TRACKS:
                raise ValueError(f"track must be one of {tuple(TRACKS)}, got {track!r}")
            track = TRACKS[track]
        self.threshold = float(threshold)
        self.track = track
        self._siou_sum = 0.0
        self._ppv_sum = 0.0
        self._gt = 0
        self._pred = 0
        self._tp = np.zeros(len(TAUS), np.int64)
        self._fn = np.zeros(len(TAUS), np.int64)
        self._fp = np.zeros(len(TAUS), np.int64)

    def update(self, score: np.ndarray, label: np.ndarray, name: str = "image") -> FrameComponents:
        """Add one image; returns its own figures."""
        frame = frame_components(score, label, self.threshold, self.track, name)
        taus = np.asarray(TAUS)
        self._tp += (frame.siou[:, None] >= taus).sum(axis=0)
        self._fn += (frame.siou[:, None] < taus).sum(axis=0)
        self._fp += (frame.ppv[:, None] < taus).sum(axis=0)
        self._siou_sum += float(frame.siou.sum())
        self._ppv_sum += float(frame.ppv.sum())
        self._gt += frame.siou.size
        self._pred += frame.ppv.size
        return frame

    def compute(self) -> ComponentMetrics:
        denominator = 2 * self._tp + self._fn + self._fp
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(denominator > 0, 2 * self._tp / np.maximum(denominator, 1), math.nan)
        return ComponentMetrics(
            threshold=self.threshold,
            track=self.track.name,
            siou=self._siou_sum / self._gt if self._gt else math.nan,
            ppv=self._ppv_sum / self._pred if self._pred else math.nan,
            mean_f1=float(np.mean(f1)) if np.all(denominator > 0) else math.nan,
            f1_per_tau=tuple(float(x) for x in f1),
            tp=tuple(int(x) for x in self._tp),
            fn=tuple(int(x) for x in self._fn),
            fp=tuple(int(x) for x in self._fp),
            gt_components=self._gt,
            pred_components=self._pred,
        )


# ----------------------------------------------------------------------------------------------------------
# Semantic (mIoU)


@dataclass(frozen=True)
class SemanticMetrics:
    """mIoU over the classes that occur (in ground truth or prediction), per-class IoU (NaN if neither) and
    pixel accuracy; `confusion[g, p]` counts ground-truth class g predicted as p."""

    miou: float
    iou: tuple[float, ...]
    pixel_accuracy: float
    confusion: np.ndarray = field(repr=False)


class ConfusionAccumulator:
    """Confusion matrix over `num_classes` trainIds, accumulated over a data set; `ignore` in the ground truth is
    left out."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore: int = LABEL_VOID) -> None:
        if not isinstance(num_classes, int) or not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be an integer in 1..255, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore = ignore
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, name: str = "image") -> None:
        """Add one image: pred and gt (H, W) integer trainIds (gt may hold `ignore`)."""
        for what, array in (("prediction", pred), ("ground truth", gt)):
            if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind not in "iu":
                raise ValueError(
                    f"{name}: semantic {what} must be an (H, W) integer array, got "
                    f"{type(array).__name__} {getattr(array, 'dtype', '')} shape {getattr(array, 'shape', None)}"
                )
        if pred.shape != gt.shape:
            raise ValueError(f"{name}: semantic prediction shape {pred.shape} does not match ground truth {gt.shape}")
        valid = gt != self.ignore
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        k = self.num_classes
        for what, values in (("ground truth", g), ("prediction", p)):
            if values.size and (values.min() < 0 or values.max() >= k):
                bad = np.unique(values[(values < 0) | (values >= k)])[:8].tolist()
                raise ValueError(
                    f"{name}: semantic {what} holds class ids {bad} outside 0..{k - 1} (and {self.ignore})"
                )
        self.confusion += np.bincount(g * k + p, minlength=k * k).reshape(k, k)

    def compute(self) -> SemanticMetrics:
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / np.maximum(union, 1), math.nan)
        total = self.confusion.sum()
        return SemanticMetrics(
            miou=float(np.nanmean(iou)) if np.any(union > 0) else math.nan,
            iou=tuple(float(x) for x in iou),
            pixel_accuracy=float(tp.sum() / total) if total else math.nan,
            confusion=self.confusion.copy(),
        )


__all__ = [
    "LABEL_ANOMALY",
    "LABEL_NORMAL",
    "LABEL_VOID",
    "MODES",
    "TAUS",
    "TRACKS",
    "ComponentAccumulator",
    "ComponentMetrics",
    "ConfusionAccumulator",
    "FrameComponents",
    "PixelAccumulator",
    "PixelMetrics",
    "SemanticMetrics",
    "Track",
    "check_label",
    "check_score",
    "float_keys",
    "frame_components",
    "key_values",
    "pixel_metrics",
    "smiyc_bins",
    "split_scores",
]
