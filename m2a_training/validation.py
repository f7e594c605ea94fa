"""Periodic validation during training: mIoU on a semantic set, AuPRC / FPR95 on an anomaly set.

One forward pass per image; the semantic map and every requested anomaly score come from the same outputs
(`m2a_perception.model.scoring.segment`). The metric arithmetic sits behind `_miou_accumulator` and
`_anomaly_accumulator`, the only two places that know where the metrics come from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.classes import class_names
from m2a_perception.model.scoring import ScoringConfig, resize_shortest_edge, segment

from .data.cityscapes import CityscapesSemantic
from .data.synthroad_dataset import LabelledFrame, SynthRoadScenes
from .train_config import ValidationSetSection

IGNORE_LABEL = 255

# The scores reported by default: the method's (with mask refinement) and the max-softmax baseline.
DEFAULT_SCORES: dict[str, ScoringConfig] = {
    "m2a": ScoringConfig(),
    "max_softmax": ScoringConfig(score="max_softmax", refine=False),
}


@dataclass(frozen=True)
class Frame:
    """One validation image: RGB (H, W, 3) uint8, trainIds (H, W) uint8 or None, anomaly 0/1/255 or None."""

    image: np.ndarray
    semantic: np.ndarray | None
    anomaly: np.ndarray | None


def validation_frames(section: ValidationSetSection) -> Iterator[Frame]:
    """The frames of one configured validation set."""
    if section.dataset == "synthroad":
        synth = section.synthroad
        data: Any = SynthRoadScenes(synth.num_images, synth.scene_config(), first_seed=synth.first_seed, cache=False)
        count = len(data) if section.max_images is None else min(section.max_images, len(data))
        for i in range(count):
            f: LabelledFrame = data.frame(i)
            yield Frame(f.image, f.semantic, f.anomaly)
        return
    if section.root is None:
        raise ValueError(f"validation dataset {section.dataset!r} needs a root")
    if section.dataset == "cityscapes":
        data = CityscapesSemantic(section.root, section.split)
        count = len(data) if section.max_images is None else min(section.max_images, len(data))
        for i in range(count):
            image, label = data[i]
            yield Frame(image, label, None)
        return
    from .data.benchmarks import open_benchmark

    bench = open_benchmark(section.dataset, section.root)
    count = len(bench) if section.max_images is None else min(section.max_images, len(bench))
    for i in range(count):
        frame = bench[i]
        yield Frame(frame.image, frame.semantic, frame.anomaly)


# ----------------------------------------------------------------------------------------------------------
# Metric accumulators: the evaluation package's streaming metrics (m2a_training.metrics)


class _SemanticAccumulator:
    """mIoU as the evaluation reports it (classes in the ground truth or the prediction) and over the classes
    present in the ground truth only ("miou_present": the generated scenes never show train or motorcycle)."""

    def __init__(self, num_classes: int, per_class: bool = False) -> None:
        from .metrics import ConfusionAccumulator

        self.confusion = ConfusionAccumulator(num_classes, ignore=IGNORE_LABEL)
        self.per_class = per_class

    def update(self, prediction: np.ndarray, label: np.ndarray) -> None:
        self.confusion.update(prediction, label)

    def compute(self) -> dict[str, float]:
        result = self.confusion.compute()
        present = result.confusion.sum(1) > 0
        iou = np.asarray(result.iou)
        out = {"miou": result.miou, "miou_present": float(np.mean(iou[present])) if present.any() else float("nan")}
        if self.per_class:
            names = class_names(len(iou))
            out.update({f"iou/{names[k]}": float(iou[k]) for k in np.flatnonzero(present)})
        return out


class _AnomalyAccumulator:
    """Pixel AuPRC and FPR95 in the `exact` mode (every pixel at its own score, first point at TPR >= 0.95)."""

    def __init__(self) -> None:
        from .metrics import PixelAccumulator

        self.pixels = PixelAccumulator("exact")

    def update(self, score: np.ndarray, label: np.ndarray) -> None:
        self.pixels.update(score.astype(np.float32), label)

    def compute(self) -> dict[str, float]:
        result = self.pixels.compute()
        return {"auprc": result.auprc, "fpr95": result.fpr95}


def _miou_accumulator(num_classes: int, per_class: bool = False) -> _SemanticAccumulator:
    return _SemanticAccumulator(num_classes, per_class)


def _anomaly_accumulator() -> _AnomalyAccumulator:
    return _AnomalyAccumulator()


# ----------------------------------------------------------------------------------------------------------
# Running the model


@torch.no_grad()
def predict(
    model: nn.Module,
    image: np.ndarray,
    scores: Mapping[str, ScoringConfig],
    short_edge: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One forward pass -> semantic map (H, W) uint8 and each named anomaly score (H, W) float32.

    With `short_edge`, the image is resized first (shorter side to short_edge, longer side at most twice that,
    as the authors' evaluator does); the outputs are at the image's own size either way.
    """
    param = next(model.parameters())
    size = (int(image.shape[0]), int(image.shape[1]))
    x = torch.from_numpy(np.array(image, copy=True)).to(param.device).permute(2, 0, 1)[None].float()
    input_size = size
    if short_edge is not None:
        input_size = resize_shortest_edge(size[0], size[1], short_edge, 2 * short_edge)
        if input_size != size:
            x = F.interpolate(x, size=input_size, mode="bilinear", align_corners=False, antialias=True)
            x = x.round().clamp(0.0, 255.0)
    out = model(x)
    semantic, maps = None, {}
    for name, cfg in scores.items():
        anomaly, sem = segment(out["pred_logits"], out["pred_masks"], input_size, size, cfg)
        maps[name] = anomaly[0].float().cpu().numpy()
        if semantic is None:
            semantic = sem[0].to(torch.uint8).cpu().numpy()
    if semantic is None:
        _, sem = segment(out["pred_logits"], out["pred_masks"], input_size, size, ScoringConfig(refine=False))
        semantic = sem[0].to(torch.uint8).cpu().numpy()
    return semantic, maps


