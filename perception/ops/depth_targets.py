"""LiDAR depth targets for the camera branch (BEVDepth-style explicit depth supervision).

A training signal only: the targets are built in the data path from the frame's LiDAR points and
never enter the camera encoder as an input, so the camera branch runs unchanged without a LiDAR.

Geometry is exactly the lift's (``perception.models.camera.lss``): an ego point ``p`` is taken to the
camera by ``T_ego_from_cam^-1``, to original-image pixels by ``K`` and to network-input pixels by
``img_aug`` (resize, crop, flip), all under the continuous pixel convention (pixel (i, j) covers
[i, i + 1) x [j, j + 1)). Feature cell (row r, col c) at stride s covers network pixels
[c s, (c + 1) s) x [r s, (r + 1) s); its target is the nearest depth (camera z, metres) of the
points that fall in it, 0 where none does. Depth is camera z, as the lift's bins are.

``project_to_cells`` is the readable per-camera reference; ``depth_target_maps`` is the vectorized
form over all cameras at once (one argsort), used by the data path, and the tests compare the two.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

# Points closer than this to the image plane (camera z, metres) are not targets: the devkit's
# map_pointcloud_to_image uses 1 m for the same reason (the car's own body and lens-near noise).
MIN_DEPTH = 1.0


def project_points(points_ego: np.ndarray, K: np.ndarray, T_ego_from_cam: np.ndarray,
                   img_aug: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network-input pixels of ego points through one camera.

    points_ego: float[P, 3] (x, y, z) ego frame, metres
    K: float[3, 3] pinhole matrix of the original image; T_ego_from_cam: float[4, 4] camera -> ego
    img_aug: float[3, 3] original pixel (u, v, 1) -> network-input pixel
    Returns (u float64[P], v float64[P], depth float64[P] camera z in metres); u, v are meaningless
    where depth <= 0.
    """
    T = np.asarray(T_ego_from_cam, np.float64)
    R, t = T[:3, :3], T[:3, 3]
    p_cam = (np.asarray(points_ego, np.float64)[:, :3] - t) @ R  # R^T (p - t), row vectors
    uvw = p_cam @ (np.asarray(img_aug, np.float64) @ np.asarray(K, np.float64)).T
    z = p_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uvw[:, 0] / z, uvw[:, 1] / z
    return u, v, z


def project_to_cells(points_ego: np.ndarray, K: np.ndarray, T_ego_from_cam: np.ndarray, img_aug: np.ndarray,
                     image_hw: Sequence[int], stride: int, min_depth: float = MIN_DEPTH) -> np.ndarray:
    """Reference: float32[H / stride, W / stride] nearest depth per feature cell of one camera, 0 = none.

    image_hw: (H, W) network input size, pixels; stride: feature stride (H, W multiples of it)
    """
    H, W = (int(x) for x in image_hw)
    fH, fW = H // stride, W // stride
    out = np.zeros((fH, fW), np.float32)
    u, v, z = project_points(points_ego, K, T_ego_from_cam, img_aug)
    for ui, vi, zi in zip(u, v, z):
        if not (zi >= min_depth and 0.0 <= ui < W and 0.0 <= vi < H):
            continue
        r, c = int(vi // stride), int(ui // stride)
        if out[r, c] == 0 or zi < out[r, c]:
            out[r, c] = zi
    return out


def depth_target_maps(points_ego: np.ndarray, K: np.ndarray, T_ego_from_cam: np.ndarray, img_aug: np.ndarray,
                      present: np.ndarray, image_hw: Sequence[int], stride: int,
                      min_depth: float = MIN_DEPTH) -> np.ndarray:
    """float32[N, H / stride, W / stride] nearest LiDAR depth (camera z, metres) per feature cell of
    every camera, 0 where no point falls (such cells take no loss).

    points_ego: float[P, >= 3] (x, y, z, ...) ego frame, metres (NaN rows are skipped)
    K, img_aug: float[N, 3, 3]; T_ego_from_cam: float[N, 4, 4] (as the camera encoder gets them)
    present: bool[N] cameras to build targets for (absent ones stay all 0)
    image_hw: (H, W) network input, pixels; stride: the lifted features' stride
    """
    H, W = (int(x) for x in image_hw)
    if H % stride or W % stride:
        raise ValueError(f"image size {H}x{W} is not a multiple of the feature stride {stride}")
    N = len(K)
    fH, fW = H // stride, W // stride
    out = np.zeros((N, fH, fW), np.float32)
    cams = np.flatnonzero(np.asarray(present, bool))
    pts = np.asarray(points_ego, np.float64)[:, :3]
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(cams) == 0 or len(pts) == 0:
        return out
    T = np.asarray(T_ego_from_cam, np.float64)[cams]
    R, t = T[:, :3, :3], T[:, :3, 3]
    P = np.asarray(img_aug, np.float64)[cams] @ np.asarray(K, np.float64)[cams]  # [n, 3, 3]
    # One BLAS product for every camera: per camera the affine maps of a point to its camera z and to
    # (u w, v w, w), from p_cam = p R - t R and uvw = p_cam P^T.
    to_cam = np.concatenate([R, -(t[:, None, :] @ R)], axis=1)  # [n, 4, 3]
    to_uvw = to_cam @ P.transpose(0, 2, 1)  # [n, 4, 3]
    n = len(cams)
    maps = np.concatenate([to_cam[:, :, 2:3], to_uvw], axis=2)  # [n, 4, 4]: z, u w, v w, w
    # [n * 4, P]: each camera's z, u w, v w, w as contiguous rows (the elementwise work below is the cost)
    rows = maps.transpose(0, 2, 1).reshape(n * 4, 4)  # row k: coefficients of (x, y, z, 1)
    proj = (rows[:, :3] @ pts.T + rows[:, 3:]).reshape(n, 4, len(pts))
    z = proj[:, 0]  # [n, P] camera z (w equals it: K's last row is (0, 0, 1))
    ok = z >= min_depth
    with np.errstate(divide="ignore", invalid="ignore"):
        u = proj[:, 1] / proj[:, 3]
        v = proj[:, 2] / proj[:, 3]
    ok &= (u >= 0.0) & (u < W) & (v >= 0.0) & (v < H)  # NaN (z = 0) compares False
    ci, pi = np.nonzero(ok)
    if len(ci) == 0:
        return out
    # floor of a non-negative float: the cell that holds the continuous pixel
    cell = (cams[ci] * fH + (v[ci, pi] // stride).astype(np.int64)) * fW + (u[ci, pi] // stride).astype(np.int64)
    depth = z[ci, pi]
    order = np.lexsort((depth, cell))  # by cell, nearest first within a cell
    cell, depth = cell[order], depth[order]
    first = np.ones(len(cell), bool)
    first[1:] = cell[1:] != cell[:-1]
    out.reshape(-1)[cell[first]] = depth[first]
    return out


def depth_bin_index(depth: "np.ndarray | object", depth_bins: Sequence[float]):
    """Bin of a depth (metres) under (min, max, step) bins: floor((d - min) / step), -1 where the
    depth is 0 (no target) or outside [min, max). Works on numpy arrays and torch tensors."""
    lo, hi, step = (float(x) for x in depth_bins)
    n = int(round((hi - lo) / step))
    k = ((depth - lo) / step)
    k = k.floor() if hasattr(k, "floor") else np.floor(k)
    valid = (depth >= lo) & (k < n) & (k >= 0)
    if hasattr(k, "long"):
        return k.long().where(valid, k.new_full((), -1).long())
    return np.where(valid, k, -1).astype(np.int64)
