"""Depth supervision and depth metrics of the lift-splat camera branch.

Targets (``Batch.depth_targets``, built by ``perception.ops.depth_targets`` in the data path) give the
nearest LiDAR depth per feature cell, 0 where no point fell. The loss is the cross-entropy of the
encoder's depth logits against the bin of that depth on the supervised cells only (BEVDepth uses a
binary cross-entropy on one-hot bins; the softmax cross-entropy is the same target for the softmax
distribution the lift actually uses). Cells with no point, or a depth outside the bins, take no loss.

Metrics (monocular-depth standard, Eigen et al. 2014) of the expected depth sum_k p_k d_k against
the LiDAR depth on the same cells: AbsRel = mean |d - d*| / d*, RMSE = sqrt(mean (d - d*)^2),
delta1 = share of cells with max(d / d*, d* / d) < 1.25.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ...ops.depth_targets import depth_bin_index

DEPTH_METRIC_KEYS = ("abs_rel", "rmse", "delta1")


def gather_targets(depth, targets: torch.Tensor) -> torch.Tensor:
    """float[M, fH, fW] the target map of each image in ``depth`` (a CameraDepth).

    targets: float32[B, N, fH, fW] Batch.depth_targets
    """
    return targets[depth.batch_index, depth.camera_index].to(depth.logits.device)


def depth_loss(depth, targets: torch.Tensor, depth_bins: Sequence[float], batch_size: int,
               reduction: str = "sample") -> torch.Tensor:
    """Cross-entropy of the depth logits on supervised cells, a scalar (unweighted).

    depth: CameraDepth (logits float[M, D, fH, fW], batch_index int64[M]); targets: float32[B, N, fH, fW]
    reduction 'sample': mean over the B samples of each sample's mean over its supervised cells (a
    sample without any contributes 0), so DDP's averaged gradient equals one process's with the global
    batch; 'batch': mean over every supervised cell of the batch.
    """
    logits = depth.logits.float()
    k = depth_bin_index(gather_targets(depth, targets), depth_bins)  # int64[M, fH, fW], -1 = ignored
    ce = F.cross_entropy(logits, k.clamp(min=0), reduction="none")  # [M, fH, fW]
    valid = (k >= 0).to(ce.dtype)
    if reduction == "batch":
        return (ce * valid).sum() / valid.sum().clamp(min=1.0)
    per_image_sum = (ce * valid).flatten(1).sum(1)
    per_image_n = valid.flatten(1).sum(1)
    b = depth.batch_index
    s = torch.zeros(batch_size, device=ce.device, dtype=ce.dtype).index_add_(0, b, per_image_sum)
    n = torch.zeros(batch_size, device=ce.device, dtype=ce.dtype).index_add_(0, b, per_image_n)
    return (s / n.clamp(min=1.0)).sum() / batch_size


def expected_depth(logits: torch.Tensor, depth_bins: Sequence[float]) -> torch.Tensor:
    """float[M, fH, fW] expected depth (metres) of the distribution softmax(logits) over the bin centres."""
    lo, hi, step = (float(x) for x in depth_bins)
    D = logits.shape[1]
    centres = lo + (torch.arange(D, device=logits.device, dtype=torch.float32) + 0.5) * step
    return (logits.float().softmax(dim=1) * centres.view(1, D, 1, 1)).sum(dim=1)


class DepthStats:
    """Running sums of the depth metrics per camera slot (``data.cameras`` order), mergeable across
    batches and ranks. Only cells whose LiDAR depth lies inside the depth bins count.

    sums: float64[4, N] (cells, sum of |d - d*| / d*, sum of (d - d*)^2, cells with delta < 1.25),
    on the CPU; one device -> host copy per ``add``.
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(4, 0, dtype=torch.float64)

    def _grow(self, size: int) -> None:
        if size > self.sums.shape[1]:
            self.sums = torch.cat([self.sums, self.sums.new_zeros(4, size - self.sums.shape[1])], dim=1)

    @torch.no_grad()
    def add(self, depth, targets: torch.Tensor, depth_bins: Sequence[float]) -> None:
        """Accumulate one batch: depth a CameraDepth (or None), targets float32[B, N, fH, fW]."""
        if depth is None or targets is None:
            return
        gt = gather_targets(depth, targets).float()
        valid = (depth_bin_index(gt, depth_bins) >= 0).float()
        pred = expected_depth(depth.logits, depth_bins)
        g = gt.clamp(min=1e-6)  # invalid cells are multiplied by 0 below
        ratio = torch.maximum(pred / g, g / pred)
        per_image = torch.stack([valid, (pred - g).abs() / g * valid, (pred - g) ** 2 * valid,
                                 (ratio < 1.25).float() * valid]).flatten(2).sum(2)  # [4, M]
        self._grow(int(targets.shape[1]))
        self.sums.index_add_(1, depth.camera_index.cpu(), per_image.double().cpu())

    def merge(self, other: "DepthStats") -> None:
        self._grow(other.sums.shape[1])
        self.sums[:, :other.sums.shape[1]] += other.sums

    @staticmethod
    def _metrics(n: float, abs_rel: float, sq: float, delta1: float) -> Optional[Dict[str, float]]:
        if n <= 0:
            return None
        return {"abs_rel": abs_rel / n, "rmse": (sq / n) ** 0.5, "delta1": delta1 / n, "cells": int(n)}

    def summary(self, channels: Optional[Sequence[str]] = None) -> Optional[Dict[str, object]]:
        """{'all': metrics, 'per_camera': {channel: metrics or None}} or None when nothing was measured;
        metrics = abs_rel, rmse (metres), delta1, cells."""
        total = self._metrics(*self.sums.sum(dim=1).tolist())
        if total is None:
            return None
        N = self.sums.shape[1]
        names = list(channels) if channels is not None else [str(i) for i in range(N)]
        per = {names[i] if i < len(names) else str(i): self._metrics(*self.sums[:, i].tolist()) for i in range(N)}
        return {"all": total, "per_camera": per}


@torch.no_grad()
def batch_depth_metrics(depth, targets: torch.Tensor, depth_bins: Sequence[float]) -> Optional[Dict[str, float]]:
    """AbsRel, RMSE, delta1 of one batch (for the training log), None without supervised cells."""
    stats = DepthStats()
    stats.add(depth, targets, depth_bins)
    s = stats.summary()
    return None if s is None else {k: s["all"][k] for k in DEPTH_METRIC_KEYS}
