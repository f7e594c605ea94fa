"""The backend interface and the torch backend (small preset, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m2a_perception.backends import (
    AVAILABLE_BACKENDS,
    BACKENDS,
    PRESET_NAMES,
    Backend,
    BackendConfig,
    BackendError,
    Result,
    create_backend,
)
from m2a_perception.model import PRESETS, M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import save_checkpoint
from m2a_perception.model.scoring import RESOLUTIONS, SCORES, ScoringConfig, anomaly_segmentation


@pytest.fixture(scope="module")
def backend() -> Backend:
    b = create_backend(BackendConfig())
    b.warmup()
    return b


def _frame(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_names_match_the_model_package() -> None:
    assert tuple(sorted(PRESETS)) == PRESET_NAMES
    assert set(AVAILABLE_BACKENDS) <= set(BACKENDS)
    from m2a_perception import node

    assert node._PRESETS == PRESET_NAMES and node._BACKENDS == BACKENDS
    assert node._SCORES == SCORES and node._RESOLUTIONS == RESOLUTIONS


def test_torch_backend_matches_anomaly_segmentation(backend: Backend) -> None:
    assert isinstance(backend, Backend) and backend.name == "torch" and backend.input_size is None
    frame = _frame()
    result = backend.infer(frame)
    assert isinstance(result, Result)
    assert result.anomaly_score.shape == (64, 96) and result.anomaly_score.dtype == np.float32
    assert result.semantic.shape == (64, 96) and result.semantic.dtype == np.uint8
    assert int(result.semantic.max()) < 19
    assert set(result.timings) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0.0 for v in result.timings.values())
    score, semantic = anomaly_segmentation(backend.model, frame, ScoringConfig())
    np.testing.assert_array_equal(result.anomaly_score, score)
    np.testing.assert_array_equal(result.semantic, semantic)


def test_random_weights_are_reproducible_and_leave_the_global_rng_alone(backend: Backend) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    other = create_backend(BackendConfig())
    assert torch.equal(torch.rand(3), expected)
    frame = _frame(seed=1)
    np.testing.assert_array_equal(other.infer(frame).anomaly_score, backend.infer(frame).anomaly_score)


def test_input_size_resizes_for_the_network_only() -> None:
    b = create_backend(BackendConfig(input_size=(32, 64)))
    assert b.input_size == (32, 64)
    frame = _frame(100, 150)
    result = b.infer(frame)
    assert result.anomaly_score.shape == (100, 150) and result.semantic.shape == (100, 150)
    score, _ = anomaly_segmentation(b.model, frame, ScoringConfig(), input_size=(32, 64))
    np.testing.assert_array_equal(result.anomaly_score, score)


def test_update_changes_size_and_scoring() -> None:
    b = create_backend(BackendConfig())
    frame = _frame()
    before = b.infer(frame).anomaly_score
    b.update(scoring=ScoringConfig(score="entropy", refine=False))
    after = b.infer(frame).anomaly_score
    score, _ = anomaly_segmentation(b.model, frame, ScoringConfig(score="entropy", refine=False))
    np.testing.assert_array_equal(after, score)
    assert not np.array_equal(before, after)
    b.update(input_size=(32, 32))
    assert b.input_size == (32, 32) and b.scoring.score == "entropy"
    b.update(input_size=None)
    assert b.input_size is None
    with pytest.raises(ValueError, match="input_size must be None or"):
        b.update(input_size=(0, 32))
    with pytest.raises(ValueError, match="scoring must be a ScoringConfig"):
        b.update(scoring="entropy")


def test_flip_tta_runs() -> None:
    b = create_backend(BackendConfig(scoring=ScoringConfig(flip_tta=True)))
    frame = _frame()
    score, _ = anomaly_segmentation(b.model, frame, ScoringConfig(flip_tta=True))
    np.testing.assert_array_equal(b.infer(frame).anomaly_score, score)


def test_model_file_of_our_format(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = Mask2Anomaly(M2AConfig.preset("small")).eval()
    path = save_checkpoint(model, tmp_path / "small.pt")
    b = create_backend(BackendConfig(model_path=str(path), preset="r50"))  # the file's config wins
    frame = _frame()
    score, _ = anomaly_segmentation(model, frame)
    np.testing.assert_array_equal(b.infer(frame).anomaly_score, score)
    assert "small.pt" in b.model_description


def test_unusable_model_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no such file"):
        create_backend(BackendConfig(model_path=str(tmp_path / "missing.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BackendError, match="junk.pt"):
        create_backend(BackendConfig(model_path=str(junk)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="sees no CUDA device"):
        create_backend(BackendConfig(device="cuda", fp16=True))


@pytest.mark.parametrize(("backend", "suffixes"), [("onnxruntime", ".onnx"), ("tensorrt", ".onnx or .engine")])
def test_exported_backends_need_a_model_file(backend: str, suffixes: str) -> None:
    with pytest.raises(BackendError, match=f"the {backend} backend needs model_path: a file ending in {suffixes}"):
        create_backend(BackendConfig(backend=backend))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"backend": "openvino"}, "backend must be one of"),
        ({"preset": "tiny"}, "preset must be one of"),
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"fp16": True}, "fp16 needs a CUDA device"),
        ({"fp16": 1}, "fp16 must be a bool"),
        ({"input_size": (0, 64)}, "input_size must be None or"),
        ({"input_size": (64,)}, "input_size must be None or"),
        ({"input_size": (64.0, 64)}, "input_size must be None or"),
        ({"scoring": "entropy"}, "scoring must be a ScoringConfig"),
    ],
)
def test_config_validation(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        BackendConfig(**kwargs)


def test_infer_refuses_wrong_frames(backend: Backend) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        backend.infer(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        backend.infer(np.zeros((8, 8), np.uint8))
