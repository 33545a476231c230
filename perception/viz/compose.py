"""The dashboard: one RGB canvas per replay step.

    +-------------------------------+----------------+
    | camera mosaic 960 x 360       | BEV 600 x 600  |
    +-------------------------------+                |
    | 3D scene 960 x 480            +----------------+
    |                               | sensor table   |
    +-------------------------------+----------------+
    | status line (2 text rows)                      |
    +------------------------------------------------+

Panel origins are in ``Dashboard.origin`` (col, row) so a test can find any panel's pixel.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import cv2
import numpy as np

from ..structures import ALL_CHANNELS, Detections, Frame, SensorStatus
from .bev import BevRenderer
from .cameras import CameraMosaic

STATUS_H = 48
FONT = cv2.FONT_HERSHEY_SIMPLEX

SHORT = {"LIDAR_TOP": "LIDAR", "CAM_FRONT": "CF", "CAM_FRONT_RIGHT": "CFR", "CAM_FRONT_LEFT": "CFL",
         "CAM_BACK": "CB", "CAM_BACK_LEFT": "CBL", "CAM_BACK_RIGHT": "CBR", "RADAR_FRONT": "RF",
         "RADAR_FRONT_LEFT": "RFL", "RADAR_FRONT_RIGHT": "RFR", "RADAR_BACK_LEFT": "RBL", "RADAR_BACK_RIGHT": "RBR"}


def sensor_token(channel: str, st: Optional[SensorStatus]) -> str:
    """'CF:-12' (present, offset in ms), 'CF:DROP' (dropped by --drop-sensor) or 'CF:--' (absent)."""
    name = SHORT.get(channel, channel)
    if st is None:
        return f"{name}:--"
    if st.present:
        return f"{name}:{(st.offset_us or 0) / 1000:+.0f}"
    return f"{name}:{'DROP' if st.reason == 'dropped' else '--'}"


def sensor_summary(status: Dict[str, SensorStatus]) -> str:
    return " ".join(sensor_token(ch, status.get(ch)) for ch in ALL_CHANNELS if ch in status)


class Dashboard:
    """Composes the panels; ``scene`` is a scene renderer (perception.viz.scene3d) or None."""

    def __init__(self, scene=None, mosaic: Optional[CameraMosaic] = None, bev: Optional[BevRenderer] = None,
                 scene_size=(960, 480)):
        self.scene = scene
        self.mosaic = mosaic or CameraMosaic((320, 180))
        self.bev = bev or BevRenderer(600)
        self.scene_w, self.scene_h = (scene.width, scene.height) if scene is not None else scene_size
        left_w = max(self.mosaic.width, self.scene_w)
        self.width = left_w + self.bev.size
        body_h = max(self.mosaic.height + self.scene_h, self.bev.size + 200)
        self.height = body_h + STATUS_H
        self.width += self.width % 2  # even sizes for video codecs
        self.height += self.height % 2
        self.origin = {"cameras": (0, 0), "scene": (0, self.mosaic.height), "bev": (left_w, 0),
                       "sensors": (left_w, self.bev.size), "status": (0, body_h)}
        self.sensor_panel_h = body_h - self.bev.size

    def compose(self, frame: Frame, detections: Optional[Detections], status_lines: Optional[List[str]] = None,
                scene_image: Optional[np.ndarray] = None, title: str = "", tracks=None) -> np.ndarray:
        """uint8[height, width, 3] RGB. scene_image: the 3D panel when already rendered (else rendered here);
        tracks: TrackOverlay (IDs and trails) drawn in every panel."""
        canvas = np.zeros((self.height, self.width, 3), np.uint8)
        self._put(canvas, "cameras", self.mosaic.render(frame, detections, tracks=tracks))
        self._put(canvas, "bev", self.bev.render(frame, detections, tracks=tracks))
        if scene_image is None and self.scene is not None:
            scene_image = self.scene.render(frame, detections, tracks=tracks)
        if scene_image is not None:
            self._put(canvas, "scene", scene_image)
        self._put(canvas, "sensors", self.sensor_table(frame, title))
        self.draw_status(canvas, status_lines or [])
        return canvas

    def draw_status(self, canvas: np.ndarray, status_lines: List[str]) -> None:
        """(Re)draw the status strip (two text rows) of a composed canvas."""
        x0, y0 = self.origin["status"]
        canvas[y0:, :] = (30, 30, 38)
        for i, line in enumerate(status_lines[:2]):
            cv2.putText(canvas, line, (8, y0 + 19 + 22 * i), FONT, 0.42, (235, 235, 235), 1, cv2.LINE_AA)

    def _put(self, canvas, name, img) -> None:
        x0, y0 = self.origin[name]
        h, w = img.shape[:2]
        canvas[y0:y0 + h, x0:x0 + w] = img

    def sensor_table(self, frame: Frame, title: str = "") -> np.ndarray:
        w, h = self.bev.size, self.sensor_panel_h
        img = np.full((h, w, 3), 24, np.uint8)
        y = 16
        if title:
            cv2.putText(img, title[:80], (6, y), FONT, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            y += 18
        cols = (6, 160, 240, 330, 400)
        for x, head in zip(cols, ("channel", "state", "offset", "msgs/miss", "reason")):
            cv2.putText(img, head, (x, y), FONT, 0.38, (160, 160, 170), 1, cv2.LINE_AA)
        y += 15
        for ch in ALL_CHANNELS:
            st = frame.status.get(ch)
            if st is None:
                continue
            if st.present:
                state, col = "ok", (120, 230, 120)
            elif st.reason == "dropped":
                state, col = "DROPPED", (255, 90, 90)
            else:
                state, col = "absent", (255, 170, 60)
            off = f"{st.offset_us / 1000:+.1f} ms" if st.offset_us is not None else "--"
            reason = st.reason if (not st.present and st.reason != "dropped") else ""
            for x, text in zip(cols, (ch, state, off, f"{st.num_messages}/{st.num_missing}", reason[:28])):
                cv2.putText(img, text, (x, y), FONT, 0.36, col, 1, cv2.LINE_AA)
            y += 13
            if y > h - 4:
                break
        return img
