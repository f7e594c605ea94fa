"""Numerical parity of our network with Hugging Face's Mask2Former port (masked attention variant).

`M2AConfig(decoder=DecoderConfig(attention="masked"))` is Mask2Former: the same ResNet (detectron2 layout),
MSDeformAttn pixel decoder and masked-attention transformer decoder. transformers'
`Mask2FormerForUniversalSegmentation` is an independent, faithful port of facebookresearch/Mask2Former, so
copying every one of its (randomised) weights into our model must reproduce its outputs to float32 rounding:
backbone features, pixel-decoder maps, mask features, every intermediate prediction and the final one.

HF counts its decoder layers like the authors' DEC_LAYERS (it builds `decoder_layers - 1` layers; the extra
"layer" is the prediction from the learnable queries), and hard-codes GroupNorm(32), 3 feature levels, 4
sampling points, one head count for the encoder and decoder and a bottleneck reduction of 4; the small
configuration below respects all of these. HF takes normalised pixels and never pads, so it is fed our
`preprocess` output (normalised and zero-padded to a multiple of 32, as detectron2's ImageList does).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from m2a_perception.model.config import (  # noqa: E402
    BackboneConfig,
    DecoderConfig,
    M2AConfig,
    PixelDecoderConfig,
)
from m2a_perception.model.mask2anomaly import Mask2Anomaly  # noqa: E402

SEED = 20240607
ATOL = 1e-4

STEM = 16
STAGE_BLOCKS = (2, 1, 2, 1)  # two blocks in res2 and res4: identity shortcuts are exercised too
OUT_CHANNELS = (32, 64, 96, 128)
HIDDEN = 64  # divisible by HF's hard-coded GroupNorm(32)
HEADS = 4
ENCODER_LAYERS = 2
ENCODER_FFN = 96
DECODER_FFN = 128
DECODER_LAYERS = 4  # > 3 levels, so the round robin wraps around to the coarsest level again
QUERIES = 10
CLASSES = 19


def _our_config() -> M2AConfig:
    return M2AConfig(
        num_classes=CLASSES,
        backbone=BackboneConfig(
            stem_channels=STEM,
            stage_blocks=STAGE_BLOCKS,
            bottleneck_channels=tuple(c // 4 for c in OUT_CHANNELS),  # HF's bottleneck reduction is fixed at 4
            out_channels=OUT_CHANNELS,
        ),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=HIDDEN,
            mask_dim=HIDDEN,
            num_encoder_layers=ENCODER_LAYERS,
            num_heads=HEADS,
            num_feature_levels=3,
            num_points=4,
            ffn_dim=ENCODER_FFN,
            norm_groups=32,
        ),
        decoder=DecoderConfig(
            hidden_dim=HIDDEN,
            num_queries=QUERIES,
            num_heads=HEADS,
            ffn_dim=DECODER_FFN,
            num_decoder_layers=DECODER_LAYERS,
            attention="masked",
        ),
    )


def _hf_config():  # noqa: ANN202
    backbone = transformers.ResNetConfig(
        num_channels=3,
        embedding_size=STEM,
        hidden_sizes=list(OUT_CHANNELS),
        depths=list(STAGE_BLOCKS),
        layer_type="bottleneck",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,  # stride on the 3x3 conv (detectron2 STRIDE_IN_1X1 False)
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return transformers.Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=HIDDEN,  # pixel decoder conv_dim
        mask_feature_size=HIDDEN,  # mask_dim
        hidden_dim=HIDDEN,  # transformer decoder width
        encoder_layers=ENCODER_LAYERS,
        encoder_feedforward_dim=ENCODER_FFN,
        decoder_layers=DECODER_LAYERS + 1,  # HF builds decoder_layers - 1 layers
        dim_feedforward=DECODER_FFN,
        num_attention_heads=HEADS,  # shared by the deformable encoder and the decoder
        num_queries=QUERIES,
        num_labels=CLASSES,
        common_stride=4,
        feature_strides=[4, 8, 16, 32],
        dropout=0.0,
        pre_norm=False,
        enforce_input_projection=False,
        use_auxiliary_loss=True,
    )


# ------------------------------------------------------------------------------------------------------
# Randomised, non-default weights on the HF side


@torch.no_grad()
def _randomise_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter and buffer with seeded noise that keeps activations O(1).

    Conv/linear weights ~ N(0, 1/fan_in); biases and norm shifts ~ N(0, 0.1^2); norm scales ~ 1 + N(0, 0.1^2);
    BN running means ~ N(0, 0.1^2), running variances ~ U[0.5, 1.5]; embeddings ~ N(0, 1). The deformable
    offsets keep their ring-shaped bias plus N(0, 0.5^2) pixels of noise, so sampling is fractional and
    partly out of bounds. Fails if any tensor that influences the forward pass was left untouched.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t: Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    touched: set[int] = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        if isinstance(module, nn.BatchNorm2d):
            normal(module.weight, 0.1, 1.0)
            normal(module.bias, 0.1)
            normal(module.running_mean, 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            own.pop("num_batches_tracked")  # unused in eval mode
        elif isinstance(module, nn.GroupNorm | nn.LayerNorm):
            normal(module.weight, 0.1, 1.0)
            normal(module.bias, 0.1)
        elif isinstance(module, nn.Linear | nn.Conv2d):
            normal(module.weight, 1.0 / math.sqrt(module.weight[0].numel()))
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, nn.MultiheadAttention):  # packed q/k/v; out_proj is a Linear
            normal(module.in_proj_weight, 1.0 / math.sqrt(module.embed_dim))
            normal(module.in_proj_bias, 0.1)
        elif isinstance(module, nn.Embedding):
            normal(module.weight, 1.0)
        elif hasattr(module, "level_embed") and isinstance(module.level_embed, nn.Parameter):
            normal(module.level_embed, 1.0)  # pixel decoder's level embedding
        if type(module).__name__ == "Mask2FormerLoss":
            own.pop("empty_weight")  # loss-only class weights
        touched.update(id(t) for t in own.values())
    for module in model.modules():
        if hasattr(module, "sampling_offsets"):
            offsets = module.sampling_offsets.bias
            heads, levels, points = module.n_heads, module.n_levels, module.n_points
            angles = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
            ring = torch.stack([angles.cos(), angles.sin()], -1)
            ring = ring / ring.abs().max(-1, keepdim=True)[0]
            ring = ring.view(heads, 1, 1, 2).repeat(1, levels, points, 1)
            ring = ring * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, -1, 1)
            offsets.copy_(ring.flatten() + torch.randn(offsets.shape, generator=g) * 0.5)
    every = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    missed = sorted(
        name
        for name, t in every.items()
        if id(t) not in touched and not name.endswith("num_batches_tracked") and name != "criterion.empty_weight"
    )
    assert not missed, f"randomiser left tensors at their defaults: {missed}"


# ------------------------------------------------------------------------------------------------------
# HF state dict -> our state dict

_HF_PIXEL = "model.pixel_level_module."
_HF_TRANSFORMER = "model.transformer_module."
# HF keys with no counterpart because they never influence inference.
_HF_UNUSED = re.compile(r".*\.num_batches_tracked$|^criterion\.empty_weight$")

# (HF key regex, our key template); applied with re.fullmatch, first match wins.
_RULES: list[tuple[str, str]] = [
    # backbone: stem, then stage s / block b; HF layer.j = our conv{j+1}
    (
        r"encoder\.embedder\.embedder\.convolution\.weight",
        "backbone.stem.conv1.weight",
    ),
    (
        r"encoder\.embedder\.embedder\.normalization\.(weight|bias|running_mean|running_var)",
        "backbone.stem.conv1.norm.{0}",
    ),
    (
        r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
        "backbone.res{0+2}.{1}.shortcut.weight",
    ),
    (
        r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\."
        r"(weight|bias|running_mean|running_var)",
        "backbone.res{0+2}.{1}.shortcut.norm.{2}",
    ),
    (
        r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight",
        "backbone.res{0+2}.{1}.conv{2+1}.weight",
    ),
    (
        r"encoder\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\."
        r"(weight|bias|running_mean|running_var)",
        "backbone.res{0+2}.{1}.conv{2+1}.norm.{3}",
    ),
    # pixel decoder
    (r"decoder\.level_embed", "pixel_decoder.level_embed"),
    (r"decoder\.input_projections\.(\d)\.([01])\.(weight|bias)", "pixel_decoder.input_proj.{0}.{1}.{2}"),
    (
        r"decoder\.encoder\.layers\.(\d+)\.self_attn\."
        r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
        "pixel_decoder.encoder.layers.{0}.self_attn.{1}.{2}",
    ),
    (
        r"decoder\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
        "pixel_decoder.encoder.layers.{0}.norm1.{1}",
    ),
    (r"decoder\.encoder\.layers\.(\d+)\.fc1\.(weight|bias)", "pixel_decoder.encoder.layers.{0}.linear1.{1}"),
    (r"decoder\.encoder\.layers\.(\d+)\.fc2\.(weight|bias)", "pixel_decoder.encoder.layers.{0}.linear2.{1}"),
    (r"decoder\.encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", "pixel_decoder.encoder.layers.{0}.norm2.{1}"),
    (r"decoder\.mask_projection\.(weight|bias)", "pixel_decoder.mask_features.{0}"),
    # FPN path: HF adapter_{i+1}/layer_{i+1} are detectron2's names for backbone map i
    (r"decoder\.adapter_(\d+)\.0\.weight", "pixel_decoder.lateral_convs.{0-1}.weight"),
    (r"decoder\.adapter_(\d+)\.1\.(weight|bias)", "pixel_decoder.lateral_convs.{0-1}.norm.{1}"),
    (r"decoder\.layer_(\d+)\.0\.weight", "pixel_decoder.output_convs.{0-1}.weight"),
    (r"decoder\.layer_(\d+)\.1\.(weight|bias)", "pixel_decoder.output_convs.{0-1}.norm.{1}"),
]
_RULES_TRANSFORMER: list[tuple[str, str]] = [
    # HF's "queries_features" are the initial query content, "queries_embedder" their positional embedding
    (r"queries_features\.weight", "transformer_decoder.query_feat.weight"),
    (r"queries_embedder\.weight", "transformer_decoder.query_embed.weight"),
    (r"level_embed\.weight", "transformer_decoder.level_embed.weight"),
    (
        r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
        "transformer_decoder.transformer_self_attention_layers.{0}.self_attn.out_proj.{1}",
    ),
    (
        r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
        "transformer_decoder.transformer_self_attention_layers.{0}.norm.{1}",
    ),
    (
        r"decoder\.layers\.(\d+)\.cross_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        "transformer_decoder.transformer_cross_attention_layers.{0}.multihead_attn_foreground.{1}",
    ),
    (
        r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(weight|bias)",
        "transformer_decoder.transformer_cross_attention_layers.{0}.norm.{1}",
    ),
    (r"decoder\.layers\.(\d+)\.fc1\.(weight|bias)", "transformer_decoder.transformer_ffn_layers.{0}.linear1.{1}"),
    (r"decoder\.layers\.(\d+)\.fc2\.(weight|bias)", "transformer_decoder.transformer_ffn_layers.{0}.linear2.{1}"),
    (
        r"decoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
        "transformer_decoder.transformer_ffn_layers.{0}.norm.{1}",
    ),
    (r"decoder\.layernorm\.(weight|bias)", "transformer_decoder.decoder_norm.{0}"),
    (
        r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(weight|bias)",
        "transformer_decoder.mask_embed.layers.{0}.{1}",
    ),
]
# HF's decoder self-attention has separate q/k/v projections; ours (nn.MultiheadAttention) packs them (q, k, v).
_QKV = re.compile(r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def _fill(template: str, groups: tuple[str, ...]) -> str:
    """'{0+2}' -> int(groups[0]) + 2, '{1-1}' -> int(groups[1]) - 1, '{2}' -> groups[2]."""

    def repl(m: re.Match[str]) -> str:
        value = groups[int(m.group(1))]
        return str(int(value) + int(m.group(2))) if m.group(2) else value

    return re.sub(r"\{(\d)([+-]\d)?\}", repl, template)


def hf_to_ours(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict from HF's; every HF tensor is used exactly once (or is listed in `_HF_UNUSED`)."""
    ours: dict[str, Tensor] = {}
    packed: dict[tuple[str, str], dict[str, Tensor]] = {}
    unmapped = []
    for key, value in hf_state.items():
        if _HF_UNUSED.fullmatch(key):
            continue
        if m := _QKV.fullmatch(key):
            layer, part, kind = m.groups()
            parts = packed.setdefault((layer, kind), {})
            assert part not in parts, f"{key} mapped twice"
            parts[part] = value
            continue
        if key.startswith(_HF_PIXEL):
            rules, rest = _RULES, key[len(_HF_PIXEL) :]
        elif key.startswith(_HF_TRANSFORMER):
            rules, rest = _RULES_TRANSFORMER, key[len(_HF_TRANSFORMER) :]
        else:
            rules, rest = [(r"class_predictor\.(weight|bias)", "transformer_decoder.class_embed.{0}")], key
        for pattern, template in rules:
            if m := re.fullmatch(pattern, rest):
                target = _fill(template, m.groups())
                assert target not in ours, f"{key} -> {target}: target already filled"
                ours[target] = value
                break
        else:
            unmapped.append(key)
    assert not unmapped, f"HF tensors with no counterpart in our model: {unmapped}"
    for (layer, kind), parts in packed.items():
        assert sorted(parts) == ["k", "q", "v"], f"self-attention layer {layer} {kind}: got {sorted(parts)}"
        target = f"transformer_decoder.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"
        ours[target] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return ours


# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> tuple[Mask2Anomaly, nn.Module]:
    with torch.random.fork_rng():  # leave the global RNG of the test session as it was
        torch.manual_seed(SEED)
        hf = transformers.Mask2FormerForUniversalSegmentation(_hf_config()).eval()
        ours = Mask2Anomaly(_our_config()).eval()
    _randomise_(hf, SEED)  # own generator
    mapped = hf_to_ours(hf.state_dict())
    ours_keys = set(ours.state_dict())
    assert set(mapped) == ours_keys, (
        f"missing in mapping: {sorted(ours_keys - set(mapped))}; unknown targets: {sorted(set(mapped) - ours_keys)}"
    )
    ours.load_state_dict(mapped, strict=True)
    return ours, hf


def test_mapping_is_one_to_one(models: tuple[Mask2Anomaly, nn.Module]) -> None:
    ours, hf = models
    assert len(hf.model.transformer_module.decoder.layers) == DECODER_LAYERS  # HF: decoder_layers - 1
    hf_used = {k: v for k, v in hf.state_dict().items() if not _HF_UNUSED.fullmatch(k)}
    assert sum(v.numel() for v in hf_used.values()) == sum(v.numel() for v in ours.state_dict().values())
    # every parameter of both models (not only buffers) takes part
    assert sum(p.numel() for p in ours.parameters()) + sum(
        b.numel() for n, b in ours.named_buffers() if n.startswith("backbone.")
    ) == sum(v.numel() for v in hf_used.values())


