"""Transformer decoder with global mask attention (Mask2Anomaly) or masked attention (Mask2Former).

Each layer: cross-attention to one feature level (round robin, coarsest first) -> self-attention -> FFN,
all post-norm. Global mask attention (GMA) runs two independent cross-attentions per layer, one restricted
to each query's predicted foreground and one to its background, sums them and applies ONE residual and
LayerNorm. Masked attention keeps only the foreground branch.

Parameter names follow the authors' `MultiScaleMaskedTransformerDecoder_GMA` (prefix `sem_seg_head.predictor.`
in their checkpoints); the unused `fusion_layer` convs are not built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import MLP, sine_position_encoding


def _project(x: Tensor, attention: nn.MultiheadAttention, part: int) -> Tensor:
    """One of the packed q/k/v input projections of an nn.MultiheadAttention: (B, L, C) -> (B, L, C)."""
    dim = attention.embed_dim
    weight = attention.in_proj_weight[part * dim : (part + 1) * dim]
    bias = attention.in_proj_bias[part * dim : (part + 1) * dim]
    return F.linear(x, weight, bias)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, C) -> (B, heads, L, C/heads)."""
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


# Exported graphs fill blocked attention logits with this finite value instead of -inf: an fp16 engine then never
# sees inf (inf - inf = NaN in a fused softmax), and exp(fill - row max) is exactly 0 in fp32 as in fp16, so the
# result equals the -inf masking of eager mode (every row has an allowed entry, see attention_allowed_masks).
EXPORT_MASK_FILL = -1.0e4


def _finite_masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """SDPA with a boolean mask, written out with a finite fill (for ONNX export; see EXPORT_MASK_FILL).

    q (B, h, Q, d), k and v (B, h, L, d), allowed (B, 1, Q, L) bool -> (B, h, Q, d). The scale goes on q before
    the product, which keeps the logits small in fp16.
    """
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
    scores = scores.masked_fill(~allowed, EXPORT_MASK_FILL)
    return torch.matmul(scores.softmax(dim=-1), v)


def attention_allowed_masks(mask_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Foreground and background attention masks of each query, True = may attend.

    mask_logits: (B, Q, H_l*W_l) at the resolution of the level the next layer reads.
    Foreground: sigmoid >= threshold; background: sigmoid <= threshold. A query whose row would be
    entirely blocked attends everywhere instead (Mask2Former's rule, applied to each mask separately).
    Computed without gradient (the masks are a routing decision, not a learned output).
    Returns two bool tensors (B, Q, H_l*W_l).
    """
    with torch.no_grad():
        probs = mask_logits.sigmoid()
        foreground = probs >= threshold
        background = probs <= threshold
        foreground = foreground | ~foreground.any(-1, keepdim=True)
        background = background | ~background.any(-1, keepdim=True)
    return foreground, background


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other: X <- LN(X + MHA(X + P, X + P, X))."""

    def __init__(self, *, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.self_attn.in_proj_weight)
        nn.init.xavier_uniform_(self.self_attn.out_proj.weight)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """tgt (B, Q, C), query_pos (B|1, Q, C) -> (B, Q, C)."""
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, tgt, need_weights=False)[0])


class CrossAttentionLayer(nn.Module):
    """Global mask attention (two branches) or masked attention (foreground branch only).

    X <- LN(X + A_fg + A_bg), A_* = softmax(M_* + Q_* K_*^T / sqrt(d)) V_* with separate projections per
    branch; queries = X + P_q, keys = F + pos, values = F.
    """

    def __init__(self, *, d_model: int, num_heads: int, global_attention: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.multihead_attn_foreground = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True)
        self.multihead_attn_background = (
            nn.MultiheadAttention(d_model, num_heads, dropout=0.0, batch_first=True) if global_attention else None
        )
        self.norm = nn.LayerNorm(d_model)
        for attention in self.branches():
            nn.init.xavier_uniform_(attention.in_proj_weight)
            nn.init.xavier_uniform_(attention.out_proj.weight)

    def branches(self) -> list[nn.MultiheadAttention]:
        return [m for m in (self.multihead_attn_foreground, self.multihead_attn_background) if m is not None]

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        query_pos: Tensor,
        foreground_allowed: Tensor,
        background_allowed: Tensor,
    ) -> Tensor:
        """tgt (B,Q,C); memory (B,L,C); memory_pos (1,L,C); query_pos (B|1,Q,C); masks (B,Q,L) bool -> (B,Q,C)."""
        query = tgt + query_pos
        key = memory + memory_pos
        update = None
        for attention, allowed in zip(self.branches(), (foreground_allowed, background_allowed), strict=False):
            q = _split_heads(_project(query, attention, 0), self.num_heads)  # (B, h, Q, C/h)
            k = _split_heads(_project(key, attention, 1), self.num_heads)  # (B, h, L, C/h)
            v = _split_heads(_project(memory, attention, 2), self.num_heads)  # (B, h, L, C/h)
            if torch.onnx.is_in_onnx_export():  # no -inf masks in the graph (fp16 engines)
                attended = _finite_masked_attention(q, k, v, allowed[:, None])
            else:
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # (B, h, Q, C/h)
            attended = attended.transpose(1, 2).flatten(2)  # (B, Q, C)
            branch = attention.out_proj(attended)
            update = branch if update is None else update + branch
        return self.norm(tgt + update)


