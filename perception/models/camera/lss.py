"""Lift-splat camera encoder: images -> ResNet + FPN -> per-pixel depth distribution and context ->
frustum points in the ego frame -> BEV pooling (the numba op) -> BEV encoder.

Philion & Fidler, "Lift, Splat, Shoot", ECCV 2020; the depth/context head and the outer product
follow BEVFusion's ``LSSTransform`` (Liu et al., 2022).

Pixel convention: continuous image coordinates with the image's top-left corner at (0, 0), so
pixel (col i, row j) covers [i, i + 1) x [j, j + 1) and its centre is (i + 0.5, j + 0.5). Under it
a resize by r is exactly u' = r * u and a horizontal flip of a W-wide image is u' = W - u; the
data layer's ``img_aug`` matrices must use the same convention. A feature cell (col j, row i) at
stride s covers input pixels [j s, (j + 1) s) and is lifted at its centre ((j + 0.5) s, (i + 0.5) s).

Depth bins (min, max, step): ``round((max - min) / step)`` bins, bin k lifted at its centre
``min + (k + 0.5) * step`` metres along the optical axis (camera z, not ray length).

Norms: BatchNorm2d inside the ResNet (torchvision's keys and ImageNet statistics) and, through
``models.common.conv_norm_act``, in the FPN and the BEV encoder: at inference BatchNorm is a
per-channel affine map, so a failed camera changes the BEV only where that camera looked (GroupNorm's
whole-map statistics would spread the change everywhere). Under DDP the engine converts it to
SyncBatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.bev_pool import bev_pool, bev_pool_geometry
from ..common import conv_norm_act, eager_inference
from .resnet import BACKBONES, ResNet, load_pretrained


class FPN(nn.Module):
    """Top-down FPN from the ResNet stages down to one map at ``out_stride`` (8 or 16).

    in_channels: channels of (C3, C4, C5) at strides (8, 16, 32)
    out_channels: channels of the output map
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, out_stride: int):
        super().__init__()
        if out_stride not in (8, 16):
            raise ValueError(f"feature_stride must be 8 or 16, got {out_stride}")
        # Only the stages at or below the output resolution take part: finer stages would need
        # downsampling and add cost for the (coarse) lifted features.
        self.first = 0 if out_stride == 8 else 1
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in list(in_channels)[self.first:])
        self.output = conv_norm_act(out_channels, out_channels, 3)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        """c3, c4, c5: float[M, Ci, H / s, W / s] -> float[M, out_channels, H / out_stride, W / out_stride]."""
        feats = [c3, c4, c5][self.first:]
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        return self.output(x)


# Per-image camera parameters the depth net is conditioned on (``camera_params``), with the scale
# that brings each near 1 so the MLP needs no input normalization statistics.
CAMERA_PARAM_NAMES = ("fx / W", "fy / W", "cx / W", "cy / H", "optical axis z", "image down z", "height / 2 m")
NUM_CAMERA_PARAMS = len(CAMERA_PARAM_NAMES)


def camera_params(intrinsics: torch.Tensor, img_aug: torch.Tensor, T_ego_from_cam: torch.Tensor,
                  image_hw: Sequence[int]) -> torch.Tensor:
    """float32[M, 7] what the depth of a pixel depends on besides its content (CAMERA_PARAM_NAMES).

    intrinsics, img_aug: float[M, 3, 3]; T_ego_from_cam: float[M, 4, 4] (the lift's inputs)
    The network-input pinhole ``img_aug @ K`` carries focal length and principal point after resize,
    crop and flip (a flip negates fx); the camera's pitch, roll and height come from the z components
    of its optical axis and image-down axis and its z in the ego frame. Azimuth is left out on purpose:
    it does not change depth, and the global augmentation rotates it freely.
    """
    H, W = (float(x) for x in image_hw)
    P = img_aug.float() @ intrinsics.float()
    R = T_ego_from_cam[:, :3, :3].float()
    return torch.stack([P[:, 0, 0] / W, P[:, 1, 1] / W, P[:, 0, 2] / W, P[:, 1, 2] / H,
                        R[:, 2, 2], R[:, 2, 1], T_ego_from_cam[:, 2, 3].float() / 2.0], dim=1)


