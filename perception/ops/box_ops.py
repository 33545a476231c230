"""Rotated bird's-eye-view box geometry: corners and exact IoU between box sets.

BEV boxes are the (x, y, l, w, yaw) columns of the package's box layout ``[N, 9]``
(x, y, z, l, w, h, yaw, vx, vy): centre (m), length along the heading, width (m), yaw (rad) from +x
towards +y. ``rotated_iou_bev`` (numba, parallel over rows) clips one rectangle by the other
(Sutherland-Hodgman) and takes the shoelace area; ``rotated_iou_bev_reference`` is an independent
plain-Python implementation (tests also check both against shapely).
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from numba import njit, prange

ArrayLike = Union[np.ndarray, torch.Tensor]


def bev_boxes(boxes: ArrayLike) -> np.ndarray:
    """float64[N, 5] (x, y, l, w, yaw) from boxes [N, 5] (x, y, l, w, yaw) or [N, 9] (x, y, z, l, w, h, yaw, vx, vy)."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] not in (5, 7, 9):
        raise ValueError(f"boxes must be [N, 5] (x, y, l, w, yaw) or [N, 7|9] (x, y, z, l, w, h, yaw, ...), "
                         f"got {boxes.shape}")
    if boxes.shape[1] == 5:
        return np.ascontiguousarray(boxes)
    return np.ascontiguousarray(boxes[:, [0, 1, 3, 4, 6]])


def bev_corners(bev: np.ndarray) -> np.ndarray:
    """float64[N, 4, 2] corners, counter-clockwise from front-left; bev: [N, 5] (x, y, l, w, yaw) m, rad."""
    bev = np.asarray(bev, dtype=np.float64)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    dx = local[None, :, 0] * bev[:, 2:3]
    dy = local[None, :, 1] * bev[:, 3:4]
    c, s = np.cos(bev[:, 4:5]), np.sin(bev[:, 4:5])
    return np.stack([bev[:, 0:1] + c * dx - s * dy, bev[:, 1:2] + s * dx + c * dy], axis=-1)


# ----------------------------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------------------------
@njit(cache=True)
def _corners_nb(bev):
    n = bev.shape[0]
    out = np.empty((n, 4, 2))
    for i in range(n):
        x, y, l, w, yaw = bev[i, 0], bev[i, 1], bev[i, 2], bev[i, 3], bev[i, 4]
        c, s = math.cos(yaw), math.sin(yaw)
        for k in range(4):
            dx = (0.5 if k == 0 or k == 3 else -0.5) * l
            dy = (0.5 if k < 2 else -0.5) * w
            out[i, k, 0] = x + c * dx - s * dy
            out[i, k, 1] = y + s * dx + c * dy
    return out


@njit(cache=True)
def _intersection_area_nb(ca, cb, buf_a, buf_b):
    """Area of the intersection of convex CCW quads ca, cb [4, 2]; buf_*: scratch [16, 2]."""
    n = 4
    for k in range(4):
        buf_a[k, 0] = ca[k, 0]
        buf_a[k, 1] = ca[k, 1]
    src, dst = buf_a, buf_b
    for e in range(4):
        p1x, p1y = cb[e, 0], cb[e, 1]
        ex, ey = cb[(e + 1) % 4, 0] - p1x, cb[(e + 1) % 4, 1] - p1y
        m = 0
        prev = n - 1
        d_prev = ex * (src[prev, 1] - p1y) - ey * (src[prev, 0] - p1x)
        for i in range(n):
            d_cur = ex * (src[i, 1] - p1y) - ey * (src[i, 0] - p1x)
            # Inside = left of the clip edge (or on it).
            if (d_cur >= 0) != (d_prev >= 0):
                t = d_prev / (d_prev - d_cur)
                dst[m, 0] = src[prev, 0] + t * (src[i, 0] - src[prev, 0])
                dst[m, 1] = src[prev, 1] + t * (src[i, 1] - src[prev, 1])
                m += 1
            if d_cur >= 0:
                dst[m, 0] = src[i, 0]
                dst[m, 1] = src[i, 1]
                m += 1
            prev = i
            d_prev = d_cur
        n = m
        if n < 3:
            return 0.0
        src, dst = dst, src
    area = 0.0
    for i in range(n):
        j = (i + 1) % n
        area += src[i, 0] * src[j, 1] - src[j, 0] * src[i, 1]
    return max(0.5 * area, 0.0)


