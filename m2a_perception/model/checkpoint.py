"""Load and save Mask2Anomaly weights: the authors' detectron2 checkpoints and our own single-file format.

Accepted inputs (files are treated as untrusted: size-checked before reading, never unpickled freely):

- detectron2 ``.pth`` (``torch.save`` of ``{"model": state_dict, ...}`` or of a bare state dict), read with
  ``torch.load(..., weights_only=True)``;
- detectron2 ``.pkl`` (a pickled ``{"model": {name: numpy array}, "__author__": ..., ...}``, arrays possibly at
  top level), read with `_RestrictedUnpickler`, which admits only numpy arrays and plain containers;
- either of the above with DistributedDataParallel's ``module.`` prefix on every key;
- our own format (`save_checkpoint`): one ``torch.save`` file holding the state dict, the model config, the
  class names and the software version, so `build_model_from_checkpoint` rebuilds the model from it alone;
- for the backbone only (`load_backbone_weights`): torchvision / Barlow-Twins ResNet-50 weights and
  detectron2-converted torchvision ``.pkl`` files.

`detectron2_to_m2a_key` is the one place that knows how the authors' parameter names map onto ours (METHOD.md
section 6.2). Every load returns a `LoadReport` (missing, unexpected, mis-shaped and ignored keys) and refuses,
with a `CheckpointError` naming the file and the first offending keys, a file that is not a Mask2Anomaly /
Mask2Former checkpoint or (with ``strict=True``) one that does not match the model exactly.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from m2a_perception.model.config import CITYSCAPES_CLASSES, M2AConfig

if TYPE_CHECKING:
    from m2a_perception.model.mask2anomaly import Mask2Anomaly

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "CheckpointError",
    "LoadReport",
    "build_model_from_checkpoint",
    "detectron2_to_m2a_key",
    "load_backbone_weights",
    "load_checkpoint",
    "m2a_to_detectron2_key",
    "save_checkpoint",
    "torchvision_to_detectron2_key",
]

CHECKPOINT_FORMAT = "m2a-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 2 * 1024**3  # the r50 model is ~190 MB in fp32; anything near 2 GiB is not ours
MIN_COVERAGE = 0.5  # below this fraction of the model's keys present, the file is "not a checkpoint of ours"
_PREVIEW = 5  # offending keys quoted per kind in error messages

# Non-tensor entries detectron2 puts beside the arrays of a .pkl; kept as metadata, never treated as weights.
_D2_METADATA_KEYS = ("__author__", "matching_heuristics")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, is not ours, or does not fit the model; the message names the file."""


@dataclass
class LoadReport:
    """What a load did. Key names: ``missing`` and ``mismatched`` use the model's (m2a) names, ``unexpected`` and
    ``ignored`` the file's own names (after stripping a ``module.`` prefix)."""

    path: str
    source_format: str  # "m2a", "detectron2-pth", "detectron2-pkl" or "torchvision"
    loaded: int = 0  # tensors copied into the model
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, model, file
    # Dropped on purpose: known-unused entries (fusion_layer, criterion.empty_weight, num_batches_tracked, ...);
    # for load_backbone_weights also every key that is not part of the ResNet (fc, projector, heads).
    ignored: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None  # only our own format stores them
    metadata: dict[str, Any] = field(default_factory=dict)  # m2a_version, extra, detectron2's __author__, ...
    notes: list[str] = field(default_factory=list)  # dtype casts, stripped prefixes, inferred config fields

    @property
    def ok(self) -> bool:
        """True when every model key was loaded from a tensor of the right shape and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [
            f"{self.source_format} checkpoint {self.path}: loaded {self.loaded} tensors, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped, "
            f"{len(self.ignored)} ignored"
        ]
        if self.missing:
            lines.append(f"  missing: {_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {_preview(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  mis-shaped: {_preview_mismatched(self.mismatched)}")
        if self.ignored:
            lines.append(f"  ignored: {_preview(self.ignored)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# The key tables


def _always_ignored(name: str) -> bool:
    """Entries of the authors' files that are not weights of the network (METHOD.md 6.2, "Other")."""
    return (
        name in ("criterion.empty_weight", "pixel_mean", "pixel_std")
        or name == "num_batches_tracked"
        or name.endswith(".num_batches_tracked")
    )


