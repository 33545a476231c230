"""The data side of the nuScenes recipe (issue 15): the car's own LiDAR returns dropped before motion
compensation, a z range that holds the ground truth in the ego frame, class-balanced sampling
(CBGS) that resumes bit for bit, and a training image crop centred on the test crop."""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import numpy as np
import pytest

from perception.config import ConfigError, load_config
from perception.data.gt_filter import GtZRange, used_gt_mask, z_outside_mask
from perception.engine.augment import draw_image_aug, sample_rng
from perception.engine.dataset import ClassBalancedSampler, ResumableSampler, make_sampler, sample_classes
from perception.geometry import apply, invert
from perception.structures import CLASSES, LIDAR_CHANNEL, Boxes3D, CameraImage, Frame
from perception.sync.synchronizer import FrameBuilder, assemble_frame, close_mask, remove_close

from conftest import PROJECT, REAL_VERSION

NUSCENES_CONFIG = os.path.join(PROJECT, "configs", "fusion_nuscenes.yaml")
OLD_Z = ["grid.point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]", "grid.voxel_size=[0.2, 0.2, 8.0]"]


# ---------------------------------------------------------------------------------------------
# remove_close
# ---------------------------------------------------------------------------------------------
def test_close_mask_is_a_horizontal_circle_in_the_sensor_frame():
    pts = np.array([[0.0, 0.0, 5.0], [0.99, 0.0, -1.8], [0.7, 0.7, 0.0], [0.71, 0.71, 0.0], [1.0, 0.0, 0.0],
                    [0.0, -1.2, 0.0], [-0.5, 0.5, 3.0]], np.float32)
    # 0.7^2 * 2 = 0.98 < 1 inside; 0.71^2 * 2 = 1.0082 outside (mmdet3d's square would drop it);
    # exactly 1.0 is kept (strictly closer than the radius is dropped); height does not matter
    assert close_mask(pts, 1.0).tolist() == [True, True, True, False, False, False, True]
    assert not close_mask(pts, 0.0).any()
    assert remove_close(pts, 0.0) is pts
    assert len(remove_close(pts, 1.0)) == 3
    assert remove_close(pts[:0], 1.0).shape == (0, 3)


@pytest.fixture(scope="module")
def real_plan(real_source):
    """A 3-sweep plan of a real keyframe whose two past sweeps read the two previous keyframes' files
    (the real root has no sweep files): three real sweeps, each with the car's own returns, each
    with its own sensor -> reference-ego transform."""
    fb = FrameBuilder(real_source, "scene-0916", load_config(None, ["sync.lidar_sweeps=3", "sync.radar_sweeps=2"]))
    keys = fb.keyframe_references
    plan = fb.plan(keys[6])
    lp = plan.channels[LIDAR_CHANNEL]
    assert len(lp.reads) == 3 and lp.reads[0].token == plan.lidar_token
    reads = [lp.reads[0]] + [dataclasses.replace(r, path=real_source.path(k))
                             for r, k in zip(lp.reads[1:], (keys[5], keys[4]))]
    channels = dict(plan.channels)
    channels[LIDAR_CHANNEL] = dataclasses.replace(lp, reads=reads)
    return dataclasses.replace(plan, channels=channels)


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_no_point_of_any_sweep_within_the_radius_of_the_sensor_survives(real_plan, radius):
    from perception.data.io import read_lidar

    reads = real_plan.channels[LIDAR_CHANNEL].reads
    kept = assemble_frame(dataclasses.replace(real_plan, lidar_remove_close=radius), load_images=False)
    everything = assemble_frame(dataclasses.replace(real_plan, lidar_remove_close=0.0), load_images=False)
    assert kept.status[LIDAR_CHANNEL].present
    for r in reads:
        lag = np.float32((real_plan.timestamp - r.timestamp) * 1e-6)
        raw = read_lidar(r.path)
        n_close = int(close_mask(raw, radius).sum())
        assert n_close > 1000  # the car's own returns are there to remove (real: ~27% within 1 m)
        for frame, expect in ((kept, len(raw) - n_close), (everything, len(raw))):
            pts = frame.lidar_points[frame.lidar_points[:, 5] == lag]
            assert len(pts) == expect
            # back into this sweep's own sensor frame: the radius is measured there, before compensation
            sensor = apply(invert(r.T_ref_from_sensor), pts[:, :3].astype(np.float64))
            r_xy = np.hypot(sensor[:, 0], sensor[:, 1])
            if frame is kept:
                assert r_xy.min() >= radius - 1e-4
            else:
                assert (r_xy < radius).sum() == n_close  # without the option they are all kept


