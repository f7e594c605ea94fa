"""The TensorRT engine cache without TensorRT: hit, miss, version / GPU / precision mismatch, corrupt files, and
the sidecars it writes. TensorRT sits behind `EngineTools`; `FakeTools` records what it is asked to build."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from m2a_perception.backends.base import BackendError
from m2a_perception.backends.engine_cache import (
    ENGINE_NAME,
    BuildOptions,
    EngineCache,
    RuntimeInfo,
    cache_key,
    default_cache_dir,
    inspect_engine,
)
from m2a_perception.backends.sidecar import (
    FORMAT_VERSION,
    ONNX_FORMAT,
    SidecarError,
    file_sha256,
    read_engine_sidecar,
    sidecar_path,
    write_json_atomic,
)
from m2a_perception.model.fused import GraphSpec

TRT_861_A = RuntimeInfo("8.6.1", "NVIDIA RTX A6000", (8, 6))


class FakeTools:
    """`EngineTools` that 'builds' an engine whose bytes name the ONNX hash and the runtime."""

    def __init__(self, runtime: RuntimeInfo = TRT_861_A, fail: bool = False) -> None:
        self.runtime = runtime
        self.fail = fail
        self.builds: list[tuple[Path, BuildOptions]] = []

    def runtime_info(self) -> RuntimeInfo:
        return self.runtime

    def build(self, onnx_path: Path, options: BuildOptions) -> bytes:
        if self.fail:
            raise RuntimeError("builder ran out of memory")
        self.builds.append((onnx_path, options))
        return f"engine of {file_sha256(onnx_path)} for {self.runtime} {options.precision}".encode()

    def deserialize(self, plan: bytes) -> object:
        return plan if plan.startswith(b"engine of") else None


def make_onnx(folder: Path, content: bytes = b"not really onnx") -> Path:
    """A stand-in ONNX file with a valid sidecar (the cache never parses the ONNX itself)."""
    path = folder / "model.onnx"
    path.write_bytes(content)
    spec = GraphSpec(input_size=(64, 128))
    tensors = [
        {"name": "image", "shape": [1, 3, 64, 128], "dtype": "float32"},
        {"name": "anomaly_score", "shape": [1, 64, 128], "dtype": "float32"},
        {"name": "semantic", "shape": [1, 64, 128], "dtype": "int32"},
    ]
    write_json_atomic(
        sidecar_path(path),
        {
            "format": ONNX_FORMAT,
            "format_version": FORMAT_VERSION,
            "graph": spec.to_dict(),
            "opset": 17,
            "inputs": tensors[:1],
            "outputs": tensors[1:],
            "onnx_bytes": len(content),
            "onnx_sha256": file_sha256(path),
        },
    )
    return path


@pytest.fixture
def onnx_path(tmp_path: Path) -> Path:
    (tmp_path / "export").mkdir()
    return make_onnx(tmp_path / "export")


def test_miss_builds_then_hit_reuses(tmp_path: Path, onnx_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tools = FakeTools()
    cache = EngineCache(tmp_path / "cache", tools)
    options = BuildOptions(fp16=True, workspace_bytes=1 << 30, timing_cache=tmp_path / "timing.cache")
    with caplog.at_level(logging.INFO, logger="m2a_perception.backends.engine_cache"):
        path, decision = cache.resolve(onnx_path, options)
    assert decision.action == "miss" and len(tools.builds) == 1
    assert tools.builds[0][1].timing_cache == tmp_path / "timing.cache"  # the options reach the builder
    sha = file_sha256(onnx_path)
    assert path == tmp_path / "cache" / f"{sha[:16]}-fp16-trt8.6-sm86" / ENGINE_NAME
    assert "building" in caplog.text and "no cached engine yet" in caplog.text

    meta = read_engine_sidecar(sidecar_path(path))
    assert (meta.tensorrt_version, meta.gpu_name, meta.compute_capability) == ("8.6.1", "NVIDIA RTX A6000", (8, 6))
    assert (meta.precision, meta.onnx_sha256) == ("fp16", sha)
    assert (meta.engine_bytes, meta.engine_sha256) == (path.stat().st_size, file_sha256(path))
    assert meta.spec == GraphSpec(input_size=(64, 128))
    raw = json.loads(sidecar_path(path).read_text())
    assert raw["workspace_bytes"] == 1 << 30 and raw["inputs"][0]["shape"] == [1, 3, 64, 128]

    path2, decision2 = cache.resolve(onnx_path, options)
    assert (path2, decision2.action) == (path, "hit") and len(tools.builds) == 1


def test_key_separates_precision_and_tensorrt_minor(tmp_path: Path, onnx_path: Path) -> None:
    tools = FakeTools()
    cache = EngineCache(tmp_path, tools)
    fp16, _ = cache.resolve(onnx_path, BuildOptions(fp16=True))
    fp32, decision = cache.resolve(onnx_path, BuildOptions(fp16=False))
    assert fp16 != fp32 and decision.action == "miss"
    tools.runtime = RuntimeInfo("10.0.1", "NVIDIA RTX A6000", (8, 6))
    trt10, decision = cache.resolve(onnx_path, BuildOptions(fp16=True))
    assert decision.action == "miss" and "trt10.0" in trt10.parent.name and fp16.is_file()
    assert (
        cache_key("ab" * 32, RuntimeInfo("8.6.1.6", "Orin", (8, 7)), BuildOptions())
        == "abababababababab-fp16-trt8.6-sm87"
    )


@pytest.mark.parametrize(
    ("running", "expected"),
    [
        (RuntimeInfo("8.6.2", "NVIDIA RTX A6000", (8, 6)), "TensorRT 8.6.1"),  # a patch release: same folder
        (RuntimeInfo("8.6.1", "NVIDIA GeForce RTX 3090", (8, 6)), "NVIDIA RTX A6000"),  # another GPU, same sm_86
    ],
)
def test_mismatching_engine_is_rebuilt_never_loaded(
    tmp_path: Path, onnx_path: Path, running: RuntimeInfo, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    tools = FakeTools()
    cache = EngineCache(tmp_path, tools)
    path, _ = cache.resolve(onnx_path, BuildOptions())
    tools.runtime = running
    with caplog.at_level(logging.WARNING, logger="m2a_perception.backends.engine_cache"):
        path2, decision = cache.resolve(onnx_path, BuildOptions())
    assert path2 == path and decision.action == "mismatch" and len(tools.builds) == 2
    assert expected in decision.reason and running.describe() in decision.reason
    assert "mismatch" in caplog.text and expected in caplog.text
    meta = read_engine_sidecar(sidecar_path(path))
    assert (meta.tensorrt_version, meta.gpu_name) == (running.tensorrt_version, running.gpu_name)
    assert cache.resolve(onnx_path, BuildOptions())[1].action == "hit"


def test_engine_from_other_onnx_or_precision_is_a_mismatch(tmp_path: Path, onnx_path: Path) -> None:
    path, _ = EngineCache(tmp_path, FakeTools()).resolve(onnx_path, BuildOptions())
    decision = inspect_engine(path, "f" * 64, TRT_861_A, BuildOptions())
    assert decision.action == "mismatch" and "built from ONNX" in decision.reason
    decision = inspect_engine(path, file_sha256(onnx_path), TRT_861_A, BuildOptions(fp16=False))
    assert decision.action == "mismatch" and "fp16" in decision.reason


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate_engine", "bytes"),
        ("flip_engine_byte", "sha256"),
        ("garbage_sidecar", "not valid JSON"),
        ("sidecar_not_object", "expected a JSON object"),
        ("sidecar_bad_field", "field 'compute_capability'"),
        ("huge_sidecar", "more than"),
        ("no_sidecar", "no such sidecar"),
        ("no_engine", "is missing"),
    ],
)
def test_corrupt_entry_is_rebuilt(tmp_path: Path, onnx_path: Path, damage: str, reason: str) -> None:
    tools = FakeTools()
    cache = EngineCache(tmp_path, tools)
    path, _ = cache.resolve(onnx_path, BuildOptions())
    meta = sidecar_path(path)
    if damage == "truncate_engine":
        path.write_bytes(path.read_bytes()[:-3])
    elif damage == "flip_engine_byte":
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "garbage_sidecar":
        meta.write_bytes(b"\x80{not json")
    elif damage == "sidecar_not_object":
        meta.write_text("[1, 2]")
    elif damage == "sidecar_bad_field":
        raw = json.loads(meta.read_text())
        raw["compute_capability"] = "8.6"
        meta.write_text(json.dumps(raw))
    elif damage == "huge_sidecar":
        meta.write_text(" " * (2 << 20) + "{}")
    elif damage == "no_sidecar":
        meta.unlink()
    else:
        path.unlink()
    decision = inspect_engine(path, file_sha256(onnx_path), TRT_861_A, BuildOptions())
    assert decision.action == "corrupt" and reason in decision.reason
    path2, decision2 = cache.resolve(onnx_path, BuildOptions())
    assert decision2.action == "corrupt" and len(tools.builds) == 2
    assert inspect_engine(path2, file_sha256(onnx_path), TRT_861_A, BuildOptions()).action == "hit"


def test_forced_rebuild_and_failed_build(tmp_path: Path, onnx_path: Path) -> None:
    tools = FakeTools()
    cache = EngineCache(tmp_path, tools)
    path, _ = cache.resolve(onnx_path, BuildOptions())
    _, decision = cache.resolve(onnx_path, BuildOptions(), rebuild="TensorRT could not deserialize it")
    assert decision.action == "corrupt" and "deserialize" in decision.reason and len(tools.builds) == 2

    tools.fail = True
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.resolve(onnx_path, BuildOptions(), rebuild="again")
    assert not sidecar_path(path).exists()  # the old sidecar is gone before a build: never a stale pair
    tools.fail = False
    assert cache.resolve(onnx_path, BuildOptions())[1].action == "corrupt"


def test_onnx_that_does_not_match_its_sidecar_is_refused(tmp_path: Path, onnx_path: Path) -> None:
    tools = FakeTools()
    onnx_path.write_bytes(b"not really onnx, edited")
    with pytest.raises(SidecarError, match="bytes, its sidecar says"):
        EngineCache(tmp_path, tools).resolve(onnx_path, BuildOptions())
    sidecar_path(onnx_path).unlink()
    with pytest.raises(SidecarError, match="no such sidecar"):
        EngineCache(tmp_path, tools).resolve(onnx_path, BuildOptions())
    with pytest.raises(SidecarError, match="no such ONNX file"):
        EngineCache(tmp_path, tools).resolve(tmp_path / "missing.onnx", BuildOptions())
    assert tools.builds == []


def test_options_and_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workspace_bytes"):
        BuildOptions(workspace_bytes=1000)
    monkeypatch.setenv("M2A_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("M2A_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "m2a" / "engines"


def test_tensorrt_is_imported_lazily_with_a_clear_error() -> None:
    import importlib.util

    from m2a_perception.backends import tensorrt_build

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendError, match=r"TensorRT >= 8.6.*m2a\[tensorrt\]"):
        tensorrt_build.import_tensorrt()
    with pytest.raises(BackendError, match="needs a CUDA device"):
        tensorrt_build.TensorRTTools("cpu")
