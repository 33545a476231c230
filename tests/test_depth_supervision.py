"""LiDAR depth supervision of the camera branch: targets on real keyframes agree with the devkit's
projection and follow the image augmentation; the loss ignores cells without a point; the camera path
needs no LiDAR, at inference or in training."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from perception.config import load_config
from perception.data.batch import collate, frame_to_sample, resize_crop_matrix
from perception.models.build import build_model
from perception.models.camera.depth import DepthStats, depth_loss, expected_depth
from perception.models.camera.lss import CameraDepth
from perception.ops.depth_targets import depth_bin_index, depth_target_maps, project_points, project_to_cells
from perception.sync.synchronizer import FrameBuilder

from conftest import PROJECT
from test_model import MICRO, random_batch


@pytest.fixture(scope="module")
def real_frame(real_source):
    """Keyframe 10 of scene-0916 with its keyframe LiDAR sweep only."""
    fb = FrameBuilder(real_source, "scene-0916", load_config(None, ["sync.lidar_sweeps=1", "sync.radar_sweeps=1"]))
    return fb.build(fb.keyframe_references[10], load_images=False)


def test_projection_agrees_with_devkit_map_pointcloud_to_image(real_source, real_frame):
    nusc = real_source.nusc
    pts = real_frame.lidar_points[real_frame.lidar_points[:, 5] == 0]
    checked = 0
    for cam in real_frame.cameras:
        dev_pts, dev_depth, _ = nusc.explorer.map_pointcloud_to_image(real_frame.status["LIDAR_TOP"].token,
                                                                      cam.token, min_dist=1.0)
        u, v, z = project_points(pts, cam.intrinsics, cam.T_ego_from_cam, np.eye(3))

        def inside(margin):  # the devkit's filter (depth > 1 m, 1 px inside the border), widened by margin
            m = 1.0 - margin
            return (z > 1.0 - margin) & (u > m) & (u < cam.width - m) & (v > m) & (v < cam.height - m)
        # float32 devkit chain vs float64 here: a point within 0.1 px of the filter's border may fall
        # either way, every other one must be the same set
        assert inside(-0.1).sum() <= dev_pts.shape[1] <= inside(0.1).sum()
        idx = np.flatnonzero(inside(0.1))
        ours = np.stack([u[idx], v[idx]], 1)
        # each devkit point (kept in the cloud's order) is one of ours, in the same order
        nearest = cKDTree(ours).query(dev_pts[:2].T)[1]
        assert (np.diff(nearest) > 0).all(), cam.channel
        assert np.abs(ours[nearest] - dev_pts[:2].T).max() < 0.5, cam.channel
        np.testing.assert_allclose(z[idx][nearest], dev_depth, atol=1e-3)  # depth to a millimetre
        assert dev_pts.shape[1] > 500
        checked += 1
    assert checked == 6


def _maps(frame, aug, hw, stride):
    pts = frame.lidar_points[frame.lidar_points[:, 5] == 0]
    K = np.stack([c.intrinsics for c in frame.cameras])
    T = np.stack([c.T_ego_from_cam for c in frame.cameras])
    return depth_target_maps(pts, K, T, aug, np.ones(len(K), bool), hw, stride), pts, K, T


@pytest.mark.parametrize("stride", [8, 16])
def test_vectorized_targets_equal_the_reference_under_augmentation(real_frame, stride):
    hw = (128, 352)
    rng = np.random.default_rng(0)
    aug = np.stack([resize_crop_matrix(1600, 900, hw, flip=bool(i % 2), scale_jitter=rng.uniform(0.9, 1.15),
                                       crop_jitter=rng.uniform()) for i in range(6)])
    maps, pts, K, T = _maps(real_frame, aug, hw, stride)
    assert maps.shape == (6, hw[0] // stride, hw[1] // stride)
    for i in range(6):
        ref = project_to_cells(pts, K[i], T[i], aug[i], hw, stride)
        np.testing.assert_array_equal(maps[i], ref)
        assert (maps[i] > 0).sum() > 20  # every camera sees LiDAR points
    # an absent camera gets no target
    some = depth_target_maps(pts, K, T, aug, np.array([1, 0, 1, 1, 1, 1], bool), hw, stride)
    assert not some[1].any() and np.array_equal(some[0], maps[0])


def test_targets_stay_on_the_same_points_under_resize_crop_and_flip(real_frame):
    """A point's network pixel is the augmentation matrix applied to its original pixel, at the same
    depth, and a flipped image's target map is the mirror image of the unflipped one."""
    hw, stride = (128, 352), 16
    cam = real_frame.cameras[0]
    pts = real_frame.lidar_points[real_frame.lidar_points[:, 5] == 0]
    u0, v0, z0 = project_points(pts, cam.intrinsics, cam.T_ego_from_cam, np.eye(3))
    front = z0 > 1.0
    for flip, scale, crop in ((False, 1.0, 0.0), (False, 1.1, 0.7), (True, 0.95, 0.3)):
        A = resize_crop_matrix(cam.width, cam.height, hw, flip=flip, scale_jitter=scale, crop_jitter=crop)
        u, v, z = project_points(pts, cam.intrinsics, cam.T_ego_from_cam, A)
        expect = np.stack([u0, v0, np.ones_like(u0)], 1)[front] @ A.T
        np.testing.assert_allclose(u[front], expect[:, 0], atol=1e-6)
        np.testing.assert_allclose(v[front], expect[:, 1], atol=1e-6)
        np.testing.assert_array_equal(z, z0)
    A = resize_crop_matrix(cam.width, cam.height, hw, scale_jitter=1.05, crop_jitter=0.4)
    A_flip = resize_crop_matrix(cam.width, cam.height, hw, flip=True, scale_jitter=1.05, crop_jitter=0.4)
    plain = project_to_cells(pts, cam.intrinsics, cam.T_ego_from_cam, A, hw, stride)
    flipped = project_to_cells(pts, cam.intrinsics, cam.T_ego_from_cam, A_flip, hw, stride)
    assert (plain > 0).sum() > 20
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