def evaluate_frames(
    model: nn.Module,
    frames: Iterable[Frame],
    num_classes: int,
    scores: Mapping[str, ScoringConfig] = DEFAULT_SCORES,
    short_edge: int | None = None,
    per_class: bool = False,
) -> dict[str, float]:
    """mIoU over the frames with semantic labels; `<score>/auprc`, `<score>/fpr95` over those with anomaly labels.

    `per_class` adds `iou/<class name>` for every class present in the ground truth.
    """
    was_training = model.training
    model.eval()
    miou = _miou_accumulator(num_classes, per_class)
    anomaly = {name: _anomaly_accumulator() for name in scores}
    seen_semantic = seen_anomaly = False
    try:
        for frame in frames:
            semantic, maps = predict(model, frame.image, scores if frame.anomaly is not None else {}, short_edge)
            if frame.semantic is not None:
                miou.update(semantic, frame.semantic)
                seen_semantic = True
            if frame.anomaly is not None:
                for name, acc in anomaly.items():
                    acc.update(maps[name], frame.anomaly)
                seen_anomaly = True
    finally:
        model.train(was_training)
    results: dict[str, float] = {}
    if seen_semantic:
        results.update(miou.compute())
    if seen_anomaly:
        for name, acc in anomaly.items():
            results.update({f"{name}/{k}": v for k, v in acc.compute().items()})
    return results


def validate(model: nn.Module, semantic: ValidationSetSection | None, anomaly: ValidationSetSection | None,
             num_classes: int) -> dict[str, float]:  # fmt: skip
    """The configured validation: mIoU on `semantic` (if set), AuPRC / FPR95 (and mIoU) on `anomaly` (if set)."""
    results: dict[str, float] = {}
    if semantic is not None:
        results.update(evaluate_frames(model, validation_frames(semantic), num_classes, {}, semantic.short_edge))
    if anomaly is not None:
        found = evaluate_frames(model, validation_frames(anomaly), num_classes, short_edge=anomaly.short_edge)
        if semantic is not None:
            found = {(f"anomaly_set/{k}" if k == "miou" else k): v for k, v in found.items()}
        results.update(found)
    return results


__all__ = ["DEFAULT_SCORES", "Frame", "evaluate_frames", "predict", "validate", "validation_frames"]