class CameraAwareDepthNet(nn.Module):
    """Depth logits and context from image features, conditioned on the camera (BEVDepth's DepthNet,
    Li et al. 2022, in a smaller form): an MLP of ``camera_params`` gives per-channel gates
    (squeeze-excitation) for a depth branch and a context branch, so one network serves cameras of
    different focal lengths, crops and mounting heights. Without ``camera_aware`` the gates are off
    and it is the plain 1x1 depth/context conv of BEVFusion's LSSTransform.

    in_channels: channels of the FPN map; num_depth: D bins; context_channels: C

    Camera-aware, the depth branch also sees the geometry of each cell's ray (``ray_geometry``: its
    normalized image-plane coordinates and its elevation in the ego frame) as extra input channels:
    the depth of the road under a pixel is the camera height over the tangent of the ray's depression,
    which a convolution cannot read off the image content.
    """

    def __init__(self, in_channels: int, num_depth: int, context_channels: int, camera_aware: bool = True):
        super().__init__()
        self.camera_aware = bool(camera_aware)
        self.num_depth = int(num_depth)
        if self.camera_aware:
            hidden = max(16, in_channels)
            self.mlp = nn.Sequential(nn.Linear(NUM_CAMERA_PARAMS, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, 2 * in_channels))
            # A 3x3 layer before the depth logits: depth needs some spatial context (object size in
            # pixels), which the 1x1 projection alone does not see.
            self.depth_conv = conv_norm_act(in_channels + NUM_RAY_CHANNELS, in_channels, 3)
            self.depth_out = nn.Conv2d(in_channels, self.num_depth, 1)
            self.context_out = nn.Conv2d(in_channels, context_channels, 1)
        else:
            # One 1x1 conv predicts the depth logits and the context, as BEVFusion's LSSTransform.
            self.out = nn.Conv2d(in_channels, self.num_depth + context_channels, 1)

    def _mlp(self, params: torch.Tensor) -> torch.Tensor:
        """The MLP row by row as broadcast products and sums: a matmul's kernel (and so its rounding)
        depends on M, and a failed camera must not change the other images' features by one bit."""
        h = params
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                h = (h.unsqueeze(-1) * layer.weight.t()).sum(dim=1) + layer.bias
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, params: torch.Tensor,
                rays: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: float[M, Cin, fH, fW] image features; params: float[M, 7] (camera_params); rays:
        float[M, 3, fH, fW] (ray_geometry; needed when camera-aware) ->
        (depth logits float[M, D, fH, fW], context float[M, C, fH, fW])."""
        if not self.camera_aware:
            y = self.out(x)
            return y[:, :self.num_depth], y[:, self.num_depth:]
        M, C = x.shape[:2]
        gates = torch.sigmoid(self._mlp(params.to(x.dtype))).view(M, 2, C, 1, 1)
        depth = self.depth_out(self.depth_conv(torch.cat([x * gates[:, 0], rays.to(x.dtype)], dim=1)))
        return depth, self.context_out(x * gates[:, 1])


NUM_RAY_CHANNELS = 3


def ray_geometry(rays_cam: torch.Tensor, R_ego_from_cam: torch.Tensor, feature_hw: Sequence[int]) -> torch.Tensor:
    """float32[M, 3, fH, fW] per feature cell: the normalized image-plane coordinates (x / z, y / z) of
    its ray in the camera frame and the ray's elevation (sine, ego up component of the unit ray).

    rays_cam: float[M, fH * fW, 3] rays at camera depth 1, camera frame; R_ego_from_cam: float[M, 3, 3]
    """
    M = rays_cam.shape[0]
    fH, fW = feature_hw
    up = (rays_cam @ R_ego_from_cam.transpose(1, 2))[..., 2] / rays_cam.norm(dim=-1)
    g = torch.stack([rays_cam[..., 0], rays_cam[..., 1], up], dim=1)  # [M, 3, fH * fW]
    return g.float().view(M, NUM_RAY_CHANNELS, fH, fW)


@dataclass
class CameraDepth:
    """The depth distributions the encoder lifted with, for the depth loss and depth metrics.

    logits: float[M, D, fH, fW] depth logits of the M present images (softmax over D = the lift's weights)
    batch_index, camera_index: int64[M] sample and camera slot of each image (``camera_mask`` order)
    """

    logits: torch.Tensor
    batch_index: torch.Tensor
    camera_index: torch.Tensor


class LiftSplatEncoder(nn.Module):
    """Camera images -> BEV features on the fused grid.

    backbone: ResNet returning [C2, C3, C4, C5]
    neck_channels: FPN output channels (the depth net's input)
    depth_bins: (min, max, step) metres of the depth distribution, along the optical axis
    context_channels: C, features per lifted point (the BEV pooling's channels)
    feature_stride: 8 or 16, stride of the lifted image features w.r.t. the network input
    image_size: (H, W) network input size, pixels (multiples of feature_stride)
    point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max), ego frame, metres
    voxel_size: (dx, dy, dz) metres of the base grid; a BEV cell is (dx, dy) * bev_stride
    bev_stride: the output grid is the base grid's BEV shape / bev_stride
    out_channels: channels of the output BEV map
    camera_aware: condition the depth net on each camera's intrinsics, augmentation and mounting
    """

    def __init__(self, backbone: ResNet, neck_channels: int, depth_bins: Sequence[float], context_channels: int,
                 feature_stride: int, image_size: Sequence[int], point_cloud_range: Sequence[float],
                 voxel_size: Sequence[float], bev_stride: int, out_channels: int, camera_aware: bool = True):
        super().__init__()
        lo, hi, step = (float(v) for v in depth_bins)
        if not (0 < lo < hi and step > 0):
            raise ValueError(f"depth_bins must be (min > 0, max > min, step > 0), got {depth_bins}")
        H, W = (int(v) for v in image_size)
        self.feature_stride = int(feature_stride)
        # The lifted map must tile the input exactly, else its cell centres would not be where
        # the frustum places them (C5 may be rounded up: the FPN resamples it to C4's size).
        if H % self.feature_stride or W % self.feature_stride:
            raise ValueError(f"image_size {tuple(image_size)} must be multiples of feature_stride {feature_stride}")
        self.image_size = (H, W)
        self.num_depth = int(round((hi - lo) / step))
        self.context_channels = int(context_channels)
        self.out_channels = int(out_channels)

        self.backbone = backbone
        self.neck = FPN(backbone.out_channels[1:], neck_channels, self.feature_stride)
        self.depth_bins = (lo, hi, step)
        self.depth_net = CameraAwareDepthNet(neck_channels, self.num_depth, self.context_channels, camera_aware)
        self.bev_encoder = nn.Sequential(conv_norm_act(self.context_channels, out_channels, 3),
                                         conv_norm_act(out_channels, out_channels, 3))

        r, v = [float(x) for x in point_cloud_range], [float(x) for x in voxel_size]
        self.cell = (v[0] * bev_stride, v[1] * bev_stride)
        # Derived as GridConfig.bev_shape / bev_stride does, so every encoder agrees on the grid.
        nx, ny = int(round((r[3] - r[0]) / v[0])), int(round((r[4] - r[1]) / v[1]))
        if nx % bev_stride or ny % bev_stride:
            raise ValueError(f"bev_stride {bev_stride} does not divide the grid ({nx} x {ny} cells)")
        self.bev_hw = (ny // bev_stride, nx // bev_stride)
        self.register_buffer("range_min", torch.tensor(r[:3], dtype=torch.float32), persistent=False)
        self.register_buffer("range_max", torch.tensor(r[3:], dtype=torch.float32), persistent=False)
        self.register_buffer("cell_xy", torch.tensor(self.cell, dtype=torch.float32), persistent=False)

        fH, fW = H // self.feature_stride, W // self.feature_stride
        self.feature_hw = (fH, fW)
        s = float(self.feature_stride)
        ys = (torch.arange(fH, dtype=torch.float64) + 0.5) * s
        xs = (torch.arange(fW, dtype=torch.float64) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        # [fH * fW, 3] homogeneous network-input pixel (u, v, 1) of each feature cell centre
        self.register_buffer("frustum_pixels", torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3),
                             persistent=False)
        self.register_buffer("depth_centres", lo + (torch.arange(self.num_depth, dtype=torch.float64) + 0.5) * step,
                             persistent=False)

    # ------------------------------------------------------------------------------------------
    # Geometry
    # ------------------------------------------------------------------------------------------
    def ego_points(self, intrinsics: torch.Tensor, img_aug: torch.Tensor, T_ego_from_cam: torch.Tensor) -> torch.Tensor:
        """Frustum points in the ego frame: float32[M, D, fH, fW, 3] (x, y, z) metres.

        intrinsics: float[M, 3, 3] pinhole matrix of the original image, pixels
        img_aug: float[M, 3, 3] original pixel (u, v, 1) -> network-input pixel
        T_ego_from_cam: float[M, 4, 4] camera -> ego frame, metres
        """
        M = intrinsics.shape[0]
        D, (fH, fW) = self.num_depth, self.feature_hw
        # Fold the 3x3 chain once per camera in float64 (cheap), so the per-point work is one
        # matrix product and the inversions lose no precision.
        R = T_ego_from_cam[:, :3, :3].double()
        t = T_ego_from_cam[:, :3, 3].double()
        A = R @ torch.linalg.inv(intrinsics.double()) @ torch.linalg.inv(img_aug.double())  # [M, 3, 3]
        # .to(A): the float64 buffers may have been cast by model.half() / .to(dtype)
        rays = self.frustum_pixels.to(A) @ A.transpose(1, 2)  # [M, fH*fW, 3] at camera depth 1
        d = self.depth_centres.to(A)
        pts = d.view(1, D, 1, 1) * rays.unsqueeze(1) + t.view(M, 1, 1, 3)  # [M, D, fH*fW, 3]
        return pts.float().view(M, D, fH, fW, 3)

    @torch.no_grad()
    def cell_rays(self, intrinsics: torch.Tensor, img_aug: torch.Tensor, T_ego_from_cam: torch.Tensor) -> torch.Tensor:
        """``ray_geometry`` of every feature cell: float32[M, 3, fH, fW] (inputs as ``ego_points``)."""
        A = torch.linalg.inv(intrinsics.double()) @ torch.linalg.inv(img_aug.double())  # [M, 3, 3]
        rays = self.frustum_pixels.to(A) @ A.transpose(1, 2)  # [M, fH*fW, 3], camera frame, z = 1
        return ray_geometry(rays, T_ego_from_cam[:, :3, :3].to(A), self.feature_hw)

    def bev_coords(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """BEV cell of ego points: (int64[..., 2] (y, x), bool[...] inside the grid and z range).

        points: float32[..., 3] (x, y, z) ego frame, metres. Index = floor((p - min) / cell) in
        float32; z must lie in [z_min, z_max), half-open as the LiDAR voxelizer's cells.
        """
        q = (points[..., :2] - self.range_min[:2]) / self.cell_xy
        Hb, Wb = self.bev_hw
        z = points[..., 2]
        keep = ((q[..., 0] >= 0) & (q[..., 0] < Wb) & (q[..., 1] >= 0) & (q[..., 1] < Hb)
                & (z >= self.range_min[2]) & (z < self.range_max[2]))
        yx = torch.floor(q.flip(-1)).long()
        return yx, keep

    # ------------------------------------------------------------------------------------------
    # Network
    # ------------------------------------------------------------------------------------------
    # False: the image network runs in NCHW in inference too (tools/benchmark.py model times both)
    fast_inference: bool = True

    def image_features(self, images: torch.Tensor, params: torch.Tensor,
                       rays: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images: float[M, 3, H, W] normalized; params: float[M, 7] (``camera_params``); rays:
        float[M, 3, fH, fW] (``ray_geometry``) -> (depth logits float[M, D, fH, fW], context float[M, C, fH, fW])."""
        # Plain NCHW for training: channels_last ran the width-16 CPU model about 1.5x faster, but with
        # torch 2.13's CPU build its oneDNN backward left the process to crash at exit (segfault after
        # the tests had passed), so it stays off there until that is fixed upstream. Eager inference
        # (eval mode, no autograd, so no backward) runs the backbone and neck in channels_last: the same
        # features within float rounding, ~1.35x faster in fp32 and ~1.5x in bf16 (README, issue 17).
        if self.fast_inference and not self.training and eager_inference(images, [], self):
            _, c3, c4, c5 = self.backbone(images.contiguous(memory_format=torch.channels_last))
            return self.depth_net(self.neck(c3, c4, c5).contiguous(), params, rays)
        _, c3, c4, c5 = self.backbone(images.contiguous())
        return self.depth_net(self.neck(c3, c4, c5), params, rays)

    def splat(self, depth: torch.Tensor, context: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
              T_ego_from_cam: torch.Tensor, batch_index: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Lift each feature cell along its ray and sum into BEV: float[B, C, Hb, Wb].

        depth: float[M, D, fH, fW] depth distribution per feature cell (sums to 1 over D for softmax)
        context: float[M, C, fH, fW] features per feature cell
        intrinsics, img_aug, T_ego_from_cam: float[M, 3, 3], [M, 3, 3], [M, 4, 4] of those M images
        batch_index: int64[M] sample of each image
        A point's feature is depth[m, d, v, u] * context[m, :, v, u] (the LSS outer product); only the
        points inside the grid are formed, so the dropped ones cost nothing.
        """
        M, D, fH, fW = depth.shape
        C = context.shape[1]
        with torch.no_grad():
            pts = self.ego_points(intrinsics, img_aug, T_ego_from_cam)  # [M, D, fH, fW, 3]
            yx, keep = self.bev_coords(pts)
            kept = torch.nonzero(keep.view(-1)).squeeze(1)  # flat (m, d, v, u) index
            HW = fH * fW
            m = kept // (D * HW)
            pixel = m * HW + kept % HW  # flat (m, v, u) index into the context
            coords = torch.cat([batch_index[m].unsqueeze(1), yx.view(-1, 2)[kept]], 1)
        feats = depth.reshape(-1)[kept].unsqueeze(1) * context.permute(0, 2, 3, 1).reshape(M * HW, C)[pixel]
        if feats.dtype in (torch.float16, torch.bfloat16):
            # The numba kernels have no half types (under autocast the image side may be half).
            feats = feats.float()
        geometry = bev_pool_geometry(coords, batch_size, self.bev_hw)
        return bev_pool(feats, geometry)

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
                T_ego_from_cam: torch.Tensor, camera_mask: torch.Tensor, return_depth: bool = False,
                detached_depth_map: bool = False):
        """Camera BEV features float[B, out_channels, Hb, Wb], rows = ego y, cols = ego x
        (and the ``CameraDepth`` it lifted with, when ``return_depth``; None without any camera).

        images: float32[B, N, 3, H, W] RGB normalized with IMAGE_MEAN / IMAGE_STD, network input size
        intrinsics: float32[B, N, 3, 3] pinhole matrix of the original image, pixels
        img_aug: float32[B, N, 3, 3] original-image pixel (u, v, 1) -> network-input pixel
        T_ego_from_cam: float32[B, N, 4, 4] camera -> ego frame at the reference time, metres
        camera_mask: bool[B, N] camera present; absent images are not run through the network and
            a sample without any camera gives an all-zero map
        detached_depth_map: also return, last, a second map float[B, out_channels, Hb, Wb] lifted from the
            same features with the depth distribution detached (the auxiliary head's input when its
            gradient must not train the depth; the first map is unchanged)
        """
        B, N, _, H, W = images.shape
        if (H, W) != self.image_size:
            raise ValueError(f"images are {H}x{W}, the encoder was built for {self.image_size[0]}x{self.image_size[1]}")
        Hb, Wb = self.bev_hw
        b_idx, n_idx = torch.nonzero(camera_mask, as_tuple=True)
        K, A, T = intrinsics[b_idx, n_idx], img_aug[b_idx, n_idx], T_ego_from_cam[b_idx, n_idx]
        images_anywhere = _images_in_group(b_idx) if self.training else b_idx.numel() > 0
        if b_idx.numel() == 0:
            out = images.new_zeros(B, self.out_channels, Hb, Wb)
            if images_anywhere:
                # Under DDP with global-batch norms every rank must issue the norms' collectives in the
                # same order: run the network on no image (a norm on an empty input joins the
                # collective with count 0 and updates nothing) and keep its parameters in the graph
                # with a zero gradient, as a rank with images but none of this sample's would.
                logits, context = self.image_features(images[b_idx, n_idx], camera_params(K, A, T, self.image_size),
                                                      self.cell_rays(K, A, T))
                empty = self.bev_encoder(context.new_zeros(0, self.context_channels, Hb, Wb))
                out = out + 0.0 * (logits.sum() + context.sum() + empty.sum()).to(out.dtype)
            return _pack(out, None, out, return_depth, detached_depth_map)
        logits, context = self.image_features(images[b_idx, n_idx], camera_params(K, A, T, self.image_size),
                                              self.cell_rays(K, A, T))
        prob = logits.softmax(dim=1)
        out = self.bev_encoder(self.splat(prob, context, K, A, T, b_idx, B))
        # The norms' biases would make an empty canvas non-zero: a sample without cameras must read
        # as "no camera information" to the fusion.
        has_camera = camera_mask.any(dim=1).to(out.dtype).view(B, 1, 1, 1)
        out = out * has_camera
        detached = None
        if detached_depth_map:  # same values as out; its gradient reaches the context, not the depth
            detached = self.bev_encoder(self.splat(prob.detach(), context, K, A, T, b_idx, B)) * has_camera
        return _pack(out, CameraDepth(logits, b_idx, n_idx), detached, return_depth, detached_depth_map)


def _pack(out, depth, detached, return_depth: bool, detached_depth_map: bool):
    """LiftSplatEncoder.forward's result: out alone, or (out[, depth][, detached]) as asked."""
    res = (out,) + ((depth,) if return_depth else ()) + ((detached,) if detached_depth_map else ())
    return res if len(res) > 1 else out


def _images_in_group(b_idx: torch.Tensor) -> bool:
    """Whether any process of the group (this one alone outside a group) has a camera image in its
    batch; b_idx: int64[M] sample of each of this process's images. In a group it is one all-reduce
    of the image count, issued by every process on every training forward (so all issue it alike)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return b_idx.numel() > 0
    count = torch.tensor([float(b_idx.numel())])
    if dist.get_backend() == "nccl":
        count = count.cuda()
    dist.all_reduce(count)
    return float(count) > 0


def build_camera_encoder(cfg) -> LiftSplatEncoder:
    """The camera encoder of ``cfg`` (perception.config.Config): model.camera, grid, model.bev_stride
    and model.bev_channels. The FPN has 4 * backbone_width channels (256 at torchvision's width, as
    BEVFusion's camera neck). ``model.camera.pretrained`` loads a local torchvision state dict."""
    c = cfg.model.camera
    backbone = BACKBONES[c.backbone](c.backbone_width)
    if c.pretrained:
        load_pretrained(backbone, c.pretrained)
    return LiftSplatEncoder(backbone, neck_channels=4 * c.backbone_width, depth_bins=c.depth_bins,
                            context_channels=c.channels, feature_stride=c.feature_stride,
                            image_size=c.image_size, point_cloud_range=cfg.grid.point_cloud_range,
                            voxel_size=cfg.grid.voxel_size, bev_stride=cfg.model.bev_stride,
                            out_channels=cfg.model.bev_channels, camera_aware=c.camera_aware)
