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

from ..common import LayerNorm2d, eager_inference as _eager_inference

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
        """Same contract and math as ``forward`` (equal within float rounding). In eager inference (no
        autograd, no export, no compile) this runs ``forward_inference``; otherwise ``forward_graph``."""
        if _eager_inference(query, feats, self):
            return self.forward_inference(query, feats, present, skip_absent)
        return self.forward_graph(query, feats, present, skip_absent)

    @torch.no_grad()
    def forward_inference(self, query: torch.Tensor, feats: List[Optional[torch.Tensor]], present: torch.Tensor,
                          skip_absent: bool = True) -> torch.Tensor:
        """``forward`` for eager inference (no autograd): the same math with in-place updates, so every
        intermediate map is written once and the window is read from shifted views of the unpadded
        keys/values, one offset at a time (a [B, C, H, W] temporary that stays in cache):

        - one matmul gives the scaled query and every logit term that depends on the query alone (the
          relative-offset terms q . rel of every present modality and the null key's logit):
          ``q . rel = (rel^T W_q / sqrt(d)) x + rel^T b_q / sqrt(d)``, rows ordered (head, token), so its
          output *is* the logits buffer [B, h, T, H, W] before the key terms;
        - per offset, ``q . K(shifted)`` is added in place on the part of the map where the shifted key
          lies inside the grid (outside, the reference's zero padding adds nothing to the logit and
          nothing to the output);
        - softmax over the T tokens; the output accumulated with one in-place multiply-add per offset;
        - the 1x1 convolutions as matmuls with the bias fused (addmm), the residuals added in place, and
          LayerNorm over channels in NCHW with in-place normalisation.
        Absent modalities: left out when absent from every sample (skip_absent), masked per sample otherwise.
        """
        B, C, H, W = query.shape
        h, d, k = self.h, self.d, self.k
        p, kk = k // 2, k * k
        mods = [m for m, f in enumerate(feats) if f is not None and (not skip_absent or bool(present[:, m].any()))]
        T = len(mods) * kk + 1
        s = 1.0 / math.sqrt(d)
        wq, bq = self.q_proj.weight.view(C, C) * s, self.q_proj.bias * s
        rel = torch.cat([self.offset_embed[m].t().reshape(h, d, kk) for m in mods] + [self.null_key.view(h, d, 1)],
                        2)  # [h, d, T]
        w_rel = torch.einsum("hdt,hdc->htc", rel, wq.view(h, d, C)).reshape(h * T, C)
        b_rel = torch.einsum("hdt,hd->ht", rel, bq.view(h, d)).reshape(h * T)
        qa = _matmul_bias(torch.cat([wq, w_rel]), torch.cat([bq, b_rel]), query)  # [B, C + h * T, H, W]
        q5 = qa[:, :C].view(B, h, d, H, W)
        logits = qa[:, C:].view(B, h, T, H, W)
        shifts = [(dy * k + dx, dy - p, dx - p, max(0, p - dy), H - max(0, dy - p), max(0, p - dx), W - max(0, dx - p))
                  for dy in range(k) for dx in range(k)]  # (offset, oy, ox, y0, y1, x0, x1): the valid part
        values = []
        for i, m in enumerate(mods):
            kv = _matmul_bias(self.kv_proj.weight.view(2 * C, C), self.kv_proj.bias + self.modality_embed[m].repeat(2),
                              feats[m]).view(B, 2, h, d, H, W)
            key = kv[:, 0]
            for j, oy, ox, y0, y1, x0, x1 in shifts:
                logits[:, :, i * kk + j, y0:y1, x0:x1] += (
                    q5[..., y0:y1, x0:x1] * key[..., y0 + oy:y1 + oy, x0 + ox:x1 + ox]).sum(2)
            if not bool(present[:, m].all()):
                logits[:, :, i * kk:(i + 1) * kk].masked_fill_(~present[:, m].view(B, 1, 1, 1, 1), float("-inf"))
            values.append(kv[:, 1])
        att = torch.softmax(logits, dim=2)  # [B, h, T, H, W]
        out = att[:, :, -1:] * self.null_value.view(1, h, d, 1, 1)  # [B, h, d, H, W]
        for i, value in enumerate(values):
            for j, oy, ox, y0, y1, x0, x1 in shifts:
                t = i * kk + j
                out[..., y0:y1, x0:x1].addcmul_(att[:, :, t:t + 1, y0:y1, x0:x1],
                                                value[..., y0 + oy:y1 + oy, x0 + ox:x1 + ox])
        x = _matmul_bias(self.out_proj.weight.view(C, C), self.out_proj.bias, out.view(B, C, H, W)).add_(query)
        x = _layer_norm_channels_(self.norm1.norm, x)
        hidden = _matmul_bias(self.ffn[0].weight.view(-1, C), self.ffn[0].bias, x).relu_()
        y = _matmul_bias(self.ffn[2].weight.view(C, -1), self.ffn[2].bias, hidden).add_(x)
        return _layer_norm_channels_(self.norm2.norm, y)

    def forward_graph(self, query: torch.Tensor, feats: List[Optional[torch.Tensor]], present: torch.Tensor,
                      skip_absent: bool = True) -> torch.Tensor:
        """``forward_fast`` for autograd, ONNX export and torch.compile (no in-place updates of views),
        same math as ``forward`` within float rounding, cheaper on CPU than the reference:

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


def _matmul_bias(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as one matmul with the bias fused: weight float[Cout, Cin], bias float[Cout],
    x float[B, Cin, H, W] (contiguous H*W rows) -> float[B, Cout, H, W] (contiguous)."""
    B, Cin, H, W = x.shape
    if B == 1:
        return torch.addmm(bias.view(-1, 1), weight, x.reshape(Cin, H * W)).view(1, -1, H, W)
    return torch.baddbmm(bias.view(1, -1, 1), weight.expand(B, -1, -1), x.reshape(B, Cin, H * W)).view(B, -1, H, W)