def detectron2_to_m2a_key(name: str) -> str | None:
    """The whole detectron2 -> m2a parameter-name table. Returns None for known-unused entries (ignore them).

    - ``backbone.*``: identical (detectron2's ResNet names, FrozenBN buffers without num_batches_tracked).
    - ``sem_seg_head.pixel_decoder.transformer.encoder.*`` -> ``pixel_decoder.encoder.*``;
      ``...transformer.level_embed`` -> ``pixel_decoder.level_embed``;
      ``...adapter_{n}.*`` -> ``pixel_decoder.lateral_convs.{n-1}.*``;
      ``...layer_{n}.*`` -> ``pixel_decoder.output_convs.{n-1}.*``; other ``...pixel_decoder.*`` -> ``pixel_decoder.*``.
    - ``sem_seg_head.predictor.*`` -> ``transformer_decoder.*``, except that vanilla Mask2Former's single
      ``transformer_cross_attention_layers.{l}.multihead_attn.*`` becomes ``...multihead_attn_foreground.*`` and
      Mask2Anomaly's never-called ``...{l}.fusion_layer.*`` is dropped.
    - ``criterion.empty_weight``, ``pixel_mean``, ``pixel_std`` and every ``*.num_batches_tracked``: dropped.
    - Anything else is returned unchanged (so an m2a-named state dict maps onto itself, and a foreign key is
      reported as unexpected under its own name).
    """
    if _always_ignored(name):
        return None
    if name.startswith("sem_seg_head.predictor."):
        rest = name[len("sem_seg_head.predictor.") :]
        m = re.fullmatch(r"transformer_cross_attention_layers\.(\d+)\.(.+)", rest)
        if m:
            layer, tail = m.groups()
            if tail.startswith("fusion_layer."):
                return None
            if tail.startswith("multihead_attn."):
                tail = "multihead_attn_foreground." + tail[len("multihead_attn.") :]
            rest = f"transformer_cross_attention_layers.{layer}.{tail}"
        return "transformer_decoder." + rest
    if name.startswith("sem_seg_head.pixel_decoder."):
        rest = name[len("sem_seg_head.pixel_decoder.") :]
        if rest.startswith("transformer.encoder."):
            return "pixel_decoder.encoder." + rest[len("transformer.encoder.") :]
        if rest == "transformer.level_embed":
            return "pixel_decoder.level_embed"
        m = re.fullmatch(r"(adapter|layer)_([1-9]\d*)\.(.+)", rest)
        if m:
            kind, n, tail = m.groups()
            module = "lateral_convs" if kind == "adapter" else "output_convs"
            return f"pixel_decoder.{module}.{int(n) - 1}.{tail}"
        return "pixel_decoder." + rest
    return name


def m2a_to_detectron2_key(name: str, *, vanilla: bool = False) -> str:
    """Inverse of `detectron2_to_m2a_key` (for export and tests).

    ``vanilla=True`` names the masked-attention variant's single cross-attention as Mask2Former does
    (``multihead_attn``) instead of Mask2Anomaly's ``multihead_attn_foreground``.
    """
    if name.startswith("transformer_decoder."):
        rest = name[len("transformer_decoder.") :]
        if vanilla:
            rest = re.sub(
                r"^(transformer_cross_attention_layers\.\d+\.)multihead_attn_foreground\.", r"\1multihead_attn.", rest
            )
        return "sem_seg_head.predictor." + rest
    if name.startswith("pixel_decoder."):
        rest = name[len("pixel_decoder.") :]
        if rest.startswith("encoder."):
            rest = "transformer." + rest
        elif rest == "level_embed":
            rest = "transformer.level_embed"
        else:
            m = re.fullmatch(r"(lateral_convs|output_convs)\.(\d+)\.(.+)", rest)
            if m:
                module, i, tail = m.groups()
                rest = f"{'adapter' if module == 'lateral_convs' else 'layer'}_{int(i) + 1}.{tail}"
        return "sem_seg_head.pixel_decoder." + rest
    return name


