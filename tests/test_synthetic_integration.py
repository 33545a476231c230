"""Generated drives through the data layer (issue 3): the synchronizer reproduces the generator's
keyframe association for every channel, and tools/doctor.py finds nothing on a clean root and
exactly the injected failures (as the generator's manifest records them) on broken ones.

Each root is generated once per module: one or two scenes of 3 s of the tiny preset.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import PROJECT
from perception.data.synthetic import Failures, generate, preset
from perception.structures import CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS

sys.path.insert(0, os.path.join(PROJECT, "tools"))
import doctor  # noqa: E402  (tools/doctor.py)

VERSION = "v1.0-trainval"
DURATION_S = 3.0
FILE_KINDS = {"missing_file", "lidar_size", "radar_header", "unreadable_image", "corrupt_file", "nonfinite_points"}


def _make(factory, name, seed, **overrides):
    out = str(factory.mktemp(name) / "root")
    cfg = preset("tiny", duration_s=DURATION_S, **overrides)
    summary = generate(out, cfg, seed=seed)
    return out, summary


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _make(tmp_path_factory, "clean", 11)  # 1 train + 1 val scene


FAILURES = {
    "drop": dict(failures=Failures(drop_rate=0.3)),
    "kill_middle": dict(failures=Failures(kill_camera=("CAM_BACK", 0.9, 2.2))),
    "kill_start": dict(failures=Failures(kill_camera=("CAM_FRONT_LEFT", 0.0, 0.7))),
    "blackout": dict(failures=Failures(lidar_blackout=(1.0, 1.4))),
    # 10 ms: above the clocks' real scatter (LiDAR 5 ms, cameras 3 ms), below half a LiDAR period so
    # that no jittered sweep looks like a lost one; camera sweeps give each camera 36 images to judge.
    "jitter": dict(failures=Failures(timestamp_jitter_us=10_000), camera_sweeps=True),
    "corrupt": dict(failures=Failures(corrupt_files=5)),
    # Everything at once but jitter, whose +-10 ms would make a single lost radar message (2x period)
    # indistinguishable from two (the generator cannot then say which runs are detectable).
    "combined": dict(failures=Failures(drop_rate=0.2, kill_camera=("CAM_BACK", 0.9, 2.2), lidar_blackout=(1.0, 1.4),
                                       corrupt_files=4)),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _make(tmp_path_factory, kind, 5, train_scenes=1, val_scenes=0, **FAILURES[kind])
        return cache[kind]

    return get


def _run_doctor(root, tmp_path, capsys, *extra):
    out = tmp_path / "report.json"
    rc = doctor.main(["--dataroot", root, "--version", VERSION, "-q", "--json", str(out), *extra])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    lines = [ln for ln in printed.splitlines() if ln.startswith("PROBLEM")]
    assert len(lines) == len(report["problems"])  # one printed line per problem
    return rc, report, printed


def _sample_times(root):
    """scene name -> (first, last) keyframe timestamp."""
    with open(os.path.join(root, VERSION, "scene.json")) as f:
        scenes = json.load(f)
    with open(os.path.join(root, VERSION, "sample.json")) as f:
        samples = {s["token"]: s for s in json.load(f)}
    return {s["name"]: (samples[s["first_sample_token"]]["timestamp"], samples[s["last_sample_token"]]["timestamp"])
            for s in scenes}


# -------------------------------------------------------------------------------------------------
# 1. The synchronizer reproduces the keyframe association
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["clean", "drop"])
def test_synchronizer_reproduces_keyframe_association_for_every_channel(which, clean, broken):
    from perception.config import load_config
    from perception.data.nuscenes_source import NuScenesSource
    from perception.sync.synchronizer import FrameBuilder

    root, _ = clean if which == "clean" else broken(which)
    source = NuScenesSource(root, VERSION)
    cfg = load_config(None, [])
    checked, agree = 0, 0
    for name in source.scene_names():
        fb = FrameBuilder(source, name, cfg)
        for sample_token in source.index(name).sample_tokens:
            data = source.nusc.get("sample", sample_token)["data"]
            assert set(data) == set(CAMERA_CHANNELS) | set(RADAR_CHANNELS) | {LIDAR_CHANNEL}
            ref = fb.reference_for_sample(sample_token)
            assert ref.token == data[LIDAR_CHANNEL]
            sel = fb.sync.select(ref)
            for ch in list(CAMERA_CHANNELS) + list(RADAR_CHANNELS):
                choice = sel.choices[ch]
                chosen = choice.messages[0].token if choice.messages else None
                checked += 1
                agree += chosen == data[ch]
                assert chosen == data[ch], (name, sample_token, ch, choice.offset_us, choice.reason)
    assert checked == agree == len(source.nusc.sample) * 11 and checked >= 6 * 11


# -------------------------------------------------------------------------------------------------
# 2. The doctor: clean root clean, broken roots exactly their injected failures
# -------------------------------------------------------------------------------------------------
def test_doctor_finds_nothing_on_a_clean_generated_root(clean, tmp_path, capsys):
    root, summary = clean
    assert summary["injected_failures"] == []
    rc, report, printed = _run_doctor(root, tmp_path, capsys)
    assert rc == 0, printed
    assert report["problems"] == []
    assert len(report["scenes"]) == 2 and "0 problems" in printed
    # Every keyframe association was checked (and agreed: a mismatch would be a problem).
    assert len(report["keyframes"]) == sum(s["samples"] for s in summary["scenes"])
    lidar = [sc["channels"][LIDAR_CHANNEL] for sc in report["scenes"].values()]
    assert all(c["files_checked"] == c["count"] > 50 for c in lidar)  # sweeps read too, not only keyframes


def _expected(root, injected):
    """The doctor problems each injected failure must produce, as comparable keys."""
    first_last = _sample_times(root)
    keys = set()
    for f in injected:
        if f["kind"] in ("message_dropped", "camera_killed"):
            if not f["detectable"]:
                continue
            t0, t1 = first_last[f["scene"]]
            a = f["after_timestamp"] if f["after_timestamp"] is not None else t0
            b = f["before_timestamp"] if f["before_timestamp"] is not None else t1
            if f["after_timestamp"] is not None and f["before_timestamp"] is not None:
                assert all(a < t < b for t in f["timestamps"])
            keys.add(("gap", f["scene"], f["channel"], a, b))
        elif f["kind"] == "lidar_blackout":
            keys.add(("lidar_blackout", f["scene"], f["channel"], f["filenames"][0], f["timestamps"][0],
                      f["timestamps"][-1], len(f["filenames"])))
        elif f["kind"] == "timestamp_jitter":
            for s in f["keyframe_association_broken"]:
                keys.add(("sync_mismatch", f["scene"], f["channel"], f"sample {s}"))
            if f["detectable"]:
                keys.add(("timestamp_jitter", f["scene"], f["channel"]))
        elif f["kind"] == "corrupt_file":
            keys.add(("file", f["filename"]))
        else:
            raise AssertionError(f"unknown injected failure {f['kind']}")
    return keys


def _found(report):
    keys = set()
    for p in report["problems"]:
        if p["kind"] == "gap":
            keys.add(("gap", p["scene"], p["channel"], *p["interval"]))
        elif p["kind"] == "lidar_blackout":
            keys.add(("lidar_blackout", p["scene"], p["channel"], p["where"], *p["interval"], p["count"]))
        elif p["kind"] == "timestamp_jitter":
            keys.add(("timestamp_jitter", p["scene"], p["channel"]))
        elif p["kind"] == "sync_mismatch":
            keys.add(("sync_mismatch", p["scene"], p["channel"], p["where"]))
        elif p["kind"] in FILE_KINDS:
            keys.add(("file", p["where"]))
        else:
            keys.add((p["kind"], p["scene"], p["channel"], p["where"]))
    return keys


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_doctor_reports_exactly_the_injected_failures(kind, broken, tmp_path, capsys):
    root, summary = broken(kind)
    injected = summary["injected_failures"]
    expected = _expected(root, injected)
    assert expected, f"{kind}: nothing detectable was injected; the test would prove nothing"
    rc, report, printed = _run_doctor(root, tmp_path, capsys)
    assert rc == 1
    found = _found(report)
    assert found == expected, printed
    assert len(report["problems"]) == len(expected)  # no problem reported twice


def test_injections_exercise_every_case(broken):
    """The broken roots hold what the comparison above relies on: lost LiDAR sweeps and radar runs
    of both lengths, a camera killed at keyframes inside the scene and from its start, jitter that
    broke a radar keyframe association, corrupt files of every modality."""
    inj = broken("drop")[1]["injected_failures"]
    drops = [f for f in inj if f["kind"] == "message_dropped"]
    assert any(f["channel"] == LIDAR_CHANNEL for f in drops) and all(f["detectable"] for f in drops
                                                                      if f["channel"] == LIDAR_CHANNEL)
    radar = [f for f in drops if f["channel"].startswith("RADAR")]
    assert any(f["count"] >= 2 and f["detectable"] for f in radar)
    assert any(f["count"] == 1 and not f["detectable"] for f in radar)
    for k, start in (("kill_middle", False), ("kill_start", True)):
        killed = [f for f in broken(k)[1]["injected_failures"]]
        assert len(killed) == 1 and killed[0]["kind"] == "camera_killed" and killed[0]["count"] >= 2
        assert (killed[0]["after_timestamp"] is None) == start
    jit = [f for f in broken("jitter")[1]["injected_failures"] if f["kind"] == "timestamp_jitter"]
    assert {f["channel"] for f in jit if f["detectable"]} == set(CAMERA_CHANNELS) | {LIDAR_CHANNEL}
    assert {f["channel"] for f in jit if not f["detectable"]} == set(RADAR_CHANNELS)
    assert any(f["keyframe_association_broken"] for f in jit)
    corrupt = [f["filename"] for f in broken("corrupt")[1]["injected_failures"]]
    assert len(corrupt) == 5


def test_keyframes_only_sees_just_the_keyframe_files(broken, tmp_path, capsys):
    """With --keyframes-only the LiDAR blackout is still found on the keyframe it covers, and only
    there: sweeps are not read."""
    root, summary = broken("blackout")
    (b,) = [f for f in summary["injected_failures"] if f["kind"] == "lidar_blackout"]
    key = [fn for fn in b["filenames"] if fn.startswith("samples/")]
    assert key and len(key) < len(b["filenames"])
    rc, report, printed = _run_doctor(root, tmp_path, capsys, "--keyframes-only")
    found = [p for p in report["problems"] if p["kind"] == "lidar_blackout"]
    assert [p["where"] for p in found] == key and rc == 1, printed
