"""The six camera images, downscaled into a mosaic, with projected ground-truth and predicted boxes.

Tile pixel of an image point: the image is resized by (sx, sy) = (tile_w / width, tile_h / height),
so a point at image pixel coordinate (u, v) (``project_to_image``: K p / z) lies at tile coordinate
(u sx, v sy); the tile's pixel there is (floor(u sx), floor(v sy)). Box edges are clipped at a near
plane in front of the camera before projection, so boxes beside or behind a camera draw correctly.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..structures import Detections, Frame
from .palette import BOX_EDGES, GT_COLOR, box_corners, class_color

# Mosaic order: the front cameras on top, the back ones below, each row left to right as seen
# from the driver's seat.
MOSAIC_ORDER = (("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
                ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"))
NEAR_M = 0.5
_SHIFT = 4  # sub-pixel bits for cv2 drawing


class CameraMosaic:
    """tile: (width, height) of each camera tile in pixels."""

    def __init__(self, tile: Tuple[int, int] = (320, 180), order: Sequence[Sequence[str]] = MOSAIC_ORDER):
        self.tile_w, self.tile_h = int(tile[0]), int(tile[1])
        self.order = [list(r) for r in order]
        self.width = self.tile_w * max(len(r) for r in self.order)
        self.height = self.tile_h * len(self.order)

    def tile_origin(self, channel: str) -> Tuple[int, int]:
        """(col, row) of the tile's top-left pixel in the mosaic."""
        for r, row in enumerate(self.order):
            if channel in row:
                return row.index(channel) * self.tile_w, r * self.tile_h
        raise KeyError(channel)

    def scale(self, cam) -> Tuple[float, float]:
        return self.tile_w / float(cam.width), self.tile_h / float(cam.height)

    def render(self, frame: Frame, detections: Optional[Detections] = None, gt=None, tracks=None) -> np.ndarray:
        """uint8[height, width, 3] RGB mosaic; tracks: TrackOverlay whose IDs and trails are drawn too."""
        out = np.zeros((self.height, self.width, 3), np.uint8)
        cams = {c.channel: c for c in frame.cameras}
        gt = frame.gt if gt is None else gt
        for channel in (c for row in self.order for c in row):
            x0, y0 = self.tile_origin(channel)
            out[y0:y0 + self.tile_h, x0:x0 + self.tile_w] = self.render_tile(
                cams.get(channel), frame.status.get(channel), detections, gt, channel, tracks)
        return out

    def render_tile(self, cam, status, detections, gt, channel: str, tracks=None) -> np.ndarray:
        tile = np.full((self.tile_h, self.tile_w, 3), 28, np.uint8)
        if cam is not None and cam.present and cam.image is not None:
            tile[:] = cv2.resize(cam.image, (self.tile_w, self.tile_h), interpolation=cv2.INTER_AREA)
            if gt is not None and len(gt):
                self._draw_boxes(tile, cam, gt.boxes, [GT_COLOR] * len(gt), 1, None)
            if detections is not None and len(detections.boxes):
                b = detections.boxes
                self._draw_boxes(tile, cam, b.boxes, [class_color(l) for l in b.labels], 2, b.scores)
            if tracks is not None and len(tracks):
                self._draw_tracks(tile, cam, tracks)
            label, colour = channel, (255, 255, 255)
            if status is not None and status.offset_us is not None:
                label += f" {status.offset_us / 1000:+.0f}ms"
        else:
            reason = (status.reason if status is not None else "") or "absent"
            label, colour = f"{channel}: {reason}"[:48], (255, 80, 80)
            cv2.line(tile, (0, 0), (self.tile_w - 1, self.tile_h - 1), (60, 60, 60), 1)
            cv2.line(tile, (0, self.tile_h - 1), (self.tile_w - 1, 0), (60, 60, 60), 1)
        cv2.rectangle(tile, (0, 0), (self.tile_w - 1, self.tile_h - 1), (70, 70, 70), 1)
        cv2.putText(tile, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1, cv2.LINE_AA)
        return tile

    def _draw_boxes(self, tile, cam, boxes: np.ndarray, colors, thickness: int, scores) -> None:
        """All edges of all boxes at once: near-plane clipping and projection in numpy, one
        cv2.polylines call per colour."""
        if not len(boxes):
            return
        R, t = cam.T_ego_from_cam[:3, :3], cam.T_ego_from_cam[:3, 3]
        corners = (box_corners(boxes).reshape(-1, 3) - t) @ R  # camera frame (x right, y down, z forward)
        corners = corners.reshape(-1, 8, 3)
        a = corners[:, BOX_EDGES[:, 0]].reshape(-1, 3)
        b = corners[:, BOX_EDGES[:, 1]].reshape(-1, 3)
        colors = np.asarray(colors, np.int64)
        edge_color = np.repeat(np.arange(len(boxes)), len(BOX_EDGES))
        keep = (a[:, 2] > NEAR_M) | (b[:, 2] > NEAR_M)
        a, b, edge_color = a[keep], b[keep], edge_color[keep]
        for p, q in ((a, b), (b, a)):  # clip at the near plane
            behind = p[:, 2] <= NEAR_M
            if behind.any():
                s = (NEAR_M - p[behind, 2]) / (q[behind, 2] - p[behind, 2])
                p[behind] = p[behind] + s[:, None] * (q[behind] - p[behind])
        sx, sy = self.scale(cam)
        K = cam.intrinsics
        ua, ub = a @ K.T, b @ K.T
        ua = ua[:, :2] / ua[:, 2:3] * (sx, sy)
        ub = ub[:, :2] / ub[:, 2:3] * (sx, sy)
        ok = (np.abs(ua) < 1e5).all(axis=1) & (np.abs(ub) < 1e5).all(axis=1)
        ua, ub, edge_color = ua[ok], ub[ok], edge_color[ok]
        # tile coordinate u * s; cv2 puts pixel centres at integers, hence - 0.5; sub-pixel bits
        seg = np.round((np.stack([ua, ub], axis=1) - 0.5) * (1 << _SHIFT)).astype(np.int32)  # [M, 2, 2]
        rgb = colors[edge_color]
        for col in np.unique(rgb, axis=0):
            sel = (rgb == col).all(axis=1)
            cv2.polylines(tile, list(seg[sel].reshape(-1, 2, 1, 2)), False, tuple(int(v) for v in col),
                          thickness, cv2.LINE_8, _SHIFT)
        if scores is not None and len(ua):
            for i in np.unique(edge_color):
                d = np.concatenate([ua[edge_color == i], ub[edge_color == i]])
                x, y = int(d[:, 0].min()), int(d[:, 1].min()) - 3
                if -20 < x < self.tile_w and 0 < y < self.tile_h + 20:
                    cv2.putText(tile, f"{scores[i]:.2f}", (max(x, 0), max(y, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                                0.33, tuple(int(v) for v in colors[i]), 1, cv2.LINE_AA)

    def _tile_points(self, cam, pts: np.ndarray) -> tuple:
        """Tile coordinates float[N, 2] and in-front mask bool[N] of ego-frame points float[N, 3]."""
        R, t = cam.T_ego_from_cam[:3, :3], cam.T_ego_from_cam[:3, 3]
        c = (np.asarray(pts, np.float64).reshape(-1, 3) - t) @ R  # camera frame
        front = c[:, 2] > NEAR_M
        uvw = c @ cam.intrinsics.T
        uv = uvw[:, :2] / np.where(front, uvw[:, 2], 1.0)[:, None] * self.scale(cam)
        return uv, front

    def _draw_tracks(self, tile, cam, tracks) -> None:
        """Trails (past centres, class colour) and '#ID' above each track's box where it is in front."""
        starts, ends, k = tracks.trail_segments()
        if len(k):
            a, fa = self._tile_points(cam, starts)
            b, fb = self._tile_points(cam, ends)
            ok = fa & fb & (np.abs(a) < 1e5).all(axis=1) & (np.abs(b) < 1e5).all(axis=1)
            for (p, q), i in zip(np.stack([a, b], axis=1)[ok], k[ok]):
                cv2.line(tile, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), class_color(tracks.labels[i]), 1,
                         cv2.LINE_AA)
        tops = tracks.boxes[:, :3].copy()
        tops[:, 2] += tracks.boxes[:, 5] / 2
        uv, front = self._tile_points(cam, tops)
        for i in np.flatnonzero(front):
            x, y = int(uv[i, 0]), int(uv[i, 1]) - 12
            if 0 <= x < self.tile_w and 0 < y < self.tile_h:
                cv2.putText(tile, tracks.label(i), (x, max(y, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 3,
                            cv2.LINE_AA)
                cv2.putText(tile, tracks.label(i), (x, max(y, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1,
                            cv2.LINE_AA)
