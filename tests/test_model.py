"""The fusion detector: shapes for every modality subset, gradients, head target round trip,
absent-sensor behaviour, and a deterministic overfit on one real frame."""
import math

import numpy as np
import pytest
import torch

from perception.config import load_config
from perception.models.build import build_model
from perception.structures import CLASSES, Batch

from conftest import PROJECT

MICRO = [
    "grid.point_cloud_range=[-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]", "grid.voxel_size=[0.8, 0.8, 8.0]",
    "model.bev_stride=1", "model.bev_channels=16", "model.lidar.pfn_channels=[16]",
    "model.lidar.backbone_layers=[1, 1]", "model.lidar.backbone_strides=[1, 2]",
    "model.lidar.backbone_channels=[16, 16]", "model.lidar.neck_channels=[16, 16]",
    "model.camera.image_size=[64, 160]", "model.camera.backbone_width=8", "model.camera.channels=8",
    "model.camera.depth_bins=[1.0, 33.0, 2.0]", "model.radar.pfn_channels=[8]", "model.radar.conv_channels=16",
    "model.head.channels=16", "model.fusion.heads=2",
]


def micro_cfg(*extra):
    return load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO + list(extra))


def real_camera_rig():
    """Intrinsics and camera->ego transforms of the six real nuScenes cameras (scene-0916)."""
    import json
    import os

    from perception.geometry import make_transform
    from conftest import REAL_ROOT

    path = os.path.join(REAL_ROOT, "v1.0-trainval", "calibrated_sensor.json")
    if not os.path.isfile(path):
        pytest.skip(f"real nuScenes extract not found at {REAL_ROOT}")
    cal = [c for c in json.load(open(path)) if c["camera_intrinsic"]][:6]
    K = torch.tensor([c["camera_intrinsic"] for c in cal], dtype=torch.float32)
    T = torch.tensor(np.stack([make_transform(c["translation"], c["rotation"]) for c in cal]), dtype=torch.float32)
    return K, T


def random_batch(cfg, B=2, with_gt=True, seed=0, lidar=True, camera=True, radar=True):
    from perception.data.batch import resize_crop_matrix

    g = torch.Generator().manual_seed(seed)
    r = cfg.grid.point_cloud_range
    pts, rad = [], []
    for _ in range(B):
        n = 3000
        p = torch.rand(n, 6, generator=g)
        p[:, 0] = p[:, 0] * (r[3] - r[0]) + r[0]
        p[:, 1] = p[:, 1] * (r[4] - r[1]) + r[1]
        p[:, 2] = p[:, 2] * 3 - 2
        p[:, 3] *= 255
        p[:, 5] *= 0.1
        pts.append(p if lidar else p[:0])
        q = torch.rand(60, 7, generator=g)
        q[:, 0] = q[:, 0] * 40 - 20
        q[:, 1] = q[:, 1] * 40 - 20
        rad.append(q if radar else q[:0])
    K, T = real_camera_rig()
    H, W = cfg.model.camera.image_size
    aug = torch.tensor(resize_crop_matrix(1600, 900, (H, W)), dtype=torch.float32)
    gt_boxes = gt_labels = gt_attrs = None
    if with_gt:
        gt_boxes = [torch.tensor([[5.0, 3.0, -0.5, 4.5, 1.9, 1.6, 0.3, 2.0, -1.0],
                                  [-8.0, -6.0, -0.8, 0.7, 0.6, 1.8, -1.2, 0.5, 0.2]])] * B
        gt_labels = [torch.tensor([0, 5])] * B
        gt_attrs = [torch.tensor([5, 2])] * B
    return Batch(pts, rad, torch.randn(B, 6, 3, H, W, generator=g), K.expand(B, 6, 3, 3).clone(),
                 aug.expand(B, 6, 3, 3).clone(), T.expand(B, 6, 4, 4).clone(),
                 torch.full((B, 6), camera), torch.tensor([[lidar, camera, radar]] * B),
                 torch.tensor([[3.0, 0.1, 0.0]] * B), gt_boxes, gt_labels, gt_attrs,
                 [f"s{i}" for i in range(B)], [i for i in range(B)], np.tile(np.eye(4), (B, 1, 1)))


