"""Mask2Anomaly: ResNet backbone -> deformable pixel decoder -> GMA transformer decoder.

`model(images)` takes RGB 0-255 float images of any size, normalises them and zero-pads bottom/right to a
multiple of `size_divisibility` (32) itself, and returns the authors' output names.
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import ResNet
from .config import M2AConfig
from .pixel_decoder import PixelDecoder
from .transformer_decoder import TransformerDecoder


class PredictionSet(TypedDict):
    pred_logits: Tensor  # (batch_size, num_queries, num_classes + 1), last = no-object
    pred_masks: Tensor  # (batch_size, num_queries, padded_height / 4, padded_width / 4), logits


class M2AOutput(TypedDict):
    """The network's output: the final prediction plus the earlier ones (deep supervision, training only)."""

    pred_logits: Tensor  # (batch_size, num_queries, num_classes + 1)
    pred_masks: Tensor  # (batch_size, num_queries, padded_height / 4, padded_width / 4), logits
    aux_outputs: list[PredictionSet]  # num_decoder_layers earlier predictions, first to last; [] in eval


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """Smallest (H, W) >= (height, width) that are multiples of `divisor`."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


class Mask2Anomaly(nn.Module):
    """The Mask2Anomaly network; `Mask2Anomaly(M2AConfig())` is the paper's ResNet-50 model."""

    def __init__(self, config: M2AConfig | None = None) -> None:
        super().__init__()
        config = M2AConfig() if config is None else config
        self.config = config
        self.backbone = ResNet(
            stem_channels=config.backbone.stem_channels,
            stage_blocks=config.backbone.stage_blocks,
            bottleneck_channels=config.backbone.bottleneck_channels,
            out_channels=config.backbone.out_channels,
        )
        pd = config.pixel_decoder
        self.pixel_decoder = PixelDecoder(
            in_channels=[int(info["num_chs"]) for info in self.backbone.feature_info],
            conv_dim=pd.conv_dim,
            mask_dim=pd.mask_dim,
            num_encoder_layers=pd.num_encoder_layers,
            num_heads=pd.num_heads,
            num_feature_levels=pd.num_feature_levels,
            num_points=pd.num_points,
            ffn_dim=pd.ffn_dim,
            norm_groups=pd.norm_groups,
        )
        dc = config.decoder
        self.transformer_decoder = TransformerDecoder(
            num_classes=config.num_classes,
            hidden_dim=dc.hidden_dim,
            num_queries=dc.num_queries,
            num_heads=dc.num_heads,
            ffn_dim=dc.ffn_dim,
            num_layers=dc.num_decoder_layers,
            num_feature_levels=pd.num_feature_levels,
            mask_dim=pd.mask_dim,
            global_attention=dc.attention == "global",
            mask_threshold=dc.mask_threshold,
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B,3,H,W) RGB 0-255 -> normalised, zero-padded (B,3,H_pad,W_pad) (padding is 0 after normalising)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (batch, 3, height, width) RGB, got shape {tuple(images.shape)}")
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        height, width = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = padded_size(height, width, self.config.size_divisibility)
        if (pad_h, pad_w) != (height, width):
            x = F.pad(x, (0, pad_w - width, 0, pad_h - height))
        return x

    def forward(self, images: Tensor, *, with_aux: bool | None = None) -> M2AOutput:
        """images (B,3,H,W) float RGB 0-255 -> M2AOutput; `with_aux` defaults to `self.training`."""
        with_aux = self.training if with_aux is None else with_aux
        features = self.backbone.forward_features(self.preprocess(images))
        mask_features, multi_scale = self.pixel_decoder(features)
        class_logits, mask_logits, aux = self.transformer_decoder(multi_scale, mask_features, with_aux=with_aux)
        return {"pred_logits": class_logits, "pred_masks": mask_logits, "aux_outputs": aux}


def build_model(config: M2AConfig | str = "r50") -> Mask2Anomaly:
    """The network for a config or a preset name ('r50', 'small')."""
    return Mask2Anomaly(M2AConfig.preset(config) if isinstance(config, str) else config)
