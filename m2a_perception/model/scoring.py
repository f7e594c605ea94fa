"""Anomaly score and semantic map from the network's class logits C and mask logits M (METHOD.md 5.1-5.5).

Pure functions; only `anomaly_segmentation` touches a model and numpy. Everything else is batch-first torch
with shapes fixed by the inputs (no boolean indexing, no data-dependent shapes or branches, no loops over
tensor contents), so `export.py` can fuse it into the ONNX graph.

Glossary (shapes below use these names):
    B = batch_size, Q = num_queries, K = num_classes (19 Cityscapes trainIds; the logits carry K + 1 with the
    no-object class last), h, w = mask resolution = 1/4 of the padded canvas (stride 4),
    H_pad, W_pad = padded canvas fed through the network (= 4h, 4w; a multiple of `size_divisibility`),
    H_in, W_in = `input_size`, the unpadded image the model saw (top-left of the canvas),
    H_out, W_out = `output_size`, the resolution scores are returned at (usually the original image).

Pipeline of `postprocess` with the defaults (the authors' evaluator, "full" resolution):
    S_q = sigmoid(upsample(M_q) to H_pad x W_pad)      (bilinear, align_corners=False; sigmoid AFTER upsampling)
    L(k, x) = sum_q softmax(C_q)[k] * S_q(x)           (softmax over K + 1, no-object dropped, no renormalising)
    crop [0:H_in, 0:W_in], bilinear resize to H_out x W_out
    f(x) = 1 - max_k L(k, x)                           (can be negative: L can exceed 1; never clipped)
    refinement: f'(x) = f(x) * (1 - B(x)), B = confident "stuff" masks, only with >= 2 such queries (5.4)
    semantic(x) = argmax_k L(k, x)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_STRIDE = 4  # pred_masks cover the padded canvas at 1/4 resolution

ScoreKind = Literal["mask2anomaly", "max_softmax", "max_logit", "entropy", "energy"]
ClassFn = Literal["identity", "softmax", "sigmoid"]
MaskFn = Literal["identity", "softmax", "sigmoid"]
PostFn = Literal["identity", "softmax"]
Resolution = Literal["full", "quarter"]

SCORES: tuple[str, ...] = ("mask2anomaly", "max_softmax", "max_logit", "entropy", "energy")
CLASS_FNS: tuple[str, ...] = ("identity", "softmax", "sigmoid")
MASK_FNS: tuple[str, ...] = ("identity", "softmax", "sigmoid")
POST_FNS: tuple[str, ...] = ("identity", "softmax")
RESOLUTIONS: tuple[str, ...] = ("full", "quarter")

# The rows of the supplementary's Table 3, as (class_fn, mask_fn, post_fn); the best (and default) is
# softmax/sigmoid/identity. Use as `ScoringConfig(**dict(zip(("class_fn", "mask_fn", "post_fn"), row)))`.
TABLE3_ROWS: tuple[tuple[str, str, str], ...] = (
    ("identity", "identity", "identity"),
    ("softmax", "softmax", "identity"),
    ("sigmoid", "sigmoid", "identity"),
    ("sigmoid", "softmax", "identity"),
    ("softmax", "sigmoid", "identity"),
    ("softmax", "sigmoid", "softmax"),
)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"scoring.{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class ScoringConfig:
    """How C and M become an anomaly score; the defaults reproduce the authors' evaluator except flip TTA.

    score: "mask2anomaly" (1 - max_k L) or a per-pixel baseline of Table 1 applied to L as if it were logits:
        "max_softmax" (1 - max_k softmax(L)), "max_logit" (-max_k L), "entropy" (entropy of softmax(L)),
        "energy" (-logsumexp_k L). Higher = more anomalous for all of them.
    class_fn: f_C of Table 3. "softmax": over the K + 1 logits, then the no-object column is dropped (no
        renormalisation); "sigmoid": sigmoid of the K class logits; "identity": the raw K class logits.
    mask_fn: f_M of Table 3. "sigmoid" (per query), "softmax" (over queries, per pixel), "identity" (logits).
    post_fn: "softmax" applies a softmax over the K channels of L before 1 - max (last row of Table 3); only
        meaningful for score "mask2anomaly".
    refine: mask refinement (5.4). A query is kept when argmax_k softmax(C_q) (over K + 1) is one of
        `refine_classes` and its probability > `refine_score_threshold`; R(x) = max over kept q of
        p_q * sigmoid(M_q)(x); B(x) = R(x) >= `refine_mask_threshold`; f' = f * (1 - B), but only when at least
        `refine_min_queries` queries are kept (the official code's "> 1": one kept query does nothing).
        Refinement always uses softmax(C) and sigmoid(M), whatever class_fn / mask_fn are. It multiplies the
        score by 0 inside B, which is "least anomalous" only for scores near [0, 1]: for the "max_logit" and
        "energy" baselines, whose scores are negative, turn it off.
    flip_tta: the evaluator's test-time augmentation (5.5): mean of the refined anomaly maps of the image and of
        its horizontally flipped copy (flipped back). The semantic map is the argmax of the mean of the two
        class maps (the authors only flip the anomaly map; averaging the class maps too is our choice).
    resolution: "full" is the official order (upsample mask logits to the padded canvas, then f_M, combine,
        crop, resize). "quarter" combines at mask resolution (1/4) and upsamples only the K class maps and the
        refinement map R: ~Q/(K+1) times less upsampling, NOT bit-identical to "full" (f_M and the max over
        queries do not commute with interpolation), close where the mask logits are smooth.
    chunk_queries: in "full" resolution, upsample at most this many queries at a time (peak memory ~
        chunk_queries * H_pad * W_pad floats instead of Q * H_pad * W_pad); None = all at once (the simplest
        graph, for export). Results agree to float rounding.
    """

    score: ScoreKind = "mask2anomaly"
    class_fn: ClassFn = "softmax"
    mask_fn: MaskFn = "sigmoid"
    post_fn: PostFn = "identity"
    refine: bool = True
    refine_classes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10)  # building .. sky (not road, sidewalk)
    refine_score_threshold: float = 0.95  # strict: p_q > threshold
    refine_mask_threshold: float = 0.5  # inclusive: p_q * sigmoid(M_q) >= threshold
    refine_min_queries: int = 2  # the authors' "more than one kept query"
    flip_tta: bool = False
    resolution: Resolution = "full"
    chunk_queries: int | None = 16

    def __post_init__(self) -> None:
        _choice("score", self.score, SCORES)
        _choice("class_fn", self.class_fn, CLASS_FNS)
        _choice("mask_fn", self.mask_fn, MASK_FNS)
        _choice("post_fn", self.post_fn, POST_FNS)
        _choice("resolution", self.resolution, RESOLUTIONS)
        if self.post_fn != "identity" and self.score != "mask2anomaly":
            raise ValueError(
                f"scoring.post_fn={self.post_fn!r} only applies to score 'mask2anomaly', got score={self.score!r} "
                "(the baselines define their own function of L)"
            )
        for name in ("refine", "flip_tta"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"scoring.{name} must be a bool, got {getattr(self, name)!r}")
        classes = self.refine_classes
        if (
            not isinstance(classes, tuple)
            or not classes
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise ValueError(
                f"scoring.refine_classes must be a non-empty tuple of distinct class ids >= 0, got {classes!r}"
            )
        if not 0.0 <= self.refine_score_threshold < 1.0:
            raise ValueError(f"scoring.refine_score_threshold must be in [0, 1), got {self.refine_score_threshold}")
        if not 0.0 < self.refine_mask_threshold <= 1.0:
            raise ValueError(f"scoring.refine_mask_threshold must be in (0, 1], got {self.refine_mask_threshold}")
        m = self.refine_min_queries
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"scoring.refine_min_queries must be a positive integer, got {m!r}")
        c = self.chunk_queries
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ValueError(f"scoring.chunk_queries must be a positive integer or None, got {c!r}")

    def replace(self, **changes: Any) -> ScoringConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------
# Checks (Python ints from static shapes only: trace- and export-safe)


def _check_logits(pred_logits: Tensor) -> None:
    if pred_logits.ndim != 3 or pred_logits.shape[-1] < 2:
        raise ValueError(
            "pred_logits must be (batch_size, num_queries, num_classes + 1) with num_classes >= 1, "
            f"got shape {tuple(pred_logits.shape)}"
        )


def _check_outputs(pred_logits: Tensor, pred_masks: Tensor) -> None:
    _check_logits(pred_logits)
    if pred_masks.ndim != 4 or tuple(pred_masks.shape[:2]) != tuple(pred_logits.shape[:2]):
        raise ValueError(
            "pred_masks must be (batch_size, num_queries, height, width) matching pred_logits "
            f"(batch_size, num_queries) = {tuple(pred_logits.shape[:2])}, got shape {tuple(pred_masks.shape)}"
        )


def _check_refine_classes(pred_logits: Tensor, cfg: ScoringConfig) -> None:
    num_classes = pred_logits.shape[-1] - 1
    if max(cfg.refine_classes) >= num_classes:
        raise ValueError(f"scoring.refine_classes {cfg.refine_classes} must be class ids < num_classes ({num_classes})")


def _check_size(name: str, size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in size)
    ):
        raise ValueError(f"{name} must be (height, width) of two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------------------------------------
# Tensor-level building blocks


def class_probabilities(pred_logits: Tensor, cfg: ScoringConfig) -> Tensor:
    """f_C applied to the class logits, no-object column removed.

    pred_logits: (batch_size, num_queries, num_classes + 1) float, no-object last.
    Returns (batch_size, num_queries, num_classes), same dtype.
    """
    _check_logits(pred_logits)
    if cfg.class_fn == "softmax":
        return pred_logits.softmax(dim=-1)[..., :-1]
    if cfg.class_fn == "sigmoid":
        return pred_logits[..., :-1].sigmoid()
    return pred_logits[..., :-1]


def mask_probabilities(pred_masks: Tensor, cfg: ScoringConfig) -> Tensor:
    """f_M applied to mask logits: "sigmoid" per query, "softmax" over the queries of each pixel, or identity.

    pred_masks: (batch_size, num_queries, height, width) float logits, any resolution.
    Returns the same shape and dtype.
    """
    if pred_masks.ndim != 4:
        raise ValueError(f"pred_masks must be (batch_size, num_queries, height, width), got {tuple(pred_masks.shape)}")
    if cfg.mask_fn == "sigmoid":
        return pred_masks.sigmoid()
    if cfg.mask_fn == "softmax":
        return pred_masks.softmax(dim=1)
    return pred_masks


def _combine(class_probs: Tensor, mask_probs: Tensor) -> Tensor:
    """sum_q class_probs[b, q, k] * mask_probs[b, q, y, x] -> (B, K, y, x), as one batched matmul."""
    b, q, h, w = mask_probs.shape
    out = torch.matmul(class_probs.transpose(1, 2), mask_probs.reshape(b, q, h * w))
    return out.reshape(b, class_probs.shape[-1], h, w)


def class_scores(pred_logits: Tensor, pred_masks: Tensor, cfg: ScoringConfig) -> Tensor:
    """Marginalised per-pixel class map L(k, x) = sum_q f_C(C_q)[k] * f_M(M_q)(x) at the masks' resolution.

    pred_logits: (batch_size, num_queries, num_classes + 1) float.
    pred_masks: (batch_size, num_queries, height, width) float mask logits (stride 4 as the network returns
        them, or upsampled by the caller for "full" resolution).
    Returns (batch_size, num_classes, height, width), the dtype of the inputs. With the default softmax /
    sigmoid, values are in [0, Q] (a pixel covered by several confident queries exceeds 1).
    """
    _check_outputs(pred_logits, pred_masks)
    return _combine(class_probabilities(pred_logits, cfg), mask_probabilities(pred_masks, cfg))


def anomaly_from_class_scores(class_scores: Tensor, cfg: ScoringConfig) -> Tensor:
    """Per-pixel anomaly score from L; higher = more anomalous, never clipped.

    class_scores: (batch_size, num_classes, height, width) float, L(k, x).
    Returns (batch_size, height, width), same dtype:
        "mask2anomaly": 1 - max_k post_fn(L)   "max_softmax": 1 - max_k softmax(L)   "max_logit": -max_k L
        "entropy": -sum_k p log p, p = softmax(L)                                     "energy": -logsumexp_k L
    """
    if class_scores.ndim != 4:
        raise ValueError(
            f"class_scores must be (batch_size, num_classes, height, width), got {tuple(class_scores.shape)}"
        )
    if cfg.score == "mask2anomaly":
        scores = class_scores.softmax(dim=1) if cfg.post_fn == "softmax" else class_scores
        return 1.0 - scores.amax(dim=1)
    if cfg.score == "max_softmax":
        return 1.0 - class_scores.softmax(dim=1).amax(dim=1)
    if cfg.score == "max_logit":
        return -class_scores.amax(dim=1)
    if cfg.score == "entropy":
        log_p = class_scores.log_softmax(dim=1)
        return -(log_p.exp() * log_p).sum(dim=1)
    return -class_scores.logsumexp(dim=1)


def refinement_keep(pred_logits: Tensor, cfg: ScoringConfig) -> Tensor:
    """Which queries are confident "stuff" (5.4): 1.0 where kept, 0.0 elsewhere.

    A query is kept when label_q = argmax softmax(C_q) over all K + 1 is not no-object, is one of
    `cfg.refine_classes`, and its probability is > `cfg.refine_score_threshold`.
    pred_logits: (batch_size, num_queries, num_classes + 1) float.
    Returns (batch_size, num_queries), the dtype of pred_logits.
    """
    _check_logits(pred_logits)
    _check_refine_classes(pred_logits, cfg)
    score, label = pred_logits.softmax(dim=-1).max(dim=-1)
    classes = torch.tensor(cfg.refine_classes, dtype=label.dtype, device=label.device)
    in_classes = (label.unsqueeze(-1) == classes).any(dim=-1)
    not_void = label != (pred_logits.shape[-1] - 1)
    keep = in_classes & not_void & (score > cfg.refine_score_threshold)
    return keep.to(pred_logits.dtype)


def refinement_weights(pred_logits: Tensor, cfg: ScoringConfig) -> Tensor:
    """keep_q * score_q: the factor of sigmoid(M_q) in the refinement response R_q (0 for queries not kept).

    pred_logits: (batch_size, num_queries, num_classes + 1) float.
    Returns (batch_size, num_queries), the dtype of pred_logits.
    """
    score = pred_logits.softmax(dim=-1).amax(dim=-1)
    return refinement_keep(pred_logits, cfg) * score


def refinement_response(pred_logits: Tensor, pred_masks: Tensor, cfg: ScoringConfig) -> Tensor:
    """R(x) = max over kept queries of score_q * sigmoid(M_q)(x), 0 where no query is kept.

    pred_logits: (batch_size, num_queries, num_classes + 1) float.
    pred_masks: (batch_size, num_queries, height, width) float mask logits, any resolution.
    Returns (batch_size, height, width), same dtype.
    """
    _check_outputs(pred_logits, pred_masks)
    weights = refinement_weights(pred_logits, cfg)
    return (weights[:, :, None, None] * pred_masks.sigmoid()).amax(dim=1)


def stuff_mask(response: Tensor, keep: Tensor, cfg: ScoringConfig) -> Tensor:
    """B(x): 1.0 where R(x) >= `refine_mask_threshold` AND the image has >= `refine_min_queries` kept queries.

    The kept-query rule is a multiplication, not a branch: an image with fewer kept queries gets B = 0.
    response: (batch_size, height, width) float, R(x) from `refinement_response`.
    keep: (batch_size, num_queries) float 0/1 from `refinement_keep`.
    Returns (batch_size, height, width), the dtype of response.
    """
    if response.ndim != 3 or keep.ndim != 2 or response.shape[0] != keep.shape[0]:
        raise ValueError(
            "response must be (batch_size, height, width) and keep (batch_size, num_queries) with the same "
            f"batch_size, got {tuple(response.shape)} and {tuple(keep.shape)}"
        )
    enabled = (keep.sum(dim=1) >= cfg.refine_min_queries).to(response.dtype)  # (B,)
    return (response >= cfg.refine_mask_threshold).to(response.dtype) * enabled[:, None, None]


def refine_anomaly(anomaly: Tensor, response: Tensor, keep: Tensor, cfg: ScoringConfig) -> Tensor:
    """f'(x) = f(x) * (1 - B(x)): zero the score inside confident stuff masks (see `stuff_mask`).

    anomaly: (batch_size, height, width) float f. response: (batch_size, height, width) float R, same size.
    keep: (batch_size, num_queries) float 0/1. Returns (batch_size, height, width), the dtype of anomaly.
    """
    if anomaly.shape != response.shape:
        raise ValueError(
            f"anomaly {tuple(anomaly.shape)} and response {tuple(response.shape)} must have the same shape"
        )
    return anomaly * (1.0 - stuff_mask(response, keep, cfg))


def tta_batch(images: Tensor, cfg: ScoringConfig) -> Tensor:
    """The batch to feed the model: `images`, followed by their horizontal flips when `cfg.flip_tta`.

    images: (batch_size, 3, height, width). Returns (batch_size, ...) or (2 * batch_size, ...), same dtype.
    `postprocess` / `segment` with the same cfg expect this layout and merge the halves back.
    """
    return torch.cat([images, images.flip(-1)], dim=0) if cfg.flip_tta else images


def merge_flip_tta(anomaly: Tensor, class_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of each original's maps and its flipped copy's maps flipped back (batch layout of `tta_batch`).

    anomaly: (2 * batch_size, height, width) float; class_scores: (2 * batch_size, num_classes, height, width).
    Returns (batch_size, height, width) and (batch_size, num_classes, height, width).
    """
    n = anomaly.shape[0]
    if n % 2 or class_scores.shape[0] != n:
        raise ValueError(
            "flip TTA needs a batch of originals followed by their flipped copies (even batch_size), "
            f"got anomaly {tuple(anomaly.shape)} and class_scores {tuple(class_scores.shape)}"
        )
    half = n // 2
    merged_anomaly = 0.5 * (anomaly[:half] + anomaly[half:].flip(-1))
    merged_scores = 0.5 * (class_scores[:half] + class_scores[half:].flip(-1))
    return merged_anomaly, merged_scores


# ----------------------------------------------------------------------------------------------------------
# Whole pipeline


def _crop_resize(x: Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> Tensor:
    """Remove the padding (keep the top-left input_size), then bilinear resize (align_corners=False)."""
    x = x[..., : input_size[0], : input_size[1]]
    if tuple(input_size) == tuple(output_size):
        return x
    return F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _full_resolution_maps(
    pred_logits: Tensor,
    pred_masks: Tensor,
    padded: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    cfg: ScoringConfig,
) -> tuple[Tensor, Tensor | None]:
    """L (B, K, H_out, W_out) and R (B, H_out, W_out) in the official order, over chunks of queries.

    Everything after the upsampling is per pixel, so each chunk is cropped right after it is upsampled.
    L is a sum over queries (chunks add up); R_q is cropped and resized per query before the max over queries,
    as in the authors' code (the refinement channels go through sem_seg_postprocess). mask_fn "softmax" over
    queries with several chunks takes a first pass for the per-pixel logsumexp over all queries.
    """
    num_queries = pred_masks.shape[1]
    step = num_queries if cfg.chunk_queries is None else min(cfg.chunk_queries, num_queries)
    bounds = [(s, min(s + step, num_queries)) for s in range(0, num_queries, step)]
    probs = class_probabilities(pred_logits, cfg)  # (B, Q, K)
    weights = refinement_weights(pred_logits, cfg) if cfg.refine else None  # (B, Q)

    def chunk_logits(start: int, stop: int) -> Tensor:  # (B, stop - start, H_in, W_in)
        return _upsample(pred_masks[:, start:stop], padded)[..., : input_size[0], : input_size[1]]

    log_norm = None  # (B, 1, H_in, W_in): logsumexp over all queries, for mask_fn "softmax" in chunks
    if cfg.mask_fn == "softmax" and len(bounds) > 1:
        for start, stop in bounds:
            lse = chunk_logits(start, stop).logsumexp(dim=1, keepdim=True)
            log_norm = lse if log_norm is None else torch.logaddexp(log_norm, lse)

    scores: Tensor | None = None
    response: Tensor | None = None
    for start, stop in bounds:
        logits = chunk_logits(start, stop)
        sig = logits.sigmoid() if (cfg.refine or cfg.mask_fn == "sigmoid") else None
        if cfg.mask_fn == "sigmoid":
            masks = sig
        elif cfg.mask_fn == "softmax":
            masks = logits.softmax(dim=1) if log_norm is None else (logits - log_norm).exp()
        else:
            masks = logits
        if scores is None:
            scores = _combine(probs[:, start:stop], masks)
        else:  # accumulate in place: no second (B, K, H_in, W_in) buffer
            b, k, h, w = scores.shape
            flat = masks.reshape(b, stop - start, h * w)
            scores.view(b, k, h * w).baddbmm_(probs[:, start:stop].transpose(1, 2), flat)
        if weights is not None:
            r = _crop_resize(weights[:, start:stop, None, None] * sig, input_size, output_size).amax(dim=1)
            response = r if response is None else torch.maximum(response, r)
    return _crop_resize(scores, input_size, output_size), response


def _quarter_resolution_maps(
    pred_logits: Tensor,
    pred_masks: Tensor,
    padded: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    cfg: ScoringConfig,
) -> tuple[Tensor, Tensor | None]:
    """L and R combined at mask resolution, then upsampled / cropped / resized together (K + 1 channels)."""
    num_classes = pred_logits.shape[-1] - 1
    maps = class_scores(pred_logits, pred_masks, cfg)  # (B, K, h, w)
    if cfg.refine:
        maps = torch.cat([maps, refinement_response(pred_logits, pred_masks, cfg).unsqueeze(1)], dim=1)
    maps = _crop_resize(_upsample(maps, padded), input_size, output_size)
    return maps[:, :num_classes], (maps[:, num_classes] if cfg.refine else None)


def postprocess(
    pred_logits: Tensor,
    pred_masks: Tensor,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    cfg: ScoringConfig = ScoringConfig(),
) -> tuple[Tensor, Tensor]:
    """The whole of 5.2-5.5 on network outputs: anomaly score and class map at `output_size`.

    pred_logits: (batch_size, num_queries, num_classes + 1) float, no-object last.
    pred_masks: (batch_size, num_queries, H_pad / 4, W_pad / 4) float mask logits over the PADDED canvas
        (stride 4), as `Mask2Anomaly` returns them.
    input_size: (H_in, W_in), the unpadded size of the image fed to the model (<= H_pad, W_pad); the rest of
        the canvas is padding and is cropped away BEFORE resizing, so it never leaks into the output.
    output_size: (H_out, W_out), usually the original image size before any resizing.
    With `cfg.flip_tta` the batch must be `tta_batch(images, cfg)`'s layout (originals then flipped copies),
    and batch_size halves in the outputs.
    Returns anomaly (batch_size, H_out, W_out) float32, higher = more anomalous (refined if `cfg.refine`), and
    class_scores (batch_size, num_classes, H_out, W_out) float32, L(k, x) (its argmax is the semantic map).
    Computation is float32 whatever the outputs' dtype.
    """
    _check_outputs(pred_logits, pred_masks)
    input_size = _check_size("input_size", input_size)
    output_size = _check_size("output_size", output_size)
    padded = (pred_masks.shape[2] * MASK_STRIDE, pred_masks.shape[3] * MASK_STRIDE)
    if input_size[0] > padded[0] or input_size[1] > padded[1]:
        raise ValueError(
            f"input_size {input_size} exceeds the padded canvas {padded} covered by pred_masks "
            f"{tuple(pred_masks.shape)} at stride {MASK_STRIDE}"
        )
    if cfg.refine:
        _check_refine_classes(pred_logits, cfg)
    pred_logits = pred_logits.float()
    pred_masks = pred_masks.float()

    maps = _full_resolution_maps if cfg.resolution == "full" else _quarter_resolution_maps
    scores, response = maps(pred_logits, pred_masks, padded, input_size, output_size, cfg)
    anomaly = anomaly_from_class_scores(scores, cfg)
    if response is not None:
        anomaly = refine_anomaly(anomaly, response, refinement_keep(pred_logits, cfg), cfg)
    if cfg.flip_tta:
        anomaly, scores = merge_flip_tta(anomaly, scores)
    return anomaly, scores


def segment(
    pred_logits: Tensor,
    pred_masks: Tensor,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    cfg: ScoringConfig = ScoringConfig(),
) -> tuple[Tensor, Tensor]:
    """`postprocess`, with the class map reduced to trainIds.

    Arguments as `postprocess`. Returns anomaly (batch_size, H_out, W_out) float32 and semantic
    (batch_size, H_out, W_out) int64, argmax over the num_classes class channels of L.
    """
    anomaly, scores = postprocess(pred_logits, pred_masks, input_size, output_size, cfg)
    return anomaly, scores.argmax(dim=1)


# ----------------------------------------------------------------------------------------------------------
# Image-level entry point


def resize_shortest_edge(h: int, w: int, short: int = 1024, max_long: int = 2048) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge test size (METHOD 5.1): shorter side to `short`, longer side capped.

    Returns (new_h, new_w), each rounded as detectron2 does (int(x + 0.5)): 1024x2048 stays, 720x1280 ->
    1024x1820.
    """
    for name, v in (("h", h), ("w", w), ("short", short), ("max_long", max_long)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"resize_shortest_edge: {name} must be a positive integer, got {v!r}")
    scale = short * 1.0 / min(h, w)
    new_h, new_w = (short, scale * w) if h < w else (scale * h, short)
    if max(new_h, new_w) > max_long:
        scale = max_long * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255 RGB), got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")
    return image


def anomaly_segmentation(
    model: nn.Module,
    image: np.ndarray,
    cfg: ScoringConfig = ScoringConfig(),
    input_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly score and semantic map of one RGB image, at the image's own resolution.

    model: a `Mask2Anomaly` (or anything with its contract: float (B, 3, H, W) RGB 0-255 in, a mapping with
        "pred_logits" and "pred_masks" over the padded canvas out), in eval mode. It runs once, on a batch of 2
        (image and its flip) when `cfg.flip_tta`, under torch.inference_mode on the model's device and dtype.
    image: (H, W, 3) uint8 RGB.
    input_size: (h, w) the image is resized to (bilinear, antialiased when shrinking and rounded to 0-255
        integers, like detectron2's PIL resize) before the model; e.g. `resize_shortest_edge(H, W)` for the
        authors' test sizing. None feeds the image as is.
    Returns anomaly (H, W) float32, higher = more anomalous, and semantic (H, W) uint8 Cityscapes trainIds.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    size = (height, width) if input_size is None else _check_size("input_size", input_size)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).unsqueeze(0).float()
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0.0, 255.0)
        out = model(tta_batch(x.to(dtype), cfg))
        anomaly, semantic = segment(out["pred_logits"], out["pred_masks"], size, (height, width), cfg)
    return (
        anomaly[0].to(torch.float32).cpu().numpy(),
        semantic[0].to(torch.uint8).cpu().numpy(),
    )


__all__ = [
    "MASK_STRIDE",
    "TABLE3_ROWS",
    "ScoringConfig",
    "anomaly_from_class_scores",
    "anomaly_segmentation",
    "class_probabilities",
    "class_scores",
    "mask_probabilities",
    "merge_flip_tta",
    "postprocess",
    "refine_anomaly",
    "refinement_keep",
    "refinement_response",
    "refinement_weights",
    "resize_shortest_edge",
    "segment",
    "stuff_mask",
    "tta_batch",
]
