"""Half-precision inference (issue 17): the detector's precision flag (bf16 autocast on the CPU, maps
decoded in float32), its agreement with fp32, the comparison helpers and the flag's validation."""
import numpy as np
import pytest
import torch

from perception.deploy.precision import (PrecisionError, autocast, check_precision, compare_detections,
                                         compare_maps, float_maps)
from perception.models.build import build_model
from perception.structures import Boxes3D, Detections

from test_model import micro_cfg, random_batch


@pytest.mark.parametrize("fusion", ["reference", "fast"])
def test_bf16_predict_runs_in_bf16_and_agrees_with_fp32(fusion):
    cfg = micro_cfg(f"model.fusion.implementation={fusion}")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = random_batch(cfg, B=1, with_gt=False)
    with torch.no_grad():
        ref = model(batch)
        with autocast("bf16", "cpu"):
            low = model(batch)
    assert low[0]["heatmap"].dtype == torch.bfloat16  # autocast reached the head
    diffs = compare_maps(ref, float_maps(low))
    scale = max(float(t["heatmap"].abs().max()) for t in ref)
    assert 0 < diffs["heatmap"] < 0.05 * max(scale, 1.0)  # bf16 rounding, not garbage (nor fp32 again)
    model.precision = "bf16"
    dets = model.predict(batch)
    assert dets[0].boxes.boxes.dtype == np.float64 and np.isfinite(dets[0].boxes.boxes).all()
    model.precision = "fp32"
    dets32 = model.predict(batch)
    assert len(dets[0].boxes.scores) > 0
    # the fp32 path is untouched by the flag's existence: same as decoding the plain forward
    plain = model.head.decode(ref, batch.sample_tokens, batch.timestamps)
    assert np.array_equal(plain[0].boxes.boxes, dets32[0].boxes.boxes)


def test_predict_with_depth_in_bf16_gives_float32_depth():
    cfg = micro_cfg("model.use_lidar=false", "model.use_radar=false")
    model = build_model(cfg).eval()
    model.precision = "bf16"
    dets, depth = model.predict_with_depth(random_batch(cfg, B=1, with_gt=False, lidar=False, radar=False))
    assert depth.logits.dtype == torch.float32 and len(dets) == 1


def test_precision_is_checked():
    check_precision("bf16", "cpu")
    with pytest.raises(PrecisionError, match="CUDA"):
        check_precision("fp16", "cpu")
    with pytest.raises(PrecisionError, match="one of"):
        check_precision("int8", "cpu")


def _dets(xy, labels, scores):
    n = len(scores)
    b = np.zeros((n, 9))
    b[:, :2] = xy
    return Detections("s", 0, Boxes3D(b, np.array(labels), -np.ones(n, dtype=np.int64), np.array(scores, np.float32),
                                      -np.ones(n, dtype=np.int64), -np.ones(n, dtype=np.int64), [""] * n, [""] * n))


def test_compare_detections_matches_class_and_centre_once():
    ref = _dets([[0, 0], [10, 0], [20, 0], [30, 0]], [0, 0, 1, 2], [0.9, 0.8, 0.5, 0.05])
    other = _dets([[0.2, 0], [0.3, 0], [20, 0.1], [30, 0]], [0, 0, 2, 2], [0.85, 0.7, 0.5, 0.05])
    c = compare_detections(ref, other)
    # box 0 -> (0.2, 0); box 1 (10, 0) has no partner within 0.5 m; box 2's partner is another class;
    # box 3 scores under 0.1
    assert c["boxes"] == 3 and c["matched"] == 1
    assert abs(c["max_score_diff"] - 0.05) < 1e-6 and abs(c["max_centre_diff_m"] - 0.2) < 1e-9


def test_eval_cli_precision_goes_with_the_torch_backend(tmp_path):
    import importlib.util
    import os

    from conftest import PROJECT

    spec = importlib.util.spec_from_file_location("eval_cli", os.path.join(PROJECT, "tools", "eval.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    base = [f"{PROJECT}/configs/fusion_tiny.yaml", "--checkpoint", "x.pt", "--dataroot", str(tmp_path), "--out",
            str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        cli.main(base + ["--precision", "bf16", "--backend", "onnxruntime"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(base + ["--precision", "half"])
    assert e.value.code == 2
