"""tools/doctor.py: clean on the real scenes, exactly the injected problems on a broken copy,
exit status 2 for unusable arguments."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PROJECT, REAL_VERSION

sys.path.insert(0, os.path.join(PROJECT, "tools"))
import doctor  # noqa: E402  (tools/doctor.py)


def test_real_scene_is_healthy(real_root, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = doctor.main(["--dataroot", real_root, "--version", REAL_VERSION, "--scene", "scene-0916",
                      "--keyframes-only", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert len(report["keyframes"]) == 41
    some = next(iter(report["keyframes"].values()))
    assert set(some) == {"LIDAR_TOP", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK",
                         "CAM_BACK_LEFT", "CAM_BACK_RIGHT", "RADAR_FRONT", "RADAR_FRONT_LEFT",
                         "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT"}
    assert -50_000 <= some["CAM_FRONT"]["offset_us"] <= -20_000
    assert report["scenes"]["scene-0916"]["channels"]["LIDAR_TOP"]["count"] == 399
    assert "0 problems" in printed


def test_without_keyframes_only_absent_sweeps_are_one_line_per_channel(real_root, capsys):
    rc = doctor.main(["--dataroot", real_root, "--version", REAL_VERSION, "--scene", "scene-0523", "-q"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("PROBLEM")]
    assert rc == 1
    assert len(lines) == 12 and all("sweep files are absent" in ln for ln in lines)


@pytest.fixture
def broken_root(real_root, tmp_path):
    """A copy of the real root (tables copied, files linked) with injected problems; returns the root
    and the set of (kind, where) each injection must produce."""
    root = tmp_path / "broken"
    shutil.copytree(os.path.join(real_root, REAL_VERSION), root / REAL_VERSION)
    os.symlink(os.path.join(real_root, "maps"), root / "maps")
    for ch in os.listdir(os.path.join(real_root, "samples")):
        (root / "samples" / ch).mkdir(parents=True)
        for name in os.listdir(os.path.join(real_root, "samples", ch)):
            os.symlink(os.path.join(real_root, "samples", ch, name), root / "samples" / ch / name)
    tables = root / REAL_VERSION
    sd = json.loads((tables / "sample_data.json").read_text())
    scene = json.loads((tables / "scene.json").read_text())
    samples = {s["token"]: s for s in json.loads((tables / "sample.json").read_text())}
    first = samples[next(s for s in scene if s["name"] == "scene-0916")["first_sample_token"]]
    kf = samples[samples[first["next"]]["next"]]  # the third keyframe of scene-0916
    by_token = {r["token"]: r for r in sd}
    for s in samples.values():  # the devkit's sample['data']: keyframe sample_data per channel
        s["data"] = {r["filename"].split("/")[1]: r["token"] for r in sd
                     if r["is_key_frame"] and r["sample_token"] == s["token"]}
    expected = set()

    def replace(token, data: bytes):
        rel = by_token[token]["filename"]
        os.unlink(root / rel)
        (root / rel).write_bytes(data)
        return rel

    lidar_rel = by_token[kf["data"]["LIDAR_TOP"]]["filename"]
    blob = open(os.path.join(real_root, lidar_rel), "rb").read()
    expected.add(("lidar_size", replace(kf["data"]["LIDAR_TOP"], blob[:-6])))
    kf2 = samples[kf["next"]]
    pts = np.fromfile(os.path.join(real_root, by_token[kf2["data"]["LIDAR_TOP"]]["filename"]), "<f4").copy()
    pts[11] = np.nan
    expected.add(("nonfinite_points", replace(kf2["data"]["LIDAR_TOP"], pts.tobytes())))
    radar_rel = by_token[kf["data"]["RADAR_FRONT"]]["filename"]
    rblob = open(os.path.join(real_root, radar_rel), "rb").read()
    expected.add(("radar_header", replace(kf["data"]["RADAR_FRONT"], rblob.replace(b"POINTS ", b"POINTS 9", 1)
                                          .replace(b"WIDTH ", b"WIDTH 9", 1))))
    img_rel = by_token[kf["data"]["CAM_BACK"]]["filename"]
    os.unlink(root / img_rel)
    expected.add(("missing_file", img_rel))
    jblob = open(os.path.join(real_root, by_token[kf2["data"]["CAM_FRONT"]]["filename"]), "rb").read()
    expected.add(("unreadable_image", replace(kf2["data"]["CAM_FRONT"], jblob[:4000])))
    # a LiDAR sweep stamped 1 ms before its predecessor (and its pose with it)
    lidar_sweeps = [r for r in sd if r["filename"].startswith("sweeps/LIDAR_TOP/n015") and not r["is_key_frame"]]
    victim = sorted(lidar_sweeps, key=lambda r: r["timestamp"])[40]
    prev_t = by_token[victim["prev"]]["timestamp"]
    victim["timestamp"] = prev_t - 1000
    poses = json.loads((tables / "ego_pose.json").read_text())
    next(p for p in poses if p["token"] == victim["ego_pose_token"])["timestamp"] = prev_t - 1000
    (tables / "ego_pose.json").write_text(json.dumps(poses))
    expected.add(("out_of_order", f"sample_data {victim['token']}"))
    (tables / "sample_data.json").write_text(json.dumps(sd))
    # a camera calibration of the other scene that is not a rotation
    cal = json.loads((tables / "calibrated_sensor.json").read_text())
    cam_token = samples[next(s for s in scene if s["name"] == "scene-0523")["first_sample_token"]]["data"]["CAM_FRONT"]
    cs = next(c for c in cal if c["token"] == by_token[cam_token]["calibrated_sensor_token"])
    cs["rotation"] = [0.7, -0.5, 0.5, -0.5]
    (tables / "calibrated_sensor.json").write_text(json.dumps(cal))
    expected.add(("calibration", f"calibrated_sensor {cs['token']}"))
    return str(root), expected


def test_reports_exactly_the_injected_problems(broken_root, tmp_path, capsys):
    root, expected = broken_root
    out = tmp_path / "r.json"
    rc = doctor.main(["--dataroot", root, "--version", REAL_VERSION, "--keyframes-only", "-q", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 1
    report = json.loads(out.read_text())
    found = {(p["kind"], p["where"]) for p in report["problems"]}
    assert found == expected, printed
    lines = [ln for ln in printed.splitlines() if ln.startswith("PROBLEM")]
    assert len(lines) == len(expected)
    assert any("size" in ln and "not a multiple of 20" in ln for ln in lines)
    assert any("field 'rotation' is not a rotation" in ln for ln in lines)


@pytest.mark.parametrize("args,needle", [
    (["--dataroot", "/nonexistent/root"], "data root not found"),
    (["--dataroot", "{real}", "--version", "v1.0-mini"], "version folder not found"),
    (["--dataroot", "{real}", "--scene", "scene-9999"], "no scene 'scene-9999'"),
    (["--dataroot", "{real}", "--set", "sync.lidar_sweep=3"], "unknown config key 'sync.lidar_sweep'"),
])
def test_unusable_arguments_exit_2_with_one_line(real_root, args, needle):
    args = [a.replace("{real}", real_root) for a in args]
    res = subprocess.run([sys.executable, os.path.join(PROJECT, "tools", "doctor.py"), *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
