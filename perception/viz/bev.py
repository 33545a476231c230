"""Bird's-eye-view panel: LiDAR points by height, radar points with velocity arrows, ground-truth and
predicted boxes with velocity vectors, the ego vehicle.

Layout: ego frame, ego origin at the panel centre, +x (forward) up, +y (left) to the left;
``to_pixel`` is the one mapping (col = c - y * s, row = c - x * s, s = size / (2 * range_m)).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from ..structures import Detections, Frame
from .palette import EGO_COLOR, GT_COLOR, RADAR_COLOR, box_corners, class_color, point_colors

# nuScenes ego (Renault Zoe): about 4.1 m x 1.7 m, rear axle ~1.0 m ahead of the back bumper
EGO_BOX = np.array([[4.1 / 2 - 1.0, 0.0, 0.8, 4.1, 1.73, 1.6, 0.0, 0.0, 0.0]])


class BevRenderer:
    """size: panel side in pixels; range_m: metres from the ego to the panel edge."""

    def __init__(self, size: int = 600, range_m: float = 50.0, color_by: str = "height",
                 velocity_horizon_s: float = 1.0):
        self.size = int(size)
        self.range_m = float(range_m)
        self.scale = self.size / (2.0 * self.range_m)  # px per metre
        self.color_by = color_by
        self.velocity_horizon_s = velocity_horizon_s
        self._background = self._make_background()

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """float[N, 2] pixel (col, row) of ego-frame points float[N, >=2] (x, y), metres."""
        xy = np.asarray(xy, np.float64).reshape(-1, np.shape(xy)[-1])
        c = self.size / 2.0
        return np.stack([c - xy[:, 1] * self.scale, c - xy[:, 0] * self.scale], axis=1)

    def _ipx(self, xy) -> np.ndarray:
        return np.round(self.to_pixel(xy)).astype(np.int32)

    def _make_background(self) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 18, np.uint8)
        centre = (self.size // 2, self.size // 2)
        for r in range(10, int(self.range_m * 1.5) + 1, 10):
            cv2.circle(img, centre, int(round(r * self.scale)), (45, 45, 55), 1, cv2.LINE_AA)
            cv2.putText(img, f"{r}m", (centre[0] + 3, centre[1] - int(round(r * self.scale)) + 12),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, (90, 90, 100), 1, cv2.LINE_AA)
        return img

    def render(self, frame: Frame, detections: Optional[Detections] = None, gt=None, tracks=None) -> np.ndarray:
        """uint8[size, size, 3] RGB. gt: Boxes3D to draw as ground truth (default ``frame.gt``);
        tracks: TrackOverlay (perception.viz.tracks) whose trails and IDs are drawn over the boxes."""
        img = self._background.copy()
        pts = frame.lidar_points
        if len(pts):
            px = self._ipx(pts[:, :2])
            ok = (px[:, 0] >= 0) & (px[:, 0] < self.size) & (px[:, 1] >= 0) & (px[:, 1] < self.size)
            order = np.argsort(pts[ok, 2])  # higher points drawn last
            img[px[ok, 1][order], px[ok, 0][order]] = point_colors(pts[ok][order], self.color_by)
        self._draw_radar(img, frame.radar_points)
        gt = frame.gt if gt is None else gt
        if gt is not None and len(gt):
            self._draw_boxes(img, gt.boxes, [GT_COLOR] * len(gt), 1, None)
        if detections is not None and len(detections.boxes):
            b = detections.boxes
            self._draw_boxes(img, b.boxes, [class_color(l) for l in b.labels], 2, b.scores)
        self._draw_boxes(img, EGO_BOX, [EGO_COLOR], 2, None, velocity=False)
        if tracks is not None and len(tracks):
            self._draw_tracks(img, tracks)
        return img

    def _draw_tracks(self, img: np.ndarray, tracks) -> None:
        """Each track's trail of past centres (class colour) and its ID beside the box."""
        for i, trail in enumerate(tracks.trails):
            if len(trail) >= 2:
                cv2.polylines(img, [self._ipx(trail[:, :2]).reshape(-1, 1, 2)], False,
                              class_color(tracks.labels[i]), 1, cv2.LINE_AA)
        corners = box_corners(tracks.boxes)[:, :4, :2]
        px = self._ipx(corners.reshape(-1, 2)).reshape(-1, 4, 2)
        for i in range(len(tracks)):
            org = (int(px[i, :, 0].max()) + 2, int(px[i, :, 1].min()) + 14)  # below the score
            cv2.putText(img, tracks.label(i), org, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, tracks.label(i), org, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)

    def _draw_radar(self, img: np.ndarray, radar: np.ndarray) -> None:
        if not len(radar):
            return
        p0 = self._ipx(radar[:, :2])
        p1 = self._ipx(radar[:, :2] + radar[:, 4:6] * self.velocity_horizon_s)
        for a, b in zip(p0, p1):
            if (a != b).any():
                cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), RADAR_COLOR, 1, cv2.LINE_AA)
            cv2.circle(img, tuple(map(int, a)), 2, RADAR_COLOR, -1)

    def _draw_boxes(self, img, boxes: np.ndarray, colors, thickness: int, scores, velocity: bool = True) -> None:
        """Outlines and heading ticks of all boxes, one cv2.polylines call per colour."""
        if not len(boxes):
            return
        corners = box_corners(boxes)[:, :4, :2]  # bottom face, ego x/y
        polys = self._ipx(corners.reshape(-1, 2)).reshape(-1, 4, 2)
        heads = self._ipx(np.stack([boxes[:, :2], (corners[:, 0] + corners[:, 1]) / 2], axis=1).reshape(-1, 2))
        heads = heads.reshape(-1, 2, 2)
        colors = np.asarray(colors, np.int64)
        for col in np.unique(colors, axis=0):
            sel = (colors == col).all(axis=1)
            c = tuple(int(v) for v in col)
            cv2.polylines(img, list(polys[sel].reshape(-1, 4, 1, 2)), True, c, thickness, cv2.LINE_8)
            cv2.polylines(img, list(heads[sel].reshape(-1, 2, 1, 2)), False, c, thickness, cv2.LINE_8)
        if velocity:
            v = boxes[:, 7:9]
            moving = np.isfinite(v).all(axis=1) & (np.hypot(v[:, 0], v[:, 1]) > 0.2)
            for i in np.flatnonzero(moving):
                tip = self._ipx(boxes[i, :2] + v[i] * self.velocity_horizon_s)[0]
                cv2.arrowedLine(img, tuple(map(int, heads[i, 0])), tuple(map(int, tip)),
                                tuple(int(x) for x in colors[i]), 1, cv2.LINE_AA, tipLength=0.25)
        if scores is not None:
            for i in range(len(boxes)):
                cv2.putText(img, f"{scores[i]:.2f}", (int(polys[i, :, 0].max()) + 2, int(polys[i, :, 1].min()) + 4),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.33, tuple(int(x) for x in colors[i]), 1, cv2.LINE_AA)
