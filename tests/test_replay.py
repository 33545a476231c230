"""Replay, headless: video frames and size, JSON log, pixel positions of boxes in the BEV panel and a
camera tile, --drop-sensor in the status line, and the 3D renderers."""
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from perception.config import load_config
from perception.structures import Boxes3D, Detections
from perception.sync.calibration import project_to_image
from perception.sync.synchronizer import FrameBuilder

from conftest import PROJECT, REAL_ROOT, REAL_VERSION

sys.path.insert(0, os.path.join(PROJECT, "tools"))

# a micro model (as tests/test_model.py's) so that a replay step takes well under a second
MICRO_YAML = f"""_base_: {PROJECT}/configs/fusion_tiny.yaml
grid: {{point_cloud_range: [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0], voxel_size: [0.8, 0.8, 8.0]}}
model:
  bev_stride: 1
  bev_channels: 16
  lidar: {{pfn_channels: [16], backbone_layers: [1, 1], backbone_strides: [1, 2], backbone_channels: [16, 16],
          neck_channels: [16, 16]}}
  camera: {{image_size: [64, 160], backbone_width: 8, channels: 8, depth_bins: [1.0, 33.0, 2.0]}}
  radar: {{pfn_channels: [8], conv_channels: 16}}
  head: {{channels: 16}}
  fusion: {{heads: 2}}
"""
N_FRAMES = 3
GREEN = np.array([0, 255, 0], np.uint8)


@pytest.fixture(scope="module")
def micro(tmp_path_factory, real_root):
    from perception.models.build import build_model

    d = tmp_path_factory.mktemp("micro")
    cfg_path = d / "micro.yaml"
    cfg_path.write_text(MICRO_YAML)
    torch.manual_seed(0)
    model = build_model(load_config(str(cfg_path)))
    ckpt = d / "micro.pt"
    torch.save({"model": model.state_dict()}, ckpt)  # what load_checkpoint_into reads
    return str(cfg_path), str(ckpt)


@pytest.fixture(scope="module")
def replay_run(micro, tmp_path_factory):
    import replay

    cfg_path, ckpt = micro
    out = tmp_path_factory.mktemp("replay") / "scene.mp4"
    png = out.parent / "png"
    rc = replay.main(["--dataroot", REAL_ROOT, "--version", REAL_VERSION, "--scene", "scene-0916",
                      "--config", cfg_path, "--checkpoint", ckpt, "--out", str(out), "--headless",
                      "--max-frames", str(N_FRAMES), "--png-dir", str(png), "--min-score", "0.0"])
    assert rc == 0
    with open(out.with_suffix(".json")) as f:
        log = json.load(f)
    return out, png, log


def video_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def test_replay_writes_video_json_and_pngs(replay_run):
    from perception.viz import Dashboard

    out, png, log = replay_run
    frames = video_frames(out)
    dash = Dashboard()
    assert len(frames) == N_FRAMES
    assert all(f.shape == (dash.height, dash.width, 3) for f in frames)
    assert sorted(os.listdir(png)) == [f"frame_{i:05d}.png" for i in range(N_FRAMES)]
    assert cv2.imread(str(png / "frame_00000.png")).shape == (dash.height, dash.width, 3)
    # one record per frame; the real root has no sweep files, so the frames are keyframes
    assert [r["index"] for r in log["frames"]] == list(range(N_FRAMES))
    assert log["summary"]["frames"] == N_FRAMES
    for r in log["frames"]:
        assert r["sample_token"] and r["status"]["LIDAR_TOP"]["present"]
        if r["index"] > 0:  # the sweeps in the window (none before the first keyframe) are absent
            assert r["status"]["LIDAR_TOP"]["num_missing"] >= 1
        # a real keyframe sweep has ~34.7k points, ~27% of them the car's own (sync.lidar_remove_close)
        assert r["num_gt"] > 10 and r["num_lidar_points"] > 20000
        assert {"sync", "load", "voxelize", "model", "decode", "render"} <= set(r["timings_ms"])
        assert len(r["detections"]) > 0  # an untrained model still decodes its top-k peaks
        d = r["detections"][0]
        assert len(d["box"]) == 9 and 0.0 <= d["score"] <= 1.0 and d["label"]
        assert "CF:" in r["status_line"][0] and "fps" in r["status_line"][1]
    ts = [r["timestamp"] for r in log["frames"]]
    assert ts == sorted(ts) and len(set(ts)) == N_FRAMES
    assert log["renderer"].startswith(("open3d", "software"))


