"""Camera branch: torchvision-compatible ResNet keys and weight loading, lift-splat frustum geometry on a
real nuScenes calibration (with resize + crop + flip augmentation), masks, gradients, determinism."""
import json
import math
import os

import numpy as np
import pytest
import torch

from perception.config import Config
from perception.geometry import make_transform
from perception.models.camera.resnet import PretrainedWeightsError
from perception.models.camera import (LiftSplatEncoder, ResNet, build_camera_encoder, load_pretrained, resnet18,
                                      resnet50)

RANGE = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]


# ---------------------------------------------------------------------------------------------
# ResNet: torchvision's key set, written out from torchvision's architecture rules
# ---------------------------------------------------------------------------------------------
def torchvision_resnet_keys(bottleneck: bool, layers):
    """Every state-dict key of torchvision.models.resnet*(), fc included, in its order."""
    def bn(p):
        return [f"{p}.weight", f"{p}.bias", f"{p}.running_mean", f"{p}.running_var", f"{p}.num_batches_tracked"]

    expansion, convs = (4, 3) if bottleneck else (1, 2)
    keys = ["conv1.weight"] + bn("bn1")
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
        stride = 1 if stage == 0 else 2
        for b in range(blocks):
            p = f"layer{stage + 1}.{b}"
            for k in range(1, convs + 1):
                keys += [f"{p}.conv{k}.weight"] + bn(f"{p}.bn{k}")
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                keys += [f"{p}.downsample.0.weight"] + bn(f"{p}.downsample.1")
            inplanes = planes * expansion
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("factory, bottleneck, layers, n_keys, n_params, shapes", [
    # torchvision: len(resnet18().state_dict()) == 122, 11,689,512 parameters of which fc has 513,000
    (resnet18, False, (2, 2, 2, 2), 122, 11_689_512 - 513_000,
     {"conv1.weight": (64, 3, 7, 7), "layer4.1.conv2.weight": (512, 512, 3, 3),
      "layer2.0.downsample.0.weight": (128, 64, 1, 1)}),
    # torchvision: len(resnet50().state_dict()) == 320, 25,557,032 parameters of which fc has 2,049,000
    (resnet50, True, (3, 4, 6, 3), 320, 25_557_032 - 2_049_000,
     {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer4.2.conv3.weight": (2048, 512, 1, 1),
      "layer3.5.bn2.running_var": (256,)}),
])
def test_resnet_state_dict_matches_torchvision(factory, bottleneck, layers, n_keys, n_params, shapes):
    expected = torchvision_resnet_keys(bottleneck, layers)
    assert len(expected) == n_keys
    model = factory(64)
    sd = model.state_dict()
    assert set(sd) == set(expected) - {"fc.weight", "fc.bias"}
    assert sum(p.numel() for p in model.parameters()) == n_params
    for name, shape in shapes.items():
        assert tuple(sd[name].shape) == shape
    # stage outputs at strides 4, 8, 16, 32 with the documented channels
    feats = model.eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // s, 96 // s) for c, s in
                                                 zip(model.out_channels, (4, 8, 16, 32))]


def _save_with_fc(model: ResNet, path, drop_batches_tracked=False):
    sd = {k: v.clone() for k, v in model.state_dict().items()
          if not (drop_batches_tracked and k.endswith("num_batches_tracked"))}
    sd["fc.weight"] = torch.randn(1000, model.out_channels[-1])
    sd["fc.bias"] = torch.randn(1000)
    torch.save(sd, path)


@pytest.mark.parametrize("drop_batches_tracked", [False, True])
def test_load_pretrained_round_trip(tmp_path, drop_batches_tracked):
    torch.manual_seed(0)
    src = resnet18(8)
    for m in src.modules():  # non-trivial BN statistics, so that they are seen to load too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = str(tmp_path / "r18.pth")
    _save_with_fc(src, path, drop_batches_tracked)
    torch.manual_seed(1)
    dst = resnet18(8)
    assert not torch.equal(dst.conv1.weight, src.conv1.weight)
    load_pretrained(dst, path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a, b), k
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(src.eval()(x), dst.eval()(x)):
        assert torch.equal(a, b)


