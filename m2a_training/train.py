"""`m2a-train`: prepare COCO outliers and train Mask2Anomaly (single process, or multi-GPU / multi-node via torchrun).

    m2a-train prepare-coco --coco-root DIR --out DIR
    m2a-train train --config configs/stage1_cityscapes.yaml [--resume [CHECKPOINT]] [--stage NAME] [KEY=VALUE ...]
    torchrun --nproc_per_node 8 -m m2a_training.train train --config ...
    m2a-train show-config --config FILE [KEY=VALUE ...]

A run writes into ``train.output_dir``: ``model_<iteration>.pt`` every ``checkpoint_period`` iterations (our
checkpoint format, loadable by `build_model_from_checkpoint`, with the optimizer, scheduler, gradient scaler and
every rank's RNG state in ``extra["train_state"]``), ``last_checkpoint`` (the newest one's name),
``model_final.pt`` (the weights alone), ``metrics.jsonl`` (one JSON line per log step and validation) and
TensorBoard scalars under ``tb/``. The data each iteration sees is a function of (seed, iteration) and the
random points of the losses come from a generator seeded by (seed, iteration, rank), so a resumed run
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from m2a_perception.classes import class_names
from m2a_perception.model import Mask2Anomaly
from m2a_perception.model.checkpoint import (
    CheckpointError,
    load_backbone_weights,
    load_checkpoint,
    save_checkpoint,
)
from m2a_perception.model.layers import FrozenBatchNorm2d
from m2a_perception.model.mask2anomaly import padded_size

from .data.anomaly_mix import AnomalyMix
from .data.cityscapes import CityscapesSemantic
from .data.stream import StreamBatchSampler, TrainingSamples, collate, worker_init, worker_start_method
from .data.synthroad_dataset import SynthRoadOutliers, SynthRoadScenes
from .losses import MaskClassificationLoss, loss_weights, weighted_total
from .solver import build_optimizer, build_scheduler, clip_full_model
from .targets import semantic_targets
from .train_config import FINAL_MODEL, ConfigError, TrainConfig, load_stages
from .validation import validate

LAST_CHECKPOINT = "last_checkpoint"
TRAIN_STATE_FORMAT = 1


# ----------------------------------------------------------------------------------------------------------
# Distributed context


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device (torchrun's environment, or a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join torchrun's process group if WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu" if device == "auto" else device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap_ddp(model: nn.Module, ctx: DistContext) -> DistributedDataParallel:
    """DistributedDataParallel; buffers are synced from rank 0 only when some are trained (batch norm running
    statistics), otherwise they are frozen constants and syncing them every forward would be wasted traffic."""
    kwargs: dict[str, Any] = {"device_ids": [ctx.device.index] if ctx.device.type == "cuda" else None}
    sync = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = sync  # torch >= 2.13 name
    else:
        kwargs["broadcast_buffers"] = sync
    return DistributedDataParallel(model, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Building blocks from the config


def build_training_data(config: TrainConfig) -> tuple[Any, AnomalyMix | None]:
    """The training set and, if enabled, the Anomaly Mix over its outlier source."""
    data = config.data
    if data.dataset == "cityscapes":
        if data.root is None:
            raise ConfigError(f"stage {config.name!r}: data.root must point at Cityscapes for dataset 'cityscapes'")
        dataset: Any = CityscapesSemantic(data.root, data.split)
    else:
        dataset = SynthRoadScenes(data.synthroad.num_images, data.synthroad.scene_config(),
                                  first_seed=data.synthroad.first_seed)  # fmt: skip
    mix = config.anomaly_mix
    if not mix.enabled:
        return dataset, None
    if mix.source == "coco":
        if mix.coco_root is None:
            raise ConfigError(f"stage {config.name!r}: anomaly_mix.coco_root is needed for source 'coco'")
        from .data.coco_outliers import CocoOutliers

        source: Any = CocoOutliers(mix.coco_root)
    else:
        canvas = (data.synthroad.height, data.synthroad.width)
        source = SynthRoadOutliers(mix.synthroad.family, canvas_size=canvas, scale_range=mix.synthroad.scale_range)
    return dataset, AnomalyMix(source, probability=mix.probability)


def build_model(config: TrainConfig, log: Any = print) -> Mask2Anomaly:
    """The network of `model.preset`, with its backbone weights and/or initial checkpoint loaded."""
    model = Mask2Anomaly(config.model.network_config())
    if config.model.backbone_weights:
        report = load_backbone_weights(model, config.model.backbone_weights)
        log(f"backbone weights: {report.summary()}")
    if config.model.init_checkpoint:
        if not Path(config.model.init_checkpoint).is_file():
            raise ConfigError(f"stage {config.name!r}: model.init_checkpoint {config.model.init_checkpoint} not found")
        report = load_checkpoint(model, config.model.init_checkpoint)
        log(f"initial weights: {report.summary()}")
    if config.model.train_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        if config.model.backbone_norm == "batch":
            use_batch_norm(model.backbone)
    elif config.model.backbone_norm == "batch":
        raise ConfigError(f"stage {config.name!r}: model.backbone_norm 'batch' needs model.train_backbone true")
    return model


def use_batch_norm(module: nn.Module) -> None:
    """Replace every frozen batch norm under `module` by a trainable `nn.BatchNorm2d` with the same statistics.

    The state-dict keys stay the same (plus `num_batches_tracked`, which loading ignores), so the checkpoint
    loads into the inference network, whose frozen norms then hold the learned running statistics.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                norm = nn.BatchNorm2d(child.num_features, eps=child.eps)
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
                    norm.running_mean.copy_(child.running_mean)
                    norm.running_var.copy_(child.running_var)
                setattr(parent, name, norm.to(child.weight.device))


