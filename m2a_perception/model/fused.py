"""The network and its scoring as one module with a fixed input size and plain tensor outputs.

`FusedMask2Anomaly(model, spec)(image)` returns `(anomaly_score, semantic)`: what `m2a-export onnx` writes to
ONNX (normalisation, network and scoring in one graph) and what an engine built from it returns. Shapes depend
on `GraphSpec` only, never on the data: the refinement's kept queries are 0/1 weights, not an index.

Outputs (`OUTPUT_NAMES`), for an input image (1, 3, H, W) float32 RGB 0-255 (H, W multiples of 32):
    anomaly_score   (1, H_o, W_o) float32, higher = more anomalous (the scoring's variant, refined if set)
    semantic        "labels": (1, H_o, W_o) int32 trainIds; "scores": (1, K, H_o, W_o) float32 class map L
with (H_o, W_o) = (H, W) for scoring resolution "full" (the authors' order) and (H / 4, W / 4) for "quarter"
(combined at mask resolution; the caller upsamples to the frame).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .scoring import (
    MASK_STRIDE,
    ScoringConfig,
    anomaly_from_class_scores,
    class_scores,
    merge_flip_tta,
    postprocess,
    refine_anomaly,
    refinement_keep,
    refinement_response,
    tta_batch,
)

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "SEMANTIC_KINDS", "FusedMask2Anomaly", "GraphSpec"]

INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, str] = ("anomaly_score", "semantic")
SEMANTIC_KINDS: tuple[str, ...] = ("labels", "scores")
SIZE_DIVISOR = 32  # the network pads to this; a fixed-size graph takes multiples of it (no padding to crop)


def _scoring_from_dict(data: object) -> ScoringConfig:
    if not isinstance(data, dict):
        raise ValueError(f"scoring must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(ScoringConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown scoring keys {unknown}; expected some of {sorted(names)}")
    return ScoringConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class GraphSpec:
    """What a fused graph computes: input size, the scoring variant and the form of the semantic output.

    input_size: (height, width) of the image the graph takes, multiples of 32.
    semantic: "labels" (int32 argmax) or "scores" (the float class map L, to resize before the argmax).
    scoring: the variant, refinement and flip TTA; `resolution` sets the output resolution ("full" = input
        size, "quarter" = 1/4). `chunk_queries` is always None here (one upsampling, the simplest graph).
    """

    input_size: tuple[int, int]
    semantic: str = "labels"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        size = self.input_size
        if (
            not isinstance(size, tuple | list)
            or len(size) != 2
            or any(not isinstance(s, int) or isinstance(s, bool) or s < SIZE_DIVISOR or s % SIZE_DIVISOR for s in size)
        ):
            raise ValueError(f"input_size must be (height, width), positive multiples of {SIZE_DIVISOR}, got {size!r}")
        object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        if self.semantic not in SEMANTIC_KINDS:
            raise ValueError(f"semantic must be one of {SEMANTIC_KINDS}, got {self.semantic!r}")
        if not isinstance(self.scoring, ScoringConfig):
            raise ValueError(f"scoring must be a ScoringConfig, got {type(self.scoring).__name__}")
        if self.scoring.chunk_queries is not None:
            object.__setattr__(self, "scoring", self.scoring.replace(chunk_queries=None))

    @property
    def output_size(self) -> tuple[int, int]:
        """(H_o, W_o) of both outputs: the input size, or 1/4 of it for scoring resolution "quarter"."""
        height, width = self.input_size
        if self.scoring.resolution == "quarter":
            return height // MASK_STRIDE, width // MASK_STRIDE
        return height, width

    def output_shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        """Shape of each output, keyed by `OUTPUT_NAMES`."""
        size = self.output_size
        semantic = (1, *size) if self.semantic == "labels" else (1, num_classes, *size)
        return {OUTPUT_NAMES[0]: (1, *size), OUTPUT_NAMES[1]: semantic}

    def same_scoring(self, other: ScoringConfig) -> bool:
        """Whether `other` computes what this graph computes (`chunk_queries` changes no result)."""
        return self.scoring == other.replace(chunk_queries=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; `from_dict` reads it back."""
        scoring = dataclasses.asdict(self.scoring)
        scoring["refine_classes"] = list(self.scoring.refine_classes)
        return {"input_size": list(self.input_size), "semantic": self.semantic, "scoring": scoring}

    @classmethod
    def from_dict(cls, data: object) -> GraphSpec:
        """Inverse of `to_dict`; unknown or missing keys are a ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"graph spec must be a mapping, got {type(data).__name__}")
        expected = {"input_size", "semantic", "scoring"}
        if set(data) != expected:
            raise ValueError(f"graph spec needs exactly the keys {sorted(expected)}, got {sorted(data)}")
        size = data["input_size"]
        return cls(
            input_size=tuple(size) if isinstance(size, list) else size,
            semantic=data["semantic"],
            scoring=_scoring_from_dict(data["scoring"]),
        )


def _quarter_maps(pred_logits: Tensor, pred_masks: Tensor, cfg: ScoringConfig) -> tuple[Tensor, Tensor]:
    """Anomaly (B, h, w) and class map (B, K, h, w) at mask resolution, with refinement and flip TTA as `cfg`."""
    scores = class_scores(pred_logits, pred_masks, cfg)
    anomaly = anomaly_from_class_scores(scores, cfg)
    if cfg.refine:
        response = refinement_response(pred_logits, pred_masks, cfg)
        anomaly = refine_anomaly(anomaly, response, refinement_keep(pred_logits, cfg), cfg)
    if cfg.flip_tta:
        anomaly, scores = merge_flip_tta(anomaly, scores)
    return anomaly, scores


class FusedMask2Anomaly(nn.Module):
    """Mask2Anomaly + scoring: image (B, 3, H, W) float RGB 0-255 -> (anomaly_score, semantic), see the module doc.

    The wrapped model normalises the image itself; nothing here depends on the data's values.
    """

    def __init__(self, model: nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        config = getattr(model, "config", None)
        divisor = getattr(config, "size_divisibility", SIZE_DIVISOR)
        if any(s % divisor for s in spec.input_size):
            raise ValueError(
                f"input_size {spec.input_size} must be multiples of the model's size_divisibility {divisor}"
            )
        num_classes = getattr(config, "num_classes", None)
        if num_classes is not None and spec.scoring.refine and max(spec.scoring.refine_classes) >= num_classes:
            raise ValueError(f"scoring.refine_classes {spec.scoring.refine_classes} must be class ids < {num_classes}")
        self.model = model
        self.spec = spec

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image (B, 3, H, W) with (H, W) = spec.input_size -> anomaly (B, H_o, W_o), semantic (see module doc)."""
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[2:]) != self.spec.input_size:
            raise ValueError(
                f"image must be (batch, 3, {self.spec.input_size[0]}, {self.spec.input_size[1]}) RGB, "
                f"got shape {tuple(image.shape)}"
            )
        cfg = self.spec.scoring
        out = self.model(tta_batch(image, cfg))
        pred_logits, pred_masks = out["pred_logits"], out["pred_masks"]
        if cfg.resolution == "full":
            size = self.spec.input_size
            anomaly, scores = postprocess(pred_logits, pred_masks, size, size, cfg)
        else:
            anomaly, scores = _quarter_maps(pred_logits.float(), pred_masks.float(), cfg)
        if self.spec.semantic == "labels":
            return anomaly, scores.argmax(dim=1).to(torch.int32)
        return anomaly, scores
