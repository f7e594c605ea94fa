"""Small reusable layers: frozen batch norm, conv+norm+activation, sine position encoding, MLP."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine (all four are buffers, so they never train).

    Same buffer names as detectron2's FrozenBatchNorm2d, so `*.norm.{weight,bias,running_mean,running_var}`
    load directly. `fold_into` lets a preceding conv absorb it (one pass over the activations instead of two).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel (scale, shift) such that norm(x) = x * scale + shift; each (num_features,)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def fold_into(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """Conv (weight, bias) whose output equals norm(conv(x)); weight (C_out, C_in, kh, kw)."""
        scale, shift = self.scale_and_shift()
        folded_bias = shift if bias is None else bias * scale + shift
        return weight * scale.view(-1, 1, 1, 1).to(weight.dtype), folded_bias.to(weight.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Checkpoints made with ordinary BatchNorm carry this counter; frozen BN has no use for it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2dNorm(nn.Conv2d):
    """Conv2d followed by an optional norm and activation, with detectron2's names (`weight`, `norm.*`).

    A frozen batch norm is folded into the convolution on the fly, which is exact and saves a full pass
    over the activations (the dominant cost of the backbone's norms on a CPU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d):
            weight, bias = self.norm.fold_into(self.weight, self.bias)
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        else:
            x = super().forward(x)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """detectron2's 'c2_xavier_fill': Caffe2 XavierFill (kaiming-uniform with a=1), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def sine_position_encoding(
    height: int,
    width: int,
    *,
    num_pos_feats: int,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """DETR's normalised 2-D sine encoding without a padding mask (Mask2Former never masks padding).

    Returns (1, 2 * num_pos_feats, height, width): the y half first, then x; within each half the features
    alternate sin/cos of the same frequency. Positions are 1..H (and 1..W) divided by H (W), times `scale`.
    """
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + 1e-6) * scale  # (H,)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + 1e-6) * scale  # (W,)
    exponent = 2 * torch.div(torch.arange(num_pos_feats, device=device), 2, rounding_mode="floor") / num_pos_feats
    dim_t = temperature**exponent  # (F,): pairs of equal frequencies
    pos_y = y[:, None] / dim_t  # (H, F)
    pos_x = x[:, None] / dim_t  # (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # (H, F)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # (W, F)
    pos = torch.cat(
        (
            pos_y[:, None, :].expand(height, width, num_pos_feats),
            pos_x[None, :, :].expand(height, width, num_pos_feats),
        ),
        dim=2,
    )  # (H, W, 2F)
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype)


class MLP(nn.Module):
    """Stack of Linear layers with ReLU between them (none after the last); keys `layers.{i}.*`."""

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
