"""Checkpoint loading and saving (m2a_perception.model.checkpoint).

The authors'-style detectron2 state dict is generated here from METHOD.md section 6.2 (key list and shapes),
independently of the model's own state_dict, so the key table is checked against the spec, not against itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import (
    CheckpointError,
    LoadReport,
    build_model_from_checkpoint,
    detectron2_to_m2a_key,
    load_backbone_weights,
    load_checkpoint,
    m2a_to_detectron2_key,
    save_checkpoint,
    torchvision_to_detectron2_key,
)

R50 = M2AConfig.preset("r50")
SMALL = M2AConfig.preset("small")

# ----------------------------------------------------------------------------------------------------------
# The authors' key list, written from METHOD.md 6.2 (shapes generalised over the config's sizes so the small
# preset can use the same generator; with the r50 config they are exactly the spec's numbers).


def _frozen_bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm.{n}": (channels,) for n in ("weight", "bias", "running_mean", "running_var")}


def spec_backbone_shapes(cfg: M2AConfig, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    b = cfg.backbone
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}stem.conv1.weight": (b.stem_channels, 3, 7, 7)}
    shapes |= _frozen_bn(f"{prefix}stem.conv1", b.stem_channels)
    c_in = b.stem_channels
    for stage, (blocks, mid, out) in enumerate(zip(b.stage_blocks, b.bottleneck_channels, b.out_channels), start=2):
        for i in range(blocks):
            p = f"{prefix}res{stage}.{i}"
            block_in = c_in if i == 0 else out
            if i == 0:
                shapes[f"{p}.shortcut.weight"] = (out, block_in, 1, 1)
                shapes |= _frozen_bn(f"{p}.shortcut", out)
            for name, shape in (
                ("conv1", (mid, block_in, 1, 1)),
                ("conv2", (mid, mid, 3, 3)),
                ("conv3", (out, mid, 1, 1)),
            ):
                shapes[f"{p}.{name}.weight"] = shape
                shapes |= _frozen_bn(f"{p}.{name}", shape[0])
        c_in = out
    return shapes


def _mha(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.in_proj_weight": (3 * d, d),
        f"{prefix}.in_proj_bias": (3 * d,),
        f"{prefix}.out_proj.weight": (d, d),
        f"{prefix}.out_proj.bias": (d,),
    }


def _linear(prefix: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def _norm(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def spec_shapes(cfg: M2AConfig, *, vanilla: bool = False) -> dict[str, tuple[int, ...]]:
    """METHOD.md 6.2: the authors' state dict (``vanilla``: a Mask2Former one, single cross-attention)."""
    shapes = spec_backbone_shapes(cfg)
    pd, dc = cfg.pixel_decoder, cfg.decoder
    d, levels = pd.conv_dim, pd.num_feature_levels
    px = "sem_seg_head.pixel_decoder."
    encoder_in = list(cfg.backbone.out_channels)[::-1][:levels]  # res5, res4, res3
    for j, c in enumerate(encoder_in):
        shapes[f"{px}input_proj.{j}.0.weight"] = (d, c, 1, 1)
        shapes[f"{px}input_proj.{j}.0.bias"] = (d,)
        shapes |= _norm(f"{px}input_proj.{j}.1", d)
    shapes[f"{px}transformer.level_embed"] = (levels, d)
    slots = pd.num_heads * levels * pd.num_points
    for i in range(pd.num_encoder_layers):
        p = f"{px}transformer.encoder.layers.{i}"
        shapes |= _linear(f"{p}.self_attn.sampling_offsets", 2 * slots, d)
        shapes |= _linear(f"{p}.self_attn.attention_weights", slots, d)
        shapes |= _linear(f"{p}.self_attn.value_proj", d, d)
        shapes |= _linear(f"{p}.self_attn.output_proj", d, d)
        shapes |= _norm(f"{p}.norm1", d)
        shapes |= _linear(f"{p}.linear1", pd.ffn_dim, d)
        shapes |= _linear(f"{p}.linear2", d, pd.ffn_dim)
        shapes |= _norm(f"{p}.norm2", d)
    shapes[f"{px}mask_features.weight"] = (pd.mask_dim, d, 1, 1)
    shapes[f"{px}mask_features.bias"] = (pd.mask_dim,)
    num_fpn = 4 - levels  # stages below the deformable encoder: res2 only for 3 levels
    for n in range(1, num_fpn + 1):
        shapes[f"{px}adapter_{n}.weight"] = (d, cfg.backbone.out_channels[n - 1], 1, 1)
        shapes |= _norm(f"{px}adapter_{n}.norm", d)
        shapes[f"{px}layer_{n}.weight"] = (d, d, 3, 3)
        shapes |= _norm(f"{px}layer_{n}.norm", d)

    h, q = dc.hidden_dim, dc.num_queries
    pr = "sem_seg_head.predictor."
    for l in range(dc.num_decoder_layers):
        shapes |= _mha(f"{pr}transformer_self_attention_layers.{l}.self_attn", h)
        shapes |= _norm(f"{pr}transformer_self_attention_layers.{l}.norm", h)
        cross = f"{pr}transformer_cross_attention_layers.{l}"
        if vanilla:
            shapes |= _mha(f"{cross}.multihead_attn", h)
        else:
            shapes |= _mha(f"{cross}.multihead_attn_foreground", h)
            shapes |= _mha(f"{cross}.multihead_attn_background", h)
        shapes |= _norm(f"{cross}.norm", h)
        if not vanilla:
            shapes[f"{cross}.fusion_layer.weight"] = (q, 2 * q, 1, 1)
            shapes[f"{cross}.fusion_layer.bias"] = (q,)
        shapes |= _linear(f"{pr}transformer_ffn_layers.{l}.linear1", dc.ffn_dim, h)
        shapes |= _linear(f"{pr}transformer_ffn_layers.{l}.linear2", h, dc.ffn_dim)
        shapes |= _norm(f"{pr}transformer_ffn_layers.{l}.norm", h)
    shapes |= _norm(f"{pr}decoder_norm", h)
    shapes[f"{pr}query_feat.weight"] = (q, h)
    shapes[f"{pr}query_embed.weight"] = (q, h)
    shapes[f"{pr}level_embed.weight"] = (levels, h)
    shapes |= _linear(f"{pr}class_embed", cfg.num_classes + 1, h)
    for k in range(3):
        shapes |= _linear(f"{pr}mask_embed.layers.{k}", pd.mask_dim if k == 2 else h, h)
    shapes["criterion.empty_weight"] = (cfg.num_classes + 1,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random values of sensible scale (finite outputs through the whole network), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1 and name.endswith("weight"):  # norm scales
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # biases, running means
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        state[name] = t
    return state


def authors_state(cfg: M2AConfig, seed: int, *, vanilla: bool = False) -> dict[str, torch.Tensor]:
    return random_state(spec_shapes(cfg, vanilla=vanilla), seed)


def _ignored_by_design(name: str) -> bool:
    return name == "criterion.empty_weight" or ".fusion_layer." in name


IMAGES = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(0)) * 255.0


