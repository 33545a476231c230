"""Config mistakes end in one line naming the key (and the file, or the --set pair), never a traceback:
through ``load_config`` and through ``tools/eval.py``'s ``main`` in process (exit status 2).

No data root is needed: the config is loaded before anything else is opened.
"""
import importlib.util
import os

import pytest

from conftest import PROJECT
from perception.config import ConfigError, load_config

TINY = os.path.join(PROJECT, "configs", "fusion_tiny.yaml")


def _eval_main():
    spec = importlib.util.spec_from_file_location("eval_tool_config_errors", os.path.join(PROJECT, "tools", "eval.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _one_line_config_error(path, overrides):
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# (overrides, what the message must name)
OVERRIDE_CASES = [
    # a value after the same key as a section: was "TypeError: 'float' object does not support item assignment"
    (["train.lr=0.1", "train.lr.x=1"], ["--set train.lr.x=1", "'train.lr' is a number, not a section"]),
    (["train.lr.x=1"], ["--set train.lr.x=1", "'train.lr' is a number, not a section"]),
    (["model.camera.image_size.0=32"], ["--set model.camera.image_size.0=32", "image_size' is a list, not a section"]),
    (["train.lr=0.1", "train=3"], ["--set train=3", "'train' is a section"]),
    (["train.lrr=0.1"], ["--set train.lrr=0.1", "unknown config key 'train.lrr'", "did you mean 'train.lr'"]),
    (["sync.lidar_sweeps=ten"], ["--set sync.lidar_sweeps=ten", "'sync.lidar_sweeps' must be an integer"]),
    (["train.lr=.nan"], ["--set train.lr=.nan", "'train.lr' must be a finite number"]),
    (["train.lr"], ["--set 'train.lr'", "expected key=value"]),
    (["=3"], ["--set '=3'", "empty key"]),
    (["train..lr=1"], ["--set 'train..lr=1'", "empty key"]),
    (["model.camera.depth_bins=[1, 2]"], ["--set model.camera.depth_bins=[1, 2]", "model.camera.depth_bins needs 3"]),
    (["model.bev_stride=0"], ["--set model.bev_stride=0", "model.bev_stride"]),
    (["model.lidar.backbone_layers=[1, 1]"], ["model.lidar.backbone_layers", "backbone_strides=3"]),
    (["train.augment.image_flip_with_mirror=true", "train.augment.image_flip_prob=0.5"],
     ["train.augment.image_flip_with_mirror", "image_flip_prob must be 0"]),
]


@pytest.mark.parametrize("overrides,names", OVERRIDE_CASES, ids=[" ".join(c[0]) for c in OVERRIDE_CASES])
def test_bad_override_is_one_line_naming_the_pair(overrides, names):
    msg = _one_line_config_error(None, overrides)
    for text in names:
        assert text in msg, msg


def test_overrides_that_fit_still_merge():
    cfg = load_config(None, ["train.augment={enabled: false}", "train.augment.flip_prob=0.25", "train.lr=0.1"])
    assert (cfg.train.augment.enabled, cfg.train.augment.flip_prob, cfg.train.lr) == (False, 0.25, 0.1)
    # the later of two pairs on one key wins, as on a command line
    assert load_config(None, ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


# (file text, what the message must name besides the file)
FILE_CASES = [
    ("sync:\n  lidar_sweep: 5\n", ["unknown config key 'sync.lidar_sweep'", "did you mean 'sync.lidar_sweeps'"]),
    ("sync:\n  lidar_sweeps: ten\n", ["'sync.lidar_sweeps' must be an integer, got 'ten'"]),
    ("train:\n  lr:\n    x: 1\n", ["'train.lr' is a number, not a section"]),
    ("train:\n", ["'train' is a section", "got nothing"]),
    ("train:\n  lr: .nan\n", ["'train.lr' must be a finite number"]),
    ("sync:\n  1: 2\n", ["unknown config key 'sync.1'"]),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", ["key 'lr' appears twice", "line 3"]),
    ("_base_: [a.yaml]\n", ["_base_ must be a file name"]),
]


@pytest.mark.parametrize("text,names", FILE_CASES, ids=[c[0].replace("\n", " ") for c in FILE_CASES])
def test_bad_file_is_one_line_naming_the_key_and_file(tmp_path, text, names):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = _one_line_config_error(str(path), ())
    assert msg.startswith(f"{path}:"), msg
    for t in names:
        assert t in msg, msg


def test_mistake_in_a_base_file_names_the_base(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("sync:\n  radar_sweps: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nname: child\n")
    msg = _one_line_config_error(str(child), ())
    assert msg.startswith(f"{base}:") and "sync.radar_sweps" in msg, msg


def test_cross_field_error_after_override_names_file_and_overrides():
    msg = _one_line_config_error(TINY, ["sync.camera_match=closest"])
    assert msg.startswith(f"{TINY} with --set sync.camera_match=closest:") and "sync.camera_match" in msg, msg


CLI_CASES = [
    (["--set", "train.lr=0.1", "--set", "train.lr.x=1"], "--set train.lr.x=1: 'train.lr' is a number, not a section"),
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["--set", "train.lr"], "--set 'train.lr': expected key=value"),
    (["--set", "sync.lidar_sweeps=1.5"], "'sync.lidar_sweeps' must be an integer, got 1.5"),
]


@pytest.mark.parametrize("args,expected", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_eval_cli_config_error_exits_2_in_one_line(tmp_path, capsys, args, expected):
    rc = _eval_main()([TINY, "--oracle", "--dataroot", str(tmp_path / "no-root"), "--out", str(tmp_path / "out"),
                       *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval: ") and expected in lines[0], err


def test_eval_cli_config_file_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + TINY + "\nmodel:\n  bev_chanels: 8\n")
    rc = _eval_main()([str(bad), "--oracle", "--dataroot", str(tmp_path / "no-root"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "model.bev_chanels" in lines[0], err


def _train_main():
    spec = importlib.util.spec_from_file_location("train_tool_config_errors", os.path.join(PROJECT, "tools", "train.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.parametrize("tool", ["train", "eval"])
@pytest.mark.parametrize("kind", ["missing", "mismatched"])
def test_configured_pretrained_weights_that_do_not_fit_stop_train_and_eval_in_one_line(
        tmp_path, capsys, real_root, tool, kind):
    """model.camera.pretrained names a file that is not there, or is a backbone of another width:
    one line naming the key, the file and (for a mismatch) the parameter, exit 2, before any training."""
    import torch

    from perception.models.camera import resnet18

    path = tmp_path / "imagenet_r18.pth"
    if kind == "mismatched":
        torch.save(resnet18(64).state_dict(), path)  # an ImageNet-width backbone into the width-16 tiny model
    over = ["--set", f"model.camera.pretrained={path}"]
    if tool == "train":
        rc = _train_main()([TINY, "--dataroot", real_root, "--version", "v1.0-trainval", "--work-dir",
                            str(tmp_path / "w"), "--max-steps", "1", "--no-progress",
                            "--set", "train.split=val", f"model.camera.pretrained={path}"])
    else:
        rc = _eval_main()([TINY, "--checkpoint", str(tmp_path / "ckpt.pt"), "--dataroot", real_root,
                           "--out", str(tmp_path / "out"), *over])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{tool}: ")]
    assert len(lines) == 1, err
    assert f"model.camera.pretrained {path}" in lines[0]
    assert ("file not found" if kind == "missing" else "conv1.weight") in lines[0], lines[0]
    ckpts = tmp_path / "w" / "checkpoints"
    assert not (ckpts.exists() and any(ckpts.iterdir())), "no training step may run"