def test_sample_targets_come_from_the_reference_sweep_with_the_lift_geometry(real_source):
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml")
    fb = FrameBuilder(real_source, "scene-0523", cfg)
    frame = fb.build(fb.keyframe_references[3])
    sample = frame_to_sample(frame, cfg)
    fH = cfg.model.camera.image_size[0] // cfg.model.camera.feature_stride
    fW = cfg.model.camera.image_size[1] // cfg.model.camera.feature_stride
    assert sample.depth_targets.shape == (6, fH, fW)
    expect, _, _, _ = _maps(frame, sample.img_aug.double().numpy(), cfg.model.camera.image_size,
                            cfg.model.camera.feature_stride)
    # same points, same matrices as the lift gets (float32 there): the same cells, depths to float32
    np.testing.assert_allclose(sample.depth_targets.numpy(), expect, rtol=1e-6, atol=0)
    assert (sample.depth_targets > 0).sum() > 200
    # a camera-only model still gets targets, but never the points themselves
    cam_cfg = load_config(f"{PROJECT}/configs/camera_tiny.yaml")
    cam_sample = frame_to_sample(frame, cam_cfg)
    assert len(cam_sample.lidar_points) == 0 and not cam_sample.modality_mask[0]
    np.testing.assert_array_equal(cam_sample.depth_targets.numpy(), sample.depth_targets.numpy())
    # without the LiDAR there is nothing to supervise with
    no_lidar = fb.build(fb.keyframe_references[3], drop=["lidar"])
    assert not frame_to_sample(no_lidar, cfg).depth_targets.any()


def test_bin_index():
    d = np.array([0.0, 0.5, 1.0, 1.99, 2.0, 32.9, 33.0, 50.0])
    np.testing.assert_array_equal(depth_bin_index(d, (1.0, 33.0, 2.0)), [-1, -1, 0, 0, 0, 15, -1, -1])
    np.testing.assert_array_equal(depth_bin_index(torch.tensor(d), (1.0, 33.0, 2.0)).numpy(),
                                  [-1, -1, 0, 0, 0, 15, -1, -1])


def _depth_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 16, 4, 11, generator=g, requires_grad=True)
    depth = CameraDepth(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 4, 2]))
    targets = torch.zeros(2, 6, 4, 11)
    targets[0, 0, 1, 2] = 5.5
    targets[0, 4, 3, 10] = 30.0
    targets[1, 2, 0, 0] = 12.0
    targets[1, 2, 2, 5] = 40.0  # beyond the bins: ignored
    return depth, targets


