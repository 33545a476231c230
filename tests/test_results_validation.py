"""A results file or a checkpoint that cannot be right is refused in one line naming the culprit
(sample token and field; checkpoint path and parameter), with exit status 2 from ``tools/eval.py``'s
``main`` in process and no traceback.

Results files are built cheaply from the real scenes' annotations (no inference): the clean file
passes the same checks (and the devkit, through ``main``), so every refusal below is the one
broken field. Checkpoints come from the tiny configs' models.
"""
import copy
import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import PROJECT, REAL_VERSION
from perception.eval import evaluate as ev
from perception.eval.export import detections_to_results, result_box_problem
from perception.structures import CLASS_TO_ID, NO_ATTRIBUTE, Boxes3D, Detections

TOOL = os.path.join(PROJECT, "tools", "eval.py")
TINY = os.path.join(PROJECT, "configs", "fusion_tiny.yaml")


def _eval_main():
    spec = importlib.util.spec_from_file_location("eval_tool_results_validation", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def eval_cli(real_root, real_source, tmp_path, monkeypatch, capsys):
    """main(argv) of tools/eval.py on the real val scenes; returns (exit status, stderr). The tables
    are opened once per session (NuScenesSource is handed the loaded one) to keep each call short."""
    import perception.data.nuscenes_source as ns

    class CachedSource:
        def __new__(cls, dataroot, version="v1.0-trainval", *a, **k):
            assert os.path.abspath(dataroot) == os.path.abspath(real_root) and version == REAL_VERSION
            return real_source

        @classmethod
        def from_config(cls, dataroot, version, cfg, nusc=None):
            # the shared source reads sensors with the defaults: only configs that keep them may use it
            assert cfg.sync.radar_default_filters == real_source.radar_default_filters
            assert cfg.sync.max_pose_extrapolation_us == real_source.max_pose_extrapolation_us
            return cls(dataroot, version)

    monkeypatch.setattr(ns, "NuScenesSource", CachedSource)
    main = _eval_main()

    def run(*args):
        capsys.readouterr()
        rc = main([*args, "--dataroot", real_root, "--version", REAL_VERSION, "--split", "val",
                   "--out", str(tmp_path / "out"), "--no-plots"])
        return rc, capsys.readouterr().err

    return run


def _assert_one_line(err, *names):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval: "), err
    for n in names:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Results files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_doc(real_source):
    """A submission holding every val sample's annotated boxes (detection classes, those the devkit
    scores), standing still."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    nusc = real_source.nusc
    results = {}
    for token in ev.split_sample_tokens(nusc, "val"):
        boxes = []
        for ann_token in nusc.get("sample", token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            # the devkit drops boxes without a LiDAR or radar point from its ground truth
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            boxes.append({"sample_token": token, "translation": list(ann["translation"]), "size": list(ann["size"]),
                          "rotation": list(ann["rotation"]), "velocity": [0.0, 0.0], "detection_name": name,
                          "detection_score": 0.9, "attribute_name": attrs[0] if attrs else ""})
        results[token] = boxes
    assert sum(len(b) for b in results.values()) > 100  # the real scenes are busy
    return {"meta": {"use_camera": False, "use_lidar": False, "use_radar": False, "use_map": False,
                     "use_external": True}, "results": results}


def _first_boxed_sample(doc):
    return next(t for t in sorted(doc["results"]) if doc["results"][t])


def _set(field, value):
    def edit(doc):
        token = _first_boxed_sample(doc)
        doc["results"][token][0][field] = value
        return token
    return edit


def _drop_sample(doc):
    token = sorted(doc["results"])[0]
    del doc["results"][token]
    return token


def _drop_field(field):
    def edit(doc):
        token = _first_boxed_sample(doc)
        del doc["results"][token][0][field]
        return token
    return edit


# (id, edit(doc) -> the sample token the message must name, texts the message must hold)
RESULT_CASES = [
    ("nan-velocity", _set("velocity", [float("nan"), 0.0]), ["box 0", "velocity", "not finite"]),
    ("inf-velocity", _set("velocity", [0.0, float("inf")]), ["box 0", "velocity", "not finite"]),
    ("negative-size", _set("size", [1.8, -4.5, 1.6]), ["box 0", "size", "not positive"]),
    ("zero-size", _set("size", [0.0, 4.5, 1.6]), ["box 0", "size", "not positive"]),
    ("nan-translation", _set("translation", [float("nan"), 1.0, 2.0]), ["box 0", "translation", "not finite"]),
    ("nan-rotation", _set("rotation", [1.0, 0.0, 0.0, float("nan")]), ["box 0", "rotation", "not finite"]),
    ("zero-rotation", _set("rotation", [0.0, 0.0, 0.0, 0.0]), ["box 0", "rotation", "zero quaternion"]),
    ("short-size", _set("size", [1.0, 2.0]), ["box 0", "size must be a list of 3 numbers"]),
    ("unknown-class", _set("detection_name", "spaceship"), ["box 0", "detection_name 'spaceship'"]),
    ("nan-score", _set("detection_score", float("nan")), ["box 0", "detection_score"]),
    ("bad-attribute", _set("attribute_name", "vehicle.flying"), ["box 0", "attribute_name 'vehicle.flying'"]),
    ("no-velocity", _drop_field("velocity"), ["box 0", "field 'velocity' is missing"]),
    ("missing-sample", _drop_sample, ["miss 1 of the 81 samples of split 'val'", "first missing"]),
]


def _write(tmp_path, doc, name="results.json"):
    path = tmp_path / name
    # json.dumps writes NaN / Infinity literals, which json.load (and the devkit) read back
    path.write_text(json.dumps(doc))
    return str(path)


def test_clean_results_pass_the_checks_and_the_devkit(clean_doc, real_source, tmp_path, eval_cli):
    path = _write(tmp_path, clean_doc)
    ev.check_results_file(path, ev.split_sample_tokens(real_source.nusc, "val"), "val")
    rc, err = eval_cli("--results", path)
    assert rc == 0, err
    with open(tmp_path / "out" / "metrics_summary.json") as f:
        assert json.load(f)["mean_ap"] > 0.99  # the annotations themselves


@pytest.mark.parametrize("edit,texts", [c[1:] for c in RESULT_CASES], ids=[c[0] for c in RESULT_CASES])
def test_bad_results_file_is_one_line_naming_sample_and_field(clean_doc, real_source, tmp_path, eval_cli, edit, texts):
    doc = copy.deepcopy(clean_doc)
    token = edit(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ev.EvalError) as e:
        ev.check_results_file(path, ev.split_sample_tokens(real_source.nusc, "val"), "val")
    assert "\n" not in str(e.value) and token in str(e.value) and path in str(e.value)
    rc, err = eval_cli("--results", path)
    assert rc == 2, err
    _assert_one_line(err, path, token, *texts)


def test_result_box_problem_accepts_what_export_writes():
    """The check and the exporter agree: every box detections_to_results writes is accepted, NaN
    velocity included (exported as 0)."""
    rows = np.array([[10, 0, 1, 4.0, 2.0, 1.5, 0.25, 5.0, 0.0],
                     [-3, 2, 0.5, 0.5, 0.5, 1.8, -2.0, np.nan, np.nan]], float)
    labels = [CLASS_TO_ID["car"], CLASS_TO_ID["pedestrian"]]
    boxes = Boxes3D(rows, labels, [NO_ATTRIBUTE] * 2, np.array([0.9, 0.4]), np.full(2, 5), np.zeros(2),
                    [""] * 2, [""] * 2, "ego")
    out = detections_to_results({"s": Detections("s", 0, boxes)}, {"s": np.eye(4)})["s"]
    assert len(out) == 2
    for box in out:
        assert result_box_problem(box, "s") is None, box
    assert "differs from the sample" in result_box_problem(out[0], "other")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state():
    import torch

    from perception.config import load_config
    from perception.models.build import build_model

    torch.manual_seed(0)
    return build_model(load_config(TINY)).state_dict()


def test_truncated_checkpoint_names_the_path(tiny_state, tmp_path, eval_cli):
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny_state, "step": 3}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    rc, err = eval_cli(TINY, "--checkpoint", str(path))
    assert rc == 2, err
    _assert_one_line(err, str(path), "cannot read the checkpoint")


def _first_shape_mismatch(model_sd, ckpt_sd):
    for k, v in model_sd.items():
        if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(v.shape):
            return k, tuple(ckpt_sd[k].shape), tuple(v.shape)
    return None


def test_checkpoint_of_a_wider_model_names_the_first_parameter_and_both_shapes(tiny_state, tmp_path, eval_cli):
    import torch

    from perception.config import load_config
    from perception.models.build import build_model

    other = build_model(load_config(TINY, ["model.bev_channels=24"])).state_dict()
    key, ckpt_shape, model_shape = _first_shape_mismatch(tiny_state, other)
    path = tmp_path / "wide.pt"
    torch.save({"model": other}, path)
    rc, err = eval_cli(TINY, "--checkpoint", str(path))
    assert rc == 2, err
    _assert_one_line(err, str(path), repr(key), str(ckpt_shape), str(model_shape))


def test_checkpoint_of_another_architecture_names_the_first_missing_key(tiny_state, tmp_path, eval_cli):
    import torch

    from perception.config import load_config
    from perception.models.build import build_model

    lidar_only = build_model(load_config(os.path.join(PROJECT, "configs", "lidar_tiny.yaml"))).state_dict()
    missing = next(k for k in tiny_state if k not in lidar_only)
    path = tmp_path / "lidar.pt"
    torch.save({"model": lidar_only}, path)
    rc, err = eval_cli(TINY, "--checkpoint", str(path))
    assert rc == 2, err
    _assert_one_line(err, str(path), repr(missing), "missing from the checkpoint")


def test_describe_state_dict_mismatch():
    import torch

    def net(hidden):
        return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.BatchNorm1d(hidden))

    sd = net(3).state_dict()
    assert ev.describe_state_dict_mismatch(net(3), sd) is None
    assert ev.describe_state_dict_mismatch(net(5), sd) == \
        "parameter '0.weight' has shape (3, 4) in the checkpoint, (5, 4) in the model"
    fewer = {k: v for k, v in sd.items() if k != "1.running_var"}
    assert ev.describe_state_dict_mismatch(net(3), fewer) == \
        "parameter '1.running_var' (3,) is missing from the checkpoint"
    more = dict(sd, **{"head.extra": torch.zeros(2)})
    assert ev.describe_state_dict_mismatch(net(3), more) == "parameter 'head.extra' (2,) is not in the model"
