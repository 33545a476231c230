"""Training augmentation moves every modality together: a box projects onto the same network pixels
before and after, points stay inside their boxes, velocities and headings follow, the image matrix
describes where the pixels really go, and the draws depend on (seed, epoch, index) only."""
import math

import numpy as np
import pytest

from perception.config import AugmentConfig, load_config
from perception.data.batch import frame_to_sample, resize_crop_matrix, warp_image
from perception.engine.augment import (apply_global, augment_frame, box_corners, global_transform,
                                       project_to_network_pixels, sample_rng)
from perception.geometry import make_transform
from perception.structures import Boxes3D, CameraImage, Frame, SensorStatus

from conftest import PROJECT

CAMS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_FRONT_RIGHT"]
W0, H0 = 400, 225
STRONG = AugmentConfig(rot_range=[-math.pi, math.pi], scale_range=[0.8, 1.25], flip_prob=0.5,
                       translate_std=[1.0, 1.0, 0.2], image_scale_jitter=[0.8, 1.3], image_crop_jitter=[0.0, 1.0],
                       image_flip_prob=0.5)


def _camera(channel, yaw_deg):
    """A camera 1.5 m up looking along ego azimuth yaw_deg (camera z forward, x right, y down)."""
    # camera axes in a forward-looking ego frame: x_cam = -y_ego, y_cam = -z_ego, z_cam = x_ego
    R0 = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    a = math.radians(yaw_deg)
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = Rz @ R0
    T[:3, 3] = [1.0, 0.0, 1.5]
    K = np.array([[250.0, 0, W0 / 2 + 3.7], [0, 250.0, H0 / 2 - 2.1], [0, 0, 1]])
    return CameraImage(channel, np.zeros((H0, W0, 3), np.uint8), K, T, 0, W0, H0)


def _frame(seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.array([[12.0, 1.5, 0.8, 4.5, 1.9, 1.6, 0.4, 3.0, -1.0],
                      [8.0, 9.0, 0.9, 0.7, 0.6, 1.8, -2.0, 0.5, 0.8],
                      [-15.0, -2.0, 1.0, 10.0, 2.8, 3.2, 3.0, -6.0, 0.0]])
    gt = Boxes3D(boxes, [0, 5, 2], [5, 2, 5], np.ones(3), [50, 10, 80], [2, 1, 3], ["a", "b", "c"], ["", "", ""])
    # LiDAR points inside each box (and some background), radar points on the boxes with their velocity.
    pts = []
    for b in boxes:
        local = (rng.random((200, 3)) - 0.5) * b[3:6] * 0.9
        c, s = math.cos(b[6]), math.sin(b[6])
        world = np.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]], 1) + b[:3]
        pts.append(world)
    pts.append(rng.uniform(-40, 40, (500, 3)))
    xyz = np.concatenate(pts)
    lidar = np.zeros((len(xyz), 6), np.float32)
    lidar[:, :3] = xyz
    lidar[:, 3] = rng.uniform(0, 255, len(xyz))
    radar = np.zeros((3, 7), np.float32)
    radar[:, :3] = boxes[:, :3]
    radar[:, 4:6] = boxes[:, 7:9]
    status = {"LIDAR_TOP": SensorStatus(True, 0), "RADAR_FRONT": SensorStatus(True, 0)}
    status.update({c: SensorStatus(True, 0) for c in CAMS})
    cams = [_camera(c, yaw) for c, yaw in zip(CAMS, (0.0, 60.0, 180.0, -60.0))]
    T_global = make_transform([100.0, 200.0, 0.0], [math.cos(0.3), 0, 0, math.sin(0.3)])
    return Frame(0, "scene", "sample", "lidar", lidar, radar, cams, T_global, np.array([5.0, 0.3, 0.0]), gt, status)


