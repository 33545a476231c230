"""PointPillars LiDAR encoder: hard voxelization into pillars (the numba kernels), a pillar feature
net, scatter to the BEV canvas, and a SECOND-style 2D backbone with an FPN neck that resamples
every stage to the fused BEV stride.

Lang et al., "PointPillars: Fast Encoders for Object Detection from Point Clouds", CVPR 2019.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from ...ops.voxelize import hard_voxelize, hard_voxelize_batch, scatter_pillars
from ..common import bev_norm, conv_norm_act, eager_inference, norm_with_running_stats


class PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over points float[N, C] that uses its running statistics when a training batch
    holds fewer than 2 points (an absent sensor): batch statistics of 0 or 1 values do not exist."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return norm_with_running_stats(self, x)
        return super().forward(x)


class PillarFeatureNet(nn.Module):
    """Points of each pillar -> one feature vector per pillar.

    Every point's raw features are augmented with its offset to the mean of its pillar's points
    (x, y, z) and to the pillar's centre (x, y, z), then a shared per-point MLP (Linear, BatchNorm,
    ReLU) and a max over the pillar's points, as PointPillars does.

    The MLP runs on the valid points only, so the batch statistics are those of real points, not of
    the zero padding. BatchNorm, not LayerNorm: a LayerNorm over one point's channels divides out the
    scale of ``W v`` and with it the point's magnitude (range, height), which the pillar features need.

    in_channels: raw feature columns per point (x, y, z first)
    channels: widths of the per-point layers; the last is the output width
    voxel_size, point_cloud_range: of the pillar grid, metres
    """

    def __init__(self, in_channels: int, channels: Sequence[int], voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float]):
        super().__init__()
        layers = []
        cin = in_channels + 6
        for i, cout in enumerate(channels):
            layers.append(nn.Linear(cin, cout, bias=False))
            layers.append(PointBatchNorm(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.mlp = nn.Sequential(*layers)
        self.out_channels = cin
        self.register_buffer("voxel_size", torch.tensor(voxel_size, dtype=torch.float32), persistent=False)
        self.register_buffer("range_min", torch.tensor(point_cloud_range[:3], dtype=torch.float32), persistent=False)

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """voxels: float[M, P, C] points per pillar (zero rows past num_points), (x, y, z, ...) metres
        num_points: int[M] valid points per pillar
        coords: int[M, 4] (batch, z, y, x) cell of each pillar
        returns float[M, out_channels]
        """
        M, P, _ = voxels.shape
        valid = (torch.arange(P, device=voxels.device)[None, :] < num_points[:, None]).unsqueeze(-1)  # [M, P, 1]
        xyz = voxels[..., :3]
        mean = (xyz * valid).sum(1, keepdim=True) / num_points.clamp(min=1).view(M, 1, 1).to(xyz.dtype)
        centre = (coords[:, [3, 2, 1]].to(xyz.dtype) + 0.5) * self.voxel_size + self.range_min  # (x, y, z)
        feats = torch.cat([voxels, xyz - mean, xyz - centre[:, None, :]], dim=-1)
        keep = valid[..., 0]  # [M, P]
        x = self.mlp(feats[keep])  # [n_valid, out_channels], >= 0 after the ReLU
        # padding rows must not win the max: they hold -1, below any real feature
        out = x.new_full((M, P, x.shape[1]), -1.0)
        out[keep] = x
        return out.max(dim=1).values.clamp(min=0.0)


def voxelize_batch(points: List[torch.Tensor], voxel_size: Sequence[float], point_cloud_range: Sequence[float],
                   max_points: int, max_voxels: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard-voxelize every sample in one call (``hard_voxelize_batch``: one numba CPU call or one CUDA
    kernel sequence for the batch); returns voxels float[M, P, C], num_points int64[M], coords int64[M, 4]
    (batch, z, y, x) over the whole batch, equal to ``voxelize_batch_per_sample``."""
    vox, coords, nums = hard_voxelize_batch(points, voxel_size, point_cloud_range, max_points, max_voxels)
    return vox, nums.long(), coords.long()