def predict(model: Mask2Anomaly) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(IMAGES)
    return out["pred_logits"].clone(), out["pred_masks"].clone()


def assert_changed(before: tuple[torch.Tensor, ...], after: tuple[torch.Tensor, ...]) -> None:
    for b, a in zip(before, after):
        assert torch.isfinite(a).all()
        assert not torch.allclose(b, a)


def assert_loaded(model: Mask2Anomaly, file_state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    for name, tensor in file_state.items():
        target = detectron2_to_m2a_key(name)
        if target is not None:
            assert torch.equal(current[target], tensor.to(current[target].dtype)), name


# ----------------------------------------------------------------------------------------------------------
# Fixtures: the r50 model (~46M parameters) is built once per module.


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tests are dominated by small ops, and on a busy 2-core CI box extra OpenMP
    threads spin against other processes (measured 3-5x slower). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def r50_model() -> Mask2Anomaly:
    torch.manual_seed(0)
    return Mask2Anomaly(R50).eval()


def small_model(cfg: M2AConfig = SMALL) -> Mask2Anomaly:
    torch.manual_seed(0)
    return Mask2Anomaly(cfg).eval()


# ----------------------------------------------------------------------------------------------------------
# The key table


def test_spec_generator_matches_method_counts() -> None:
    shapes = spec_shapes(R50)
    assert len(shapes) == 612  # METHOD.md 1.6 / 6.2
    frozen_bn_buffers = [k for k in shapes if k.startswith("backbone.") and ".norm." in k]
    params = sum(
        math.prod(s) for k, s in shapes.items() if k not in frozen_bn_buffers and k != "criterion.empty_weight"
    )
    assert params == 46_503_992
    assert sum(math.prod(s) for k, s in shapes.items() if ".fusion_layer." in k) == 180_900


def test_key_table_examples() -> None:
    table = {
        "backbone.res2.0.shortcut.norm.running_var": "backbone.res2.0.shortcut.norm.running_var",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (
            "pixel_decoder.encoder.layers.5.self_attn.sampling_offsets.weight"
        ),
        "sem_seg_head.pixel_decoder.transformer.level_embed": "pixel_decoder.level_embed",
        "sem_seg_head.pixel_decoder.adapter_1.norm.bias": "pixel_decoder.lateral_convs.0.norm.bias",
        "sem_seg_head.pixel_decoder.layer_1.weight": "pixel_decoder.output_convs.0.weight",
        "sem_seg_head.pixel_decoder.input_proj.2.1.bias": "pixel_decoder.input_proj.2.1.bias",
        "sem_seg_head.pixel_decoder.mask_features.weight": "pixel_decoder.mask_features.weight",
        "sem_seg_head.predictor.transformer_cross_attention_layers.8.multihead_attn_background.in_proj_weight": (
            "transformer_decoder.transformer_cross_attention_layers.8.multihead_attn_background.in_proj_weight"
        ),
        "sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn.out_proj.bias": (
            "transformer_decoder.transformer_cross_attention_layers.3.multihead_attn_foreground.out_proj.bias"
        ),
        "sem_seg_head.predictor.mask_embed.layers.2.weight": "transformer_decoder.mask_embed.layers.2.weight",
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.fusion_layer.weight": None,
        "criterion.empty_weight": None,
        "pixel_mean": None,
        "pixel_std": None,
        "backbone.res3.0.conv1.norm.num_batches_tracked": None,
    }
    for d2, ours in table.items():
        assert detectron2_to_m2a_key(d2) == ours, d2


@pytest.mark.parametrize("vanilla", [False, True])
def test_key_table_covers_spec_and_inverts(vanilla: bool) -> None:
    shapes = spec_shapes(R50, vanilla=vanilla)
    mapped = {k: detectron2_to_m2a_key(k) for k in shapes}
    assert {k for k, v in mapped.items() if v is None} == {k for k in shapes if _ignored_by_design(k)}
    targets = [v for v in mapped.values() if v is not None]
    # vanilla: no background attention (9 layers x 4 keys) and no fusion_layer (9 x 2)
    assert len(targets) == len(set(targets)) == (612 - 1 - 36 - 18 if vanilla else 612 - 1 - 18)
    for d2, ours in mapped.items():
        if ours is not None:
            assert m2a_to_detectron2_key(ours, vanilla=vanilla) == d2


def test_key_table_matches_the_model(r50_model: Mask2Anomaly) -> None:
    mapped = {detectron2_to_m2a_key(k): s for k, s in spec_shapes(R50).items()}
    mapped.pop(None)
    model_shapes = {k: tuple(v.shape) for k, v in r50_model.state_dict().items()}
    assert sorted(set(model_shapes) - set(mapped)) == []  # model keys the spec lacks
    assert sorted(set(mapped) - set(model_shapes)) == []  # spec keys the model lacks
    assert {k: s for k, s in mapped.items() if model_shapes[k] != s} == {}


def test_torchvision_key_map() -> None:
    assert torchvision_to_detectron2_key("conv1.weight") == "stem.conv1.weight"
    assert torchvision_to_detectron2_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert torchvision_to_detectron2_key("layer1.0.bn2.bias") == "res2.0.conv2.norm.bias"
    assert torchvision_to_detectron2_key("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert torchvision_to_detectron2_key("layer3.2.downsample.1.running_mean") == "res4.2.shortcut.norm.running_mean"
    assert torchvision_to_detectron2_key("res2.0.conv1.norm.weight") == "res2.0.conv1.norm.weight"
    assert torchvision_to_detectron2_key("fc.weight") is None
    assert torchvision_to_detectron2_key("layer1.0.bn1.num_batches_tracked") is None
    assert torchvision_to_detectron2_key("projector.0.weight") is None


# ----------------------------------------------------------------------------------------------------------
# The authors' detectron2 files


def test_load_detectron2_pth_r50(r50_model: Mask2Anomaly, tmp_path: Path) -> None:
    r50_state = authors_state(R50, seed=1)
    path = tmp_path / "best_contrastive.pth"
    torch.save({"model": r50_state, "iteration": 89_999}, path)
    before = predict(r50_model)
    report = load_checkpoint(r50_model, path)
    assert isinstance(report, LoadReport) and report.ok
    assert report.source_format == "detectron2-pth"
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert sorted(report.ignored) == sorted(k for k in r50_state if _ignored_by_design(k))
    assert len(report.ignored) == 19
    assert report.loaded == 612 - 19 == len(r50_model.state_dict())
    assert "loaded 593 tensors" in report.summary()
    assert_loaded(r50_model, r50_state)
    assert_changed(before, predict(r50_model))


def test_load_detectron2_pkl_numpy_r50(r50_model: Mask2Anomaly, tmp_path: Path) -> None:
    state = authors_state(R50, seed=2)
    path = tmp_path / "model_final.pkl"
    payload = {
        "model": OrderedDict((k, v.numpy()) for k, v in state.items()),
        "__author__": "m2a-test",
        "matching_heuristics": True,
    }
    with path.open("wb") as f:
        pickle.dump(payload, f)
    before = predict(r50_model)
    report = load_checkpoint(r50_model, path)
    assert report.ok and report.source_format == "detectron2-pkl"
    assert report.loaded == 593 and len(report.ignored) == 19
    assert report.metadata["__author__"] == "m2a-test"
    assert_loaded(r50_model, state)
    assert_changed(before, predict(r50_model))


@pytest.mark.parametrize("writer", ["protocol-2", "protocol-5", "numpy-1-names"])
def test_load_pkl_top_level_arrays(tmp_path: Path, writer: str) -> None:
    state = authors_state(SMALL, seed=3)
    path = tmp_path / "top.pkl"
    payload = {k: v.numpy() for k, v in state.items()} | {"__author__": "x", "matching_heuristics": True}
    data = pickle.dumps(payload, protocol=5 if writer == "protocol-5" else 2)
    if writer == "numpy-1-names":  # files written by numpy 1 name numpy.core, not numpy._core
        assert b"numpy._core.multiarray\n" in data
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(data)
    model = small_model()
    report = load_checkpoint(model, path)
    assert report.ok and report.loaded == len(model.state_dict())
    assert report.metadata == {"__author__": "x", "matching_heuristics": True}
    assert_loaded(model, state)


@pytest.mark.parametrize("wrap", ["bare", "module-prefix", "model-and-module-prefix"])
def test_load_pth_wrappers(tmp_path: Path, wrap: str) -> None:
    state = authors_state(SMALL, seed=4)
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state} if wrap.startswith("model") else state, path)
    model = small_model()
    before = predict(model)
    report = load_checkpoint(model, path)
    assert report.ok and report.loaded == len(model.state_dict())
    if "module" in wrap:
        assert any("module." in n for n in report.notes)
    assert_loaded(model, {k.removeprefix("module."): v for k, v in state.items()})
    assert_changed(before, predict(model))