def test_radar_is_not_affected_by_remove_close(real_plan):
    a = assemble_frame(dataclasses.replace(real_plan, lidar_remove_close=5.0), load_images=False)
    b = assemble_frame(dataclasses.replace(real_plan, lidar_remove_close=0.0), load_images=False)
    assert len(a.radar_points) > 0 and np.array_equal(a.radar_points, b.radar_points)
    assert len(a.lidar_points) < len(b.lidar_points)


def test_frame_builder_takes_the_radius_from_the_config(real_source):
    for value in (0.0, 1.0):
        cfg = load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1", f"sync.lidar_remove_close={value}"])
        fb = FrameBuilder(real_source, "scene-0523", cfg)
        assert fb.plan(fb.keyframe_references[0]).lidar_remove_close == value
    assert load_config(None).sync.lidar_remove_close == 1.0  # on by default
    assert load_config(NUSCENES_CONFIG).sync.lidar_remove_close == 1.0


@pytest.mark.parametrize("value, expected", [
    ("-0.5", "sync.lidar_remove_close must be >= 0"),
    ("near", "'sync.lidar_remove_close' must be a number"),
])
def test_remove_close_config_errors_are_one_line_naming_the_field(value, expected):
    with pytest.raises(ConfigError) as e:
        load_config(NUSCENES_CONFIG, [f"sync.lidar_remove_close={value}"])
    assert expected in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'sync.lidar_remove_close'"):
        load_config(NUSCENES_CONFIG, ["sync.lidar_remove_closer=1"])


def test_doctor_reports_the_fraction_removed_and_the_gt_outside_the_z_range(real_root):
    from perception.data.doctor import run_doctor

    new = run_doctor(real_root, REAL_VERSION, load_config(NUSCENES_CONFIG), keyframes_only=True)
    old = run_doctor(real_root, REAL_VERSION, load_config(NUSCENES_CONFIG, OLD_Z + ["sync.lidar_remove_close=0"]),
                     keyframes_only=True)
    for name, sc in new["scenes"].items():
        lidar = sc["channels"][LIDAR_CHANNEL]
        assert lidar["remove_close_m"] == 1.0 and lidar["points_read"] > 30000 * 40
        assert 0.15 < lidar["removed_close_fraction"] < 0.4  # real: 30.1% (scene-0523), 23.7% (scene-0916)
        assert "removed_close_fraction" not in sc["channels"]["RADAR_FRONT"]
        assert old["scenes"][name]["channels"][LIDAR_CHANNEL]["removed_close_fraction"] == 0.0
    assert new["gt_z_range"]["outside"] == 0 and new["gt_z_range"]["boxes"] > 3000
    assert old["gt_z_range"]["outside"] > 400 and old["gt_z_range"]["outside_by_class"]["trailer"] > 100
    assert not any(p["kind"] == "gt_z_range" for p in old["problems"])  # a warning, not a problem of the drive
    json.dumps(new)  # the report stays JSON-ready


# ---------------------------------------------------------------------------------------------
# z range
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_gt(real_source):
    cfg = load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"])
    out = []
    for scene in ("scene-0523", "scene-0916"):
        fb = FrameBuilder(real_source, scene, cfg)
        out += [fb.plan(ref).gt for ref in fb.keyframe_references]
    assert len(out) == 81
    return out


def test_real_gt_boxes_lie_inside_every_configs_z_range(real_gt):
    for path in sorted(glob.glob(os.path.join(PROJECT, "configs", "*.yaml"))):
        cfg = load_config(path)
        z = GtZRange(cfg.grid.point_cloud_range).add_all(real_gt)
        assert z.total > 3000, path
        assert z.outside == 0, (path, z.message())
    # the LiDAR-frame range read in the ego frame cuts hundreds of them: the check can fail
    old = GtZRange(load_config(NUSCENES_CONFIG, OLD_Z).grid.point_cloud_range).add_all(real_gt)
    assert old.outside > 400 and {"trailer", "bus", "truck"} <= set(old.outside_by_class)


