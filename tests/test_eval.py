"""Offline evaluation: export conventions, the devkit run, the oracle self-check on the real scenes,
error messages, checkpoints, robustness plumbing and torchrun sharding.

Expected values come from geometry and from the devkit's definitions (a 1 m shift is a 1 m ATE, a
90 degree turn a pi/2 AOE), never from the code under test.
"""
import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from pyquaternion import Quaternion

from conftest import PROJECT, REAL_VERSION
from perception.eval import evaluate as ev
from perception.eval.export import (ExportError, detections_to_results, make_meta, write_json_atomic,
                                    write_results)
from perception.eval.report import parse_table, write_report
from perception.structures import (ATTRIBUTE_TO_ID, CLASS_TO_ID, CLASSES, NO_ATTRIBUTE, Boxes3D, Detections)

TOOL = os.path.join(PROJECT, "tools", "eval.py")
CONFIG = os.path.join(PROJECT, "configs", "default.yaml")
TP_KEYS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


def _boxes(rows, labels, attrs=None, scores=None, frame="ego"):
    n = len(rows)
    return Boxes3D(np.array(rows, float).reshape(n, 9), labels,
                   attrs if attrs is not None else [NO_ATTRIBUTE] * n,
                   scores if scores is not None else np.ones(n), np.full(n, 5), np.zeros(n),
                   [""] * n, [""] * n, frame)


def _pose(yaw, t):
    T = np.eye(4)
    T[:3, :3] = Quaternion(axis=[0, 0, 1], angle=yaw).rotation_matrix
    T[:3, 3] = t
    return T


def _run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, TOOL, *args], cwd=PROJECT, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Export conventions (no data needed)
# ---------------------------------------------------------------------------------------------
def test_export_frames_size_order_yaw_and_velocity():
    pose_yaw = math.radians(30)
    T = _pose(pose_yaw, [100.0, 200.0, 0.5])
    det = Detections("s1", 0, _boxes([[10, 0, 1, 4.0, 2.0, 1.5, 0.25, 5.0, 0.0]], [CLASS_TO_ID["car"]],
                                     scores=[0.7]))
    (box,) = detections_to_results({"s1": det}, {"s1": T})["s1"]
    c, s = math.cos(pose_yaw), math.sin(pose_yaw)
    assert box["translation"] == pytest.approx([100 + 10 * c, 200 + 10 * s, 1.5])
    assert box["size"] == pytest.approx([2.0, 4.0, 1.5])  # nuScenes (w, l, h)
    q = Quaternion(box["rotation"])
    heading = q.rotate([1.0, 0.0, 0.0])
    assert math.atan2(heading[1], heading[0]) == pytest.approx(pose_yaw + 0.25)
    assert q.rotate([0.0, 0.0, 1.0]) == pytest.approx([0, 0, 1])  # upright
    assert box["velocity"] == pytest.approx([5 * c, 5 * s])  # rotated into the global frame, not translated
    assert box["detection_name"] == "car" and box["detection_score"] == pytest.approx(0.7)
    assert box["attribute_name"] == "vehicle.parked"  # class default
    assert box["sample_token"] == "s1"


def test_export_attributes_per_class_and_devkit_accepts_every_box():
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox

    rows = [[i, 0, 0, 1, 1, 1, 0, 0, 0] for i in range(6)]
    labels = [CLASS_TO_ID[c] for c in ("car", "car", "pedestrian", "barrier", "traffic_cone", "bicycle")]
    attrs = [ATTRIBUTE_TO_ID["vehicle.moving"], ATTRIBUTE_TO_ID["pedestrian.moving"],  # wrong class -> default
             ATTRIBUTE_TO_ID["pedestrian.standing"], ATTRIBUTE_TO_ID["vehicle.parked"], NO_ATTRIBUTE,
             ATTRIBUTE_TO_ID["cycle.with_rider"]]
    res = detections_to_results({"s": Detections("s", 0, _boxes(rows, labels, attrs))}, {"s": np.eye(4)})
    got = {b["translation"][0]: b["attribute_name"] for b in res["s"]}
    assert got == {0: "vehicle.moving", 1: "vehicle.parked", 2: "pedestrian.standing", 3: "", 4: "",
                   5: "cycle.with_rider"}
    boxes = EvalBoxes.deserialize(res, DetectionBox)  # the devkit's own validation
    assert len(boxes["s"]) == 6