SUBSETS = [(True, True, True), (True, False, False), (False, True, False), (False, True, True),
           (True, True, False), (False, False, True)]


@pytest.mark.parametrize("use", SUBSETS, ids=lambda u: "+".join(n for n, x in zip(("lidar", "camera", "radar"), u) if x))
def test_shapes_and_gradients_for_every_modality_subset(use):
    cfg = micro_cfg(f"model.use_lidar={str(use[0]).lower()}", f"model.use_camera={str(use[1]).lower()}",
                    f"model.use_radar={str(use[2]).lower()}")
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = random_batch(cfg)
    H, W = cfg.bev_shape
    fused = model.encode(batch)
    assert fused.shape == (2, cfg.model.bev_channels, H, W) and torch.isfinite(fused).all()
    losses = model.loss(batch)
    assert torch.isfinite(losses["total"]) and losses["total"] > 0
    losses["total"].backward()
    for name, enc in (("lidar", model.lidar), ("camera", model.camera), ("radar", model.radar)):
        if enc is None:
            continue
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{name}: a parameter got no gradient"
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"{name}: gradients are all zero"


@pytest.mark.parametrize("absent", ["lidar", "camera", "all"])
def test_fusion_model_runs_with_sensors_absent(absent):
    cfg = micro_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    kw = {"lidar": dict(lidar=False), "camera": dict(camera=False),
          "all": dict(lidar=False, camera=False, radar=False)}[absent]
    batch = random_batch(cfg, with_gt=False, **kw)
    fused = model.encode(batch)
    assert torch.isfinite(fused).all()
    dets = model.predict(batch)
    assert len(dets) == 2 and all(np.isfinite(d.boxes.boxes).all() for d in dets)


def test_absent_sensor_content_has_no_influence():
    """What a masked sensor carries must not reach the output: not its image, not its points."""
    cfg = micro_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = random_batch(cfg, with_gt=False)
    batch.camera_mask[:, 3] = False  # camera 3 failed
    batch.modality_mask[:, 0] = False  # LiDAR blackout
    with torch.no_grad():
        a = model.encode(batch)
        batch.images[:, 3] = torch.randn_like(batch.images[:, 3]) * 10
        batch.lidar_points = [p * 0.5 for p in batch.lidar_points]
        b = model.encode(batch)
    assert torch.equal(a, b)


def test_missing_camera_changes_only_its_own_view():
    """Dropping the rear camera changes the camera BEV only behind the car, not in front."""
    cfg = micro_cfg("model.use_lidar=false", "model.use_radar=false")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = random_batch(cfg, with_gt=False)
    from perception.structures import CAMERA_CHANNELS
    K, T = real_camera_rig()
    # index of the camera looking backwards (optical axis towards -x in the ego frame)
    rear = int(torch.argmin(T[:, 0, 2]))
    with torch.no_grad():
        a = model.camera(batch.images, batch.intrinsics, batch.img_aug, batch.T_ego_from_cam, batch.camera_mask)
        batch.camera_mask[:, rear] = False
        b = model.camera(batch.images, batch.intrinsics, batch.img_aug, batch.T_ego_from_cam, batch.camera_mask)
    diff = (a - b).abs().amax(dim=(0, 1))  # [H, W], rows y, cols x
    r, cell = cfg.grid.point_cloud_range, cfg.grid.voxel_size[0] * cfg.model.bev_stride
    xs = r[0] + (torch.arange(diff.shape[1]) + 0.5) * cell
    front = diff[:, xs > 8.0]
    back = diff[:, xs < -8.0]
    assert float(front.max()) == 0.0
    assert float(back.max()) > 0.0


