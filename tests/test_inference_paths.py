"""Inference-only fast paths (issue 17): the head's forward_inference (BatchNorm folded, the task
convolutions as one, the 1x1 outputs as one matmul per task), the camera's channels_last image network,
the LiDAR backbone in channels_last and the head's decode (separable window maximum, attribute table) against the formulations they replace:
equal within 1e-5 (the decode: identical), taken only in eval-mode eager inference."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perception.deploy.precision import autocast
from perception.models.heads import centerpoint as cp
from perception.models.heads.centerpoint import CenterHead
from perception.structures import ATTRIBUTES, CLASSES, Boxes3D, Detections

TASKS = [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
         ["pedestrian", "traffic_cone"]]


def _head(direction=False, C=16, hw=(20, 24), **kw):
    """A head with every parameter and BatchNorm statistic away from its init (so every folded term
    matters) and outputs of order 1-10."""
    torch.manual_seed(0)
    h = CenterHead(C, C, TASKS, [-51.2, -51.2, -3.0, 51.2, 51.2, 7.0], [0.8, 0.8], hw, {},
                   direction_classifier=direction, **kw)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in h.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return h.eval()


def _both(h, x, ego):
    with torch.no_grad():
        h.fast_inference = False
        ref = h(x, ego)
        h.fast_inference = True
        fast = h(x, ego)
    return ref, fast


@pytest.mark.parametrize("direction", [False, True])
@pytest.mark.parametrize("B", [1, 2])
def test_fast_head_equals_reference(direction, B, monkeypatch):
    h = _head(direction)
    g = torch.Generator().manual_seed(1)
    x, ego = torch.randn(B, 16, 20, 24, generator=g), 5 * torch.randn(B, 3, generator=g)
    calls = []
    inference = CenterHead.forward_inference
    monkeypatch.setattr(CenterHead, "forward_inference", lambda self, *a: calls.append(1) or inference(self, *a))
    ref, fast = _both(h, x, ego)
    assert len(calls) == 1  # the fast call took the inference path, the reference call did not
    assert len(fast) == len(TASKS)
    for r, f in zip(ref, fast):
        assert list(r) == list(f)  # same keys in the same order
        for k in r:
            assert f[k].shape == r[k].shape and f[k].dtype == r[k].dtype, k
            assert torch.allclose(f[k], r[k], rtol=0, atol=1e-5), (k, (f[k] - r[k]).abs().max())
    assert max(float(r[k].abs().max()) for r in ref for k in r) > 0.5  # something was compared
    # the ego velocity reaches the velocity maps on the fast path (folded into the hidden layer's bias)
    with torch.no_grad():
        other = h(x, ego + 1.0)
    assert not torch.allclose(other[0]["velocity"], fast[0]["velocity"])
    assert torch.equal(other[0]["heatmap"], fast[0]["heatmap"])


def test_fast_head_only_in_eval_mode_eager_inference(monkeypatch):
    h = _head()
    calls = []
    inference = CenterHead.forward_inference
    monkeypatch.setattr(CenterHead, "forward_inference", lambda self, *a: calls.append(1) or inference(self, *a))
    x, ego = torch.randn(1, 16, 20, 24), torch.randn(1, 3)
    out = h(x, ego)  # eval, grad mode on, parameters require grad: autograd path
    assert out[0]["heatmap"].requires_grad and not calls
    h.train()
    with torch.no_grad():
        h(x, ego)  # training mode: batch statistics, nothing to fold
    assert not calls
    h.eval()
    with torch.no_grad():
        h(x, ego)
    assert len(calls) == 1


def test_fast_head_folded_weights_follow_the_parameters():
    """The folded weights are cached per parameter version: an optimizer-like in-place update, a loaded
    state dict and new BatchNorm statistics are all seen at the next call."""
    h = _head(True)
    x, ego = torch.randn(1, 16, 20, 24), torch.randn(1, 3)
    with torch.no_grad():
        h(x, ego)
        h.task_convs[2][0].weight.mul_(1.5)
        h.shared[1].running_var.add_(0.5)
        h.velocity[4][0].weight.add_(0.1)
        state = {k: v * 1.1 if k.startswith("regress.3") else v for k, v in h.state_dict().items()}
        h.load_state_dict(state)
    ref, fast = _both(h, x, ego)
    for r, f in zip(ref, fast):
        for k in r:
            assert torch.allclose(f[k], r[k], rtol=0, atol=1e-5), k


def test_fast_head_in_bf16_agrees_with_the_reference():
    """Under CPU bf16 autocast both paths compute in bf16 (the maps are bf16) and agree with each other
    and with fp32 to bf16 rounding."""
    h = _head(True)
    x, ego = torch.randn(1, 16, 20, 24), torch.randn(1, 3)
    ref32, _ = _both(h, x, ego)
    with autocast("bf16", "cpu"):
        ref, fast = _both(h, x, ego)
    for r32, r, f in zip(ref32, ref, fast):
        for k in r:
            assert f[k].dtype == r[k].dtype == torch.bfloat16, k
            scale = max(1.0, float(r32[k].abs().max()))
            assert float((f[k].float() - r32[k]).abs().max()) < 0.05 * scale, k
            assert float((f[k].float() - r[k].float()).abs().max()) < 0.05 * scale, k


# ------------------------------------------------------------------------------------------ decode
def _decode_before(head, preds, sample_tokens, timestamps):
    """CenterHead.decode as it was before issue 17's changes (max_pool2d peak filter, per-box attribute
    check): the identity reference of the current decode."""
    B = preds[0]["heatmap"].shape[0]
    H, W = head.bev_hw
    per_sample = [[] for _ in range(B)]
    for t, p in enumerate(preds):
        heat = torch.sigmoid(p["heatmap"].float())
        peaks = torch.zeros_like(heat)
        for k, ch in head.peak_groups[t]:
            h = heat[:, ch]
            peaks[:, ch] = h * (F.max_pool2d(h, k, 1, k // 2) == h) if k > 1 else h
        n_cls = heat.shape[1]
        scores, flat = peaks.reshape(B, -1).topk(min(head.top_k, n_cls * H * W), dim=1)
        cls = flat // (H * W)
        cells = flat % (H * W)
        ys, xs = (cells // W).float(), (cells % W).float()
        g = lambda name: head._gather(p[name].float(), cells)
        off, hgt, size, yaw, vel = g("offset"), g("height"), g("size"), g("yaw"), g("velocity")
        heading = torch.atan2(yaw[..., 0], yaw[..., 1])
        if head.direction is not None:
            flip = (g("direction")[..., 0] >= 0) != (yaw[..., 1] >= 0)
            heading = torch.where(flip, torch.remainder(heading, 2 * math.pi) - math.pi, heading)
        labels = torch.tensor(head.task_class_ids[t], device=cls.device)[cls]
        if head.heading_min_speed > 0:
            moving = (vel.norm(dim=-1) >= head.heading_min_speed) & head.moves_forward[labels]
            backward = (torch.cos(heading) * vel[..., 0] + torch.sin(heading) * vel[..., 1]) < 0
            heading = torch.where(moving & backward, torch.remainder(heading, 2 * math.pi) - math.pi, heading)
        attr = g("attribute").masked_fill(~head.attr_allowed[labels], float("-inf")).argmax(-1)
        x = head.range[0] + (xs + off[..., 0]) * head.cell[0]
        y = head.range[1] + (ys + off[..., 1]) * head.cell[1]
        dims = size.clamp(max=5.0).exp()
        boxes = torch.stack([x, y, hgt[..., 0], dims[..., 0], dims[..., 1], dims[..., 2],
                             heading, vel[..., 0], vel[..., 1]], dim=-1)
        for b in range(B):
            keep = scores[b] >= head.score_threshold
            rows = torch.cat([boxes[b][keep], scores[b][keep, None], labels[b][keep, None].float(),
                              attr[b][keep, None].float()], dim=1)
            per_sample[b].append(rows.cpu().double().numpy())
    out = []
    for b in range(B):
        rows = np.concatenate(per_sample[b]) if per_sample[b] else np.zeros((0, 12))
        kept = []
        for c in np.unique(rows[:, 10]).astype(int):
            idx = np.nonzero(rows[:, 10] == c)[0]
            keep = np.asarray(cp.circle_nms(rows[idx, :9], rows[idx, 9], head.nms_radius[c]))
            kept.append(idx[keep])
        rows = rows[np.concatenate(kept)] if kept else rows[:0]
        rows = rows[np.argsort(-rows[:, 9], kind="stable")][: head.max_objects]
        labels = rows[:, 10].astype(np.int64)
        attrs = rows[:, 11].astype(np.int64)
        attrs = np.where([cp._attribute_fits(CLASSES[c], a) for c, a in zip(labels, attrs)], attrs, -1)
        n = len(rows)
        boxes = Boxes3D(rows[:, :9], labels, attrs, rows[:, 9], np.full(n, -1), np.full(n, -1),
                        [""] * n, [""] * n, "ego")
        out.append(Detections(sample_tokens[b], int(timestamps[b]), boxes))
    return out


@pytest.mark.parametrize("options", [dict(), dict(direction=True, heading_min_speed=1.0),
                                     dict(peak_kernel=(5, 3, 1, 3, 5, 1, 3, 3, 1, 3), attributes_in_family=True),
                                     dict(peak_kernel=(3,) * 10, attributes_in_family=False)])
def test_decode_identical_to_before(options):
    """Random maps with ~thousands of peaks above the threshold (and plateaus of equal scores, where the
    peak filter keeps every tied cell): the same detections, bit for bit, as the decode before."""
    h = _head(options.pop("direction", False), hw=(32, 40), score_threshold=0.2, top_k=300, max_objects=400,
              **options)
    B = 2
    g = torch.Generator().manual_seed(3)
    H, W = h.bev_hw
    preds = []
    for ids in h.task_class_ids:
        heat = 3 * torch.randn(B, len(ids), H, W, generator=g)
        heat[:, :, 4:8, 4:8] = 2.0  # a plateau: every cell a (tied) maximum of its window
        p = {"heatmap": heat, "offset": torch.rand(B, 2, H, W, generator=g),
             "height": torch.randn(B, 1, H, W, generator=g), "size": torch.randn(B, 3, H, W, generator=g),
             "yaw": torch.randn(B, 2, H, W, generator=g), "velocity": 3 * torch.randn(B, 2, H, W, generator=g),
             "attribute": torch.randn(B, len(ATTRIBUTES), H, W, generator=g)}
        if h.direction is not None:
            p["direction"] = torch.randn(B, 1, H, W, generator=g)
        preds.append(p)
    new = h.decode(preds, ["s0", "s1"], [1, 2])
    old = _decode_before(h, preds, ["s0", "s1"], [1, 2])
    for n, o in zip(new, old):
        assert len(n.boxes.scores) > 50
        assert (n.sample_token, n.timestamp) == (o.sample_token, o.timestamp)
        for field in ("boxes", "labels", "attributes", "scores"):
            assert np.array_equal(getattr(n.boxes, field), getattr(o.boxes, field)), field
        assert (n.boxes.attributes >= 0).any() and (n.boxes.attributes < 0).any()


@pytest.mark.parametrize("k", [3, 5, 7])
def test_window_max_equals_max_pool(k):
    x = torch.rand(2, 3, 17, 23)
    x[:, :, 5:9, 5:9] = 0.5  # ties
    assert torch.equal(cp._window_max(x, k), F.max_pool2d(x, k, 1, k // 2))


# ------------------------------------------------------------------------------------------ camera
def test_camera_channels_last_inference_equals_nchw():
    """Eval-mode eager inference runs the image network in channels_last; the features (depth logits,
    context) equal the NCHW run within 1e-5, and the camera BEV map too."""
    from test_model import micro_cfg, random_batch

    from perception.models.build import build_model

    cfg = micro_cfg("model.use_lidar=false", "model.use_radar=false")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.camera.modules():  # BatchNorm statistics away from the init
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    b = random_batch(cfg, B=2, with_gt=False, lidar=False, radar=False)
    cam = model.camera
    args = (b.images, b.intrinsics, b.img_aug, b.T_ego_from_cam, b.camera_mask)
    outs = {}
    with torch.no_grad():
        for fast in (False, True):
            cam.fast_inference = fast
            outs[fast] = cam(*args, return_depth=True)
    (ref, ref_depth), (fast, fast_depth) = outs[False], outs[True]
    assert fast.is_contiguous()
    assert float(ref.abs().max()) > 0.1
    assert torch.allclose(fast, ref, rtol=0, atol=1e-5), (fast - ref).abs().max()
    assert torch.allclose(fast_depth.logits, ref_depth.logits, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ LiDAR
def test_lidar_channels_last_inference_equals_nchw():
    """Eval-mode eager inference feeds the scatter's canvas to the backbone in channels_last: the LiDAR
    BEV map equals the NCHW run within 1e-5 and comes out NCHW-contiguous; autograd stays NCHW."""
    from test_model import micro_cfg, random_batch

    from perception.models.build import build_model

    cfg = micro_cfg("model.use_camera=false", "model.use_radar=false")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.lidar.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    b = random_batch(cfg, B=2, with_gt=False, camera=False, radar=False)
    lidar = model.lidar
    outs = {}
    with torch.no_grad():
        for fast in (False, True):
            lidar.fast_inference = fast
            outs[fast] = lidar(b.lidar_points)
    assert outs[True].is_contiguous() and float(outs[False].abs().max()) > 0.1
    assert torch.allclose(outs[True], outs[False], rtol=0, atol=1e-5), (outs[True] - outs[False]).abs().max()
    with_grad = lidar(b.lidar_points)  # parameters require grad: the NCHW path, a graph to train
    assert with_grad.requires_grad and torch.allclose(with_grad.detach(), outs[False], rtol=0, atol=1e-6)
