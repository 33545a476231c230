"""Frame -> model input: image resize/crop with its augmentation matrix, ground-truth filtering, and
collation of samples into the typed ``Batch``.

Images: resized so the width fits the network input, then cropped from the top (sky carries little),
as BEVFusion does; ``img_aug`` records the mapping original pixel -> network pixel so the lift step
can undo it. Ground truth: boxes inside the BEV range that hold at least one LiDAR or radar point
(``gt_filter.used_gt_mask``: nuScenes' evaluation drops the others, so training on them teaches the
model to hallucinate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..config import Config
from ..ops.center_targets import HeadTargets
from ..ops.depth_targets import depth_target_maps
from ..structures import IMAGE_MEAN, IMAGE_STD, Batch, Frame
from .gt_filter import used_gt_mask


@dataclass
class Sample:
    """One frame as tensors (see Batch for the layouts; no batch dimension here)."""

    lidar_points: torch.Tensor
    radar_points: torch.Tensor
    images: torch.Tensor
    intrinsics: torch.Tensor
    img_aug: torch.Tensor
    T_ego_from_cam: torch.Tensor
    camera_mask: torch.Tensor
    modality_mask: torch.Tensor
    ego_velocity: torch.Tensor
    gt_boxes: Optional[torch.Tensor]
    gt_labels: Optional[torch.Tensor]
    gt_attributes: Optional[torch.Tensor]
    sample_token: str
    timestamp: int
    T_global_from_ego: np.ndarray
    # FileProblems of the files this sample could not read (training carries it from the loader
    # workers to the trainer's run summary); None when not recorded
    problems: Optional[object] = None
    # float32[N, fH, fW] nearest LiDAR depth per camera feature cell (0 = none); None without cameras
    depth_targets: Optional[torch.Tensor] = None
    # the head's training targets of this sample (ops.center_targets.HeadTargets, B = 1), built by
    # the training dataset after augmentation; None elsewhere (evaluation, inference)
    targets: Optional[HeadTargets] = None


def resize_crop_matrix(width: int, height: int, out_hw: Sequence[int], flip: bool = False,
                       scale_jitter: float = 1.0, crop_jitter: float = 0.0) -> np.ndarray:
    """float64[3, 3]: original pixel (u, v, 1) -> network pixel, for an image of width x height.

    The image is scaled so its width matches out_hw[1] (times scale_jitter), cropped to out_hw from
    the bottom up (crop_jitter in [0, 1] moves the crop up into the remaining margin), and optionally
    flipped horizontally.
    """
    H, W = out_hw
    s = W / width * scale_jitter
    new_w, new_h = width * s, height * s
    left = max(0.0, (new_w - W) / 2.0)
    margin = max(0.0, new_h - H)
    top = margin * (1.0 - crop_jitter)
    A = np.array([[s, 0.0, -left], [0.0, s, -top], [0.0, 0.0, 1.0]])
    if flip:
        A = np.array([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ A
    return A


def warp_image(image: np.ndarray, A: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """uint8[H0, W0, 3] -> float32[3, H, W] in [0, 1], resampled through the affine A (original -> output)."""
    import cv2

    H, W = out_hw
    # A works on continuous coordinates (pixel i spans [i, i + 1), centre i + 0.5); OpenCV puts
    # pixel centres on integers: conjugate by the half-pixel shift so a flip lands on the same pixels
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    A_cv = np.linalg.inv(half) @ A @ half
    out = cv2.warpAffine(image, A_cv[:2].astype(np.float64), (W, H), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(np.float32).transpose(2, 0, 1) / 255.0


def frame_to_sample(frame: Frame, cfg: Config, image_aug: Optional[Sequence[np.ndarray]] = None,
                    cache: Optional[dict] = None) -> Sample:
    """frame -> Sample. image_aug: per camera original->network matrices (training augmentation);
    None uses the plain resize/crop.

    cache: a dict shared by the calls for variants of one frame with sensors masked
    (``perception.sync.synchronizer.mask_frame``, the robustness evaluation): each camera's warped
    image and each (LiDAR present, camera mask) depth map is computed once and reused, the same
    values as computed afresh. Only with ``image_aug`` None and frames that share their images and
    points."""
    if cache is not None and image_aug is not None:
        raise ValueError("frame_to_sample: cache goes with the plain resize/crop (image_aug None)")
    Hn, Wn = cfg.model.camera.image_size
    cams = {c.channel: c for c in frame.cameras}
    N = len(cfg.data.cameras)
    images = np.zeros((N, 3, Hn, Wn), np.float32)
    K = np.tile(np.eye(3), (N, 1, 1))
    aug = np.tile(np.eye(3), (N, 1, 1))
    T = np.tile(np.eye(4), (N, 1, 1))
    cmask = np.zeros(N, bool)
    mean = np.array(IMAGE_MEAN, np.float32).reshape(3, 1, 1)
    std = np.array(IMAGE_STD, np.float32).reshape(3, 1, 1)
    for i, ch in enumerate(cfg.data.cameras):
        cam = cams.get(ch)
        if cam is None:
            continue
        K[i], T[i] = cam.intrinsics, cam.T_ego_from_cam
        aug[i] = image_aug[i] if image_aug is not None else resize_crop_matrix(cam.width, cam.height, (Hn, Wn))
        if cam.present and cam.image is not None:
            key = ("image", ch)
            if cache is not None and key in cache:
                images[i] = cache[key]
            else:
                images[i] = (warp_image(cam.image, aug[i], (Hn, Wn)) - mean) / std
                if cache is not None:
                    cache[key] = images[i].copy()
            cmask[i] = True
    lidar_ok = frame.status.get("LIDAR_TOP") is not None and frame.status["LIDAR_TOP"].present
    depth = None
    if cfg.model.use_camera:
        # Training signal (and eval metric) only: built from the reference sweep (time lag 0, no
        # motion-compensation smear of moving objects) with the very K, T and img_aug of the lift.
        key = ("depth", lidar_ok, cmask.tobytes())
        if cache is not None and key in cache:
            depth = cache[key]
        else:
            ref = frame.lidar_points[frame.lidar_points[:, 5] == 0] if lidar_ok else frame.lidar_points[:0]
            depth = torch.from_numpy(depth_target_maps(ref, K, T, aug, cmask, (Hn, Wn),
                                                       cfg.model.camera.feature_stride))
            if cache is not None:
                cache[key] = depth
    lidar_points = frame.lidar_points
    if not cfg.model.use_lidar:
        # loaded for the depth targets only: the model without a LiDAR encoder never sees them
        lidar_points, lidar_ok = lidar_points[:0], False
    modality = np.array([lidar_ok, bool(cmask.any()), frame.present("radar")])

    gt_boxes = gt_labels = gt_attrs = None
    if frame.gt is not None:
        g = frame.gt.select(used_gt_mask(frame.gt, cfg.grid.point_cloud_range))
        gt_boxes = torch.from_numpy(g.boxes.astype(np.float32))
        gt_labels = torch.from_numpy(g.labels)
        gt_attrs = torch.from_numpy(g.attributes)
    return Sample(torch.from_numpy(lidar_points), torch.from_numpy(frame.radar_points),
                  torch.from_numpy(images), torch.from_numpy(K.astype(np.float32)),
                  torch.from_numpy(aug.astype(np.float32)), torch.from_numpy(T.astype(np.float32)),
                  torch.from_numpy(cmask), torch.from_numpy(modality),
                  torch.from_numpy(frame.ego_velocity.astype(np.float32)), gt_boxes, gt_labels, gt_attrs,
                  frame.sample_token, frame.timestamp, frame.T_global_from_ego, depth_targets=depth)


def collate(samples: List[Sample]) -> Batch:
    """Stack samples into a Batch (point clouds stay per-sample lists)."""
    has_gt = all(s.gt_boxes is not None for s in samples)
    has_depth = all(s.depth_targets is not None for s in samples)
    return Batch(
        lidar_points=[s.lidar_points for s in samples], radar_points=[s.radar_points for s in samples],
        images=torch.stack([s.images for s in samples]), intrinsics=torch.stack([s.intrinsics for s in samples]),
        img_aug=torch.stack([s.img_aug for s in samples]),
        T_ego_from_cam=torch.stack([s.T_ego_from_cam for s in samples]),
        camera_mask=torch.stack([s.camera_mask for s in samples]),
        modality_mask=torch.stack([s.modality_mask for s in samples]),
        ego_velocity=torch.stack([s.ego_velocity for s in samples]),
        gt_boxes=[s.gt_boxes for s in samples] if has_gt else None,
        gt_labels=[s.gt_labels for s in samples] if has_gt else None,
        gt_attributes=[s.gt_attributes for s in samples] if has_gt else None,
        sample_tokens=[s.sample_token for s in samples], timestamps=[s.timestamp for s in samples],
        T_global_from_ego=np.stack([s.T_global_from_ego for s in samples]),
        depth_targets=torch.stack([s.depth_targets for s in samples]) if has_depth else None,
        targets=HeadTargets.cat([s.targets for s in samples]) if all(s.targets is not None for s in samples)
        else None)
