"""What the backends that run an exported graph (onnxruntime, tensorrt) share: opening the model file against its
sidecar and the backend config, and moving frames in and maps out.

The graph takes (1, 3, H, W) float32 RGB 0-255 at its fixed input size. Frames are resized to it once, on the
backend's device, as the torch backend does (bilinear, antialiased when shrinking, rounded to 0-255); the maps
come back at the graph's output size and are resized to the frame once, on the same device: the score bilinearly,
labels by nearest neighbour, class scores bilinearly before their argmax.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2a_perception.backends.base import BackendConfig, BackendError, _check_input_size
from m2a_perception.backends.sidecar import OnnxSidecar, SidecarError, check_file, read_onnx_sidecar, sidecar_path
from m2a_perception.model.fused import GraphSpec
from m2a_perception.model.scoring import ScoringConfig

__all__ = ["FixedGraphSettings", "GraphIO", "check_config", "check_frame", "model_file", "open_onnx"]

_UNCHANGED = object()


def model_file(config: BackendConfig, suffixes: tuple[str, ...]) -> Path:
    """config.model_path as an existing file with one of `suffixes`, or a BackendError saying what is wrong."""
    name = config.backend
    if not config.model_path:
        raise BackendError(
            f"the {name} backend needs model_path: a file ending in {' or '.join(suffixes)} "
            "(made by `m2a-export onnx` / `m2a-export engine`)"
        )
    path = Path(config.model_path).expanduser()
    if path.suffix not in suffixes:
        raise BackendError(f"model_path {str(path)!r}: the {name} backend takes {' or '.join(suffixes)} files")
    if not path.is_file():
        raise BackendError(f"model_path {str(path)!r}: no such file")
    return path


def open_onnx(path: Path) -> OnnxSidecar:
    """The sidecar of an ONNX file, after checking that the file is the one it describes."""
    try:
        sidecar = read_onnx_sidecar(sidecar_path(path))
        check_file(path, sidecar.onnx_bytes, sidecar.onnx_sha256, "ONNX file")
    except SidecarError as e:
        raise BackendError(f"{path}: {e} (export model and sidecar together with `m2a-export onnx`)") from e
    return sidecar


def check_config(spec: GraphSpec, config: BackendConfig, path: Path) -> None:
    """BackendError unless the config asks for what the graph computes (input size, scoring)."""
    if config.input_size is not None and config.input_size != spec.input_size:
        raise BackendError(
            f"{path} takes {spec.input_size[0]}x{spec.input_size[1]} images, but input_size is "
            f"{config.input_size[0]}x{config.input_size[1]}: export the model at that size or leave input_size unset"
        )
    if not spec.same_scoring(config.scoring):
        raise BackendError(
            f"{path} was exported with scoring {spec.scoring}, but the config asks for {config.scoring}: "
            "an exported graph fixes its scoring (export again, or use the torch backend)"
        )


def check_frame(frame: object) -> np.ndarray:
    """The frame if it is a non-empty (H, W, 3) uint8 array, else ValueError."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame_rgb must be a numpy array (H, W, 3) uint8 RGB, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame_rgb must be a non-empty (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}")
    return frame


class GraphIO:
    """Frames to the graph's input and its outputs back to frames, on one device."""

    def __init__(self, spec: GraphSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device

    def to_input(self, frame: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H_in, W_in) float32 on the device; written into `out` when given."""
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, non_blocking=True)
        x = x.permute(2, 0, 1).unsqueeze(0).float()
        if tuple(frame.shape[:2]) != self.spec.input_size:
            x = F.interpolate(x, size=self.spec.input_size, mode="bilinear", align_corners=False, antialias=True)
            x = x.round_().clamp_(0.0, 255.0)
        if out is None:
            return x.contiguous()
        return out.copy_(x)

    def to_frame(
        self, score: torch.Tensor, semantic: torch.Tensor, frame_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Graph outputs (batch 1, on the device) -> score (H, W) float32 and labels (H, W) uint8 as numpy."""
        size = tuple(frame_size)
        score = score.float()
        if tuple(score.shape[-2:]) != size:
            score = F.interpolate(score[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        if self.spec.semantic == "scores":
            scores = semantic.float()
            if tuple(scores.shape[-2:]) != size:
                scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            labels = scores.argmax(dim=1)
        else:
            labels = semantic
            if tuple(labels.shape[-2:]) != size:
                labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
        return score[0].cpu().numpy(), labels[0].to(torch.uint8).cpu().numpy()


class FixedGraphSettings:
    """`input_size`, `scoring` and `update` of a backend whose graph fixes both: changes are a ValueError."""

    def __init__(self, spec: GraphSpec, path: Path) -> None:
        self._spec = spec
        self._path = path
        self._lock = threading.Lock()

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every frame is resized to: the graph's input size."""
        return self._spec.input_size

    @property
    def scoring(self) -> ScoringConfig:
        """The scoring the graph computes."""
        return self._spec.scoring

    def update(self, *, input_size: object = _UNCHANGED, scoring: ScoringConfig | None = None) -> None:
        """Accepts only the values the graph already has (an exported graph fixes them)."""
        with self._lock:
            if input_size is not _UNCHANGED and _check_input_size(input_size) not in (None, self._spec.input_size):
                raise ValueError(
                    f"{self._path} is fixed to {self._spec.input_size[0]}x{self._spec.input_size[1]} input: "
                    f"cannot change input_size to {input_size!r}"
                )
            if scoring is not None and not self._spec.same_scoring(scoring):
                raise ValueError(f"{self._path} fixes its scoring to {self._spec.scoring}: cannot change it")
