"""Rotated BEV IoU and NMS: the numba kernels equal the plain references; IoU also against shapely."""
import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from perception.ops import (bev_corners, circle_nms, circle_nms_reference, rotated_iou_bev,
                            rotated_iou_bev_reference, rotated_nms_bev, rotated_nms_bev_reference)


def random_boxes(n, seed=0, spread=30.0, cluster=0.3):
    """[N, 9] (x, y, z, l, w, h, yaw, vx, vy); a share of them crowded around a few centres."""
    rng = np.random.default_rng(seed)
    b = np.zeros((n, 9))
    b[:, :2] = rng.uniform(-spread, spread, (n, 2))
    k = int(n * cluster)
    b[:k, :2] = rng.uniform(-spread, spread, (4, 2))[rng.integers(0, 4, k)] + rng.normal(0, 0.7, (k, 2))
    b[:, 2] = rng.uniform(-1, 1, n)
    b[:, 3] = rng.uniform(0.5, 6.0, n)
    b[:, 4] = rng.uniform(0.4, 2.5, n)
    b[:, 5] = rng.uniform(1, 3, n)
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return b


def shapely_iou(a5, b5):
    ca, cb = bev_corners(a5), bev_corners(b5)
    out = np.zeros((len(a5), len(b5)))
    for i in range(len(a5)):
        pa = Polygon(ca[i])
        for j in range(len(b5)):
            pb = Polygon(cb[j])
            union = pa.union(pb).area
            out[i, j] = pa.intersection(pb).area / union if union > 0 else 0.0
    return out


def special_boxes():
    """(x, y, l, w, yaw): identical, shifted, rotated 45 deg, contained, touching, disjoint, degenerate."""
    return np.array([
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0.5, 0, 1, 1, 0],
        [0, 0, 1, 1, math.pi / 4],
        [0, 0, 0.5, 0.25, 0.3],
        [1, 0, 1, 1, 0],              # shares an edge with box 0
        [10, 10, 2, 1, 1.0],
        [0, 0, 0, 0, 0],              # zero area
        [0.2, 0.1, 4, 0.2, math.pi / 2],
        [0, 0, 1, 1, math.pi],        # same as box 0, turned around
    ], dtype=np.float64)


def test_iou_known_values():
    b = special_boxes()
    iou = rotated_iou_bev(b, b)
    assert iou[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert iou[0, 9] == pytest.approx(1.0, abs=1e-12)
    assert iou[0, 2] == pytest.approx(0.5 / 1.5, abs=1e-12)
    octagon = 2 * (math.sqrt(2) - 1)  # unit square and its 45 deg turn about the same centre
    assert iou[0, 3] == pytest.approx(octagon / (2 - octagon), abs=1e-12)
    assert iou[0, 4] == pytest.approx(0.125, abs=1e-12)  # contained: area ratio
    assert iou[0, 5] == pytest.approx(0.0, abs=1e-12) and iou[0, 6] == 0.0 and iou[0, 7] == 0.0
    assert not iou[7].any() and not iou[:, 7].any()  # a zero-area box overlaps nothing
    assert np.allclose(iou, iou.T, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_equals_reference_and_shapely(seed):
    boxes = random_boxes(120, seed=seed, spread=6.0, cluster=0.5)
    a, b = boxes[:70], boxes[40:]
    iou = rotated_iou_bev(a, b)
    ref = rotated_iou_bev_reference(a, b)
    assert (iou > 0).sum() > 100
    # Same algorithm and the same float64 operations in both: equal up to the last bits of cos/sin.
    np.testing.assert_allclose(iou, ref, rtol=0, atol=1e-12)
    sb = np.r_[a[:, [0, 1, 3, 4, 6]], special_boxes()]
    np.testing.assert_allclose(rotated_iou_bev(sb, sb), shapely_iou(sb, sb), rtol=0, atol=1e-9)


def test_iou_layouts_and_empty():
    boxes = random_boxes(10, seed=3)
    assert np.array_equal(rotated_iou_bev(boxes, boxes), rotated_iou_bev(boxes[:, [0, 1, 3, 4, 6]], boxes))
    assert np.array_equal(rotated_iou_bev(torch.from_numpy(boxes), boxes), rotated_iou_bev(boxes, boxes))
    assert rotated_iou_bev(boxes[:0], boxes).shape == (0, 10)


@pytest.mark.parametrize("thr", [0.01, 0.2, 0.5])
def test_rotated_nms_equals_reference(thr):
    boxes = random_boxes(400, seed=4, cluster=0.6)
    scores = np.random.default_rng(5).random(400)
    keep = rotated_nms_bev(boxes, scores, thr)
    ref = rotated_nms_bev_reference(boxes, scores, thr)
    assert keep.dtype == np.int64 and np.array_equal(keep, ref)
    assert 0 < len(keep) < 400 and np.all(np.diff(scores[keep]) <= 0)
    # Contract: no two kept boxes overlap more than the threshold.
    iou = rotated_iou_bev(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= thr


def test_rotated_nms_small_example_and_ties():
    b = special_boxes()[[0, 2, 6, 1]]
    keep = rotated_nms_bev(b, np.array([0.9, 0.8, 0.7, 0.9]), 0.3)
    # Box 3 ties box 0 (later index loses) and duplicates it; box 1 overlaps box 0 by IoU 1/3 > 0.3.
    assert keep.tolist() == [0, 2]
    assert rotated_nms_bev(b, np.array([0.9, 0.8, 0.7, 0.9]), 0.34).tolist() == [0, 1, 2]


def test_circle_nms_equals_reference_and_contract():
    boxes = random_boxes(1000, seed=6, cluster=0.7)
    scores = np.random.default_rng(7).random(1000)
    for radius in (0.5, 2.0, 4.0):
        keep = circle_nms(boxes, scores, radius)
        assert np.array_equal(keep, circle_nms_reference(boxes, scores, radius))
        xy = boxes[keep, :2]
        d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
        np.fill_diagonal(d, np.inf)
        assert d.min() >= radius and np.all(np.diff(scores[keep]) <= 0)


def test_circle_nms_small_example():
    xy = np.array([[0, 0, 1, 1, 0], [0.9, 0, 1, 1, 0], [1.0, 0, 1, 1, 0], [5, 5, 1, 1, 0]], float)
    s = np.array([0.5, 0.9, 0.1, 0.3])
    # From the top box 1: box 0 lies 0.9 away, box 2 0.1 away; "closer than" is strict.
    assert circle_nms(xy, s, 0.5).tolist() == [1, 0, 3]
    assert circle_nms(xy, s, 0.9).tolist() == [1, 0, 3]
    assert circle_nms(xy, s, 0.95).tolist() == [1, 3]


def test_nms_torch_and_empty():
    boxes = torch.from_numpy(random_boxes(50, seed=8))
    scores = torch.rand(50, generator=torch.Generator().manual_seed(0))
    keep = rotated_nms_bev(boxes, scores, 0.1)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64
    assert keep.tolist() == rotated_nms_bev_reference(boxes.numpy(), scores.numpy(), 0.1).tolist()
    assert circle_nms(boxes, scores, 1.0).tolist() == circle_nms_reference(boxes, scores, 1.0).tolist()
    assert rotated_nms_bev(np.zeros((0, 9)), np.zeros(0), 0.5).shape == (0,)
    assert circle_nms(np.zeros((0, 9)), np.zeros(0), 0.5).shape == (0,)
