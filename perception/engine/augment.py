"""Training augmentation, consistent across every modality.

Global augmentation is one 4 x 4 transform ``G`` per sample (rotation about the ego z axis, mirror
flips y -> -y and/or x -> -x, uniform scale, translation) that maps the ego frame to an augmented
ego frame. Everything expressed in the ego frame moves with it:

- LiDAR and radar points: ``p' = G p``;
- velocities (radar points, boxes, the ego velocity): ``v' = A v`` with ``A = G[:3, :3]``, so they
  rotate, mirror and scale with the world (a world scaled by s in the same time moves s times as
  fast; the head regresses velocities in the augmented frame, like mmdetection3d's GlobalRotScaleTrans);
- boxes: centre ``G c``, size times the scale, yaw the azimuth of the transformed heading;
- cameras: ``T_ego_from_cam' = G @ T_ego_from_cam``. The camera encoder lifts pixels with that
  transform, so the images are not touched by the global augmentation: a pixel still sees the same
  object, which is now at its augmented position. ``T_global_from_ego' = T_global_from_ego @ G^-1``
  keeps the export to the global frame right.

Image augmentation is separate and per camera: the matrix ``img_aug`` (original pixel -> network
pixel: resize with a scale jitter, vertical crop jitter, horizontal flip) replaces the plain resize
(``perception.data.batch.resize_crop_matrix``); the lift undoes it, so it changes what the network
sees, never where a pixel's ray goes.

Mirrors and images: when G mirrors the world (det G < 0) the camera transform ``G @ T_ego_from_cam``
is left-handed, and an unflipped image under it shows each car as it was while its box's heading is
mirrored: the cameras learn that a car's look says nothing about its heading. A mirrored camera
whose image is also flipped horizontally is a real right-handed camera looking at the mirrored
scene (``A R_cam diag(-1, 1, 1)`` is a rotation), so with ``image_flip_with_mirror`` every image is
flipped exactly when G mirrors, and appearance and heading agree in every sample.

Randomness: every draw comes from ``sample_rng(seed, epoch, index)``, so a sample's augmentation
does not depend on the loader's worker count or order and is the same after a resume.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Sequence

import numpy as np

from ..config import AugmentConfig
from ..structures import Boxes3D, CameraImage, Frame, wrap_angle


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0, copy: int = 0) -> np.random.Generator:
    """The generator of one sample's augmentation (independent of workers and resumes).

    copy: the repetition of the sample within the epoch (class-balanced sampling repeats samples);
    copy 0 is the generator of the plain order, unchanged."""
    key = [int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)]
    return np.random.default_rng(key + [int(copy)] if copy else key)


def global_transform(rot: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False,
                     translation: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """float64[4, 4] G = Translate @ Scale @ Flip @ Rz(rot): ego -> augmented ego.

    flip_y mirrors y -> -y (left-right), flip_x mirrors x -> -x (front-back).
    """
    c, s = math.cos(rot), math.sin(rot)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    F = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    G = np.eye(4)
    G[:3, :3] = scale * F @ R
    G[:3, 3] = translation
    return G


def draw_global_transform(rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """A random G from the config's ranges (fixed order of draws: rotation, scale, flips, translation)."""
    rot = rng.uniform(*aug.rot_range)
    scale = rng.uniform(*aug.scale_range)
    flip_y = bool(rng.random() < aug.flip_prob)
    flip_x = bool(rng.random() < aug.flip_prob)
    translation = rng.normal(0.0, 1.0, 3) * np.asarray(aug.translate_std, np.float64)
    return global_transform(rot, scale, flip_x, flip_y, translation)


def transform_boxes(boxes: Boxes3D, G: np.ndarray) -> Boxes3D:
    """Boxes under a similarity transform G (rotation about z, mirror flips, uniform scale, translation).

    Centre ``G c``; sizes times the scale; yaw the azimuth of ``A (cos, sin, 0)`` (a box is symmetric,
    so its mirror image is the box of the mirrored heading); velocity ``A (vx, vy, 0)``.
    """
    A = G[:3, :3]
    scale = float(np.cbrt(abs(np.linalg.det(A))))
    b = boxes.boxes
    out = b.copy()
    out[:, :3] = b[:, :3] @ A.T + G[:3, 3]
    out[:, 3:6] = b[:, 3:6] * scale
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1) @ A.T
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    vel = np.concatenate([b[:, 7:9], np.zeros((len(b), 1))], axis=1) @ A.T
    out[:, 7:9] = vel[:, :2]
    return dataclasses.replace(boxes, boxes=out, tokens=list(boxes.tokens),
                               instance_tokens=list(boxes.instance_tokens))