def test_z_outside_mask_uses_the_box_extent_and_the_warning_says_how_many(caplog):
    boxes = np.array([[0, 0, 1.0, 4, 2, 1.8, 0, 0, 0],     # inside [-1, 3]
                      [0, 0, 2.5, 12, 3, 1.2, 0, 0, 0],    # top 3.1: leaves
                      [0, 0, -0.5, 1, 1, 1.2, 0, 0, 0],    # bottom -1.1: leaves
                      [90, 0, 9.0, 4, 2, 1.8, 0, 0, 0]])   # outside the BEV range: not a used box
    assert z_outside_mask(boxes, [-50, -50, -1, 50, 50, 3]).tolist() == [False, True, True, True]
    gt = Boxes3D(boxes, [0, 2, 5, 0], [0] * 4, np.ones(4), [10] * 4, [0] * 4, [""] * 4, [""] * 4)
    assert used_gt_mask(gt, [-50, -50, -1, 50, 50, 3]).tolist() == [True, True, True, False]
    z = GtZRange([-50, -50, -1, 50, 50, 3]).add_all([gt, None])
    assert (z.total, z.outside, z.outside_by_class) == (3, 2, {"bus": 1, "pedestrian": 1})
    with caplog.at_level(logging.WARNING):
        assert z.warn("boxes of split x")
    assert "2 of 3 boxes of split x leave grid.point_cloud_range z [-1, 3]" in caplog.text
    assert not GtZRange([-50, -50, -5, 50, 50, 5]).add_all([gt]).warn()


