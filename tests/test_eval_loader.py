"""The evaluation data path (perception/eval/data.py): the DataLoader over the cached index gives the
detections of the reference path (frame by frame in the main process), batch for batch; a frame masked
in memory equals the frame dropped at read time; one pass over several sensor cases equals a pass
per case."""
import os

import numpy as np
import pytest
import torch

from perception.config import load_config
from perception.eval import data as evdata
from perception.eval import evaluate as ev

from conftest import PROJECT
from test_model import micro_cfg

CONFIG = os.path.join(PROJECT, "configs", "default.yaml")
CASES = [[], ["CAM_FRONT"], ["CAM_BACK_LEFT", "RADAR_FRONT"], ["camera"], ["radar"], ["lidar"],
         ["RADAR_BACK_LEFT"]]


def assert_same_output(got, want):
    assert list(got.detections) == list(want.detections)
    for token, w in want.detections.items():
        g = got.detections[token]
        assert g.sample_token == w.sample_token and g.timestamp == w.timestamp
        for name in ("boxes", "scores", "labels", "attributes"):
            a, b = getattr(g.boxes, name, None), getattr(w.boxes, name, None)
            if b is None:
                assert a is None
                continue
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (token, name)
        assert np.array_equal(got.T_global_from_ego[token], want.T_global_from_ego[token])
    assert got.present == want.present
    assert dict(got.problems) == dict(want.problems)