class FFNLayer(nn.Module):
    """X <- LN(X + W2 ReLU(W1 X))."""

    def __init__(self, *, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class TransformerDecoder(nn.Module):
    """Queries -> class logits (B,Q,K+1) and mask logits (B,Q,H/4,W/4), refined over `num_layers` layers.

    Predictions are made num_layers + 1 times (from the learnable queries, then after every layer); each one's
    masks route the next layer's attention. The last is the output, the earlier ones are deep supervision.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        num_feature_levels: int,
        mask_dim: int,
        global_attention: bool,
        mask_threshold: float,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.hidden_dim = hidden_dim
        self.mask_threshold = mask_threshold
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d_model=hidden_dim, num_heads=num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d_model=hidden_dim, num_heads=num_heads, global_attention=global_attention)
            for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d_model=hidden_dim, ffn_dim=ffn_dim) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=mask_dim, num_layers=3)

    def prediction_heads(self, output: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """output (B,Q,C), mask_features (B,D,h,w) -> class logits (B,Q,K+1), mask logits (B,Q,h,w)."""
        decoded = self.decoder_norm(output)
        class_logits = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)  # (B, Q, D)
        mask_logits = torch.einsum("bqd,bdhw->bqhw", mask_embed, mask_features)
        return class_logits, mask_logits

    def forward(
        self, multi_scale_features: list[Tensor], mask_features: Tensor, *, with_aux: bool
    ) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
        """multi_scale_features: [(B,C,H_l,W_l)] coarsest first; mask_features (B,D,H/4,W/4).

        Returns final class logits (B,Q,K+1), final mask logits (B,Q,H/4,W/4) and, with `with_aux`, the
        `num_layers` earlier predictions as [{"pred_logits", "pred_masks"}]. Without it, the earlier masks are
        only evaluated at the attention levels' resolutions: bilinear resizing is linear per channel, so
        resize(E . F) = E . resize(F) and the routing masks are the same at a fraction of the cost.
        """
        batch = mask_features.shape[0]
        sizes: list[tuple[int, int]] = []
        memories, memory_positions = [], []
        for level in range(self.num_feature_levels):
            feature = multi_scale_features[level]
            height, width = int(feature.shape[-2]), int(feature.shape[-1])
            sizes.append((height, width))
            pos = sine_position_encoding(
                height, width, num_pos_feats=self.hidden_dim // 2, device=feature.device, dtype=feature.dtype
            )
            memory_positions.append(pos.flatten(2).transpose(1, 2))  # (1, H_l*W_l, C)
            memories.append(feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level].view(1, 1, -1))
        # Mask features resized to each level, for the routing masks of the earlier predictions (see above).
        level_mask_features = None
        if not with_aux:
            level_mask_features = [
                F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in sizes
            ]

        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)
        query_pos = self.query_embed.weight.unsqueeze(0)  # (1, Q, C)
        aux_outputs: list[dict[str, Tensor]] = []

        def routing_masks(output: Tensor, next_level: int) -> tuple[Tensor, Tensor]:
            if level_mask_features is not None:
                _, small = self.prediction_heads(output, level_mask_features[next_level])
            else:
                class_logits, mask_logits = self.prediction_heads(output, mask_features)
                aux_outputs.append({"pred_logits": class_logits, "pred_masks": mask_logits})
                small = F.interpolate(mask_logits, size=sizes[next_level], mode="bilinear", align_corners=False)
            return attention_allowed_masks(small.flatten(2), self.mask_threshold)

        masks = routing_masks(output, 0)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, memories[level], memory_positions[level], query_pos, *masks
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            if i < self.num_layers - 1:
                masks = routing_masks(output, (i + 1) % self.num_feature_levels)
        class_logits, mask_logits = self.prediction_heads(output, mask_features)
        return class_logits, mask_logits, aux_outputs
