"""TensorRT engines built from an ONNX file on first start, kept in a cache folder and reused after.

An engine only runs on the TensorRT version and the GPU that built it. The cache keeps one folder per
(ONNX sha256, precision, TensorRT major.minor, compute capability):

    <cache>/<onnx sha256[:16]>-<fp16|fp32>-trt<major.minor>-sm<cc>/model.engine (+ model.engine.json)

A cached engine is loaded only when its sidecar matches the running TensorRT version and GPU exactly (a TensorRT
patch release, or another GPU of the same compute capability, shares the folder but not the engine) and the file
has the size and sha256 the sidecar records. Otherwise it is rebuilt, with a log line saying why; it is never
loaded. TensorRT itself stays behind `EngineTools` (`tensorrt_build.TensorRTTools` on a GPU, a fake in tests),
so everything here runs without it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import m2a_perception
from m2a_perception.backends.sidecar import (
    ENGINE_FORMAT,
    FORMAT_VERSION,
    OnnxSidecar,
    SidecarError,
    check_file,
    file_sha256,
    read_engine_sidecar,
    read_onnx_sidecar,
    sidecar_path,
    write_json_atomic,
)

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "ENGINE_NAME",
    "BuildOptions",
    "CacheDecision",
    "EngineCache",
    "EngineTools",
    "RuntimeInfo",
    "cache_key",
    "checked_onnx",
    "default_cache_dir",
    "inspect_engine",
    "runtime_mismatch",
    "write_engine",
]

log = logging.getLogger(__name__)
ENGINE_NAME = "model.engine"
DEFAULT_WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class RuntimeInfo:
    """The TensorRT and GPU an engine is built for or run on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (sm_{major}{minor})"


@dataclass(frozen=True)
class BuildOptions:
    """How an engine is built: fp16 kernels allowed, workspace limit, timing cache file (reused across builds)."""

    fp16: bool = True
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workspace_bytes, int) or self.workspace_bytes < 1 << 20:
            raise ValueError(f"workspace_bytes must be an int >= 1 MiB, got {self.workspace_bytes!r}")

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"


class EngineTools(Protocol):
    """The TensorRT calls the cache and the backend need: the seam tests replace."""

    def runtime_info(self) -> RuntimeInfo:
        """The running TensorRT version and GPU."""
        ...

    def build(self, onnx_path: Path, options: BuildOptions) -> bytes:
        """A serialised engine for `onnx_path`; raises on failure."""
        ...

    def deserialize(self, plan: bytes) -> Any:
        """The engine object for a serialised engine, or None when TensorRT cannot read it."""
        ...


@dataclass(frozen=True)
class CacheDecision:
    """What to do with a cache entry: "hit" (load it), "miss", "mismatch" or "corrupt" (build it), and why."""

    action: str
    reason: str


