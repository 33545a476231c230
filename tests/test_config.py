import os

import pytest

from perception.config import ConfigError, load_config

from conftest import PROJECT


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_default_config_loads_and_derives_grid():
    cfg = load_config(os.path.join(PROJECT, "configs", "default.yaml"))
    # 102.4 m / 0.2 m = 512 cells; 10 m / 10 m = 1 pillar layer
    assert cfg.grid.grid_size == (512, 512, 1)
    assert cfg.grid.bev_shape == (512, 512)
    assert cfg.sync.lidar_sweeps == 10


def test_grid_size_follows_voxel_size_override():
    cfg = load_config(os.path.join(PROJECT, "configs", "default.yaml"), ["grid.voxel_size=[0.8, 0.8, 10.0]"])
    assert cfg.grid.grid_size == (128, 128, 1)


def test_misspelled_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "sync:\n  lidar_sweep: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "sync.lidar_sweep" in msg and path in msg and "lidar_sweeps" in msg
    assert "\n" not in msg


def test_unknown_top_level_section(tmp_path):
    path = write(tmp_path, "bad.yaml", "gird:\n  voxel_size: [1, 1, 1]\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'gird'.*did you mean 'grid'"):
        load_config(path)


def test_wrong_type_is_an_error(tmp_path):
    path = write(tmp_path, "bad.yaml", "sync:\n  lidar_sweeps: ten\n")
    with pytest.raises(ConfigError, match="sync.lidar_sweeps.*integer"):
        load_config(path)


def test_voxel_size_must_divide_range(tmp_path):
    path = write(tmp_path, "bad.yaml", "grid:\n  voxel_size: [0.3, 0.3, 8.0]\n")
    with pytest.raises(ConfigError, match="does not divide"):
        load_config(path)


def test_set_overrides_and_bad_override_key():
    cfg = load_config(None, ["sync.radar_sweeps=3", "sync.camera_match=nearest"])
    assert cfg.sync.radar_sweeps == 3 and cfg.sync.camera_match == "nearest"
    with pytest.raises(ConfigError, match=r"--set.*unknown config key 'sync.radar_sweep'"):
        load_config(None, ["sync.radar_sweep=3"])
    with pytest.raises(ConfigError, match="camera_match"):
        load_config(None, ["sync.camera_match=closest"])


def test_base_inheritance(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nsync:\n  lidar_sweeps: 4\n  radar_sweeps: 2\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nname: child\nsync:\n  radar_sweeps: 5\n")
    cfg = load_config(child)
    assert (cfg.name, cfg.sync.lidar_sweeps, cfg.sync.radar_sweeps) == ("child", 4, 5)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = write(tmp_path, "broken.yaml", "sync: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_float_written_without_a_dot_is_a_number():
    cfg = load_config(None, ["grid.voxel_size=[2e-1, 2e-1, 10]"])
    assert cfg.grid.voxel_size == [0.2, 0.2, 10.0]
    from perception.config import ConfigError as CE
    with pytest.raises(CE, match="must be a number"):
        load_config(None, ["sync.lidar_cut_azimuth_deg=north"])
