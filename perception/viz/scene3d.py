"""The 3D scene panel: LiDAR points (by height or intensity), radar points with velocity arrows,
ground-truth and predicted boxes, the ego vehicle and a ground grid, seen by a chase camera that
follows the ego (everything is drawn in the ego frame, so a camera fixed in that frame follows it).

Two renderers with the same interface (``render(frame, detections, gt) -> uint8[H, W, 3]`` RGB):

- ``Open3DSceneRenderer``: open3d's legacy ``Visualizer``. With an invisible window and no display,
  open3d falls back to an EGL offscreen context (Mesa llvmpipe on a machine without a GPU); with
  ``visible=True`` it is the interactive window of the player. Its geometries (one point cloud for
  the LiDAR, one for the radar, one line set for every line) are created once and updated in place,
  so nothing accumulates over a drive. (open3d's ``OffscreenRenderer`` would need the Vulkan
  packages; the legacy path needs nothing beyond Mesa EGL.)
- ``SoftwareSceneRenderer``: the same camera with numpy/opencv (perspective projection of points
  and near-plane-clipped box edges); used when open3d cannot render (``make_scene_renderer``).

Scores are written over both with opencv at the projected box tops (the legacy visualizer has no
text), through the same ``ChaseCamera`` whose parameters the open3d view is set to.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional, Tuple

import cv2
import numpy as np

from ..structures import Detections, Frame
from .palette import (BOX_EDGES, EGO_COLOR, GT_COLOR, RADAR_COLOR, box_corners, class_color,
                      point_colors)

log = logging.getLogger(__name__)

BACKGROUND = (12, 12, 20)
GRID_COLOR = (50, 50, 64)
EGO_BOX = np.array([[4.1 / 2 - 1.0, 0.0, 0.8, 4.1, 1.73, 1.6, 0.0, 0.0, 0.0]])
NEAR_M = 0.3


@dataclass
class ChaseCamera:
    """A pinhole camera fixed in the ego frame, behind and above the ego, looking ahead.

    eye, target: ego frame, metres; hfov_deg: horizontal field of view
    """

    width: int = 960
    height: int = 480
    eye: Tuple[float, float, float] = (-20.0, 0.0, 14.0)
    target: Tuple[float, float, float] = (14.0, 0.0, 0.0)
    hfov_deg: float = 70.0
    K: np.ndarray = field(init=False)
    T_cam_from_ego: np.ndarray = field(init=False)

    def __post_init__(self):
        f = (self.width / 2.0) / np.tan(np.radians(self.hfov_deg) / 2.0)
        # open3d's legacy view accepts exactly this principal point
        self.K = np.array([[f, 0.0, self.width / 2.0 - 0.5], [0.0, f, self.height / 2.0 - 0.5], [0, 0, 1.0]])
        eye, target = np.asarray(self.eye, float), np.asarray(self.target, float)
        z = target - eye
        z /= np.linalg.norm(z)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        R = np.stack([x, y, z])  # rows: camera axes (x right, y down, z forward) in the ego frame
        self.T_cam_from_ego = np.eye(4)
        self.T_cam_from_ego[:3, :3] = R
        self.T_cam_from_ego[:3, 3] = -R @ eye

    def to_camera(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, np.float64) @ self.T_cam_from_ego[:3, :3].T + self.T_cam_from_ego[:3, 3]

    def project(self, pts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """uv float[N, 2] (K p / z, pixel centres at +0.5) and depth float[N] of ego points float[N, 3]."""
        c = self.to_camera(pts)
        z = c[:, 2]
        uvw = c @ self.K.T
        return uvw[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None], z


def _ground_grid(extent: float = 60.0, step: float = 10.0) -> Tuple[np.ndarray, np.ndarray]:
    ticks = np.arange(-extent, extent + 1e-6, step)
    starts, ends = [], []
    for v in ticks:
        starts += [(v, -extent, -1.8), (-extent, v, -1.8)]
        ends += [(v, extent, -1.8), (extent, v, -1.8)]
    return np.array(starts), np.array(ends)


def scene_lines(frame: Frame, detections: Optional[Detections], gt, velocity_horizon_s: float = 1.0,
                tracks=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every line segment of the scene: starts float[L, 3], ends float[L, 3] (ego frame), colours uint8[L, 3].
    tracks: TrackOverlay whose trails (past centres) are added in their class colours."""
    s, e, c = [], [], []
    gs, ge = _ground_grid()
    s.append(gs); e.append(ge); c.append(np.tile(GRID_COLOR, (len(gs), 1)))

    def add_boxes(boxes, colors, velocity=True):
        if not len(boxes):
            return
        corners = box_corners(boxes)
        s.append(corners[:, BOX_EDGES[:, 0]].reshape(-1, 3))
        e.append(corners[:, BOX_EDGES[:, 1]].reshape(-1, 3))
        c.append(np.repeat(np.asarray(colors, np.uint8), len(BOX_EDGES), axis=0))
        # heading tick: bottom centre -> bottom front centre
        s.append(np.c_[boxes[:, :2], boxes[:, 2] - boxes[:, 5] / 2])
        e.append((corners[:, 0] + corners[:, 1]) / 2)
        c.append(np.asarray(colors, np.uint8))
        if velocity:
            v = np.nan_to_num(boxes[:, 7:9])
            moving = np.hypot(v[:, 0], v[:, 1]) > 0.2
            if moving.any():
                p0 = boxes[moving, :3].copy()
                p1 = p0.copy()
                p1[:, :2] += v[moving] * velocity_horizon_s
                s.append(p0); e.append(p1); c.append(np.asarray(colors, np.uint8)[moving])

    if gt is not None and len(gt):
        add_boxes(gt.boxes, np.tile(GT_COLOR, (len(gt), 1)))
    if detections is not None and len(detections.boxes):
        b = detections.boxes
        add_boxes(b.boxes, [class_color(l) for l in b.labels])
    add_boxes(EGO_BOX, [EGO_COLOR], velocity=False)
    if tracks is not None and len(tracks):
        ts, te, k = tracks.trail_segments()
        if len(k):
            s.append(ts); e.append(te); c.append(np.asarray([class_color(l) for l in tracks.labels[k]], np.uint8))
    radar = frame.radar_points
    if len(radar):
        p1 = radar[:, :3].astype(np.float64).copy()
        p1[:, :2] += radar[:, 4:6] * velocity_horizon_s
        s.append(radar[:, :3].astype(np.float64)); e.append(p1); c.append(np.tile(RADAR_COLOR, (len(radar), 1)))
    return np.concatenate(s), np.concatenate(e), np.concatenate(c).astype(np.uint8)


