"""Fast inference and deployment (issue 17): the fast fusion against the reference, the torch-native
graph against the eager model, and the ONNX export in ONNX Runtime against torch on a real keyframe
(every sensor, LiDAR absent, two cameras absent)."""
import math
import os

import numpy as np
import pytest
import torch

from perception.models.fusion.cross_attention import CrossAttentionFusion


def _fusion_pair(C=16, hw=(12, 10), heads=4, window=3, layers=2):
    torch.manual_seed(0)
    f = CrossAttentionFusion(C, hw, 3, window, heads, 2, layers)
    with torch.no_grad():
        for p in f.parameters():  # away from the zero / identity init, so every term matters
            p.add_(0.3 * torch.randn_like(p))
    return f


@pytest.mark.parametrize("present", [[[True, True, True], [True, False, True]],
                                     [[False, True, False], [False, False, False]]])
@pytest.mark.parametrize("window", [3, 5])
def test_fast_fusion_equals_reference_values_and_gradients(present, window):
    f = _fusion_pair(window=window).eval()
    B, C, (H, W) = 2, 16, (12, 10)
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(B, C, H, W, generator=g) for _ in range(3)]
    base[1] = None if window == 5 else base[1]  # a model without the camera encoder
    present = torch.tensor(present)
    grads = {}
    outs = {}
    for impl in ("reference", "fast"):
        f.implementation = impl
        f.zero_grad()
        feats = [None if x is None else x.clone().requires_grad_(True) for x in base]
        out = f(feats, present)
        outs[impl] = out.detach()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        # a parameter the fast path never touched (a modality absent from the batch) has gradient 0
        grads[impl] = [x.grad for x in feats if x is not None] + [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in f.parameters()]
    assert torch.allclose(outs["fast"], outs["reference"], rtol=0, atol=1e-5)
    assert outs["reference"].abs().max() > 0.5  # something was compared
    for a, b in zip(grads["fast"], grads["reference"]):
        # 1e-5 of the gradient's own scale: parameter gradients sum over every cell (up to ~60 here)
        assert float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max())), (a - b).abs().max()


def test_fast_fusion_skips_absent_modality_exactly():
    """A modality absent from the whole batch is left out in eager mode: the same output (to float
    rounding) as masking it, which the exported graph does."""
    f = _fusion_pair().eval()
    f.implementation = "fast"
    feats = [torch.randn(1, 16, 12, 10) for _ in range(3)]
    present = torch.tensor([[True, False, True]])
    layer, query = f.layers[0], torch.randn(1, 16, 12, 10)
    with torch.no_grad():
        skipped = layer.forward_fast(query, feats, present, skip_absent=True)
        masked = layer.forward_fast(query, feats, present, skip_absent=False)
    assert torch.allclose(skipped, masked, rtol=0, atol=1e-6)


@pytest.mark.parametrize("present", [[[True, True, True], [True, False, True]],
                                     [[False, True, False], [False, False, False]],
                                     [[True, True, True], [True, True, True]]])
@pytest.mark.parametrize("window,no_camera", [(3, False), (5, True)])
def test_fast_fusion_inference_path_equals_reference(present, window, no_camera, monkeypatch):
    """Without autograd the fast fusion takes its in-place inference path (forward_inference): equal to
    the reference within 1e-5, and no less accurate than the reference against a float64 run."""
    import copy

    from perception.models.fusion import cross_attention as ca

    f = _fusion_pair(window=window).eval()
    B, C, (H, W) = 2, 16, (12, 10)
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(B, C, H, W, generator=g) for _ in range(3)]
    feats[1] = None if no_camera else feats[1]
    present = torch.tensor(present)
    with torch.no_grad():
        f.implementation = "reference"
        ref = f(feats, present)
        exact = copy.deepcopy(f).double()([None if x is None else x.double() for x in feats], present)
        f.implementation = "fast"
        calls = []
        inference = ca.LocalCrossAttention.forward_inference
        monkeypatch.setattr(ca.LocalCrossAttention, "forward_inference",
                            lambda self, *a, **k: calls.append(1) or inference(self, *a, **k))
        fast = f(feats, present)
        assert len(calls) == len(f.layers)
        assert torch.equal(f(feats, present), fast)  # the cached query offset gives the same result
    assert torch.allclose(fast, ref, rtol=0, atol=1e-5), (fast - ref).abs().max()
    assert float((fast.double() - exact).abs().max()) <= 2 * float((ref.double() - exact).abs().max()) + 1e-6