def _layer_norm_channels_(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``_layer_norm_channels`` that overwrites x (no autograd): x float[B, C, H, W] -> the normalised map."""
    mean = x.mean(1, keepdim=True)
    x.sub_(mean)
    var = (x * x).mean(1, keepdim=True)
    x.mul_(torch.rsqrt(var + norm.eps))
    return torch.addcmul(norm.bias.view(1, -1, 1, 1), x, norm.weight.view(1, -1, 1, 1))


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

    def _query_offset(self, cached: bool) -> torch.Tensor:
        """pos_proj(pos) + query_embed, float[1, C, H, W]: the same for every input, so in eager inference
        (cached) it is computed once per version of its weights (an optimizer step or a loaded state dict
        changes the version) and reused."""
        if not cached:
            return _conv1x1(self.pos_proj, self.pos) + self.query_embed
        key = tuple((t.data_ptr(), t._version) for t in (self.pos_proj.weight, self.pos_proj.bias, self.query_embed,
                                                          self.pos))
        if getattr(self, "_query_offset_key", None) != key:
            with torch.no_grad():
                self._query_offset_value = _conv1x1(self.pos_proj, self.pos) + self.query_embed
            self._query_offset_key = key
        return self._query_offset_value

    def _forward_fast(self, feats: List[Optional[torch.Tensor]], present: torch.Tensor,
                      mean: torch.Tensor) -> torch.Tensor:
        """The fast path from the masked mean float[B, C, H, W] (see LocalCrossAttention.forward_fast)."""
        query = mean + self._query_offset(_eager_inference(mean, feats, self))
        # data-dependent skipping only in eager mode: an exported graph takes presence as an input
        skip = not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()
        for layer in self.layers:
            query = layer.forward_fast(query, feats, present, skip_absent=skip)
        return query


def build_fusion(cfg) -> CrossAttentionFusion:
    f = cfg.model.fusion
    return CrossAttentionFusion(cfg.model.bev_channels, cfg.bev_shape, 3, f.window, f.heads, f.ffn_ratio, f.layers,
                                (f.dropout_lidar, f.dropout_camera, f.dropout_radar), f.implementation)