# ---------------------------------------------------------------------------------------------
# CBGS
# ---------------------------------------------------------------------------------------------
def imbalanced_classes(n=60, seed=3):
    """Per sample class sets: car in almost all, pedestrian in half, bus in 3, trailer in 1, no class in 2."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c = set()
        if i % 20 != 19:
            c.add(0)
        if rng.random() < 0.5:
            c.add(5)
        if i in (4, 30, 41):
            c.add(2)
        if i == 17:
            c.add(3)
        if i in (50, 51):
            c = set()
        out.append(np.array(sorted(c), np.int64))
    return out


def keys_of(sampler, epoch, start_step=0):
    sampler.set_epoch(epoch, start_step)
    return list(sampler)


def test_cbgs_gives_every_class_an_equal_share():
    classes = imbalanced_classes()
    s = ClassBalancedSampler(classes, batch_size=4, seed=7)
    pairs = sum(len(c) for c in classes)
    assert s.classes == [0, 2, 3, 5]
    assert s.draws == [pairs // 4] * 4  # int(n_c * (1/C) / (n_c / P)) for every class
    drawn = s.epoch_indices(0)
    assert len(drawn) == s.n == sum(s.draws)
    for k, (group, c) in enumerate(zip(s.groups, s.classes)):
        part = drawn[k * s.draws[0]:(k + 1) * s.draws[0]]
        assert all(c in classes[i] for i in part)  # each class's share is drawn from its samples
    # the rare classes' samples repeat: the trailer sample alone fills a quarter of the epoch
    order = s.epoch_order(0)
    frac = {c: np.mean([c in classes[i] for i in order]) for c in s.classes}
    plain = {c: np.mean([c in cl for cl in classes]) for c in s.classes}
    assert frac[3] >= 0.24 and plain[3] < 0.02
    assert frac[2] >= 0.24 and plain[2] < 0.06
    assert 50 not in order and 51 not in order  # samples without a class are never drawn
    with pytest.raises(Exception, match="no sample of the index holds"):
        ClassBalancedSampler([np.zeros(0, np.int64)] * 3, 2)


def test_cbgs_order_is_deterministic_rank_sliced_and_resumes_bit_for_bit():
    classes = imbalanced_classes()
    b, world = 2, 3
    single = ClassBalancedSampler(classes, b * world, 1, 0, seed=5)
    for epoch in (0, 1, 7):
        full = keys_of(single, epoch)
        # a fresh sampler (a resumed process) gives the very same keys
        assert keys_of(ClassBalancedSampler(classes, b * world, 1, 0, seed=5), epoch) == full
        # resuming mid-epoch continues exactly where the run stopped
        for start in (1, single.steps_per_epoch // 2, single.steps_per_epoch - 1):
            again = ClassBalancedSampler(classes, b * world, 1, 0, seed=5)
            assert keys_of(again, epoch, start) == full[start * b * world:]
            assert len(again) == len(full) - start * b * world
        # the ranks' slices of each step are that step's global batch
        ranks = [keys_of(ClassBalancedSampler(classes, b, world, r, seed=5), epoch) for r in range(world)]
        for step in range(single.steps_per_epoch):
            glob_ = sorted(full[step * b * world:(step + 1) * b * world])
            assert sorted(sum((r[step * b:(step + 1) * b] for r in ranks), [])) == glob_
    assert keys_of(single, 0) != keys_of(single, 1)  # a new draw and order every epoch
    assert keys_of(ClassBalancedSampler(classes, b * world, seed=6), 0) != keys_of(single, 0)  # seed matters


def test_cbgs_repeats_are_augmented_differently():
    classes = imbalanced_classes()
    s = ClassBalancedSampler(classes, 4, seed=1)
    keys = keys_of(s, 0)
    assert all(len(k) == 3 for k in keys)
    seen = {}
    for e, i, c in keys:
        assert c == seen.get(i, 0)  # copy counts the earlier occurrences
        seen[i] = c + 1
    assert max(seen.values()) > 5  # rare classes' samples repeat
    assert len(set(keys)) == len(keys)  # so every key (and its augmentation) is distinct
    # copy 0 is the plain sampler's generator, unchanged; repeats draw other augmentations
    assert sample_rng(3, 1, 5, copy=0).random() == sample_rng(3, 1, 5).random()
    assert sample_rng(3, 1, 5, copy=1).random() != sample_rng(3, 1, 5).random()
    order = np.array([4, 2, 4, 4, 9, 2])
    assert ClassBalancedSampler.copy_numbers(order).tolist() == [0, 0, 1, 2, 0, 1]


def test_make_sampler_follows_train_cbgs():
    boxes = np.zeros((2, 9))
    boxes[:, 3:6] = 1.0

    class Plan:
        def __init__(self, labels):
            self.gt = Boxes3D(boxes[:len(labels)], labels, [0] * len(labels), np.ones(len(labels)),
                              [5] * len(labels), [0] * len(labels), [""] * len(labels), [""] * len(labels))

    plans = [Plan([0]), Plan([0, 0]), Plan([0, 4]), Plan([])]
    cfg = load_config(NUSCENES_CONFIG)
    assert cfg.train.cbgs  # on by default for nuScenes
    assert [c.tolist() for c in sample_classes(plans, cfg)] == [[0], [0], [0, 4], []]
    s = make_sampler(plans, cfg)
    assert isinstance(s, ClassBalancedSampler) and s.classes == [0, 4]
    plain = make_sampler(plans, load_config(NUSCENES_CONFIG, ["train.cbgs=false"]))
    assert type(plain) is ResumableSampler and plain.n == 4
    assert not load_config(os.path.join(PROJECT, "configs", "fusion_tiny.yaml")).train.cbgs


def test_cbgs_training_resumes_bit_for_bit(tmp_path):
    """4 CBGS steps straight vs 2 steps then --resume to 4 (constant schedule, deterministic): the
    same weights bit for bit, so the resumed run saw the very same samples and augmentations.
    Kept cheap: one 2 s train scene and no val scene (CBGS still repeats its rarer classes), the
    micro model of the engine tests with a slim BEV decoder."""
    import torch

    from perception.data.synthetic import generate, preset
    from test_engine import CONFIG, ENGINE, records, run_train, states

    root = str(tmp_path / "root")
    generate(root, preset("tiny", train_scenes=1, val_scenes=0, duration_s=2.0), seed=11)
    slim_decoder = ["model.decoder.layers=[1, 1]", "model.decoder.strides=[1, 2]", "model.decoder.channels=[16, 16]",
                    "model.decoder.neck_channels=[16, 16]"]
    common = ["--dataroot", root, "--no-progress", "--set", *ENGINE, *slim_decoder, "train.batch_size=2",
              "train.num_workers=0", "train.deterministic=true", "train.cbgs=true", "train.schedule=constant"]
    ref, work = str(tmp_path / "ref"), str(tmp_path / "resumed")
    run_train([CONFIG, "--work-dir", ref, "--max-steps", "4"] + common)
    run_train([CONFIG, "--work-dir", work, "--max-steps", "2"] + common)
    run_train([CONFIG, "--work-dir", work, "--max-steps", "4", "--resume"] + common)
    start = [r for r in records(ref) if r.get("event") == "start"][0]
    assert start["cbgs"] and start["samples_per_epoch"] > start["samples"]
    # the second run of the work dir really resumed from its step-2 checkpoint
    assert [(r["step"], bool(r["resumed_from"])) for r in records(work) if r.get("event") == "start"] == \
        [(0, False), (2, True)]
    a = states(os.path.join(ref, "checkpoints", "ckpt_00000004.pt"))["model"]
    b = states(os.path.join(work, "checkpoints", "ckpt_00000004.pt"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = {r["step"]: r["loss"]["total"] for r in records(ref) if "loss" in r}
    lb = {r["step"]: r["loss"]["total"] for r in records(work) if "loss" in r}
    assert all(la[s] == lb[s] for s in range(1, 5))


# ---------------------------------------------------------------------------------------------
# Image crop
# ---------------------------------------------------------------------------------------------
def principal_point_rows(aug, image_size, n=400, W0=1600, H0=900):
    """Network-pixel rows where the image centre row (the horizon of a level camera) lands under n
    training draws, and under the test-time crop (bottom, scale 1)."""
    from perception.data.batch import resize_crop_matrix

    cam = CameraImage("CAM_FRONT", None, np.eye(3), np.eye(4), 0, W0, H0)
    frame = Frame(0, "", "", "", np.zeros((0, 6), np.float32), np.zeros((0, 7), np.float32), [cam], np.eye(4),
                  np.zeros(3), None, {})
    rows = []
    for i in range(n):
        (A,) = draw_image_aug(sample_rng(0, 0, i), ["CAM_FRONT"], frame, image_size, aug)
        rows.append((A @ [W0 / 2, H0 / 2, 1.0])[1])
    test = (resize_crop_matrix(W0, H0, image_size) @ [W0 / 2, H0 / 2, 1.0])[1]
    margin = H0 * image_size[1] / W0 - image_size[0]
    return np.array(rows), test, margin


@pytest.mark.parametrize("name", ["fusion_nuscenes", "fusion_tiny"])
def test_training_crop_is_centred_on_the_test_crop(name):
    cfg = load_config(os.path.join(PROJECT, "configs", f"{name}.yaml"))
    rows, test, margin = principal_point_rows(cfg.train.augment, cfg.model.camera.image_size)
    assert margin > 30
    # the horizon lands where the test puts it, up to the scale jitter's small shift
    assert abs(rows.mean() - test) < 0.1 * margin, (rows.mean(), test)
    # drawn over the whole margin (the previous recipe) it lands half a margin lower on average
    old = load_config(os.path.join(PROJECT, "configs", f"{name}.yaml"), ["train.augment.image_crop_jitter=[0.0, 1.0]"])
    rows_old, _, _ = principal_point_rows(old.train.augment, cfg.model.camera.image_size)
    assert rows_old.mean() - test > 0.4 * margin


def test_eval_warns_once_when_gt_leaves_the_z_range(real_source, caplog):
    from perception.eval import evaluate as ev
    from perception.structures import Detections

    def nothing(frame):
        return Detections(frame.sample_token, frame.timestamp, Boxes3D.empty())

    tokens = real_source.index("scene-0523").sample_tokens[:4]
    ev._WARNED_Z_RANGE.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a second run with the same range (robustness cases) says nothing more
            ev.run_inference(nothing, real_source, load_config(None, OLD_Z + ["sync.lidar_sweeps=1"]), tokens,
                             load_images=False)
        ev.run_inference(nothing, real_source, load_config(None, ["sync.lidar_sweeps=1"]), tokens, load_images=False)
    lines = [r.getMessage() for r in caplog.records if "leave grid.point_cloud_range" in r.getMessage()]
    assert len(lines) == 1 and "ground-truth boxes evaluated leave grid.point_cloud_range z [-5, 3]" in lines[0]