def test_fp16_checkpoint_is_cast(tmp_path: Path) -> None:
    state = {k: v.half() for k, v in authors_state(SMALL, seed=5).items()}
    path = tmp_path / "fp16.pth"
    torch.save({"model": state}, path)
    model = small_model()
    report = load_checkpoint(model, path)
    assert report.ok
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert any("float16" in n for n in report.notes)
    assert_loaded(model, state)
    assert torch.isfinite(predict(model)[0]).all()


def test_vanilla_mask2former_into_masked_variant(tmp_path: Path) -> None:
    state = authors_state(SMALL, seed=6, vanilla=True)
    path = tmp_path / "mask2former.pth"
    torch.save({"model": state}, path)
    masked = SMALL.replace(decoder=dataclasses.replace(SMALL.decoder, attention="masked"))
    model = small_model(masked)
    before = predict(model)
    report = load_checkpoint(model, path)
    assert report.ok and report.ignored == ["criterion.empty_weight"]
    assert_loaded(model, state)
    assert_changed(before, predict(model))

    built, report = build_model_from_checkpoint(path, config=SMALL)  # SMALL says "global": the file decides
    assert built.config.decoder.attention == "masked" and report.ok
    assert any("masked" in n for n in report.notes)
    torch.testing.assert_close(predict(built), predict(model), rtol=0, atol=0)

    with pytest.raises(CheckpointError, match="multihead_attn_background") as err:  # into the GMA model
        load_checkpoint(small_model(), path)
    assert str(path) in str(err.value)


