"""Lift-splat BEV pooling: sum frustum point features into their BEV cells, differentiable.

``bev_pool(features, geometry)`` equals ``bev_pool_reference`` (``index_add_``) bit for bit, forward
and backward: the fast path sorts the points by cell once per geometry (stable, so a cell's points
keep input order) and reduces each run of equal cells ("interval") in one pass with a float
accumulator of the features' dtype, adding in input order as ``index_add_`` does; no atomics. The
backward pass gathers the output gradient of each point's cell. CPU kernels are numba
(``njit(parallel=True, cache=True)``), CUDA tensors go to numba.cuda kernels (zero-copy through
``__cuda_array_interface__``), which also run under ``NUMBA_ENABLE_CUDASIM=1``.

The geometry (which cell each point falls in) changes only with the camera calibration and the
frustum, so ``BEVPoolGeometry`` is computed once and reused across calls and feature tensors.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from numba import config as numba_config
from numba import cuda, njit, prange


@dataclass(frozen=True)
class BEVPoolGeometry:
    """Points grouped by BEV cell; all tensors on one device, int64.

    point_cells: [P] linear cell b * H * W + y * W + x of each point, -1 for a dropped point.
    order: [K] indices of the K kept points sorted by cell, input order within a cell.
    interval_starts, interval_lengths: [I] the run of ``order`` that each non-empty cell owns.
    interval_cells: [I] linear cell of each run.
    """

    point_cells: torch.Tensor
    order: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor
    interval_cells: torch.Tensor
    batch_size: int
    grid_hw: Tuple[int, int]

    @property
    def num_points(self) -> int:
        return int(self.point_cells.shape[0])

    def to(self, device) -> "BEVPoolGeometry":
        return BEVPoolGeometry(self.point_cells.to(device), self.order.to(device),
                               self.interval_starts.to(device), self.interval_lengths.to(device),
                               self.interval_cells.to(device), self.batch_size, self.grid_hw)


def _linear_cells(coords: torch.Tensor, batch_size: int, grid_hw: Tuple[int, int]) -> torch.Tensor:
    H, W = grid_hw
    coords = coords.long()
    b, y, x = coords[:, 0], coords[:, 1], coords[:, 2]
    valid = (b >= 0) & (b < batch_size) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    cells = (b * H + y) * W + x
    return torch.where(valid, cells, torch.full_like(cells, -1))


def bev_pool_geometry(coords: torch.Tensor, batch_size: int, grid_hw: Tuple[int, int]) -> BEVPoolGeometry:
    """Precompute the cell grouping for bev_pool.

    coords: int[P, 3] (batch, y, x) BEV cell of each frustum point; points outside
        [0, batch_size) x [0, H) x [0, W) are dropped (contribute nothing, get zero gradient).
    grid_hw: (H, W) cells of the BEV grid.
    """
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [P, 3] (batch, y, x), got {tuple(coords.shape)}")
    point_cells = _linear_cells(coords, batch_size, grid_hw)
    kept = torch.nonzero(point_cells >= 0).squeeze(1)
    # Stable sort: within a cell the points stay in input order, which makes the interval sums add
    # in the same order as index_add_ (bit-identical results).
    sorted_cells, perm = torch.sort(point_cells[kept], stable=True)
    order = kept[perm]
    cells, lengths = torch.unique_consecutive(sorted_cells, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    return BEVPoolGeometry(point_cells, order, starts, lengths, cells, int(batch_size),
                           (int(grid_hw[0]), int(grid_hw[1])))


def bev_pool_reference(features: torch.Tensor, coords: torch.Tensor, batch_size: int,
                       grid_hw: Tuple[int, int]) -> torch.Tensor:
    """index_add_ reference: float[B, C, H, W]; features: float[P, C]; coords: int[P, 3] (batch, y, x)."""
    H, W = grid_hw
    P, C = features.shape
    cells = _linear_cells(coords.to(features.device), batch_size, grid_hw)
    keep = cells >= 0
    flat = features.new_zeros(batch_size * H * W, C).index_add(0, cells[keep], features[keep])
    return flat.view(batch_size, H, W, C).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# numba CPU kernels
# ----------------------------------------------------------------------------------------------
# The kernels work on channel-last cell rows out[cell, c] (cell = b * H * W + y * W + x): a point's
# C features and its cell's C outputs are contiguous. The autograd function converts to and from
# [B, C, H, W] with one transpose of the (small) BEV map, cheaper than C strided accesses per point.
@njit(parallel=True, cache=True)
def _forward_cpu(feats, order, starts, lengths, cells, out):
    """out: [B * H * W, C], zero on entry; one write per (non-empty cell, channel)."""
    C = feats.shape[1]
    n_int = starts.shape[0]
    # Chunks of intervals per task so that the accumulator is allocated once per chunk.
    n_chunks = min(n_int, 256)
    for t in prange(n_chunks):
        acc = np.empty(C, feats.dtype)
        for j in range(t * n_int // n_chunks, (t + 1) * n_int // n_chunks):
            acc[:] = 0
            for k in range(starts[j], starts[j] + lengths[j]):
                p = order[k]
                for c in range(C):
                    acc[c] += feats[p, c]
            cell = cells[j]
            for c in range(C):
                out[cell, c] = acc[c]


@njit(parallel=True, cache=True)
def _backward_cpu(grad_out, point_cells, grad_feats):
    """grad_out: [B * H * W, C]; grad_feats[p] = grad_out[cell of p] (zero if p was dropped)."""
    C = grad_feats.shape[1]
    for p in prange(point_cells.shape[0]):
        cell = point_cells[p]
        if cell < 0:
            for c in range(C):
                grad_feats[p, c] = 0
        else:
            for c in range(C):
                grad_feats[p, c] = grad_out[cell, c]


# ----------------------------------------------------------------------------------------------
# numba.cuda kernels (module-level ``cuda`` so that the simulator can swap it)
# ----------------------------------------------------------------------------------------------
# Threads per block. The simulator runs each CUDA thread as a Python thread: small blocks keep it fast.
_TPB = 32 if numba_config.ENABLE_CUDASIM else 256


@functools.lru_cache(maxsize=None)
def _cuda_kernels():
    @cuda.jit
    def forward(feats, order, starts, lengths, cells, out):
        # One thread per (interval, channel), as BEVFusion's bev_pool kernel; neighbouring threads
        # read and write neighbouring channels.
        t = cuda.grid(1)
        C = feats.shape[1]
        if t < starts.shape[0] * C:
            j = t // C
            c = t - j * C
            cell = cells[j]
            # out is zero on entry: a zero of the features' dtype (a literal 0 would promote the
            # float32 sum to float64 and break bit-equality with index_add_).
            acc = out[cell, c]
            for k in range(starts[j], starts[j] + lengths[j]):
                acc += feats[order[k], c]
            out[cell, c] = acc

    @cuda.jit
    def backward(grad_out, point_cells, grad_feats):
        t = cuda.grid(1)
        C = grad_feats.shape[1]
        if t < point_cells.shape[0] * C:
            p = t // C
            c = t - p * C
            cell = point_cells[p]
            if cell < 0:
                grad_feats[p, c] = 0
            else:
                grad_feats[p, c] = grad_out[cell, c]

    return forward, backward


def _blocks(n: int) -> int:
    return max(1, (n + _TPB - 1) // _TPB)


def bev_pool_forward_cuda(feats, order, starts, lengths, cells, out, stream=0) -> None:
    """numba.cuda forward on device arrays (see _forward_cpu); out: [B * H * W, C], zero on entry."""
    n = starts.shape[0] * feats.shape[1]
    if n and feats.shape[0]:
        _cuda_kernels()[0][_blocks(n), _TPB, stream](feats, order, starts, lengths, cells, out)


def bev_pool_backward_cuda(grad_out, point_cells, grad_feats, stream=0) -> None:
    """numba.cuda backward on device arrays (see _backward_cpu); grad_out: [B * H * W, C]."""
    n = grad_feats.shape[0] * grad_feats.shape[1]
    if n:
        _cuda_kernels()[1][_blocks(n), _TPB, stream](grad_out, point_cells, grad_feats)


def _dev(t: torch.Tensor):
    # detach: torch refuses __cuda_array_interface__ on a tensor that requires grad (the features do);
    # the view shares memory, so kernels still write into the caller's tensor.
    return cuda.as_cuda_array(t.detach().contiguous())


class _BEVPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, geom: BEVPoolGeometry) -> torch.Tensor:
        B, (H, W) = geom.batch_size, geom.grid_hw
        P, C = features.shape
        features = features.contiguous()
        rows = features.new_zeros(B * H * W, C)
        ctx.geom = geom
        if rows.numel() and geom.interval_starts.numel():
            if features.is_cuda:
                with torch.cuda.device(features.device):
                    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
                    bev_pool_forward_cuda(_dev(features), _dev(geom.order), _dev(geom.interval_starts),
                                          _dev(geom.interval_lengths), _dev(geom.interval_cells), _dev(rows),
                                          stream=stream)
            else:
                _forward_cpu(features.detach().numpy(), geom.order.numpy(), geom.interval_starts.numpy(),
                             geom.interval_lengths.numpy(), geom.interval_cells.numpy(), rows.numpy())
        return rows.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        geom = ctx.geom
        B, C, H, W = grad_out.shape
        rows = grad_out.permute(0, 2, 3, 1).contiguous().view(B * H * W, C)
        grad_feats = grad_out.new_empty(geom.num_points, C)
        if grad_feats.numel() == 0:
            return grad_feats, None
        if grad_out.is_cuda:
            with torch.cuda.device(grad_out.device):
                stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
                bev_pool_backward_cuda(_dev(rows), _dev(geom.point_cells), _dev(grad_feats), stream=stream)
        else:
            _backward_cpu(rows.numpy(), geom.point_cells.numpy(), grad_feats.numpy())
        return grad_feats, None


def bev_pool(features: torch.Tensor, geometry: BEVPoolGeometry) -> torch.Tensor:
    """Sum point features into BEV cells: float[B, C, H, W], differentiable in features.

    features: float[P, C] one feature vector per frustum point (same P and order as the coords
        that built ``geometry``; same device as the geometry's tensors).
    geometry: from bev_pool_geometry(coords [P, 3] (batch, y, x), B, (H, W)).
    Empty cells are zero.
    """
    if features.dim() != 2 or features.shape[0] != geometry.num_points:
        raise ValueError(f"features must be [P={geometry.num_points}, C], got {tuple(features.shape)}")
    return _BEVPoolFunction.apply(features, geometry)
