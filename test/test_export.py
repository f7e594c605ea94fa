"""`m2a-export onnx` / `check`: the small preset exported at 64x128, the graph's rules for TensorRT >= 8.6 (opset 17,
static shapes, GridSample, no control flow, no infinite masks), its sidecar, and ONNX Runtime parity (fp32 and an
fp16 conversion) with the PyTorch model on generated road scenes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import m2a_perception
from m2a_perception.backends.sidecar import file_sha256, read_onnx_sidecar, sidecar_path
from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import build_model_from_checkpoint, save_checkpoint
from m2a_perception.model.fused import FusedMask2Anomaly, GraphSpec
from m2a_perception.model.scoring import ScoringConfig, refinement_keep
from m2a_perception.model.transformer_decoder import _finite_masked_attention
from m2a_training.export import main, parse_size
from m2a_training.export_graph import (
    FORBIDDEN_OPS,
    OPSET,
    TENSORRT_86_OPS,
    ExportError,
    check_graph,
    export_onnx,
    op_histogram,
)
from m2a_training.export_parity import generated_frames, run_parity

SIZE = (64, 128)


def _checkpoint(path: Path, *, refine_class: int | None = None) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Mask2Anomaly(M2AConfig.preset("small"))
    if refine_class is not None:  # every query confidently one "stuff" class: the refinement switches on
        with torch.no_grad():
            model.transformer_decoder.class_embed.bias[refine_class] += 12.0
    return save_checkpoint(model, path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    checkpoint = _checkpoint(folder / "small.pt")
    onnx_path = folder / "small.onnx"
    assert main(["onnx", str(checkpoint), "-o", str(onnx_path), "--size", "64x128"]) == 0
    return checkpoint, onnx_path


def test_graph_is_fit_for_tensorrt(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    model = onnx.load(str(onnx_path))
    ops = op_histogram(model)
    print("operators:", ops)  # the histogram, for the record (pytest -s)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert ops["GridSample"] == 2 * 3  # 2 encoder layers x 3 levels: the grid_sample path, not embedding_bag
    assert ops["LayerNormalization"] > 0 and "InstanceNormalization" in ops  # native TensorRT 8.6 layers
    assert not set(ops) & ({"Loop", "If", "NonZero", "IsNaN", "IsInf", "Scan"} | FORBIDDEN_OPS)
    assert set(ops) <= TENSORRT_86_OPS
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*model.graph.input, *model.graph.output)
    }
    assert shapes == {"image": [1, 3, 64, 128], "anomaly_score": [1, 64, 128], "semantic": [1, 64, 128]}
    assert model.graph.output[1].type.tensor_type.elem_type == TensorProto.INT32
    assert check_graph(model, {k: (tuple(v), t) for k, v, t in _io(model)}) == []


def _io(model: onnx.ModelProto) -> list[tuple[str, list[int], int]]:
    return [
        (v.name, [d.dim_value for d in v.type.tensor_type.shape.dim], v.type.tensor_type.elem_type)
        for v in (*model.graph.input, *model.graph.output)
    ]


def test_sidecar_content(exported: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = exported
    data = json.loads(sidecar_path(onnx_path).read_text())
    assert (data["format"], data["format_version"], data["opset"], data["precision"]) == ("m2a-onnx", 1, 17, "fp32")
    assert data["m2a_version"] == m2a_perception.__version__ and data["software"]["torch"] == torch.__version__
    assert data["inputs"] == [{"name": "image", "shape": [1, 3, 64, 128], "dtype": "float32", "role": "input"}]
    assert [(t["name"], t["shape"], t["dtype"]) for t in data["outputs"]] == [
        ("anomaly_score", [1, 64, 128], "float32"),
        ("semantic", [1, 64, 128], "int32"),
    ]
    assert data["checkpoint"] == {"file": "small.pt", "sha256": file_sha256(checkpoint), "format": "m2a"}
    assert (data["onnx_bytes"], data["onnx_sha256"]) == (onnx_path.stat().st_size, file_sha256(onnx_path))
    assert data["output_size"] == [64, 128] and data["num_classes"] == 19
    assert data["model_config"] == M2AConfig.preset("small").to_dict()
    sidecar = read_onnx_sidecar(sidecar_path(onnx_path))
    assert sidecar.spec == GraphSpec(input_size=SIZE, semantic="labels", scoring=ScoringConfig(chunk_queries=None))
    assert GraphSpec.from_dict(json.loads(json.dumps(sidecar.spec.to_dict()))) == sidecar.spec


def test_onnxruntime_parity_fp32_and_fp16(exported: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = exported
    model, _ = build_model_from_checkpoint(checkpoint)
    frames = generated_frames(SIZE, 2)
    fp32 = run_parity(model, onnx_path, frames)
    assert fp32.passed, fp32.summary()
    assert fp32.max_relative_error <= 1e-3 and fp32.label_agreement >= 0.999 and fp32.finite
    fp16 = run_parity(model, onnx_path, frames, fp16=True)
    assert fp16.finite, fp16.summary()
    assert fp16.max_relative_error < 0.05 and fp16.label_agreement > 0.95, fp16.summary()


def test_check_command(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint, onnx_path = exported
    assert main(["check", str(onnx_path), str(checkpoint), "--frames", "1"]) == 0
    assert capsys.readouterr().out.startswith("PASS fp32, 1 frames")
    other = _checkpoint(tmp_path / "other.pt", refine_class=3)
    assert main(["check", str(onnx_path), str(other), "--frames", "1"]) == 2
    assert "exported from another checkpoint" in capsys.readouterr().err
    assert main(["onnx", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx"), "--size", "64x128"]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_quarter_resolution_class_scores_with_refinement(tmp_path: Path) -> None:
    """Fixed-shape keep-weights: the refinement is active (>= 2 kept queries) and still matches in ONNX Runtime."""
    checkpoint = _checkpoint(tmp_path / "stuffy.pt", refine_class=8)
    model, _ = build_model_from_checkpoint(checkpoint)
    spec = GraphSpec(input_size=SIZE, semantic="scores", scoring=ScoringConfig(resolution="quarter"))
    frames = generated_frames(SIZE, 1, seed=3)
    image = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        assert refinement_keep(model(image)["pred_logits"], spec.scoring).sum() >= 2
        anomaly, scores = FusedMask2Anomaly(model, spec)(image)
    assert anomaly.shape == (1, 16, 32) and scores.shape == (1, 19, 16, 32) and (anomaly == 0).any()

    sidecar = export_onnx(model, spec, tmp_path / "quarter.onnx")
    assert [t["shape"] for t in sidecar["outputs"]] == [[1, 16, 32], [1, 19, 16, 32]]
    assert "NonZero" not in sidecar["operators"] and "GridSample" in sidecar["operators"]
    report = run_parity(model, tmp_path / "quarter.onnx", frames)
    assert report.passed, report.summary()


def test_refused_export_writes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A graph that breaks a rule of check_graph (tested below, rule by rule) leaves no file behind."""
    from m2a_training import export_graph

    monkeypatch.setattr(export_graph, "check_graph", lambda model, expected: ["no GridSample: ..."])
    with pytest.raises(ExportError, match="not fit for TensorRT >= 8.6: no GridSample"):
        export_onnx(Mask2Anomaly(M2AConfig.preset("small")), GraphSpec(input_size=(32, 64)), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def _tiny_graph(op: str, *, opset: int = OPSET, dim: int | str = 4, const: float = 1.0) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dim])
    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [1], [const]))
    nodes = [c, helper.make_node("Add", ["x", "c"], ["y"] if op == "Add" else ["t"])]
    if op != "Add":
        nodes.append(helper.make_node(op, ["t"], ["y"]))
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_check_graph_names_each_broken_rule() -> None:
    io = {"x": ((1, 4), TensorProto.FLOAT), "y": ((1, 4), TensorProto.FLOAT)}
    only_grid_sample_missing = check_graph(_tiny_graph("Add"), io)
    assert len(only_grid_sample_missing) == 1 and "no GridSample" in only_grid_sample_missing[0]
    assert any("opset: expected 17, got 18" in p for p in check_graph(_tiny_graph("Add", opset=18), io))
    assert any("'NonZero'" in p for p in check_graph(_tiny_graph("NonZero"), io))
    assert any("outside TENSORRT_86_OPS: ['Reciprocal']" in p for p in check_graph(_tiny_graph("Reciprocal"), io))
    assert any("non-finite constants" in p for p in check_graph(_tiny_graph("Add", const=float("-inf")), io))
    dynamic = check_graph(_tiny_graph("Add", dim="width"), io)
    assert any("inputs/outputs" in p for p in dynamic) and any("static shape" in p for p in dynamic)


