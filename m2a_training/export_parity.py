"""ONNX Runtime against PyTorch on generated road scenes: the exported graph must compute what the model does.

Both sides take the same frames at the graph's input size: the fused module in PyTorch eager mode (on the CPU
that is the fused `embedding_bag` deformable attention, so the check also covers it against grid_sample) and
the ONNX file in ONNX Runtime, optionally converted to fp16 (a CPU stand-in for an fp16 engine: every
intermediate tensor is stored in fp16, so an overflow shows up as inf or NaN in the outputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from m2a_perception.backends.sidecar import read_onnx_sidecar, sidecar_path
from m2a_perception.model.fused import FusedMask2Anomaly
from m2a_perception.synthroad import SceneConfig, generate_scene
from m2a_training.export_graph import float16_graph

__all__ = ["MIN_LABEL_AGREEMENT", "MAX_RELATIVE_ERROR", "ParityReport", "generated_frames", "run_parity"]

MAX_RELATIVE_ERROR = 1e-3  # of the anomaly score, relative to its largest magnitude (fp32)
MIN_LABEL_AGREEMENT = 0.999  # fraction of identical semantic labels (fp32)


@dataclass(frozen=True)
class ParityReport:
    """Worst case over the frames of the score error, and the overall label agreement."""

    frames: int
    precision: str  # "fp32" or "fp16" (the ONNX graph converted to fp16 for the check)
    max_abs_error: float
    max_relative_error: float  # max |ort - torch| / max |torch| (per frame, worst frame)
    label_agreement: float  # identical labels / all labels, over all frames
    finite: bool  # every ONNX Runtime output finite

    @property
    def passed(self) -> bool:
        """fp32: the issue's targets; fp16: finite outputs (its errors are reported, not judged)."""
        if self.precision == "fp16":
            return self.finite
        return (
            self.finite
            and self.max_relative_error <= MAX_RELATIVE_ERROR
            and self.label_agreement >= MIN_LABEL_AGREEMENT
        )

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.precision == "fp16":
            targets = ("", "", " (fp16: errors reported, only finiteness judged)")
        else:
            targets = (f" (target <= {MAX_RELATIVE_ERROR:g})", f" (target >= {100 * MIN_LABEL_AGREEMENT:g} %)", "")
        return (
            f"{verdict} {self.precision}, {self.frames} frames: anomaly score max abs error {self.max_abs_error:.3g}, "
            f"max relative error {self.max_relative_error:.3g}{targets[0]}; "
            f"identical labels {100 * self.label_agreement:.3f} %{targets[1]}; "
            f"outputs finite: {self.finite}{targets[2]}"
        )


def generated_frames(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` synthetic road scenes (H, W, 3) uint8 RGB at `size`, seeds seed, seed + 1, ..."""
    config = SceneConfig(height=size[0], width=size[1])
    return [generate_scene(seed + i, config).image for i in range(count)]


def _session(model: onnx.ModelProto | str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fp16 graph makes it list every op it runs in fp32
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    frames: list[np.ndarray],
    *,
    fp16: bool = False,
    threads: int | None = None,
) -> ParityReport:
    """Compare `onnx_path` (spec from its sidecar) in ONNX Runtime with `model` + scoring in PyTorch, frame by frame."""
    onnx_path = Path(onnx_path)
    sidecar = read_onnx_sidecar(sidecar_path(onnx_path))
    spec = sidecar.spec
    fused = FusedMask2Anomaly(model.to("cpu", torch.float32).eval(), spec).eval()
    graph = onnx.load(str(onnx_path))
    session = _session(float16_graph(graph) if fp16 else str(onnx_path), threads)
    max_abs = max_rel = 0.0
    same = total = 0
    finite = True
    for frame in frames:
        if frame.shape[:2] != spec.input_size:
            raise ValueError(f"frames must be {spec.input_size} (the graph's input size), got {frame.shape[:2]}")
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0).float()
        with torch.inference_mode():
            ref_score, ref_semantic = (t.numpy() for t in fused(image))
        score, semantic = session.run(list(sidecar.output_names), {sidecar.input_name: image.numpy()})
        finite = finite and bool(np.isfinite(score).all() and np.isfinite(semantic).all())
        err = float(np.abs(score.astype(np.float64) - ref_score).max())
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(float(np.abs(ref_score).max()), 1e-12))
        if spec.semantic == "scores":
            semantic, ref_semantic = semantic.argmax(axis=1), ref_semantic.argmax(axis=1)
        same += int((semantic == ref_semantic).sum())
        total += ref_semantic.size
    return ParityReport(
        frames=len(frames),
        precision="fp16" if fp16 else "fp32",
        max_abs_error=max_abs,
        max_relative_error=max_rel,
        label_agreement=same / max(total, 1),
        finite=finite,
    )
