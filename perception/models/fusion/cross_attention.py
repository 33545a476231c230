"""Cross-attention fusion on the BEV grid, with cost linear in the number of cells.

Every BEV cell holds a query. It attends, with multi-head attention, to the features of every
present modality in a k x k window around the cell (k = ``window``) plus one learned "null" token,
so a query whose sensors are all absent still has something to attend to. Keys carry a learned
embedding per modality and per window offset (relative position); queries start from the masked
mean of the present modalities' features plus an absolute positional encoding of the cell. A
residual, LayerNorm and feed-forward block follow (a Transformer decoder layer restricted to a
local window).

The window is gathered with ``F.unfold`` (k*k copies of each key/value map, O(B * C * k^2 * H * W)
memory per modality) and the attention is a handful of batched tensor ops: compute and memory are
linear in H * W, with no [cells x cells] attention anywhere.

Absent modalities (per sample) are masked out of the softmax. In training, ``modality_dropout``
hides present modalities at random per sample (never all of a sample's present ones), so the model
learns to work with what is there.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d


class LocalCrossAttention(nn.Module):
    """One fusion layer. channels: C of every modality map and of the output."""

    def __init__(self, channels: int, num_modalities: int, window: int = 3, heads: int = 4, ffn_ratio: int = 2):
        super().__init__()
        if channels % heads:
            raise ValueError(f"fusion channels {channels} not divisible by heads {heads}")
        if window % 2 == 0:
            raise ValueError(f"fusion window must be odd, got {window}")
        self.C, self.M, self.k, self.h = channels, num_modalities, window, heads
        self.d = channels // heads
        self.q_proj = nn.Conv2d(channels, channels, 1)
        self.kv_proj = nn.Conv2d(channels, 2 * channels, 1)  # keys and values in one conv
        self.out_proj = nn.Conv2d(channels, channels, 1)
        self.modality_embed = nn.Parameter(torch.zeros(num_modalities, channels))
        self.offset_embed = nn.Parameter(torch.zeros(num_modalities, window * window, channels))
        self.null_key = nn.Parameter(torch.zeros(channels))
        self.null_value = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.modality_embed, std=0.02)
        nn.init.normal_(self.offset_embed, std=0.02)
        self.norm1 = LayerNorm2d(channels)
        self.ffn = nn.Sequential(nn.Conv2d(channels, channels * ffn_ratio, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels * ffn_ratio, channels, 1))
        self.norm2 = LayerNorm2d(channels)

    def forward(self, query: torch.Tensor, feats: List[Optional[torch.Tensor]], present: torch.Tensor) -> torch.Tensor:
        """query: float[B, C, H, W]
        feats: per modality float[B, C, H, W] or None (modality not in the model)
        present: bool[B, M] modality present per sample
        returns float[B, C, H, W]
        """
        B, C, H, W = query.shape
        h, d, k = self.h, self.d, self.k
        kk, HW = k * k, H * W
        q = (self.q_proj(query) / math.sqrt(d)).reshape(B, h, d, 1, HW)
        logits, values = [], []
        for m, f in enumerate(feats):
            if f is None:
                continue
            kv = self.kv_proj(f) + self.modality_embed[m].repeat(2).view(1, 2 * C, 1, 1)
            kv = _neighbourhood(kv, k).view(B, 2, h, d, kk, HW)
            # q . (key + rel) = q . key + q . rel: the relative-offset term never touches the
            # unfolded map
            rel = torch.einsum("bhdn,hdk->bhkn", q[:, :, :, 0], self.offset_embed[m].t().reshape(h, d, kk))
            lg = (q * kv[:, 0]).sum(2) + rel  # [B, h, kk, HW]
            logits.append(lg.masked_fill(~present[:, m].view(B, 1, 1, 1), float("-inf")))
            values.append(kv[:, 1])
        null_logit = (q[:, :, :, 0] * self.null_key.view(1, h, d, 1)).sum(2, keepdim=True)  # [B, h, 1, HW]
        att = torch.softmax(torch.cat(logits + [null_logit], dim=2), dim=2)  # [B, h, T, HW]
        out = att[:, :, -1:].unsqueeze(2) * self.null_value.view(1, h, d, 1, 1)  # [B, h, d, 1, HW]
        out = out.squeeze(3)
        for i, val in enumerate(values):
            a = att[:, :, i * kk:(i + 1) * kk].unsqueeze(2)  # [B, h, 1, kk, HW]
            out = out + (a * val).sum(3)
        x = self.norm1(query + self.out_proj(out.reshape(B, C, H, W)))
        return self.norm2(x + self.ffn(x))


def _neighbourhood(x: torch.Tensor, k: int) -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C, k*k, H*W], the k x k neighbourhood of every cell (zero-padded at
    the borders), offsets in row-major order. Same result as F.unfold, but built from k*k shifted
    slices: unfold's im2col is single-threaded and several times slower on CPU."""
    B, C, H, W = x.shape
    p = k // 2
    xp = F.pad(x, (p, p, p, p))
    return torch.stack([xp[:, :, dy:dy + H, dx:dx + W] for dy in range(k) for dx in range(k)], dim=2).reshape(
        B, C, k * k, H * W)


