"""JSON sidecars of exported models: `model.onnx.json` beside `model.onnx`, `model.engine.json` beside an engine.

A sidecar says what its file computes (the `GraphSpec`: input size, scoring variant, output form), which file it
describes (byte size and sha256) and, for engines, what built it (TensorRT version, GPU, compute capability,
precision), so a backend can refuse or rebuild a mismatching file with a clear message. Sidecars and the files
they describe come from outside: read with `json` only, size-checked, every field type-checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2a_perception.model.fused import GraphSpec

__all__ = [
    "ENGINE_FORMAT",
    "FORMAT_VERSION",
    "MAX_SIDECAR_BYTES",
    "ONNX_FORMAT",
    "EngineSidecar",
    "OnnxSidecar",
    "SidecarError",
    "check_file",
    "file_sha256",
    "read_engine_sidecar",
    "read_onnx_sidecar",
    "sidecar_path",
    "write_json_atomic",
]

ONNX_FORMAT = "m2a-onnx"
ENGINE_FORMAT = "m2a-engine"
FORMAT_VERSION = 1
MAX_SIDECAR_BYTES = 1 << 20


class SidecarError(ValueError):
    """A sidecar that is missing, unreadable, or does not describe its file."""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """`model.onnx` -> `model.onnx.json` (same folder)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON next to `path` and rename it into place (readers never see half a file)."""
    path = Path(path)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _load(path: Path, fmt: str) -> dict[str, Any]:
    if not path.is_file():
        raise SidecarError(f"{path}: no such sidecar file")
    size = path.stat().st_size
    if size > MAX_SIDECAR_BYTES:
        raise SidecarError(f"{path}: {size} bytes, more than the {MAX_SIDECAR_BYTES} a sidecar may have")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SidecarError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise SidecarError(f"{path}: expected a JSON object, got {type(data).__name__}")
    got = (data.get("format"), data.get("format_version"))
    if got != (fmt, FORMAT_VERSION):
        raise SidecarError(
            f"{path}: expected format {fmt!r} version {FORMAT_VERSION}, got {got[0]!r} version {got[1]!r}"
        )
    return data


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SidecarError(f"{path}: field {key!r} must be {names}, got {value!r}")
    return value


def _sha(data: dict[str, Any], key: str, path: Path) -> str:
    value = _field(data, key, str, path)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SidecarError(f"{path}: field {key!r} must be a hex sha256 (64 characters), got {value!r}")
    return value


def _spec(data: dict[str, Any], path: Path) -> GraphSpec:
    try:
        return GraphSpec.from_dict(data.get("graph"))
    except (TypeError, ValueError) as e:
        raise SidecarError(f"{path}: field 'graph': {e}") from e


def check_file(path: Path, expected_bytes: int, expected_sha256: str, what: str) -> None:
    """Raise SidecarError unless `path` has the byte size and sha256 its sidecar records."""
    size = path.stat().st_size
    if size != expected_bytes:
        raise SidecarError(f"{path}: {size} bytes, its sidecar says {expected_bytes} ({what} truncated or replaced)")
    digest = file_sha256(path)
    if digest != expected_sha256:
        raise SidecarError(
            f"{path}: sha256 {digest[:16]}..., its sidecar says {expected_sha256[:16]}... ({what} changed)"
        )


@dataclass(frozen=True)
class OnnxSidecar:
    """The fields of `model.onnx.json` a backend relies on (the whole JSON is in `data`)."""

    path: Path
    spec: GraphSpec
    input_name: str
    output_names: tuple[str, ...]
    onnx_bytes: int
    onnx_sha256: str
    data: dict[str, Any]


def read_onnx_sidecar(path: str | os.PathLike[str]) -> OnnxSidecar:
    """Parse and check an ONNX sidecar (not the ONNX file itself: see `check_file`)."""
    path = Path(path)
    data = _load(path, ONNX_FORMAT)
    inputs = _field(data, "inputs", list, path)
    outputs = _field(data, "outputs", list, path)
    if len(inputs) != 1 or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in inputs + outputs):
        raise SidecarError(f"{path}: 'inputs' must list 1 tensor and 'outputs' tensors, each with a 'name'")
    return OnnxSidecar(
        path=path,
        spec=_spec(data, path),
        input_name=inputs[0]["name"],
        output_names=tuple(t["name"] for t in outputs),
        onnx_bytes=_field(data, "onnx_bytes", int, path),
        onnx_sha256=_sha(data, "onnx_sha256", path),
        data=data,
    )


@dataclass(frozen=True)
class EngineSidecar:
    """The fields of `model.engine.json` that decide whether the engine may run here."""

    path: Path
    spec: GraphSpec
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    engine_bytes: int
    engine_sha256: str
    data: dict[str, Any]


def read_engine_sidecar(path: str | os.PathLike[str]) -> EngineSidecar:
    """Parse and check an engine sidecar (not the engine itself: see `check_file`)."""
    path = Path(path)
    data = _load(path, ENGINE_FORMAT)
    cc = data.get("compute_capability")
    if not (isinstance(cc, list) and len(cc) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in cc)):
        raise SidecarError(f"{path}: field 'compute_capability' must be [major, minor], got {cc!r}")
    precision = _field(data, "precision", str, path)
    if precision not in ("fp16", "fp32"):
        raise SidecarError(f"{path}: field 'precision' must be 'fp16' or 'fp32', got {precision!r}")
    return EngineSidecar(
        path=path,
        spec=_spec(data, path),
        onnx_sha256=_sha(data, "onnx_sha256", path),
        tensorrt_version=_field(data, "tensorrt_version", str, path),
        gpu_name=_field(data, "gpu_name", str, path),
        compute_capability=(cc[0], cc[1]),
        precision=precision,
        engine_bytes=_field(data, "engine_bytes", int, path),
        engine_sha256=_sha(data, "engine_sha256", path),
        data=data,
    )
