"""CenterPoint training targets of one sample, built in the data path (loader workers).

``CenterTargetBuilder`` turns a sample's ground truth into the head's targets (Gaussian heatmaps per
class, and per object its centre cell, regression values, velocity validity and attribute): the
same numbers as ``CenterHead.targets`` (the readable per-box reference, kept in
``models/heads/centerpoint.py`` and compared in tests/test_center_targets.py), with the heatmap
splatting vectorized. Building them in the loader workers keeps the trainer's main process (and the
GPU it feeds) from waiting on a Python loop per box after every forward.

Exactness: the per-box scalars (Gaussian radius, log sizes, sin/cos of the yaw) use the same scalar
``math`` calls on the same float64 values as the reference, because numpy's vectorized
transcendentals may differ from libm in the last bit; they are a few microseconds per box. The
heatmap max-splat, the part that cost per box, is one ``np.maximum.at`` over all boxes with the
Gaussian kernels computed once per radius by the reference's formula (max is order independent).

Grid convention as the head: cell (row y, col x) of an [H, W] map covers ego x in
[x_min + x * cell_x, x_min + (x + 1) * cell_x) and y likewise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..structures import CLASSES


@dataclass
class HeadTargets:
    """Training targets of a batch (or of one sample, B = 1).

    heatmaps: per task float32[B, n_classes_task, H, W]
    indices: int64[B, K] flat cell index y * W + x of each target object (K = max_objects)
    mask: bool[B, K] valid target slots; task_of: int64[B, K] task of each slot
    regression: float32[B, K, 10] (dx, dy, z, log l, log w, log h, sin, cos, vx, vy)
    velocity_valid: bool[B, K] (nuScenes has no velocity for single-annotation tracks)
    attributes: int64[B, K] attribute id or -1
    """

    heatmaps: List[torch.Tensor]
    indices: torch.Tensor
    mask: torch.Tensor
    task_of: torch.Tensor
    regression: torch.Tensor
    velocity_valid: torch.Tensor
    attributes: torch.Tensor

    def _map(self, fn) -> "HeadTargets":
        return HeadTargets(**{f.name: ([fn(t) for t in v] if isinstance(v, list) else fn(v))
                              for f in fields(self) for v in (getattr(self, f.name),)})

    def to(self, device) -> "HeadTargets":
        """On ``device`` (non_blocking: from pinned memory the copies overlap the step)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "HeadTargets":
        return self._map(lambda t: t.pin_memory())

    @staticmethod
    def cat(parts: Sequence["HeadTargets"]) -> "HeadTargets":
        """Samples' targets (each B_i) -> one batch (sum B_i), in order."""
        out = {}
        for f in fields(HeadTargets):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = ([torch.cat([v[t] for v in vals]) for t in range(len(vals[0]))]
                           if isinstance(vals[0], list) else torch.cat(vals))
        return HeadTargets(**out)


