"""Round trips of every frame conversion and of the box layout."""
import numpy as np
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from perception.data.convert import box_row_from_nuscenes, box_row_to_nuscenes
from perception.geometry import apply, invert, make_transform
from perception.structures import Boxes3D, wrap_angle


def random_boxes(rng, n, frame="ego"):
    rows = np.column_stack([
        rng.uniform(-50, 50, n), rng.uniform(-50, 50, n), rng.uniform(-2, 2, n),
        rng.uniform(0.5, 12, n), rng.uniform(0.4, 3, n), rng.uniform(0.5, 4, n),
        rng.uniform(-np.pi, np.pi, n), rng.uniform(-15, 15, n), rng.uniform(-15, 15, n)])
    return Boxes3D(rows, rng.integers(0, 10, n), np.full(n, -1), np.ones(n), np.zeros(n), np.zeros(n),
                   [""] * n, [""] * n, frame)


def test_box_row_nuscenes_round_trip():
    rng = np.random.default_rng(0)
    for row in random_boxes(rng, 200).boxes:
        t, wlh, q, v = box_row_to_nuscenes(row)
        assert wlh == [row[4], row[3], row[5]]  # nuScenes stores (w, l, h)
        back = box_row_from_nuscenes(t, wlh, q, v)
        np.testing.assert_allclose(back[:6], row[:6], atol=1e-12)
        assert abs(wrap_angle(back[6] - row[6])) < 1e-9
        np.testing.assert_allclose(back[7:], row[7:], atol=1e-12)


def test_box_layout_matches_devkit_corners():
    """Our (l, w, yaw) must describe the same box as the devkit's Box with (w, l, h) + quaternion."""
    rng = np.random.default_rng(1)
    for row in random_boxes(rng, 50).boxes:
        t, wlh, q, _ = box_row_to_nuscenes(row)
        corners = Box(t, wlh, Quaternion(q)).corners()  # [3, 8]
        x, y, z, l, w, h, yaw = row[:7]
        # corner 0 of the devkit is front-left-top: +l/2 along heading, +w/2 to the left
        c, s = np.cos(yaw), np.sin(yaw)
        expect = np.array([x + c * l / 2 - s * w / 2, y + s * l / 2 + c * w / 2, z + h / 2])
        np.testing.assert_allclose(corners[:, 0], expect, atol=1e-9)


def test_transform_round_trip_and_composition():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(100, 3)) * 20
    for _ in range(10):
        q = Quaternion(rng.normal(size=4)).normalised
        T = make_transform(rng.normal(size=3) * 100, q.elements)
        np.testing.assert_allclose(apply(invert(T), apply(T, pts)), pts, atol=1e-9)
        np.testing.assert_allclose(invert(T) @ T, np.eye(4), atol=1e-12)


def test_boxes_frame_round_trip_and_devkit_agreement():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 100)
    T = make_transform([601.2, 1640.7, 0.0], Quaternion(axis=[0, 0, 1], angle=2.1).elements)
    g = boxes.transformed(T, "global")
    back = g.transformed(invert(T), "ego")
    np.testing.assert_allclose(back.boxes[:, :6], boxes.boxes[:, :6], atol=1e-9)
    assert np.abs(wrap_angle(back.boxes[:, 6] - boxes.boxes[:, 6])).max() < 1e-9
    np.testing.assert_allclose(back.boxes[:, 7:], boxes.boxes[:, 7:], atol=1e-9)
    # the devkit moves a Box the same way (rotate, then translate; velocity rotated)
    for row, grow in zip(boxes.boxes[:10], g.boxes[:10]):
        t, wlh, q, v = box_row_to_nuscenes(row)
        b = Box(t, wlh, Quaternion(q), velocity=(v[0], v[1], 0.0))
        b.rotate(Quaternion(matrix=T[:3, :3]))
        b.translate(T[:3, 3])
        dev = box_row_from_nuscenes(b.center, b.wlh, b.orientation.elements, b.velocity[:2])
        np.testing.assert_allclose(dev[:6], grow[:6], atol=1e-9)
        assert abs(wrap_angle(dev[6] - grow[6])) < 1e-9
        np.testing.assert_allclose(dev[7:], grow[7:], atol=1e-9)


def test_boxes3d_rejects_inconsistent_fields():
    import pytest

    with pytest.raises(ValueError, match="labels"):
        Boxes3D(np.zeros((2, 9)), [0], [0, 0], [1, 1], [0, 0], [0, 0], ["", ""], ["", ""])
    bad = np.zeros((1, 9))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        Boxes3D(bad, [0], [0], [1], [0], [0], [""], [""])
