"""The network: presets, shapes, parameter counts, deformable attention and global mask attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from m2a_perception.model import DecoderConfig, M2AConfig, Mask2Anomaly
from m2a_perception.model.layers import FrozenBatchNorm2d, sine_position_encoding
from m2a_perception.model.pixel_decoder import (
    MSDeformAttn,
    deformable_sampling_embedding_bag,
    multi_scale_deformable_attention,
)
from m2a_perception.model.transformer_decoder import CrossAttentionLayer, attention_allowed_masks


@pytest.fixture(scope="module")
def r50() -> Mask2Anomaly:
    torch.manual_seed(0)
    return Mask2Anomaly(M2AConfig()).eval()


@pytest.fixture(scope="module")
def small() -> Mask2Anomaly:
    torch.manual_seed(0)
    return Mask2Anomaly(M2AConfig.preset("small")).eval()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_model_parameter_counts(r50: Mask2Anomaly) -> None:
    # METHOD.md 1.6: 46,503,992 including the authors' 9 unused fusion convs (9 x 20,100), which we do not build.
    assert count(r50) == 46_323_092
    assert count(r50.backbone) == 23_454_912
    assert count(r50.pixel_decoder) == 6_035_904
    assert count(r50.transformer_decoder) == 17_013_176 - 9 * (100 * 200 + 100)
    # The backbone is a frozen feature extractor; everything else trains.
    assert not any(p.requires_grad for p in r50.backbone.parameters())
    trainable = sum(p.numel() for p in r50.parameters() if p.requires_grad)
    assert trainable == 23_049_080 - 9 * 20_100
    # Frozen BN keeps its statistics as buffers (4 per norm, as in detectron2 checkpoints).
    assert len(r50.state_dict()) == 612 - 9 * 2 - 1  # minus fusion_layer.{weight,bias} and criterion.empty_weight


def test_paper_model_output_shapes(r50: Mask2Anomaly) -> None:
    x = torch.rand(1, 3, 64, 128) * 255
    with torch.no_grad():
        out = r50(x)
        train_out = r50(x, with_aux=True)
    assert out["pred_logits"].shape == (1, 100, 20)
    assert out["pred_masks"].shape == (1, 100, 16, 32)
    assert out["aux_outputs"] == []
    assert len(train_out["aux_outputs"]) == 9
    for aux in train_out["aux_outputs"]:
        assert aux["pred_logits"].shape == (1, 100, 20)
        assert aux["pred_masks"].shape == (1, 100, 16, 32)
    # The eval shortcut (routing masks from resized mask features) gives the same final prediction, up to
    # rounding that may flip a routing decision for a logit within ~1e-6 of the threshold.
    torch.testing.assert_close(out["pred_masks"], train_out["pred_masks"], rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(out["pred_logits"], train_out["pred_logits"], rtol=1e-3, atol=2e-3)


def test_small_preset_shapes_and_padding(small: Mask2Anomaly) -> None:
    cfg = small.config
    assert count(small) < 2_000_000
    x = torch.rand(2, 3, 97, 203) * 255  # not a multiple of 32: padded to 128 x 224
    small.train()
    out = small(x)
    small.eval()
    q, k = cfg.decoder.num_queries, cfg.num_classes
    assert out["pred_logits"].shape == (2, q, k + 1)
    assert out["pred_masks"].shape == (2, q, 128 // 4, 224 // 4)
    assert len(out["aux_outputs"]) == cfg.decoder.num_decoder_layers
    # Gradients reach the decoder but never the frozen backbone.
    (out["pred_logits"].sum() + out["pred_masks"].mean()).backward()
    assert small.transformer_decoder.class_embed.weight.grad is not None
    assert small.pixel_decoder.input_proj[0][0].weight.grad is not None
    assert all(p.grad is None for p in small.backbone.parameters())
    small.zero_grad(set_to_none=True)


def test_batch_items_are_independent(small: Mask2Anomaly) -> None:
    torch.manual_seed(1)
    a, b = torch.rand(1, 3, 64, 96) * 255, torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        joint = small(torch.cat([a, b]))
        alone = small(b)
    torch.testing.assert_close(joint["pred_masks"][1:], alone["pred_masks"], rtol=1e-4, atol=1e-4)


def test_masked_attention_variant_has_one_branch() -> None:
    cfg = M2AConfig.preset("small")
    masked = Mask2Anomaly(cfg.replace(decoder=DecoderConfig(**{**cfg.decoder.__dict__, "attention": "masked"})))
    keys = masked.state_dict().keys()
    assert any("multihead_attn_foreground" in k for k in keys)
    assert not any("multihead_attn_background" in k for k in keys)
    with torch.no_grad():
        out = masked.eval()(torch.rand(1, 3, 64, 64) * 255)
    assert torch.isfinite(out["pred_masks"]).all()


def test_config_validation_and_round_trip() -> None:
    cfg = M2AConfig.preset("small")
    assert M2AConfig.from_dict(cfg.to_dict()) == cfg
    assert M2AConfig.from_dict(M2AConfig().to_dict()) == M2AConfig()
    with pytest.raises(ValueError, match="attention"):
        DecoderConfig(attention="sparse")
    with pytest.raises(ValueError, match="num_heads"):
        DecoderConfig(hidden_dim=100, num_heads=8)
    with pytest.raises(ValueError, match="unknown model config keys"):
        M2AConfig.from_dict({"num_clases": 19})
    with pytest.raises(ValueError, match="unknown preset"):
        M2AConfig.preset("r101")
    with pytest.raises(ValueError, match="hidden_dim"):
        M2AConfig(decoder=DecoderConfig(hidden_dim=128, num_heads=8))


def test_model_rejects_wrong_input_shape(small: Mask2Anomaly) -> None:
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        small(torch.rand(3, 64, 64))


# --- layers ---------------------------------------------------------------------------------------------


def test_frozen_batchnorm_matches_batchnorm_and_folds_into_conv() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    expected = bn(conv(x))
    torch.testing.assert_close(frozen(conv(x)), expected)
    weight, bias = frozen.fold_into(conv.weight, None)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), expected, rtol=1e-5, atol=1e-5)


def test_sine_position_encoding_hand_values() -> None:
    pos = sine_position_encoding(2, 3, num_pos_feats=4)
    assert pos.shape == (1, 8, 2, 3)
    scale = 2 * math.pi
    # y half first: position (row 1 of 2) -> y = 1/2 * 2pi; features: sin(y), cos(y), sin(y/100), cos(y/100)
    y = 1 / (2 + 1e-6) * scale
    expected_y = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)]
    x = 3 / (3 + 1e-6) * scale  # column 3 of 3
    expected_x = [math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    torch.testing.assert_close(pos[0, :4, 0, 2], torch.tensor(expected_y))
    torch.testing.assert_close(pos[0, 4:, 0, 2], torch.tensor(expected_x))


# --- multi-scale deformable attention ---------------------------------------------------------------------


def reference_deformable_attention(value, shapes, locations, weights):
    """Slow, obvious version: explicit bilinear interpolation (align_corners=False, zeros outside)."""
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, num_queries, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for q in range(num_queries):
            for m in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    grid = value[b, starts[lvl] : starts[lvl + 1], m].double().view(h, w, head_dim)
                    for p in range(points):
                        px = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        py = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        sample = torch.zeros(head_dim, dtype=torch.float64)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                sample += (1 - abs(px - xx)) * (1 - abs(py - yy)) * grid[yy, xx]
                        out[b, q, m] += weights[b, q, m, lvl, p].item() * sample
    return out.view(batch, num_queries, heads * head_dim).float()


def test_deformable_attention_matches_slow_reference() -> None:
    torch.manual_seed(0)
    shapes = [(2, 3), (4, 5), (5, 7)]
    batch, heads, head_dim, points, num_queries = 2, 2, 3, 3, 5
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, head_dim)
    locations = torch.rand(batch, num_queries, heads, len(shapes), points, 2) * 1.4 - 0.2  # some outside
    weights = torch.rand(batch, num_queries, heads, len(shapes), points)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    got = multi_scale_deformable_attention(value, shapes, locations, weights)
    expected = reference_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fused_cpu_sampling_matches_grid_sample_path() -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (5, 6), (7, 9)]
    batch, heads, head_dim, points, num_queries = 2, 2, 4, 3, 11
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, head_dim)
    reference = torch.rand(batch, num_queries, 2)
    offsets = torch.randn(batch, num_queries, heads, len(shapes), points, 2) * 3  # pixels, many outside
    weights = torch.rand(batch, num_queries, heads, len(shapes), points)
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    locations = reference[:, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
    reference_pixels = reference[:, :, None, None, None, :] * sizes[:, None, :] - 0.5
    fused = deformable_sampling_embedding_bag(value, shapes, reference_pixels, offsets, weights)
    torch.testing.assert_close(fused, multi_scale_deformable_attention(value, shapes, locations, weights))
    small_ref = reference_deformable_attention(value[:1, :, :1], shapes, locations[:1, :4, :1], weights[:1, :4, :1])
    torch.testing.assert_close(fused[:1, :4, :head_dim], small_ref, rtol=1e-5, atol=1e-5)


def test_msdeformattn_inference_and_training_paths_agree() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, num_heads=4, num_levels=2, num_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    shapes = [(3, 5), (6, 10)]
    value = torch.randn(2, 75, 16)
    query = torch.randn(2, 75, 16)
    reference = torch.rand(1, 75, 2)
    with torch.no_grad():
        fused = attn(query, reference, value, shapes)  # CPU, no grad: embedding_bag path
    with torch.enable_grad():
        trained = attn(query, reference, value, shapes)  # grad enabled: grid_sample path
    torch.testing.assert_close(fused, trained.detach(), rtol=1e-5, atol=1e-5)


def test_msdeformattn_initial_offsets_and_pixel_units() -> None:
    attn = MSDeformAttn(d_model=16, num_heads=4, num_levels=2, num_points=2)
    offsets = attn.sampling_offsets.bias.view(4, 2, 2, 2)
    # head 0 points along +x, head 1 along +y; point p sits at radius p + 1; same on every level
    torch.testing.assert_close(offsets[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    torch.testing.assert_close(offsets[1, 1, :, 1], torch.tensor([1.0, 2.0]))
    # Offsets are in pixels of each level: with uniform attention and a value map equal to the x pixel index,
    # a query at the centre of pixel (x=1) of a 4-wide level samples x = 2 and 3 with head 0.
    torch.manual_seed(0)
    with torch.no_grad():
        attn.value_proj.weight.copy_(torch.eye(16))
        attn.value_proj.bias.zero_()
        attn.output_proj.weight.copy_(torch.eye(16))
        attn.output_proj.bias.zero_()
    shapes = [(1, 4), (1, 4)]
    value = torch.arange(4.0).repeat(2).view(1, 8, 1).expand(1, 8, 16).contiguous()
    reference = torch.tensor([[[1.5 / 4, 0.5]]])
    out = attn(torch.zeros(1, 1, 16), reference, value, shapes)
    head0 = out[0, 0, :4]  # channels of head 0
    torch.testing.assert_close(head0, torch.full((4,), 2.5))  # mean of samples at x = 2 and 3


# --- global mask attention ------------------------------------------------------------------------------


def test_attention_masks_threshold_and_all_blocked_rows() -> None:
    logits = torch.tensor(
        [
            [
                [2.0, -2.0, 0.0, -3.0],  # mixed: fg {0, 2}, bg {1, 2, 3} (sigmoid 0.5 is in both)
                [-1.0, -1.0, -1.0, -1.0],  # everything background: fg row all blocked -> unblocked
                [4.0, 4.0, 4.0, 4.0],  # everything foreground: bg row all blocked -> unblocked
            ]
        ]
    )
    fg, bg = attention_allowed_masks(logits, 0.5)
    assert fg[0].tolist() == [[True, False, True, False], [True] * 4, [True] * 4]
    assert bg[0].tolist() == [[False, True, True, True], [True] * 4, [True] * 4]


def test_global_mask_attention_hand_built() -> None:
    """Zero queries give uniform attention over allowed keys, so each branch returns the mean of its values."""
    d = 4
    layer = CrossAttentionLayer(d_model=d, num_heads=1, global_attention=True)
    with torch.no_grad():
        for attention, out_scale in ((layer.multihead_attn_foreground, 1.0), (layer.multihead_attn_background, 2.0)):
            attention.in_proj_weight.copy_(torch.cat([torch.eye(d)] * 3))
            attention.in_proj_bias.zero_()
            attention.out_proj.weight.copy_(out_scale * torch.eye(d))
            attention.out_proj.bias.zero_()
    memory = torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0]]])  # (1, 3, 4)
    tgt = torch.zeros(1, 2, d)
    zeros = torch.zeros(1, 3, d)
    fg = torch.tensor([[[True, False, False], [True, True, True]]])  # query 1: the unblocked all-blocked row
    bg = torch.tensor([[[False, True, True], [False, False, True]]])
    out = layer(tgt, memory, zeros, torch.zeros(1, 2, d), fg, bg)
    fg_mean = torch.stack([memory[0, :1].mean(0), memory[0].mean(0)])
    bg_mean = torch.stack([memory[0, 1:].mean(0), memory[0, 2:].mean(0)])
    expected = F.layer_norm(fg_mean + 2.0 * bg_mean, (d,), layer.norm.weight, layer.norm.bias)
    torch.testing.assert_close(out[0], expected)

    masked = CrossAttentionLayer(d_model=d, num_heads=1, global_attention=False)
    masked.multihead_attn_foreground.load_state_dict(layer.multihead_attn_foreground.state_dict())
    out_masked = masked(tgt, memory, zeros, torch.zeros(1, 2, d), fg, bg)
    torch.testing.assert_close(out_masked[0], F.layer_norm(fg_mean, (d,), masked.norm.weight, masked.norm.bias))