def _match(a, b):
    """max over points of a of the distance to the nearest point of b (and the other way round)."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return max(d.min(1).max(), d.min(0).max())


def _cfg():
    return load_config(f"{PROJECT}/configs/fusion_tiny.yaml", [
        "grid.point_cloud_range=[-51.2, -51.2, -3.0, 51.2, 51.2, 7.0]", f"data.cameras={CAMS}",
        "model.camera.image_size=[128, 320]"])


@pytest.mark.parametrize("seed", range(12))
def test_box_projects_to_the_same_pixels_before_and_after_augmentation(seed):
    cfg = _cfg()
    frame = _frame()
    aug_frame, G, img_aug = augment_frame(frame, sample_rng(seed, 0, 0), STRONG, CAMS, cfg.model.camera.image_size)
    assert not np.allclose(G, np.eye(4))
    before_c = box_corners(frame.gt.boxes)
    after_c = box_corners(aug_frame.gt.boxes)
    checked = 0
    for i, (cb, ca) in enumerate(zip(frame.cameras, aug_frame.cameras)):
        for k in range(len(frame.gt)):
            pb = project_to_network_pixels(before_c[k], cb.intrinsics, cb.T_ego_from_cam, img_aug[i])
            pa = project_to_network_pixels(after_c[k], ca.intrinsics, ca.T_ego_from_cam, img_aug[i])
            if (pb[:, 2] <= 0.5).any():
                continue  # behind this camera
            # same set of 8 corners (a mirrored box lists its corners in another order)
            assert _match(pb[:, :2], pa[:, :2]) < 1e-6
            np.testing.assert_allclose(np.sort(pb[:, 2]), np.sort(pa[:, 2]), atol=1e-9)
            checked += 1
        # LiDAR points too (float32 storage: a small tolerance)
        lp_b = project_to_network_pixels(frame.lidar_points[:, :3], cb.intrinsics, cb.T_ego_from_cam, img_aug[i])
        lp_a = project_to_network_pixels(aug_frame.lidar_points[:, :3], ca.intrinsics, ca.T_ego_from_cam, img_aug[i])
        front = lp_b[:, 2] > 1.0
        np.testing.assert_allclose(lp_a[front, :2], lp_b[front, :2], atol=2e-2)
    assert checked >= 3

    # The same through the model input (float32 tensors of the Sample): box corners of the sample's
    # ground truth land on the pixels of the un-augmented frame.
    s0 = frame_to_sample(frame, cfg, image_aug=img_aug)
    s1 = frame_to_sample(aug_frame, cfg, image_aug=img_aug)
    assert len(s0.gt_boxes) == len(s1.gt_boxes) >= 1
    seen = 0
    for i in range(len(CAMS)):
        for k in range(len(s1.gt_boxes)):
            c1 = box_corners(s1.gt_boxes[k:k + 1].double().numpy())[0]
            j = int(np.argmin(np.linalg.norm(frame.gt.boxes[:, :2] - (np.linalg.inv(G) @ np.r_[s1.gt_boxes[k, :3].double().numpy(), 1])[:2], axis=1)))
            c0 = box_corners(frame.gt.boxes[j:j + 1])[0]
            p1 = project_to_network_pixels(c1, s1.intrinsics[i].double().numpy(), s1.T_ego_from_cam[i].double().numpy(),
                                           s1.img_aug[i].double().numpy())
            p0 = project_to_network_pixels(c0, s0.intrinsics[i].double().numpy(), s0.T_ego_from_cam[i].double().numpy(),
                                           s0.img_aug[i].double().numpy())
            if (p0[:, 2] > 0.5).all():
                assert _match(p0[:, :2], p1[:, :2]) < 0.05
                seen += 1
    assert seen >= 1


def test_points_stay_in_their_boxes_and_velocities_headings_follow():
    frame = _frame()
    for G in (global_transform(0.7, 1.1, flip_y=True, translation=(0.5, -1.0, 0.1)),
              global_transform(-2.0, 0.9, flip_x=True), global_transform(0.3, 1.0, flip_x=True, flip_y=True)):
        out = apply_global(frame, G)
        A = G[:3, :3]
        scale = np.cbrt(abs(np.linalg.det(A)))
        for b0, b1 in zip(frame.gt.boxes, out.gt.boxes):
            # centre and the front-face centre map through G: the heading follows the world
            front0 = b0[:3] + 0.5 * b0[3] * np.array([math.cos(b0[6]), math.sin(b0[6]), 0])
            front1 = b1[:3] + 0.5 * b1[3] * np.array([math.cos(b1[6]), math.sin(b1[6]), 0])
            np.testing.assert_allclose(b1[:3], A @ b0[:3] + G[:3, 3], atol=1e-9)
            np.testing.assert_allclose(front1, A @ front0 + G[:3, 3], atol=1e-9)
            np.testing.assert_allclose(b1[3:6], b0[3:6] * scale, atol=1e-12)
            np.testing.assert_allclose(b1[7:9], (A @ np.r_[b0[7:9], 0])[:2], atol=1e-9)
            assert -math.pi <= b1[6] < math.pi

        def inside(points, boxes):
            p = points[:, None, :3] - boxes[None, :, :3]
            c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
            lx = p[..., 0] * c + p[..., 1] * s
            ly = -p[..., 0] * s + p[..., 1] * c
            return ((np.abs(lx) <= boxes[:, 3] / 2 + 1e-4) & (np.abs(ly) <= boxes[:, 4] / 2 + 1e-4)
                    & (np.abs(p[..., 2]) <= boxes[:, 5] / 2 + 1e-4))

        np.testing.assert_array_equal(inside(frame.lidar_points, frame.gt.boxes), inside(out.lidar_points, out.gt.boxes))
        assert inside(out.lidar_points, out.gt.boxes).sum(0).min() >= 200
        # radar points carry their box's velocity: still equal after the transform
        np.testing.assert_allclose(out.radar_points[:, 4:6], out.gt.boxes[:, 7:9], atol=1e-5)
        np.testing.assert_allclose(out.radar_points[:, :3], out.gt.boxes[:, :3], atol=1e-5)
        np.testing.assert_allclose(out.ego_velocity, A @ frame.ego_velocity, atol=1e-12)
        # the global position of everything is unchanged: export through T_global_from_ego stays right
        np.testing.assert_allclose(out.T_global_from_ego @ np.r_[out.gt.boxes[0, :3], 1],
                                   frame.T_global_from_ego @ np.r_[frame.gt.boxes[0, :3], 1], atol=1e-9)
    # the input frame is untouched
    np.testing.assert_array_equal(frame.gt.boxes, _frame().gt.boxes)
    np.testing.assert_array_equal(frame.lidar_points, _frame().lidar_points)


def test_augmentation_draws_depend_on_seed_epoch_index_only():
    frame = _frame()
    a = augment_frame(frame, sample_rng(3, 1, 5), STRONG, CAMS, (128, 320))
    b = augment_frame(frame, sample_rng(3, 1, 5), STRONG, CAMS, (128, 320))
    c = augment_frame(frame, sample_rng(3, 2, 5), STRONG, CAMS, (128, 320))
    d = augment_frame(frame, sample_rng(3, 1, 6), STRONG, CAMS, (128, 320))
    np.testing.assert_array_equal(a[1], b[1])
    for x, y in zip(a[2], b[2]):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[1], c[1]) and not np.allclose(a[1], d[1])
    # disabled ranges give the identity
    ident = AugmentConfig(rot_range=[0.0, 0.0], scale_range=[1.0, 1.0], flip_prob=0.0, image_scale_jitter=[1.0, 1.0],
                          image_crop_jitter=[0.0, 0.0], image_flip_prob=0.0)
    _, G, img_aug = augment_frame(frame, sample_rng(0, 0, 0), ident, CAMS, (128, 320))
    np.testing.assert_array_equal(G, np.eye(4))
    np.testing.assert_allclose(img_aug[0], resize_crop_matrix(W0, H0, (128, 320)))


@pytest.mark.parametrize("flip,scale,crop", [(False, 1.0, 0.0), (True, 1.0, 0.0), (False, 1.25, 0.7), (True, 0.9, 1.0)])
def test_image_matrix_says_where_the_pixels_go(flip, scale, crop):
    """A bright block of the original image appears where img_aug maps its centre (resize, crop, flip)."""
    img = np.zeros((H0, W0, 3), np.uint8)
    u0, v0 = 260, 150
    img[v0 - 8:v0 + 8, u0 - 8:u0 + 8] = 255  # block centre at (u0, v0) in continuous pixel coordinates
    A = resize_crop_matrix(W0, H0, (128, 320), flip=flip, scale_jitter=scale, crop_jitter=crop)
    out = warp_image(img, A, (128, 320))[0]
    ys, xs = np.nonzero(out > 0.5)
    assert len(xs) > 20
    measured = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    predicted = (A @ [u0, v0, 1.0])[:2]
    # within a pixel: the image data layer resamples with OpenCV, whose pixel centres sit at integers
    assert np.abs(measured - predicted).max() <= 1.01, (measured, predicted)


MIRROR = AugmentConfig(rot_range=[-math.pi, math.pi], scale_range=[0.8, 1.25], flip_prob=0.5,
                       translate_std=[1.0, 1.0, 0.2], image_scale_jitter=[0.8, 1.3], image_crop_jitter=[0.0, 1.0],
                       image_flip_prob=0.0, image_flip_with_mirror=True)


def _box_axes_handedness(frame, img_aug):
    """Per (box, camera): the sign of det[front, left, up] of each GT box's axes as the network's image
    shows them: in the camera frame, with the camera x axis negated when the image is flipped. +1: the
    camera shows the car as a real camera would; -1: it shows the car's mirror image."""
    signs = []
    for cam, A in zip(frame.cameras, img_aug):
        R = cam.T_ego_from_cam[:3, :3]
        flip = np.diag([-1.0 if A[0, 0] < 0 else 1.0, 1.0, 1.0])
        for yaw in frame.gt.boxes[:, 6]:
            axes = np.array([[math.cos(yaw), math.sin(yaw), 0.0], [-math.sin(yaw), math.cos(yaw), 0.0],
                             [0.0, 0.0, 1.0]]).T  # columns: front, left, up in the (augmented) ego frame
            signs.append(np.sign(np.linalg.det(flip @ np.linalg.solve(R, axes))))
    return np.array(signs)


