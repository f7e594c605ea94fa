"""The TensorRT calls (>= 8.6 Python API): build an engine from ONNX, describe the running TensorRT and GPU,
deserialise an engine. `TensorRTTools` implements `engine_cache.EngineTools`; TensorRT is imported only when one
is created, so this module imports anywhere. The GPU is named through torch.cuda, which also owns the CUDA
context TensorRT runs in (no second context, no pycuda).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from m2a_perception.backends.base import BackendError
from m2a_perception.backends.engine_cache import BuildOptions, RuntimeInfo

__all__ = ["MIN_TENSORRT", "TensorRTTools", "import_tensorrt"]

log = logging.getLogger(__name__)
MIN_TENSORRT = (8, 6)


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a BackendError saying how to get it and which version is needed."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(
            "the tensorrt backend needs TensorRT >= 8.6 and its Python bindings: `pip install 'm2a[tensorrt]'` "
            "(from NVIDIA's package index) or JetPack's python3-libnvinfer; not importable here: " + str(e)
        ) from e
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TENSORRT:
        raise BackendError(f"TensorRT {trt.__version__} is too old: m2a engines need >= 8.6 (GridSample, LayerNorm)")
    return trt


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TensorRTTools:
    """`EngineTools` on the real TensorRT, for one CUDA device."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise BackendError(
                f"TensorRT needs a CUDA device; got device {str(self.device)!r} (CUDA available: "
                f"{torch.cuda.is_available()})"
            )
        self.trt = import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = None  # created on first deserialize, kept alive as long as its engines

    def runtime_info(self) -> RuntimeInfo:
        major, minor = torch.cuda.get_device_capability(self.device)
        return RuntimeInfo(self.trt.__version__, torch.cuda.get_device_name(self.device), (int(major), int(minor)))

    def build(self, onnx_path: Path, options: BuildOptions) -> bytes:
        """Parse `onnx_path`, build with `options` (fp16, workspace, timing cache read and written back)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "NATIVE_INSTANCENORM"):
            parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)  # GroupNorm: native layer, not the plugin
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        if options.fp16:
            if not getattr(builder, "platform_has_fast_fp16", True):
                log.warning("m2a tensorrt: %s has no fast fp16; building fp16 anyway", self.runtime_info().gpu_name)
            # LayerNormalization (opset 17) becomes INormalizationLayer, which computes in fp32 even in fp16
            # engines; the exported attention masks are finite; softmax subtracts its maximum.
            config.set_flag(trt.BuilderFlag.FP16)
        cache_file = options.timing_cache
        cached = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
        timing_cache = config.create_timing_cache(cached)
        if not config.set_timing_cache(timing_cache, False):
            log.warning("m2a tensorrt: timing cache %s is from another TensorRT or GPU; starting a new one", cache_file)
            config.set_timing_cache(config.create_timing_cache(b""), False)
        with torch.cuda.device(self.device):
            plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (see its log)")
        if cache_file is not None:
            _write_atomic(cache_file, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def deserialize(self, plan: bytes) -> Any:
        """The ICudaEngine for `plan`, or None when this TensorRT cannot read it."""
        if self._runtime is None:
            self._runtime = self.trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            return self._runtime.deserialize_cuda_engine(plan)
