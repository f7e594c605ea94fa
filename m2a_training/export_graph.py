"""Mask2Anomaly -> ONNX: the fused graph (normalisation + network + scoring), its checks and its sidecar.

`export_onnx` traces `FusedMask2Anomaly` with the TorchScript-based exporter, which writes opset 17 directly
(TensorRT 8.6 reads opsets up to 17; the torch.export-based exporter starts at 18 and cannot convert this graph
down). `check_graph` then holds the graph to what a TensorRT >= 8.6 engine needs: opset 17, one static input of
batch 1, static outputs, only operators TensorRT 8.6 parses, no control flow or data-dependent shapes, GridSample
for the deformable attention and no infinite constants (fp16 engines).
"""

from __future__ import annotations

import collections
import datetime
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import m2a_perception
from m2a_perception.backends.sidecar import FORMAT_VERSION, ONNX_FORMAT, file_sha256, sidecar_path, write_json_atomic
from m2a_perception.model.fused import INPUT_NAME, OUTPUT_NAMES, FusedMask2Anomaly, GraphSpec

__all__ = [
    "FORBIDDEN_OPS",
    "OPSET",
    "TENSORRT_86_OPS",
    "ExportError",
    "check_graph",
    "export_onnx",
    "float16_graph",
    "op_histogram",
]

OPSET = 17
# Operators of the default domain that TensorRT 8.6's ONNX parser imports (onnx-tensorrt's operator matrix), as
# far as a Mask2Anomaly graph can use them. A new operator in the graph fails `check_graph` until it is checked
# against that matrix and added here.
_TENSORRT_86_OP_NAMES = """
Abs Add And ArgMax Cast Ceil Clip Concat Constant ConstantOfShape Conv Cos Div Einsum Equal Erf Exp Expand
Flatten Floor Gather GatherElements Gemm GlobalAveragePool Greater GreaterOrEqual GridSample Identity
InstanceNormalization LayerNormalization Less LessOrEqual Log MatMul Max MaxPool Min Mul Neg Not Or Pad Pow
Range ReduceMax ReduceMean ReduceMin ReduceSum Relu Reshape Resize Shape Sigmoid Sin Slice Softmax
Split Sqrt Squeeze Sub Tanh Tile TopK Transpose Unsqueeze Where
"""
TENSORRT_86_OPS = frozenset(_TENSORRT_86_OP_NAMES.split())
# Control flow and data-dependent shapes: never in a fixed-shape engine graph.
FORBIDDEN_OPS = frozenset({"Loop", "If", "Scan", "NonZero", "Unique", "Compress", "IsInf", "IsNaN"})


class ExportError(RuntimeError):
    """The exported graph breaks one of the rules an engine build relies on."""


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Operator type -> count over the main graph, most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(counts.most_common())


def _shape(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value.type.tensor_type.shape.dim
    )


