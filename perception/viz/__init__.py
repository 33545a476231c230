"""Renderers of frames and detections: BEV panel, camera mosaic with projected boxes, 3D scene
(open3d offscreen, or a numpy/opencv software renderer), and the composed dashboard.

Every renderer returns uint8[H, W, 3] RGB images and keeps no per-frame state beyond the reused
buffers / geometries, so memory stays flat over a drive.
"""
from .bev import BevRenderer
from .cameras import CameraMosaic
from .compose import Dashboard
from .palette import CLASS_COLORS, GT_COLOR
from .scene3d import ChaseCamera, Open3DSceneRenderer, SoftwareSceneRenderer, make_scene_renderer

__all__ = ["BevRenderer", "CameraMosaic", "Dashboard", "CLASS_COLORS", "GT_COLOR", "ChaseCamera",
           "Open3DSceneRenderer", "SoftwareSceneRenderer", "make_scene_renderer"]
