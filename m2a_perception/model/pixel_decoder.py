"""Multi-scale deformable-attention pixel decoder (Mask2Former's MSDeformAttnPixelDecoder), pure PyTorch.

The deformable attention samples with `grid_sample` instead of the CUDA op, so the decoder runs anywhere
and exports to ONNX (GridSample, opset >= 16). Level order everywhere: index 0 = the coarsest map (res5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2dNorm, c2_xavier_fill, sine_position_encoding


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Attention-weighted bilinear samples of every level's value map.

    value: (B, sum_l H_l*W_l, heads, head_dim), the levels' maps flattened and concatenated.
    spatial_shapes: [(H_l, W_l)] as Python ints (static shapes keep the export free of data-dependent ops).
    sampling_locations: (B, Lq, heads, levels, points, 2), (x, y) in [0, 1] of each level's map.
    attention_weights: (B, Lq, heads, levels, points), already normalised over levels x points.
    Returns (B, Lq, heads * head_dim).
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    value_per_level = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    output = None
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, heads, Dh) -> (B*heads, Dh, H, W)
        value_l = value_per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (B, Lq, heads, P, 2) -> (B*heads, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, num_points, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # sampled (B*heads, Dh, Lq, P) x weights (B*heads, 1, Lq, P), summed over points
        weights_l = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, num_points)
        contribution = (sampled * weights_l).sum(-1)  # (B*heads, Dh, Lq)
        output = contribution if output is None else output + contribution
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def deformable_sampling_embedding_bag(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    reference_pixels: Tensor,
    offsets: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same result as `multi_scale_deformable_attention`, as one fused gather-and-weighted-sum on the CPU.

    Each bilinear sample is 4 weighted rows of the value table; folding the attention weight into the corner
    weights turns the whole attention into one `embedding_bag(mode="sum")` with 4 * levels * points rows per
    query and head, instead of materialising every sample (grid_sample) and reducing afterwards.
    value: (B, sum_l H_l*W_l, heads, head_dim).
    reference_pixels: (B|1, Lq, 1, levels, 1, 2) reference points in pixel units of each level, minus 0.5
        (the sample coordinate convention of grid_sample with align_corners=False).
    offsets: (B, Lq, heads, levels, points, 2) in pixels of each level.
    attention_weights: (B, Lq, heads, levels, points).
    Returns (B, Lq, heads * head_dim).
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = offsets.shape
    device, dtype = value.device, offsets.dtype
    # The table: every level's map with a zero border (1 px before, 2 px after), one block per (batch, head).
    # Clamping a sample to [-1, W] x [-1, H] then keeps all 4 corners inside the table, and a clamped sample
    # lands wholly on the zero border, exactly as grid_sample's zero padding would weigh it.
    padded = [(h + 3, w + 3) for h, w in spatial_shapes]
    padded_starts = [0]
    for ph, pw in padded[:-1]:
        padded_starts.append(padded_starts[-1] + ph * pw)
    rows_per_head = padded_starts[-1] + padded[-1][0] * padded[-1][1]
    table = value.new_zeros(batch, heads, rows_per_head, head_dim)
    start = 0
    for (h, w), (ph, pw), padded_start in zip(spatial_shapes, padded, padded_starts, strict=True):
        level = value[:, start : start + h * w].view(batch, h, w, heads, head_dim).permute(0, 3, 1, 2, 4)
        table[:, :, padded_start : padded_start + ph * pw].view(batch, heads, ph, pw, head_dim)[
            :, :, 1 : h + 1, 1 : w + 1
        ] = level
        start += h * w

    upper = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=dtype, device=device).view(num_levels, 1, 2)
    pixels = (reference_pixels + offsets).clamp_(min=-1.0).minimum(upper)  # (B, Lq, heads, L, P, 2)
    corner = pixels.floor()
    frac = pixels - corner
    # Row of the top-left corner inside one (batch, head) block; exact in float32 (rows_per_head << 2**24).
    strides = torch.tensor([pw for _, pw in padded], dtype=dtype, device=device).view(num_levels, 1)
    firsts = torch.tensor([s + pw + 1 for s, (_, pw) in zip(padded_starts, padded, strict=True)], dtype=dtype)
    top_left = corner[..., 1] * strides + corner[..., 0] + firsts.to(device).view(num_levels, 1)
    block = (torch.arange(batch, device=device).view(batch, 1, 1) * heads + torch.arange(heads, device=device)).view(
        batch, 1, heads, 1, 1
    ) * rows_per_head
    corners = torch.tensor([[0, 1, pw, pw + 1] for _, pw in padded], device=device).view(num_levels, 1, 4)
    indices = (top_left.long() + block).unsqueeze(-1) + corners  # (B, Lq, heads, L, P, 4)
    # Corner weights (y0x0, y0x1, y1x0, y1x1) with the attention weight folded in.
    fx, fy = frac[..., 0], frac[..., 1]
    wy1 = fy * attention_weights
    wy = torch.stack((attention_weights - wy1, wy1), -1)  # (B, Lq, heads, L, P, 2)
    wx = torch.stack((1 - fx, fx), -1)
    weights = (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2)  # (B, Lq, heads, L, P, 4)
    bag = num_levels * num_points * 4
    # Bags ordered (B, Lq, heads): the output rows are already (B, Lq, heads * head_dim).
    out = F.embedding_bag(
        indices.view(-1, bag), table.view(-1, head_dim), per_sample_weights=weights.view(-1, bag), mode="sum"
    )
    return out.view(batch, num_queries, heads * head_dim)


def _use_embedding_bag(x: Tensor) -> bool:
    """The fused CPU path serves eager inference; export, tracing, training and GPUs use grid_sample."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
    )


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), with its parameter names and initialisation."""

    def __init__(self, *, d_model: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.d_model, self.num_heads, self.num_levels, self.num_points = d_model, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring of per-head directions (radius = point index + 1); attention uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)  # (heads, 2)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query (B,Lq,C) with position; reference_points (B|1,Lq,2) (x,y) in [0,1]; value (B,Lv,C) -> (B,Lq,C)."""
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(batch, -1, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        # offsets are in pixels of each level: divide by (W_l, H_l) to move in normalised coordinates
        if _use_embedding_bag(query):
            sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            reference_pixels = reference_points[:, :, None, None, None, :] * sizes[:, None, :] - 0.5
            sampled = deformable_sampling_embedding_bag(value, spatial_shapes, reference_pixels, offsets, weights)
            return self.output_proj(sampled)
        # offsets are in pixels of each level: divide by (W_l, H_l) to move in normalised coordinates
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(multi_scale_deformable_attention(value, spatial_shapes, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention -> add & LayerNorm -> FFN (ReLU) -> add & LayerNorm."""

    def __init__(self, *, d_model: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(
            d_model=d_model, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """src, pos (B, L, C) -> (B, L, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1]: (1, sum_l H_l*W_l, 2) as (x, y).

    Without padding masks every valid ratio is 1, so a token's reference point is the same normalised
    position on all levels.
    """
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    return torch.cat(points, 0).unsqueeze(0)


class PixelDecoder(nn.Module):
    """Backbone features -> (mask_features at 1/4, [multi-scale maps from coarsest to finest]).

    The deformable encoder refines the last `num_feature_levels` backbone maps jointly; an FPN path then adds
    every finer backbone map (res2 for the standard 3 levels) to reach stride 4, where `mask_features` is the
    per-pixel embedding E that every query's mask embedding is dotted with.
    """

    def __init__(
        self,
        *,
        in_channels: list[int],
        conv_dim: int,
        mask_dim: int,
        num_encoder_layers: int,
        num_heads: int,
        num_feature_levels: int,
        num_points: int,
        ffn_dim: int,
        norm_groups: int,
    ) -> None:
        super().__init__()
        if num_feature_levels >= len(in_channels):
            raise ValueError(
                f"num_feature_levels ({num_feature_levels}) must be smaller than the number of backbone maps "
                f"({len(in_channels)}): the finest map feeds the FPN path"
            )
        self.conv_dim = conv_dim
        self.num_feature_levels = num_feature_levels
        self.num_fpn_levels = len(in_channels) - num_feature_levels
        encoder_channels = in_channels[self.num_fpn_levels :][::-1]  # coarsest first: res5, res4, res3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(norm_groups, conv_dim))
            for c in encoder_channels
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(
                d_model=conv_dim,
                ffn_dim=ffn_dim,
                num_heads=num_heads,
                num_levels=num_feature_levels,
                num_points=num_points,
            )
            for _ in range(num_encoder_layers)
        )
        for layer in self.encoder.layers:
            # Deformable DETR's encoder init: xavier for every matrix, then MSDeformAttn's own scheme.
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            layer.self_attn.reset_parameters()
        # FPN path, index i = backbone map i (res2 first); detectron2 names these adapter_{i+1} / layer_{i+1}.
        self.lateral_convs = nn.ModuleList(
            Conv2dNorm(c, conv_dim, 1, bias=False, norm=nn.GroupNorm(norm_groups, conv_dim))
            for c in in_channels[: self.num_fpn_levels]
        )
        self.output_convs = nn.ModuleList(
            Conv2dNorm(
                conv_dim,
                conv_dim,
                3,
                padding=1,
                bias=False,
                norm=nn.GroupNorm(norm_groups, conv_dim),
                activation=F.relu,
            )
            for _ in range(self.num_fpn_levels)
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        for conv in (*self.lateral_convs, *self.output_convs, self.mask_features):
            c2_xavier_fill(conv)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """features: backbone maps, finest first -> mask_features (B,mask_dim,H/4,W/4), maps coarsest first."""
        encoder_inputs = features[self.num_fpn_levels :][::-1]  # res5, res4, res3
        batch = features[0].shape[0]
        srcs, pos_embeds, spatial_shapes = [], [], []
        for level, (proj, feature) in enumerate(zip(self.input_proj, encoder_inputs, strict=True)):
            src = proj(feature)  # (B, C, H_l, W_l)
            height, width = int(src.shape[-2]), int(src.shape[-1])
            spatial_shapes.append((height, width))
            pos = sine_position_encoding(
                height, width, num_pos_feats=self.conv_dim // 2, device=src.device, dtype=src.dtype
            )
            srcs.append(src.flatten(2).transpose(1, 2))  # (B, H_l*W_l, C)
            pos_embeds.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        memory = torch.cat(srcs, 1)  # (B, sum H_l*W_l, C)
        pos = torch.cat(pos_embeds, 1)  # (1, sum H_l*W_l, C)
        reference_points = encoder_reference_points(spatial_shapes, memory.device).to(memory.dtype)
        for layer in self.encoder.layers:
            memory = layer(memory, pos, reference_points, spatial_shapes)
        sizes = [h * w for h, w in spatial_shapes]
        maps = [
            chunk.transpose(1, 2).reshape(batch, self.conv_dim, h, w)
            for chunk, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes, strict=True)
        ]
        finest = maps[-1]
        for index in range(self.num_fpn_levels - 1, -1, -1):  # coarse to fine: ..., res2
            lateral = self.lateral_convs[index](features[index])
            upsampled = F.interpolate(finest, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            finest = self.output_convs[index](lateral + upsampled)
        return self.mask_features(finest), maps
