"""Configuration of the Mask2Anomaly network: one frozen dataclass per component, composed by `M2AConfig`.

Only `build_model` (in `mask2anomaly.py`) reads these; modules take keyword-only scalars. Every count the
method fixes (9 decoder layers, 3 feature levels, 4 sampling points) is a field here, never a literal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from m2a_perception.classes import CITYSCAPES_CLASSES  # noqa: F401  (re-exported)

AttentionKind = Literal["global", "masked"]


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet with bottleneck blocks in detectron2's layout (stride on the 3x3 conv, frozen batch norm)."""

    stem_channels: int = 64
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)  # res2..res5
    bottleneck_channels: tuple[int, ...] = (64, 128, 256, 512)
    out_channels: tuple[int, ...] = (256, 512, 1024, 2048)

    def __post_init__(self) -> None:
        _positive("backbone.stem_channels", self.stem_channels)
        lengths = {len(self.stage_blocks), len(self.bottleneck_channels), len(self.out_channels)}
        if lengths != {4}:
            raise ValueError(
                "backbone.stage_blocks, bottleneck_channels and out_channels must each have 4 entries "
                f"(res2..res5), got {self.stage_blocks}, {self.bottleneck_channels}, {self.out_channels}"
            )
        for name in ("stage_blocks", "bottleneck_channels", "out_channels"):
            for v in getattr(self, name):
                _positive(f"backbone.{name}", v)


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Multi-scale deformable-attention pixel decoder (Mask2Former's MSDeformAttnPixelDecoder)."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_encoder_layers: int = 6
    num_heads: int = 8
    num_feature_levels: int = 3  # deformable-encoder inputs: the last N backbone stages (res3..res5)
    num_points: int = 4
    ffn_dim: int = 1024
    norm_groups: int = 32

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _positive(f"pixel_decoder.{f.name}", getattr(self, f.name))
        if self.conv_dim % self.num_heads:
            raise ValueError(
                f"pixel_decoder.conv_dim ({self.conv_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.conv_dim % self.norm_groups:
            raise ValueError(
                f"pixel_decoder.conv_dim ({self.conv_dim}) must be divisible by norm_groups ({self.norm_groups})"
            )
        if self.num_feature_levels > 3:
            raise ValueError(
                f"pixel_decoder.num_feature_levels must be 1..3 (res5, res4, res3), got {self.num_feature_levels}"
            )


@dataclass(frozen=True)
class DecoderConfig:
    """Transformer decoder: global mask attention (Mask2Anomaly) or Mask2Former's masked attention."""

    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    num_decoder_layers: int = 9  # the authors' DEC_LAYERS=10 counts the initial prediction as a layer
    attention: AttentionKind = "global"
    mask_threshold: float = 0.5  # sigmoid level that separates a query's foreground from its background

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_queries", "num_heads", "ffn_dim", "num_decoder_layers"):
            _positive(f"decoder.{name}", getattr(self, name))
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"decoder.hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.attention not in ("global", "masked"):
            raise ValueError(f"decoder.attention must be 'global' or 'masked', got {self.attention!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"decoder.mask_threshold must be in (0, 1), got {self.mask_threshold}")


@dataclass(frozen=True)
class M2AConfig:
    """The whole network. `M2AConfig()` is the paper's ResNet-50 model; `M2AConfig.preset("small")` the CPU one."""

    num_classes: int = 19
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        _positive("num_classes", self.num_classes)
        _positive("size_divisibility", self.size_divisibility)
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError(f"pixel_mean and pixel_std need 3 values (RGB), got {self.pixel_mean}, {self.pixel_std}")
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError(f"pixel_std must be positive, got {self.pixel_std}")
        if self.decoder.hidden_dim != self.pixel_decoder.conv_dim:
            raise ValueError(
                f"decoder.hidden_dim ({self.decoder.hidden_dim}) must equal pixel_decoder.conv_dim "
                f"({self.pixel_decoder.conv_dim}): the decoder reads the pixel decoder's maps without projection"
            )
        if self.pixel_decoder.mask_dim != self.decoder.hidden_dim:
            raise ValueError(
                f"pixel_decoder.mask_dim ({self.pixel_decoder.mask_dim}) must equal decoder.hidden_dim "
                f"({self.decoder.hidden_dim}): mask embeddings are dotted with the mask features"
            )

    @staticmethod
    def preset(name: str) -> M2AConfig:
        """A named configuration: 'r50' (the paper's) or 'small' (CPU demos and tests)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None

    def replace(self, **changes: Any) -> M2AConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of str/int/float/list, safe for YAML and `torch.load(weights_only=True)`."""

        def plain(v: Any) -> Any:
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> M2AConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a mapping, got {type(data).__name__}")
        parts = {"backbone": BackboneConfig, "pixel_decoder": PixelDecoderConfig, "decoder": DecoderConfig}
        kwargs: dict[str, Any] = {}
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; expected some of {sorted(top)}")
        for key, value in data.items():
            if key in parts:
                sub = parts[key]
                if not isinstance(value, dict):
                    raise ValueError(f"model config '{key}' must be a mapping, got {type(value).__name__}")
                names = {f.name for f in dataclasses.fields(sub)}
                bad = sorted(set(value) - names)
                if bad:
                    raise ValueError(f"unknown keys {bad} in model config '{key}'; expected some of {sorted(names)}")
                kwargs[key] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            else:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


PRESETS: dict[str, M2AConfig] = {
    "r50": M2AConfig(),
    # Same code paths as r50 (GMA, 3 levels, deformable encoder, FPN level) with fewer channels, layers and
    # queries, so a 256x512 forward pass runs in a few tens of milliseconds on a laptop CPU.
    "small": M2AConfig(
        backbone=BackboneConfig(
            stem_channels=16,
            stage_blocks=(1, 1, 2, 1),
            bottleneck_channels=(16, 32, 64, 96),
            out_channels=(32, 64, 128, 192),
        ),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=64, mask_dim=64, num_encoder_layers=2, num_heads=4, ffn_dim=128, norm_groups=8
        ),
        decoder=DecoderConfig(hidden_dim=64, num_queries=20, num_heads=4, ffn_dim=128, num_decoder_layers=3),
    ),
}