def voxelize_batch_per_sample(points: List[torch.Tensor], voxel_size: Sequence[float],
                              point_cloud_range: Sequence[float], max_points: int,
                              max_voxels: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference of ``voxelize_batch``: one ``hard_voxelize`` call per sample."""
    vox, nums, coords = [], [], []
    for b, pts in enumerate(points):
        v, c, n = hard_voxelize(pts.contiguous(), voxel_size, point_cloud_range, max_points, max_voxels)
        vox.append(v)
        nums.append(n.long())
        coords.append(torch.cat([torch.full_like(c[:, :1], b), c], dim=1).long())
    return torch.cat(vox), torch.cat(nums), torch.cat(coords)


class SECONDFPN(nn.Module):
    """2D backbone (stages of strided conv blocks) and a neck that brings every stage to one stride.

    in_channels: channels of the input canvas
    layers / strides / channels: per stage, extra conv blocks after the stage's strided conv, the
        stride of that conv, and the stage width
    neck_channels: per stage, channels after resampling to ``out_stride``
    out_stride: stride of the output relative to the input canvas
    out_channels: channels of the output (a 3x3 conv over the concatenated stages)
    """

    def __init__(self, in_channels: int, layers: Sequence[int], strides: Sequence[int], channels: Sequence[int],
                 neck_channels: Sequence[int], out_stride: int, out_channels: int):
        super().__init__()
        self.stages = nn.ModuleList()
        self.necks = nn.ModuleList()
        cin, total_stride = in_channels, 1
        for n, s, c, nc in zip(layers, strides, channels, neck_channels):
            blocks = [conv_norm_act(cin, c, 3, s)] + [conv_norm_act(c, c) for _ in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            total_stride *= s
            if total_stride > out_stride:
                f = total_stride // out_stride
                neck = nn.Sequential(nn.ConvTranspose2d(c, nc, f, f, bias=False), bev_norm(nc), nn.ReLU(inplace=True))
            elif total_stride < out_stride:
                f = out_stride // total_stride
                neck = conv_norm_act(c, nc, f if f > 1 else 1, f)
                neck[0].padding = (0, 0)  # a f x f conv with stride f tiles the map exactly
            else:
                neck = conv_norm_act(c, nc, 1)
            self.necks.append(neck)
            cin = c
        self.fuse = conv_norm_act(sum(neck_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for stage, neck in zip(self.stages, self.necks):
            x = stage(x)
            outs.append(neck(x))
        return self.fuse(torch.cat(outs, dim=1))


class PointPillarsEncoder(nn.Module):
    """LiDAR points -> BEV features float[B, out_channels, H / bev_stride, W / bev_stride].

    voxel_size, point_cloud_range: the config's pillar grid (H = ny, W = nx cells)
    point_columns: which Batch.lidar_points columns feed the net: (x, y, z, intensity, time_lag)
    """

    POINT_COLUMNS = (0, 1, 2, 3, 5)  # x, y, z, intensity, time_lag of the Frame/Batch layout

    def __init__(self, pfn: PillarFeatureNet, backbone: SECONDFPN, voxel_size: Sequence[float],
                 point_cloud_range: Sequence[float], grid_hw: Tuple[int, int], max_points_per_voxel: int,
                 max_voxels: Tuple[int, int]):
        super().__init__()
        self.pfn = pfn
        self.backbone = backbone
        self.voxel_size = list(voxel_size)
        self.point_cloud_range = list(point_cloud_range)
        self.grid_hw = grid_hw
        self.max_points = max_points_per_voxel
        self.max_voxels = max_voxels  # (training, inference)

    def pillars(self, points: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's input after the data path: (voxels float[M, P, 5], num_points int64[M],
        coords int64[M, 4] (batch, z, y, x)) of points: B x float[N_i, 6] (see forward)."""
        cols = list(self.POINT_COLUMNS)
        pts = []
        for p in points:
            q = p[:, cols].float()
            q[:, 3] = q[:, 3] / 255.0  # intensity to [0, 1]
            pts.append(q)
        cap = self.max_voxels[0] if self.training else self.max_voxels[1]
        return voxelize_batch(pts, self.voxel_size, self.point_cloud_range, self.max_points, cap)

    # False: the backbone runs in NCHW in inference too (tools/benchmark.py model times both)
    fast_inference: bool = True

    def forward(self, points: List[torch.Tensor]) -> torch.Tensor:
        """points: B x float[N_i, 6] (x, y, z, intensity, ring, time_lag s), ego frame, metres"""
        voxels, nums, coords = self.pillars(points)
        feats = self.pfn(voxels, nums, coords)
        if self.fast_inference and not self.training and eager_inference(feats, [], self):
            # Eager inference (eval mode, no autograd): the backbone in channels_last, fed the scatter's
            # [B, H, W, C] canvas as it is (no NCHW copy of the full-resolution map); the same map
            # within float rounding, NCHW-contiguous again for the fusion. Training stays NCHW (the
            # channels_last oneDNN backward crashed the process at exit, see the camera encoder).
            canvas = scatter_pillars(feats, coords, len(points), self.grid_hw, channels_last=True)
            return self.backbone(canvas).contiguous()
        canvas = scatter_pillars(feats, coords, len(points), self.grid_hw)
        return self.backbone(canvas)


def build_lidar_encoder(cfg) -> PointPillarsEncoder:
    g, m = cfg.grid, cfg.model
    lc = m.lidar
    pfn = PillarFeatureNet(len(PointPillarsEncoder.POINT_COLUMNS), lc.pfn_channels, g.voxel_size, g.point_cloud_range)
    backbone = SECONDFPN(pfn.out_channels, lc.backbone_layers, lc.backbone_strides, lc.backbone_channels,
                         lc.neck_channels, m.bev_stride, m.bev_channels)
    return PointPillarsEncoder(pfn, backbone, g.voxel_size, g.point_cloud_range, g.bev_shape,
                               lc.max_points_per_voxel, (lc.max_voxels_train, lc.max_voxels_test))