def test_cells_without_a_point_take_no_loss():
    bins = (1.0, 33.0, 2.0)
    depth, targets = _depth_case()
    loss = depth_loss(depth, targets, bins, batch_size=2)
    loss.backward()
    grad = depth.logits.grad.abs().sum(dim=1)  # [M, fH, fW]
    supervised = torch.zeros_like(grad, dtype=torch.bool)
    supervised[0, 1, 2] = supervised[1, 3, 10] = supervised[2, 0, 0] = True
    assert (grad[supervised] > 0).all()
    assert not grad[~supervised].any()
    # the value: per sample mean of the cross-entropy of the supervised cells, then mean over samples
    lp = depth.logits.detach().log_softmax(dim=1)
    s0 = -(lp[0, 2, 1, 2] + lp[1, 14, 3, 10]) / 2  # 5.5 m -> bin 2, 30 m -> bin 14
    s1 = -lp[2, 5, 0, 0]  # 12 m -> bin 5
    torch.testing.assert_close(loss, (s0 + s1) / 2)
    # no target anywhere: zero loss, zero gradient (not NaN)
    depth2, _ = _depth_case()
    empty = depth_loss(depth2, torch.zeros(2, 6, 4, 11), bins, batch_size=2)
    empty.backward()
    assert float(empty.detach()) == 0.0 and not depth2.logits.grad.any()


def test_depth_metrics_of_a_known_distribution():
    bins = (1.0, 33.0, 2.0)
    depth, targets = _depth_case()
    logits = torch.full((3, 16, 4, 11), -1e4)
    logits[:, 5] = 0.0  # all mass on bin 5: expected depth 12 m everywhere
    depth = CameraDepth(logits, depth.batch_index, depth.camera_index)
    torch.testing.assert_close(expected_depth(logits, bins), torch.full((3, 4, 11), 12.0))
    stats = DepthStats()
    stats.add(depth, targets, bins)
    s = stats.summary(["A", "B", "C", "D", "E", "F"])
    d, g = np.array([12.0, 12.0, 12.0]), np.array([5.5, 30.0, 12.0])
    assert s["all"]["cells"] == 3
    assert s["all"]["abs_rel"] == pytest.approx(np.mean(np.abs(d - g) / g))
    assert s["all"]["rmse"] == pytest.approx(np.sqrt(np.mean((d - g) ** 2)))
    assert s["all"]["delta1"] == pytest.approx(1 / 3)
    assert s["per_camera"]["C"]["abs_rel"] == pytest.approx(0.0) and s["per_camera"]["B"] is None


def micro_cfg(*extra):
    return load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO + list(extra))


