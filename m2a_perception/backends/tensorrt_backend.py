"""The TensorRT backend: an engine of the exported graph (network + scoring), fp16 or fp32.

model_path is either the `.onnx` from `m2a-export onnx` or an `.engine` / `.plan` from `m2a-export engine` with its
sidecar, which must match the running TensorRT and GPU. From an ONNX file the engine is built on first start into
the cache folder, keyed by the ONNX hash, TensorRT version and GPU, and reused after (see `engine_cache`; builds
share the timing cache `<cache>/timing.cache`). The input and output buffers are torch CUDA tensors bound to the
execution context once; TensorRT runs on a torch CUDA stream, in torch's CUDA context (no second context). Frames
are resized to the engine's input size, and the maps back to the frame, with torch on the same GPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2a_perception.backends.base import BackendConfig, BackendError, Result
from m2a_perception.backends.engine_cache import (
    DEFAULT_WORKSPACE_BYTES,
    BuildOptions,
    EngineCache,
    EngineTools,
    RuntimeInfo,
    default_cache_dir,
    runtime_mismatch,
)
from m2a_perception.backends.graph_io import (
    FixedGraphSettings,
    GraphIO,
    check_config,
    check_frame,
    model_file,
    open_onnx,
)
from m2a_perception.backends.sidecar import SidecarError, check_file, read_engine_sidecar, sidecar_path
from m2a_perception.model.fused import INPUT_NAME, OUTPUT_NAMES, GraphSpec

__all__ = ["ENGINE_SUFFIXES", "MAX_ENGINE_BYTES", "TensorRTBackend"]

ENGINE_SUFFIXES = (".engine", ".plan")
MAX_ENGINE_BYTES = 4 << 30
# TensorRT DataType names -> torch dtypes of the bound buffers.
_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorRTBackend(FixedGraphSettings):
    """`Backend` running a TensorRT engine; see the module doc. `tools` replaces TensorRT (tests)."""

    name = "tensorrt"

    def __init__(
        self,
        config: BackendConfig,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        timing_cache: str | os.PathLike[str] | None = None,
        tools: EngineTools | None = None,
    ) -> None:
        if config.backend != "tensorrt":
            raise ValueError(f"TensorRTBackend needs config.backend == 'tensorrt', got {config.backend!r}")
        path = model_file(config, (".onnx", *ENGINE_SUFFIXES))
        self.config = config
        self.device = torch.device(config.device)
        if tools is None:
            if self.device.type != "cuda":
                raise BackendError(f"the tensorrt backend needs device 'cuda' or 'cuda:N', got {config.device!r}")
            from m2a_perception.backends.tensorrt_build import TensorRTTools  # imports tensorrt

            tools = TensorRTTools(self.device)
        self.tools = tools
        cache = Path(default_cache_dir() if cache_dir is None else cache_dir)
        options = BuildOptions(
            fp16=config.fp16,
            workspace_bytes=workspace_bytes,
            timing_cache=cache / "timing.cache" if timing_cache is None else Path(timing_cache),
        )
        if path.suffix == ".onnx":
            spec, tensors, self.engine_path, engine = self._from_onnx(path, cache, options)
        else:
            spec, tensors, engine = self._from_engine(path, options)
            self.engine_path = path
        super().__init__(spec, path)
        self.io = GraphIO(spec, self.device)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.buffers = self._bind(tensors)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._run_lock = threading.Lock()  # the bound buffers serve one frame at a time

    def _from_onnx(
        self, path: Path, cache_dir: Path, options: BuildOptions
    ) -> tuple[GraphSpec, list[dict[str, Any]], Path, Any]:
        sidecar = open_onnx(path)
        check_config(sidecar.spec, self.config, path)
        cache = EngineCache(cache_dir, self.tools)
        try:
            engine_path, decision = cache.resolve(path, options)
            engine = self._deserialize(engine_path)
            if engine is None and decision.action == "hit":
                why = f"TensorRT could not deserialize the cached {engine_path}"
                engine_path, _ = cache.resolve(path, options, rebuild=why)
                engine = self._deserialize(engine_path)
        except SidecarError as e:
            raise BackendError(str(e)) from e
        if engine is None:
            raise BackendError(f"TensorRT could not deserialize the engine it just built from {path}: {engine_path}")
        return sidecar.spec, [*sidecar.data["inputs"], *sidecar.data["outputs"]], engine_path, engine

    def _from_engine(self, path: Path, options: BuildOptions) -> tuple[GraphSpec, list[dict[str, Any]], Any]:
        try:
            meta = read_engine_sidecar(sidecar_path(path))
        except SidecarError as e:
            raise BackendError(f"{e} (build engine and sidecar with `m2a-export engine`, or give the .onnx)") from e
        built = RuntimeInfo(meta.tensorrt_version, meta.gpu_name, meta.compute_capability)
        why = runtime_mismatch(built, self.tools.runtime_info())
        if why is not None:
            raise BackendError(
                f"{path} cannot run here: {why}; build it here with `m2a-export engine`, or give the .onnx file "
                "as model_path (the backend then builds and caches a matching engine)"
            )
        if meta.precision != options.precision:
            raise BackendError(
                f"{path} is an {meta.precision} engine, but fp16={self.config.fp16} asks for {options.precision}"
            )
        try:
            check_file(path, meta.engine_bytes, meta.engine_sha256, "engine")
        except SidecarError as e:
            raise BackendError(str(e)) from e
        check_config(meta.spec, self.config, path)
        engine = self._deserialize(path)
        if engine is None:
            raise BackendError(f"{path}: TensorRT {built.tensorrt_version} could not deserialize it (corrupt file?)")
        tensors = meta.data.get("inputs"), meta.data.get("outputs")
        if not all(isinstance(t, list) for t in tensors):
            raise BackendError(f"{meta.path}: fields 'inputs' and 'outputs' must be lists of tensors")
        return meta.spec, [*tensors[0], *tensors[1]], engine

    def _deserialize(self, path: Path) -> Any:
        size = path.stat().st_size
        if size > MAX_ENGINE_BYTES:
            raise BackendError(f"{path}: {size} bytes, more than the {MAX_ENGINE_BYTES} an engine may have")
        return self.tools.deserialize(path.read_bytes())

    def _bind(self, tensors: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One device tensor per engine input/output, bound to the context; checked against the sidecar."""
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        got = {n: (engine.get_tensor_mode(n).name, [int(d) for d in engine.get_tensor_shape(n)]) for n in names}
        modes = {INPUT_NAME: "INPUT", OUTPUT_NAMES[0]: "OUTPUT", OUTPUT_NAMES[1]: "OUTPUT"}
        expected = {t.get("name"): (modes.get(t.get("name")), t.get("shape")) for t in tensors}
        if got != expected:
            raise BackendError(f"{self._path}: the engine's tensors {got} are not those of its sidecar {expected}")
        buffers = {}
        for name, (_, shape) in got.items():
            dtype_name = engine.get_tensor_dtype(name).name
            if dtype_name not in _TORCH_DTYPES:
                raise BackendError(f"{self._path}: engine tensor {name!r} has unsupported type {dtype_name}")
            buffers[name] = torch.empty(shape, dtype=_TORCH_DTYPES[dtype_name], device=self.device)
            self.context.set_tensor_address(name, buffers[name].data_ptr())
        return buffers

    def _stream_context(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def warmup(self) -> None:
        """One inference on a grey frame of the input size (TensorRT sets up its kernels on the first run)."""
        self.infer(np.full((*self.input_size, 3), 128, dtype=np.uint8))

    def infer(self, frame_rgb: np.ndarray) -> Result:
        """(H, W, 3) uint8 RGB -> `Result` with the anomaly score and trainIds at (H, W), and stage timings."""
        frame = check_frame(frame_rgb)
        with self._run_lock, torch.inference_mode(), self._stream_context():
            t0 = time.perf_counter()
            self.io.to_input(frame, out=self.buffers[INPUT_NAME])
            self._sync()
            t1 = time.perf_counter()
            handle = self.stream.cuda_stream if self.stream is not None else 0
            if not self.context.execute_async_v3(handle):
                raise BackendError(f"TensorRT failed to run {self.engine_path}")
            self._sync()
            t2 = time.perf_counter()
            score, semantic = (self.buffers[name] for name in OUTPUT_NAMES)
            anomaly, labels = self.io.to_frame(score, semantic, frame.shape[:2])
            t3 = time.perf_counter()
        return Result(
            anomaly_score=anomaly,
            semantic=labels,
            timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
        )
