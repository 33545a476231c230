"""Damaged copies of the real nuScenes root through train (2 steps), eval and replay (3 frames):
every damaged file is named in the run's summary (never silent), --strict makes it an error, and a
broken calibration stops each tool with one line (never a traceback).

The copy links every file of the real root and replaces the damaged ones with real files: a
truncated LiDAR sweep, a radar PCD whose header promises more points than it holds, a corrupt
JPEG, an empty JPEG and a missing camera file, all in the first keyframe of scene-0523.

Also through doctor, train, eval and replay: NaN / inf points (a LiDAR sweep and a radar PCD of that
keyframe: the points are dropped with one warning naming the file and never reach the model), a
LiDAR keyframe whose timestamp is swapped with the next sweep's (doctor: out of order, exit 1; the
others run, using the messages in timestamp order, with one warning naming the sample_data record)
and a dangling ego_pose token (exit 2, one line naming table, row and token).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

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

    real_make_sampler = trainer.make_sampler

    def unshuffled(plans, cfg, world_size=1, rank=0):  # the trainer's sampler factory, in index order
        return trainer.ResumableSampler(len(plans), cfg.train.batch_size, world_size, rank, cfg.train.seed,
                                        shuffle=False)

    trainer.make_sampler = unshuffled
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
        trainer.make_sampler = real_make_sampler


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


# ---------------------------------------------------------------------------------------------
# NaN points, swapped timestamps, a dangling token: doctor, train (2 steps), eval, replay (3 frames)
# ---------------------------------------------------------------------------------------------
def _tables():
    return {name: json.load(open(os.path.join(REAL, VERSION, f"{name}.json")))
            for name in ("scene", "sample_data", "ego_pose")}


def _first_sample_lidar(tables) -> dict:
    """The LIDAR_TOP sample_data row of scene-0523's first keyframe."""
    first = next(s for s in tables["scene"] if s["name"] == "scene-0523")["first_sample_token"]
    return next(r for r in tables["sample_data"] if r["sample_token"] == first and r["is_key_frame"]
                and r["filename"].startswith("samples/LIDAR_TOP/"))


def _warnings(caplog, needle):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


def _no_traceback(*texts):
    for text in texts:
        assert "Traceback" not in text, text[-3000:]


def _train_seeing_batches(root, work, monkeypatch, extra=()):
    """tools/train.py for 2 unshuffled steps (val index 0 is scene-0523's first keyframe); returns the
    exit code and, per collated batch, (sample tokens, timestamps, every LiDAR and radar value finite)."""
    import perception.engine.trainer as trainer

    real_collate = trainer.collate_samples
    seen = []

    def unshuffled(plans, cfg, world_size=1, rank=0):  # the trainer's sampler factory, in index order
        return trainer.ResumableSampler(len(plans), cfg.train.batch_size, world_size, rank, cfg.train.seed,
                                        shuffle=False)

    def collate(samples):
        out = real_collate(samples)
        b = out.batch
        finite = all(bool(torch.isfinite(p).all()) for p in list(b.lidar_points) + list(b.radar_points))
        seen.append((list(b.sample_tokens), list(b.timestamps), finite))
        return out

    monkeypatch.setattr(trainer, "make_sampler", unshuffled)
    monkeypatch.setattr(trainer, "collate_samples", collate)
    rc = _tool("train")([CONFIG, "--dataroot", root, "--version", VERSION, "--work-dir", work, "--max-steps", "2",
                         "--no-progress", "--set", *ENGINE, *TRAIN, *extra])
    return rc, seen


