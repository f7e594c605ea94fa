"""Inference backends behind one interface: frame (H, W, 3) uint8 RGB -> `Result` (anomaly score, semantic map).

`create_backend(BackendConfig(...))` returns the backend the config names: "torch" (CPU fp32 / CUDA fp16),
"onnxruntime" (an exported ONNX graph) or "tensorrt" (an fp16 engine built from it).
"""

from m2a_perception.backends.base import (
    AVAILABLE_BACKENDS,
    BACKENDS,
    PRESET_NAMES,
    Backend,
    BackendConfig,
    BackendError,
    Result,
    create_backend,
)

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
