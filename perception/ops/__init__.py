"""Kernels: voxelization (numba CPU + numba.cuda), lift-splat BEV pooling, BEV NMS and box IoU.

Every fast path has a plain reference of the same contract (``*_reference``) that the tests compare
it with; see each module's docstring for the contract.
"""
# The pooling function stays at perception.ops.bev_pool.bev_pool: exporting it here would shadow the
# submodule of the same name (perception.ops.bev_pool would stop being the module).
from .bev_pool import BEVPoolGeometry, bev_pool_geometry, bev_pool_reference
from .box_ops import bev_boxes, bev_corners, rotated_iou_bev, rotated_iou_bev_reference
from .nms import circle_nms, circle_nms_reference, rotated_nms_bev, rotated_nms_bev_reference
from .voxelize import (dynamic_voxelize, dynamic_voxelize_reference, hard_voxelize,
                       hard_voxelize_reference, scatter_pillars, voxel_grid)

__all__ = [
    "BEVPoolGeometry", "bev_pool_geometry", "bev_pool_reference",
    "bev_boxes", "bev_corners", "rotated_iou_bev", "rotated_iou_bev_reference",
    "circle_nms", "circle_nms_reference", "rotated_nms_bev", "rotated_nms_bev_reference",
    "dynamic_voxelize", "dynamic_voxelize_reference", "hard_voxelize", "hard_voxelize_reference",
    "scatter_pillars", "voxel_grid",
]