@pytest.fixture(scope="module")
def nan_points(tmp_path_factory):
    """NaN / inf values in the first keyframe of scene-0523: every 100th LiDAR point's x is NaN and one
    more point's intensity inf; the RADAR_FRONT return nearest the sensor has a NaN RCS (a field the
    model reads) and another a NaN x. Returns (root, {channel: (path, points dropped, points in the file)})."""
    from perception.data import io

    root = _linked_copy(str(tmp_path_factory.mktemp("nan") / "root"))
    files = _first_keyframe_files(root)
    pts = np.fromfile(files["LIDAR_TOP"], "<f4").reshape(-1, 5).copy()
    pts[::100, 0] = np.nan
    pts[5, 3] = np.inf
    _replace(files["LIDAR_TOP"], pts.tobytes())
    blob = open(files["RADAR_FRONT"], "rb").read()
    dtype, count, offset = io.radar_pcd_layout(files["RADAR_FRONT"], blob)
    rec = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).copy()
    near = int(np.argmin(rec["x"].astype(float) ** 2 + rec["y"].astype(float) ** 2))
    rec["rcs"][near] = np.nan
    rec["x"][(near + 1) % count] = np.nan
    _replace(files["RADAR_FRONT"], blob[:offset] + rec.tobytes() + blob[offset + rec.nbytes:])
    return root, {"LIDAR_TOP": (files["LIDAR_TOP"], len(range(0, len(pts), 100)) + 1, len(pts)),
                  "RADAR_FRONT": (files["RADAR_FRONT"], 2, count)}


def _nan_warnings(caplog, bad):
    """Exactly one warning per damaged file, naming it and the number of points dropped."""
    lidar, n_lidar, _ = bad["LIDAR_TOP"]
    radar, n_radar, _ = bad["RADAR_FRONT"]
    assert _warnings(caplog, lidar) == [f"{lidar}: dropped {n_lidar} LiDAR points with NaN or inf values"], caplog.text
    assert _warnings(caplog, radar) == [f"{radar}: dropped {n_radar} radar returns with NaN or inf values"], caplog.text


def test_nan_points_doctor_names_each_file_exit_1(nan_points, capsys):
    root, bad = nan_points
    rc = _tool("doctor")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--keyframes-only", "-q"])
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err)
    lines = [line for line in cap.out.splitlines() if line.startswith("PROBLEM")]
    lidar, n_lidar, total = bad["LIDAR_TOP"]
    radar, n_radar, _ = bad["RADAR_FRONT"]
    assert rc == 1 and sorted(lines) == sorted([
        f"PROBLEM nonfinite_points: scene-0523 LIDAR_TOP {os.path.relpath(lidar, root)}: "
        f"{n_lidar} of {total} points have NaN or inf values",
        f"PROBLEM nonfinite_points: scene-0523 RADAR_FRONT {os.path.relpath(radar, root)}: "
        f"{n_radar} NaN or inf values in positions, RCS or velocities"]), cap.out


def test_nan_points_train_drops_them_before_the_model(nan_points, tmp_path, capsys, caplog, monkeypatch):
    root, bad = nan_points
    caplog.set_level(logging.WARNING)
    work = str(tmp_path / "work")
    rc, seen = _train_seeing_batches(root, work, monkeypatch)
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err, caplog.text)
    assert rc == 0, cap.err[-3000:]
    assert json.loads(open(os.path.join(work, "log.jsonl")).readlines()[-1])["event"] == "end"
    first = _first_sample_lidar(_tables())["sample_token"]
    assert len(seen) == 2 and first in seen[0][0], seen  # the damaged keyframe was trained on
    assert all(finite for _, _, finite in seen), seen  # and no NaN / inf value reached the model
    _nan_warnings(caplog, bad)


def test_nan_points_eval_completes_naming_each_file(nan_points, tmp_path, capsys, caplog):
    root, bad = nan_points
    caplog.set_level(logging.WARNING)
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", str(tmp_path / "eval"), "--no-plots"])
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err, caplog.text)
    assert rc == 0 and os.path.isfile(tmp_path / "eval" / "report.md"), cap.err[-3000:]
    _nan_warnings(caplog, bad)


