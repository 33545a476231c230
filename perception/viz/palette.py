"""Colours (RGB uint8) and box geometry shared by the renderers.

Ground truth is drawn thin in GT_COLOR (pure green, which no class colour uses); predictions in
their class colour, thicker, with the score.
"""
from __future__ import annotations

import numpy as np

from ..structures import CLASSES

GT_COLOR = (0, 255, 0)
EGO_COLOR = (255, 255, 255)
RADAR_COLOR = (255, 60, 255)
# One colour per detection class in CLASSES order (none is pure green).
CLASS_COLORS = (
    (255, 158, 0),    # car: orange
    (255, 99, 71),    # truck: tomato
    (255, 61, 99),    # bus: red-pink
    (233, 150, 70),   # trailer: dark salmon
    (255, 215, 0),    # construction_vehicle: gold
    (0, 160, 255),    # pedestrian: azure
    (255, 0, 255),    # motorcycle: magenta
    (220, 20, 180),   # bicycle: purple-pink
    (47, 79, 200),    # traffic_cone: slate blue
    (112, 128, 144),  # barrier: slate grey
)
assert len(CLASS_COLORS) == len(CLASSES)

# 12 edges of a box over box_corners' corner order (0-3 bottom, 4-7 top; 0,1 front)
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7]])


def class_color(label: int) -> tuple:
    return CLASS_COLORS[int(label) % len(CLASS_COLORS)]


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """float64[N, 8, 3] corners of boxes float[N, >=7] (x, y, z, l, w, h, yaw), same frame.

    Order: bottom front-left, bottom front-right, bottom back-right, bottom back-left, then the top
    four in the same order ('front' = +heading, 'left' = +90 degrees from it).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, boxes.shape[-1] if len(boxes) else 9)
    n = len(boxes)
    if n == 0:
        return np.zeros((0, 8, 3))
    l, w, h = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6]
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * 0.5
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * 0.5
    dx, dy, dz = l * sx, w * sy, h * sz  # [N, 8]
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    out = np.empty((n, 8, 3))
    out[..., 0] = boxes[:, 0:1] + c * dx - s * dy
    out[..., 1] = boxes[:, 1:2] + s * dx + c * dy
    out[..., 2] = boxes[:, 2:3] + dz
    return out


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8[N, 3] RGB of values on a turbo-like ramp between lo and hi (cheap, no matplotlib)."""
    t = np.clip((np.asarray(values, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * t - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * t - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * t - 1.0), 0, 1)
    return (np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


def point_colors(points: np.ndarray, color_by: str = "height") -> np.ndarray:
    """uint8[N, 3] for Frame LiDAR points float[N, 6]: by height (z, -2 .. 4 m, ego frame) or intensity (0..100)."""
    if color_by == "intensity":
        return colormap(points[:, 3], 0.0, 100.0)
    if color_by != "height":
        raise ValueError(f"color_by must be 'height' or 'intensity', got {color_by!r}")
    return colormap(points[:, 2], -2.0, 4.0)