def test_drop_sensor_changes_status_not_frame_count(replay_run, real_source, tmp_path):
    from perception.replay import Player, ReplayOptions

    _, _, base = replay_run
    out = tmp_path / "drop.mp4"
    s = Player(real_source, "scene-0916", load_config(None), None,
               ReplayOptions(drop=["CAM_FRONT", "RADAR_FRONT"], max_frames=N_FRAMES, out_video=str(out),
                             out_json=str(tmp_path / "drop.json"))).run()
    assert s.frames == N_FRAMES
    assert len(video_frames(out)) == N_FRAMES
    with open(tmp_path / "drop.json") as f:
        log = json.load(f)
    assert len(log["frames"]) == N_FRAMES
    for r, b in zip(log["frames"], base["frames"]):
        assert r["timestamp"] == b["timestamp"]
        assert " CF:DROP " in r["status_line"][0] and " RF:DROP " in r["status_line"][0]
        assert " CF:DROP " not in b["status_line"][0] and " CF:-" in b["status_line"][0]
        assert r["status"]["CAM_FRONT"] == {**r["status"]["CAM_FRONT"], "present": False, "reason": "dropped"}
        assert b["status"]["CAM_FRONT"]["present"]
        # the other sensors' tokens are unchanged
        keep = lambda line: [t for t in line.split("|")[1].split() if not t.startswith(("CF:", "RF:"))]  # noqa: E731
        assert keep(r["status_line"][0]) == keep(b["status_line"][0])
        assert r["detections"] == []  # no checkpoint: a data viewer


@pytest.fixture(scope="module")
def real_frame(real_source):
    fb = FrameBuilder(real_source, "scene-0916", load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"]))
    return fb.build(fb.keyframe_references[10])


def one_box(x, y, z, l, w, h, yaw, label=0, score=1.0):
    return Boxes3D(np.array([[x, y, z, l, w, h, yaw, 0.0, 0.0]]), [label], [-1], [score], [-1], [-1], [""], [""])


def test_box_at_known_position_in_bev_and_camera_pixels(real_frame):
    from perception.viz import CLASS_COLORS, Dashboard

    frame = real_frame
    x, y, z, l, w, h = 14.0, 1.5, 0.8, 4.0, 2.0, 1.6
    frame.gt = one_box(x, y, z, l, w, h, 0.0)
    pred = Detections(frame.sample_token, frame.timestamp, one_box(-12.0, -8.0, 0.8, 4.5, 1.9, 1.7, 0.3, label=1, score=0.8))
    dash = Dashboard()
    canvas = dash.compose(frame, pred, ["status"])
    # BEV: 600 px for +-50 m, ego at the centre, x up, y left
    bx, by = dash.origin["bev"]
    s = 600 / 100.0
    assert (canvas[by + int(round(300 - x * s)), bx + int(round(300 - y * s))] == GREEN).all()
    assert tuple(canvas[by + int(round(300 + 12.0 * s)), bx + int(round(300 + 8.0 * s))]) == CLASS_COLORS[1]
    # CAM_FRONT tile: the box's bottom front-left corner, projected with the calibration and scaled
    cam = next(c for c in frame.cameras if c.channel == "CAM_FRONT")
    corner = np.array([[x + l / 2, y + w / 2, z - h / 2]])
    uv, depth, inside = project_to_image(corner, cam.T_ego_from_cam, cam.intrinsics, cam.width, cam.height)
    assert inside[0] and depth[0] > 5
    tx, ty = dash.origin["cameras"][0] + 320, dash.origin["cameras"][1]  # CAM_FRONT: top row, middle
    col, row = int(uv[0, 0] * 320 / cam.width) + tx, int(uv[0, 1] * 180 / cam.height) + ty
    patch = canvas[row - 1:row + 2, col - 1:col + 2].reshape(-1, 3)
    assert (patch == GREEN).all(axis=1).any()
    # ... and it is the box that made it green
    frame.gt = Boxes3D.empty()
    bare = dash.compose(frame, None, ["status"])
    assert not (bare[row - 1:row + 2, col - 1:col + 2].reshape(-1, 3) == GREEN).all(axis=1).any()


def test_software_3d_renderer_draws_boxes_through_the_chase_camera(real_frame):
    from perception.viz import ChaseCamera, SoftwareSceneRenderer
    from perception.viz.palette import box_corners

    frame = real_frame
    frame.gt = one_box(15.0, -3.0, 0.8, 4.0, 2.0, 1.6, 0.4)
    r = SoftwareSceneRenderer(ChaseCamera())
    img = r.render(frame, None)
    assert img.shape == (480, 960, 3)
    uv, z = r.camera.project(box_corners(frame.gt.boxes)[0])
    assert (z > 0).all()
    hits = 0
    for u, v in uv:
        patch = img[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2].reshape(-1, 3).astype(int)
        hits += (np.abs(patch - GREEN).sum(axis=1) < 120).any()  # anti-aliased lines
    assert hits >= 6