def test_build_from_detectron2_infers_num_classes(tmp_path: Path) -> None:
    cfg = SMALL.replace(num_classes=12)  # e.g. StreetHazards
    path = tmp_path / "streethazards.pth"
    torch.save({"model": authors_state(cfg, seed=7)}, path)
    model, report = build_model_from_checkpoint(path, config=SMALL)
    assert model.config.num_classes == 12 and report.ok


# ----------------------------------------------------------------------------------------------------------
# Our own format


def test_own_format_round_trip(tmp_path: Path) -> None:
    model = small_model()
    load_checkpoint(model, _write(tmp_path / "src.pth", {"model": authors_state(SMALL, seed=8)}))
    path = tmp_path / "m2a.pt"
    save_checkpoint(model, path, extra={"iteration": 10, "note": "test", "mean_iou": [0.5, None]})

    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == "m2a-checkpoint" and raw["format_version"] == 1
    assert raw["config"] == SMALL.to_dict() and len(raw["class_names"]) == 19
    assert raw["m2a_version"] == __import__("m2a_perception").__version__

    rebuilt, report = build_model_from_checkpoint(path)
    assert report.ok and report.source_format == "m2a"
    assert report.loaded == len(model.state_dict())
    assert report.class_names == tuple(raw["class_names"]) and report.class_names[0] == "road"
    assert report.metadata["extra"]["iteration"] == 10
    assert rebuilt.config == SMALL and not rebuilt.training
    torch.testing.assert_close(predict(rebuilt), predict(model), rtol=0, atol=0)

    other = small_model()
    assert load_checkpoint(other, path).ok
    torch.testing.assert_close(predict(other), predict(model), rtol=0, atol=0)