_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.0|downsample\.1)\.(.+)")
_D2_RESNET = re.compile(r"(stem\.conv1|res[2-5]\.\d+\.(conv[123]|shortcut))\.(.+)")


def torchvision_to_detectron2_key(name: str) -> str | None:
    """torchvision ResNet name -> detectron2 backbone name (without ``backbone.``), METHOD.md 6.2's name map.

    ``conv1``->``stem.conv1``, ``bn1``->``stem.conv1.norm``, ``layer{1..4}``->``res{2..5}``,
    ``bn{k}``->``conv{k}.norm``, ``downsample.0``->``shortcut``, ``downsample.1``->``shortcut.norm``.
    detectron2 names (``stem.*``, ``res{n}.*``) are returned unchanged. Returns None for anything else:
    the classifier ``fc.*``, ``num_batches_tracked`` and keys that are not part of a ResNet at all.
    """
    if name.endswith("num_batches_tracked") or name.startswith("fc."):
        return None
    if _D2_RESNET.fullmatch(name):
        return name
    m = re.fullmatch(r"(conv1|bn1)\.(.+)", name)
    if m:
        return ("stem.conv1." if m.group(1) == "conv1" else "stem.conv1.norm.") + m.group(2)
    m = _TV_BLOCK.fullmatch(name)
    if m:
        stage, block, part, tail = m.groups()
        d2_part = {
            "conv1": "conv1",
            "conv2": "conv2",
            "conv3": "conv3",
            "bn1": "conv1.norm",
            "bn2": "conv2.norm",
            "bn3": "conv3.norm",
            "downsample.0": "shortcut",
            "downsample.1": "shortcut.norm",
        }[part]
        return f"res{int(stage) + 1}.{block}.{d2_part}.{tail}"
    return None


# ----------------------------------------------------------------------------------------------------------
# Reading files safely


def _numpy_core(submodule: str) -> Any:
    try:  # numpy 2 moved numpy.core to numpy._core
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # pragma: no cover - numpy 1
        return importlib.import_module(f"numpy.core.{submodule}")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy globals a pickled array needs, by every (module, name) numpy 1 or 2 writes for them."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # numpy 1 wrote "numpy.core.*", numpy 2 writes "numpy._core.*"; both resolve to the installed numpy's
    # function (the deprecated numpy.core alias is never imported).
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer  # pickle protocol 5
    return allowed


