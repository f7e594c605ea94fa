"""ResNet backbone in detectron2's layout, so the authors' `backbone.*` checkpoint keys load unchanged.

Bottleneck blocks with the stride on the 3x3 conv (STRIDE_IN_1X1 False), frozen batch norm everywhere,
all parameters frozen: Mask2Anomaly uses the backbone as a fixed feature extractor (FREEZE_AT 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2dNorm, FrozenBatchNorm2d


class BasicStem(nn.Module):
    """7x7/2 conv + frozen BN + ReLU, then 3x3/2 max-pool: (B,3,H,W) -> (B,C,H/4,W/4)."""

    def __init__(self, *, in_channels: int = 3, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2dNorm(
            in_channels,
            out_channels,
            7,
            stride=2,
            padding=3,
            bias=False,
            norm=FrozenBatchNorm2d(out_channels),
            activation=F.relu,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with a projection shortcut when the channel count changes."""

    def __init__(self, *, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut = (
            Conv2dNorm(in_channels, out_channels, 1, stride=stride, bias=False, norm=FrozenBatchNorm2d(out_channels))
            if in_channels != out_channels
            else None
        )
        self.conv1 = Conv2dNorm(
            in_channels,
            bottleneck_channels,
            1,
            bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
            activation=F.relu,
        )
        self.conv2 = Conv2dNorm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride,
            padding=1,
            bias=False,
            norm=FrozenBatchNorm2d(bottleneck_channels),
            activation=F.relu,
        )
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, bias=False, norm=FrozenBatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet(nn.Module):
    """Frozen ResNet: `forward_features(x)` -> [res2, res3, res4, res5] at strides 4, 8, 16, 32.

    `feature_info[i]` gives each output's channels (`num_chs`), stride (`reduction`) and module name, so the
    pixel decoder is sized from it (timm convention).
    """

    def __init__(
        self,
        *,
        stem_channels: int,
        stage_blocks: tuple[int, ...],
        bottleneck_channels: tuple[int, ...],
        out_channels: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.stem = BasicStem(out_channels=stem_channels)
        self.stage_names = tuple(f"res{i + 2}" for i in range(len(stage_blocks)))
        self.feature_info: list[dict[str, int | str]] = []
        in_ch, reduction = stem_channels, 4
        for index, (name, blocks, mid, out) in enumerate(
            zip(self.stage_names, stage_blocks, bottleneck_channels, out_channels, strict=True)
        ):
            first_stride = 1 if index == 0 else 2
            reduction *= first_stride
            stage = nn.Sequential(
                *(
                    BottleneckBlock(
                        in_channels=in_ch if b == 0 else out,
                        bottleneck_channels=mid,
                        out_channels=out,
                        stride=first_stride if b == 0 else 1,
                    )
                    for b in range(blocks)
                )
            )
            self.add_module(name, stage)
            self.feature_info.append({"num_chs": out, "reduction": reduction, "module": name})
            in_ch = out
        self.freeze()

    def freeze(self) -> None:
        """Stop gradients to every parameter (Mask2Anomaly never updates the backbone)."""
        for p in self.parameters():
            p.requires_grad_(False)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """x (B,3,H,W) normalised -> [(B,C_i,H/s_i,W/s_i) for s_i in 4, 8, 16, 32], NCHW-contiguous.

        The convolutions run channels-last (oneDNN and cuDNN's preferred layout, ~25% faster on a CPU);
        the outputs are handed on in the default layout, which the pixel decoder's token ops prefer.
        """
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x.contiguous())
        return features

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_features(x)