def _with_targets(batch, cfg, value=10.0):
    H, W = cfg.model.camera.image_size
    s = cfg.model.camera.feature_stride
    t = torch.zeros(batch.images.shape[0], 6, H // s, W // s)
    t[:, :, ::2, ::3] = value
    batch.depth_targets = t
    return batch


def test_camera_path_runs_without_lidar_at_inference():
    """The camera BEV does not depend on the LiDAR: absent, present, or moved points give the same map."""
    cfg = micro_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with_lidar = random_batch(cfg, with_gt=False)
    without = random_batch(cfg, with_gt=False, lidar=False)
    with torch.no_grad():
        _, d1 = model.encode(with_lidar, return_depth=True)
        _, d2 = model.encode(without, return_depth=True)
        cam1 = model.camera(with_lidar.images, with_lidar.intrinsics, with_lidar.img_aug,
                            with_lidar.T_ego_from_cam, with_lidar.camera_mask)
        dets = model.predict(without)
    assert torch.equal(d1.logits, d2.logits)
    assert cam1.abs().sum() > 0 and len(dets) == 2


@pytest.mark.parametrize("aware", ["true", "false"])
def test_training_batch_without_lidar_trains_the_camera(aware):
    """No LiDAR in the batch: no depth targets, zero depth loss, and the detection loss still trains the
    camera branch; with targets the depth loss reaches the depth net."""
    cfg = micro_cfg(f"model.camera.camera_aware={aware}")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = _with_targets(random_batch(cfg, lidar=False), cfg, value=0.0)
    terms = model.loss(batch)
    assert float(terms["depth"].detach()) == 0.0 and torch.isfinite(terms["total"])
    terms["total"].backward()
    assert model.camera.backbone.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    batch = _with_targets(random_batch(cfg, lidar=False), cfg, value=10.0)
    terms = model.loss(batch)
    assert float(terms["depth"].detach()) > 0
    terms["depth"].backward()
    net, D = model.camera.depth_net, model.camera.num_depth
    if aware == "true":  # the depth branch learns from it, the context branch does not
        for p in (net.depth_out.weight, net.depth_conv[0].weight, net.mlp[-1].weight):
            assert p.grad.abs().sum() > 0
        assert net.context_out.weight.grad is None or not net.context_out.weight.grad.any()
    else:
        assert net.out.weight.grad[:D].abs().sum() > 0 and not net.out.weight.grad[D:].any()
    # the depth term reaches nothing outside the camera encoder
    outside = [p.grad for name, p in model.named_parameters() if not name.startswith("camera.")]
    assert outside and all(g is None or not g.any() for g in outside)


def test_depth_loss_weight_zero_means_no_depth_term():
    cfg = micro_cfg("model.camera.depth_loss_weight=0")
    model = build_model(cfg).train()
    terms = model.loss(_with_targets(random_batch(cfg), cfg))
    assert "depth" not in terms


def test_collate_stacks_targets(real_source):
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml")
    fb = FrameBuilder(real_source, "scene-0916", cfg)
    frames = [fb.build(fb.keyframe_references[i]) for i in (0, 1)]
    batch = collate([frame_to_sample(f, cfg) for f in frames])
    assert batch.depth_targets.shape[:2] == (2, 6)
    assert (batch.depth_targets[0] > 0).any() and (batch.depth_targets[1] > 0).any()


def test_ray_geometry_of_a_level_front_camera():
    """A front camera (optical axis = ego x, image down = ego -z) at 1.5 m: the principal point's ray is
    level, rays below it point down by the angle the intrinsics say, and a flip mirrors x / z."""
    from perception.models.camera.lss import LiftSplatEncoder
    from perception.models.camera.resnet import resnet18

    enc = LiftSplatEncoder(resnet18(8), 16, (1.0, 50.0, 2.0), 8, 16, (64, 176), [-25.6, -25.6, -5, 25.6, 25.6, 3],
                           [0.8, 0.8, 8.0], 2, 16)
    f, cx, cy = 100.0, 88.0, 32.0  # network-input pixels (img_aug = identity)
    K = torch.tensor([[[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]]])
    T = torch.eye(4).unsqueeze(0)
    T[0, :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam x,y,z -> ego -y,-z,x
    T[0, 2, 3] = 1.5
    g = enc.cell_rays(K, torch.eye(3).unsqueeze(0), T)[0]  # [3, 4, 11]
    s = 16.0
    v = (torch.arange(4) + 0.5) * s
    u = (torch.arange(11) + 0.5) * s
    torch.testing.assert_close(g[0], ((u - cx) / f).expand(4, 11))
    torch.testing.assert_close(g[1], ((v - cy) / f).view(4, 1).expand(4, 11))
    # elevation: sine of the angle above the horizon, -y / |(x, y, 1)| in camera terms
    expect = -g[1] / torch.sqrt(g[0] ** 2 + g[1] ** 2 + 1)
    torch.testing.assert_close(g[2], expect)
    assert (g[2][:2] > 0).all() and (g[2][2:] < 0).all()  # rows above / below the principal point
    W = 176.0
    flip = torch.tensor([[[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    gf = enc.cell_rays(K, flip, T)[0]
    torch.testing.assert_close(gf[0], g[0].flip(-1))
    torch.testing.assert_close(gf[2], g[2])


def test_eval_measures_camera_depth_per_camera_and_reports_it(real_source, tmp_path):
    """Inference through ModelDetector accumulates the camera depth against the LiDAR per camera; with
    the LiDAR dropped there is nothing to measure; report.md carries the table."""
    from perception.eval import evaluate as ev
    from perception.eval.report import depth_lines, parse_table

    cfg = micro_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    det = ev.ModelDetector(model, cfg)
    tokens = ev.split_sample_tokens(real_source.nusc, "val")[:2]
    inf = ev.run_inference(det, real_source, cfg, tokens)
    summary = inf.depth.summary(cfg.data.cameras)
    assert set(summary["per_camera"]) == set(cfg.data.cameras)
    assert all(m is not None and m["cells"] > 0 for m in summary["per_camera"].values())
    assert summary["all"]["cells"] == sum(m["cells"] for m in summary["per_camera"].values())
    assert 0 < summary["all"]["abs_rel"] and 0 <= summary["all"]["delta1"] <= 1
    # a second run starts from zero, and without the LiDAR nothing is measured
    again = ev.run_inference(det, real_source, cfg, tokens)
    assert again.depth.summary(cfg.data.cameras) == summary
    blind = ev.run_inference(det, real_source, cfg, tokens, drop=["lidar"])
    assert blind.depth is None or blind.depth.summary() is None
    text = "## Camera depth\n\n" + "\n".join(depth_lines(summary)) + "\n"
    rows = parse_table(text, "Camera depth")
    assert set(rows) == set(cfg.data.cameras) | {"all"}
    assert float(rows["all"][0]) == pytest.approx(summary["all"]["abs_rel"], abs=1e-4)
    assert int(rows["CAM_BACK"][3]) == summary["per_camera"]["CAM_BACK"]["cells"]