def test_finite_masked_attention_matches_sdpa_and_stays_finite_in_fp16() -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=generator)  # (batch, heads, queries, head_dim); 8 keys below
    allowed = torch.rand(2, 1, 5, 8, generator=generator) > 0.6
    allowed[..., 0] = True  # every row has an allowed key, as attention_allowed_masks guarantees
    k = torch.randn(2, 4, 8, 8, generator=generator)
    v = torch.randn(2, 4, 8, 8, generator=generator)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(_finite_masked_attention(q, k, v, allowed), expected, atol=1e-6, rtol=1e-5)
    # fp16 with large logits (~1e3) and a partly blocked row: finite, the blocked keys get no weight.
    half = _finite_masked_attention((q * 30).half(), (k * 30).half(), v.half(), allowed)
    assert torch.isfinite(half).all()
    one_key = allowed.clone()
    one_key[..., 1:] = False
    torch.testing.assert_close(
        _finite_masked_attention(q.half() * 30, k.half() * 30, v.half(), one_key), v.half()[:, :, :1].expand(2, 4, 5, 8)
    )


def test_spec_and_size_validation() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        GraphSpec(input_size=(100, 128))
    with pytest.raises(ValueError, match="semantic must be one of"):
        GraphSpec(input_size=SIZE, semantic="logits")
    assert GraphSpec(input_size=SIZE, scoring=ScoringConfig(chunk_queries=16)).scoring.chunk_queries is None
    assert GraphSpec(input_size=SIZE).same_scoring(ScoringConfig())  # chunking changes no result
    assert not GraphSpec(input_size=SIZE).same_scoring(ScoringConfig(refine=False))
    with pytest.raises(ValueError, match="unknown scoring keys"):
        GraphSpec.from_dict({"input_size": [64, 128], "semantic": "labels", "scoring": {"bogus": 1}})
    assert parse_size("1024x2048") == (1024, 2048)
    for bad in ("1024", "1000x2048", "axb"):
        with pytest.raises(Exception, match="size must be"):
            parse_size(bad)
    with pytest.raises(ValueError, match=r"image must be \(batch, 3, 64, 128\)"):
        FusedMask2Anomaly(Mask2Anomaly(M2AConfig.preset("small")), GraphSpec(input_size=SIZE))(
            torch.zeros(1, 3, 32, 32)
        )
