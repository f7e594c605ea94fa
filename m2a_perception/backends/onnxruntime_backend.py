"""The ONNX Runtime backend: the graph `m2a-export onnx` wrote (network + scoring), on the CPU or through the CUDA
execution provider.

The model file is an `.onnx` with its sidecar (`model.onnx.json`); its input size and scoring are fixed, so
`config.input_size` (if set) and `config.scoring` must match them. On CUDA the frame is resized and the maps
resized back with torch on the GPU, and ONNX Runtime reads and writes those torch tensors in place (I/O binding).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

from m2a_perception.backends.base import BackendConfig, BackendError, Result
from m2a_perception.backends.graph_io import (
    FixedGraphSettings,
    GraphIO,
    check_config,
    check_frame,
    model_file,
    open_onnx,
)
from m2a_perception.backends.sidecar import OnnxSidecar

__all__ = ["OnnxRuntimeBackend"]

_TORCH_DTYPES = {"tensor(float)": torch.float32, "tensor(int32)": torch.int32, "tensor(float16)": torch.float16}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError(f"the onnxruntime backend needs onnxruntime (`pip install onnxruntime`): {e}") from e
    return onnxruntime


class OnnxRuntimeBackend(FixedGraphSettings):
    """`Backend` running an exported graph with ONNX Runtime; `threads` sets its intra-op threads (CPU)."""

    name = "onnxruntime"

    def __init__(self, config: BackendConfig, *, threads: int | None = None) -> None:
        if config.backend != "onnxruntime":
            raise ValueError(f"OnnxRuntimeBackend needs config.backend == 'onnxruntime', got {config.backend!r}")
        if config.fp16:
            raise BackendError("the onnxruntime backend runs the exported fp32 graph: set fp16=False (fp16: tensorrt)")
        ort = _import_onnxruntime()
        path = model_file(config, (".onnx",))
        sidecar = open_onnx(path)
        check_config(sidecar.spec, config, path)
        super().__init__(sidecar.spec, path)
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError(
                    f"device {config.device!r}: this onnxruntime has no CUDA execution provider "
                    f"(has {ort.get_available_providers()}); install onnxruntime-gpu or use device 'cpu'"
                )
            if not torch.cuda.is_available():
                raise BackendError(f"device {config.device!r}: torch sees no CUDA device")
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: on a vehicle the CPU is shared with every other node.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self._check_session(path, sidecar)
        self.io = GraphIO(sidecar.spec, self.device)
        self._names = (self.session.get_inputs()[0].name, [o.name for o in self.session.get_outputs()])
        self._binding = self._bind() if self.device.type == "cuda" else None
        self._run_lock = threading.Lock()  # the bound buffers serve one frame at a time

    def _check_session(self, path: Any, sidecar: OnnxSidecar) -> None:
        """BackendError unless the graph's inputs and outputs are the ones its sidecar describes."""
        expected = [(t.get("name"), t.get("shape")) for t in (*sidecar.data["inputs"], *sidecar.data["outputs"])]
        got = [(t.name, list(t.shape)) for t in (*self.session.get_inputs(), *self.session.get_outputs())]
        if got != expected:
            raise BackendError(f"{path}: the graph's inputs and outputs {got} are not those of its sidecar {expected}")

    def _bind(self) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
        """I/O binding to preallocated torch CUDA tensors (no copy through the host, no per-frame allocation)."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        spec = self.session.get_inputs()[0]
        image = torch.empty(spec.shape, dtype=torch.float32, device=self.device)
        binding.bind_input(spec.name, "cuda", index, np.float32, list(spec.shape), image.data_ptr())
        outputs = []
        for out in self.session.get_outputs():
            tensor = torch.empty(out.shape, dtype=_TORCH_DTYPES[out.type], device=self.device)
            numpy_type = np.float32 if tensor.dtype == torch.float32 else np.int32
            binding.bind_output(out.name, "cuda", index, numpy_type, list(out.shape), tensor.data_ptr())
            outputs.append(tensor)
        return binding, image, outputs

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warmup(self) -> None:
        """One inference on a grey frame of the input size."""
        self.infer(np.full((*self.input_size, 3), 128, dtype=np.uint8))

    def infer(self, frame_rgb: np.ndarray) -> Result:
        """(H, W, 3) uint8 RGB -> `Result` with the anomaly score and trainIds at (H, W), and stage timings."""
        frame = check_frame(frame_rgb)
        with self._run_lock, torch.inference_mode():
            t0 = time.perf_counter()
            if self._binding is None:
                image = self.io.to_input(frame)
                t1 = time.perf_counter()
                input_name, output_names = self._names
                score, semantic = (
                    torch.from_numpy(a) for a in self.session.run(output_names, {input_name: image.numpy()})
                )
            else:
                binding, image, (score, semantic) = self._binding
                self.io.to_input(frame, out=image)
                self._sync()  # ONNX Runtime runs on its own stream
                t1 = time.perf_counter()
                self.session.run_with_iobinding(binding)
                binding.synchronize_outputs()
            t2 = time.perf_counter()
            anomaly, labels = self.io.to_frame(score, semantic, frame.shape[:2])
            t3 = time.perf_counter()
        return Result(
            anomaly_score=anomaly,
            semantic=labels,
            timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
        )