def test_load_pretrained_mismatch_names_the_parameter(tmp_path):
    src = resnet18(8)
    sd = dict(src.state_dict())
    sd["layer2.0.conv1.weight"] = torch.zeros(17, 8, 3, 3)  # the model's is (16, 8, 3, 3)
    path = str(tmp_path / "bad.pth")
    torch.save(sd, path)
    dst = resnet18(8)
    before = dst.conv1.weight.clone()
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight"):
        load_pretrained(dst, path)
    assert torch.equal(dst.conv1.weight, before)  # nothing was loaded

    del sd["layer2.0.conv1.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight.*missing"):
        load_pretrained(dst, path)

    sd = dict(src.state_dict())
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"layer5\.0\.conv1\.weight"):
        load_pretrained(dst, path)


def test_imagenet_width_into_tiny_backbone_says_why(tmp_path):
    path = str(tmp_path / "r18_w64.pth")
    _save_with_fc(resnet18(64), path)
    with pytest.raises(ValueError, match=r"conv1\.weight.*backbone_width=16"):
        load_pretrained(resnet18(16), path)
    with pytest.raises(PretrainedWeightsError, match=r"model\.camera\.pretrained .*r18_w64\.pth"):
        load_pretrained(resnet18(16), path)
    cfg = tiny_config()
    cfg.model.camera.pretrained = path
    with pytest.raises(ValueError, match=r"backbone_width=16"):
        build_camera_encoder(cfg)


# ---------------------------------------------------------------------------------------------
# Frustum geometry on the real CAM_FRONT calibration
# ---------------------------------------------------------------------------------------------
def cam_front_calibration(real_root):
    d = os.path.join(real_root, "v1.0-trainval")
    with open(os.path.join(d, "sensor.json")) as f:
        token = next(s["token"] for s in json.load(f) if s["channel"] == "CAM_FRONT")
    with open(os.path.join(d, "calibrated_sensor.json")) as f:
        cs = next(c for c in json.load(f) if c["sensor_token"] == token)
    return np.array(cs["camera_intrinsic"], dtype=np.float64), make_transform(cs["translation"], cs["rotation"])


def augmentation(flip: bool):
    """1600 x 900 -> resize 0.11 (176 x 99) -> keep the bottom 64 rows -> optional horizontal flip."""
    S = np.diag([0.11, 0.11, 1.0])
    C = np.array([[1.0, 0, 0], [0, 1, -35.0], [0, 0, 1]])
    F = np.array([[-1.0, 0, 176.0], [0, 1, 0], [0, 0, 1]]) if flip else np.eye(3)
    return F @ C @ S


def geometry_encoder(feature_stride=8):
    torch.manual_seed(0)
    return LiftSplatEncoder(resnet18(8), 16, (1.0, 50.0, 1.0), 4, feature_stride, (64, 176), RANGE,
                            [0.8, 0.8, 8.0], 1, 8).eval()


