"""Synthetic drive generator: the devkit loads what it writes, and the data are self-consistent.

One tiny root (1 train + 1 val scene of 4 s, small images) is generated once per module.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from perception.data.synthetic import Failures, generate, preset
from perception.data.synthetic import rig
from perception.structures import ALL_CHANNELS, CAMERA_CHANNELS, RADAR_CHANNELS

SEED = 7


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth") / "root")
    generate(out, preset("tiny"), seed=SEED)
    return out


@pytest.fixture(scope="module")
def nusc(root):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-trainval", dataroot=root, verbose=False)


def _tree_hashes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_devkit_loads_all_tables_and_files(nusc, root):
    from nuscenes.utils import splits

    assert len(nusc.scene) == 2
    names = {s["name"]: s for s in nusc.scene}
    assert sum(n in splits.train for n in names) == 1 and sum(n in splits.val for n in names) == 1
    for s in nusc.sample:
        assert set(s["data"]) == set(ALL_CHANNELS)
    for sd in nusc.sample_data:
        assert os.path.isfile(os.path.join(root, sd["filename"])), sd["filename"]
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        assert pose["timestamp"] == sd["timestamp"]
        assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
    # Map rasters exist and the devkit reads them.
    for m in nusc.map:
        assert os.path.isfile(os.path.join(root, m["filename"]))
    # Sensor files parse with the devkit readers; LiDAR has rings 0-31 and intensities 0-255.
    from nuscenes.utils.data_classes import LidarPointCloud, RadarPointCloud

    s = nusc.sample[0]
    raw = np.fromfile(os.path.join(root, nusc.get("sample_data", s["data"]["LIDAR_TOP"])["filename"]),
                      dtype=np.float32).reshape(-1, 5)
    assert len(raw) > 2000 and set(np.unique(raw[:, 4]).astype(int)) <= set(range(32))
    assert raw[:, 3].min() >= 0 and raw[:, 3].max() <= 255
    LidarPointCloud.from_file(os.path.join(root, nusc.get("sample_data", s["data"]["LIDAR_TOP"])["filename"]))
    n_radar = sum(RadarPointCloud.from_file(nusc.get_sample_data_path(s["data"][ch])).nbr_points()
                  for ch in RADAR_CHANNELS)
    assert n_radar > 0
    from PIL import Image

    img = Image.open(nusc.get_sample_data_path(s["data"]["CAM_FRONT"]))
    sd = nusc.get("sample_data", s["data"]["CAM_FRONT"])
    assert img.size == (sd["width"], sd["height"])
    # Intrinsics are those of the written images (the real ones scaled), principal point inside.
    K = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
    assert np.allclose(K, rig.intrinsics("CAM_FRONT", sd["width"], sd["height"]))
    assert 0 < K[0, 2] < sd["width"] and 0 < K[1, 2] < sd["height"]


def test_timing_follows_nuscenes_rules(nusc):
    for s in nusc.sample:
        t = s["timestamp"]
        assert nusc.get("sample_data", s["data"]["LIDAR_TOP"])["timestamp"] == t
        for ch in CAMERA_CHANNELS:
            dt = t - nusc.get("sample_data", s["data"][ch])["timestamp"]
            expect = rig.CAMERA_TRIGGER_OFFSET_US[ch]
            assert expect <= dt <= expect + 1500, (ch, dt, expect)
        for ch in RADAR_CHANNELS:
            sd = nusc.get("sample_data", s["data"][ch])
            # The keyframe radar message is the one nearest to the LiDAR keyframe.
            for nb in (sd["prev"], sd["next"]):
                if nb:
                    assert abs(nusc.get("sample_data", nb)["timestamp"] - t) >= abs(sd["timestamp"] - t)
    # Sweeps belong to the next keyframe's sample; LiDAR sweeps are 50 ms apart.
    lidar = sorted([sd for sd in nusc.sample_data if sd["channel"] == "LIDAR_TOP"], key=lambda r: r["timestamp"])
    gaps = np.diff([sd["timestamp"] for sd in lidar])
    per_scene = {}
    for sd in lidar:
        per_scene.setdefault(nusc.get("sample", sd["sample_token"])["scene_token"], []).append(sd["timestamp"])
    for ts in per_scene.values():
        assert np.all(np.abs(np.diff(ts) - 50_000) <= 600)
    for sd in nusc.sample_data:
        assert sd["timestamp"] <= nusc.get("sample", sd["sample_token"])["timestamp"] or sd["is_key_frame"]


def test_num_lidar_pts_equals_points_in_box(nusc):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    checked = nonzero = 0
    for s in nusc.sample:
        sd_tok = s["data"]["LIDAR_TOP"]
        pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_tok))
        _, boxes, _ = nusc.get_sample_data(sd_tok)
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            n = int(points_in_box(box, pc.points[:3]).sum())
            assert n == ann["num_lidar_pts"], (ann["token"], n, ann["num_lidar_pts"])
            checked += 1
            nonzero += n > 0
    assert checked > 50 and nonzero > 20


def test_box_velocity_matches_true_velocity(nusc, root):
    from perception.data.synthetic.generator import make_world, token

    with open(os.path.join(root, "synthetic_manifest.json")) as f:
        order = [s["name"] for s in json.load(f)["scenes"]]
    moving = 0
    for scene in nusc.scene:
        idx = order.index(scene["name"])
        world = make_world(SEED, idx, preset("tiny").duration_s)
        inst_of = {token(SEED, scene["name"], "instance", i): a for i, a in enumerate(world.agents)}
        for inst in nusc.instance:
            if inst["token"] not in inst_of:
                continue
            v_true = inst_of[inst["token"]].v
            tok = inst["first_annotation_token"]
            while tok:
                v = nusc.box_velocity(tok)[:2]
                if np.linalg.norm(v_true) > 0.2 and np.all(np.isfinite(v)):
                    assert np.linalg.norm(v - v_true) < 0.1, (tok, v, v_true)
                    moving += 1
                tok = nusc.get("sample_annotation", tok)["next"]
    assert moving > 20


def test_moving_objects_drive_forward(nusc):
    """Every moving vehicle, cycle and pedestrian moves along its annotated heading, in every lane, as
    on real nuScenes (where the heading and the devkit's velocity agree for every moving car of the
    extract). The oncoming lanes once faced their traffic backwards."""
    from pyquaternion import Quaternion

    n_opposite = 0
    checked = 0
    for ann in nusc.sample_annotation:
        if not ann["category_name"].startswith(("vehicle.", "human.")):
            continue
        v = nusc.box_velocity(ann["token"])[:2]
        if not np.all(np.isfinite(v)) or np.linalg.norm(v) < 1.0:
            continue
        yaw = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
        cos = (np.cos(yaw) * v[0] + np.sin(yaw) * v[1]) / np.linalg.norm(v)
        assert cos > 0.99, (ann["category_name"], ann["token"], yaw, v)
        checked += 1
        ego_yaw = Quaternion(nusc.get("ego_pose", nusc.get("sample_data", nusc.get(
            "sample", ann["sample_token"])["data"]["LIDAR_TOP"])["ego_pose_token"])["rotation"]).yaw_pitch_roll[0]
        n_opposite += np.cos(yaw - ego_yaw) < 0
    assert checked > 20 and n_opposite > 5  # both directions of traffic are covered


def test_attributes_consistent_with_motion(nusc):
    for ann in nusc.sample_annotation:
        v = nusc.box_velocity(ann["token"])[:2]
        if not np.all(np.isfinite(v)):
            continue
        speed = float(np.linalg.norm(v))
        names = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        if "vehicle.moving" in names or "pedestrian.moving" in names:
            assert speed > 0.3
        if any(n in names for n in ("vehicle.parked", "vehicle.stopped", "pedestrian.standing",
                                    "cycle.without_rider")):
            assert speed < 0.05


def test_detection_eval_gt_as_predictions(nusc, tmp_path):
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils import splits

    val_scenes = {s["token"] for s in nusc.scene if s["name"] in splits.val}
    results = {}
    present = set()
    for s in nusc.sample:
        if s["scene_token"] not in val_scenes:
            continue
        res = []
        for tok in s["anns"]:
            ann = nusc.get("sample_annotation", tok)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            v = nusc.box_velocity(tok)[:2]
            attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            res.append({"sample_token": s["token"], "translation": ann["translation"], "size": ann["size"],
                        "rotation": ann["rotation"], "velocity": [0.0, 0.0] if np.any(np.isnan(v)) else list(v),
                        "detection_name": name, "detection_score": 1.0,
                        "attribute_name": attrs[0] if attrs else ""})
            present.add(name)
        results[s["token"]] = res
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {"use_camera": True, "use_lidar": True, "use_radar": True,
                                         "use_map": False, "use_external": False}, "results": results}))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set="val",
                       output_dir=str(tmp_path), verbose=False)
    metrics, _ = ev.evaluate()
    aps = metrics.mean_dist_aps
    evaluated = {c for c in present if len(ev.gt_boxes.all) and any(b.detection_name == c for b in ev.gt_boxes.all)}
    assert len(evaluated) >= 4
    assert np.mean([aps[c] for c in evaluated]) >= 0.99, aps


def test_visibility_and_radar_counts_vary(nusc):
    vis = {a["visibility_token"] for a in nusc.sample_annotation}
    assert len(vis) >= 3
    assert sum(a["num_radar_pts"] > 0 for a in nusc.sample_annotation) > 5
    # Occlusion matters: far objects have fewer LiDAR points than near ones.
    d, n = [], []
    for a in nusc.sample_annotation:
        s = nusc.get("sample", a["sample_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
        d.append(np.hypot(*(np.array(a["translation"][:2]) - pose["translation"][:2])))
        n.append(a["num_lidar_pts"])
    d, n = np.array(d), np.array(n)
    assert np.median(n[d < 20]) > np.median(n[d > 40])


def test_can_bus_pose_readable_and_close_to_ego_pose(nusc, root):
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    can = NuScenesCanBus(dataroot=root)
    scene = nusc.scene[0]
    pose = can.get_messages(scene["name"], "pose")
    t = np.array([m["utime"] for m in pose])
    assert np.all(np.abs(np.diff(t) - 20_000) == 0)  # 50 Hz
    s = nusc.get("sample", scene["first_sample_token"])
    ep = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
    m = pose[int(np.argmin(np.abs(t - ep["timestamp"])))]
    err = np.hypot(m["pos"][0] - ep["translation"][0], m["pos"][1] - ep["translation"][1])
    assert 0.0 < err < 1.0  # noisy GNSS-like pose, close to the localization
    assert len(can.get_messages(scene["name"], "route")) > 10


def test_deterministic(root, tmp_path):
    again = str(tmp_path / "again")
    generate(again, preset("tiny"), seed=SEED)
    assert _tree_hashes(again) == _tree_hashes(root)


def test_failure_injection_recorded(tmp_path):
    out = str(tmp_path / "broken")
    cfg = preset("tiny", train_scenes=1, val_scenes=0, duration_s=2.0,
                 failures=Failures(drop_rate=0.2, kill_camera=("CAM_BACK", 0.0, 0.8), lidar_blackout=(1.0, 1.3),
                                   timestamp_jitter_us=2000, corrupt_files=2))
    summary = generate(out, cfg, seed=1)
    kinds = {f["kind"] for f in summary["injected_failures"]}
    assert kinds == {"message_dropped", "camera_killed", "lidar_blackout", "timestamp_jitter", "corrupt_file"}
    with open(os.path.join(out, "v1.0-trainval", "sample_data.json")) as f:
        sds = json.load(f)
    files = {sd["filename"] for sd in sds}
    killed = [f for f in summary["injected_failures"] if f["kind"] == "camera_killed"]
    assert killed and not any(f"__CAM_BACK__{k['timestamp']}" in x for k in killed for x in files)
    for f in summary["injected_failures"]:
        if f["kind"] == "lidar_blackout":
            assert os.path.getsize(os.path.join(out, f["filename"])) == 0
        if f["kind"] == "corrupt_file":
            assert os.path.getsize(os.path.join(out, f["filename"])) == f["bytes_after"] < f["bytes_before"]
