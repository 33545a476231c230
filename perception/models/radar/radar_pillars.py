"""Radar encoder: multi-sweep radar returns -> pillars directly on the fused BEV grid -> BEV features.

Radar is sparse (tens to hundreds of returns per sweep), so its pillars are the fused grid's cells
(grid.voxel_size * model.bev_stride) and a light conv block spreads each return's evidence
(position, RCS, compensated velocity) to its neighbourhood.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from ...ops.voxelize import scatter_pillars
from ..common import conv_norm_act
from ..lidar.pointpillars import PillarFeatureNet, voxelize_batch


class RadarPillarEncoder(nn.Module):
    """Radar points -> float[B, out_channels, Hb, Wb] on the fused grid.

    cell_size: (dx, dy) metres of a fused BEV cell; point_cloud_range: the config's range
    """

    def __init__(self, pfn: PillarFeatureNet, out_channels: int, cell_size: Sequence[float],
                 point_cloud_range: Sequence[float], grid_hw: Tuple[int, int], max_points_per_voxel: int,
                 max_voxels: int, conv_channels: int):
        super().__init__()
        self.pfn = pfn
        z_extent = point_cloud_range[5] - point_cloud_range[2]
        self.voxel_size = [cell_size[0], cell_size[1], z_extent]
        self.point_cloud_range = list(point_cloud_range)
        self.grid_hw = grid_hw
        self.max_points = max_points_per_voxel
        self.max_voxels = max_voxels
        self.convs = nn.Sequential(conv_norm_act(pfn.out_channels, conv_channels),
                                   conv_norm_act(conv_channels, conv_channels),
                                   conv_norm_act(conv_channels, out_channels))

    def pillars(self, points: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network's input after the data path: (voxels float[M, P, 7], num_points int64[M],
        coords int64[M, 4] (batch, z, y, x)) of points: B x float[M_i, 7] (see forward)."""
        pts = []
        for p in points:
            q = p.float().clone()
            q[:, 3] = q[:, 3] / 10.0  # RCS spans roughly -10..40 dBsm
            pts.append(q)
        return voxelize_batch(pts, self.voxel_size, self.point_cloud_range, self.max_points, self.max_voxels)

    def forward(self, points: List[torch.Tensor]) -> torch.Tensor:
        """points: B x float[M_i, 7] (x, y, z, rcs dBsm, vx, vy m/s, time_lag s), ego frame"""
        voxels, nums, coords = self.pillars(points)
        feats = self.pfn(voxels, nums, coords)
        return self.convs(scatter_pillars(feats, coords, len(points), self.grid_hw))


def build_radar_encoder(cfg) -> RadarPillarEncoder:
    g, m = cfg.grid, cfg.model
    cell = [g.voxel_size[0] * m.bev_stride, g.voxel_size[1] * m.bev_stride]
    z_extent = g.point_cloud_range[5] - g.point_cloud_range[2]
    pfn = PillarFeatureNet(7, m.radar.pfn_channels, [cell[0], cell[1], z_extent], g.point_cloud_range)
    return RadarPillarEncoder(pfn, m.bev_channels, cell, g.point_cloud_range, cfg.bev_shape,
                              m.radar.max_points_per_voxel, m.radar.max_voxels, m.radar.conv_channels)