def test_head_targets_decode_back_to_the_boxes():
    """Encode ground truth into the head's targets, turn the targets into perfect predictions, decode."""
    cfg = micro_cfg()
    head = build_model(cfg).head
    boxes = torch.tensor([[5.3, 3.1, -0.5, 4.5, 1.9, 1.6, 0.3, 2.0, -1.0],
                          [-8.2, -6.7, -0.8, 0.7, 0.6, 1.8, -2.9, 0.5, 0.2],
                          [12.05, -15.5, 0.2, 11.0, 2.9, 3.5, 1.5, -7.0, 3.0],
                          [-20.0, 18.3, -1.0, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    labels = torch.tensor([0, 5, 2, 8])
    attrs = torch.tensor([5, 2, 5, -1])
    tgt = head.targets([boxes], [labels], [attrs])
    H, W = cfg.bev_shape
    preds = []
    for t, ids in enumerate(head.task_class_ids):
        p = {"heatmap": torch.where(tgt.heatmaps[t] == 1, 10.0, -10.0),
             "attribute": torch.zeros(1, 8, H, W), "offset": torch.zeros(1, 2, H, W),
             "height": torch.zeros(1, 1, H, W), "size": torch.zeros(1, 3, H, W), "yaw": torch.zeros(1, 2, H, W),
             "velocity": torch.zeros(1, 2, H, W)}
        for k in torch.nonzero(tgt.mask[0] & (tgt.task_of[0] == t)).flatten():
            y, x = divmod(int(tgt.indices[0, k]), W)
            reg = tgt.regression[0, k]
            p["offset"][0, :, y, x] = reg[0:2]
            p["height"][0, :, y, x] = reg[2:3]
            p["size"][0, :, y, x] = reg[3:6]
            p["yaw"][0, :, y, x] = reg[6:8]
            p["velocity"][0, :, y, x] = reg[8:10]
            if tgt.attributes[0, k] >= 0:
                p["attribute"][0, tgt.attributes[0, k], y, x] = 5.0
        preds.append(p)
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert len(det) == 4
    cell = cfg.grid.voxel_size[0] * cfg.model.bev_stride
    for i, row in enumerate(boxes.double().numpy()):
        j = int(np.argmin(np.linalg.norm(det.boxes[:, :2] - row[:2], axis=1)))
        d = det.boxes[j]
        assert np.linalg.norm(d[:2] - row[:2]) < cell / 2
        np.testing.assert_allclose(d[2:6], row[2:6], atol=1e-3)
        assert abs(math.remainder(d[6] - row[6], 2 * math.pi)) < 1e-3
        np.testing.assert_allclose(d[7:9], row[7:9], atol=1e-3)
        assert det.labels[j] == labels[i]
        assert det.attributes[j] == attrs[i]


def test_modality_dropout_never_hides_everything():
    from perception.models.fusion.cross_attention import CrossAttentionFusion

    f = CrossAttentionFusion(8, (4, 4), modality_dropout=(0.9, 0.9, 0.9))
    torch.manual_seed(0)
    present = torch.tensor([[True, True, True], [True, False, False], [False, False, False]]).repeat(100, 1)
    kept = f.drop_modalities(present)
    assert not (kept & ~present).any()  # never adds a sensor
    has = present.any(1)
    assert kept[has].any(1).all()  # a sample with sensors keeps at least one
    assert (kept.sum() < present.sum())  # and dropout does hide some


def test_overfit_one_real_frame_recovers_cars(real_source):
    """Deterministic overfit on one real keyframe (LiDAR + radar): the loss falls and the frame's
    cars come back with centre errors under 0.5 m."""
    from perception.data.batch import collate, frame_to_sample
    from perception.sync.synchronizer import FrameBuilder

    torch.manual_seed(0)
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", [
        "grid.point_cloud_range=[-32.0, -32.0, -5.0, 32.0, 32.0, 3.0]", "grid.voxel_size=[0.4, 0.4, 8.0]",
        "model.use_camera=false", "model.bev_stride=2", "model.bev_channels=32", "model.head.channels=32",
        "model.fusion.dropout_lidar=0.0", "model.fusion.dropout_radar=0.0", "model.fusion.dropout_camera=0.0",
        "sync.lidar_sweeps=1", "sync.radar_sweeps=1", "model.head.tasks=[[car, truck, bus, trailer, "
        "construction_vehicle, pedestrian, motorcycle, bicycle, traffic_cone, barrier]]"])
    fb = FrameBuilder(real_source, "scene-0916", cfg)
    frame = fb.build(fb.keyframe_references[20], load_images=False)
    batch = collate([frame_to_sample(frame, cfg)])
    cars = batch.gt_boxes[0][batch.gt_labels[0] == CLASSES.index("car")].double().numpy()
    assert len(cars) >= 3
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for step in range(150):
        loss = model.loss(batch)["total"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(loss.detach())
    assert last < 0.2 * first, (first, last)
    model.eval()
    det = model.predict(batch)[0].boxes
    car_det = det.boxes[(det.labels == 0) & (det.scores > 0.3)]
    errors = [np.min(np.linalg.norm(car_det[:, :2] - c[:2], axis=1)) if len(car_det) else np.inf for c in cars]
    assert np.mean(np.array(errors) < 0.5) >= 0.7, errors


def test_pillar_features_ignore_padding_and_keep_scale():
    """The PFN normalizes over the valid points only: garbage in the padding rows changes nothing,
    not even the batch statistics. And the same pillar shape at 10 m and at 40 m gives different
    features (the absolute position is an input)."""
    from perception.models.lidar.pointpillars import PillarFeatureNet

    torch.manual_seed(0)
    pfn = PillarFeatureNet(5, [16], [0.4, 0.4, 8.0], [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]).train()
    M, P = 50, 8
    nums = torch.randint(1, P + 1, (M,))
    coords = torch.zeros(M, 4, dtype=torch.long)
    coords[:, 3] = torch.randint(0, 256, (M,))
    coords[:, 2] = torch.randint(0, 256, (M,))
    centre_xy = (coords[:, [3, 2]].float() + 0.5) * 0.4 - 51.2
    vox = torch.zeros(M, P, 5)
    vox[..., :2] = centre_xy[:, None] + (torch.rand(M, P, 2) - 0.5) * 0.4
    vox[..., 2] = torch.randn(M, P)
    vox[..., 3] = torch.rand(M, P)
    pad = torch.arange(P)[None] >= nums[:, None]
    vox[pad] = 0.0
    a = pfn(vox, nums, coords)
    noisy = vox.clone()
    noisy[pad] = torch.randn(int(pad.sum()), 5) * 100  # garbage in the padding rows
    b = pfn(noisy, nums, coords)
    torch.testing.assert_close(a, b)
    # same pillar content shifted from ~10 m to ~40 m: features must differ
    pfn.eval()
    one = torch.zeros(1, P, 5)
    one[0, :4, 2] = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    near, far = one.clone(), one.clone()
    near[0, :4, 0], far[0, :4, 0] = 10.2, 40.2
    c_near = torch.tensor([[0, 0, 128, 153]])
    c_far = torch.tensor([[0, 0, 128, 228]])
    n4 = torch.tensor([4])
    assert not torch.allclose(pfn(near, n4, c_near), pfn(far, n4, c_far), atol=1e-3)


def test_pillar_feature_net_trains_with_zero_or_one_point():
    """An absent LiDAR (0 points) or a single point in a training batch has no batch statistics:
    the PFN falls back to its running ones instead of failing or producing NaN."""
    from perception.models.lidar.pointpillars import PillarFeatureNet

    pfn = PillarFeatureNet(5, [16], [0.4, 0.4, 8.0], [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]).train()
    for m in (0, 1):
        vox = torch.zeros(m, 4, 5)
        vox[:, 0, :3] = 1.0
        out = pfn(vox, torch.ones(m, dtype=torch.long), torch.zeros(m, 4, dtype=torch.long))
        assert out.shape == (m, 16) and torch.isfinite(out).all()
    bn = pfn.mlp[1]
    assert torch.equal(bn.running_mean, torch.zeros(16))  # untouched by the 0/1-point batches