@njit(cache=True)
def _iou_nb(bev, corners, i, bev2, corners2, j, buf_a, buf_b):
    # Disjoint circumcircles: no overlap, skip the clipping (exactly 0 either way).
    dx = bev[i, 0] - bev2[j, 0]
    dy = bev[i, 1] - bev2[j, 1]
    ri = 0.5 * math.sqrt(bev[i, 2] * bev[i, 2] + bev[i, 3] * bev[i, 3])
    rj = 0.5 * math.sqrt(bev2[j, 2] * bev2[j, 2] + bev2[j, 3] * bev2[j, 3])
    if dx * dx + dy * dy > (ri + rj) * (ri + rj):
        return 0.0
    area_i = bev[i, 2] * bev[i, 3]
    area_j = bev2[j, 2] * bev2[j, 3]
    # A degenerate (zero-area) clip polygon would leave the subject unclipped: IoU 0 by definition.
    if area_i <= 0 or area_j <= 0:
        return 0.0
    inter = min(_intersection_area_nb(corners[i], corners2[j], buf_a, buf_b), area_i, area_j)
    return inter / (area_i + area_j - inter)


@njit(parallel=True, cache=True)
def _iou_matrix_nb(a, b):
    ca = _corners_nb(a)
    cb = _corners_nb(b)
    out = np.zeros((a.shape[0], b.shape[0]))
    for i in prange(a.shape[0]):
        buf_a = np.empty((16, 2))
        buf_b = np.empty((16, 2))
        for j in range(b.shape[0]):
            out[i, j] = _iou_nb(a, ca, i, b, cb, j, buf_a, buf_b)
    return out


def rotated_iou_bev(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """float64[N, M] exact BEV IoU; boxes_*: [N, 5] (x, y, l, w, yaw) or [N, 9] package layout, m, rad."""
    a, b = bev_boxes(boxes_a), bev_boxes(boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return _iou_matrix_nb(a, b)


# ----------------------------------------------------------------------------------------------
# Reference: plain Python, written independently of the kernels above
# ----------------------------------------------------------------------------------------------
def _clip_polygon(subject, clip):
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex CCW ``clip``."""
    out = list(subject)
    for k in range(len(clip)):
        (ax, ay), (bx, by) = clip[k], clip[(k + 1) % len(clip)]
        side = lambda p: (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)  # noqa: E731  >0 left
        inp, out = out, []
        for idx, cur in enumerate(inp):
            prev = inp[idx - 1]
            sc, sp = side(cur), side(prev)
            if (sc >= 0) != (sp >= 0):
                t = sp / (sp - sc)
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if sc >= 0:
                out.append(cur)
        if len(out) < 3:
            return []
    return out


def _polygon_area(poly) -> float:
    s = 0.0
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        s += x0 * y1 - x1 * y0
    return max(0.5 * s, 0.0)


def rotated_iou_bev_reference(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """Plain-Python reference of rotated_iou_bev (same contract)."""
    a, b = bev_boxes(boxes_a), bev_boxes(boxes_b)
    ca, cb = bev_corners(a), bev_corners(b)
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            area_a, area_b = a[i, 2] * a[i, 3], b[j, 2] * b[j, 3]
            if area_a <= 0 or area_b <= 0:  # zero-area boxes overlap nothing
                continue
            inter = _polygon_area(_clip_polygon([tuple(p) for p in ca[i]], [tuple(p) for p in cb[j]]))
            inter = min(inter, area_a, area_b)
            out[i, j] = inter / (area_a + area_b - inter)
    return out
