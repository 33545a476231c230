"""Sensor file readers: real files against the devkit, and bad input with its clear message."""
import glob
import os
import shutil

import numpy as np
import pytest
from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud

from perception.data import io


def real_files(root, channel, ext):
    files = sorted(glob.glob(os.path.join(root, "samples", channel, "*" + ext)))
    assert files, f"no {channel} files"
    return files


def test_lidar_matches_devkit(real_root):
    for path in real_files(real_root, "LIDAR_TOP", ".pcd.bin")[:3]:
        ours = io.read_lidar(path)
        dev = LidarPointCloud.from_file(path).points.T  # devkit keeps 4 columns
        assert ours.shape[1] == 5 and len(ours) == len(dev) == os.path.getsize(path) // 20
        np.testing.assert_array_equal(ours[:, :4], dev)
        assert set(np.unique(ours[:, 4])) <= set(range(32))


def test_radar_matches_devkit_with_and_without_filters(real_root):
    for path in real_files(real_root, "RADAR_FRONT", ".pcd")[:5]:
        ours_all = io.read_radar(path)
        dev_all = RadarPointCloud.from_file(path, invalid_states=list(range(18)), dynprop_states=list(range(18)),
                                            ambig_states=list(range(18))).points.T
        np.testing.assert_allclose(ours_all, dev_all, rtol=0, atol=1e-6)
        # the header's POINTS is the record count; the file continues with zero padding
        with open(path, "rb") as f:
            blob = f.read()
        _, count, offset = io.radar_pcd_layout(path, blob)
        assert len(ours_all) == count and len(blob) > offset + 43 * count
        ours_f = io.read_radar(path, default_filters=True)
        dev_f = RadarPointCloud.from_file(path).points.T
        np.testing.assert_allclose(ours_f, dev_f, rtol=0, atol=1e-6)


def test_truncated_lidar_is_a_clear_error(real_root, tmp_path):
    src = real_files(real_root, "LIDAR_TOP", ".pcd.bin")[0]
    dst = tmp_path / "cut.pcd.bin"
    dst.write_bytes(open(src, "rb").read()[:-7])
    with pytest.raises(io.SensorFileError) as e:
        io.read_lidar(str(dst))
    assert str(dst) in str(e.value) and "not a multiple of 20" in str(e.value)


def test_nan_points_dropped_with_warning_or_raised(tmp_path, caplog):
    pts = np.arange(50, dtype=np.float32).reshape(10, 5)
    pts[3, 1] = np.nan
    pts[7, 0] = np.inf
    path = tmp_path / "nan.pcd.bin"
    pts.tofile(path)
    out = io.read_lidar(str(path))
    assert len(out) == 8 and np.isfinite(out).all()
    assert "dropped 2 LiDAR points" in caplog.text
    with pytest.raises(io.SensorFileError, match="2 LiDAR points with NaN"):
        io.read_lidar(str(path), drop_nonfinite=False)


def test_radar_header_disagreeing_with_size(real_root, tmp_path):
    src = real_files(real_root, "RADAR_FRONT", ".pcd")[0]
    blob = open(src, "rb").read()
    header_end = blob.index(b"DATA binary\n") + len(b"DATA binary\n")
    _, count, _ = io.radar_pcd_layout(src, blob)
    dst = tmp_path / "short.pcd"
    dst.write_bytes(blob[: header_end + 43 * count - 10])
    with pytest.raises(io.SensorFileError, match=f"POINTS {count}.*truncated"):
        io.read_radar(str(dst))


def test_missing_and_corrupt_image(real_root, tmp_path):
    with pytest.raises(io.SensorFileError, match="image not found"):
        io.read_image(str(tmp_path / "nope.jpg"))
    src = real_files(real_root, "CAM_FRONT", ".jpg")[0]
    img = io.read_image(src)
    assert img.shape == (900, 1600, 3) and img.dtype == np.uint8
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(open(src, "rb").read()[:5000])
    with pytest.raises(io.SensorFileError, match="unreadable image"):
        io.read_image(str(bad))