def test_mirror_mode_flips_every_image_exactly_when_the_world_is_mirrored():
    frame = _frame()
    mirrored_seen = plain_seen = 0
    for seed in range(40):
        aug_frame, G, img_aug = augment_frame(frame, sample_rng(seed, 0, 0), MIRROR, CAMS, (128, 320))
        mirrored = np.linalg.det(G[:3, :3]) < 0
        assert [bool(A[0, 0] < 0) for A in img_aug] == [bool(mirrored)] * len(CAMS)
        mirrored_seen += mirrored
        plain_seen += not mirrored
        # every camera shows every car as a real camera would (never its mirror image)
        assert (_box_axes_handedness(aug_frame, img_aug) > 0).all()
    assert mirrored_seen >= 5 and plain_seen >= 5
    # un-augmented: the rig's cameras are real cameras (the check's baseline)
    assert (_box_axes_handedness(frame, [resize_crop_matrix(W0, H0, (128, 320))] * len(CAMS)) > 0).all()


def test_independent_flips_show_mirror_image_cars():
    """The previous recipe (per-camera flips, labels untouched) shows cars mirrored in about half of the
    (sample, camera) pairs: why a camera trained with it cannot learn a heading from a car's look."""
    frame = _frame()
    signs = []
    for seed in range(40):
        aug_frame, _, img_aug = augment_frame(frame, sample_rng(seed, 0, 0), STRONG, CAMS, (128, 320))
        signs.append(_box_axes_handedness(aug_frame, img_aug))
    signs = np.concatenate(signs)
    assert 0.3 < (signs < 0).mean() < 0.7


def test_mirror_mode_keeps_the_other_draws():
    """The flip mode changes the flips only: G, scale and crop draws stay those of the same seed."""
    frame = _frame()
    for seed in range(6):
        _, G0, a0 = augment_frame(frame, sample_rng(seed, 0, 0), STRONG, CAMS, (128, 320))
        _, G1, a1 = augment_frame(frame, sample_rng(seed, 0, 0), MIRROR, CAMS, (128, 320))
        np.testing.assert_array_equal(G0, G1)
        for x, y in zip(a0, a1):
            np.testing.assert_allclose(np.abs(x[:, 0]).sum(), np.abs(y[:, 0]).sum())  # same scale
            np.testing.assert_allclose(x[1], y[1])  # same vertical resize and crop
