"""Damaged copies of the real nuScenes root through train (2 steps), eval and replay (3 frames):
every damaged file is named in the run's summary (never silent), --strict makes it an error, and a
broken calibration stops each tool with one line (never a traceback).

The copy links every file of the real root and replaces the damaged ones with real files: a
truncated LiDAR sweep, a radar PCD whose header promises more points than it holds, a corrupt
JPEG, an empty JPEG and a missing camera file, all in the first keyframe of scene-0523.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import PROJECT
from test_engine import CONFIG, ENGINE, _train_tool

REAL = os.path.join(os.path.dirname(PROJECT), "shared", "data", "nuscenes-real", "trainval-extract")
VERSION = "v1.0-trainval"
pytestmark = pytest.mark.skipif(not os.path.isdir(REAL), reason=f"real nuScenes extract not found at {REAL}")


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(PROJECT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _linked_copy(dst: str, copy_tables: bool = False) -> str:
    os.makedirs(dst)
    for name in os.listdir(REAL):
        src = os.path.join(REAL, name)
        if name == "samples":
            for ch in os.listdir(src):
                os.makedirs(os.path.join(dst, name, ch))
                for f in os.listdir(os.path.join(src, ch)):
                    os.symlink(os.path.join(src, ch, f), os.path.join(dst, name, ch, f))
        elif name == VERSION and copy_tables:
            os.makedirs(os.path.join(dst, name))
            for f in os.listdir(src):
                with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, name, f), "wb") as b:
                    b.write(a.read())
        else:
            os.symlink(src, os.path.join(dst, name))
    return dst


def _first_keyframe_files(root: str) -> dict:
    """channel -> path of the first keyframe's file of each channel (scene-0523's first sample)."""
    tables = os.path.join(REAL, VERSION)
    scenes = {s["name"]: s for s in json.load(open(os.path.join(tables, "scene.json")))}
    first = scenes["scene-0523"]["first_sample_token"]
    calib = {c["token"]: c["sensor_token"] for c in json.load(open(os.path.join(tables, "calibrated_sensor.json")))}
    sensors = {s["token"]: s["channel"] for s in json.load(open(os.path.join(tables, "sensor.json")))}
    out = {}
    for sd in json.load(open(os.path.join(tables, "sample_data.json"))):
        if sd["sample_token"] == first and sd["is_key_frame"]:
            out[sensors[calib[sd["calibrated_sensor_token"]]]] = os.path.join(root, sd["filename"])
    return out


def _replace(path: str, data: bytes) -> None:
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    root = _linked_copy(str(tmp_path_factory.mktemp("damaged") / "root"))
    files = _first_keyframe_files(root)
    lidar = open(files["LIDAR_TOP"], "rb").read()
    _replace(files["LIDAR_TOP"], lidar[:len(lidar) // 2 + 7])  # truncated mid-point
    radar = open(files["RADAR_FRONT"], "rb").read()
    head, _, body = radar.partition(b"DATA binary\n")
    points = int(head.split(b"POINTS ")[1].split()[0])
    lied = head.replace(f"POINTS {points}".encode(), f"POINTS {points + 500}".encode())
    _replace(files["RADAR_FRONT"], lied + b"DATA binary\n" + body[:43 * points])  # the header lies
    _replace(files["CAM_FRONT"], b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)  # corrupt JPEG
    _replace(files["CAM_BACK"], b"")  # empty JPEG
    os.unlink(files["CAM_FRONT_LEFT"])  # missing file
    damaged = {ch: files[ch] for ch in ("LIDAR_TOP", "RADAR_FRONT", "CAM_FRONT", "CAM_BACK", "CAM_FRONT_LEFT")}
    return root, damaged


def _one_error_line(err: str, prefix: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


TRAIN = ["train.split=val", "train.batch_size=1", "train.num_workers=0", "train.augment.enabled=false",
         "data.cameras=[CAM_FRONT, CAM_BACK, CAM_FRONT_LEFT]"]


def test_train_on_damaged_files_names_each_in_the_summary_and_strict_stops(damaged, tmp_path, capsys):
    root, bad = damaged
    work = str(tmp_path / "work")
    # 2 steps of batch 1 see 2 of the 81 samples: the damaged first keyframe of scene-0523 is index 0
    # of the val index, and an unshuffled sampler makes it the first step.
    argv = [CONFIG, "--dataroot", root, "--version", VERSION, "--work-dir", work, "--max-steps", "2",
            "--no-progress", "--set", *ENGINE, *TRAIN]
    import perception.engine.trainer as trainer

    real_sampler = trainer.ResumableSampler

    def unshuffled(*a, **k):
        k["shuffle"] = False
        return real_sampler(*a, **k)

    trainer.ResumableSampler = unshuffled
    try:
        assert _tool("train")(argv) == 0
        err = capsys.readouterr().err
        end = [json.loads(line) for line in open(os.path.join(work, "log.jsonl"))][-1]
        assert end["event"] == "end"
        for ch, path in bad.items():
            assert ch in end["unreadable_files"], (ch, end["unreadable_files"])
            assert end["unreadable_files"][ch]["first"][0]["path"] == path
            assert any(line.startswith(f"data problems: {ch}:") and path in line for line in err.splitlines()), err
        # --strict: the first unreadable file is an error naming it
        rc = _tool("train")(argv[:6] + [str(tmp_path / "strict")] + argv[7:] + ["--strict"])
        line = _one_error_line(capsys.readouterr().err, "train: error:")
        assert rc == 2 and any(p in line for p in bad.values()) and "--strict" in line
    finally:
        trainer.ResumableSampler = real_sampler


def test_eval_on_damaged_files_reports_data_problems(damaged, tmp_path, capsys):
    root, bad = damaged
    out = str(tmp_path / "eval")
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", out, "--no-plots"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    report = open(os.path.join(out, "report.md")).read()
    section = report.split("## Data problems")[1].split("\n## ")[0]
    # (a keyframes-only root also lacks every LiDAR and radar sweep: those are counted too)
    lidar = [line for line in section.splitlines() if line.startswith("- LIDAR_TOP: ")]
    radar = [line for line in section.splitlines() if line.startswith("- RADAR_FRONT: ")]
    assert len(lidar) == 1 and bad["LIDAR_TOP"] in lidar[0] and "truncated" in lidar[0]
    assert len(radar) == 1 and bad["RADAR_FRONT"] in radar[0]
    assert "unreadable file" in cap.out and "see report" in cap.out
    assert any(line.startswith("eval: data problems: LIDAR_TOP") for line in cap.err.splitlines())
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", str(tmp_path / "strict"), "--no-plots", "--strict"])
    line = _one_error_line(capsys.readouterr().err, "eval:")
    assert rc == 2 and any(p in line for p in bad.values())


def test_replay_on_damaged_files_names_the_file_per_frame(damaged, tmp_path, capsys):
    root, bad = damaged
    out = str(tmp_path / "replay.mp4")
    rc = _tool("replay")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--out", out,
                          "--headless", "--reference", "keyframes", "--max-frames", "3",
                          "--set", "data.cameras=[CAM_FRONT, CAM_BACK, CAM_FRONT_LEFT]"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    log = json.load(open(os.path.splitext(out)[0] + ".json"))
    frames = log["frames"] if isinstance(log, dict) and "frames" in log else log
    first = frames[0] if isinstance(frames, list) else None
    assert first is not None
    st = first["status"]
    assert not st["LIDAR_TOP"]["present"] and bad["LIDAR_TOP"] in st["LIDAR_TOP"]["reason"]
    assert bad["CAM_FRONT"] in st["CAM_FRONT"]["reason"] and bad["CAM_BACK"] in st["CAM_BACK"]["reason"]
    assert any(bad["LIDAR_TOP"] in line for line in first["status_line"])
    assert any(line.startswith("data problems: LIDAR_TOP") and bad["LIDAR_TOP"] in line for line in cap.out.splitlines())


@pytest.fixture(scope="module")
def zero_focal(tmp_path_factory):
    root = _linked_copy(str(tmp_path_factory.mktemp("calib") / "root"), copy_tables=True)
    path = os.path.join(root, VERSION, "calibrated_sensor.json")
    rows = json.load(open(path))
    for r in rows:
        if r["camera_intrinsic"]:
            r["camera_intrinsic"][0][0] = 0.0
            break
    json.dump(rows, open(path, "w"))
    return root


def test_zero_focal_length_is_one_line_in_every_tool(zero_focal, tmp_path, capsys):
    root = zero_focal
    rc = _tool("train")([CONFIG, "--dataroot", root, "--version", VERSION, "--work-dir", str(tmp_path / "w"),
                         "--max-steps", "2", "--no-progress", "--set", *ENGINE, *TRAIN[:3]])
    line = _one_error_line(capsys.readouterr().err, "train: error:")
    assert rc == 2 and "focal length" in line
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", str(tmp_path / "e"), "--no-plots"])
    line = _one_error_line(capsys.readouterr().err, "eval:")
    assert rc == 2 and "focal length" in line
    rc = _tool("replay")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--out",
                          str(tmp_path / "r.mp4"), "--headless", "--max-frames", "3"])
    line = _one_error_line(capsys.readouterr().err, "replay:")
    assert rc == 2 and "focal length" in line
