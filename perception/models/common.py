"""Small building blocks shared by the encoders, the fusion and the head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bev_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm for BEV and image maps. At inference it is a per-channel affine map, so a change in
    one region of the map (a failed camera) stays local; GroupNorm's statistics over the whole map
    would leak it everywhere. Dense maps give every batch thousands of positions, so its statistics
    are sound even with one sample per device; under DDP the engine converts it to SyncBatchNorm."""
    return nn.BatchNorm2d(channels)


def norm_with_running_stats(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """x normalized by ``bn``'s running statistics, whatever its mode: the fallback of a training batch
    with fewer than 2 values per channel (an absent sensor), where batch statistics do not exist."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def conv_norm_act(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), bev_norm(cout),
                         nn.ReLU(inplace=True))


def eager_inference(query: torch.Tensor, feats, module: nn.Module) -> bool:
    """True when a module may take its inference-only path (in-place updates, cached folded weights,
    channels_last): no autograd graph to build (grad mode off, or nothing that requires grad), not
    inside an ONNX export, a trace or torch.compile. query: the main input; feats: other inputs (None
    entries allowed)."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if not torch.is_grad_enabled():
        return True
    return not (query.requires_grad or any(f is not None and f.requires_grad for f in feats)
                or any(p.requires_grad for p in module.parameters()))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every cell of x: [B, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
