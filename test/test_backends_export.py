"""The onnxruntime and tensorrt backends through the common `Backend` interface, on an exported small model.

The tensorrt backend runs here with TensorRT replaced by `FakeTools`, whose "engine" executes the ONNX file with
ONNX Runtime through the raw buffer addresses the backend binds (as TensorRT's execution context does), so buffer
binding, the engine cache, sidecar checks and the frame/map resizing are all exercised without a GPU.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from m2a_perception.backends.base import Backend, BackendConfig, BackendError, create_backend
from m2a_perception.backends.engine_cache import BuildOptions, RuntimeInfo, checked_onnx, write_engine
from m2a_perception.backends.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.backends.sidecar import sidecar_path
from m2a_perception.backends.tensorrt_backend import TensorRTBackend
from m2a_perception.backends.torch_backend import TorchBackend
from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import build_model_from_checkpoint, save_checkpoint
from m2a_perception.model.fused import FusedMask2Anomaly, GraphSpec
from m2a_perception.model.scoring import ScoringConfig
from m2a_perception.synthroad import SceneConfig, generate_scene
from m2a_training.export_graph import export_onnx

SIZE = (64, 128)
RUNTIME = RuntimeInfo("8.6.1", "NVIDIA RTX A6000", (8, 6))
_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.int32): ctypes.c_int32}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("backends")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Mask2Anomaly(M2AConfig.preset("small"))
    checkpoint = save_checkpoint(model, folder / "small.pt")
    export_onnx(model, GraphSpec(input_size=SIZE), folder / "small.onnx")
    return checkpoint, folder / "small.onnx"


def _frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    return generate_scene(seed, SceneConfig(height=height, width=width)).image


def _config(backend: str, path: Path | str, **changes: object) -> BackendConfig:
    return BackendConfig(backend=backend, model_path=str(path), **changes)


# ---------------------------------------------------------------------------------------------------------
# onnxruntime


def test_onnxruntime_backend_matches_pytorch(exported: tuple[Path, Path]) -> None:
    checkpoint, onnx_path = exported
    backend = OnnxRuntimeBackend(_config("onnxruntime", onnx_path), threads=1)
    assert isinstance(backend, Backend) and backend.name == "onnxruntime" and backend.input_size == SIZE
    backend.warmup()
    frame = _frame(*SIZE)
    result = backend.infer(frame)
    assert result.anomaly_score.shape == SIZE and result.anomaly_score.dtype == np.float32
    assert result.semantic.shape == SIZE and result.semantic.dtype == np.uint8
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert all(t >= 0 for t in result.timings.values())

    model, _ = build_model_from_checkpoint(checkpoint)
    with torch.inference_mode():
        score, labels = FusedMask2Anomaly(model, GraphSpec(input_size=SIZE))(
            torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        )
    np.testing.assert_allclose(result.anomaly_score, score[0].numpy(), atol=1e-5)
    assert (result.semantic == labels[0].numpy()).mean() >= 0.999


def test_onnxruntime_backend_resizes_frames_like_the_torch_backend(exported: tuple[Path, Path]) -> None:
    """Other frame sizes: resized in and out once. The torch backend scores at frame size (resize, then 1 - max),
    the graph at its own size (1 - max, then resize), so they agree closely but not exactly."""
    checkpoint, onnx_path = exported
    backend = OnnxRuntimeBackend(_config("onnxruntime", onnx_path))
    reference = TorchBackend(BackendConfig(model_path=str(checkpoint), input_size=SIZE))
    for height, width in ((100, 150), (48, 96)):
        frame = _frame(height, width, seed=2)
        ours, theirs = backend.infer(frame), reference.infer(frame)
        assert ours.anomaly_score.shape == (height, width) and ours.semantic.shape == (height, width)
        assert np.abs(ours.anomaly_score - theirs.anomaly_score).mean() < 0.02
        assert (ours.semantic == theirs.semantic).mean() > 0.9


def test_onnxruntime_backend_fixes_size_and_scoring(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    backend = OnnxRuntimeBackend(_config("onnxruntime", onnx_path, input_size=SIZE))
    backend.update(input_size=SIZE, scoring=ScoringConfig(chunk_queries=4))  # what the graph already does
    with pytest.raises(ValueError, match="fixed to 64x128"):
        backend.update(input_size=(128, 256))
    with pytest.raises(ValueError, match="fixes its scoring"):
        backend.update(scoring=ScoringConfig(flip_tta=True))
    with pytest.raises(ValueError, match="uint8"):
        backend.infer(np.zeros((*SIZE, 3), np.float32))


def test_clear_errors_for_missing_or_wrong_model_files(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx_path = exported
    cases = [
        (_config("onnxruntime", ""), "needs model_path"),
        (_config("onnxruntime", tmp_path / "missing.onnx"), "missing.onnx'?: no such file"),
        (_config("onnxruntime", onnx_path.with_suffix(".pt")), "takes .onnx files"),
        (_config("onnxruntime", onnx_path, input_size=(128, 256)), "takes 64x128 images, but input_size is 128x256"),
        (_config("onnxruntime", onnx_path, scoring=ScoringConfig(refine=False)), "exported with scoring"),
        (_config("onnxruntime", onnx_path, device="cuda", fp16=True), "fp16=False"),
        (_config("tensorrt", tmp_path / "missing.engine", device="cuda"), "no such file"),
    ]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((_config("onnxruntime", onnx_path, device="cuda"), "no CUDA execution provider"))
    for config, message in cases:
        with pytest.raises(BackendError, match=message):
            (OnnxRuntimeBackend if config.backend == "onnxruntime" else TensorRTBackend)(config)

    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx_path.read_bytes()[:-100])  # truncated, with no sidecar yet
    with pytest.raises(BackendError, match="no such sidecar.*m2a-export onnx"):
        OnnxRuntimeBackend(_config("onnxruntime", copy))
    sidecar_path(copy).write_bytes(sidecar_path(onnx_path).read_bytes())
    with pytest.raises(BackendError, match="bytes, its sidecar says"):
        OnnxRuntimeBackend(_config("onnxruntime", copy))


def test_onnx_sidecar_that_lies_about_the_graph_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx_path = exported
    copy = tmp_path / "model.onnx"
    copy.write_bytes(onnx_path.read_bytes())
    data = json.loads(sidecar_path(onnx_path).read_text())
    data["graph"]["input_size"] = [128, 256]
    data["inputs"][0]["shape"] = [1, 3, 128, 256]
    sidecar_path(copy).write_text(json.dumps(data))
    with pytest.raises(BackendError, match="are not those of its sidecar"):
        OnnxRuntimeBackend(_config("onnxruntime", copy))


def test_create_backend_dispatches(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    assert isinstance(create_backend(_config("onnxruntime", onnx_path)), OnnxRuntimeBackend)


# ---------------------------------------------------------------------------------------------------------
# tensorrt, with TensorRT replaced


class FakeEngine:
    """The parts of ICudaEngine / IExecutionContext the backend uses, executing the ONNX file in ONNX Runtime."""

    def __init__(self, onnx_path: str) -> None:
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        types = {"tensor(float)": np.float32, "tensor(int32)": np.int32}
        self.tensors = [
            (t.name, mode, tuple(t.shape), np.dtype(types[t.type]))
            for mode, group in (("INPUT", self.session.get_inputs()), ("OUTPUT", self.session.get_outputs()))
            for t in group
        ]
        self.num_io_tensors = len(self.tensors)
        self.addresses: dict[str, int] = {}

    def _find(self, name: str) -> tuple[str, str, tuple[int, ...], np.dtype]:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def get_tensor_mode(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=self._find(name)[1])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._find(name)[2]

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name="FLOAT" if self._find(name)[3] == np.float32 else "INT32")

    def create_execution_context(self) -> FakeEngine:
        return self

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def _view(self, name: str) -> np.ndarray:
        _, _, shape, dtype = self._find(name)
        buffer = (_CTYPES[dtype] * int(np.prod(shape))).from_address(self.addresses[name])
        return np.ctypeslib.as_array(buffer).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = {name: self._view(name).copy() for name, mode, _, _ in self.tensors if mode == "INPUT"}
        outputs = [name for name, mode, _, _ in self.tensors if mode == "OUTPUT"]
        for name, value in zip(outputs, self.session.run(outputs, inputs)):
            self._view(name)[...] = value
        return True


class FakeTools:
    """`EngineTools` whose engines are `FakeEngine`s; `corrupt_next` makes one deserialisation fail."""

    def __init__(self, runtime: RuntimeInfo = RUNTIME) -> None:
        self.runtime = runtime
        self.builds = 0
        self.corrupt_next = False

    def runtime_info(self) -> RuntimeInfo:
        return self.runtime

    def build(self, onnx_path: Path, options: BuildOptions) -> bytes:
        self.builds += 1
        return b"FAKE-ENGINE\n" + str(onnx_path).encode()

    def deserialize(self, plan: bytes) -> FakeEngine | None:
        if self.corrupt_next or not plan.startswith(b"FAKE-ENGINE\n"):
            self.corrupt_next = False
            return None
        return FakeEngine(plan.split(b"\n", 1)[1].decode())


def test_tensorrt_backend_builds_caches_and_runs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx_path = exported
    tools = FakeTools()
    config = _config("tensorrt", onnx_path)
    backend = TensorRTBackend(config, cache_dir=tmp_path / "cache", tools=tools)
    assert isinstance(backend, Backend) and backend.name == "tensorrt" and backend.input_size == SIZE
    assert tools.builds == 1 and backend.engine_path.parent.name.endswith("-fp32-trt8.6-sm86")
    assert {n: (t.shape, t.dtype) for n, t in backend.buffers.items()} == {
        "image": ((1, 3, *SIZE), torch.float32),
        "anomaly_score": ((1, *SIZE), torch.float32),
        "semantic": ((1, *SIZE), torch.int32),
    }
    backend.warmup()
    reference = OnnxRuntimeBackend(_config("onnxruntime", onnx_path))
    for size in (SIZE, (100, 150)):
        frame = _frame(*size, seed=4)
        ours, theirs = backend.infer(frame), reference.infer(frame)
        np.testing.assert_array_equal(ours.anomaly_score, theirs.anomaly_score)
        np.testing.assert_array_equal(ours.semantic, theirs.semantic)
        assert set(ours.timings) == {"preprocess", "inference", "postprocess"}

    TensorRTBackend(config, cache_dir=tmp_path / "cache", tools=tools)
    assert tools.builds == 1  # cache hit
    tools.corrupt_next = True  # the cached engine no longer deserialises: rebuilt once, then loaded
    TensorRTBackend(config, cache_dir=tmp_path / "cache", tools=tools)
    assert tools.builds == 2
    tools.runtime = RuntimeInfo("8.6.2", "NVIDIA RTX A6000", (8, 6))  # TensorRT upgraded: rebuilt
    TensorRTBackend(config, cache_dir=tmp_path / "cache", tools=tools)
    assert tools.builds == 3


def test_tensorrt_backend_takes_a_prebuilt_engine_only_if_it_matches(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, onnx_path = exported
    tools = FakeTools()
    engine_path = tmp_path / "small.engine"
    fp32, fp16 = BuildOptions(fp16=False), BuildOptions(fp16=True)
    write_engine(engine_path, tools.build(onnx_path, fp32), checked_onnx(onnx_path), RUNTIME, fp32)
    config = _config("tensorrt", engine_path)
    backend = TensorRTBackend(config, tools=tools)
    assert backend.engine_path == engine_path and backend.input_size == SIZE
    assert backend.infer(_frame(*SIZE)).anomaly_score.shape == SIZE

    half = tmp_path / "half.engine"
    write_engine(half, tools.build(onnx_path, fp16), checked_onnx(onnx_path), RUNTIME, fp16)
    with pytest.raises(BackendError, match="is an fp16 engine, but fp16=False"):
        TensorRTBackend(_config("tensorrt", half), tools=tools)
    with pytest.raises(BackendError, match="takes 64x128 images, but input_size is 128x256"):
        TensorRTBackend(_config("tensorrt", engine_path, input_size=(128, 256)), tools=tools)
    other = FakeTools(RuntimeInfo("10.0.1", "Orin", (8, 7)))
    with pytest.raises(
        BackendError, match=r"cannot run here: it was built with TensorRT 8.6.1 .* this is TensorRT 10.0.1"
    ):
        TensorRTBackend(config, tools=other)
    tools.corrupt_next = True
    with pytest.raises(BackendError, match="could not deserialize"):
        TensorRTBackend(config, tools=tools)

    data = json.loads(sidecar_path(engine_path).read_text())
    data["outputs"][0]["shape"] = [1, 32, 64]  # an engine whose tensors are not what the sidecar says
    sidecar_path(engine_path).write_text(json.dumps(data))
    with pytest.raises(BackendError, match="engine's tensors"):
        TensorRTBackend(config, tools=tools)
    engine_path.write_bytes(engine_path.read_bytes() + b"x")
    with pytest.raises(BackendError, match="bytes, its sidecar says"):
        TensorRTBackend(config, tools=tools)
    sidecar_path(engine_path).unlink()
    with pytest.raises(BackendError, match="no such sidecar.*m2a-export engine"):
        TensorRTBackend(config, tools=tools)


def test_tensorrt_backend_needs_cuda_and_tensorrt(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    with pytest.raises(BackendError, match="needs device 'cuda'"):
        TensorRTBackend(_config("tensorrt", onnx_path))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            TensorRTBackend(_config("tensorrt", onnx_path, device="cuda"))
