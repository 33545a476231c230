"""train.camera_lr_scale: the camera branch (encoder and auxiliary head) trains at lr x scale, every
other parameter at lr, through the whole one-cycle plan and across a checkpoint round trip."""
import pytest
import torch

from perception.config import ConfigError
from perception.engine.trainer import build_optimizer, build_scheduler
from perception.models.build import build_model

from test_model import micro_cfg


def _ids(module):
    return {id(p) for p in module.parameters() if p.requires_grad}


def _group_lrs(opt, camera):
    """(lrs of the groups holding camera parameters, lrs of the other groups)."""
    cam, rest = set(), set()
    for g in opt.param_groups:
        if not g["params"]:
            continue
        inside = {id(p) in camera for p in g["params"]}
        assert len(inside) == 1, "a group mixes camera and other parameters"
        (cam if inside.pop() else rest).add(round(g["lr"], 12))
    return cam, rest


def _run_plan(opt, sched, camera, ratio, steps=10):
    """Steps the plan; checks the camera's rate is ``ratio`` x the rest's at every step; returns the
    highest rate each side reached."""
    highest = {"camera": 0.0, "rest": 0.0}
    for step in range(steps):
        cam, rest = _group_lrs(opt, camera)
        assert len(cam) == 1 and len(rest) == 1, (step, cam, rest)
        c, r = cam.pop(), rest.pop()
        assert c == pytest.approx(ratio * r)
        highest = {"camera": max(c, highest["camera"]), "rest": max(r, highest["rest"])}
        opt.step()
        sched.step()
    return highest


def test_scale_one_keeps_one_rate_and_the_two_groups_of_before():
    cfg = micro_cfg("train.lr=0.002", "train.camera_lr_scale=1.0")
    model = build_model(cfg)
    opt = build_optimizer(model, cfg)
    assert len(opt.param_groups) == 2
    assert {g["lr"] for g in opt.param_groups} == {0.002}
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == sum(1 for p in model.parameters() if p.requires_grad)


def test_camera_branch_trains_at_its_own_peak_through_the_one_cycle_plan():
    cfg = micro_cfg("train.lr=0.002", "train.camera_lr_scale=3.0", "model.camera.aux_head_weight=1.0",
                    "train.schedule=onecycle", "train.pct_start=0.3")
    model = build_model(cfg)
    camera = _ids(model.camera) | _ids(model.camera_aux_head)
    assert camera and len(camera) < len(_ids(model))
    opt = build_optimizer(model, cfg)
    # every trainable parameter in exactly one group; the camera's at three times the rest's rate
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(_ids(model))
    peaks = _run_plan(opt, build_scheduler(opt, cfg, 10), camera, 3.0)
    # the end of the warmup reaches each group's own peak
    assert peaks == {"camera": pytest.approx(0.006), "rest": pytest.approx(0.002)}


def test_camera_peak_survives_a_checkpoint_round_trip():
    """A resumed run rebuilds the optimizer, loads the saved state (whose ``lr`` is the rate of the
    next step, not the peak) and builds the schedule: the camera group keeps its own peak."""
    cfg = micro_cfg("train.lr=0.002", "train.camera_lr_scale=2.0", "train.schedule=onecycle")
    model = build_model(cfg)
    camera = _ids(model.camera) | _ids(model.camera_aux_head)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    for _ in range(6):
        opt.step()
        sched.step()
    saved = opt.state_dict()
    opt2 = build_optimizer(model, cfg)
    opt2.load_state_dict(saved)
    # what --extend does: a fresh plan from the saved groups
    highest = _run_plan(opt2, build_scheduler(opt2, cfg, 10), camera, 2.0)
    # each group's own peak, not the rate the saved state held
    assert highest == {"camera": pytest.approx(0.004), "rest": pytest.approx(0.002)}


def test_a_non_positive_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="train.camera_lr_scale"):
        micro_cfg("train.camera_lr_scale=0")