def test_fast_fusion_cached_query_offset_follows_the_weights():
    """The inference path caches pos_proj(pos) + query_embed; a changed weight (an optimizer step, a loaded
    state dict) is seen at the next call."""
    f = _fusion_pair().eval()
    feats = [torch.randn(1, 16, 12, 10) for _ in range(3)]
    present = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        f.implementation = "fast"
        f(feats, present)
        f.query_embed.add_(1.0)
        f.pos_proj.load_state_dict({k: v * 2 for k, v in f.pos_proj.state_dict().items()})
        fast = f(feats, present)
        f.implementation = "reference"
        ref = f(feats, present)
    assert torch.allclose(fast, ref, rtol=0, atol=1e-5)


def test_fusion_implementation_is_a_config_switch():
    from perception.config import ConfigError, load_config
    from perception.models.fusion.cross_attention import build_fusion

    assert build_fusion(load_config(None, [])).implementation == "reference"  # the default computes as before
    from conftest import PROJECT

    for name in ("fusion_tiny", "fusion_nuscenes"):  # the shipped configs take the fast path
        assert load_config(f"{PROJECT}/configs/{name}.yaml", []).model.fusion.implementation == "fast"
    assert build_fusion(load_config(None, ["model.fusion.implementation=fast"])).implementation == "fast"
    with pytest.raises(ConfigError, match="implementation"):
        load_config(None, ["model.fusion.implementation=quick"])


# ------------------------------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def tiny_model_and_frame(real_source):
    """The tiny config's model (random weights, heatmap logits spread so ~100 cells per task pass the
    threshold: decode has boxes to compare) and one real keyframe."""
    from perception.config import load_config
    from perception.data.batch import collate, frame_to_sample
    from perception.models.build import build_model
    from perception.sync.synchronizer import FrameBuilder

    from conftest import PROJECT

    cfg = load_config(os.path.join(PROJECT, "configs", "fusion_tiny.yaml"), [])
    fb = FrameBuilder(real_source, "scene-0916", cfg)
    frame = fb.build(fb.keyframe_references[2])
    batch = collate([frame_to_sample(frame, cfg)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    thr = cfg.model.head.score_threshold
    with torch.no_grad():
        for t, pred in enumerate(model(batch)):
            logits = pred["heatmap"].flatten()
            conv = model.head.heatmap[t]
            scale = 2.0 / float(logits.std())
            # the threshold midway between the 100th and 101st logit: no cell sits exactly on it, where
            # float rounding (ONNX Runtime against torch's inference path) decides whether it is a box
            top = logits.topk(101).values
            kth = 0.5 * float(top[-2] + top[-1])
            conv.weight.mul_(scale)
            conv.bias.mul_(scale).add_(math.log(thr / (1 - thr)) - kth * scale)
    return model, frame, cfg, batch


def test_torch_native_graph_equals_eager_model(tiny_model_and_frame):
    """The exportable formulation (dense PFN, scatter_add pillar scatter and BEV pooling, all camera slots, fast
    fusion) computes what the eager model computes, in torch (the missing-sensor cases run in the ONNX
    Runtime test below)."""
    from perception.deploy.graph import HEAD_OUTPUTS, ExportableDetector, prepare_inputs

    model, _, _, batch = tiny_model_and_frame
    graph = ExportableDetector(model).eval()
    for b in (batch,):
        with torch.no_grad():
            ref = model(b)
            out = graph(*prepare_inputs(model, b).values())
        ref = [p[k] for p in ref for k in HEAD_OUTPUTS]
        assert len(out) == len(ref)
        assert max(float((a - r).abs().max()) for a, r in zip(out, ref)) < 1e-4


def test_onnx_export_runs_in_onnxruntime_like_torch(tiny_model_and_frame, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from perception.deploy.check import compare_backends
    from perception.deploy.export import OPSET, export_onnx

    model, frame, cfg, batch = tiny_model_and_frame
    path = str(tmp_path / "tiny.onnx")
    rep = export_onnx(model, batch, path, optimize=False)  # the optimizer pass doubles the export time
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} and rep.opset == OPSET
    assert {n.domain for n in proto.graph.node} <= {""}  # no custom operators
    # the pillar scatter and BEV pooling, torch-native; not ScatterND (threaded adds in ORT, see scatter_rows)
    assert "ScatterElements" in rep.op_types and "ScatterND" not in rep.op_types
    dyn = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input}
    assert dyn["lidar_voxels"] and dyn["radar_voxels"]  # pillar counts are dynamic axes
    cases = compare_backends(model, frame, cfg, path)
    assert [c.name for c in cases] == ["all sensors", "lidar absent", "two cameras absent"]
    for c in cases:
        assert c.max_abs_diff <= 1e-4, c
        assert c.detections_torch > 0 and c.same_detections, c