def assert_same_frame(got, want):
    for name in ("timestamp", "scene_token", "sample_token", "lidar_token"):
        assert getattr(got, name) == getattr(want, name)
    for name in ("lidar_points", "radar_points", "T_global_from_ego", "ego_velocity"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert got.status == want.status and list(got.status) == list(want.status)
    assert len(got.cameras) == len(want.cameras)
    for a, b in zip(got.cameras, want.cameras):
        assert (a.channel, a.present, a.timestamp, a.width, a.height, a.token, a.filename) == \
               (b.channel, b.present, b.timestamp, b.width, b.height, b.token, b.filename)
        assert np.array_equal(a.intrinsics, b.intrinsics) and np.array_equal(a.T_ego_from_cam, b.T_ego_from_cam)
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert np.array_equal(a.image, b.image)


def assert_same_sample(a, b):
    for name in ("lidar_points", "radar_points", "images", "intrinsics", "img_aug", "T_ego_from_cam", "camera_mask",
                 "modality_mask", "ego_velocity", "gt_boxes", "gt_labels", "gt_attributes", "depth_targets"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


@pytest.fixture(scope="module")
def val_tokens(real_source):
    return ev.split_sample_tokens(real_source.nusc, "val")


def test_mask_frame_equals_dropping_at_read_time(real_source, val_tokens):
    from perception.data.batch import frame_to_sample
    from perception.sync.synchronizer import FrameBuilder, assemble_frame, mask_frame

    cfg = micro_cfg("sync.lidar_sweeps=1", "sync.radar_sweeps=3")
    token = val_tokens[5]
    fb = FrameBuilder(real_source, real_source.nusc.get("sample", token)["scene_token"], cfg)
    plan = fb.plan(fb.reference_for_sample(token))
    rows = {}
    full = assemble_frame(plan, radar_rows=rows)
    assert sum(rows.values()) == len(full.radar_points) > 0
    cache = {}
    for drop in CASES + [["CAM_FRONT", "CAM_BACK", "lidar", "radar"]]:
        want = assemble_frame(plan, drop)
        got = mask_frame(full, plan, drop, rows)
        assert_same_frame(got, want)
        # the model's input of the masked frame, with the per-frame cache, equals a fresh conversion
        assert_same_sample(frame_to_sample(got, cfg, cache=cache), frame_to_sample(want, cfg))
    # masking a frame that was itself read with part of the drop
    part = assemble_frame(plan, ["radar"], radar_rows=(r2 := {}))
    assert_same_frame(mask_frame(part, plan, ["radar", "CAM_FRONT"], r2), assemble_frame(plan, ["radar", "CAM_FRONT"]))


def test_oracle_loader_equals_frames_on_real_scenes(real_source, val_tokens, tmp_path):
    cfg = load_config(CONFIG)
    tokens = val_tokens[::8]
    want = ev.run_inference(ev.OracleDetector(), real_source, cfg, tokens, data_path="frames")
    for workers, cache in ((0, None), (2, str(tmp_path / "cache"))):
        got = ev.run_inference(ev.OracleDetector(), real_source, cfg, tokens, workers=workers, cache_dir=cache,
                               split="val")
        assert_same_output(got, want)
    assert len(os.listdir(tmp_path / "cache")) == 1  # the split's index, cached once


def test_model_cases_in_one_pass_equal_a_pass_per_case(real_source, val_tokens, tmp_path):
    """A micro fusion model (random weights, heatmap biased so boxes come out): every sensor case of
    one loader pass (2 workers, cached index, batches of 2, sharded as rank 1 of 2) equals the
    reference path run case by case, detections, presence and camera depth metrics."""
    from perception.models.build import build_model

    cfg = micro_cfg("sync.lidar_sweeps=1", "sync.radar_sweeps=2")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "heatmap" in name and name.endswith("bias"):
                p.fill_(1.0)
    det = ev.ModelDetector(model, cfg)
    tokens = val_tokens[:4]
    cases = [[], ["CAM_FRONT"], ["CAM_BACK_LEFT", "RADAR_FRONT"], ["lidar"]]
    got = ev.run_inference_cases(det, real_source, cfg, tokens, cases, batch_size=2, rank=1, world_size=2,
                                 workers=2, cache_dir=str(tmp_path / "cache"), split="val")
    assert len(got) == len(cases)
    n_boxes = 0
    for drop, g in zip(cases, got):
        want = ev.run_inference_frames(det, real_source, cfg, tokens, drop=drop, batch_size=2, rank=1, world_size=2)
        assert_same_output(g, want)
        assert (g.depth is None) == (want.depth is None)
        if want.depth is not None:
            assert g.depth.summary(cfg.data.cameras) == want.depth.summary(cfg.data.cameras)
        n_boxes += sum(len(d.boxes) for d in want.detections.values())
    assert n_boxes > 0
    assert not got[3].present["lidar"] and got[0].present["lidar"] and got[1].present["camera"]


def test_unreadable_files_recorded_per_case(real_root, tmp_path):
    """A truncated camera file and a missing radar file: each case records what reading with its drop
    records (nothing for a dropped channel), as the reference path does."""
    from perception.data.nuscenes_source import NuScenesSource

    root = tmp_path / "root"
    root.mkdir()
    for name in ("v1.0-trainval", "maps"):
        os.symlink(os.path.join(real_root, name), root / name)
    src_samples = os.path.join(real_root, "samples")
    source = NuScenesSource(str(root), "v1.0-trainval")
    tokens = ev.split_sample_tokens(source.nusc, "val")[:3]
    sample = source.nusc.get("sample", tokens[1])
    broken = {source.nusc.get("sample_data", sample["data"]["CAM_FRONT"])["filename"]: "truncate",
              source.nusc.get("sample_data", sample["data"]["RADAR_FRONT"])["filename"]: "missing"}
    for ch in os.listdir(src_samples):
        os.makedirs(root / "samples" / ch)
        for f in os.listdir(os.path.join(src_samples, ch)):
            rel = f"samples/{ch}/{f}"
            if broken.get(rel) == "truncate":
                with open(os.path.join(src_samples, ch, f), "rb") as fin:
                    (root / rel).write_bytes(fin.read()[:500])
            elif broken.get(rel) != "missing":
                os.symlink(os.path.join(src_samples, ch, f), root / rel)
    cfg = load_config(CONFIG, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"])

    class Nothing:
        needs_images = True

        def predict(self, frames):
            from perception.structures import Boxes3D, Detections

            return [Detections(f.sample_token, f.timestamp, Boxes3D.empty()) for f in frames]

    drops = [[], ["CAM_FRONT"], ["radar"], ["camera", "radar"]]
    got = ev.run_inference_cases(Nothing(), source, cfg, tokens, drops, workers=0)
    for drop, g in zip(drops, got):
        want = ev.run_inference_frames(Nothing(), source, cfg, tokens, drop=drop)
        assert dict(g.problems) == dict(want.problems), drop
        assert g.problems.examples == want.problems.examples
    assert dict(got[0].problems) == {"CAM_FRONT": 1, "RADAR_FRONT": 1}
    with pytest.raises(Exception, match="strict"):
        ev.run_inference_cases(Nothing(), source, cfg, tokens, [[]], workers=2, strict=True)


def test_problems_without():
    from perception.data.problems import FileProblems

    p = FileProblems()
    p.add("CAM_FRONT", "a.jpg", "a.jpg: truncated", log_first=False)
    p.add("RADAR_FRONT", "b.pcd", "b.pcd: missing", log_first=False)
    assert dict(evdata.problems_without(p, ["radar"])) == {"CAM_FRONT": 1}
    assert dict(evdata.problems_without(p, ["CAM_FRONT"])) == {"RADAR_FRONT": 1}
    assert evdata.problems_without(p, []).examples == p.examples
