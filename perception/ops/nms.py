"""Non-maximum suppression on BEV boxes: circle NMS (CenterPoint) and rotated-IoU NMS.

Both are greedy in descending score (ties: lower input index first) and return the kept indices in
that order, int64, as numpy for numpy input or as a tensor on the input's device for tensor input.
Boxes are [N, 5] (x, y, l, w, yaw) or the package's [N, 9] (x, y, z, l, w, h, yaw, vx, vy) layout,
ego frame, metres, radians. numba kernels with plain references of the same contract.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from numba import njit

from .box_ops import (_corners_nb, _iou_nb, bev_boxes, rotated_iou_bev_reference)

ArrayLike = Union[np.ndarray, torch.Tensor]


def _score_order(scores: np.ndarray) -> np.ndarray:
    # Stable sort of the negated scores: equal scores keep input order.
    return np.argsort(-scores, kind="stable")


def _inputs(boxes: ArrayLike, scores: ArrayLike):
    bev = bev_boxes(boxes)
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if len(s) != len(bev):
        raise ValueError(f"{len(bev)} boxes but {len(s)} scores")
    return bev, s


def _like(keep: np.ndarray, ref: ArrayLike):
    keep = keep.astype(np.int64)
    return torch.from_numpy(keep).to(ref.device) if isinstance(ref, torch.Tensor) else keep


@njit(cache=True)
def _circle_nms_nb(xy, order, r2):
    n = order.shape[0]
    suppressed = np.zeros(xy.shape[0], np.bool_)
    keep = np.empty(n, np.int64)
    nk = 0
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        for b in range(a + 1, n):
            j = order[b]
            if not suppressed[j]:
                dx = xy[i, 0] - xy[j, 0]
                dy = xy[i, 1] - xy[j, 1]
                if dx * dx + dy * dy < r2:
                    suppressed[j] = True
    return keep[:nk]


def circle_nms(boxes: ArrayLike, scores: ArrayLike, radius: float):
    """Kept indices int64[K] by descending score; a box is suppressed by a kept, higher-scored box
    whose BEV centre lies closer than ``radius`` metres (strictly).

    boxes: [N, 5] (x, y, l, w, yaw) or [N, 9] (x, y, z, l, w, h, yaw, vx, vy), ego frame, m.
    scores: [N]. Note: CenterPoint's ``min_radius`` config values are compared with the *squared*
    distance; pass ``sqrt(min_radius)`` to reproduce it (up to its ``<=`` at the boundary).
    """
    bev, s = _inputs(boxes, scores)
    xy = np.ascontiguousarray(bev[:, :2])
    keep = _circle_nms_nb(xy, _score_order(s), float(radius) ** 2) if len(s) else np.zeros(0, np.int64)
    return _like(keep, scores if isinstance(scores, torch.Tensor) else boxes)


def circle_nms_reference(boxes: ArrayLike, scores: ArrayLike, radius: float):
    """Plain numpy reference of circle_nms (same contract)."""
    bev, s = _inputs(boxes, scores)
    order = list(_score_order(s))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = np.array(order, dtype=np.int64)
        if len(rest):
            d2 = (bev[rest, 0] - bev[i, 0]) ** 2 + (bev[rest, 1] - bev[i, 1]) ** 2
            order = list(rest[~(d2 < float(radius) ** 2)])
    return _like(np.array(keep, dtype=np.int64), scores if isinstance(scores, torch.Tensor) else boxes)


@njit(cache=True)
def _rotated_nms_nb(bev, order, thr):
    n = order.shape[0]
    corners = _corners_nb(bev)
    suppressed = np.zeros(bev.shape[0], np.bool_)
    keep = np.empty(n, np.int64)
    buf_a = np.empty((16, 2))
    buf_b = np.empty((16, 2))
    nk = 0
    for a in range(n):
        i = order[a]
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        for b in range(a + 1, n):
            j = order[b]
            if not suppressed[j]:
                if _iou_nb(bev, corners, i, bev, corners, j, buf_a, buf_b) > thr:
                    suppressed[j] = True
    return keep[:nk]


def rotated_nms_bev(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float):
    """Kept indices int64[K] by descending score; a box is suppressed by a kept, higher-scored box
    whose rotated BEV IoU with it exceeds ``iou_threshold`` (strictly, as torchvision's nms).

    boxes: [N, 5] (x, y, l, w, yaw) or [N, 9] (x, y, z, l, w, h, yaw, vx, vy), ego frame, m, rad.
    scores: [N].
    """
    bev, s = _inputs(boxes, scores)
    keep = _rotated_nms_nb(bev, _score_order(s), float(iou_threshold)) if len(s) else np.zeros(0, np.int64)
    return _like(keep, scores if isinstance(scores, torch.Tensor) else boxes)


def rotated_nms_bev_reference(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float):
    """Plain reference of rotated_nms_bev (same contract): greedy over reference IoUs."""
    bev, s = _inputs(boxes, scores)
    order = _score_order(s)
    suppressed = np.zeros(len(s), bool)
    keep = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = [j for j in order[a + 1:] if not suppressed[j]]
        if not rest:
            continue
        # Only boxes whose circumcircles meet can overlap; the rest have IoU 0.
        r = 0.5 * np.hypot(bev[:, 2], bev[:, 3])
        near = [j for j in rest if np.hypot(*(bev[i, :2] - bev[j, :2])) <= r[i] + r[j]]
        if near:
            iou = rotated_iou_bev_reference(bev[[i]], bev[near])[0]
            for j, v in zip(near, iou):
                if v > iou_threshold:
                    suppressed[j] = True
    return _like(np.array(keep, dtype=np.int64), scores if isinstance(scores, torch.Tensor) else boxes)