def t32(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


@pytest.mark.parametrize("flip", [False, True])
def test_frustum_round_trip_real_calibration(real_root, flip):
    K, T = cam_front_calibration(real_root)
    A = augmentation(flip)
    enc = geometry_encoder()
    pts = enc.ego_points(t32(K)[None], t32(A)[None], t32(T)[None])[0].double().numpy()  # [D, fH, fW, 3]
    D, fH, fW, _ = pts.shape
    assert (D, fH, fW) == (49, 8, 22)
    # Back into the camera with the extrinsic, then through K and the augmentation.
    cam = (pts.reshape(-1, 3) - T[:3, 3]) @ T[:3, :3]
    depth = cam[:, 2]
    net = (np.c_[cam[:, :2] / depth[:, None], np.ones(len(cam))] @ K.T) @ A.T
    dd, ii, jj = np.meshgrid(np.arange(D), np.arange(fH), np.arange(fW), indexing="ij")
    np.testing.assert_allclose(depth, 1.5 + dd.reshape(-1), atol=1e-3)  # bin centres, optical axis
    np.testing.assert_allclose(net[:, 0], (jj.reshape(-1) + 0.5) * 8, atol=1e-2)
    np.testing.assert_allclose(net[:, 1], (ii.reshape(-1) + 0.5) * 8, atol=1e-2)

    # CAM_FRONT looks along ego +x; a column left in the network input is left of the car (+y) unless
    # the image was flipped, when it came from the right half of the original image.
    assert np.all(pts[..., 0] > 1.0)
    assert np.all(np.diff(pts[:, 4, 3, 0]) > 0.9)  # farther bins are farther ahead
    left_column_y = pts[10, :, 0, 1]
    assert np.all(left_column_y < -1.0) if flip else np.all(left_column_y > 1.0)


def expected_ego_point(K, T, A, col, row, stride, depth):
    """Independent of the encoder: network pixel centre -> original pixel -> camera ray -> ego."""
    uv = np.linalg.solve(A, [(col + 0.5) * stride, (row + 0.5) * stride, 1.0])
    ray = np.linalg.solve(K, uv / uv[2])
    return T[:3, :3] @ (ray * depth) + T[:3, 3]


@pytest.mark.parametrize("flip", [False, True])
def test_single_feature_lands_in_expected_cell(real_root, flip):
    K, T = cam_front_calibration(real_root)
    A = augmentation(flip)
    enc = geometry_encoder()
    D, (fH, fW), C = enc.num_depth, enc.feature_hw, 4
    row, col, k = 5, 7, 19  # depth bin 19: centre 20.5 m
    p = expected_ego_point(K, T, A, col, row, 8, 20.5)
    q = (p[:2] - np.array(RANGE[:2])) / 0.8
    assert np.all(np.abs(q - np.round(q)) > 0.01), "test point too close to a cell border"
    cell_y, cell_x = int(np.floor(q[1])), int(np.floor(q[0]))

    depth = torch.zeros(1, D, fH, fW)
    depth[0, k, row, col] = 1.0
    context = torch.zeros(1, C, fH, fW)
    context[0, 2, row, col] = 5.0
    bev = enc.splat(depth, context, t32(K)[None], t32(A)[None], t32(T)[None], torch.tensor([1]), 2)
    assert bev.shape == (2, C, 128, 128)
    nz = torch.nonzero(bev)
    assert nz.tolist() == [[1, 2, cell_y, cell_x]]  # sample 1, channel 2, row = y, col = x
    assert bev[1, 2, cell_y, cell_x].item() == 5.0
    # rows are ego y, columns ego x: the point is ahead (x > 0) and on the side the pixel looks at
    assert cell_x > 64 and ((cell_y < 64) == flip)


def test_points_above_the_range_are_dropped(real_root):
    K, T = cam_front_calibration(real_root)
    A = augmentation(False)
    enc = geometry_encoder()
    D, (fH, fW) = enc.num_depth, enc.feature_hw
    # top row of the crop looks upwards: at 49.5 m it is above z_max = 3 m while x, y are in range
    p = expected_ego_point(K, T, A, 10, 0, 8, 49.5)
    assert p[2] > RANGE[5] and abs(p[0]) < 51.2 and abs(p[1]) < 51.2
    depth = torch.zeros(1, D, fH, fW)
    depth[0, D - 1, 0, 10] = 1.0
    bev = enc.splat(depth, torch.ones(1, 4, fH, fW), t32(K)[None], t32(A)[None], t32(T)[None],
                    torch.tensor([0]), 1)
    assert not bev.any()
    depth[0, 0, 0, 10] = 1.0  # the same pixel at 1.5 m is inside: the op is not dropping everything
    bev = enc.splat(depth, torch.ones(1, 4, fH, fW), t32(K)[None], t32(A)[None], t32(T)[None],
                    torch.tensor([0]), 1)
    assert torch.count_nonzero(bev.sum(1)) == 1


# ---------------------------------------------------------------------------------------------
# The whole encoder: shapes, masks, gradients, determinism, config
# ---------------------------------------------------------------------------------------------
def ring_rig(B, N=6):
    """N cameras around the ego (1600 x 900, f = 1266), resized 0.11 and cropped to 64 x 176."""
    K = torch.tensor([[1266.0, 0, 800.0], [0, 1266.0, 450.0], [0, 0, 1]])
    A = t32(augmentation(False))
    cam_to_ego = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # optical axis -> ego +x
    T = torch.zeros(N, 4, 4)
    for n in range(N):
        a = 2 * math.pi * n / N
        Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
        T[n, :3, :3] = Rz @ cam_to_ego
        T[n, :3, 3] = torch.tensor([1.0 * math.cos(a), 1.0 * math.sin(a), 1.6])
        T[n, 3, 3] = 1
    return (K.expand(B, N, 3, 3).clone(), A.expand(B, N, 3, 3).clone(), T.expand(B, N, 4, 4).clone())


def tiny_encoder(seed=0, camera_aware=True):
    torch.manual_seed(seed)
    return LiftSplatEncoder(resnet18(8), 16, (1.0, 50.0, 2.0), 8, 16, (64, 176), RANGE, [0.8, 0.8, 8.0], 2, 16,
                            camera_aware=camera_aware)


def tiny_config():
    cfg = Config()
    cfg.grid.voxel_size = [0.8, 0.8, 10.0]
    cfg.model.bev_stride = 2
    cfg.model.bev_channels = 16
    cam = cfg.model.camera
    cam.image_size, cam.backbone, cam.backbone_width = [64, 192], "resnet18", 16
    cam.feature_stride, cam.depth_bins, cam.channels = 16, [1.0, 50.0, 2.0], 8
    return cfg.validate()


def inputs(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 6, 3, 64, 176, generator=g),) + ring_rig(B)