def sinusoidal_grid(channels: int, H: int, W: int) -> torch.Tensor:
    """Fixed 2D sinusoidal encoding of the cell position, float[channels, H, W] (half x, half y)."""
    c = channels // 4
    freq = torch.exp(torch.arange(c, dtype=torch.float32) * (-math.log(1000.0) / max(c, 1)))
    ys = torch.arange(H, dtype=torch.float32)[:, None] * freq[None]  # [H, c]
    xs = torch.arange(W, dtype=torch.float32)[:, None] * freq[None]  # [W, c]
    enc = torch.zeros(channels, H, W)
    enc[0:c] = torch.sin(xs).T[:, None, :]
    enc[c:2 * c] = torch.cos(xs).T[:, None, :]
    enc[2 * c:3 * c] = torch.sin(ys).T[:, :, None]
    enc[3 * c:4 * c] = torch.cos(ys).T[:, :, None]
    return enc


class CrossAttentionFusion(nn.Module):
    """Fuses per-modality BEV maps (MODALITIES order) into one map float[B, C, H, W].

    channels: C; num_modalities: M (3: lidar, camera, radar); bev_hw: (H, W) of the maps
    modality_dropout: per-modality probability of hiding a present modality in training
    """

    def __init__(self, channels: int, bev_hw: Sequence[int], num_modalities: int = 3, window: int = 3,
                 heads: int = 4, ffn_ratio: int = 2, layers: int = 1,
                 modality_dropout: Sequence[float] = (0.0, 0.0, 0.0)):
        super().__init__()
        self.layers = nn.ModuleList(LocalCrossAttention(channels, num_modalities, window, heads, ffn_ratio)
                                    for _ in range(layers))
        self.register_buffer("pos", sinusoidal_grid(channels, *bev_hw)[None], persistent=False)
        self.pos_proj = nn.Conv2d(channels, channels, 1)
        self.query_embed = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.modality_dropout = list(modality_dropout)

    def drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        """Training-time modality dropout: bool[B, M] -> bool[B, M], never emptier than one present."""
        p = torch.tensor(self.modality_dropout, device=present.device).view(1, -1)
        drop = (torch.rand(present.shape, device=present.device) < p) & present
        kept = present & ~drop
        # a sample that would lose every present modality keeps its first present one
        empty = ~kept.any(dim=1) & present.any(dim=1)
        if empty.any():
            first = torch.argmax(present.int(), dim=1)
            kept[empty, first[empty]] = True
        return kept

    def forward(self, feats: List[Optional[torch.Tensor]], present: torch.Tensor) -> torch.Tensor:
        """feats: per modality float[B, C, H, W] or None; present: bool[B, M]. Returns float[B, C, H, W]."""
        if self.training and any(self.modality_dropout):
            present = self.drop_modalities(present)
        ref = next(f for f in feats if f is not None)
        B, C, H, W = ref.shape
        total = torch.zeros_like(ref)
        count = torch.zeros(B, 1, 1, 1, device=ref.device, dtype=ref.dtype)
        for m, f in enumerate(feats):
            if f is None:
                continue
            w = present[:, m].to(ref.dtype).view(B, 1, 1, 1)
            total = total + f * w
            count = count + w
        query = total / count.clamp(min=1.0) + self.pos_proj(self.pos) + self.query_embed
        for layer in self.layers:
            query = layer(query, feats, present)
        return query


def build_fusion(cfg) -> CrossAttentionFusion:
    f = cfg.model.fusion
    return CrossAttentionFusion(cfg.model.bev_channels, cfg.bev_shape, 3, f.window, f.heads, f.ffn_ratio, f.layers,
                                (f.dropout_lidar, f.dropout_camera, f.dropout_radar))
