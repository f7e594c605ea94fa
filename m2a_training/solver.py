"""Optimizer, learning-rate schedule and gradient clipping of the release (METHOD.md 4.2).

AdamW over the trainable parameters with weight decay 0.05, except normalisation layers (`weight_decay_norm`,
0) and `nn.Embedding` weights (`weight_decay_embed`, 0: the decoder's query_feat, query_embed and level_embed);
the pixel decoder's level_embed is a plain Parameter and keeps the decay, as in the release. Poly schedule
lr = base * (1 - it / max_iter) ** 0.9 without warm-up, stepped after every iteration. Gradients are clipped to
a total L2 norm of 0.01 over the whole model ("full_model" clipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class SolverConfig:
    """Optimisation settings; defaults are stage 1 of the release (anomaly_train.yaml)."""

    base_lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_lr_multiplier: float = 0.1  # only matters when the backbone is trained
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    poly_power: float = 0.9
    clip_norm: float = 0.01  # total L2 norm over the model; 0 disables
    max_iter: int = 90_000
    batch_size: int = 16  # global (all ranks together)
    amp: bool = True  # fp16 autocast + gradient scaling on CUDA; ignored on the CPU

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"solver.base_lr must be > 0, got {self.base_lr}")
        for name in ("weight_decay", "weight_decay_norm", "weight_decay_embed", "clip_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"solver.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ValueError(f"solver.max_iter and batch_size must be >= 1, got {self.max_iter}, {self.batch_size}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"solver.betas must be two values in [0, 1), got {self.betas}")


def param_groups(model: nn.Module, config: SolverConfig) -> list[dict]:
    """Trainable parameters grouped by (lr, weight decay), detectron2's per-parameter rules; names in "names"."""
    groups: dict[tuple[float, float], dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NORM_TYPES):
                decay = config.weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = config.weight_decay_embed
            else:
                decay = config.weight_decay
            full_name = f"{module_name}.{name}" if module_name else name
            lr = config.base_lr
            if full_name.startswith(("backbone.", "module.backbone.")):
                lr *= config.backbone_lr_multiplier
            group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay, "names": []})
            group["params"].append(param)
            group["names"].append(full_name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(model: nn.Module, config: SolverConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), lr=config.base_lr, betas=config.betas, eps=config.eps)


class PolyLambda:
    """lr factor (1 - iteration / max_iter) ** power (0 from max_iter on); picklable and plain in state dicts."""

    def __init__(self, max_iter: int, power: float) -> None:
        self.max_iter = max_iter
        self.power = power

    def __call__(self, iteration: int) -> float:
        return max(0.0, 1.0 - iteration / self.max_iter) ** self.power


def build_scheduler(optimizer: torch.optim.Optimizer, config: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The poly schedule (no warm-up), to be stepped once after every iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyLambda(config.max_iter, config.poly_power))


def clip_full_model(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor | None:
    """Clip the gradients of every optimised parameter to a total L2 norm of max_norm; returns the norm before."""
    if max_norm <= 0:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


__all__ = [
    "NORM_TYPES",
    "PolyLambda",
    "SolverConfig",
    "build_optimizer",
    "build_scheduler",
    "clip_full_model",
    "param_groups",
]