def test_export_keeps_top_500_by_score_and_writes_strict_json(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    rows = np.zeros((n, 9))
    rows[:, 0] = np.arange(n)
    rows[:, 3:6] = 1.0
    rows[:, 7] = np.nan  # no velocity estimate
    scores = rng.random(n).astype(np.float32)
    det = Detections("s", 0, _boxes(rows, np.zeros(n, int), scores=scores))
    path = write_results(str(tmp_path / "r.json"), {"s": det}, {"s": np.eye(4)}, make_meta(use_lidar=True),
                         sample_tokens=["s"])

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    with open(path) as f:
        doc = json.load(f, parse_constant=no_constants)
    boxes = doc["results"]["s"]
    assert len(boxes) == 500
    kept = sorted(b["detection_score"] for b in boxes)
    assert kept[0] >= np.sort(scores)[-500] - 1e-7
    assert all(b["velocity"] == [0.0, 0.0] for b in boxes)
    assert doc["meta"] == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                           "use_external": False}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(ValueError):
        write_json_atomic({"x": float("nan")}, str(tmp_path / "nan.json"))


def test_export_refuses_wrong_frame_bad_labels_and_missing_samples(tmp_path):
    row = [[0, 0, 0, 1, 1, 1, 0, 0, 0]]
    with pytest.raises(ExportError, match="global"):
        detections_to_results({"s": Detections("s", 0, _boxes(row, [0], frame="global"))}, {"s": np.eye(4)})
    with pytest.raises(ExportError, match="label 10"):
        detections_to_results({"s": Detections("s", 0, _boxes(row, [10]))}, {"s": np.eye(4)})
    with pytest.raises(ExportError, match="non-positive size"):
        detections_to_results({"s": Detections("s", 0, _boxes([[0, 0, 0, 1, 0, 1, 0, 0, 0]], [0]))}, {"s": np.eye(4)})
    with pytest.raises(ExportError, match="1 missing"):
        write_results(str(tmp_path / "r.json"), {"s": Detections("s", 0, _boxes(row, [0]))}, {"s": np.eye(4)},
                      make_meta(), sample_tokens=["s", "t"])


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def _net(hidden=3):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2),
                               torch.nn.BatchNorm1d(2))