def _max_err(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a - b).abs().max().item()


def _check_routing_is_informative(predictions: list[dict[str, Tensor]], level_sizes: list[torch.Size]) -> None:
    """Make sure the comparison exercises masked attention, and robustly.

    Prediction i routes layer i at level i % 3: its masks must block some memory positions and allow others,
    some query must be blocked everywhere (Mask2Former then lets it attend everywhere), and no resized
    logit may sit so close to the 0.5 threshold that float32 rounding could flip a routing decision.
    """
    fully_blocked_rows = 0
    for i, pred in enumerate(predictions):
        size = level_sizes[i % len(level_sizes)]
        logits = F.interpolate(pred["masks_queries_logits"], size=size, mode="bilinear", align_corners=False)
        allowed = logits.flatten(2).sigmoid() >= 0.5
        assert allowed.any() and not allowed.all(), f"prediction {i}: attention mask blocks nothing or everything"
        fully_blocked_rows += int((~allowed.any(-1)).sum())
        assert logits.abs().min() > 1e-4, f"prediction {i}: a routing logit is within rounding of the threshold"
    assert fully_blocked_rows > 0, "no query is ever fully blocked: the attend-everywhere rule is not exercised"


@pytest.mark.parametrize("size", [(64, 128), (50, 90)], ids=["64x128", "50x90-padded"])
def test_matches_hf_mask2former(models: tuple[Mask2Anomaly, nn.Module], size: tuple[int, int]) -> None:
    ours, hf = models
    g = torch.Generator().manual_seed(SEED + size[0])
    images = torch.rand((1, 3, *size), generator=g) * 255.0
    with torch.no_grad():
        pixels = ours.preprocess(images)  # normalised, zero-padded to a multiple of 32: HF's input
        ref = hf(pixel_values=pixels, output_hidden_states=True, output_auxiliary_logits=True)

        # Stage by stage, so a failure names the first stage that differs.
        features = ours.backbone.forward_features(pixels)
        for i, (a, b) in enumerate(zip(features, ref.encoder_hidden_states, strict=True)):
            assert _max_err(a, b) < ATOL * max(1.0, b.abs().max().item()), f"backbone res{i + 2}"
        mask_features, maps = ours.pixel_decoder(features)
        for i, (a, b) in enumerate(zip(maps, ref.pixel_decoder_hidden_states, strict=True)):
            assert _max_err(a, b) < ATOL, f"pixel decoder map {i}"
        assert _max_err(mask_features, ref.pixel_decoder_last_hidden_state) < ATOL, "mask features"
        logits, masks, aux = ours.transformer_decoder(maps, mask_features, with_aux=True)

        _check_routing_is_informative(ref.auxiliary_logits, [m.shape[-2:] for m in maps])

        assert len(aux) == len(ref.auxiliary_logits) == DECODER_LAYERS
        for i, (a, b) in enumerate(zip(aux, ref.auxiliary_logits, strict=True)):
            assert _max_err(a["pred_logits"], b["class_queries_logits"]) < ATOL, f"class logits, prediction {i}"
            assert _max_err(a["pred_masks"], b["masks_queries_logits"]) < ATOL, f"mask logits, prediction {i}"
        assert _max_err(logits, ref.class_queries_logits) < ATOL, "final class logits"
        assert _max_err(masks, ref.masks_queries_logits) < ATOL, "final mask logits"

        # End to end through our own preprocessing, in both the training (aux) and inference code paths.
        for with_aux in (True, False):
            out = ours(images, with_aux=with_aux)
            assert _max_err(out["pred_logits"], ref.class_queries_logits) < ATOL, f"class logits, aux={with_aux}"
            assert _max_err(out["pred_masks"], ref.masks_queries_logits) < ATOL, f"mask logits, aux={with_aux}"
