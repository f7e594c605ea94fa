"""Training configuration: YAML files -> frozen dataclasses, with unknown keys rejected by name.

A file holds the sections below. It may also hold ``stages:``, a list of ``{name: ..., <section>: {...}}``
overrides deep-merged onto the shared sections in order (e.g. stage 1 then stage 2 in one file); each stage
writes to ``<train.output_dir>/<name>`` and, unless it sets ``model.init_checkpoint``, a stage after the first
starts from the previous stage's ``model_final.pt``. Command-line overrides ``section.key=value`` (value parsed
as YAML) apply to every stage; ``stages.<name>.section.key=value`` to one.

    model:        preset, changes (to the preset's network config), backbone_weights, init_checkpoint, train_backbone,
                  backbone_norm
    data:         dataset (cityscapes | synthroad), root, split, num_workers, synthroad: {...}
    augment:      `AugmentConfig`
    anomaly_mix:  enabled, probability, source (coco | synthroad), coco_root, synthroad: {...}
    loss:         `LossConfig`
    solver:       `SolverConfig`
    train:        seed, output_dir, device, checkpoint_period, log_period, eval_period, keep_checkpoints
    validation:   semantic / anomaly: {dataset, root, split, num_images, ...} or null
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from m2a_perception.model.config import M2AConfig
from m2a_perception.synthroad import SceneConfig

from .data.augment import AugmentConfig
from .losses import LossConfig
from .solver import SolverConfig

FINAL_MODEL = "model_final.pt"  # what a stage leaves in its output_dir


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class ModelSection:
    preset: str = "r50"
    backbone_weights: str | None = None  # torchvision / Barlow-Twins ResNet-50 .pth (stage 1 initialisation)
    init_checkpoint: str | None = None  # a full model (ours or the authors') to start from (stage 2)
    train_backbone: bool = False  # the release keeps it frozen; True trains its convolutions
    # How a trained backbone normalises: "frozen" keeps the fixed statistics (a pretrained ResNet), "batch"
    # trains ordinary batch norm (a backbone learned from scratch, e.g. the small preset on generated scenes).
    # Either way the saved checkpoint holds the same four buffers per norm, which inference folds into the convs.
    backbone_norm: Literal["frozen", "batch"] = "frozen"
    changes: dict[str, Any] | None = None  # merged into the preset's config, e.g. {decoder: {num_queries: 50}}

    def network_config(self) -> M2AConfig:
        """The preset's `M2AConfig` with `changes` applied (unknown keys are an error naming them)."""
        config = M2AConfig.preset(self.preset)
        if self.changes:
            config = M2AConfig.from_dict(deep_merge(config.to_dict(), self.changes))
        return config


@dataclass(frozen=True)
class SynthRoadSection:
    """Generated scenes: `num_images` scenes of height x width, seeds first_seed.. (see `SynthRoadScenes`)."""

    num_images: int = 500
    height: int = 512
    width: int = 1024
    first_seed: int = 0
    num_anomalies: int = 0  # anomalies drawn into the scenes themselves (validation: >= 1)
    anomaly_family: Literal["train", "eval"] = "eval"
    max_vehicles: int = 6
    max_persons: int = 4

    def scene_config(self) -> SceneConfig:
        return SceneConfig(
            height=self.height,
            width=self.width,
            num_anomalies=self.num_anomalies,
            anomaly_family=self.anomaly_family,
            max_vehicles=self.max_vehicles,
            max_persons=self.max_persons,
        )


@dataclass(frozen=True)
class DataSection:
    dataset: Literal["cityscapes", "synthroad"] = "cityscapes"
    root: str | None = None  # Cityscapes root (leftImg8bit/, gtFine/)
    split: str = "train"
    num_workers: int = 4
    synthroad: SynthRoadSection = field(default_factory=SynthRoadSection)


@dataclass(frozen=True)
class SynthRoadOutlierSection:
    family: Literal["train", "eval"] = "train"
    scale_range: tuple[float, float] = (0.08, 0.35)  # object height / canvas height


@dataclass(frozen=True)
class AnomalyMixSection:
    enabled: bool = False
    probability: float = 0.2
    source: Literal["coco", "synthroad"] = "coco"
    coco_root: str | None = None  # the output of `m2a-train prepare-coco`
    synthroad: SynthRoadOutlierSection = field(default_factory=SynthRoadOutlierSection)


@dataclass(frozen=True)
class TrainSection:
    seed: int = 0
    output_dir: str = "outputs/m2a"
    device: str = "auto"  # auto: cuda (this rank's local GPU) if available, else cpu
    checkpoint_period: int = 5000
    keep_checkpoints: int = 0  # 0 keeps all; n keeps the n newest periodic checkpoints
    log_period: int = 20
    eval_period: int = 5000  # 0: validate only at the end
    threads: int = 0  # torch CPU threads per rank (0: torch's default)