def _replay_three_keyframes(root, tmp_path, capsys, caplog) -> list:
    """tools/replay.py over 3 keyframes of scene-0523 (warnings captured): exit 0, no traceback;
    returns the per-frame records of its JSON."""
    caplog.set_level(logging.WARNING)
    out = str(tmp_path / "replay.mp4")
    rc = _tool("replay")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--out", out,
                          "--headless", "--reference", "keyframes", "--max-frames", "3"])
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err, caplog.text)
    assert rc == 0, cap.err[-3000:]
    return json.load(open(os.path.splitext(out)[0] + ".json"))["frames"]


def test_nan_points_replay_frame_holds_only_finite_points(nan_points, tmp_path, capsys, caplog):
    root, bad = nan_points
    frames = _replay_three_keyframes(root, tmp_path, capsys, caplog)
    _, n_lidar, total = bad["LIDAR_TOP"]
    assert len(frames) == 3 and frames[0]["lidar_token"] == _first_sample_lidar(_tables())["token"]
    assert frames[0]["status"]["LIDAR_TOP"]["present"] and frames[0]["status"]["RADAR_FRONT"]["present"]
    # a keyframes-only root: the frame's LiDAR is its keyframe sweep, less the non-finite points and
    # the car's own returns (sync.lidar_remove_close of the default config)
    from perception.config import load_config
    from perception.sync.synchronizer import close_mask

    pts = np.fromfile(bad["LIDAR_TOP"][0], "<f4").reshape(-1, 5)
    n_close = int(close_mask(pts[np.isfinite(pts).all(axis=1)], load_config(None).sync.lidar_remove_close).sum())
    assert n_close > 1000 and frames[0]["num_lidar_points"] == total - n_lidar - n_close
    _nan_warnings(caplog, bad)


@pytest.fixture(scope="module")
def swapped_timestamps(tmp_path_factory):
    """scene-0523's first LiDAR keyframe and the sweep after it with their timestamps (and their ego
    poses' timestamps, one clock) swapped: the sweep is stamped before its predecessor on the chain.
    Returns (root, keyframe row, sweep row, expected warning)."""
    root = _linked_copy(str(tmp_path_factory.mktemp("swapped") / "root"), copy_tables=True)
    tables = _tables()
    key = _first_sample_lidar(tables)
    sweep = next(r for r in tables["sample_data"] if r["token"] == key["next"])
    assert not sweep["is_key_frame"] and sweep["timestamp"] > key["timestamp"]
    t_key, t_sweep = key["timestamp"], sweep["timestamp"]
    key["timestamp"], sweep["timestamp"] = t_sweep, t_key
    poses = {p["token"]: p for p in tables["ego_pose"]}
    poses[key["ego_pose_token"]]["timestamp"], poses[sweep["ego_pose_token"]]["timestamp"] = t_sweep, t_key
    for name in ("sample_data", "ego_pose"):
        with open(os.path.join(root, VERSION, f"{name}.json"), "w") as f:
            json.dump(tables[name], f)
    warning = (f"scene-0523 LIDAR_TOP: sample_data {sweep['token']} timestamp {t_key} is before the previous "
               f"message's ({t_sweep}); the channel's messages are used in timestamp order")
    return root, key, sweep, warning


def _one_swap_warning(caplog, warning):
    lines = _warnings(caplog, "is before the previous message's")
    assert len(lines) == 1 and lines[0].startswith(warning), (caplog.text, warning)


def test_swapped_timestamps_doctor_reports_out_of_order_exit_1(swapped_timestamps, capsys):
    root, key, sweep, _ = swapped_timestamps
    rc = _tool("doctor")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--keyframes-only", "-q"])
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err)
    lines = [line for line in cap.out.splitlines() if line.startswith("PROBLEM")]
    order = [line for line in lines if line.startswith("PROBLEM out_of_order")]
    assert rc == 1 and order == [
        f"PROBLEM out_of_order: scene-0523 LIDAR_TOP sample_data {sweep['token']}: timestamp {sweep['timestamp']} "
        f"is before the previous message's ({key['timestamp']})"], cap.out
    # the poses moved with their messages: no pose-time problem; what else is reported is the
    # consequence on the first keyframe's association (its cameras and radars now match elsewhere)
    assert not any(line.startswith("PROBLEM pose_time") for line in lines), cap.out


