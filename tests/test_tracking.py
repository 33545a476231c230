"""The online tracker: crossing targets, occlusion shorter and longer than max_age, classes never mixed,
association unchanged by the ego's own motion, the matchings against plain references, the config
section; then tools/eval.py --tracking --oracle on the real scenes through the devkit's TrackingEval."""
import itertools
import json
import os
import sys

import numpy as np
import pytest

from perception.config import ConfigError, load_config
from perception.structures import CLASS_TO_ID, Boxes3D, Detections
from perception.tracking import (Tracker, TrackingError, TrailHistory, greedy_match, hungarian_match,
                                 tracker_from_config)

from conftest import PROJECT, REAL_VERSION

DT_US = 500_000  # nuScenes keyframes, 2 Hz


def boxes(xy, vel, labels, scores=None, frame="global") -> Boxes3D:
    """Boxes at centres xy float[N, 2] with velocities vel float[N, 2] (m/s), class names ``labels``."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = len(xy)
    b = np.zeros((n, 9))
    b[:, :2] = xy
    b[:, 2] = 1.0
    b[:, 3:6] = (4.5, 1.9, 1.6)
    b[:, 7:9] = np.asarray(vel, float).reshape(n, 2)
    b[:, 6] = np.arctan2(np.nan_to_num(b[:, 8]), np.nan_to_num(b[:, 7]))
    labels = [CLASS_TO_ID[c] for c in labels]
    scores = np.ones(n) if scores is None else scores
    return Boxes3D(b, labels, -np.ones(n), scores, np.zeros(n), np.zeros(n), [""] * n, [""] * n, frame)


def default_tracker(matching="greedy", **over) -> Tracker:
    sets = [f"tracking.matching={matching}"] + [f"tracking.{k}={v}" for k, v in over.items()]
    return tracker_from_config(load_config(None, sets).tracking)


@pytest.mark.parametrize("matching", ["greedy", "hungarian"])
def test_two_crossing_targets_keep_their_ids(matching):
    # two cars at 6 m/s on crossing paths, 0.7 m apart at the crossing: there each is closer to the
    # other's previous position (2.5 m) than to its own (3 m), so nearest-position matching swaps
    # them; moving each detection back by its own velocity does not
    trk = default_tracker(matching)
    seen = []
    for k in range(9):
        t = (k - 4) * 0.5
        a = (6.0 * t, 0.5)     # eastbound
        b = (-0.5, -6.0 * t)   # southbound, crosses a's path at t = 0
        det = boxes([a, b], [(6, 0), (0, -6)], ["car", "car"])
        tracks = trk.step_global(det, 1_600_000_000_000_000 + k * DT_US)
        assert len(tracks) == 2
        seen.append(tracks.ids.tolist())
    assert all(ids == seen[0] for ids in seen), seen


def test_nearest_position_alone_would_swap_crossing_targets():
    # the same scene with the velocities withheld (NaN: predict no motion) swaps the IDs at the
    # crossing, so the test above does test the velocity compensation
    trk = default_tracker()
    seen = []
    for k in range(9):
        t = (k - 4) * 0.5
        det = boxes([(6.0 * t, 0.5), (-0.5, -6.0 * t)], np.full((2, 2), np.nan), ["car", "car"])
        seen.append(trk.step_global(det, k * DT_US + 1).ids.tolist())
    assert seen[0] == [1, 2] and seen[-1] == [2, 1], seen


@pytest.mark.parametrize("missed", [1, 2])
def test_occlusion_shorter_than_max_age_keeps_the_id(missed):
    trk = default_tracker()  # car max_age 3: up to 2 missed frames
    t = 0
    first = trk.step_global(boxes([(0, 0)], [(8, 0)], ["car"]), t).ids[0]
    x = 0.0
    for k in range(missed):  # occluded: no detection, the track coasts on its velocity, unreported
        t += DT_US
        x += 4.0
        out = trk.step_global(boxes(np.zeros((0, 2)), np.zeros((0, 2)), []), t)
        assert len(out) == 0 and trk.num_live == 1
    t += DT_US
    x += 4.0
    again = trk.step_global(boxes([(x, 0.2)], [(8, 0)], ["car"]), t)
    assert again.ids.tolist() == [first]
    assert again.hits.tolist() == [2]


def test_occlusion_of_max_age_frames_ends_the_track():
    trk = default_tracker(**{"car.max_age": 2})
    trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 0)
    for k in (1, 2):
        trk.step_global(boxes(np.zeros((0, 2)), np.zeros((0, 2)), []), k * DT_US)
    assert trk.num_live == 0
    back = trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 3 * DT_US)
    assert back.ids.tolist() == [2]


def test_a_detection_of_another_class_never_joins_a_track():
    trk = default_tracker()
    car = trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 0).ids[0]
    # a truck and a pedestrian exactly where the car was, the car itself not detected
    out = trk.step_global(boxes([(0, 0), (0.1, 0)], [(0, 0), (0, 0)], ["truck", "pedestrian"]), DT_US)
    assert car not in out.ids.tolist() and len(set(out.ids.tolist())) == 2
    assert out.labels.tolist() == [CLASS_TO_ID["truck"], CLASS_TO_ID["pedestrian"]]
    # the car comes back: its own ID, not the truck's
    out = trk.step_global(boxes([(0, 0), (0, 0)], [(0, 0), (0, 0)], ["car", "truck"]), 2 * DT_US)
    assert out.ids.tolist()[0] == car


def test_non_tracking_classes_are_ignored():
    trk = default_tracker()
    out = trk.step_global(boxes([(0, 0), (5, 5)], [(0, 0), (0, 0)], ["barrier", "traffic_cone"]), 0)
    assert len(out) == 0 and trk.num_live == 0


def test_birth_score_gates_new_tracks_not_continued_ones():
    trk = default_tracker(**{"car.birth_score": 0.5})
    assert len(trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"], scores=[0.3]), 0)) == 0
    first = trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"], scores=[0.6]), DT_US).ids[0]
    low = trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"], scores=[0.2]), 2 * DT_US)
    assert low.ids.tolist() == [first]


def _pose(x, y, yaw):
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = (x, y, 0.3)
    return T


def test_association_is_unchanged_by_ego_motion():
    # one world (cars passing, a parked truck, a walking pedestrian), seen from a car that drives a
    # curve and from a parked one: the same tracks, in the global frame
    rng = np.random.default_rng(0)
    start = np.array([[5, 3], [20, -4], [-10, 8], [12, 12], [30, 1]], float)
    vel = np.array([[8, 0], [-6, 1], [0, 0], [0.8, 1.0], [5, -5]], float)
    labels = ["car", "car", "truck", "pedestrian", "car"]
    world = []
    for k in range(12):
        xy = start + vel * k * 0.5 + rng.normal(0, 0.1, start.shape)
        world.append(boxes(xy, vel, labels))
    moving = [_pose(4.0 * k, 0.5 * k ** 1.5, 0.12 * k) for k in range(12)]
    parked = [_pose(-3.0, 2.0, 0.7)] * 12
    out = {}
    for name, poses in (("moving", moving), ("parked", parked)):
        trk = default_tracker()
        out[name] = []
        for k, (w, T) in enumerate(zip(world, poses)):
            ego = w.transformed(np.linalg.inv(T), "ego")
            out[name].append(trk.step(Detections("", 10 ** 15 + k * DT_US, ego), T))
    for a, b in zip(out["moving"], out["parked"]):
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-9)
    assert all(t.ids.tolist() == [1, 2, 3, 4, 5] for t in out["moving"])
    # the ego-frame boxes differ between the two (the test would pass vacuously otherwise)
    assert not np.allclose(world[5].transformed(np.linalg.inv(moving[5]), "ego").boxes[:, :2],
                           world[5].transformed(np.linalg.inv(parked[5]), "ego").boxes[:, :2])


def _greedy_reference(cost):
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, cost.shape)
        if np.isfinite(cost[r, c]) and r not in used_r and c not in used_c:
            pairs.append((r, c)); used_r.add(r); used_c.add(c)
    return sorted(pairs)


def test_greedy_match_equals_closest_first_reference():
    rng = np.random.default_rng(1)
    for n, m in [(0, 3), (3, 0), (1, 1), (6, 4), (30, 40), (80, 60)]:
        cost = rng.uniform(0, 10, (n, m))
        cost[rng.uniform(size=(n, m)) < 0.6] = np.inf
        got = sorted(map(tuple, greedy_match(cost).tolist()))
        assert got == _greedy_reference(cost)


def test_hungarian_match_is_optimal_among_allowed_pairs():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n, m = (int(v) for v in rng.integers(1, 5, 2))
        cost = rng.uniform(0, 5, (n, m))
        cost[rng.uniform(size=(n, m)) < 0.4] = np.inf
        got = hungarian_match(cost)
        assert np.isfinite(cost[got[:, 0], got[:, 1]]).all()
        # brute force over every partial one-to-one assignment: the most allowed pairs, then the smallest total
        best = (0, 0.0)
        for choice in itertools.product(range(-1, int(m)), repeat=int(n)):
            cols = [c for c in choice if c >= 0]
            if len(cols) != len(set(cols)) or any(c >= 0 and not np.isfinite(cost[r, c]) for r, c in enumerate(choice)):
                continue
            best = max(best, (len(cols), -sum(cost[r, c] for r, c in enumerate(choice) if c >= 0)))
        assert len(got) == best[0]
        assert cost[got[:, 0], got[:, 1]].sum() == pytest.approx(-best[1])


def test_frames_out_of_time_order_and_wrong_frames_are_one_line_errors():
    trk = default_tracker()
    trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 10)
    with pytest.raises(TrackingError, match="not after the previous one"):
        trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 10)
    with pytest.raises(TrackingError, match="global-frame"):
        trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"], frame="ego"), 20)
    with pytest.raises(TrackingError, match="ego frame"):
        trk.step(Detections("s", 30, boxes([(0, 0)], [(0, 0)], ["car"])), np.eye(4))
    trk.reset()
    assert trk.step_global(boxes([(0, 0)], [(0, 0)], ["car"]), 5).ids.tolist() == [1]


def test_trail_history_is_bounded_and_forgets():
    trk, trails = default_tracker(), TrailHistory(length=3, forget=2)
    for k in range(5):
        trails.update(trk.step_global(boxes([(k, 0)], [(2, 0)], ["car"]), k * DT_US))
    np.testing.assert_allclose(trails.trail(1)[:, 0], [2, 3, 4])
    for k in range(5, 7):
        trails.update(trk.step_global(boxes(np.zeros((0, 2)), np.zeros((0, 2)), []), k * DT_US))
    assert len(trails.trail(1)) == 0


def test_config_section_defaults_and_one_line_errors(tmp_path):
    t = load_config(None).tracking
    assert (t.car.gate_m, t.truck.gate_m, t.bus.gate_m, t.trailer.gate_m, t.pedestrian.gate_m,
            t.motorcycle.gate_m, t.bicycle.gate_m) == (4.0, 4.0, 5.5, 3.0, 1.0, 13.0, 3.0)
    assert t.car.max_age == 3 and t.matching == "greedy"
    y = tmp_path / "c.yaml"
    y.write_text("tracking:\n  pedestrian: {max_age: 5}\n")
    p = load_config(str(y)).tracking.pedestrian
    assert (p.gate_m, p.max_age) == (1.0, 5)  # the class's own gate kept
    y.write_text("tracking:\n  pedestrian: {gate: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'tracking.pedestrian.gate' \(did you mean"):
        load_config(str(y))
    for pair, msg in (("tracking.matching=nearest", "greedy' or 'hungarian"), ("tracking.bus.gate_m=0", "gate_m"),
                      ("tracking.cat.max_age=2", "tracking.cat")):
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(None, [pair])
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# tools/eval.py --tracking --oracle on the real scenes (acceptance)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle_tracking(real_root, tmp_path_factory):
    sys.path.insert(0, os.path.join(PROJECT, "tools"))
    import eval as eval_tool

    out = tmp_path_factory.mktemp("oracle_tracking")
    rc = eval_tool.main([os.path.join(PROJECT, "configs", "fusion_tiny.yaml"), "--oracle", "--tracking",
                         "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val", "--out", str(out),
                         "--no-plots", "--set", "sync.lidar_sweeps=1", "sync.radar_sweeps=1"])  # GT needs no sweeps
    assert rc == 0
    return out


def test_oracle_tracking_on_real_scenes(oracle_tracking):
    with open(oracle_tracking / "tracking" / "metrics_summary.json") as f:
        s = json.load(f)
    assert s["amota"] >= 0.99, s["amota"]
    assert s["recall"] >= 0.99
    with open(oracle_tracking / "tracking" / "results_tracking.json") as f:
        sub = json.load(f)
    with open(oracle_tracking / "results_nusc.json") as f:
        det = json.load(f)
    assert set(sub["results"]) == set(det["results"])
    names = {b["tracking_name"] for boxes in sub["results"].values() for b in boxes}
    assert names <= {"car", "truck", "bus", "trailer", "pedestrian", "motorcycle", "bicycle"}
    # every tracked box is one of the sample's detections (tracks report this frame's detection)
    tok = next(t for t, b in sub["results"].items() if len(b) > 5)
    det_xyz = {tuple(np.round(b["translation"], 6)) for b in det["results"][tok]}
    assert all(tuple(np.round(b["translation"], 6)) in det_xyz for b in sub["results"][tok])
    report = (oracle_tracking / "report.md").read_text()
    from perception.eval.report import parse_table

    rows = parse_table(report, "Tracking")
    assert float(rows["AMOTA"][0]) == pytest.approx(s["amota"], abs=1e-4)
    assert "car" in report and "max_age 100000" in report


# ---------------------------------------------------------------------------------------------
# Replay: the tracker online, IDs in the per-frame JSON and drawn in the panels
# ---------------------------------------------------------------------------------------------
def test_replay_tracks_ground_truth_with_stable_ids(real_source, tmp_path):
    from perception.eval.evaluate import OracleDetector
    from perception.replay import Player, ReplayOptions

    out = tmp_path / "r.mp4"
    opts = ReplayOptions(reference="keyframes", max_frames=4, out_video=None, out_json=str(tmp_path / "r.json"),
                         png_dir=str(tmp_path / "png"), renderer="software", min_score=0.0)
    s = Player(real_source, "scene-0916", load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"]),
               OracleDetector(), opts).run()
    assert s.frames == 4 and s.mean_ms["track"] > 0
    with open(tmp_path / "r.json") as f:
        frames = json.load(f)["frames"]
    by_frame = [{t["id"]: t for t in fr["tracks"]} for fr in frames]
    assert all(len(b) > 10 for b in by_frame)
    # the same objects keep their IDs from keyframe to keyframe (ground truth through the tracker),
    # and each track's global centre moves by less than its class gate between two frames
    for a, b in zip(by_frame, by_frame[1:]):
        common = set(a) & set(b)
        assert len(common) >= 0.8 * min(len(a), len(b))
        for i in common:
            assert a[i]["label"] == b[i]["label"]
            assert np.hypot(*np.subtract(a[i]["global"][:2], b[i]["global"][:2])) < 13.0
    assert max(t["hits"] for t in frames[-1]["tracks"]) == 4
    assert "trk " in frames[-1]["status_line"][0]
    assert len(os.listdir(tmp_path / "png")) == 4


def test_track_ids_and_trails_are_drawn_in_every_panel(real_source):
    from perception.replay.player import track_overlay
    from perception.sync.synchronizer import FrameBuilder
    from perception.viz import BevRenderer, CameraMosaic, SoftwareSceneRenderer

    cfg = load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"])
    fb = FrameBuilder(real_source, "scene-0916", cfg)
    trk, trails = default_tracker(), TrailHistory()
    for ref in [r for r in fb.references if r.is_key_frame][:3]:
        frame = fb.build(ref, with_gt=True, load_images=True)
        gt = frame.gt.select(frame.gt.num_lidar_pts > 0)
        tracks = trk.step(Detections(frame.sample_token, frame.timestamp, gt), frame.T_global_from_ego)
        trails.update(tracks)
    overlay = track_overlay(tracks, trails, frame.T_global_from_ego, 0.0)
    assert len(overlay) > 5 and any(len(t) == 3 for t in overlay.trails)
    # the overlay's ego-frame boxes are the frame's ground truth again (global and back)
    np.testing.assert_allclose(np.sort(overlay.boxes[:, 0]), np.sort(gt.select(np.isin(
        gt.labels, [CLASS_TO_ID[c] for c in ("car", "truck", "bus", "trailer", "pedestrian", "motorcycle",
                                            "bicycle")])).boxes[:, 0]), atol=1e-6)
    det = Detections(frame.sample_token, frame.timestamp, gt)
    for render in (BevRenderer(400).render, CameraMosaic((320, 180)).render, SoftwareSceneRenderer().render):
        plain = render(frame, det)
        drawn = render(frame, det, tracks=overlay)
        assert plain.shape == drawn.shape and (plain != drawn).any(axis=2).sum() > 50, render