class _SceneRendererBase:
    name = "base"

    def __init__(self, camera: Optional[ChaseCamera] = None, color_by: str = "height"):
        self.camera = camera or ChaseCamera()
        self.color_by = color_by
        self.width, self.height = self.camera.width, self.camera.height

    def _overlay(self, img: np.ndarray, detections: Optional[Detections], tracks=None) -> np.ndarray:
        if detections is not None and len(detections.boxes):
            b = detections.boxes.boxes
            tops = b[:, :3].copy()
            tops[:, 2] += b[:, 5] / 2
            uv, z = self.camera.project(tops)
            for i in np.flatnonzero((z > NEAR_M) & (uv[:, 0] > -50) & (uv[:, 0] < self.width)
                                    & (uv[:, 1] > 0) & (uv[:, 1] < self.height + 20)):
                cv2.putText(img, f"{detections.boxes.scores[i]:.2f}", (int(uv[i, 0]), int(uv[i, 1]) - 3),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.35, class_color(detections.boxes.labels[i]), 1, cv2.LINE_AA)
        if tracks is not None and len(tracks):
            tops = tracks.boxes[:, :3].copy()
            tops[:, 2] += tracks.boxes[:, 5] / 2
            uv, z = self.camera.project(tops)
            for i in np.flatnonzero((z > NEAR_M) & (uv[:, 0] > -50) & (uv[:, 0] < self.width)
                                    & (uv[:, 1] > 12) & (uv[:, 1] < self.height + 20)):
                org = (int(uv[i, 0]), int(uv[i, 1]) - 14)  # above the score
                cv2.putText(img, tracks.label(i), org, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(img, f"3D: {self.name}", (6, self.height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (140, 140, 150), 1, cv2.LINE_AA)
        return img

    def close(self) -> None:
        pass


class SoftwareSceneRenderer(_SceneRendererBase):
    """numpy/opencv perspective rendering of the scene (no OpenGL): points splatted far to near,
    line segments clipped at the near plane and drawn with cv2.line."""

    name = "software (numpy/opencv)"

    def render(self, frame: Frame, detections: Optional[Detections] = None, gt=None, tracks=None) -> np.ndarray:
        gt = frame.gt if gt is None else gt
        W, H = self.width, self.height
        img = np.empty((H, W, 3), np.uint8)
        img[:] = BACKGROUND
        cam = self.camera
        starts, ends, colors = scene_lines(frame, detections, gt, tracks=tracks)
        n_grid = len(_ground_grid()[0])
        self._lines(img, starts[:n_grid], ends[:n_grid], colors[:n_grid])
        pts = frame.lidar_points
        if len(pts):
            uv, z = cam.project(pts[:, :3])
            ok = (z > NEAR_M) & (uv[:, 0] >= 0) & (uv[:, 0] < W - 1) & (uv[:, 1] >= 0) & (uv[:, 1] < H - 1)
            order = np.argsort(-z[ok])
            u = uv[ok, 0][order].astype(np.int32)
            v = uv[ok, 1][order].astype(np.int32)
            col = point_colors(pts[ok][order], self.color_by)
            for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):  # 2x2 splats, like open3d's point_size 2
                img[v + dv, u + du] = col
        radar = frame.radar_points
        if len(radar):
            uv, z = cam.project(radar[:, :3])
            for (u, v), d in zip(uv, z):
                if d > NEAR_M and 0 <= u < W and 0 <= v < H:
                    cv2.circle(img, (int(u), int(v)), 3, RADAR_COLOR, -1)
        self._lines(img, starts[n_grid:], ends[n_grid:], colors[n_grid:])
        return self._overlay(img, detections, tracks)

    def _lines(self, img, starts, ends, colors) -> None:
        cam = self.camera
        a, b = cam.to_camera(starts), cam.to_camera(ends)
        keep = (a[:, 2] > NEAR_M) | (b[:, 2] > NEAR_M)
        a, b, colors = a[keep], b[keep], colors[keep]
        # clip at the near plane
        for p, q in ((a, b), (b, a)):
            behind = p[:, 2] <= NEAR_M
            if behind.any():
                s = (NEAR_M - p[behind, 2]) / (q[behind, 2] - p[behind, 2])
                p[behind] = p[behind] + s[:, None] * (q[behind] - p[behind])
        ua = a @ cam.K.T
        ub = b @ cam.K.T
        ua = ua[:, :2] / ua[:, 2:3]
        ub = ub[:, :2] / ub[:, 2:3]
        lim = 1e5
        ok = (np.abs(ua) < lim).all(axis=1) & (np.abs(ub) < lim).all(axis=1)
        seg = np.stack([ua[ok], ub[ok]], axis=1).astype(np.int32)  # [M, 2, 2]
        colors = colors[ok]
        for col in np.unique(colors, axis=0):
            sel = (colors == col).all(axis=1)
            cv2.polylines(img, list(seg[sel].reshape(-1, 2, 1, 2)), False, tuple(int(x) for x in col), 1, cv2.LINE_AA)


class Open3DSceneRenderer(_SceneRendererBase):
    """open3d legacy Visualizer; ``visible=False`` renders offscreen (EGL without a display)."""

    name = "open3d legacy Visualizer (offscreen EGL)"

    def __init__(self, camera: Optional[ChaseCamera] = None, color_by: str = "height", visible: bool = False,
                 key_callbacks: Optional[dict] = None, point_size: float = 2.0):
        super().__init__(camera, color_by)
        import open3d as o3d

        self.o3d = o3d
        self.visible = visible
        if visible:
            self.name = "open3d legacy Visualizer (window)"
        self.vis = o3d.visualization.VisualizerWithKeyCallback() if key_callbacks else o3d.visualization.Visualizer()
        if not self.vis.create_window(window_name="perception replay: 3D", width=self.width, height=self.height,
                                      visible=visible):
            raise RuntimeError("open3d could not create a window / offscreen context")
        for key, fn in (key_callbacks or {}).items():
            self.vis.register_key_callback(ord(key) if isinstance(key, str) else key, fn)
        opt = self.vis.get_render_option()
        opt.background_color = np.asarray(BACKGROUND, float) / 255.0
        opt.point_size = point_size
        opt.light_on = False
        self.lidar = o3d.geometry.PointCloud()
        self.radar = o3d.geometry.PointCloud()
        self.lines = o3d.geometry.LineSet()
        # a first content spanning the grid, so the view's clipping planes cover the scene
        gs, ge = _ground_grid()
        self._set_lines(gs, ge, np.tile(GRID_COLOR, (len(gs), 1)).astype(np.uint8))
        self.lidar.points = o3d.utility.Vector3dVector(np.zeros((1, 3)))
        self.radar.points = o3d.utility.Vector3dVector(np.zeros((1, 3)))
        self.vis.add_geometry(self.lines)
        # a one-point cloud would collapse the view's bounding box (and with it the clipping planes)
        self.vis.add_geometry(self.lidar, reset_bounding_box=False)
        self.vis.add_geometry(self.radar, reset_bounding_box=False)
        self._set_view()

    def _set_view(self) -> None:
        o3d = self.o3d
        params = o3d.camera.PinholeCameraParameters()
        K = self.camera.K
        params.intrinsic = o3d.camera.PinholeCameraIntrinsic(self.width, self.height, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        params.extrinsic = self.camera.T_cam_from_ego
        self.vis.get_view_control().convert_from_pinhole_camera_parameters(params, allow_arbitrary=True)

    def _set_lines(self, starts, ends, colors) -> None:
        o3d = self.o3d
        n = len(starts)
        self.lines.points = o3d.utility.Vector3dVector(np.concatenate([starts, ends]).astype(np.float64))
        self.lines.lines = o3d.utility.Vector2iVector(np.stack([np.arange(n), np.arange(n) + n], axis=1))
        self.lines.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)

    def update(self, frame: Frame, detections: Optional[Detections] = None, gt=None, tracks=None) -> None:
        """Put one frame's content into the (reused) geometries."""
        o3d = self.o3d
        gt = frame.gt if gt is None else gt
        pts = frame.lidar_points
        if len(pts):
            self.lidar.points = o3d.utility.Vector3dVector(pts[:, :3].astype(np.float64))
            self.lidar.colors = o3d.utility.Vector3dVector(point_colors(pts, self.color_by) / 255.0)
        else:
            self.lidar.points = o3d.utility.Vector3dVector(np.zeros((1, 3)))
            self.lidar.colors = o3d.utility.Vector3dVector(np.asarray([BACKGROUND], float) / 255.0)
        radar = frame.radar_points
        rp = radar[:, :3].astype(np.float64) if len(radar) else np.zeros((1, 3))
        self.radar.points = o3d.utility.Vector3dVector(rp)
        self.radar.colors = o3d.utility.Vector3dVector(
            np.tile(np.asarray(RADAR_COLOR if len(radar) else BACKGROUND, float) / 255.0, (len(rp), 1)))
        self._set_lines(*scene_lines(frame, detections, gt, tracks=tracks))
        for g in (self.lines, self.lidar, self.radar):
            self.vis.update_geometry(g)

    def render(self, frame: Frame, detections: Optional[Detections] = None, gt=None, tracks=None) -> np.ndarray:
        self.update(frame, detections, gt, tracks)
        if not self.visible:
            self._set_view()  # the interactive window keeps the user's view
        self.vis.poll_events()
        self.vis.update_renderer()
        buf = np.asarray(self.vis.capture_screen_float_buffer(do_render=True))
        img = (np.clip(buf, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if img.shape[:2] != (self.height, self.width):
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return self._overlay(np.ascontiguousarray(img), detections, tracks)

    def close(self) -> None:
        try:
            self.vis.destroy_window()
        except Exception:  # noqa: BLE001 - closing must not fail a finished replay
            pass


_PROBE = r"""
import numpy as np, open3d as o3d
vis = o3d.visualization.Visualizer()
assert vis.create_window(width=64, height=48, visible=False)
pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.rand(100, 3)))
vis.add_geometry(pc); vis.poll_events(); vis.update_renderer()
img = np.asarray(vis.capture_screen_float_buffer(do_render=True))
assert img.shape[:2] == (48, 64), img.shape
vis.destroy_window()
print("OPEN3D_OK")
"""


def open3d_offscreen_works(timeout_s: float = 90.0) -> Tuple[bool, str]:
    """Whether open3d's legacy offscreen rendering works here, tried in a child process (a crash in
    a GL driver must not take the replay down). Returns (ok, why not)."""
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return False, f"open3d probe timed out after {timeout_s:.0f} s"
    if r.returncode == 0 and "OPEN3D_OK" in r.stdout:
        return True, ""
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
    return False, f"open3d probe failed: {tail[0][:200]}"


def make_scene_renderer(kind: str = "auto", camera: Optional[ChaseCamera] = None, color_by: str = "height",
                        visible: bool = False, key_callbacks: Optional[dict] = None):
    """'open3d', 'software' or 'auto' (open3d when its probe renders, else software; never raises for
    'auto'). Returns the renderer."""
    if kind == "software":
        return SoftwareSceneRenderer(camera, color_by)
    if kind not in ("auto", "open3d"):
        raise ValueError(f"renderer must be auto, open3d or software, got {kind!r}")
    if kind == "auto" and not visible:
        ok, why = open3d_offscreen_works()
        if not ok:
            log.warning("3D panel: %s; using the software renderer", why)
            return SoftwareSceneRenderer(camera, color_by)
    try:
        return Open3DSceneRenderer(camera, color_by, visible=visible, key_callbacks=key_callbacks)
    except Exception as e:  # noqa: BLE001
        if kind == "open3d":
            raise
        log.warning("3D panel: open3d failed (%s); using the software renderer", e)
        return SoftwareSceneRenderer(camera, color_by)
