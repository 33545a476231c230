"""Point cloud voxelization: hard (capped) and dynamic, with the semantics of mmcv's ``Voxelization``.

Contract (every implementation in this module, bit for bit):

- ``grid = round((max - min) / voxel_size)`` per axis, computed in float32 and rounded half away
  from zero (C ``round``), as mmcv does.
- A point's index per axis is ``floor((p - min) / voxel_size)`` with the subtraction and the division
  in float32. It is out of range when that index is ``< 0`` or ``>= grid`` on any axis. NaN and
  +-inf coordinates are out of range (mmcv leaves them to undefined float->int conversion; we
  decide the comparison in float, where NaN fails both tests).
- Hard voxelization numbers voxels in order of the first in-range point that falls in them; the
  points of a voxel are stored in input order, all C columns copied, those beyond
  ``max_points_per_voxel`` dropped. Once ``max_voxels`` voxels exist, a point that would open a new
  voxel is dropped while points of existing voxels are still added. Unused rows are zero; the
  outputs are cut to the M voxels that exist.
- Coordinates are int32 ``(z, y, x)``; dynamic voxelization gives ``-1`` rows for points out of range.

Implementations: ``*_reference`` (vectorized numpy, for reading and testing), a numba CPU path
(``njit(parallel=True, cache=True)``) and a numba.cuda path for CUDA tensors (zero-copy through
``__cuda_array_interface__``). ``hard_voxelize``/``dynamic_voxelize`` dispatch on the input's type
and device; outputs follow the input (numpy in, numpy out; a tensor in, tensors on its device out).
Every path is deterministic.

``hard_voxelize_batch`` voxelizes B samples in one call: on the CPU the per-sample sequential pass
runs for the samples in parallel (one numba call), on the GPU one kernel sequence numbers the cells
``b * cells + cell`` (the sample index in the cell id), takes every temporary from the caller's
allocator (torch's caching allocator for tensors: numba's frees synchronize the device) and reads
one number back (the voxel count, to size the outputs). Its result is exactly the per-sample
results stacked in sample order, each with its own numbering and max_voxels cap, coordinates
(b, z, y, x).
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from numba import config as numba_config
from numba import cuda, njit, prange

ArrayLike = Union[np.ndarray, torch.Tensor]

# A dense cell -> voxel table is used up to this many cells (4 MiB of int32 per table: the pillar
# grid 512 x 512 is 1 MiB and stays in cache); larger grids (a 0.075 m 3D grid is ~83M cells) use an
# open-addressing hash table sized by the number of points instead.
DENSE_TABLE_MAX_CELLS = 1 << 20
_INT32_MAX = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------------------------
# Grid arithmetic shared by all paths
# ----------------------------------------------------------------------------------------------
def voxel_grid(voxel_size: Sequence[float], point_cloud_range: Sequence[float]):
    """(lo float32[3], vs float32[3], grid int64[3]) for voxel_size (x, y, z) m and range (x0, y0, z0, x1, y1, z1) m."""
    vs = np.asarray(voxel_size, dtype=np.float32).reshape(-1)
    pcr = np.asarray(point_cloud_range, dtype=np.float32).reshape(-1)
    if vs.shape != (3,) or pcr.shape != (6,):
        raise ValueError("voxel_size needs 3 values (x, y, z) and point_cloud_range 6 (x0, y0, z0, x1, y1, z1)")
    if not np.all(vs > 0):
        raise ValueError(f"voxel_size must be positive, got {vs.tolist()}")
    q = (pcr[3:] - pcr[:3]) / vs  # float32, as mmcv computes it
    # C round(): half away from zero (numpy rounds half to even); q is float32, exact in float64.
    grid = (np.sign(q) * np.floor(np.abs(q.astype(np.float64)) + 0.5)).astype(np.int64)
    if not np.all(grid >= 1):
        raise ValueError(f"empty voxel grid {grid.tolist()} for range {pcr.tolist()} and size {vs.tolist()}")
    if int(np.prod(grid)) >= 2**31:
        raise ValueError(f"voxel grid {grid.tolist()} has 2^31 cells or more")
    return pcr[:3].copy(), vs, grid


def _check_points(points: np.ndarray) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [N, C>=3] (x, y, z, ...), got shape {tuple(points.shape)}")
    if points.dtype != np.float32:
        raise TypeError(f"points must be float32, got {points.dtype}")
    # One memory layout for the kernels (one compiled signature, streaming reads); copies only
    # when the caller passed a strided view.
    return np.ascontiguousarray(points)


# ----------------------------------------------------------------------------------------------
# Reference (vectorized numpy): an independent formulation of the contract, for reading and tests
# ----------------------------------------------------------------------------------------------
def _cell_coords_reference(points: np.ndarray, lo, vs, grid):
    """(valid bool[N], coords int64[N, 3] (x, y, z) indices, meaningful where valid)."""
    q = (points[:, :3] - lo) / vs  # float32 - float32, / float32: float32 arithmetic
    with np.errstate(invalid="ignore"):
        valid = np.all((q >= 0) & (q < grid.astype(np.float32)), axis=1)
    coords = np.zeros((points.shape[0], 3), np.int64)
    coords[valid] = np.floor(q[valid]).astype(np.int64)
    return valid, coords


def dynamic_voxelize_reference(points: np.ndarray, voxel_size, point_cloud_range) -> np.ndarray:
    """coords int32[N, 3] (z, y, x), -1 rows out of range; points: float32[N, C] (x, y, z, ...) m."""
    points = _check_points(np.asarray(points))
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    valid, c = _cell_coords_reference(points, lo, vs, grid)
    out = np.full((points.shape[0], 3), -1, np.int32)
    out[valid] = c[valid][:, ::-1]
    return out


def hard_voxelize_reference(points: np.ndarray, voxel_size, point_cloud_range,
                            max_points_per_voxel: int, max_voxels: int):
    """(voxels float32[M, P, C], coords int32[M, 3] (z, y, x), num_points int32[M]); points: float32[N, C] (x, y, z, ...) m."""
    points = _check_points(np.asarray(points))
    P, V = _check_caps(max_points_per_voxel, max_voxels)
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    N, C = points.shape
    valid, c = _cell_coords_reference(points, lo, vs, grid)
    idx = np.flatnonzero(valid)
    cell = (c[idx, 2] * grid[1] + c[idx, 1]) * grid[0] + c[idx, 0]
    # Voxel number = rank of the cell's first point in input order.
    cells, first, inverse = np.unique(cell, return_index=True, return_inverse=True)
    rank = np.empty(len(cells), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(cells))
    vox = rank[inverse]
    # Slot = number of earlier points in the same voxel (stable sort keeps input order per voxel).
    order = np.argsort(vox, kind="stable")
    sorted_vox = vox[order]
    group_start = np.searchsorted(sorted_vox, sorted_vox, side="left")
    slot = np.empty(len(vox), np.int64)
    slot[order] = np.arange(len(vox)) - group_start
    keep = (vox < V) & (slot < P)
    M = int(min(len(cells), V))
    voxels = np.zeros((M, P, C), np.float32)
    voxels[vox[keep], slot[keep]] = points[idx[keep]]
    num = np.zeros(M, np.int32)
    np.add.at(num, vox[keep], 1)
    coords = np.empty((M, 3), np.int32)
    first_of_voxel = idx[np.sort(first)[:M]]
    coords[:] = c[first_of_voxel][:, ::-1]
    return voxels, coords, num


def _check_caps(max_points_per_voxel, max_voxels) -> Tuple[int, int]:
    P, V = int(max_points_per_voxel), int(max_voxels)
    if P < 1 or V < 1:
        raise ValueError(f"max_points_per_voxel and max_voxels must be >= 1, got {P}, {V}")
    return P, V


# ----------------------------------------------------------------------------------------------
# numba CPU kernels
# ----------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _cell_ids_cpu(points, lo, vs, grid):
    """int32[N] linear cell id (z * gy + y) * gx + x, -1 out of range (NaN/inf fail the float tests).

    int32 (voxel_grid rejects grids of 2^31 cells or more): half the memory traffic of int64.
    """
    n = points.shape[0]
    ids = np.empty(n, np.int32)
    gx, gy, gz = grid[0], grid[1], grid[2]
    fx, fy, fz = np.float32(gx), np.float32(gy), np.float32(gz)
    lx, ly, lz = lo[0], lo[1], lo[2]
    vx, vy, vz = vs[0], vs[1], vs[2]
    for i in prange(n):
        # float32 - float32 and / float32 stay float32 in numba, as in mmcv's kernel.
        qx = (points[i, 0] - lx) / vx
        qy = (points[i, 1] - ly) / vy
        qz = (points[i, 2] - lz) / vz
        # floor(q) in [0, g) <=> q in [0, g) for integer g; deciding in float avoids the undefined
        # float->int conversion of NaN/inf and truncation equals floor for q >= 0.
        if qx >= 0 and qx < fx and qy >= 0 and qy < fy and qz >= 0 and qz < fz:
            ids[i] = (np.int64(qz) * gy + np.int64(qy)) * gx + np.int64(qx)
        else:
            ids[i] = -1
    return ids


@njit(parallel=True, cache=True)
def _dynamic_cpu(points, lo, vs, grid):
    n = points.shape[0]
    out = np.empty((n, 3), np.int32)
    fx, fy, fz = np.float32(grid[0]), np.float32(grid[1]), np.float32(grid[2])
    lx, ly, lz = lo[0], lo[1], lo[2]
    vx, vy, vz = vs[0], vs[1], vs[2]
    for i in prange(n):
        qx = (points[i, 0] - lx) / vx
        qy = (points[i, 1] - ly) / vy
        qz = (points[i, 2] - lz) / vz
        if qx >= 0 and qx < fx and qy >= 0 and qy < fy and qz >= 0 and qz < fz:
            out[i, 0] = np.int32(qz)
            out[i, 1] = np.int32(qy)
            out[i, 2] = np.int32(qx)
        else:
            out[i, 0] = -1
            out[i, 1] = -1
            out[i, 2] = -1
    return out


@njit(cache=True, inline="always")
def _hash_cell(c, mask):
    # Runs of 8 neighbouring x cells share one 64-byte line of the table (consecutive LiDAR points
    # fall in neighbouring cells), the runs themselves are scattered by a multiplicative mix.
    # Cell ids are < 2^31, so the product stays below 2^63 (no wrap: same value on every path).
    c = np.int64(c)
    r = c >> 3
    r = ((r ^ (r >> 15)) & 0x7FFFFFFF) * 0x2C1B3C6D
    r = r ^ (r >> 29)
    return ((r << 3) | (c & 7)) & mask


@njit(cache=True)
def _assign_dense(ids, table, P, V, dest, voxel_slot, counts):
    """The order-defining sequential pass: voxel number by first occurrence, slot per point.

    table: int32[cells] cell -> voxel, all -1 on entry (left with the opened cells set; the caller
    resets exactly those). dest[i] = voxel * P + slot or -1. Returns M.
    """
    m = 0
    for i in range(ids.shape[0]):
        c = ids[i]
        d = -1
        if c >= 0:
            v = table[c]
            if v < 0 and m < V:
                v = m
                table[c] = m
                voxel_slot[m] = c
                m += 1
            if v >= 0:
                k = counts[v]
                if k < P:
                    counts[v] = k + 1
                    d = v * P + k
        dest[i] = d
    return m


@njit(cache=True)
def _assign_hash(ids, table, mask, P, V, dest, voxel_slot, counts):
    """_assign_dense with an open-addressing (linear probing) table of packed entries
    (cell << 32) | voxel, -1 = empty: one memory access per probe. All -1 on entry."""
    m = 0
    for i in range(ids.shape[0]):
        c = np.int64(ids[i])
        d = -1
        if c >= 0:
            h = _hash_cell(c, mask)
            e = table[h]
            while e != -1 and (e >> 32) != c:
                h = (h + 1) & mask
                e = table[h]
            v = -1
            if e != -1:
                v = e & 0xFFFFFFFF
            elif m < V:
                v = m
                table[h] = (c << 32) | m
                voxel_slot[m] = h
                m += 1
            if v >= 0:
                k = counts[v]
                if k < P:
                    counts[v] = k + 1
                    d = v * P + k
        dest[i] = d
    return m


@njit(parallel=True, cache=True)
def _fill_cpu(points, dest, counts, m, P, voxels):
    """Scatter points to voxels[dest] and zero the unused rows; every output byte written once."""
    C = points.shape[1]
    flat = voxels.reshape(m * P, C)
    for v in prange(m):
        for r in range(v * P + counts[v], (v + 1) * P):
            for k in range(C):
                flat[r, k] = 0
    for i in prange(points.shape[0]):
        d = dest[i]
        if d >= 0:
            for k in range(C):
                flat[d, k] = points[i, k]


@njit(parallel=True, cache=True)
def _coords_dense(table, voxel_slot, m, grid, coords):
    """coords[v] = (z, y, x) of voxel v's cell; resets the table entries that were opened."""
    gx, gy = grid[0], grid[1]
    for v in prange(m):
        c = voxel_slot[v]
        coords[v, 2] = c % gx
        coords[v, 1] = (c // gx) % gy
        coords[v, 0] = c // (gx * gy)
        table[c] = -1


@njit(parallel=True, cache=True)
def _coords_hash(table, voxel_slot, m, grid, coords):
    gx, gy = grid[0], grid[1]
    for v in prange(m):
        h = voxel_slot[v]
        c = table[h] >> 32
        coords[v, 2] = c % gx
        coords[v, 1] = (c // gx) % gy
        coords[v, 0] = c // (gx * gy)
        table[h] = -1


class _TablePool:
    """Cell tables kept between calls: allocating and clearing a large table per call would cost
    more than the voxelization. A call takes a table (all -1), resets the entries it set, returns it.
    Thread-safe: concurrent callers get distinct tables."""

    def __init__(self):
        self._lock = threading.Lock()
        self._free = {}

    def take(self, kind: str, size: int):
        with self._lock:
            lst = self._free.get((kind, size))
            if lst:
                return lst.pop()
        return np.full(size, -1, np.int32 if kind == "dense" else np.int64)

    def give(self, kind: str, size: int, table) -> None:
        with self._lock:
            self._free.setdefault((kind, size), []).append(table)


_POOL = _TablePool()


def _hash_size(n: int, cells: int) -> int:
    # Load factor <= 1/2 for the worst case of every point in its own cell.
    need = 2 * max(1, min(n, cells))
    return 1 << max(10, (need - 1).bit_length())


def hard_voxelize_numba(points: np.ndarray, voxel_size, point_cloud_range,
                        max_points_per_voxel: int, max_voxels: int, out=None):
    """numba CPU path of hard_voxelize on numpy arrays (see the module docstring for the contract).

    out: optional callable (shape, dtype) -> writable numpy array, to place the outputs (e.g. in
    torch-owned memory).
    """
    points = _check_points(np.asarray(points))
    P, V = _check_caps(max_points_per_voxel, max_voxels)
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    alloc = out or (lambda shape, dtype: np.empty(shape, dtype))
    N, C = points.shape
    cells = int(np.prod(grid))
    ids = _cell_ids_cpu(points, lo, vs, grid)
    # dest = voxel * P + slot < min(V, N) * P: int32 unless that bound is 2^31 or more.
    dest = np.empty(N, np.int32 if min(V, N) * P < 2**31 else np.int64)
    voxel_slot = np.empty(min(V, N), np.int64)
    counts = np.zeros(min(V, N), np.int32)
    # A table taken from the pool is given back only after _coords_* has reset the entries this
    # call set; if anything raises in between it is dropped rather than returned dirty.
    if cells <= DENSE_TABLE_MAX_CELLS:
        table = _POOL.take("dense", cells)
        m = _assign_dense(ids, table, P, V, dest, voxel_slot, counts)
        voxels = alloc((m, P, C), np.float32)
        coords = alloc((m, 3), np.int32)
        _coords_dense(table, voxel_slot, m, grid, coords)
        _POOL.give("dense", cells, table)
    else:
        size = _hash_size(N, cells)
        table = _POOL.take("hash", size)
        m = _assign_hash(ids, table, size - 1, P, V, dest, voxel_slot, counts)
        voxels = alloc((m, P, C), np.float32)
        coords = alloc((m, 3), np.int32)
        _coords_hash(table, voxel_slot, m, grid, coords)
        _POOL.give("hash", size, table)
    _fill_cpu(points, dest, counts, m, P, voxels)
    num = alloc((m,), np.int32)
    num[:] = counts[:m]
    return voxels, coords, num


# ----------------------------------------------------------------------------------------------
# Batched hard voxelization (numba CPU): one call for B samples, each with its own voxel numbering and
# max_voxels cap, outputs concatenated in sample order (= per-sample results stacked)
# ----------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _assign_dense_batch(ids, starts, vstarts, tables, P, V, dest, voxel_slot, counts, ms):
    """_assign_dense of every sample b on points [starts[b], starts[b+1]) with table row b; samples
    are independent, so they run in parallel with the very sequential pass of the per-sample path."""
    for b in prange(starts.shape[0] - 1):
        s, e = starts[b], starts[b + 1]
        ms[b] = _assign_dense(ids[s:e], tables[b], P, V, dest[s:e], voxel_slot[vstarts[b]:vstarts[b + 1]],
                              counts[vstarts[b]:vstarts[b + 1]])


@njit(parallel=True, cache=True)
def _assign_hash_batch(ids, starts, vstarts, tables, mask, P, V, dest, voxel_slot, counts, ms):
    for b in prange(starts.shape[0] - 1):
        s, e = starts[b], starts[b + 1]
        ms[b] = _assign_hash(ids[s:e], tables[b], mask, P, V, dest[s:e], voxel_slot[vstarts[b]:vstarts[b + 1]],
                             counts[vstarts[b]:vstarts[b + 1]])


@njit(cache=True)
def _batch_layout(ms, vstarts, counts, ooff, vsample, num):
    """ooff[b] = first output voxel of sample b (exclusive sum of ms); vsample[v] = sample of output
    voxel v; num[v] = its point count (counts compacted from the per-sample regions)."""
    acc = 0
    for b in range(ms.shape[0]):
        ooff[b] = acc
        for j in range(ms[b]):
            vsample[acc + j] = b
            num[acc + j] = counts[vstarts[b] + j]
        acc += ms[b]
    ooff[ms.shape[0]] = acc


@njit(parallel=True, cache=True)
def _coords_dense_batch(tables, voxel_slot, vstarts, ooff, vsample, grid, coords):
    """coords[v] = (b, z, y, x); resets the opened table entries."""
    gx, gy = grid[0], grid[1]
    for v in prange(vsample.shape[0]):
        b = vsample[v]
        c = voxel_slot[vstarts[b] + v - ooff[b]]
        coords[v, 0] = b
        coords[v, 3] = c % gx
        coords[v, 2] = (c // gx) % gy
        coords[v, 1] = c // (gx * gy)
        tables[b, c] = -1


@njit(parallel=True, cache=True)
def _coords_hash_batch(tables, voxel_slot, vstarts, ooff, vsample, grid, coords):
    gx, gy = grid[0], grid[1]
    for v in prange(vsample.shape[0]):
        b = vsample[v]
        h = voxel_slot[vstarts[b] + v - ooff[b]]
        c = tables[b, h] >> 32
        coords[v, 0] = b
        coords[v, 3] = c % gx
        coords[v, 2] = (c // gx) % gy
        coords[v, 1] = c // (gx * gy)
        tables[b, h] = -1


@njit(parallel=True, cache=True)
def _fill_batch(points, starts, dest, ooff, num, P, voxels):
    """_fill_cpu over the batch: a point's row is its sample's first output row + its local dest."""
    C = points.shape[1]
    M = num.shape[0]
    flat = voxels.reshape(M * P, C)
    for v in prange(M):
        for r in range(v * P + num[v], (v + 1) * P):
            for k in range(C):
                flat[r, k] = 0
    for b in range(starts.shape[0] - 1):
        base = ooff[b] * P
        for i in prange(starts[b], starts[b + 1]):
            d = dest[i]
            if d >= 0:
                for k in range(C):
                    flat[base + d, k] = points[i, k]


def hard_voxelize_numba_batch(points: np.ndarray, starts: np.ndarray, voxel_size, point_cloud_range,
                              max_points_per_voxel: int, max_voxels: int, out=None):
    """numba CPU path of hard_voxelize_batch: points float32[N, C] of B samples one after another,
    sample b in rows [starts[b], starts[b + 1]) (starts int64[B + 1], starts[0] = 0, starts[B] = N).

    Returns (voxels float32[M, P, C], coords int32[M, 4] (b, z, y, x), num_points int32[M]) equal to
    hard_voxelize of every sample (its own numbering and max_voxels cap), stacked in sample order,
    with the sample index prepended to the coordinates. out: as for hard_voxelize_numba.
    """
    points = _check_points(np.asarray(points))
    starts = _check_starts(starts, points.shape[0])
    P, V = _check_caps(max_points_per_voxel, max_voxels)
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    alloc = out or (lambda shape, dtype: np.empty(shape, dtype))
    N, C = points.shape
    B = len(starts) - 1
    cells = int(np.prod(grid))
    ids = _cell_ids_cpu(points, lo, vs, grid)
    # per-sample regions of voxel_slot / counts: min(V, n_b) each, as the per-sample path sizes them
    caps = np.minimum(V, np.diff(starts))
    vstarts = np.zeros(B + 1, np.int64)
    np.cumsum(caps, out=vstarts[1:])
    total_cap = int(vstarts[-1])
    dest = np.empty(N, np.int32 if int(caps.max(initial=0)) * P < 2**31 else np.int64)
    voxel_slot = np.empty(total_cap, np.int64)
    counts = np.zeros(total_cap, np.int32)
    ms = np.zeros(B, np.int64)
    dense = cells <= DENSE_TABLE_MAX_CELLS
    if dense:
        key, size = "dense", (B, cells)
        tables = _POOL.take(key, size)
        _assign_dense_batch(ids, starts, vstarts, tables, P, V, dest, voxel_slot, counts, ms)
    else:
        # one table size for the batch (the largest sample's): the result does not depend on it
        key, size = "hash", (B, _hash_size(int(np.diff(starts).max(initial=0)), cells))
        tables = _POOL.take(key, size)
        _assign_hash_batch(ids, starts, vstarts, tables, size[1] - 1, P, V, dest, voxel_slot, counts, ms)
    M = int(ms.sum())
    ooff = np.empty(B + 1, np.int64)
    vsample = np.empty(M, np.int32)
    num = alloc((M,), np.int32)
    _batch_layout(ms, vstarts, counts, ooff, vsample, num)
    voxels = alloc((M, P, C), np.float32)
    coords = alloc((M, 4), np.int32)
    (_coords_dense_batch if dense else _coords_hash_batch)(tables, voxel_slot, vstarts, ooff, vsample, grid, coords)
    _POOL.give(key, size, tables)
    _fill_batch(points, starts, dest, ooff, num, P, voxels)
    return voxels, coords, num


def _check_starts(starts, n: int) -> np.ndarray:
    starts = np.ascontiguousarray(np.asarray(starts, np.int64).reshape(-1))
    if len(starts) < 2 or starts[0] != 0 or starts[-1] != n or np.any(np.diff(starts) < 0):
        raise ValueError(f"starts must be int[B + 1] rising from 0 to the number of points {n}, got {starts.tolist()}")
    return starts


def dynamic_voxelize_numba(points: np.ndarray, voxel_size, point_cloud_range) -> np.ndarray:
    """numba CPU path of dynamic_voxelize: coords int32[N, 3] (z, y, x), -1 rows out of range."""
    points = _check_points(np.asarray(points))
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    return _dynamic_cpu(points, lo, vs, grid)


# ----------------------------------------------------------------------------------------------
# numba.cuda kernels (built on first use; they also run under NUMBA_ENABLE_CUDASIM=1)
# ----------------------------------------------------------------------------------------------
# Threads per block. The simulator runs each CUDA thread as a Python thread: small blocks keep it fast.
_TPB = 32 if numba_config.ENABLE_CUDASIM else 256
# write_voxels gives each voxel one thread, which selects its first P points from the voxel's bucket by
# scanning it P times. A voxel holding more than _CROWDED points (or P, if larger) is left to
# write_crowded instead: one block of _SEL_TPB threads per voxel, P rounds of a block-wide minimum. On
# the H200 the one-thread scan made hard voxelization of 10 stacked raw keyframes (about 100k of the
# car's own returns in a few pillars) take 41.8 ms against 4.7 ms for the numba CPU kernel.
_CROWDED = 64
_SEL_TPB = 8 if numba_config.ENABLE_CUDASIM else 128  # a power of two (tree reduction)
_SEL_BLOCKS = 4 if numba_config.ENABLE_CUDASIM else 1024  # blocks striding over the voxels


@functools.lru_cache(maxsize=None)
def _cuda_kernels():
    # The kernels refer to the module-level ``cuda`` name: the simulator swaps module globals only.
    @cuda.jit
    def cell_ids(points, lo, vs, grid, ids):
        i = cuda.grid(1)
        if i < points.shape[0]:
            qx = (points[i, 0] - lo[0]) / vs[0]
            qy = (points[i, 1] - lo[1]) / vs[1]
            qz = (points[i, 2] - lo[2]) / vs[2]
            if (qx >= 0 and qx < np.float32(grid[0]) and qy >= 0 and qy < np.float32(grid[1])
                    and qz >= 0 and qz < np.float32(grid[2])):
                ids[i] = (np.int64(qz) * grid[1] + np.int64(qy)) * grid[0] + np.int64(qx)
            else:
                ids[i] = -1

    @cuda.jit
    def dynamic(points, lo, vs, grid, coords):
        i = cuda.grid(1)
        if i < points.shape[0]:
            qx = (points[i, 0] - lo[0]) / vs[0]
            qy = (points[i, 1] - lo[1]) / vs[1]
            qz = (points[i, 2] - lo[2]) / vs[2]
            if (qx >= 0 and qx < np.float32(grid[0]) and qy >= 0 and qy < np.float32(grid[1])
                    and qz >= 0 and qz < np.float32(grid[2])):
                coords[i, 0] = np.int32(qz)
                coords[i, 1] = np.int32(qy)
                coords[i, 2] = np.int32(qx)
            else:
                coords[i, 0] = -1
                coords[i, 1] = -1
                coords[i, 2] = -1

    @cuda.jit
    def fill_i32(a, value):
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = value

    @cuda.jit
    def fill_i64(a, value):
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = value

    @cuda.jit
    def first_dense(ids, first, tslot):
        # first[cell] = smallest point index in the cell: order-independent, hence deterministic.
        i = cuda.grid(1)
        if i < ids.shape[0]:
            c = ids[i]
            tslot[i] = c
            if c >= 0:
                cuda.atomic.min(first, c, i)

    @cuda.jit
    def first_hash(ids, keys, first, mask, tslot):
        i = cuda.grid(1)
        if i < ids.shape[0]:
            c = ids[i]
            if c < 0:
                tslot[i] = -1
                return
            r = c >> 3
            r = ((r ^ (r >> 15)) & 0x7FFFFFFF) * 0x2C1B3C6D
            r = r ^ (r >> 29)
            h = ((r << 3) | (c & 7)) & mask
            while True:
                old = cuda.atomic.cas(keys, h, -1, c)
                if old == -1 or old == c:
                    break
                h = (h + 1) & mask
            tslot[i] = h
            cuda.atomic.min(first, h, i)

    @cuda.jit
    def first_flags(ids, tslot, first, flags):
        i = cuda.grid(1)
        if i < ids.shape[0]:
            flags[i] = 1 if (ids[i] >= 0 and first[tslot[i]] == i) else 0

    # Exclusive scan in three launches: each of T threads sums a contiguous chunk, one thread scans
    # the T sums (T is small), each thread rescans its chunk. Simple, deterministic, no shared memory.
    @cuda.jit
    def chunk_sums(x, chunk, sums):
        t = cuda.grid(1)
        if t < sums.shape[0] - 1:
            s = 0
            for i in range(t * chunk, min((t + 1) * chunk, x.shape[0])):
                s += x[i]
            sums[t] = s

    @cuda.jit
    def scan_sums(sums):
        if cuda.grid(1) == 0:
            acc = 0
            for t in range(sums.shape[0] - 1):
                s = sums[t]
                sums[t] = acc
                acc += s
            sums[sums.shape[0] - 1] = acc

    @cuda.jit
    def chunk_scan(x, chunk, sums, y):
        t = cuda.grid(1)
        if t < sums.shape[0] - 1:
            acc = sums[t]
            for i in range(t * chunk, min((t + 1) * chunk, x.shape[0])):
                y[i] = acc
                acc += x[i]

    @cuda.jit
    def open_voxels(ids, tslot, flags, rank, V, grid, voxel_of_slot, coords):
        i = cuda.grid(1)
        if i < ids.shape[0] and flags[i] == 1:
            v = rank[i]
            if v < V:
                c = ids[i]
                voxel_of_slot[tslot[i]] = v
                coords[v, 2] = c % grid[0]
                coords[v, 1] = (c // grid[0]) % grid[1]
                coords[v, 0] = c // (grid[0] * grid[1])

    @cuda.jit
    def count_points(ids, tslot, voxel_of_slot, pvox, counts):
        i = cuda.grid(1)
        if i < ids.shape[0]:
            v = -1
            if ids[i] >= 0:
                v = voxel_of_slot[tslot[i]]
            pvox[i] = v
            if v >= 0:
                cuda.atomic.add(counts, v, 1)

    @cuda.jit
    def bucket_points(pvox, offsets, fill, bucket):
        # Order inside a bucket depends on scheduling; write_voxels sorts what it uses.
        i = cuda.grid(1)
        if i < pvox.shape[0]:
            v = pvox[i]
            if v >= 0:
                k = cuda.atomic.add(fill, v, 1)
                bucket[offsets[v] + k] = i

    @cuda.jit
    def write_voxels(points, bucket, offsets, counts, P, crowded, voxels, num):
        v = cuda.grid(1)
        if v < voxels.shape[0] and counts[v] <= crowded:  # crowded voxels: write_crowded
            start = offsets[v]
            cnt = counts[v]
            take = min(cnt, P)
            # Partial selection sort: the take smallest point indices, ascending = input order.
            for s in range(take):
                best = s
                for j in range(s + 1, cnt):
                    if bucket[start + j] < bucket[start + best]:
                        best = j
                tmp = bucket[start + s]
                bucket[start + s] = bucket[start + best]
                bucket[start + best] = tmp
                src = bucket[start + s]
                for k in range(points.shape[1]):
                    voxels[v, s, k] = points[src, k]
            for s in range(take, P):
                for k in range(points.shape[1]):
                    voxels[v, s, k] = 0
            num[v] = take

    @cuda.jit
    def write_crowded(points, bucket, offsets, counts, P, crowded, voxels, num):
        # One block per crowded voxel (blocks stride over all voxels; the test is uniform in a block, so
        # every thread of a block reaches the same barriers). Round s: each thread takes the smallest
        # point index above the last one chosen from its stride of the bucket, the block reduces to the
        # minimum in shared memory, and that point fills slot s. P rounds give the P smallest indices in
        # ascending order, which is what write_voxels's selection gives: the first P points in input order.
        sm = cuda.shared.array(_SEL_TPB, np.int32)
        tid = cuda.threadIdx.x
        v = cuda.blockIdx.x
        while v < voxels.shape[0]:
            cnt = counts[v]
            if cnt > crowded:
                start = offsets[v]
                last = -1
                for s in range(P):
                    best = _INT32_MAX
                    for j in range(tid, cnt, _SEL_TPB):
                        b = bucket[start + j]
                        if b > last and b < best:
                            best = b
                    sm[tid] = best
                    cuda.syncthreads()
                    h = _SEL_TPB // 2
                    while h > 0:
                        if tid < h and sm[tid + h] < sm[tid]:
                            sm[tid] = sm[tid + h]
                        cuda.syncthreads()
                        h //= 2
                    last = sm[0]
                    for k in range(tid, points.shape[1], _SEL_TPB):
                        voxels[v, s, k] = points[last, k]
                    cuda.syncthreads()  # everyone has read sm[0] before the next round writes sm
                if tid == 0:
                    num[v] = P  # cnt > crowded >= P
            v += cuda.gridDim.x

    # Batched path (hard_voxelize_cuda_batch): the sample index is part of the cell id, b * cells + cell.
    @cuda.jit
    def cell_ids_batch(points, starts, lx, ly, lz, vx, vy, vz, gx, gy, gz, ids):
        i = cuda.grid(1)
        if i < points.shape[0]:
            # the sample of point i: the largest b with starts[b] <= i (empty samples repeat a start)
            lo_b = 0
            hi_b = starts.shape[0] - 1
            while hi_b - lo_b > 1:
                mid = (lo_b + hi_b) // 2
                if starts[mid] <= i:
                    lo_b = mid
                else:
                    hi_b = mid
            qx = (points[i, 0] - lx) / vx
            qy = (points[i, 1] - ly) / vy
            qz = (points[i, 2] - lz) / vz
            if (qx >= 0 and qx < np.float32(gx) and qy >= 0 and qy < np.float32(gy)
                    and qz >= 0 and qz < np.float32(gz)):
                ids[i] = ((lo_b * gz + np.int64(qz)) * gy + np.int64(qy)) * gx + np.int64(qx)
            else:
                ids[i] = -1

    @cuda.jit
    def batch_offsets(starts, flags, rank, V, sfirst, ooff, total):
        # one thread: per sample its first voxel rank, the first output voxel (caps applied), the total
        if cuda.grid(1) == 0:
            acc = 0
            for b in range(starts.shape[0] - 1):
                s = starts[b]
                e = starts[b + 1]
                n = 0
                if e > s:
                    n = rank[e - 1] + flags[e - 1] - rank[s]
                    sfirst[b] = rank[s]
                else:
                    sfirst[b] = 0
                ooff[b] = acc
                acc += min(n, V)
            ooff[starts.shape[0] - 1] = acc
            total[0] = acc

    @cuda.jit
    def open_voxels_batch(ids, tslot, flags, rank, V, cells, gx, gy, sfirst, ooff, voxel_of_slot, coords):
        i = cuda.grid(1)
        if i < ids.shape[0] and flags[i] == 1:
            g = ids[i]
            b = g // cells
            local = rank[i] - sfirst[b]
            if local < V:
                v = ooff[b] + local
                c = g - b * cells
                voxel_of_slot[tslot[i]] = v
                coords[v, 0] = b
                coords[v, 3] = c % gx
                coords[v, 2] = (c // gx) % gy
                coords[v, 1] = c // (gx * gy)

    return dict(cell_ids=cell_ids, dynamic=dynamic, fill_i32=fill_i32, fill_i64=fill_i64,
                first_dense=first_dense, first_hash=first_hash, first_flags=first_flags,
                chunk_sums=chunk_sums, scan_sums=scan_sums, chunk_scan=chunk_scan,
                open_voxels=open_voxels, count_points=count_points, bucket_points=bucket_points,
                write_voxels=write_voxels, write_crowded=write_crowded, cell_ids_batch=cell_ids_batch,
                batch_offsets=batch_offsets, open_voxels_batch=open_voxels_batch)


def _write_voxels(k, pts, bucket, offsets, counts, P: int, voxels, num, stream) -> None:
    """Fill voxels [m, P, C] and num [m] from the buckets: each voxel's first P points in input order."""
    m = voxels.shape[0]
    crowded = max(_CROWDED, P)
    k["write_voxels"][_blocks(m), _TPB, stream](pts, bucket, offsets, counts, P, crowded, voxels, num)
    k["write_crowded"][min(m, _SEL_BLOCKS), _SEL_TPB, stream](pts, bucket, offsets, counts, P, crowded, voxels, num)


def _blocks(n: int) -> int:
    return max(1, (n + _TPB - 1) // _TPB)


def _as_device(points, stream):
    """A numba device array for points: numpy is copied over, device memory is wrapped (zero-copy)."""
    if isinstance(points, np.ndarray):
        return cuda.to_device(_check_points(points), stream=stream)
    if hasattr(points, "copy_to_host"):  # already a numba device array (or the simulator's)
        return points
    return cuda.as_cuda_array(points)


def _cuda_exclusive_scan(k, x, y, stream, max_threads: int = 4096) -> int:
    """y = exclusive prefix sum of int32 device array x; returns the total (a host sync)."""
    n = x.shape[0]
    T = max(1, min(max_threads, n))
    chunk = (n + T - 1) // T
    sums = cuda.device_array(T + 1, np.int64, stream=stream)
    k["chunk_sums"][_blocks(T), _TPB, stream](x, chunk, sums)
    k["scan_sums"][1, 1, stream](sums)
    k["chunk_scan"][_blocks(T), _TPB, stream](x, chunk, sums, y)
    return int(sums[T:T + 1].copy_to_host(stream=stream)[0])


def hard_voxelize_cuda(points, voxel_size, point_cloud_range, max_points_per_voxel: int,
                       max_voxels: int, alloc=None, stream=0):
    """numba.cuda path of hard_voxelize on a device array (anything with __cuda_array_interface__,
    or a numpy array that is copied over); returns device arrays (voxels, coords, num_points).

    alloc: optional callable (shape, numpy dtype) -> device array, to place the outputs (e.g. in
    torch-owned memory); by default numba allocates them.
    """
    P, V = _check_caps(max_points_per_voxel, max_voxels)
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    k = _cuda_kernels()
    pts = _as_device(points, stream)
    N, C = pts.shape
    if alloc is None:
        alloc = lambda shape, dtype: cuda.device_array(shape, dtype, stream=stream)  # noqa: E731
    if N == 0:
        return alloc((0, P, C), np.float32), alloc((0, 3), np.int32), alloc((0,), np.int32)
    d_lo, d_vs, d_grid = (cuda.to_device(a, stream=stream) for a in (lo, vs, grid))
    cells = int(np.prod(grid))
    ids = cuda.device_array(N, np.int64, stream=stream)
    tslot = cuda.device_array(N, np.int64, stream=stream)
    k["cell_ids"][_blocks(N), _TPB, stream](pts, d_lo, d_vs, d_grid, ids)
    if cells <= DENSE_TABLE_MAX_CELLS:
        size = cells
        first = cuda.device_array(size, np.int32, stream=stream)
        k["fill_i32"][_blocks(size), _TPB, stream](first, _INT32_MAX)
        k["first_dense"][_blocks(N), _TPB, stream](ids, first, tslot)
    else:
        size = _hash_size(N, cells)
        keys = cuda.device_array(size, np.int64, stream=stream)
        first = cuda.device_array(size, np.int32, stream=stream)
        k["fill_i64"][_blocks(size), _TPB, stream](keys, -1)
        k["fill_i32"][_blocks(size), _TPB, stream](first, _INT32_MAX)
        k["first_hash"][_blocks(N), _TPB, stream](ids, keys, first, size - 1, tslot)
    flags = cuda.device_array(N, np.int32, stream=stream)
    rank = cuda.device_array(N, np.int32, stream=stream)
    k["first_flags"][_blocks(N), _TPB, stream](ids, tslot, first, flags)
    m = min(_cuda_exclusive_scan(k, flags, rank, stream), V)
    voxel_of_slot = first  # reuse: the first-index table is no longer needed
    k["fill_i32"][_blocks(size), _TPB, stream](voxel_of_slot, -1)
    # Allocation order voxels, coords, num is part of the alloc contract (see _torch_cuda_call).
    voxels = alloc((m, P, C), np.float32)
    coords = alloc((m, 3), np.int32)
    num = alloc((m,), np.int32)
    if m == 0:
        return voxels, coords, num
    k["open_voxels"][_blocks(N), _TPB, stream](ids, tslot, flags, rank, V, d_grid, voxel_of_slot, coords)
    counts = cuda.device_array(m, np.int32, stream=stream)
    fill = cuda.device_array(m, np.int32, stream=stream)
    k["fill_i32"][_blocks(m), _TPB, stream](counts, 0)
    k["fill_i32"][_blocks(m), _TPB, stream](fill, 0)
    pvox = flags  # reuse
    k["count_points"][_blocks(N), _TPB, stream](ids, tslot, voxel_of_slot, pvox, counts)
    offsets = cuda.device_array(m, np.int32, stream=stream)
    total = _cuda_exclusive_scan(k, counts, offsets, stream)
    bucket = cuda.device_array(max(total, 1), np.int32, stream=stream)
    k["bucket_points"][_blocks(N), _TPB, stream](pvox, offsets, fill, bucket)
    _write_voxels(k, pts, bucket, offsets, counts, P, voxels, num, stream)
    return voxels, coords, num


def _cuda_scan_async(k, x, y, sums, stream) -> None:
    """y = exclusive prefix sum of int32 device array x, no host read; sums: int64 device array of
    T + 1 >= 2 entries (scratch; sums[T] ends as the total)."""
    n = x.shape[0]
    T = sums.shape[0] - 1
    chunk = max(1, (n + T - 1) // T)
    k["chunk_sums"][_blocks(T), _TPB, stream](x, chunk, sums)
    k["scan_sums"][1, 1, stream](sums)
    k["chunk_scan"][_blocks(T), _TPB, stream](x, chunk, sums, y)


def hard_voxelize_cuda_batch(points, starts, voxel_size, point_cloud_range, max_points_per_voxel: int,
                             max_voxels: int, alloc=None, out=None, starts_device=None, stream=0):
    """numba.cuda path of hard_voxelize_batch: one kernel sequence for B samples.

    points: device array float32[N, C] (anything with __cuda_array_interface__, or numpy, copied
        over) of the samples one after another; starts: host int64[B + 1] sample boundaries
    alloc: callable (shape, numpy dtype) -> device array for every temporary (the torch caller passes
        torch's caching allocator); out: the same for the three outputs, called in the order voxels,
        coords, num. Both default to numba's allocator.
    starts_device: ``starts`` already on the device (the torch caller copies it without a sync)
    Returns device arrays (voxels float32[M, P, C], coords int32[M, 4] (b, z, y, x), num int32[M]),
    equal to hard_voxelize_cuda of every sample stacked. The one host read is the voxel count M,
    needed to size the outputs; every temporary is sized from N and B.
    """
    P, V = _check_caps(max_points_per_voxel, max_voxels)
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    k = _cuda_kernels()
    pts = _as_device(points, stream)
    N, C = pts.shape
    starts = _check_starts(starts, N)
    B = len(starts) - 1
    if alloc is None:
        alloc = lambda shape, dtype: cuda.device_array(shape, dtype, stream=stream)  # noqa: E731
    out = out or alloc
    if N == 0:
        return out((0, P, C), np.float32), out((0, 4), np.int32), out((0,), np.int32)
    d_starts = starts_device if starts_device is not None else cuda.to_device(starts, stream=stream)
    cells = int(np.prod(grid))
    gx, gy, gz = (int(g) for g in grid)
    ids = alloc((N,), np.int64)
    tslot = alloc((N,), np.int64)
    f32 = np.float32
    k["cell_ids_batch"][_blocks(N), _TPB, stream](pts, d_starts, f32(lo[0]), f32(lo[1]), f32(lo[2]), f32(vs[0]),
                                                  f32(vs[1]), f32(vs[2]), gx, gy, gz, ids)
    if cells <= DENSE_TABLE_MAX_CELLS:  # the per-sample rule: a dense table of cells entries per sample
        size = B * cells
        first = alloc((size,), np.int32)
        k["fill_i32"][_blocks(size), _TPB, stream](first, _INT32_MAX)
        k["first_dense"][_blocks(N), _TPB, stream](ids, first, tslot)
    else:
        size = _hash_size(N, B * cells)
        keys = alloc((size,), np.int64)
        first = alloc((size,), np.int32)
        k["fill_i64"][_blocks(size), _TPB, stream](keys, -1)
        k["fill_i32"][_blocks(size), _TPB, stream](first, _INT32_MAX)
        k["first_hash"][_blocks(N), _TPB, stream](ids, keys, first, size - 1, tslot)
    flags = alloc((N,), np.int32)
    rank = alloc((N,), np.int32)
    k["first_flags"][_blocks(N), _TPB, stream](ids, tslot, first, flags)
    sums = alloc((max(1, min(4096, N)) + 1,), np.int64)
    _cuda_scan_async(k, flags, rank, sums, stream)
    sfirst = alloc((B,), np.int32)
    ooff = alloc((B + 1,), np.int32)
    total = alloc((1,), np.int64)
    k["batch_offsets"][1, 1, stream](d_starts, flags, rank, V, sfirst, ooff, total)
    voxel_of_slot = first  # reuse: the first-index table is no longer needed
    k["fill_i32"][_blocks(size), _TPB, stream](voxel_of_slot, -1)
    m = int(total.copy_to_host(stream=stream)[0])  # the one host read: the outputs' size
    voxels = out((m, P, C), np.float32)
    coords = out((m, 4), np.int32)
    num = out((m,), np.int32)
    if m == 0:
        return voxels, coords, num
    k["open_voxels_batch"][_blocks(N), _TPB, stream](ids, tslot, flags, rank, V, cells, gx, gy, sfirst, ooff,
                                                     voxel_of_slot, coords)
    counts = alloc((m,), np.int32)
    fill = alloc((m,), np.int32)
    k["fill_i32"][_blocks(m), _TPB, stream](counts, 0)
    k["fill_i32"][_blocks(m), _TPB, stream](fill, 0)
    pvox = flags  # reuse
    k["count_points"][_blocks(N), _TPB, stream](ids, tslot, voxel_of_slot, pvox, counts)
    offsets = alloc((m,), np.int32)
    _cuda_scan_async(k, counts, offsets, alloc((max(1, min(4096, m)) + 1,), np.int64), stream)
    bucket = alloc((N,), np.int32)  # >= the points kept (no host read of their count)
    k["bucket_points"][_blocks(N), _TPB, stream](pvox, offsets, fill, bucket)
    _write_voxels(k, pts, bucket, offsets, counts, P, voxels, num, stream)
    return voxels, coords, num


def dynamic_voxelize_cuda(points, voxel_size, point_cloud_range, alloc=None, stream=0):
    """numba.cuda path of dynamic_voxelize; returns a device array coords int32[N, 3] (z, y, x)."""
    lo, vs, grid = voxel_grid(voxel_size, point_cloud_range)
    k = _cuda_kernels()
    pts = _as_device(points, stream)
    N = pts.shape[0]
    if alloc is None:
        alloc = lambda shape, dtype: cuda.device_array(shape, dtype, stream=stream)  # noqa: E731
    coords = alloc((N, 3), np.int32)
    if N:
        d_lo, d_vs, d_grid = (cuda.to_device(a, stream=stream) for a in (lo, vs, grid))
        k["dynamic"][_blocks(N), _TPB, stream](pts, d_lo, d_vs, d_grid, coords)
    return coords


# ----------------------------------------------------------------------------------------------
# Public entry points: dispatch on type and device
# ----------------------------------------------------------------------------------------------
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.int32): torch.int32}


def _torch_cuda_call(fn, points: torch.Tensor, *args):
    if points.dtype != torch.float32:
        raise TypeError(f"points must be float32, got {points.dtype}")
    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [N, C>=3] (x, y, z, ...), got shape {tuple(points.shape)}")
    points = points.detach().contiguous()
    outs = []

    def alloc(shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)], device=points.device)
        outs.append(t)
        return cuda.as_cuda_array(t) if t.numel() else cuda.device_array(shape, dtype)

    with torch.cuda.device(points.device):
        stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
        fn(cuda.as_cuda_array(points) if points.numel() else points.cpu().numpy(), *args,
                 alloc=alloc, stream=stream)
    # The kernels wrote into torch-owned memory: the tensors, in allocation order, are the result.
    return tuple(outs) if len(outs) > 1 else outs[0]


def hard_voxelize(points: ArrayLike, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                  max_points_per_voxel: int, max_voxels: int, impl: str = "auto"):
    """Hard voxelization with mmcv's deterministic semantics (module docstring).

    points: float32[N, C] (x, y, z, ...) metres, numpy array or torch tensor (CPU or CUDA).
    voxel_size: (x, y, z) metres; point_cloud_range: (x0, y0, z0, x1, y1, z1) metres.
    Returns voxels float32[M, max_points_per_voxel, C], coords int32[M, 3] (z, y, x),
    num_points int32[M], of the input's type and device.
    impl: "auto" (by device), "numba", "reference" or "cuda".
    """
    if isinstance(points, torch.Tensor):
        if impl == "cuda" or (impl == "auto" and points.is_cuda):
            return _torch_cuda_call(hard_voxelize_cuda, points, voxel_size, point_cloud_range,
                                    max_points_per_voxel, max_voxels)
        arr = points.detach().cpu().numpy()
        if impl == "reference":
            res = hard_voxelize_reference(arr, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)
        else:
            res = hard_voxelize_numba(arr, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)
        return tuple(torch.from_numpy(r).to(points.device) for r in res)
    if impl == "reference":
        return hard_voxelize_reference(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)
    if impl == "cuda":
        return tuple(r.copy_to_host() for r in hard_voxelize_cuda(
            points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels))
    return hard_voxelize_numba(points, voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)


def _torch_cuda_batch(points: torch.Tensor, starts: np.ndarray, *args):
    """hard_voxelize_cuda_batch on a CUDA tensor: every temporary and output from torch's caching
    allocator on torch's current stream (its frees do not synchronize the device, numba's do), the
    starts copied from pinned memory without a sync."""
    points = points.detach().contiguous()
    dev = points.device
    outs = []

    def alloc(shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_DTYPES_ALL[np.dtype(dtype)], device=dev)
        return cuda.as_cuda_array(t) if t.numel() else cuda.device_array(shape, dtype)

    def out(shape, dtype):
        t = torch.empty(shape, dtype=_TORCH_DTYPES_ALL[np.dtype(dtype)], device=dev)
        outs.append(t)
        return cuda.as_cuda_array(t) if t.numel() else cuda.device_array(shape, dtype)

    with torch.cuda.device(dev):
        d_starts = torch.from_numpy(starts)
        if dev.type == "cuda":  # (a CPU tensor only under gpu_check's simulator shim)
            d_starts = d_starts.pin_memory().to(dev, non_blocking=True)
        stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
        hard_voxelize_cuda_batch(cuda.as_cuda_array(points) if points.numel() else points.cpu().numpy(), starts,
                                 *args, alloc=alloc, out=out,
                                 starts_device=cuda.as_cuda_array(d_starts), stream=stream)
    return tuple(outs)


_TORCH_DTYPES_ALL = {np.dtype(np.float32): torch.float32, np.dtype(np.int32): torch.int32,
                     np.dtype(np.int64): torch.int64}


def hard_voxelize_batch(points: Sequence[ArrayLike], voxel_size: Sequence[float],
                        point_cloud_range: Sequence[float], max_points_per_voxel: int, max_voxels: int,
                        impl: str = "auto"):
    """Hard voxelization of B samples in one call (one kernel sequence on the GPU).

    points: B x float32[N_b, C] (x, y, z, ...) metres, numpy arrays or torch tensors (all on one device)
    Returns voxels float32[M, P, C], coords int32[M, 4] (b, z, y, x), num_points int32[M]: exactly
    ``hard_voxelize`` of each sample (own voxel numbering, own max_voxels cap) concatenated in sample
    order, with the sample index prepended to the coordinates. Of the inputs' type and device.
    impl: "auto" (by device), "numba", "cuda" or "per_sample" (the reference: one hard_voxelize call
    per sample, by device).
    """
    points = list(points)
    if not points:
        raise ValueError("hard_voxelize_batch needs at least one sample")
    args = (voxel_size, point_cloud_range, max_points_per_voxel, max_voxels)
    starts = np.zeros(len(points) + 1, np.int64)
    np.cumsum([p.shape[0] for p in points], out=starts[1:])
    if impl == "per_sample":
        outs = [hard_voxelize(p, *args) for p in points]
        if isinstance(points[0], torch.Tensor):
            coords = [torch.cat([torch.full_like(c[:, :1], b), c], 1) for b, (_, c, _) in enumerate(outs)]
            return torch.cat([o[0] for o in outs]), torch.cat(coords), torch.cat([o[2] for o in outs])
        coords = [np.concatenate([np.full((len(c), 1), b, np.int32), c], 1) for b, (_, c, _) in enumerate(outs)]
        return np.concatenate([o[0] for o in outs]), np.concatenate(coords), np.concatenate([o[2] for o in outs])
    if isinstance(points[0], torch.Tensor):
        for p in points:
            if p.dtype != torch.float32:
                raise TypeError(f"points must be float32, got {p.dtype}")
            if p.dim() != 2 or p.shape[1] < 3:
                raise ValueError(f"points must be [N, C>=3] (x, y, z, ...), got shape {tuple(p.shape)}")
        cat = torch.cat([p.detach() for p in points]) if len(points) > 1 else points[0].detach()
        if impl == "cuda" or (impl == "auto" and cat.is_cuda):
            return _torch_cuda_batch(cat, starts, *args)
        res = hard_voxelize_numba_batch(cat.cpu().numpy(), starts, *args)
        return tuple(torch.from_numpy(r).to(cat.device) for r in res)
    cat = np.concatenate([np.asarray(p) for p in points]) if len(points) > 1 else np.asarray(points[0])
    if impl == "cuda":
        return tuple(r.copy_to_host() for r in hard_voxelize_cuda_batch(cat, starts, *args))
    return hard_voxelize_numba_batch(cat, starts, *args)


def dynamic_voxelize(points: ArrayLike, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                     impl: str = "auto"):
    """Per-point voxel coordinates int32[N, 3] (z, y, x), -1 rows for points out of range (or NaN/inf).

    points: float32[N, C] (x, y, z, ...) metres, numpy array or torch tensor (CPU or CUDA).
    voxel_size: (x, y, z) metres; point_cloud_range: (x0, y0, z0, x1, y1, z1) metres.
    impl: "auto" (by device), "numba", "reference" or "cuda".
    """
    if isinstance(points, torch.Tensor):
        if impl == "cuda" or (impl == "auto" and points.is_cuda):
            return _torch_cuda_call(dynamic_voxelize_cuda, points, voxel_size, point_cloud_range)
        arr = points.detach().cpu().numpy()
        fn = dynamic_voxelize_reference if impl == "reference" else dynamic_voxelize_numba
        return torch.from_numpy(fn(arr, voxel_size, point_cloud_range)).to(points.device)
    if impl == "reference":
        return dynamic_voxelize_reference(points, voxel_size, point_cloud_range)
    if impl == "cuda":
        return dynamic_voxelize_cuda(points, voxel_size, point_cloud_range).copy_to_host()
    return dynamic_voxelize_numba(points, voxel_size, point_cloud_range)


# ----------------------------------------------------------------------------------------------
# Pillar scatter
# ----------------------------------------------------------------------------------------------
def scatter_pillars(pillar_features: torch.Tensor, coords: torch.Tensor, batch_size: int,
                    grid_hw: Tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """Dense BEV map float[B, C, H, W] from pillar features; differentiable in pillar_features.

    pillar_features: float[M, C] one feature vector per pillar.
    coords: int[M, 4] (batch, z, y, x) cell indices (z ignored: pillars span the height); rows
        must be unique per (batch, y, x) (as hard_voxelize's are), cells without a pillar are zero.
    batch_size: B; grid_hw: (H, W) = (grid y, grid x).
    channels_last: return the map in channels_last memory format (the [B, H, W, C] canvas it is
        built in, no copy) instead of NCHW-contiguous.
    """
    H, W = grid_hw
    M, C = pillar_features.shape
    canvas = pillar_features.new_zeros(batch_size * H * W, C)
    if M:
        coords = coords.to(device=pillar_features.device, dtype=torch.long)
        index = (coords[:, 0] * H + coords[:, 2]) * W + coords[:, 3]
        # index_copy (not index_add): one pillar per cell, and its backward is a gather.
        canvas = canvas.index_copy(0, index, pillar_features)
    canvas = canvas.view(batch_size, H, W, C).permute(0, 3, 1, 2)
    return canvas if channels_last else canvas.contiguous()