@dataclass(frozen=True)
class ValidationSetSection:
    """One validation set: Cityscapes (semantic labels), generated scenes (both) or an anomaly benchmark."""

    # cityscapes (semantic), synthroad (both), or an anomaly benchmark of m2a_training.data.benchmarks
    dataset: Literal["cityscapes", "synthroad", "ra21", "ro21", "fs_laf", "fs_static", "road_anomaly", "packaged"] = (
        "synthroad"
    )
    root: str | None = None
    split: str = "val"  # cityscapes only
    max_images: int | None = None
    short_edge: int | None = None  # resize like the evaluator (shorter side, longer <= 2x) before the model
    synthroad: SynthRoadSection = field(
        default_factory=lambda: SynthRoadSection(num_images=50, first_seed=1_000_000, num_anomalies=2)
    )


@dataclass(frozen=True)
class ValidationSection:
    semantic: ValidationSetSection | None = None  # mIoU
    anomaly: ValidationSetSection | None = None  # AuPRC, FPR95
    batch_size: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training stage needs."""

    name: str = "train"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    anomaly_mix: AnomalyMixSection = field(default_factory=AnomalyMixSection)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainSection = field(default_factory=TrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), as the YAML would write it."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------------
# Building dataclasses from plain mappings, with type checks and unknown-key errors


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be null")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover - schema bug


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """cls(**data) with every field converted and checked; unknown keys are an error naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected some of {names}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        built = cls(**kwargs)
        if cls is ModelSection:
            built.network_config()  # a bad preset name or change fails here, naming the section
        return built
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


# ----------------------------------------------------------------------------------------------------------
# Files, stages and overrides


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of base with override's mappings merged recursively (override wins; null replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'solver.base_lr=1e-3' -> (['solver', 'base_lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. solver.max_iter=100")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return path, value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_stages(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> list[TrainConfig]:
    """The stages a config file describes (one if it has no ``stages:``), overrides applied, validated."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return stages_from_dict(raw, overrides, source=str(path))


def stages_from_dict(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *, source: str = "<config>"
) -> list[TrainConfig]:
    """As `load_stages`, from an already parsed mapping."""
    raw = copy.deepcopy(raw)
    stage_list = raw.pop("stages", None)
    shared_overrides: dict[str, Any] = {}
    stage_overrides: dict[str, dict[str, Any]] = {}
    for text in overrides:
        key, value = parse_override(text)
        if key[0] == "stages":
            if len(key) < 3:
                raise ConfigError(f"override {text!r}: expected stages.<name>.<section>.<key>=VALUE")
            stage_overrides.setdefault(key[1], {})
            stage_overrides[key[1]] = deep_merge(stage_overrides[key[1]], _nest(key[2:], value))
        else:
            shared_overrides = deep_merge(shared_overrides, _nest(key, value))
    has_stages = stage_list is not None
    if stage_list is None:
        stage_list = [{"name": raw.pop("name", "train")}]
    if not isinstance(stage_list, list) or not stage_list:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list of mappings")
    names = []
    configs = []
    for i, stage in enumerate(stage_list):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise ConfigError(f"{source}: stages[{i}] must be a mapping with a string 'name'")
        names.append(stage["name"])
        merged = deep_merge(deep_merge(raw, stage), shared_overrides)
        merged = deep_merge(merged, stage_overrides.get(stage["name"], {}))
        configs.append(build_dataclass(TrainConfig, merged, f"{source} (stage {stage['name']!r})"))
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: stage names must be distinct, got {names}")
    unknown = sorted(set(stage_overrides) - set(names))
    if unknown:
        raise ConfigError(f"overrides name unknown stages {unknown}; the stages are {names}")
    if has_stages:
        configs = _chain_stages(configs)
    return configs


def _chain_stages(configs: list[TrainConfig]) -> list[TrainConfig]:
    """Each stage writes to <output_dir>/<name>; a later stage starts from the previous one's final model."""
    chained: list[TrainConfig] = []
    for config in configs:
        train = dataclasses.replace(config.train, output_dir=str(Path(config.train.output_dir) / config.name))
        model = config.model
        if chained and model.init_checkpoint is None:
            previous = Path(chained[-1].train.output_dir) / FINAL_MODEL
            model = dataclasses.replace(model, init_checkpoint=str(previous))
        chained.append(dataclasses.replace(config, train=train, model=model))
    return chained


__all__ = [
    "AnomalyMixSection",
    "FINAL_MODEL",
    "ConfigError",
    "DataSection",
    "ModelSection",
    "SynthRoadOutlierSection",
    "SynthRoadSection",
    "TrainConfig",
    "TrainSection",
    "ValidationSection",
    "ValidationSetSection",
    "build_dataclass",
    "deep_merge",
    "load_stages",
    "parse_override",
    "stages_from_dict",
]
