"""The PyTorch backend: `Mask2Anomaly` in eager mode, CPU fp32 or CUDA fp16, scoring from `model.scoring`.

Same numbers as `m2a_perception.model.scoring.anomaly_segmentation` (same steps), split into timed stages.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2a_perception.backends.base import BackendConfig, BackendError, Result, _check_input_size
from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import CheckpointError, build_model_from_checkpoint
from m2a_perception.model.scoring import ScoringConfig, segment, tta_batch

__all__ = ["TorchBackend"]

log = logging.getLogger(__name__)
_UNCHANGED = object()
_WARMUP_SIZE = (128, 256)


def _resolve_device(device: str) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r}: torch {torch.__version__} sees no CUDA device "
                f"(CUDA build: {torch.version.cuda or 'none, CPU-only build'}); use device 'cpu'"
            )
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise BackendError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(device)


def _load_model(config: BackendConfig, device: torch.device) -> tuple[Mask2Anomaly, str]:
    """The model on ``device`` in eval mode, and a one-line description of where its weights came from."""
    preset = M2AConfig.preset(config.preset)
    if not config.model_path:
        log.warning(
            "m2a torch backend: no model_path given, using the %r preset with RANDOM weights: the anomaly scores "
            "are meaningless (for tests and plumbing only; set model_path to a trained checkpoint)",
            config.preset,
        )
        with torch.random.fork_rng(devices=[]):  # the same random model every time, global RNG untouched
            torch.manual_seed(0)
            model = Mask2Anomaly(preset)
        return model.to(device).eval(), f"random weights ({config.preset} preset)"
    path = Path(config.model_path).expanduser()
    if not path.is_file():
        raise BackendError(f"model_path {str(path)!r}: no such file")
    try:
        model, report = build_model_from_checkpoint(path, device=device)
        if report.source_format != "m2a" and config.preset != "r50":
            # detectron2 files carry no config: build the preset the user named (the default is r50)
            model, report = build_model_from_checkpoint(path, config=preset, device=device)
    except CheckpointError as e:
        raise BackendError(f"model_path {str(path)!r} (preset {config.preset!r}): {e}") from e
    for note in report.notes:
        log.info("m2a torch backend: %s", note)
    return model, f"{path.name} ({report.source_format}, {report.loaded} tensors)"


class TorchBackend:
    """`Backend` running `Mask2Anomaly` with PyTorch; see `BackendConfig` for the options."""

    name = "torch"

    def __init__(self, config: BackendConfig) -> None:
        if config.backend != "torch":
            raise ValueError(f"TorchBackend needs config.backend == 'torch', got {config.backend!r}")
        self.config = config
        self.device = _resolve_device(config.device)
        model, self.model_description = _load_model(config, self.device)
        self.dtype = torch.float16 if config.fp16 else torch.float32
        self.model = model.to(self.dtype)
        self._lock = threading.Lock()  # `update` swaps both settings at once
        self._settings: tuple[tuple[int, int] | None, ScoringConfig] = (config.input_size, config.scoring)
        num_classes = self.model.config.num_classes
        if max(config.scoring.refine_classes) >= num_classes:
            raise ValueError(
                f"scoring.refine_classes {config.scoring.refine_classes} must be class ids < {num_classes}"
            )

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) frames are resized to before the network; None = as they are."""
        return self._settings[0]

    @property
    def scoring(self) -> ScoringConfig:
        """The current scoring configuration."""
        return self._settings[1]

    def update(self, *, input_size: object = _UNCHANGED, scoring: ScoringConfig | None = None) -> None:
        """Change the network input size (None = as is) and/or the scoring; applies from the next `infer`."""
        with self._lock:
            size, current = self._settings
            if input_size is not _UNCHANGED:
                size = _check_input_size(input_size)
            if scoring is not None:
                if not isinstance(scoring, ScoringConfig):
                    raise ValueError(f"scoring must be a ScoringConfig, got {type(scoring).__name__}")
                current = scoring
            self._settings = (size, current)

    def warmup(self) -> None:
        """One inference on a grey frame of the input size (or 128 x 256), to set up kernels and allocators."""
        height, width = self.input_size or _WARMUP_SIZE
        self.infer(np.full((height, width, 3), 128, dtype=np.uint8))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def infer(self, frame_rgb: np.ndarray) -> Result:
        """(H, W, 3) uint8 RGB -> `Result` with the anomaly score and trainIds at (H, W), and stage timings."""
        frame = _check_frame(frame_rgb)
        input_size, cfg = self._settings
        height, width = frame.shape[:2]
        size = (height, width) if input_size is None else input_size
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device, non_blocking=True)
            x = x.permute(2, 0, 1).unsqueeze(0).float()
            if size != (height, width):  # as anomaly_segmentation: antialiased bilinear, rounded to 0-255
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                x = x.round().clamp(0.0, 255.0)
            x = tta_batch(x.to(self.dtype), cfg)
            self._sync()
            t1 = time.perf_counter()
            out = self.model(x)
            self._sync()
            t2 = time.perf_counter()
            anomaly, semantic = segment(out["pred_logits"], out["pred_masks"], size, (height, width), cfg)
            score = anomaly[0].to(torch.float32).cpu().numpy()
            labels = semantic[0].to(torch.uint8).cpu().numpy()
        t3 = time.perf_counter()
        return Result(
            anomaly_score=score,
            semantic=labels,
            timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
        )


def _check_frame(frame: object) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame_rgb must be a numpy array (H, W, 3) uint8 RGB, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame_rgb must be a non-empty (H, W, 3) uint8 RGB array, got {frame.dtype} {frame.shape}")
    return frame
