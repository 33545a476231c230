"""The camera's auxiliary detection head (model.camera.aux_head_weight): training only, on the camera's
own BEV map, samples without images take no loss, and inference is unchanged by it."""
import numpy as np
import torch

from perception.engine.trainer import compute_losses
from perception.models.build import build_model

from test_model import micro_cfg, random_batch


def _batch(cfg, seed=0, camera=(True, True)):
    b = random_batch(cfg, seed=seed)
    for i, present in enumerate(camera):
        b.camera_mask[i] = present
        b.modality_mask[i, 1] = present
        if not present:
            b.images[i] = 0
    b.depth_targets = None
    return b


def test_no_aux_head_unless_weighted():
    assert build_model(micro_cfg("model.camera.aux_head_weight=0")).camera_aux_head is None
    model = build_model(micro_cfg("model.camera.aux_head_weight=0.5"))
    assert model.camera_aux_head is not None and model.aux_head_weight == 0.5
    # a model without cameras has nothing to attach it to
    assert build_model(micro_cfg("model.camera.aux_head_weight=0.5", "model.use_camera=false")).camera_aux_head is None


def test_aux_loss_is_the_aux_heads_localization_loss_on_the_camera_map():
    cfg = micro_cfg("model.camera.aux_head_weight=2.0")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _batch(cfg)
    torch.manual_seed(1)  # the same modality dropout in both forwards
    terms = model.loss(batch)
    torch.manual_seed(1)
    _, _, cam_bev = model.encode(batch, return_depth=True, return_camera_bev=True)
    aux = model.camera_aux_head(cam_bev, batch.ego_velocity)
    targets = model.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes)
    ref = model.camera_aux_head.loss(aux, targets)
    expected = 2.0 * sum(ref[k] for k in ("heatmap", "offset", "height", "size", "yaw"))
    assert torch.allclose(terms["camera_aux"], expected, rtol=1e-5)
    without = {k: v for k, v in terms.items() if k not in ("camera_aux", "total")}
    assert torch.allclose(terms["total"], sum(without.values()) + terms["camera_aux"], rtol=1e-5)


def test_a_sample_without_images_takes_no_aux_loss():
    """Batch (camera, no camera): the aux term equals that of the first sample alone, whatever the second
    sample's targets say; both reductions."""
    cfg = micro_cfg("model.camera.aux_head_weight=1.0", "model.fusion.dropout_lidar=0",
                    "model.fusion.dropout_camera=0", "model.fusion.dropout_radar=0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # eval: BatchNorm statistics do not couple the samples
    batch = _batch(cfg, camera=(True, False))
    with torch.no_grad():
        preds, depth, aux = model(batch, return_depth=True, return_aux=True)
    targets = model.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes)
    first = model.camera_aux_head.loss([{k: v[:1] for k, v in p.items()} for p in aux],
                                       targets._map(lambda t: t[:1]))
    expected = sum(first[k] for k in model.AUX_TERMS)
    for reduction in ("batch", "sample"):
        got = model.add_aux_terms({"total": torch.zeros(())}, aux, targets, batch, reduction)["camera_aux"]
        assert torch.allclose(got, expected, rtol=1e-5), reduction
    # moving the camera-less sample's boxes changes nothing
    moved = [b.clone() for b in batch.gt_boxes]
    moved[1][:, :2] += 7.0
    targets2 = model.head.targets(moved, batch.gt_labels, batch.gt_attributes)
    got2 = model.add_aux_terms({"total": torch.zeros(())}, aux, targets2, batch, "batch")["camera_aux"]
    assert torch.allclose(got2, expected, rtol=1e-6)


def test_aux_loss_trains_the_camera_and_the_aux_head_only():
    cfg = micro_cfg("model.camera.aux_head_weight=1.0", "model.camera.depth_loss_weight=0")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    terms = compute_losses(model, model, _batch(cfg), "sample")
    terms["camera_aux"].backward()
    assert model.camera.backbone.conv1.weight.grad.abs().sum() > 0
    head = model.camera_aux_head
    for m in (head.shared, head.task_convs, head.heatmap):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters() if p.dim() > 1)
    # box regression: the tasks of the batch's two boxes (car, pedestrian) learn, the others have no box
    assert sum(bool(r.weight.grad.any()) for r in head.regress) == 2
    # velocity and attributes are not the aux head's job: in the graph (for DDP) with zero gradient
    for m in (head.velocity, head.attribute):
        assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    outside = [p.grad for name, p in model.named_parameters()
               if not name.startswith(("camera.", "camera_aux_head."))]
    assert outside and all(g is None or not g.any() for g in outside)


def test_a_batch_without_any_camera_keeps_the_aux_head_in_the_graph():
    """Zero loss, but every aux-head parameter takes a (zero) gradient, as DDP needs on a rank whose
    batch has no image."""
    cfg = micro_cfg("model.camera.aux_head_weight=1.0")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    terms = model.loss(_batch(cfg, camera=(False, False)))
    assert float(terms["camera_aux"].detach()) == 0.0
    terms["total"].backward()
    assert all(p.grad is not None for p in model.camera_aux_head.parameters())


def test_inference_does_not_depend_on_the_aux_head():
    """The same weights with and without the aux head give the same detections; the aux head's weights
    do not matter at inference."""
    torch.manual_seed(0)
    with_aux = build_model(micro_cfg("model.camera.aux_head_weight=1.0")).eval()
    plain = build_model(micro_cfg("model.camera.aux_head_weight=0")).eval()
    state = {k: v for k, v in with_aux.state_dict().items() if not k.startswith("camera_aux_head.")}
    plain.load_state_dict(state)
    batch = random_batch(micro_cfg(), with_gt=False)
    with torch.no_grad():
        for p in with_aux.camera_aux_head.parameters():
            p.add_(1.0)
        a = with_aux.predict(batch)
        b = plain.predict(batch)
    assert len(a[0].boxes.boxes) > 0
    for da, db in zip(a, b):
        assert np.array_equal(da.boxes.boxes, db.boxes.boxes)
        assert np.array_equal(da.boxes.scores, db.boxes.scores)


def test_detached_depth_keeps_the_aux_gradient_off_the_depth_only():
    """model.camera.aux_detach_depth: the aux loss has the same value (the second lift has the same
    numbers), its gradient reaches the context rows of the depth net and the backbone, and none reaches
    the depth rows; with the shared lift it reaches both."""
    grads, values = {}, {}
    for detach in (False, True):
        cfg = micro_cfg("model.camera.aux_head_weight=1.0", "model.camera.depth_loss_weight=0",
                        "model.camera.camera_aware=false", f"model.camera.aux_detach_depth={str(detach).lower()}")
        torch.manual_seed(0)
        model = build_model(cfg).train()
        torch.manual_seed(1)
        terms = compute_losses(model, model, _batch(cfg), "sample")
        terms["camera_aux"].backward()
        D = model.camera.depth_net.num_depth
        g = model.camera.depth_net.out.weight.grad
        grads[detach] = (g[:D].abs().sum().item(), g[D:].abs().sum().item(),
                         model.camera.backbone.conv1.weight.grad.abs().sum().item())
        values[detach] = float(terms["camera_aux"].detach())
    assert values[True] == values[False] > 0
    depth_rows, context_rows, backbone = grads[True]
    assert depth_rows == 0.0 and context_rows > 0 and backbone > 0
    assert grads[False][0] > 0