def test_load_checkpoint_into(tmp_path):
    import torch

    src = _net()
    for p in src.parameters():
        torch.nn.init.uniform_(p)
    plain, wrapped, ddp = tmp_path / "plain.pt", tmp_path / "wrapped.pt", tmp_path / "ddp.pt"
    torch.save(src.state_dict(), plain)
    torch.save({"model": src.state_dict(), "epoch": 3}, wrapped)
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, ddp)
    for path in (plain, wrapped, ddp):
        dst = _net()
        ev.load_checkpoint_into(dst, str(path))
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k

    with pytest.raises(ev.CheckpointError, match=r"'0\.weight' has shape \(3, 4\) in the checkpoint, \(5, 4\)"):
        ev.load_checkpoint_into(_net(hidden=5), str(plain))
    sd = src.state_dict()
    del sd["2.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(ev.CheckpointError, match=r"'2\.bias' .* missing from the checkpoint"):
        ev.load_checkpoint_into(_net(), str(tmp_path / "missing.pt"))
    sd = dict(src.state_dict(), **{"head.extra": torch.zeros(2)})
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(ev.CheckpointError, match=r"'head\.extra' .* not in the model"):
        ev.load_checkpoint_into(_net(), str(tmp_path / "extra.pt"))
    with pytest.raises(ev.CheckpointError, match="not found"):
        ev.load_checkpoint_into(_net(), str(tmp_path / "nope.pt"))


def test_cli_checkpoint_that_does_not_fit_names_the_parameter(real_root, tmp_path):
    """With the model package in the tree: a checkpoint whose first parameter has another shape is
    refused by name. Without it: a one-line error that no model is available yet."""
    import importlib.util

    import torch

    ckpt = tmp_path / "c.pt"
    tiny = os.path.join(PROJECT, "configs", "fusion_tiny.yaml")
    args = ["--dataroot", real_root, "--version", REAL_VERSION, "--split", "val", "--out", str(tmp_path / "out")]
    if importlib.util.find_spec("perception.models") is None or not os.path.isfile(tiny):
        torch.save({}, ckpt)
        r = _run_cli(CONFIG, "--checkpoint", str(ckpt), *args)
        assert r.returncode == 2, r.stderr
        assert "no model available" in r.stderr and "perception.models" in r.stderr
        return
    from perception.config import load_config
    from perception.models.build import build_model

    sd = build_model(load_config(tiny)).state_dict()
    first = next(iter(sd))
    sd[first] = torch.zeros(tuple(sd[first].shape) + (2,))
    torch.save({"model": sd}, ckpt)
    r = _run_cli(tiny, "--checkpoint", str(ckpt), *args)
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"parameter {first!r} has shape" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Splits and results-file checks on the real scenes
# ---------------------------------------------------------------------------------------------
def test_split_samples_and_errors(real_source):
    nusc = real_source.nusc
    tokens = ev.split_sample_tokens(nusc, "val")
    assert len(tokens) == len(nusc.sample) == 81  # both scenes are val scenes
    with pytest.raises(ev.EvalError, match=r"unknown split 'bogus' for version v1.0-trainval \(valid: .*val"):
        ev.split_sample_tokens(nusc, "bogus")
    with pytest.raises(ev.EvalError, match="unknown split 'mini_val'"):
        ev.split_sample_tokens(nusc, "mini_val")  # a v1.0-mini split
    with pytest.raises(ev.EvalError, match="split 'train' has no samples"):
        ev.split_sample_tokens(nusc, "train")


def test_cli_unknown_split(real_root, tmp_path):
    r = _run_cli(CONFIG, "--oracle", "--dataroot", real_root, "--version", REAL_VERSION, "--split", "bogus",
                 "--out", str(tmp_path))
    assert r.returncode == 2
    assert "unknown split 'bogus'" in r.stderr and "val" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The oracle on the real scenes (acceptance)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle_out(real_root, tmp_path_factory):
    """tools/eval.py --oracle on the real val scenes, plots included (run once per module)."""
    out = tmp_path_factory.mktemp("oracle")
    r = _run_cli(CONFIG, "--oracle", "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return str(out)


@pytest.fixture(scope="module")
def oracle_inference(real_source):
    """Oracle detections (ego frame) of every val sample through FrameBuilder, for perturbation tests."""
    from perception.config import load_config

    tokens = ev.split_sample_tokens(real_source.nusc, "val")
    return ev.run_inference(ev.OracleDetector(), real_source, load_config(CONFIG), tokens), tokens


def _summary(out):
    with open(os.path.join(out, "metrics_summary.json")) as f:
        return json.load(f)


def test_oracle_scores_perfectly_on_real_scenes(oracle_out):
    s = _summary(oracle_out)
    assert s["mean_ap"] >= 0.99, s["mean_ap"]
    assert s["nd_score"] >= 0.99, s["nd_score"]
    assert set(s["mean_dist_aps"]) == set(CLASSES)
    for name in CLASSES:  # every class of the root is found, none by luck of averaging
        assert s["mean_dist_aps"][name] >= 0.99, name
    assert s["tp_errors"]["trans_err"] < 0.01 and s["tp_errors"]["scale_err"] < 0.01
    assert s["tp_errors"]["orient_err"] < 0.01 and s["tp_errors"]["vel_err"] < 0.01
    with open(os.path.join(oracle_out, "results_nusc.json")) as f:
        doc = json.load(f)
    assert len(doc["results"]) == 81
    assert doc["meta"]["use_external"] and not (doc["meta"]["use_lidar"] or doc["meta"]["use_camera"])


def test_oracle_writes_every_file_and_report_agrees_with_devkit(oracle_out):
    for name in ("results_nusc.json", "metrics_summary.json", "metrics_details.json", "report.md"):
        assert os.path.isfile(os.path.join(oracle_out, name)), name
    plots = os.listdir(os.path.join(oracle_out, "plots"))
    for name in ("summary.pdf", "car_pr.pdf", "car_tp.pdf", "dist_pr_2.0.pdf"):
        assert name in plots
    with open(os.path.join(oracle_out, "metrics_details.json")) as f:
        assert "car:2.0" in json.load(f)
    s = _summary(oracle_out)
    with open(os.path.join(oracle_out, "report.md")) as f:
        text = f.read()
    assert CONFIG in text and os.path.abspath(os.path.join(PROJECT, "..", "shared")) in text
    table = parse_table(text, "Per class")
    assert set(table) == set(CLASSES)
    for name, cells in table.items():
        expected = [s["mean_dist_aps"][name]] + [s["label_tp_errors"][name][k] for k in TP_KEYS]
        for cell, value in zip(cells, expected):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert cell == "nan", (name, cells)
            else:
                assert float(cell) == pytest.approx(value, abs=6e-5), (name, cells)
    top = parse_table(text, "Summary")
    assert float(top["mAP"][0]) == pytest.approx(s["mean_ap"], abs=6e-5)
    assert float(top["NDS"][0]) == pytest.approx(s["nd_score"], abs=6e-5)
    assert float(top["mATE"][0]) == pytest.approx(s["tp_errors"]["trans_err"], abs=6e-5)


def _perturbed_eval(real_source, oracle_inference, tmp_path, fn):
    inf, tokens = oracle_inference
    dets = {}
    for tok, d in inf.detections.items():
        rows = d.boxes.boxes.copy()
        fn(rows)
        b = d.boxes
        dets[tok] = Detections(tok, d.timestamp, Boxes3D(rows, b.labels, b.attributes, b.scores, b.num_lidar_pts,
                                                         b.num_radar_pts, b.tokens, b.instance_tokens, "ego"))
    path = write_results(str(tmp_path / "results_nusc.json"), dets, inf.T_global_from_ego, make_meta(use_external=True),
                         sample_tokens=tokens)
    return ev.evaluate_results(real_source.nusc, path, "val", str(tmp_path), render_curves=False)


def test_shift_by_one_metre_gives_ate_of_one_metre(real_source, oracle_inference, tmp_path):
    # 1 m to the left in the ego frame. (Forward, a row of parked motorcycles about 1 m apart in
    # scene-0916 lets the devkit's greedy matching pair each shifted box with its neighbour.)
    def shift(rows):
        rows[:, 1] += 1.0

    s = _perturbed_eval(real_source, oracle_inference, tmp_path, shift)
    assert s["tp_errors"]["trans_err"] == pytest.approx(1.0, abs=0.05)
    for name in CLASSES:
        assert s["label_tp_errors"][name]["trans_err"] == pytest.approx(1.0, abs=0.05), name
    assert s["tp_errors"]["orient_err"] < 0.01 and s["tp_errors"]["scale_err"] < 0.01


def test_rotation_by_90_degrees_gives_aoe_of_half_pi(real_source, oracle_inference, tmp_path):
    def turn(rows):
        rows[:, 6] += math.pi / 2

    s = _perturbed_eval(real_source, oracle_inference, tmp_path, turn)
    scored = [c for c in CLASSES if c != "traffic_cone"]  # cones are not scored on orientation
    for name in scored:
        assert s["label_tp_errors"][name]["orient_err"] == pytest.approx(math.pi / 2, abs=0.05), name
    assert math.isnan(s["label_tp_errors"]["traffic_cone"]["orient_err"])
    assert s["tp_errors"]["orient_err"] == pytest.approx(math.pi / 2, abs=0.05)
    assert s["mean_ap"] >= 0.99  # matching is by centre distance: orientation does not change AP


def test_swapped_length_and_width_is_caught_by_scale_error(real_source, oracle_inference, tmp_path):
    def swap(rows):
        rows[:, [3, 4]] = rows[:, [4, 3]]

    s = _perturbed_eval(real_source, oracle_inference, tmp_path, swap)
    assert s["label_tp_errors"]["car"]["scale_err"] > 0.3  # a car is about 2.3 times longer than wide


# ---------------------------------------------------------------------------------------------
# --results
# ---------------------------------------------------------------------------------------------
def test_results_flag_evaluates_an_earlier_file(oracle_out, real_root, tmp_path):
    earlier = os.path.join(oracle_out, "results_nusc.json")
    out = tmp_path / "again"
    r = _run_cli("--results", earlier, "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val",
                 "--out", str(out), "--no-plots")
    assert r.returncode == 0, r.stderr[-3000:]
    again, first = _summary(str(out)), _summary(oracle_out)
    assert again["mean_ap"] == first["mean_ap"] and again["nd_score"] == first["nd_score"]
    with open(out / "report.md") as f:
        assert earlier in f.read()


def test_results_file_with_a_missing_sample_is_a_clear_error(oracle_out, real_source, real_root, tmp_path):
    with open(os.path.join(oracle_out, "results_nusc.json")) as f:
        doc = json.load(f)
    gone = sorted(doc["results"])[0]
    del doc["results"][gone]
    bad = tmp_path / "missing.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ev.EvalError, match=rf"miss 1 of the 81 samples of split 'val'.*first missing: {gone}"):
        ev.evaluate_results(real_source.nusc, str(bad), "val", str(tmp_path / "o"), render_curves=False)
    r = _run_cli("--results", str(bad), "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val",
                 "--out", str(tmp_path / "o2"))
    assert r.returncode == 2
    assert gone in r.stderr and "miss 1 of the 81 samples" in r.stderr

    extra = copy.deepcopy(doc)
    extra["results"][gone] = []
    extra["results"]["not-a-sample"] = []
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(ev.EvalError, match="1 samples that are not samples of split 'val'.*not-a-sample"):
        ev.evaluate_results(real_source.nusc, str(tmp_path / "extra.json"), "val", str(tmp_path / "o"))
    (tmp_path / "nores.json").write_text(json.dumps({"meta": doc["meta"]}))
    with pytest.raises(ev.EvalError, match="no 'results' mapping"):
        ev.evaluate_results(real_source.nusc, str(tmp_path / "nores.json"), "val", str(tmp_path / "o"))


# ---------------------------------------------------------------------------------------------
# Robustness plumbing (with a test double that needs the LiDAR)
# ---------------------------------------------------------------------------------------------
class LidarDependentOracle:
    """Test double: the oracle's boxes while the LiDAR is present, nothing without it."""

    needs_images = False
    modalities = ("lidar", "camera", "radar")

    def __init__(self):
        self.seen_drops = []

    def predict(self, frames):
        out = ev.OracleDetector().predict(frames)
        for f, d in zip(frames, out):
            self.seen_drops.append(tuple(sorted(ch for ch, s in f.status.items() if s.reason == "dropped")))
            if not f.present("lidar"):
                d.boxes = d.boxes.select(np.zeros(len(d.boxes), bool))
        return out


def test_failure_cases_cover_every_sensor():
    from perception.structures import CAMERA_CHANNELS, RADAR_CHANNELS

    cases = ev.failure_cases()
    assert len(cases) == 6 + 5 + 3
    for ch in CAMERA_CHANNELS + RADAR_CHANNELS:
        assert cases[ch] == [ch]
    assert cases["all cameras"] == ["camera"] and cases["all radars"] == ["radar"] and cases["lidar"] == ["lidar"]


def test_robustness_table_reacts_to_sensor_failures(real_source, oracle_out, tmp_path):
    from perception.config import load_config

    det = LidarDependentOracle()
    baseline = _summary(oracle_out)  # what the double scores with every sensor present
    cases = {"CAM_FRONT": ["CAM_FRONT"], "lidar": ["lidar"]}
    rows = ev.run_robustness(det, real_source, load_config(CONFIG), "val", str(tmp_path), baseline=baseline,
                             cases=cases)
    by_case = {r["case"]: r for r in rows}
    assert list(by_case) == ["all sensors", "CAM_FRONT", "lidar"]
    assert by_case["CAM_FRONT"]["mAP_rel"] >= 0.99 and by_case["CAM_FRONT"]["NDS_rel"] >= 0.99
    assert by_case["lidar"]["mAP"] == 0.0 and by_case["lidar"]["mAP_rel"] == 0.0
    assert by_case["lidar"]["NDS_rel"] < 0.1
    assert {("CAM_FRONT",), ("LIDAR_TOP",)} <= set(det.seen_drops)  # the drops reached the frames
    with open(tmp_path / "robustness" / "lidar" / "results_nusc.json") as f:
        meta = json.load(f)["meta"]
    assert not meta["use_lidar"] and meta["use_camera"] and meta["use_radar"]
    with open(tmp_path / "robustness.json") as f:
        assert [r["case"] for r in json.load(f)] == ["all sensors", "CAM_FRONT", "lidar"]

    write_report(str(tmp_path), baseline, {"mode": "test double"}, robustness=rows)
    with open(tmp_path / "report.md") as f:
        table = parse_table(f.read(), "Robustness")
    assert table["lidar"][0] == "lidar" and float(table["lidar"][1]) == 0.0
    assert float(table["CAM_FRONT"][3]) >= 0.99


def test_cli_robustness_adds_the_table_to_the_report(real_root, tmp_path, monkeypatch):
    """The CLI wiring of --robustness (in process, with the failure set cut to one case to stay fast)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(ev, "failure_cases", lambda: {"RADAR_FRONT": ["RADAR_FRONT"]})
    out = tmp_path / "rob"
    rc = tool.main([CONFIG, "--oracle", "--robustness", "--no-plots", "--dataroot", real_root, "--version",
                    REAL_VERSION, "--split", "val", "--out", str(out)])
    assert rc == 0
    with open(out / "report.md") as f:
        table = parse_table(f.read(), "Robustness")
    assert list(table) == ["all sensors", "RADAR_FRONT"]
    assert table["RADAR_FRONT"][0] == "RADAR_FRONT"
    assert float(table["RADAR_FRONT"][1]) == pytest.approx(_summary(str(out))["mean_ap"], abs=6e-5)
    assert os.path.isfile(out / "robustness" / "radar_front" / "metrics_summary.json")


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------
def test_shard_partitions_samples():
    tokens = [f"t{i}" for i in range(11)]
    parts = [ev.shard(tokens, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(tokens)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_torchrun_two_ranks_gathers_every_sample(real_root, oracle_out, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TOOL, CONFIG,
           "--oracle", "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val", "--out", str(out),
           "--no-plots"]
    r = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "results_nusc.json") as f:
        ddp = json.load(f)["results"]
    with open(os.path.join(oracle_out, "results_nusc.json")) as f:
        single = json.load(f)["results"]
    assert set(ddp) == set(single)
    assert {t: len(b) for t, b in ddp.items()} == {t: len(b) for t, b in single.items()}
    assert _summary(str(out))["mean_ap"] >= 0.99