def _nonfinite_constants(model: onnx.ModelProto) -> list[str]:
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        tensors += [(node.output[0], a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    bad = []
    for name, tensor in tensors:
        floating = tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
        if floating and not np.isfinite(onnx.numpy_helper.to_array(tensor)).all():
            bad.append(name)
    return bad


def _non_static_tensors(model: onnx.ModelProto) -> list[str]:
    """Node outputs whose shape does not follow from the static input shape (ONNX Runtime's shape inference,
    which folds the Shape/Gather/Concat chains the tracer writes; ONNX's own leaves those symbolic)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    outputs = [name for node in model.graph.node for name in node.output if name]
    return [
        name
        for name in outputs
        if name not in known
        or any(d.dim_param or not d.HasField("dim_value") for d in known[name].type.tensor_type.shape.dim)
    ]


def check_graph(model: onnx.ModelProto, expected: dict[str, tuple[tuple[int, ...], int]]) -> list[str]:
    """Every rule the graph breaks (empty = fine); `expected` maps each input/output name to (shape, elem_type)."""
    problems = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        problems.append(f"opset: expected {OPSET}, got {opsets.get('ai.onnx')}")
    if set(opsets) - {"ai.onnx"}:
        problems.append(f"operator domains other than the standard one: {sorted(set(opsets) - {'ai.onnx'})}")
    graph_io = {v.name: (_shape(v), v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)}
    if graph_io != expected:
        problems.append(f"inputs/outputs: expected {expected}, got {graph_io}")
    ops = set(op_histogram(model))
    if ops & FORBIDDEN_OPS:
        problems.append(f"control flow or data-dependent shapes: {sorted(ops & FORBIDDEN_OPS)}")
    if ops - TENSORRT_86_OPS - FORBIDDEN_OPS:
        problems.append(f"operators outside TENSORRT_86_OPS: {sorted(ops - TENSORRT_86_OPS - FORBIDDEN_OPS)}")
    if "GridSample" not in ops:
        problems.append("no GridSample: the deformable attention took the fused CPU path instead of grid_sample")
    bad = _nonfinite_constants(model)
    if bad:
        problems.append(f"non-finite constants (an fp16 engine would turn them into NaN): {bad[:5]}")
    try:
        dynamic = _non_static_tensors(model)
    except Exception as e:  # noqa: BLE001 - any failure of the inference is itself the finding
        dynamic = [f"(shape inference failed: {type(e).__name__} {e})"]
    if dynamic:
        problems.append(f"tensors without a static shape ({len(dynamic)}): {dynamic[:5]}")
    return problems


def float16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with fp16 weights and activations, fp32 inputs and outputs (a CPU stand-in for an fp16 engine)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # ships with onnxruntime

    return convert_float_to_float16(model, keep_io_types=True)


def _traced_input(spec: GraphSpec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, *spec.input_size), generator=generator).float()


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:  # pragma: no cover - only the versions of what is installed are recorded
        return "not installed"


def _graph_io(spec: GraphSpec, num_classes: int) -> tuple[list[dict[str, Any]], dict[str, tuple[tuple[int, ...], int]]]:
    shapes = spec.output_shapes(num_classes)
    semantic_type = onnx.TensorProto.INT32 if spec.semantic == "labels" else onnx.TensorProto.FLOAT
    io = [
        (INPUT_NAME, (1, 3, *spec.input_size), onnx.TensorProto.FLOAT, "input"),
        (OUTPUT_NAMES[0], shapes[OUTPUT_NAMES[0]], onnx.TensorProto.FLOAT, "output"),
        (OUTPUT_NAMES[1], shapes[OUTPUT_NAMES[1]], semantic_type, "output"),
    ]
    described = [
        {"name": n, "shape": list(s), "dtype": onnx.helper.tensor_dtype_to_np_dtype(t).name, "role": r}
        for n, s, t, r in io
    ]
    return described, {n: (s, t) for n, s, t, _ in io}


def export_onnx(
    model: nn.Module,
    spec: GraphSpec,
    path: str | os.PathLike[str],
    *,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model` + scoring as `path` (ONNX opset 17, batch 1, `spec.input_size`) and its sidecar; return it.

    model: a `Mask2Anomaly` (moved to the CPU in fp32 eval mode for tracing). checkpoint: what the sidecar
    records about the weights' file (e.g. {"file": name, "sha256": hex}). Raises ExportError, and writes
    nothing, when the graph breaks a rule of `check_graph`.
    """
    path = Path(path)
    model = model.to("cpu", torch.float32).eval()
    num_classes = int(model.config.num_classes)
    fused = FusedMask2Anomaly(model, spec).eval()
    inputs, expected = _graph_io(spec, num_classes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-int shape check, and torch about its legacy exporter.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                fused,
                (_traced_input(spec),),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        problems = check_graph(proto, expected)
        if problems:
            raise ExportError(f"{path}: the exported graph is not fit for TensorRT >= 8.6: " + "; ".join(problems))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    sidecar = {
        "format": ONNX_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "m2a_version": m2a_perception.__version__,
        "software": {name: _version(name) for name in ("torch", "onnx")},
        "opset": OPSET,
        "precision": "fp32",
        "graph": spec.to_dict(),
        "output_size": list(spec.output_size),
        "num_classes": num_classes,
        "inputs": inputs[:1],
        "outputs": inputs[1:],
        "model_config": model.config.to_dict(),
        "checkpoint": dict(checkpoint or {}),
        "onnx_bytes": path.stat().st_size,
        "onnx_sha256": file_sha256(path),
        "operators": op_histogram(proto),
    }
    write_json_atomic(sidecar_path(path), sidecar)
    return sidecar