def test_own_format_refuses_other_config(tmp_path: Path) -> None:
    path = tmp_path / "m2a.pt"
    save_checkpoint(small_model(), path)
    cfg = SMALL.replace(decoder=dataclasses.replace(SMALL.decoder, num_queries=10))
    with pytest.raises(CheckpointError, match=r"decoder\.num_queries: model 10, file 20") as err:
        load_checkpoint(small_model(cfg), path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=r"decoder\.num_queries"):
        build_model_from_checkpoint(path, config=cfg)


def test_save_checkpoint_rejects_bad_arguments(tmp_path: Path) -> None:
    model = small_model()
    with pytest.raises(ValueError, match="class_names"):
        save_checkpoint(model, tmp_path / "a.pt", class_names=["road"])
    with pytest.raises(ValueError, match="extra"):
        save_checkpoint(model, tmp_path / "a.pt", extra={"fn": print})
    assert not any(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------------------------------------
# Refusals


def _write(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_strict_and_non_strict_with_a_wrong_shape(tmp_path: Path) -> None:
    state = authors_state(SMALL, seed=9)
    bad = "sem_seg_head.predictor.query_feat.weight"
    state[bad] = torch.zeros(7, SMALL.decoder.hidden_dim)
    path = _write(tmp_path / "bad.pth", {"model": state})
    model = small_model()
    untouched = model.state_dict()["transformer_decoder.query_feat.weight"].clone()
    with pytest.raises(CheckpointError, match=r"1 mis-shaped.*transformer_decoder\.query_feat\.weight.*\[20, 64\]"):
        load_checkpoint(model, path)
    report = load_checkpoint(model, path, strict=False)
    assert not report.ok and report.missing == [] and report.unexpected == []
    assert report.mismatched == [("transformer_decoder.query_feat.weight", (20, 64), (7, 64))]
    assert report.loaded == len(model.state_dict()) - 1
    assert torch.equal(model.state_dict()["transformer_decoder.query_feat.weight"], untouched)
    assert_loaded(model, {k: v for k, v in state.items() if k != bad})


def test_strict_reports_missing_and_unexpected(tmp_path: Path) -> None:
    state = authors_state(SMALL, seed=10)
    del state["sem_seg_head.predictor.decoder_norm.weight"]
    state["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    path = _write(tmp_path / "partial.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(small_model(), path)
    message = str(err.value)
    assert "1 missing" in message and "transformer_decoder.decoder_norm.weight" in message
    assert "1 unexpected" in message and "sem_seg_head.predictor.extra_head.weight" in message
    report = load_checkpoint(small_model(), path, strict=False)
    assert report.missing == ["transformer_decoder.decoder_norm.weight"]
    assert report.unexpected == ["sem_seg_head.predictor.extra_head.weight"]


def torchvision_resnet_state(cfg: M2AConfig, seed: int) -> dict[str, torch.Tensor]:
    """torchvision ResNet names (METHOD.md 6.2's map read backwards) with fc and num_batches_tracked."""
    shapes: dict[str, tuple[int, ...]] = {}
    for d2, shape in spec_backbone_shapes(cfg, prefix="").items():
        tv = d2.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
        for k in (1, 2, 3):
            tv = tv.replace(f".conv{k}.norm.", f".bn{k}.")
        tv = tv.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
        for n in (2, 3, 4, 5):
            tv = tv.replace(f"res{n}.", f"layer{n - 1}.")
        shapes[tv] = shape
    state = random_state(shapes, seed)
    for name in [k for k in state if k.endswith("running_var")]:
        state[name.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
    return state | {"fc.weight": torch.zeros(1000, cfg.backbone.out_channels[-1]), "fc.bias": torch.zeros(1000)}


def _wrong_file(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A file that is not a Mask2Anomaly checkpoint, and the pattern its error message must match."""
    if kind == "torchvision":
        path = _write(tmp_path / "resnet50.pth", torchvision_resnet_state(SMALL, seed=12))
        return path, r"'conv1\.weight'.*load_backbone_weights"
    if kind == "random-dict":
        return _write(tmp_path / "random.pth", {"foo.weight": torch.zeros(3)}), r"'foo\.weight'"
    if kind == "random-pkl":
        path = tmp_path / "random.pkl"
        path.write_bytes(pickle.dumps({"foo.weight": np.zeros(3), "bar": np.ones((2, 2))}))
        return path, r"'foo\.weight', 'bar'"
    if kind == "tensor":
        return _write(tmp_path / "tensor.pth", torch.zeros(3)), "not a dict"
    if kind == "text":
        path = tmp_path / "notes.pth"
        path.write_text("these are not weights\n")
        return path, "neither a torch.save file nor a pickle"
    if kind == "truncated":
        valid = _write(tmp_path / "valid.pth", {"model": authors_state(SMALL, seed=11)})
        path = tmp_path / "truncated.pth"
        path.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
        return path, "truncated or corrupt"
    assert kind == "missing"
    return tmp_path / "absent.pth", "does not exist"


@pytest.mark.parametrize("kind", ["torchvision", "random-dict", "random-pkl", "tensor", "text", "truncated", "missing"])
def test_wrong_files_are_refused(tmp_path: Path, kind: str) -> None:
    path, pattern = _wrong_file(tmp_path, kind)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=pattern) as err:
            load_checkpoint(model, path, strict=strict)
        assert str(path) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_size_limit_checked_before_reading(tmp_path: Path) -> None:
    path = _write(tmp_path / "big.pth", {"model": authors_state(SMALL, seed=13)})
    with pytest.raises(CheckpointError, match=rf"{path.name}.*more than max_bytes=1000"):
        load_checkpoint(small_model(), path, max_bytes=1000)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(small_model(), empty)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["pkl", "pth-legacy", "pth-zip"])
def test_malicious_pickle_is_refused(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"model": {"backbone.stem.conv1.weight": np.zeros(3)}, "x": _Evil(marker)}
    if container == "pth-zip":
        path = _write(tmp_path / "evil.pth", payload)
        assert zipfile.is_zipfile(path)
    else:
        path = tmp_path / ("evil.pkl" if container == "pkl" else "evil.pth")
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="system") as err:
        load_checkpoint(small_model(), path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        build_model_from_checkpoint(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# Backbone initialisation (Barlow Twins / torchvision, detectron2-converted .pkl)


def test_barlow_twins_torchvision_weights_into_backbone(r50_model: Mask2Anomaly, tmp_path: Path) -> None:
    state = torchvision_resnet_state(R50, seed=14)
    path = _write(tmp_path / "resnet50.pth", {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    before = predict(r50_model)
    report = load_backbone_weights(r50_model, path)
    assert report.ok and report.source_format == "torchvision"
    assert report.loaded == 265 == sum(k.startswith("backbone.") for k in r50_model.state_dict())
    assert {"fc.weight", "fc.bias"} <= set(report.ignored)
    current = r50_model.state_dict()
    for name, tensor in state.items():
        d2 = torchvision_to_detectron2_key(name)
        if d2 is not None:
            assert torch.equal(current[f"backbone.{d2}"], tensor), name
    assert_changed(before, predict(r50_model))


def test_detectron2_converted_pkl_into_backbone_module(tmp_path: Path) -> None:
    model = small_model()
    state = random_state(spec_backbone_shapes(SMALL, prefix=""), seed=15)
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "torchvision"}, f)
    before = predict(model)
    report = load_backbone_weights(model.backbone, path)
    assert report.ok and report.source_format == "detectron2-pkl" and report.loaded == len(state)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in state.items())
    assert_changed(before, predict(model))


def test_backbone_weights_missing_key_is_an_error(tmp_path: Path) -> None:
    model = small_model()
    state = random_state(spec_backbone_shapes(SMALL, prefix=""), seed=16)
    del state["res3.0.conv2.weight"]
    path = _write(tmp_path / "partial.pth", state)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"1 missing.*backbone\.res3\.0\.conv2\.weight"):
            load_backbone_weights(model, path, strict=strict)
    with pytest.raises(CheckpointError, match="no ResNet weights"):
        load_backbone_weights(model, _write(tmp_path / "other.pth", {"foo": torch.zeros(1)}))