def test_output_shapes_and_masks():
    enc = tiny_encoder().eval()
    images, K, A, T = inputs(2)
    with torch.no_grad():
        full = enc(images, K, A, T, torch.ones(2, 6, dtype=torch.bool))
        mask = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.bool)
        some = enc(images, K, A, T, mask)
        # absent cameras are never read: poisoned images and calibration change nothing
        poisoned = images.clone(), K.clone(), A.clone(), T.clone()
        for t in poisoned:
            t[~mask] = float("nan")
        some_poisoned = enc(*poisoned, mask)
        none = enc(images, K, A, T, torch.zeros(2, 6, dtype=torch.bool))
    for out in (full, some, none):
        assert out.shape == (2, 16, 64, 64) and torch.isfinite(out).all()
    assert full.abs().sum() > 0 and not torch.allclose(full, some)
    assert torch.equal(some, some_poisoned)
    assert not none.any()


def test_sample_without_cameras_is_zero_and_others_unaffected():
    enc = tiny_encoder().eval()
    for m in enc.bev_encoder.modules():  # trained norms have biases: an empty canvas is not zero by itself
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.constant_(m.bias, 0.1)
    images, K, A, T = inputs(2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        both = enc(images, K, A, T, mask)
        alone = enc(images[:1], K[:1], A[:1], T[:1], mask[:1])
    assert not both[1].any()
    assert both[0].abs().sum() > 0
    torch.testing.assert_close(both[0], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("camera_aware", [True, False])
def test_gradients_reach_backbone_and_depth_net(camera_aware):
    enc = tiny_encoder(camera_aware=camera_aware).train()
    images, K, A, T = inputs(2)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :3] = False
    out = enc(images, K, A, T, mask)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * weight).sum().backward()
    D = enc.num_depth
    net = enc.depth_net
    if camera_aware:
        depth_g, context_g = net.depth_out.weight.grad, net.context_out.weight.grad
        # the camera conditioning learns: both gates (depth and context halves) get gradient
        mlp_g = net.mlp[-1].weight.grad
        C = net.context_out.weight.shape[1]
        assert mlp_g[:C].abs().sum() > 0 and mlp_g[C:].abs().sum() > 0, "no gradient into the camera gates"
    else:
        depth_g, context_g = net.out.weight.grad[:D], net.out.weight.grad[D:]
    assert depth_g.abs().sum() > 0, "no gradient into the depth logits"
    assert context_g.abs().sum() > 0, "no gradient into the context"
    assert enc.backbone.conv1.weight.grad.abs().sum() > 0
    assert enc.backbone.layer4[1].conv2.weight.grad.abs().sum() > 0
    assert enc.neck.lateral[0].weight.grad.abs().sum() > 0


def test_deterministic_for_a_seed():
    images, K, A, T = inputs(1)
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        a = tiny_encoder(seed=5).eval()(images, K, A, T, mask)
        b = tiny_encoder(seed=5).eval()(images, K, A, T, mask)
        c = tiny_encoder(seed=6).eval()(images, K, A, T, mask)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_build_from_config():
    cfg = tiny_config()
    enc = build_camera_encoder(cfg).eval()
    assert enc.bev_hw == cfg.bev_shape == (64, 64)
    images, K, A, T = inputs(1)
    images = torch.nn.functional.pad(images, (0, 16))  # 176 -> 192 columns, as the config says
    with torch.no_grad():
        out = enc(images, K, A, T, torch.ones(1, 6, dtype=torch.bool))
    assert out.shape == (1, cfg.model.bev_channels, 64, 64)
    with pytest.raises(ValueError, match="64x192"):
        enc(images[..., :176], K, A, T, torch.ones(1, 6, dtype=torch.bool))


def test_missing_or_unreadable_pretrained_file_is_one_line(tmp_path):
    missing = str(tmp_path / "nowhere.pth")
    with pytest.raises(PretrainedWeightsError, match=r"^model\.camera\.pretrained .*nowhere\.pth: file not found"):
        load_pretrained(resnet18(8), missing)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError, match=r"junk\.pth: not a readable torch state dict") as e:
        load_pretrained(resnet18(8), str(junk))
    assert "\n" not in str(e.value)