# ----------------------------------------------------------------------------------------------------------
# State that goes into a checkpoint as plain values


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_py, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _plain_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    return {"state": {str(k): v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def _optimizer_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in state["param_groups"]]
    return {"state": {int(k): v for k, v in state["state"].items()}, "param_groups": groups}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model initialisation is the same on every rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """The loss generator's seed for one iteration on one rank."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training stage: model, criterion, optimizer, schedule, data, checkpoints, logs and validation."""

    def __init__(self, config: TrainConfig, ctx: DistContext | None = None) -> None:
        self.config = config
        self.ctx = ctx or DistContext()
        self.output_dir = Path(config.train.output_dir)
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        seed_everything(config.train.seed)
        self.model = build_model(config, log=self.log).to(self.ctx.device).train()
        self.num_classes = self.model.config.num_classes
        self.criterion = MaskClassificationLoss(self.num_classes, config.loss)
        self.weights = loss_weights(config.loss, num_aux=self.model.config.decoder.num_decoder_layers)
        self.optimizer = build_optimizer(self.model, config.solver)
        self.scheduler = build_scheduler(self.optimizer, config.solver)
        self.amp = config.solver.amp and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ddp: nn.Module = wrap_ddp(self.model, self.ctx) if self.ctx.distributed else self.model
        self.dataset, self.anomaly_mix = build_training_data(config)
        self.iteration = 0  # iterations completed
        self.generator = torch.Generator(device=self.ctx.device)
        self._writer: Any = None

    # -- logging -------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            print(f"[m2a-train {self.config.name}] {message}", flush=True)

    def _tensorboard(self) -> Any:
        if self._writer is None and self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tb"))
        return self._writer

    def _record(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        step = record["iteration"]
        for key, value in record.items():
            if key != "iteration" and isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(key, value, step)
        writer.flush()

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _gather_rng(self) -> list[dict[str, Any]]:
        state = _rng_state()
        if not self.ctx.distributed:
            return [state]
        gathered: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def save(self, name: str) -> Path:
        """Write a resumable checkpoint (rank 0) and point `last_checkpoint` at it."""
        rng = self._gather_rng()
        path = self.output_dir / name
        if self.ctx.is_main:
            train_state = {
                "format_version": TRAIN_STATE_FORMAT,
                "iteration": self.iteration,
                "world_size": self.ctx.world_size,
                "optimizer": _plain_optimizer_state(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
            }
            extra = {"stage": self.config.name, "train_config": self.config.to_dict(), "train_state": train_state}
            save_checkpoint(self.model, path, class_names=class_names(self.model.config.num_classes), extra=extra)
            (self.output_dir / LAST_CHECKPOINT).write_text(name + "\n")
            self._prune()
        _barrier(self.ctx)
        return path

    def _prune(self) -> None:
        keep = self.config.train.keep_checkpoints
        if keep <= 0:
            return
        periodic = sorted(self.output_dir.glob("model_[0-9]*.pt"))
        for old in periodic[:-keep]:
            old.unlink(missing_ok=True)

    def resume(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG state and iteration from a checkpoint of ours."""
        obj = torch.load(path, map_location="cpu", weights_only=True)
        state = obj.get("extra", {}).get("train_state") if isinstance(obj, dict) else None
        if state is None:
            raise CheckpointError(f"{path} holds no training state (not a periodic checkpoint of m2a-train)")
        if state.get("format_version") != TRAIN_STATE_FORMAT:
            raise CheckpointError(f"{path}: training state version {state.get('format_version')}, expected 1")
        load_checkpoint(self.model, path)
        self.optimizer.load_state_dict(_optimizer_state_from_plain(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            _set_rng_state(rng[self.ctx.rank])
        else:
            self.log(
                f"checkpoint written by {len(rng)} ranks, running on {self.ctx.world_size}: RNG state not restored"
            )
        self.iteration = int(state["iteration"])
        self.log(f"resumed from {path} at iteration {self.iteration}")

    # -- data ----------------------------------------------------------------------------------------------
    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = TrainingSamples(self.dataset, self.config.augment, self.anomaly_mix, self.config.train.seed)
        sampler = StreamBatchSampler(
            self.config.solver.batch_size,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            start=self.iteration,
            stop=self.config.solver.max_iter,
        )
        workers = self.config.data.num_workers
        loader = DataLoader(
            samples,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_Collate(self.model.config.pixel_mean),
            pin_memory=self.ctx.device.type == "cuda",
            worker_init_fn=worker_init if workers > 0 else None,
            persistent_workers=False,
            multiprocessing_context=worker_start_method() if workers > 0 else None,
        )
        return iter(loader)

    # -- one step ------------------------------------------------------------------------------------------
    def step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Forward, losses, backward, clip, optimizer and schedule step; returns the rank-averaged losses."""
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        padded = padded_size(int(labels.shape[-2]), int(labels.shape[-1]), self.model.config.size_divisibility)
        targets = semantic_targets(labels, self.num_classes, padded)
        self.generator.manual_seed(iteration_seed(self.config.train.seed, self.iteration, self.ctx.rank))
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with autocast:
            outputs = self.ddp(images)
        losses = self.criterion(outputs, targets, labels, generator=self.generator)
        total = weighted_total(losses, self.weights)
        if not torch.isfinite(total):
            raise FloatingPointError(f"iteration {self.iteration}: loss is {total.item()} ({_short(losses)})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_full_model(self.optimizer, self.config.solver.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        logged = {"loss/total": total.detach(), **{f"loss/{k}": v.detach() for k, v in losses.items()}}
        if grad_norm is not None:
            logged["grad_norm"] = grad_norm.detach().float()
        return self._reduce(logged)

    def _reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        keys = sorted(values)
        stacked = torch.stack([values[k].float().reshape(()) for k in keys])
        if self.ctx.distributed:
            dist.all_reduce(stacked)
            stacked /= self.ctx.world_size
        return dict(zip(keys, stacked.tolist()))

    # -- validation ----------------------------------------------------------------------------------------
    def run_validation(self) -> dict[str, float]:
        """Validate on rank 0 (the others wait); results are logged and returned."""
        v = self.config.validation
        results: dict[str, float] = {}
        if (v.semantic is not None or v.anomaly is not None) and self.ctx.is_main:
            start = time.perf_counter()
            results = validate(self.model, v.semantic, v.anomaly, self.num_classes)
            self.log(
                f"validation at {self.iteration}: "
                + ", ".join(f"{k} {val:.4f}" for k, val in results.items())
                + f" ({time.perf_counter() - start:.0f} s)"
            )
            self._record({"iteration": self.iteration, **{f"val/{k}": val for k, val in results.items()}})
        _barrier(self.ctx)
        return results

    # -- the loop ------------------------------------------------------------------------------------------
    def _check_parameters_in_sync(self) -> None:
        if not self.ctx.distributed:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters() if p.requires_grad]).sum()
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"ranks hold different parameters (checksums {low.item()} .. {high.item()})")

    def train(self) -> Path:
        """Run from `self.iteration` to solver.max_iter; returns the path of model_final.pt."""
        cfg = self.config
        max_iter = cfg.solver.max_iter
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log(
            f"{self.ctx.world_size} process(es) on {self.ctx.device}, batch {cfg.solver.batch_size}, "
            f"iterations {self.iteration}..{max_iter}, AMP {'on' if self.amp else 'off'}, "
            f"{sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} trainable parameters"
        )
        if cfg.solver.amp and not self.amp:
            self.log("solver.amp is set but the device is not CUDA: training in float32")
        progress = _progress(self.ctx.is_main, self.iteration, max_iter, cfg.name)
        start, step_start = time.perf_counter(), time.perf_counter()
        data_time = 0.0
        first = self.iteration
        for images, labels in self._loader():
            data_time += time.perf_counter() - step_start
            losses = self.step(images, labels)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{losses['loss/total']:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            it = self.iteration
            if it % cfg.train.log_period == 0 or it == max_iter:
                elapsed = time.perf_counter() - start
                self._record(
                    {
                        "iteration": it,
                        **losses,
                        "lr": self.scheduler.get_last_lr()[0],
                        "time/iter_s": elapsed / max(1, it - first),
                        "time/data_s": data_time / max(1, it - first),
                    }
                )
            if it % cfg.train.checkpoint_period == 0 and it < max_iter:
                self.save(f"model_{it:07d}.pt")
            if cfg.train.eval_period > 0 and it % cfg.train.eval_period == 0 and it < max_iter:
                self.run_validation()
            step_start = time.perf_counter()
        if progress is not None:
            progress.close()
        self._check_parameters_in_sync()
        self.log(f"trained {self.iteration - first} iterations in {time.perf_counter() - start:.1f} s")
        final = self.output_dir / FINAL_MODEL
        if self.ctx.is_main:
            extra = {"stage": cfg.name, "train_config": cfg.to_dict(), "iteration": self.iteration}
            save_checkpoint(self.model, final, class_names=class_names(self.model.config.num_classes), extra=extra)
        _barrier(self.ctx)
        self.run_validation()
        if self._writer is not None:
            self._writer.close()
        return final


class _Collate:
    """Picklable collate with the model's pixel mean as the image padding value."""

    def __init__(self, pad_value: tuple[float, float, float]) -> None:
        self.pad_value = tuple(pad_value)

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(samples, self.pad_value)


def _progress(enabled: bool, initial: int, total: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="it", dynamic_ncols=True, mininterval=1.0)


def _short(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {v.item():.3g}" for k, v in sorted(losses.items()) if "_aux" not in k)


# ----------------------------------------------------------------------------------------------------------
# Running stages


def find_resume_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint `last_checkpoint` names in output_dir, if any."""
    pointer = output_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = output_dir / pointer.read_text().strip()
    if not path.is_file():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def run_stage(config: TrainConfig, ctx: DistContext, resume: bool | str = False) -> Path:
    """Train one stage (resuming if asked) and return its final model."""
    output_dir = Path(config.train.output_dir)
    final = output_dir / FINAL_MODEL
    if resume and final.is_file() and not isinstance(resume, str):
        if ctx.is_main:
            print(f"[m2a-train {config.name}] {final} exists: stage already finished", flush=True)
        return final
    checkpoint: Path | None = None
    if isinstance(resume, str):
        checkpoint = Path(resume)
    elif resume:
        checkpoint = find_resume_checkpoint(output_dir)
    elif (output_dir / LAST_CHECKPOINT).exists() or final.exists():
        raise ConfigError(f"{output_dir} already holds a run: pass --resume, or choose another train.output_dir")
    trainer = Trainer(config, ctx)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    return trainer.train()


def _train_command(args: argparse.Namespace) -> int:
    stages = load_stages(args.config, args.overrides)
    if args.stage is not None:
        names = [s.name for s in stages]
        if args.stage not in names:
            raise ConfigError(f"--stage {args.stage!r}: {args.config} has stages {names}")
        stages = [s for s in stages if s.name == args.stage]
    if isinstance(args.resume, str) and len(stages) > 1:
        raise ConfigError("--resume CHECKPOINT needs a single stage: add --stage NAME")
    ctx = init_distributed(stages[0].train.device)
    try:
        for config in stages:
            final = run_stage(config, ctx, args.resume)
            if ctx.is_main:
                print(f"[m2a-train {config.name}] final model: {final}", flush=True)
    finally:
        if ctx.distributed:
            dist.destroy_process_group()
    return 0


def _prepare_coco_command(args: argparse.Namespace) -> int:
    from .data.coco_outliers import prepare_coco

    stats = prepare_coco(args.coco_root, args.out, split=args.split, min_size=args.min_size, limit=args.limit)
    print(f"{stats.summary()}; wrote {Path(args.out) / 'ood_annotations'} and {Path(args.out) / 'images'}")
    return 0


def _show_config_command(args: argparse.Namespace) -> int:
    import yaml

    for stage in load_stages(args.config, args.overrides):
        print(yaml.safe_dump({stage.name: stage.to_dict()}, sort_keys=False), end="")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="m2a-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    coco = sub.add_parser("prepare-coco", help="write COCO outlier masks (254) and images for Anomaly Mix")
    coco.add_argument("--coco-root", required=True, help="COCO folder with annotations/ and train2017/")
    coco.add_argument("--out", required=True, help="output folder (ood_annotations/, images/)")
    coco.add_argument("--split", default="train2017")
    coco.add_argument("--min-size", type=int, default=480, help="minimum image height and width")
    coco.add_argument("--limit", type=int, default=None, help="stop after this many kept images")
    coco.set_defaults(func=_prepare_coco_command)

    train = sub.add_parser("train", help="train the stages of a config file")
    train.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="continue from each stage's last checkpoint (finished stages are skipped), or from CHECKPOINT",
    )
    train.add_argument("--stage", default=None, help="run only this stage of a multi-stage config")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.max_iter=100")
    train.set_defaults(func=_train_command)

    show = sub.add_parser("show-config", help="print the resolved configuration of every stage")
    show.add_argument("--config", required=True)
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.set_defaults(func=_show_config_command)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"m2a-train: error: {e}", file=sys.stderr)
        return 2


__all__ = [
    "DistContext",
    "Trainer",
    "build_model",
    "build_training_data",
    "find_resume_checkpoint",
    "init_distributed",
    "iteration_seed",
    "main",
    "run_stage",
    "seed_everything",
]

if __name__ == "__main__":
    sys.exit(main())
