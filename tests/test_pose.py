import numpy as np
import pytest
from pyquaternion import Quaternion

from perception.sync.pose import PoseError, PoseStream


def stream(**kw):
    ts = np.array([0, 100_000, 200_000, 300_000], np.int64)
    yaws = [0.0, 0.1, 0.3, 0.6]
    tr = np.array([[0, 0, 0], [1, 0, 0], [2, 0.5, 0], [3, 1.5, 0]], float)
    q = np.array([Quaternion(axis=[0, 0, 1], angle=y).elements for y in yaws])
    return PoseStream(ts, tr, q, **kw)


def test_exact_at_records_and_interpolated_between():
    s = stream()
    for i, t in enumerate(s.timestamps):
        T = s.transforms(int(t))
        np.testing.assert_allclose(T[:3, 3], s.translations[i], atol=1e-12)
        np.testing.assert_allclose(T[:3, :3], Quaternion(s.rotations_wxyz[i]).rotation_matrix, atol=1e-12)
    T = s.transforms(150_000)
    np.testing.assert_allclose(T[:3, 3], [1.5, 0.25, 0], atol=1e-12)
    yaw = np.arctan2(T[1, 0], T[0, 0])
    assert abs(yaw - 0.2) < 1e-9  # slerp about a fixed axis interpolates the angle linearly
    batch = s.transforms(np.array([0, 150_000, 300_000]))
    assert batch.shape == (3, 4, 4)
    np.testing.assert_allclose(batch[1], T)


def test_outside_span_is_an_error_inside_bound_holds_end():
    s = stream(max_extrapolation_us=50_000)
    np.testing.assert_allclose(s.transforms(340_000), s.transforms(300_000))
    with pytest.raises(PoseError, match="outside the stream's span"):
        s.transforms(351_000)
    with pytest.raises(PoseError, match="t=-60000"):
        s.transforms(-60_000)


def test_out_of_order_timestamps_rejected():
    with pytest.raises(PoseError, match="not strictly increasing at index 2"):
        PoseStream(np.array([0, 10, 5]), np.zeros((3, 3)), np.tile([1.0, 0, 0, 0], (3, 1)))


def test_non_unit_quaternion_rejected():
    q = np.tile([1.0, 0, 0, 0], (2, 1))
    q[1] = [1.2, 0, 0, 0]
    with pytest.raises(PoseError, match="norm 1.2"):
        PoseStream(np.array([0, 10]), np.zeros((2, 3)), q)


def test_velocity_of_constant_motion():
    ts = np.arange(0, 2_000_001, 20_000)
    yaw = 0.5
    tr = np.stack([np.cos(yaw) * 5 * ts * 1e-6, np.sin(yaw) * 5 * ts * 1e-6, 0 * ts], axis=1)
    q = np.tile(Quaternion(axis=[0, 0, 1], angle=yaw).elements, (len(ts), 1))
    s = PoseStream(ts, tr, q)
    np.testing.assert_allclose(s.velocity(1_000_000), [5 * np.cos(yaw), 5 * np.sin(yaw), 0], atol=1e-9)
    np.testing.assert_allclose(s.ego_velocity(1_000_000), [5, 0, 0], atol=1e-9)  # x forward in the ego frame


def test_real_pose_stream_is_exact_at_every_sample_data(real_source):
    s = real_source.pose_stream("scene-0523")
    nusc = real_source.nusc
    for m in list(real_source.messages("scene-0523"))[::97]:
        p = nusc.get("ego_pose", m.ego_pose_token)
        np.testing.assert_allclose(s.transforms(m.timestamp)[:3, 3], p["translation"], atol=1e-9)


def test_can_bus_pose_stream(real_source, tmp_path):
    """A can_bus/ folder with 50 Hz pose messages (written here from the real ego poses) is read
    through the devkit's NuScenesCanBus and interpolates to the same poses."""
    import json
    import os

    scene = "scene-0916"
    ego = real_source.pose_stream(scene)
    t = np.arange(ego.start, ego.end, 20_000)
    T = ego.transforms(t)
    msgs = [{"utime": int(ti), "pos": Ti[:3, 3].tolist(), "orientation": Quaternion(matrix=Ti[:3, :3]).elements.tolist(),
             "vel": [0, 0, 0], "accel": [0, 0, 0], "rotation_rate": [0, 0, 0]} for ti, Ti in zip(t, T)]
    root = tmp_path / "root"
    (root / "can_bus").mkdir(parents=True)
    (root / "can_bus" / f"{scene}_pose.json").write_text(json.dumps(msgs))
    from perception.data.nuscenes_source import NuScenesSource

    src = NuScenesSource(str(root), "v1.0-trainval", nusc=real_source.nusc)
    can = src.pose_stream(scene, source="can_bus")
    assert len(can.timestamps) == len(t)
    probe = np.array([m.timestamp for m in real_source.messages(scene)][5:-5:50])
    np.testing.assert_allclose(can.transforms(probe)[:, :3, 3], ego.transforms(probe)[:, :3, 3], atol=0.05)
