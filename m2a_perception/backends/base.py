"""The inference backend interface: frame (H, W, 3) uint8 RGB -> `Result` (anomaly score, semantic map, timings).

One interface for every runtime: the torch backend (CPU fp32 / CUDA fp16) now; ONNX Runtime and TensorRT behind
the same `create_backend` later (the export issue). The node and `replay` only see `Backend`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from m2a_perception.model.scoring import ScoringConfig

__all__ = [
    "AVAILABLE_BACKENDS",
    "BACKENDS",
    "PRESET_NAMES",
    "Backend",
    "BackendConfig",
    "BackendError",
    "Result",
    "create_backend",
]

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")  # every name the `backend` parameter accepts
AVAILABLE_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
PRESET_NAMES: tuple[str, ...] = ("r50", "small")  # = sorted(m2a_perception.model.PRESETS); a test keeps them equal
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_MAX_SIDE = 8192


class BackendError(RuntimeError):
    """A backend that cannot be created or run here (missing runtime, no CUDA device, unreadable model file)."""


@dataclass
class Result:
    """One frame's network output, at the frame's resolution.

    anomaly_score: (H, W) float32, higher = more anomalous (about 0..1 for the default scoring; not clipped).
    semantic: (H, W) uint8 Cityscapes trainIds (0 road ... 18 bicycle).
    timings: seconds per stage: "preprocess" (to tensor, resize, to device), "inference" (the network),
        "postprocess" (scoring, resize back, to numpy).
    """

    anomaly_score: np.ndarray
    semantic: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def _check_input_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= _MAX_SIDE for s in size)
    ):
        raise ValueError(f"input_size must be None or (height, width), two ints in 1..{_MAX_SIDE}, got {size!r}")
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class BackendConfig:
    """What `create_backend` builds: runtime, model, device, precision, network input size, scoring.

    backend: "torch" now; "onnxruntime" and "tensorrt" come with the export issue (a clear error until then).
    model_path: a checkpoint (ours, or the authors' detectron2 .pth/.pkl); "" = the `preset` with RANDOM weights
        (a loud warning: only for tests and plumbing until trained weights exist).
    preset: the architecture when model_path is "" or a detectron2 file (which carries no config): "small" | "r50".
    device: "cpu", "cuda" or "cuda:N".
    fp16: half precision, CUDA only.
    input_size: (height, width) every frame is resized to before the network (results come back at the frame's
        size); None = frames as they are.
    scoring: how the network's outputs become the anomaly score (variant, refinement, flip TTA).
    """

    backend: str = "torch"
    model_path: str = ""
    preset: str = "small"
    device: str = "cpu"
    fp16: bool = False
    input_size: tuple[int, int] | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.model_path, str):
            raise ValueError(f'model_path must be a string ("" = random weights), got {self.model_path!r}')
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"preset must be one of {PRESET_NAMES}, got {self.preset!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.fp16, bool):
            raise ValueError(f"fp16 must be a bool, got {self.fp16!r}")
        if self.fp16 and self.device == "cpu":
            raise ValueError("fp16 needs a CUDA device: got fp16=True with device='cpu' (use fp32 on the CPU)")
        object.__setattr__(self, "input_size", _check_input_size(self.input_size))
        if not isinstance(self.scoring, ScoringConfig):
            raise ValueError(f"scoring must be a ScoringConfig, got {type(self.scoring).__name__}")


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns RGB frames into anomaly scores and semantic maps.

    `input_size` and `scoring` may be changed between calls with `update` (the node does so when its
    parameters change); a backend whose graph fixes them (an exported engine) raises ValueError there.
    """

    name: str
    input_size: tuple[int, int] | None

    def warmup(self) -> None:
        """Run the model once so that the first real frame is not slowed by lazy initialisation."""
        ...

    def infer(self, frame_rgb: np.ndarray) -> Result:
        """(H, W, 3) uint8 RGB frame -> `Result` at (H, W)."""
        ...

    def update(self, *, input_size: tuple[int, int] | None = ..., scoring: ScoringConfig | None = None) -> None:
        """Change the network input size and/or the scoring; thread-safe with respect to `infer`."""
        ...


def create_backend(config: BackendConfig) -> Backend:
    """The backend that `config.backend` names, loaded and ready (`warmup` not yet run)."""
    if not isinstance(config, BackendConfig):
        raise ValueError(f"config must be a BackendConfig, got {type(config).__name__}")
    if config.backend == "torch":
        from m2a_perception.backends.torch_backend import TorchBackend  # late: keeps torch.cuda set-up off import

        return TorchBackend(config)
    if config.backend == "onnxruntime":  # model_path: an .onnx file from `m2a-export onnx`
        from m2a_perception.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(config)
    if config.backend == "tensorrt":  # model_path: an .engine, or an .onnx built into a cached engine on first start
        from m2a_perception.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(config)
    raise BackendError(f"unknown backend {config.backend!r}; available: {AVAILABLE_BACKENDS}")