def test_swapped_timestamps_train_runs_in_time_order_and_says_so(swapped_timestamps, tmp_path, capsys, caplog,
                                                                   monkeypatch):
    root, key, _, warning = swapped_timestamps
    caplog.set_level(logging.WARNING)
    work = str(tmp_path / "work")
    rc, seen = _train_seeing_batches(root, work, monkeypatch)
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err, caplog.text)
    assert rc == 0, cap.err[-3000:]
    assert json.loads(open(os.path.join(work, "log.jsonl")).readlines()[-1])["event"] == "end"
    # the swapped keyframe was trained on, at its stamped time
    assert len(seen) == 2 and seen[0][0] == [key["sample_token"]] and seen[0][1] == [key["timestamp"]], seen
    _one_swap_warning(caplog, warning)


def test_swapped_timestamps_eval_runs_and_says_so(swapped_timestamps, tmp_path, capsys, caplog):
    root, _, _, warning = swapped_timestamps
    caplog.set_level(logging.WARNING)
    out = tmp_path / "eval"
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", str(out), "--no-plots"])
    cap = capsys.readouterr()
    _no_traceback(cap.out, cap.err, caplog.text)
    assert rc == 0, cap.err[-3000:]
    # the oracle still finds every box: no sample got another's frame or pose
    assert json.load(open(out / "metrics_summary.json"))["mean_ap"] >= 0.999
    _one_swap_warning(caplog, warning)


def test_swapped_timestamps_replay_runs_in_time_order_and_says_so(swapped_timestamps, tmp_path, capsys, caplog):
    root, key, _, warning = swapped_timestamps
    frames = _replay_three_keyframes(root, tmp_path, capsys, caplog)
    assert len(frames) == 3 and frames[0]["lidar_token"] == key["token"]
    assert frames[0]["timestamp"] == key["timestamp"]  # the stamped (swapped) time
    assert [f["timestamp"] for f in frames] == sorted({f["timestamp"] for f in frames})
    _one_swap_warning(caplog, warning)


MISSING = "0" * 32  # a token no table holds


@pytest.fixture(scope="module")
def dangling_pose(tmp_path_factory):
    """sample_data row 3 points at an ego_pose that does not exist; returns (root, the expected line)."""
    root = _linked_copy(str(tmp_path_factory.mktemp("dangling") / "root"), copy_tables=True)
    path = os.path.join(root, VERSION, "sample_data.json")
    rows = json.load(open(path))
    rows[3]["ego_pose_token"] = MISSING
    with open(path, "w") as f:
        json.dump(rows, f)
    return root, f"{path} row {rows[3]['token']}: ego_pose_token {MISSING} not in ego_pose.json"


def test_dangling_pose_token_is_one_line_exit_2_in_every_tool(dangling_pose, tmp_path, capsys):
    root, expected = dangling_pose
    rc = _tool("train")([CONFIG, "--dataroot", root, "--version", VERSION, "--work-dir", str(tmp_path / "w"),
                         "--max-steps", "2", "--no-progress", "--set", *ENGINE, *TRAIN[:3]])
    assert rc == 2 and _one_error_line(capsys.readouterr().err, "train: error:") == f"train: error: {expected}"
    rc = _tool("eval")([CONFIG, "--oracle", "--dataroot", root, "--version", VERSION, "--split", "val",
                        "--out", str(tmp_path / "e"), "--no-plots"])
    assert rc == 2 and _one_error_line(capsys.readouterr().err, "eval:") == f"eval: {expected}"
    rc = _tool("replay")(["--dataroot", root, "--version", VERSION, "--scene", "scene-0523", "--out",
                          str(tmp_path / "r.mp4"), "--headless", "--max-frames", "3"])
    assert rc == 2 and _one_error_line(capsys.readouterr().err, "replay:") == f"replay: {expected}"