def default_cache_dir() -> Path:
    """$M2A_ENGINE_CACHE, else $XDG_CACHE_HOME/m2a/engines, else ~/.cache/m2a/engines."""
    if os.environ.get("M2A_ENGINE_CACHE"):
        return Path(os.environ["M2A_ENGINE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m2a" / "engines"


def cache_key(onnx_sha256: str, runtime: RuntimeInfo, options: BuildOptions) -> str:
    """Folder name of an engine: ONNX hash, precision, TensorRT major.minor, compute capability."""
    major_minor = ".".join(runtime.tensorrt_version.split(".")[:2])
    major, minor = runtime.compute_capability
    return f"{onnx_sha256[:16]}-{options.precision}-trt{major_minor}-sm{major}{minor}"


def checked_onnx(onnx_path: Path) -> OnnxSidecar:
    """The ONNX file's sidecar, after checking that the file is the one it describes (SidecarError if not)."""
    if not onnx_path.is_file():
        raise SidecarError(f"{onnx_path}: no such ONNX file")
    sidecar = read_onnx_sidecar(sidecar_path(onnx_path))
    check_file(onnx_path, sidecar.onnx_bytes, sidecar.onnx_sha256, "ONNX file")
    return sidecar


def runtime_mismatch(built: RuntimeInfo, running: RuntimeInfo) -> str | None:
    """Why an engine built for `built` must not run on `running`, or None when it may."""
    if built == running:
        return None
    return f"it was built with {built.describe()}, this is {running.describe()}"


def inspect_engine(engine_path: Path, onnx_sha256: str, runtime: RuntimeInfo, options: BuildOptions) -> CacheDecision:
    """Whether the engine at `engine_path` may be loaded for this ONNX file, TensorRT, GPU and precision."""
    meta_path = sidecar_path(engine_path)
    if not engine_path.exists() and not meta_path.exists():
        return CacheDecision("miss", "no cached engine yet")
    if not engine_path.is_file():
        return CacheDecision("corrupt", f"{engine_path} is missing but its sidecar is there")
    try:
        meta = read_engine_sidecar(meta_path)
    except SidecarError as e:
        return CacheDecision("corrupt", str(e))
    built = RuntimeInfo(meta.tensorrt_version, meta.gpu_name, meta.compute_capability)
    why = runtime_mismatch(built, runtime)
    if why is None and meta.onnx_sha256 != onnx_sha256:
        why = f"it was built from ONNX {meta.onnx_sha256[:16]}..., not {onnx_sha256[:16]}..."
    if why is None and meta.precision != options.precision:
        why = f"it was built for {meta.precision}, {options.precision} is asked for"
    if why is not None:
        return CacheDecision("mismatch", why)
    try:
        check_file(engine_path, meta.engine_bytes, meta.engine_sha256, "engine")
    except SidecarError as e:
        return CacheDecision("corrupt", str(e))
    return CacheDecision("hit", f"cached engine built with {built.describe()}")


def write_engine(
    engine_path: Path, plan: bytes, onnx: OnnxSidecar, runtime: RuntimeInfo, options: BuildOptions
) -> dict[str, Any]:
    """Write a serialised engine and then its sidecar (a crash in between leaves an engine without sidecar)."""
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_path(engine_path).unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{engine_path.name}.", suffix=".tmp", dir=engine_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(plan)
        os.replace(tmp, engine_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {
        "format": ENGINE_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "m2a_version": m2a_perception.__version__,
        "tensorrt_version": runtime.tensorrt_version,
        "gpu_name": runtime.gpu_name,
        "compute_capability": list(runtime.compute_capability),
        "precision": options.precision,
        "workspace_bytes": options.workspace_bytes,
        "graph": onnx.spec.to_dict(),
        "inputs": onnx.data.get("inputs"),
        "outputs": onnx.data.get("outputs"),
        "opset": onnx.data.get("opset"),
        "onnx_file": onnx.path.name.removesuffix(".json"),
        "onnx_sha256": onnx.onnx_sha256,
        "engine_bytes": len(plan),
        "engine_sha256": file_sha256(engine_path),
    }
    write_json_atomic(sidecar_path(engine_path), meta)
    return meta


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on `folder` so that two processes never build the same engine at once (POSIX)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EngineCache:
    """Engines for ONNX files, built on demand into `folder` with `tools` and reused while they match."""

    def __init__(self, folder: str | os.PathLike[str], tools: EngineTools) -> None:
        self.folder = Path(folder)
        self.tools = tools

    def resolve(
        self, onnx_path: str | os.PathLike[str], options: BuildOptions, *, rebuild: str | None = None
    ) -> tuple[Path, CacheDecision]:
        """Path of a loadable engine for `onnx_path`, building it first unless a matching one is cached.

        rebuild: build even if the entry looks fine, giving this reason (e.g. TensorRT failed to deserialize it).
        Raises SidecarError when the ONNX file does not match its own sidecar.
        """
        onnx = checked_onnx(Path(onnx_path))
        runtime = self.tools.runtime_info()
        engine_path = self.folder / cache_key(onnx.onnx_sha256, runtime, options) / ENGINE_NAME
        with _locked(engine_path.parent):
            if rebuild is None:
                decision = inspect_engine(engine_path, onnx.onnx_sha256, runtime, options)
            else:
                decision = CacheDecision("corrupt", rebuild)
            if decision.action == "hit":
                log.info("m2a tensorrt: using %s (%s)", engine_path, decision.reason)
                return engine_path, decision
            level = logging.INFO if decision.action == "miss" else logging.WARNING
            log.log(
                level,
                "m2a tensorrt: building %s for %s (%s): %s",
                engine_path,
                runtime.describe(),
                decision.action,
                decision.reason,
            )
            sidecar_path(engine_path).unlink(missing_ok=True)  # a rejected entry stays rejected if the build fails
            plan = self.tools.build(Path(onnx_path), options)
            write_engine(engine_path, plan, onnx, runtime, options)
        return engine_path, decision