def gaussian_radius(height: float, width: float, min_overlap: float) -> float:
    """CenterNet/CenterPoint's radius (cells) such that a box shifted by it keeps ``min_overlap`` IoU."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def gaussian_kernel(radius: int) -> np.ndarray:
    """float64[2r + 1, 2r + 1]: the splatted Gaussian (sigma = diameter / 6), peak 1 at the centre."""
    sigma = (2 * radius + 1) / 6.0
    ys, xs = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))


class CenterTargetBuilder:
    """Ground truth of one sample -> its ``HeadTargets`` (B = 1, CPU tensors).

    task_class_ids: per task the class ids of its heatmap channels (``CLASSES`` order)
    point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max) metres, ego frame
    cell_size: (dx, dy) metres of an output cell; bev_hw: (H, W) output cells
    min_radius: smallest Gaussian radius, cells; gaussian_overlap: IoU the radius keeps
    max_objects: K, target slots per sample (later boxes are dropped, as the reference does)
    """

    def __init__(self, task_class_ids: Sequence[Sequence[int]], point_cloud_range: Sequence[float],
                 cell_size: Sequence[float], bev_hw: Tuple[int, int], min_radius: int, gaussian_overlap: float,
                 max_objects: int):
        self.task_class_ids = [list(t) for t in task_class_ids]
        self.range = [float(v) for v in point_cloud_range]
        self.cell = [float(v) for v in cell_size]
        self.bev_hw = (int(bev_hw[0]), int(bev_hw[1]))
        self.min_radius, self.overlap, self.max_objects = int(min_radius), float(gaussian_overlap), int(max_objects)
        # class id -> (task, channel within the task); -1 for a class no task predicts
        self._task = np.full(len(CLASSES), -1, np.int64)
        self._channel = np.full(len(CLASSES), -1, np.int64)
        self._offset = np.cumsum([0] + [len(t) for t in self.task_class_ids])  # task -> first global channel
        for t, ids in enumerate(self.task_class_ids):
            for j, c in enumerate(ids):
                self._task[c], self._channel[c] = t, j
        self._kernels: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _kernel(self, radius: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dy int64[n], dx int64[n], value float32[n]) of the radius's Gaussian, cached."""
        if radius not in self._kernels:
            g = gaussian_kernel(radius)
            dy, dx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
            self._kernels[radius] = (dy.ravel(), dx.ravel(), g.ravel().astype(np.float32))
        return self._kernels[radius]

    def __call__(self, boxes: np.ndarray, labels: np.ndarray, attributes: np.ndarray) -> HeadTargets:
        """boxes: float[N, 9] (x, y, z, l, w, h, yaw, vx, vy) ego frame, metres, m/s; labels: int64[N]
        class ids; attributes: int64[N] attribute ids or -1. Boxes whose centre lies outside the grid or
        with a size <= 0 are ignored. Returns HeadTargets with B = 1."""
        H, W = self.bev_hw
        K = self.max_objects
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)  # the reference's .double()
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        attributes = np.asarray(attributes, dtype=np.int64).reshape(-1)
        fx = (b[:, 0] - self.range[0]) / self.cell[0]
        fy = (b[:, 1] - self.range[1]) / self.cell[1]
        # floor(f) in [0, W) <=> f in [0, W): compared in float, so no huge value wraps when cast
        valid = ((fx >= 0) & (fx < W) & (fy >= 0) & (fy < H)
                 & (b[:, 3] > 0) & (b[:, 4] > 0) & (b[:, 5] > 0))
        sel = np.flatnonzero(valid)[:K]  # the first K valid boxes, in order
        n = len(sel)
        heat = np.zeros((int(self._offset[-1]), H, W), np.float32)
        ind = np.zeros(K, np.int64)
        mask = np.zeros(K, bool)
        task_of = np.zeros(K, np.int64)
        reg = np.zeros((K, 10), np.float32)
        vel_ok = np.zeros(K, bool)
        attrs = np.full(K, -1, np.int64)
        if n:
            bs, fxs, fys = b[sel], fx[sel], fy[sel]
            cx, cy = np.floor(fxs).astype(np.int64), np.floor(fys).astype(np.int64)
            lab = labels[sel]
            if lab.min() < 0 or lab.max() >= len(CLASSES) or (self._task[lab] < 0).any():
                bad = next(int(c) for c in lab if not (0 <= c < len(CLASSES)) or self._task[c] < 0)
                raise KeyError(bad)  # as the reference: a class no task predicts
            t, j = self._task[lab], self._channel[lab]
            ind[:n] = cy * W + cx
            mask[:n] = True
            task_of[:n] = t
            # per-box scalars through libm, as the reference computes them (see module doc); on Python
            # floats (exact conversions; the same IEEE operations and libm calls as on the reference's
            # numpy float64 scalars, several times faster)
            radii = np.array([max(self.min_radius, int(gaussian_radius(w / self.cell[1], l / self.cell[0],
                                                                       self.overlap)))
                              for l, w in zip(bs[:, 3].tolist(), bs[:, 4].tolist())], np.int64)
            vx, vy = bs[:, 7], bs[:, 8]
            fin_x, fin_y = np.isfinite(vx), np.isfinite(vy)
            reg[:n, 0] = fxs - cx
            reg[:n, 1] = fys - cy
            reg[:n, 2] = bs[:, 2]
            reg[:n, 3:6] = [[math.log(v) for v in row] for row in bs[:, 3:6].tolist()]
            yaw = bs[:, 6].tolist()
            reg[:n, 6] = [math.sin(v) for v in yaw]
            reg[:n, 7] = [math.cos(v) for v in yaw]
            reg[:n, 8] = np.where(fin_x, vx, 0.0)
            reg[:n, 9] = np.where(fin_y, vy, 0.0)
            vel_ok[:n] = fin_x & fin_y
            attrs[:n] = attributes[sel]
            # heatmap: every box's Gaussian cells clipped to the map, max-reduced into it
            channel = self._offset[t] + j
            flat, vals = [], []
            for r in np.unique(radii):
                dy, dx, g = self._kernel(int(r))
                which = np.flatnonzero(radii == r)
                ys = cy[which, None] + dy[None]  # [m, (2r+1)^2]
                xs = cx[which, None] + dx[None]
                inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
                cells = (channel[which, None] * H + ys) * W + xs
                flat.append(cells[inside])
                vals.append(np.broadcast_to(g[None], cells.shape)[inside])
            # max over float32 kernel values equals the reference's float64 max rounded to float32
            # (rounding is monotone and the map's values are float32 already)
            np.maximum.at(heat.reshape(-1), np.concatenate(flat), np.concatenate(vals))
        tt = torch.from_numpy
        return HeadTargets([tt(heat[self._offset[i]:self._offset[i + 1]][None].copy())
                            for i in range(len(self.task_class_ids))],
                           tt(ind[None]), tt(mask[None]), tt(task_of[None]), tt(reg[None]), tt(vel_ok[None]),
                           tt(attrs[None]))


def center_target_builder(cfg) -> CenterTargetBuilder:
    """The builder of ``cfg`` (perception.config.Config): the head's tasks, grid and target settings,
    derived as ``models.heads.centerpoint.build_head`` derives them (a test holds the two equal)."""
    m, g = cfg.model, cfg.grid
    hc = m.head
    return CenterTargetBuilder([[CLASSES.index(c) for c in t] for t in hc.tasks], g.point_cloud_range,
                               [g.voxel_size[0] * m.bev_stride, g.voxel_size[1] * m.bev_stride], cfg.bev_shape,
                               hc.min_radius, hc.gaussian_overlap, hc.max_objects)
