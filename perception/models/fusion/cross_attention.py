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

# "reference": stacked k*k copies (the test reference); "fast": strided window views, same math (forward_fast)
IMPLEMENTATIONS = ("reference", "fast")


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
        The reference implementation (stacked k*k copies of keys and values); ``forward_fast`` computes
        the same within float rounding.
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


    def forward_fast(self, query: torch.Tensor, feats: List[Optional[torch.Tensor]], present: torch.Tensor,
                     skip_absent: bool = True) -> torch.Tensor:
        """Same contract and math as ``forward`` (equal within float rounding), cheaper on CPU:

        - 1x1 convolutions as matmuls ``W[Cout, Cin] @ x[Cin, H*W]`` (oneDNN's 1x1 convolution on these
          narrow maps took a quarter of the reference's time);
        - the k x k window read through k*k shifted views of one zero-padded key/value map, never a
          stacked copy (the reference's torch.stack took another quarter): per offset, the logits are
          one product summed over the head's d channels (contiguous planes) and the values one fused
          multiply-add;
        - LayerNorm over channels computed in place in NCHW, no permuted copies.
        skip_absent: leave out a modality absent from every sample of the batch (its softmax weight is
        exactly 0 either way); off inside an export, where presence is a graph input.
        """
        B, C, H, W = query.shape
        h, d, k = self.h, self.d, self.k
        p, kk, HW = k // 2, k * k, H * W
        q = _conv1x1(self.q_proj, query) / math.sqrt(d)  # [B, C, H, W]
        q5 = q.view(B, h, d, H, W)
        logits, values = [], []
        for m, f in enumerate(feats):
            if f is None:
                continue
            if skip_absent and not bool(present[:, m].any()):
                continue
            kv = _conv1x1(self.kv_proj, f, self.modality_embed[m].repeat(2))  # [B, 2C, H, W]
            kvp = F.pad(kv, (p, p, p, p)).view(B, 2, h, d, H + 2 * p, W + 2 * p)  # zero outside the map
            rel = torch.einsum("bhdn,hdk->bhkn", q5.view(B, h, d, HW),
                               self.offset_embed[m].t().reshape(h, d, kk)).view(B, h, kk, H, W)
            lg = (q5[:, :, :, None, None] * _windows(kvp[:, 0], k, H, W)).sum(2).view(B, h, kk, H, W) + rel
            logits.append(lg.masked_fill(~present[:, m].view(B, 1, 1, 1, 1), float("-inf")))
            values.append(_windows(kvp[:, 1], k, H, W))  # [B, h, d, k, k, H, W]
        null_logit = (q5 * self.null_key.view(1, h, d, 1, 1)).sum(2, keepdim=True)  # [B, h, 1, H, W]
        att = torch.softmax(torch.cat(logits + [null_logit], dim=2), dim=2)  # [B, h, T, H, W]
        out = att[:, :, -1:] * self.null_value.view(1, h, d, 1, 1)  # [B, h, d, H, W]
        for i, v in enumerate(values):
            out = out + (att[:, :, i * kk:(i + 1) * kk].view(B, h, 1, k, k, H, W) * v).sum((3, 4))
        x = _layer_norm_channels(self.norm1.norm, query + _conv1x1(self.out_proj, out.view(B, C, H, W)))
        y = _conv1x1(self.ffn[2], F.relu(_conv1x1(self.ffn[0], x)))
        return _layer_norm_channels(self.norm2.norm, x + y)


def _windows(xp: torch.Tensor, k: int, H: int, W: int) -> torch.Tensor:
    """xp: [..., H + k - 1, W + k - 1] zero-padded map -> [..., k (dy), k (dx), H, W], the k x k
    neighbourhood of every cell (as ``_neighbourhood``). In eager mode a strided view (no copy: the
    product that reads it is the only pass over the window); in an export, k*k slices stacked, which
    every runtime has."""
    if torch.onnx.is_in_onnx_export():
        win = torch.stack([xp[..., dy:dy + H, dx:dx + W] for dy in range(k) for dx in range(k)], dim=-3)
        return win.unflatten(-3, (k, k))
    win = xp.unfold(-2, k, 1).unfold(-2, k, 1)  # [..., H, W, k (dy), k (dx)], a view
    n = win.dim()
    return win.permute(*range(n - 4), n - 2, n - 1, n - 4, n - 3)


def _conv1x1(conv: nn.Conv2d, x: torch.Tensor, extra_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """conv (1x1, bias) of x float[B, Cin, H, W] as one matmul over the contiguous H*W rows; extra_bias:
    float[Cout] added to the conv's bias."""
    B, Cin, H, W = x.shape
    bias = conv.bias if extra_bias is None else conv.bias + extra_bias
    y = torch.matmul(conv.weight.view(-1, Cin), x.reshape(B, Cin, H * W)) + bias.view(1, -1, 1)
    return y.view(B, -1, H, W)


def _layer_norm_channels(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (a LayerNorm over C) applied to every cell of x float[B, C, H, W], in NCHW."""
    mean = x.mean(1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(1, keepdim=True)
    return torch.addcmul(norm.bias.view(1, -1, 1, 1), xc * torch.rsqrt(var + norm.eps), norm.weight.view(1, -1, 1, 1))


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
                 modality_dropout: Sequence[float] = (0.0, 0.0, 0.0), implementation: str = "reference"):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"fusion implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        # same parameters either way, so a checkpoint loads into both
        self.implementation = implementation
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
        if self.implementation == "fast":
            return self._forward_fast(feats, present, total / count.clamp(min=1.0))
        query = total / count.clamp(min=1.0) + self.pos_proj(self.pos) + self.query_embed
        for layer in self.layers:
            query = layer(query, feats, present)
        return query

    def _forward_fast(self, feats: List[Optional[torch.Tensor]], present: torch.Tensor,
                      mean: torch.Tensor) -> torch.Tensor:
        """The fast path from the masked mean float[B, C, H, W] (see LocalCrossAttention.forward_fast)."""
        query = mean + _conv1x1(self.pos_proj, self.pos) + self.query_embed
        # data-dependent skipping only in eager mode: an exported graph takes presence as an input
        skip = not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()
        for layer in self.layers:
            query = layer.forward_fast(query, feats, present, skip_absent=skip)
        return query


def build_fusion(cfg) -> CrossAttentionFusion:
    f = cfg.model.fusion
    return CrossAttentionFusion(cfg.model.bev_channels, cfg.bev_shape, 3, f.window, f.heads, f.ffn_ratio, f.layers,
                                (f.dropout_lidar, f.dropout_camera, f.dropout_radar), f.implementation)