def apply_global(frame: Frame, G: np.ndarray) -> Frame:
    """The frame with every ego-frame quantity moved by G (see module doc); the input is not changed."""
    A = G[:3, :3]
    t = G[:3, 3]
    lidar = frame.lidar_points.copy()
    if len(lidar):
        lidar[:, :3] = (lidar[:, :3].astype(np.float64) @ A.T + t).astype(np.float32)
    radar = frame.radar_points.copy()
    if len(radar):
        radar[:, :3] = (radar[:, :3].astype(np.float64) @ A.T + t).astype(np.float32)
        vel = np.concatenate([radar[:, 4:6].astype(np.float64), np.zeros((len(radar), 1))], axis=1) @ A.T
        radar[:, 4:6] = vel[:, :2].astype(np.float32)
    cameras = [dataclasses.replace(c, T_ego_from_cam=G @ c.T_ego_from_cam) for c in frame.cameras]
    gt = transform_boxes(frame.gt, G) if frame.gt is not None else None
    return dataclasses.replace(frame, lidar_points=lidar, radar_points=radar, cameras=cameras, gt=gt,
                               T_global_from_ego=frame.T_global_from_ego @ np.linalg.inv(G),
                               ego_velocity=A @ np.asarray(frame.ego_velocity, np.float64),
                               status=dict(frame.status))


def draw_image_aug(rng: np.random.Generator, cameras: Sequence[str], frame: Frame, image_size: Sequence[int],
                   aug: AugmentConfig, mirrored: bool = False) -> List[np.ndarray]:
    """Per configured camera (``cameras`` order) the original -> network pixel matrix float64[3, 3].

    mirrored: whether the sample's global transform mirrors the world (det G < 0); with
    ``aug.image_flip_with_mirror`` it alone decides every image's horizontal flip.
    Draws are made for every configured camera, present or not, and whatever decides the flip, so
    one camera's absence or the flip mode does not shift the other draws.
    """
    from ..data.batch import resize_crop_matrix

    by_channel = {c.channel: c for c in frame.cameras}
    out = []
    for ch in cameras:
        scale = rng.uniform(*aug.image_scale_jitter)
        crop = rng.uniform(*aug.image_crop_jitter)
        drawn = bool(rng.random() < aug.image_flip_prob)  # drawn in either mode: the stream stays the same
        flip = mirrored if aug.image_flip_with_mirror else drawn
        cam = by_channel.get(ch)
        if cam is None:
            out.append(np.eye(3))
            continue
        out.append(resize_crop_matrix(cam.width, cam.height, image_size, flip=flip, scale_jitter=scale,
                                      crop_jitter=crop))
    return out


def augment_frame(frame: Frame, rng: np.random.Generator, aug: AugmentConfig, cameras: Sequence[str],
                  image_size: Sequence[int]):
    """(augmented frame, G float64[4, 4], per-camera img_aug list) for one training sample."""
    G = draw_global_transform(rng, aug)
    img_aug = draw_image_aug(rng, cameras, frame, image_size, aug, mirrored=bool(np.linalg.det(G[:3, :3]) < 0))
    return apply_global(frame, G), G, img_aug


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """float64[N, 8, 3] corners of boxes float[N, >= 7] (x, y, z, l, w, h, yaw), same frame."""
    b = np.asarray(boxes, np.float64)
    sx = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    local = np.stack([sx[None] * b[:, 3:4], sy[None] * b[:, 4:5], sz[None] * b[:, 5:6]], axis=-1)  # [N, 8, 3]
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]


def project_to_network_pixels(points_ego: np.ndarray, K: np.ndarray, T_ego_from_cam: np.ndarray,
                              img_aug: np.ndarray) -> np.ndarray:
    """float64[N, 3] (u, v, depth) network-input pixels of ego points float[N, 3] through one camera."""
    T_cam_from_ego = np.linalg.inv(T_ego_from_cam)
    p = np.asarray(points_ego, np.float64) @ T_cam_from_ego[:3, :3].T + T_cam_from_ego[:3, 3]
    uvw = p @ (img_aug @ K).T
    return np.stack([uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2], p[:, 2]], axis=1)