def _torch_numpy_safe_globals() -> list[Any]:
    """The same numpy allow-list for torch's weights-only unpickler (a .pth holding numpy arrays)."""
    safe: list[Any] = [
        obj if f"{mod}.{name}" == f"{obj.__module__}.{obj.__name__}" else (obj, f"{mod}.{name}")
        for (mod, name), obj in _numpy_globals().items()
    ]
    safe.extend({type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD"})  # dtype classes (numpy.dtypes.Float32DType, ...)
    return safe


_BUILTINS = {
    name: getattr(__import__("builtins"), name)
    for name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "bool")
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for untrusted detectron2 ``.pkl`` files: only numpy arrays, numpy scalars and plain containers.

    ``find_class`` is the only way a pickle can reach a callable, so refusing every other global means a
    malicious file cannot run code (e.g. ``os.system``) while loading; it fails with `CheckpointError`.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            allowed = _numpy_globals()
            allowed[("collections", "OrderedDict")] = OrderedDict
            allowed[("_codecs", "encode")] = __import__("codecs").encode  # bytes in protocol-2 pickles
            for mod in ("builtins", "__builtin__"):  # Python 2 pickles say __builtin__
                for key, obj in _BUILTINS.items():
                    allowed[(mod, key)] = obj
            _RestrictedUnpickler._allowed = allowed
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refusing to unpickle global '{module}.{name}': only numpy arrays and plain containers are "
                "allowed in a .pkl checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refusing a pickle with persistent ids (not a plain detectron2 .pkl checkpoint)")


def _check_file(path: Path, max_bytes: int) -> int:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if size > max_bytes:
        raise CheckpointError(
            f"checkpoint {path} is {_human(size)} ({size} bytes), more than max_bytes={max_bytes} "
            f"({_human(max_bytes)}); pass a larger max_bytes if the file is trusted"
        )
    return size


def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _torch_load(path: Path, map_location: Any) -> Any:
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: tensors only, no numpy arrays
        return torch.load(path, map_location=map_location, weights_only=True)
    with torch.serialization.safe_globals(_torch_numpy_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _pickle_load(path: Path) -> Any:
    with path.open("rb") as f:
        return _RestrictedUnpickler(f, encoding="latin1").load()  # latin1: Python-2 era detectron2 pickles


def _read_object(path: Path, map_location: Any, max_bytes: int) -> tuple[Any, str]:
    """Read the file into plain Python objects; returns (object, "pth" | "pkl")."""
    _check_file(path, max_bytes)
    if _is_zip(path):  # torch.save's format whatever the suffix
        try:
            return _torch_load(path, map_location), "pth"
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing {path}: it holds objects outside torch's weights-only allow-list ({_weights_only_reason(e)})"
            ) from e
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as a torch.save file (truncated or corrupt?): {e}") from e
    if path.suffix.lower() == ".pkl":
        try:
            return _pickle_load(path), "pkl"
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as a pickle (truncated or not a pickle?): {e!r}") from e
    # Not a zip: torch's legacy format, or a plain pickle under another suffix.
    try:
        return _torch_load(path, map_location), "pth"
    except Exception as torch_error:
        try:
            return _pickle_load(path), "pkl"
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except Exception as e:
            raise CheckpointError(
                f"{path} is neither a torch.save file nor a pickle: torch.load said "
                f"'{_weights_only_reason(torch_error)}', pickle said '{_first_line(e)}'"
            ) from e


# ----------------------------------------------------------------------------------------------------------
# From file contents to a name -> tensor dict


@dataclass
class _Parsed:
    path: Path
    container: str  # "pth" | "pkl"
    source_format: str
    tensors: dict[str, torch.Tensor]
    non_tensors: list[str]
    config: dict[str, Any] | None = None
    class_names: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _to_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":  # object / string arrays are not weights
            return None
        if value.dtype.byteorder not in ("=", "|"):
            value = value.astype(value.dtype.newbyteorder("="))
        if not value.flags.c_contiguous or not value.flags.writeable:
            value = np.array(value, order="C", copy=True)
        return torch.from_numpy(value)
    return None


def _tensor_dict(raw: Mapping[Any, Any], path: Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    non_tensors: list[str] = []
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state-dict key {key!r} is not a string; not a checkpoint")
        t = _to_tensor(value)
        if t is not None:
            tensors[key] = t
        elif key in _D2_METADATA_KEYS or key.startswith("__"):
            metadata[key] = value
        else:
            non_tensors.append(key)
    return tensors, non_tensors, metadata


def _parse(obj: Any, container: str, path: Path) -> _Parsed:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights; not a checkpoint")
    if obj.get("format") == CHECKPOINT_FORMAT:
        return _parse_m2a(obj, container, path)
    raw = obj
    metadata: dict[str, Any] = {}
    if "model" in obj:
        if not isinstance(obj["model"], Mapping):
            raise CheckpointError(f"{path}: 'model' holds a {type(obj['model']).__name__}, not a state dict")
        raw = obj["model"]
        metadata.update({k: obj[k] for k in _D2_METADATA_KEYS if k in obj})
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # common wrapper (e.g. Barlow Twins)
        raw = obj["state_dict"]
    tensors, non_tensors, meta = _tensor_dict(raw, path)
    metadata.update(meta)
    parsed = _Parsed(path, container, f"detectron2-{container}", tensors, non_tensors, metadata=metadata)
    _strip_module_prefix(parsed)
    return parsed


def _parse_m2a(obj: Mapping[str, Any], container: str, path: Path) -> _Parsed:
    version = obj.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: m2a checkpoint with invalid format_version {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer m2a (format_version {version}, m2a {obj.get('m2a_version')}); "
            f"this reader knows format_version {CHECKPOINT_FORMAT_VERSION}"
        )
    state = obj.get("state_dict")
    config = obj.get("config")
    if not isinstance(state, Mapping) or not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: m2a checkpoint without a 'state_dict' and 'config' dict; corrupt file?")
    tensors, non_tensors, _ = _tensor_dict(state, path)
    names = obj.get("class_names")
    metadata = {"m2a_version": obj.get("m2a_version"), "format_version": version, "extra": obj.get("extra") or {}}
    return _Parsed(
        path,
        container,
        "m2a",
        tensors,
        non_tensors,
        config=dict(config),
        class_names=tuple(names) if names is not None else None,
        metadata=metadata,
    )


def _strip_module_prefix(parsed: _Parsed) -> None:
    keys = list(parsed.tensors)
    if keys and all(k.startswith("module.") for k in keys):
        parsed.tensors = {k[len("module.") :]: v for k, v in parsed.tensors.items()}
        parsed.notes.append("stripped the 'module.' prefix (DistributedDataParallel) from every key")


# ----------------------------------------------------------------------------------------------------------
# Matching a file against a model


@dataclass
class _Plan:
    loadable: dict[str, torch.Tensor]  # model key -> file tensor (right shape)
    sources: dict[str, str]  # model key -> file key, for every file key that named a model key
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]
    ignored: list[str]
    expected: dict[str, tuple[int, ...]]

    @property
    def coverage(self) -> float:
        return len(self.sources) / max(len(self.expected), 1)


def _plan(
    expected: dict[str, tuple[int, ...]],
    tensors: Mapping[str, torch.Tensor],
    key_fn: Callable[[str], str | None],
    non_tensors: Iterable[str] = (),
) -> _Plan:
    loadable: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unexpected: list[str] = list(non_tensors)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    ignored: list[str] = []
    for name, tensor in tensors.items():
        target = key_fn(name)
        if target is None:
            ignored.append(name)
            continue
        if target not in expected or target in sources:  # foreign key, or a second file key for one model key
            unexpected.append(name)
            continue
        sources[target] = name
        got = tuple(tensor.shape)
        if got != expected[target]:
            mismatched.append((target, expected[target], got))
            continue
        loadable[target] = tensor
    missing = [k for k in expected if k not in sources]
    return _Plan(loadable, sources, missing, unexpected, mismatched, ignored, expected)


def _expected_keys(module: nn.Module, skip: Callable[[str], bool]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not skip(k)}


def _refuse_if_foreign(plan: _Plan, parsed: _Parsed, what: str) -> None:
    if plan.coverage >= MIN_COVERAGE and plan.sources:
        return
    used = set(plan.sources.values()) | set(plan.ignored)
    unrecognised = [k for k in parsed.tensors if k not in used]
    hint = ""
    if any(torchvision_to_detectron2_key(k) for k in parsed.tensors) and not any(
        k.startswith(("backbone.", "sem_seg_head.", "pixel_decoder.", "transformer_decoder.")) for k in parsed.tensors
    ):
        hint = " It looks like bare ResNet weights: use load_backbone_weights() for those."
    raise CheckpointError(
        f"{parsed.path} is not {what} checkpoint: only {len(plan.sources)} of the model's {len(plan.expected)} "
        f"keys are present ({plan.coverage:.0%}, need {MIN_COVERAGE:.0%}). "
        f"The file has {len(parsed.tensors)} tensors; unrecognised: {_preview(unrecognised)}. "
        f"Expected keys like: {_preview(list(plan.expected))}.{hint}"
    )


def _refuse_mismatch(plan: _Plan, path: Path, *, what: str, unexpected: bool = True, why: str = "strict=True") -> None:
    """CheckpointError listing the missing, (unexpected,) and mis-shaped keys, if there are any."""
    parts = []
    if plan.missing:
        parts.append(f"{len(plan.missing)} missing: {_preview(plan.missing)}")
    if unexpected and plan.unexpected:
        parts.append(f"{len(plan.unexpected)} unexpected: {_preview(plan.unexpected)}")
    if plan.mismatched:
        parts.append(f"{len(plan.mismatched)} mis-shaped: {_preview_mismatched(plan.mismatched)}")
    if parts:
        raise CheckpointError(f"{path} does not match {what} ({why}): " + "; ".join(parts) + ".")


def _copy_into(module: nn.Module, loadable: dict[str, torch.Tensor], notes: list[str]) -> int:
    """Cast to the model's dtypes and copy with load_state_dict(strict=False) (buffers such as FrozenBN stats too)."""
    current = module.state_dict()
    casts: dict[tuple[torch.dtype, torch.dtype], int] = {}
    state: dict[str, torch.Tensor] = {}
    for key, tensor in loadable.items():
        dtype = current[key].dtype
        if tensor.dtype != dtype:
            casts[(tensor.dtype, dtype)] = casts.get((tensor.dtype, dtype), 0) + 1
            tensor = tensor.to(dtype)
        state[key] = tensor
    for (src, dst), n in casts.items():
        notes.append(f"cast {n} tensors from {src} to the model's {dst}")
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # cannot happen: `state` only holds the module's own keys
        raise RuntimeError(f"load_state_dict rejected keys {result.unexpected_keys[:_PREVIEW]}")
    return len(state)


# ----------------------------------------------------------------------------------------------------------
# Public API


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    map_location: Any = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LoadReport:
    """Load a detectron2 (``.pth`` / ``.pkl``) or m2a checkpoint into ``model`` (a `Mask2Anomaly`).

    Raises `CheckpointError` when the file cannot be read safely, is larger than ``max_bytes``, is not a
    Mask2Anomaly / Mask2Former checkpoint (fewer than half of the model's keys present), is our own format
    written for a different config, or (``strict=True``) has missing, unexpected or mis-shaped keys. With
    ``strict=False`` every key that matches is loaded, the rest is listed in the returned `LoadReport`.
    Known-unused entries (``fusion_layer``, ``criterion.empty_weight``, ``num_batches_tracked``, ...) are
    dropped and listed as ``ignored``. Tensors are cast to the model's dtype (fp16 files load into fp32 models).
    """
    path = Path(path)
    obj, container = _read_object(path, map_location, max_bytes)
    parsed = _parse(obj, container, path)
    if parsed.source_format == "m2a":
        config = getattr(model, "config", None)
        if isinstance(config, M2AConfig):
            _check_config(parsed, config)
    return _load_parsed(model, parsed, strict=strict)


def _load_parsed(model: nn.Module, parsed: _Parsed, *, strict: bool) -> LoadReport:
    def skip(key: str) -> bool:  # model entries no file is expected to hold
        return (
            key == "num_batches_tracked"
            or key.endswith(".num_batches_tracked")
            or (parsed.source_format != "m2a" and key in ("pixel_mean", "pixel_std"))
        )

    if parsed.source_format == "m2a":

        def key_fn(name: str) -> str | None:
            return None if name.endswith("num_batches_tracked") else name

        what = "an m2a"
    else:
        key_fn = detectron2_to_m2a_key
        what = "a Mask2Anomaly / Mask2Former"
    plan = _plan(_expected_keys(model, skip), parsed.tensors, key_fn, parsed.non_tensors)
    _refuse_if_foreign(plan, parsed, what)
    if strict:
        _refuse_mismatch(plan, parsed.path, what="the model", why="strict=True; strict=False loads what matches")
    notes = list(parsed.notes)
    loaded = _copy_into(model, plan.loadable, notes)
    return LoadReport(
        path=str(parsed.path),
        source_format=parsed.source_format,
        loaded=loaded,
        missing=plan.missing,
        unexpected=plan.unexpected,
        mismatched=plan.mismatched,
        ignored=plan.ignored,
        class_names=parsed.class_names,
        metadata=parsed.metadata,
        notes=notes,
    )


def _check_config(parsed: _Parsed, config: M2AConfig) -> M2AConfig:
    """The file's config as an `M2AConfig`; a CheckpointError naming the fields that differ from ``config``."""
    file_config = _file_config(parsed)
    ours, theirs = _flatten(config.to_dict()), _flatten(file_config.to_dict())
    diffs = [f"{k}: model {ours.get(k)!r}, file {theirs.get(k)!r}" for k in sorted(ours) if ours[k] != theirs.get(k)]
    if diffs:
        raise CheckpointError(
            f"{parsed.path} was saved from a model with a different config ({len(diffs)} field(s) differ: "
            + "; ".join(diffs[:_PREVIEW])
            + (f"; ... +{len(diffs) - _PREVIEW} more" if len(diffs) > _PREVIEW else "")
            + "). Build the model with build_model_from_checkpoint() instead."
        )
    return file_config


def _file_config(parsed: _Parsed) -> M2AConfig:
    try:
        return M2AConfig.from_dict(parsed.config or {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{parsed.path}: invalid model config in the checkpoint: {e}") from e


def build_model_from_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: M2AConfig | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[Mask2Anomaly, LoadReport]:
    """Build a `Mask2Anomaly` from a checkpoint file and load it; returns ``(model in eval mode, report)``.

    Our own format carries its config (``config``, if given, must equal it). detectron2 files carry none:
    ``config`` defaults to the ``r50`` preset, and two fields are read from the weights themselves — the number
    of classes (rows of ``class_embed.weight`` minus the no-object class) and the attention kind ("masked"
    when the file has vanilla Mask2Former's single ``multihead_attn`` per layer); ``report.notes`` says so.
    """
    from m2a_perception.model import Mask2Anomaly  # late: the model package may import this module

    path = Path(path)
    obj, container = _read_object(path, "cpu", max_bytes)
    parsed = _parse(obj, container, path)
    if parsed.source_format == "m2a":
        cfg = _file_config(parsed) if config is None else _check_config(parsed, config)
    else:
        cfg = _infer_detectron2_config(parsed, config if config is not None else M2AConfig.preset("r50"))
    model = Mask2Anomaly(cfg)
    report = _load_parsed(model, parsed, strict=strict)
    return model.to(device).eval(), report


def _infer_detectron2_config(parsed: _Parsed, cfg: M2AConfig) -> M2AConfig:
    names = list(parsed.tensors)
    vanilla = any(re.search(r"transformer_cross_attention_layers\.\d+\.multihead_attn\.", k) for k in names)
    gma = any(".multihead_attn_background." in k for k in names)
    if vanilla and not gma and cfg.decoder.attention != "masked":
        cfg = cfg.replace(decoder=dataclasses.replace(cfg.decoder, attention="masked"))
        parsed.notes.append("vanilla Mask2Former cross-attention keys: built the 'masked' attention variant")
    class_weight = parsed.tensors.get("sem_seg_head.predictor.class_embed.weight")
    if class_weight is not None and class_weight.ndim == 2 and class_weight.shape[0] >= 2:
        num_classes = int(class_weight.shape[0]) - 1
        if num_classes != cfg.num_classes:
            cfg = cfg.replace(num_classes=num_classes)
            parsed.notes.append(f"class_embed has {num_classes} + 1 rows: built the model with {num_classes} classes")
    return cfg


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    class_names: Iterable[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to one file in our format, loadable with ``torch.load(weights_only=True)``.

    Contents: ``format`` ("m2a-checkpoint"), ``format_version`` (1), ``m2a_version``, ``config``
    (``model.config.to_dict()``), ``class_names`` (default: the 19 Cityscapes classes when the model has 19),
    ``state_dict`` (CPU tensors) and ``extra`` (plain values only: str, int, float, bool, None, lists, dicts with
    str keys, tensors). The file is written next to ``path`` and renamed into place, so a reader never sees
    half a file.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, M2AConfig):
        raise TypeError(f"save_checkpoint needs a model with an M2AConfig `config`, got {type(config).__name__}")
    if class_names is None:
        if config.num_classes != len(CITYSCAPES_CLASSES):
            raise ValueError(f"the model has {config.num_classes} classes: pass their class_names")
        class_names = CITYSCAPES_CLASSES
    names = list(class_names)
    if len(names) != config.num_classes or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class_names must be {config.num_classes} strings, got {names!r}")
    if extra is not None:
        _check_plain(extra, "extra")
    try:
        import m2a_perception

        version = str(getattr(m2a_perception, "__version__", "0.0.0"))
    except ImportError:  # pragma: no cover - the package is always importable from here
        version = "0.0.0"
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "m2a_version": version,
        "config": config.to_dict(),
        "class_names": names,
        "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}; checkpoint extras must be plain values")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__}; checkpoint extras must be plain values (str, int, float, bool, "
        "None, list, dict, tensor) so the file loads with weights_only=True"
    )


def load_backbone_weights(
    model_or_backbone: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    map_location: Any = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LoadReport:
    """Load ResNet-50 weights (torchvision / Barlow-Twins ``.pth``, or detectron2-converted ``.pkl``) into the backbone.

    ``model_or_backbone`` is a whole `Mask2Anomaly` (keys ``backbone.*``) or its backbone alone. The file may
    wrap its state dict in ``state_dict`` or ``model``, prefix keys with ``module.`` and/or ``backbone.`` (then
    only those keys are read). torchvision names are mapped by `torchvision_to_detectron2_key`; ``fc.*``,
    ``num_batches_tracked`` and non-ResNet keys are ignored. Every backbone key must be present with the right
    shape (else `CheckpointError`); ResNet keys the backbone does not have (e.g. a deeper ResNet) are an error
    when ``strict``.
    """
    path = Path(path)
    obj, container = _read_object(path, map_location, max_bytes)
    parsed = _parse(obj, container, path)
    tensors = parsed.tensors
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in tensors):
        ignored = [k for k in tensors if not k.startswith("backbone.")]
        tensors = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    torchvision_names = any(_TV_BLOCK.fullmatch(k) or k.startswith(("conv1.", "bn1.")) for k in tensors)
    if parsed.source_format == "m2a":
        source_format = "m2a"
    else:
        source_format = "torchvision" if torchvision_names else f"detectron2-{container}"

    state = model_or_backbone.state_dict()
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""

    def key_fn(name: str) -> str | None:
        d2 = torchvision_to_detectron2_key(name)
        return None if d2 is None else prefix + d2

    def skip(key: str) -> bool:
        return not key.startswith(prefix) or key.endswith("num_batches_tracked")

    plan = _plan(_expected_keys(model_or_backbone, skip), tensors, key_fn)
    plan.ignored = ignored + plan.ignored
    # Names the ResNet map does not know are "not backbone" (ignored); mapped names the backbone lacks are
    # unexpected. Missing or mis-shaped backbone keys are always an error: a half-initialised frozen backbone
    # would silently spoil every prediction.
    if not plan.sources:
        raise CheckpointError(
            f"{path} holds no ResNet weights: none of its {len(tensors)} keys maps onto the backbone "
            f"(keys: {_preview(list(tensors))}; expected torchvision names like 'layer1.0.conv1.weight' or "
            f"detectron2 names like 'res2.0.conv1.weight')"
        )
    _refuse_mismatch(
        plan, path, what="the backbone", unexpected=strict, why="every backbone weight must come from the file"
    )
    notes = list(parsed.notes)
    loaded = _copy_into(model_or_backbone, plan.loadable, notes)
    return LoadReport(
        path=str(path),
        source_format=source_format,
        loaded=loaded,
        missing=plan.missing,
        unexpected=plan.unexpected,
        mismatched=plan.mismatched,
        ignored=plan.ignored,
        metadata=parsed.metadata,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _preview(keys: list[str], n: int = _PREVIEW) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{f', ... +{len(keys) - n} more' if len(keys) > n else ''}]"


def _preview_mismatched(items: list[tuple[str, tuple[int, ...], tuple[int, ...]]], n: int = _PREVIEW) -> str:
    shown = ", ".join(f"{k!r} model {list(want)} file {list(got)}" for k, want, got in items[:n])
    return f"[{shown}{f', ... +{len(items) - n} more' if len(items) > n else ''}]"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _human(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def _weights_only_reason(e: BaseException) -> str:
    """The informative line of torch's long weights-only refusal (e.g. "... unsupported GLOBAL posix.system ...")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            if rest:
                return rest
        elif re.search(r"unsupported|GLOBAL|Can only build", line, re.IGNORECASE) and not line.startswith(
            ("Weights only load failed", "Please", "Check the documentation")
        ):
            return line
    return lines[0] if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
