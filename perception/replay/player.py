"""The drive player: every sample_data of a scene, in timestamp order, through the streaming
synchronizer; each final selection becomes a Frame, the model runs on it (when there is one), and
the dashboard (perception.viz) is rendered to a window and/or a video.

References (``ReplayOptions.reference``):

- 'available' (default): every LiDAR message whose file exists. On a full nuScenes root that is
  every LiDAR sweep (20 Hz); on the shared real extract, whose sweep files are absent, it is the
  keyframes (2 Hz), and the sweeps still inside each frame's window are marked missing.
- 'keyframes': the LiDAR keyframes only.
- 'all': every LiDAR message, also those whose file is missing (their frames have no LiDAR).

Tracking: with a detector, the online tracker (perception.tracking, the config's ``tracking``
section) runs on every frame as it streams; each track with a score from ``min_score`` up is drawn
with its ID and a short trail of past centres in the cameras, the BEV panel and the 3D view, and
every reported track is in the frame's JSON record ('tracks': id, label, score, hits, box in the ego
frame, centre in the global frame).

Outputs per step: a video frame (``out_video``, mp4v), an optional PNG, and one JSON record in
``out_json`` (detections, tracks, sensor status, stage timings); the JSON file is written as the replay goes,
so nothing per frame is kept in memory (memory stays flat over a long drive).

Stages timed per frame (ms in the JSON and on the status line): sync (the selection), plan (poses,
transforms, ground truth), load (file reading and motion compensation), batch, voxelize, model,
decode (perception.replay.timing), track, render (3D, BEV, cameras, composition) and write
(video/PNG/JSON).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..structures import CLASSES, LIDAR_CHANNEL, Detections, Frame
from ..sync.streaming import StreamingSynchronizer
from ..sync.synchronizer import FrameBuilder, assemble_frame
from .timing import TimedDetector

log = logging.getLogger(__name__)

STAGES = ("sync", "plan", "load", "batch", "voxelize", "model", "decode", "track", "render", "write")
REFERENCES = ("available", "keyframes", "all")


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class ReplayOptions:
    """reference: 'available' | 'keyframes' | 'all' (module doc)
    speed: None = as fast as possible; 1.0 = the recorded clock (--realtime); X = X times faster
    drop: channels or modalities treated as failed for the whole replay
    max_frames: stop after this many frames
    out_video / out_json / png_dir: outputs (None = not written); png_every: every n-th frame as PNG
    headless: never open a window (also when there is no display)
    renderer: 3D panel 'auto' | 'open3d' | 'software'
    color_by: LiDAR colours 'height' | 'intensity'
    video_fps: None = the recorded reference rate (the video plays in real time)
    min_score: predictions and tracks below this score are not drawn (the JSON log keeps every one)
    track: run the tracker on the detections (IDs and trails drawn, tracks in the JSON)
    trail_length: past centres drawn per track (the current one included)
    out_foxglove: also write the frames, boxes and transforms as a Foxglove MCAP here
    """

    reference: str = "available"
    speed: Optional[float] = None
    drop: List[str] = field(default_factory=list)
    max_frames: Optional[int] = None
    out_video: Optional[str] = None
    out_json: Optional[str] = None
    png_dir: Optional[str] = None
    png_every: int = 1
    headless: bool = True
    renderer: str = "auto"
    color_by: str = "height"
    video_fps: Optional[float] = None
    min_score: float = 0.25
    track: bool = True
    trail_length: int = 10
    out_foxglove: Optional[str] = None  # an MCAP with Foxglove schemas (perception.replay.foxglove_out)


@dataclass
class ReplaySummary:
    frames: int
    wall_s: float
    fps: float
    renderer: str
    mean_ms: Dict[str, float]
    video: Optional[str]
    json: Optional[str]
    video_size: Optional[tuple]
    max_buffered: Dict[str, int]
    rss_mb_first: float = 0.0
    rss_mb_last: float = 0.0
    reference: str = ""
    problems: Optional[object] = None  # FileProblems: unreadable files of the replay, per channel


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return 0.0


def detections_record(det: Optional[Detections]) -> List[dict]:
    if det is None:
        return []
    b = det.boxes
    return [{"box": [round(float(v), 4) for v in b.boxes[i]], "label": CLASSES[int(b.labels[i])],
             "score": round(float(b.scores[i]), 4), "attribute": int(b.attributes[i])} for i in range(len(b))]


def tracks_record(tracks, T_global_from_ego: np.ndarray) -> List[dict]:
    """Per track: id, label, score, hits, box (ego frame, the detections' layout), global centre."""
    if tracks is None:
        return []
    ego = tracks.in_ego(T_global_from_ego).boxes
    return [{"id": int(tracks.ids[i]), "label": CLASSES[int(tracks.labels[i])],
             "score": round(float(tracks.scores[i]), 4), "hits": int(tracks.hits[i]),
             "box": [round(float(v), 4) for v in ego[i]],
             "global": [round(float(v), 3) for v in tracks.boxes[i, :3]]} for i in range(len(tracks))]


def track_overlay(tracks, trails, T_global_from_ego: np.ndarray, min_score: float):
    """The tracks to draw (score >= min_score) in the ego frame, with their trails."""
    from ..viz.tracks import TrackOverlay

    keep = np.flatnonzero(tracks.scores >= min_score)
    T_ego_from_global = np.linalg.inv(np.asarray(T_global_from_ego, np.float64))
    ego = tracks.in_ego(T_global_from_ego).boxes[keep]
    pts = [trails.trail(int(tracks.ids[i])) for i in keep]
    pts = [p @ T_ego_from_global[:3, :3].T + T_ego_from_global[:3, 3] for p in pts]
    return TrackOverlay(tracks.ids[keep], ego, tracks.labels[keep], pts)


class _JsonLog:
    """{"scene": ..., "options": ..., "frames": [record, ...], "summary": {...}} written incrementally."""

    def __init__(self, path: str, header: dict):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.f = open(path, "w")
        head = json.dumps(header)[:-1]
        self.f.write(head + (", " if len(header) else "") + '"frames": [\n')
        self.n = 0

    def add(self, record: dict) -> None:
        self.f.write((",\n" if self.n else "") + json.dumps(record))
        self.n += 1

    def close(self, summary: dict) -> None:
        self.f.write('\n], "summary": ' + json.dumps(summary) + "}\n")
        self.f.close()


class Player:
    """source: NuScenesSource; scene: name or token; cfg: Config (sync and data sections, and the
    model's input settings when ``detector`` is given); detector: ``predict(frames)`` or None (data viewer)."""

    def __init__(self, source, scene: str, cfg, detector=None, options: Optional[ReplayOptions] = None):
        from ..viz import BevRenderer, CameraMosaic, Dashboard

        self.source, self.cfg = source, cfg
        self.opt = options or ReplayOptions()
        if self.opt.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.opt.reference!r}")
        self.builder = FrameBuilder(source, scene, cfg)
        self.scene_name = self.builder.scene["name"]
        self.detector = TimedDetector(detector) if detector is not None else None
        self.tracker = self.trails = None
        if detector is not None and self.opt.track:
            from ..tracking import TrailHistory, tracker_from_config

            self.tracker = tracker_from_config(cfg.tracking)
            self.trails = TrailHistory(self.opt.trail_length)
        self.interactive = not self.opt.headless and has_display()
        self.scene_renderer = None
        self._renderer_kind = self.opt.renderer
        self.mosaic = CameraMosaic((320, 180))
        self.bev = BevRenderer(600, 50.0, color_by=self.opt.color_by)
        self.dashboard = Dashboard(None, self.mosaic, self.bev)
        # interactive state
        self.paused = False
        self.step_once = False
        self.quit = False
        self.speed = self.opt.speed
        self._dash_window = None
        self._resync = False

    # ------------------------------------------------------------------ references
    def is_reference(self, msg) -> bool:
        if self.opt.reference == "keyframes":
            return msg.is_key_frame
        if self.opt.reference == "available":
            return os.path.isfile(self.source.path(msg))
        return True

    def recorded_rate_hz(self) -> float:
        lidar = self.builder.index.channels[LIDAR_CHANNEL].messages
        refs = [m.timestamp for m in lidar if self.is_reference(m)]
        if len(refs) < 2:
            return 2.0
        return (len(refs) - 1) / ((refs[-1] - refs[0]) * 1e-6)

    # ------------------------------------------------------------------ rendering
    def _make_scene_renderer(self):
        from ..viz import make_scene_renderer

        keys = None
        if self.interactive:
            keys = {" ": self._key_pause, "N": self._key_step, "=": self._key_faster, "+": self._key_faster,
                    "-": self._key_slower, "Q": self._key_quit, 256: self._key_quit}
        self.scene_renderer = make_scene_renderer(self._renderer_kind, color_by=self.opt.color_by,
                                                  visible=self.interactive, key_callbacks=keys)
        self.dashboard = type(self.dashboard)(self.scene_renderer, self.mosaic, self.bev)

    def _render_scene(self, frame: Frame, det: Optional[Detections], tracks=None) -> np.ndarray:
        try:
            return self.scene_renderer.render(frame, det, tracks=tracks)
        except Exception as e:  # noqa: BLE001 - the replay must survive a failing 3D renderer
            from ..viz import SoftwareSceneRenderer

            if isinstance(self.scene_renderer, SoftwareSceneRenderer):
                raise
            log.warning("3D panel: %s failed (%s); switching to the software renderer", self.scene_renderer.name, e)
            self.scene_renderer.close()
            self.scene_renderer = SoftwareSceneRenderer(color_by=self.opt.color_by)
            self.dashboard = type(self.dashboard)(self.scene_renderer, self.mosaic, self.bev)
            return self.scene_renderer.render(frame, det, tracks=tracks)

    def status_lines(self, frame: Frame, index: int, t0_us: int, times: Dict[str, float], fps: float,
                     det: Optional[Detections], shown: Optional[Detections] = None, tracks=None) -> List[str]:
        from ..viz.compose import sensor_summary

        utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frame.timestamp * 1e-6))
        kind = "key" if frame.sample_token else "sweep"
        ndet = "-" if det is None else f"{len(shown.boxes) if shown is not None else len(det.boxes)}/{len(det.boxes)}"
        ngt = len(frame.gt) if frame.gt is not None else 0
        line1 = (f"{self.scene_name} {utc}.{frame.timestamp % 1_000_000 // 1000:03d} UTC  t+{(frame.timestamp - t0_us) * 1e-6:6.2f}s"
                 f"  #{index} {kind}  | {sensor_summary(frame.status)}  | pts {len(frame.lidar_points)}"
                 f" radar {len(frame.radar_points)} gt {ngt} det {ndet}"
                 + (f" trk {len(tracks)}/{self.tracker.num_live}" if tracks is not None else ""))
        lat = " ".join(f"{k} {times[k] * 1000:.1f}" for k in STAGES if k in times)
        speed = "max speed" if not self.speed else f"x{self.speed:g}"
        line2 = f"latency ms: {lat}  | {fps:.2f} fps ({speed})" + ("  [PAUSED]" if self.paused else "")
        # A sensor absent because its file could not be read: say which file, on screen and in the log
        bad = [f"{ch} {st.reason}" for ch, st in frame.status.items() if "unreadable" in st.reason]
        return [line1, line2] + (["unreadable: " + "; ".join(bad)] if bad else [])

    # ------------------------------------------------------------------ interactive keys
    def _key_pause(self, vis):
        self.paused = not self.paused
        return False

    def _key_step(self, vis):
        self.paused, self.step_once = True, True
        return False

    def _key_faster(self, vis):
        self.speed = (self.speed or 1.0) * 2.0
        return False

    def _key_slower(self, vis):
        self.speed = (self.speed or 1.0) / 2.0
        return False

    def _key_quit(self, vis):
        self.quit = True
        return False

    def _show(self, canvas: np.ndarray) -> None:
        """Interactive mode: the composed dashboard in a second open3d window; waits while paused."""
        import open3d as o3d

        if self._dash_window is None:
            vis = o3d.visualization.Visualizer()
            vis.create_window("perception replay: dashboard", canvas.shape[1] // 2, canvas.shape[0] // 2)
            self._dash_image = o3d.geometry.Image(np.ascontiguousarray(canvas))
            vis.add_geometry(self._dash_image)
            self._dash_window = vis
        else:
            np.asarray(self._dash_image)[:] = canvas
            self._dash_window.update_geometry(self._dash_image)
        while True:
            for v in (self._dash_window, getattr(self.scene_renderer, "vis", None)):
                if v is None:
                    continue
                v.poll_events()
                v.update_renderer()
            if self.quit or not self.paused or self.step_once:
                self.step_once = False
                return
            self._resync = True
            time.sleep(0.02)

    # ------------------------------------------------------------------ the loop
    def run(self) -> ReplaySummary:
        import cv2

        opt = self.opt
        self._make_scene_renderer()
        ssync = StreamingSynchronizer.for_builder(self.builder, self.is_reference)
        video = None
        video_size = None
        video_fps = opt.video_fps or max(1.0, round(self.recorded_rate_hz(), 2))
        jlog = None
        if opt.out_json:
            jlog = _JsonLog(opt.out_json, {"scene": self.scene_name, "dataroot": self.source.dataroot,
                                           "version": self.source.version, "reference": opt.reference,
                                           "drop": list(opt.drop), "renderer": self.scene_renderer.name,
                                           "model": self.detector is not None, "stages": list(STAGES)})
        if opt.png_dir:
            os.makedirs(opt.png_dir, exist_ok=True)
        fox = None
        if opt.out_foxglove:
            from .foxglove_out import FoxgloveWriter

            fox = FoxgloveWriter(opt.out_foxglove)
        totals = {k: 0.0 for k in STAGES}
        n = 0
        rss_first = rss_last = 0.0
        t_start = time.perf_counter()
        wall_anchor, clock_anchor, anchor_speed = None, None, None
        recent: List[float] = []
        t0_us = None

        def step(ready) -> None:
            nonlocal n, video, video_size, rss_first, rss_last
            times = {"sync": ready.select_s}
            ref = ready.reference
            t = time.perf_counter()
            plan = self.builder.plan(ref, selection=ready.selection)
            times["plan"] = time.perf_counter() - t
            t = time.perf_counter()
            frame = assemble_frame(plan, opt.drop, True, self.builder.missing)
            times["load"] = time.perf_counter() - t
            det = None
            if self.detector is not None:
                det, model_times = self.detector.predict(frame)
                times.update(model_times)
            tracks = overlay = None
            if self.tracker is not None and det is not None:
                t = time.perf_counter()
                tracks = self.tracker.step(Detections(det.sample_token, frame.timestamp, det.boxes),
                                           frame.T_global_from_ego)
                self.trails.update(tracks)
                times["track"] = time.perf_counter() - t
                overlay = track_overlay(tracks, self.trails, frame.T_global_from_ego, opt.min_score)
            recent.append(time.perf_counter())
            del recent[:-11]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            t = time.perf_counter()
            shown = det
            if det is not None:
                shown = Detections(det.sample_token, det.timestamp, det.boxes.select(det.boxes.scores >= opt.min_score))
            scene_img = self._render_scene(frame, shown, overlay)
            title = f"{self.scene_name}  frame {n}  {'keyframe' if frame.sample_token else 'sweep'}"
            canvas = self.dashboard.compose(frame, shown, None, scene_img, title, tracks=overlay)
            times["render"] = time.perf_counter() - t
            lines = self.status_lines(frame, n, t0_us, times, fps, det, shown, tracks)
            self.dashboard.draw_status(canvas, lines)
            t = time.perf_counter()
            bgr = None
            if opt.out_video:
                if video is None:
                    os.makedirs(os.path.dirname(os.path.abspath(opt.out_video)), exist_ok=True)
                    video_size = (canvas.shape[1], canvas.shape[0])
                    video = cv2.VideoWriter(opt.out_video, cv2.VideoWriter_fourcc(*"mp4v"), video_fps, video_size)
                    if not video.isOpened():
                        raise RuntimeError(f"{opt.out_video}: cv2.VideoWriter (mp4v) could not open the file")
                bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
                video.write(bgr)
            if opt.png_dir and n % max(1, opt.png_every) == 0:
                bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR) if bgr is None else bgr
                cv2.imwrite(os.path.join(opt.png_dir, f"frame_{n:05d}.png"), bgr)
            if self.interactive:
                self._show(canvas)
            if fox is not None:
                fox.write(frame, det, tracks)
            times["write"] = time.perf_counter() - t
            for k, v in times.items():
                totals[k] = totals.get(k, 0.0) + v
            rss_last = rss_mb()
            if n == 0:
                rss_first = rss_last
            if jlog is not None:
                jlog.add({"index": n, "timestamp": frame.timestamp, "lidar_token": frame.lidar_token,
                          "sample_token": frame.sample_token, "lookahead_us": ready.clock_us - frame.timestamp,
                          "status": {ch: {"present": s.present, "offset_us": s.offset_us, "reason": s.reason,
                                          "num_messages": s.num_messages, "num_missing": s.num_missing}
                                     for ch, s in frame.status.items()},
                          "num_lidar_points": int(len(frame.lidar_points)),
                          "num_radar_points": int(len(frame.radar_points)),
                          "num_gt": int(len(frame.gt)) if frame.gt is not None else None,
                          "detections": detections_record(det),
                          "tracks": tracks_record(tracks, frame.T_global_from_ego),
                          "timings_ms": {k: round(v * 1000, 3) for k, v in times.items()},
                          "fps": round(fps, 3), "rss_mb": round(rss_last, 1), "status_line": lines})
            n += 1

        try:
            for msg in self.source.messages(self.scene_name):
                if t0_us is None:
                    t0_us = msg.timestamp
                if self.speed:
                    now = time.perf_counter()
                    if wall_anchor is None or self._resync or self.speed != anchor_speed:
                        # (re)anchor the recorded clock to the wall clock: at the start, after a pause,
                        # after a speed change
                        wall_anchor, clock_anchor, anchor_speed = now, msg.timestamp, self.speed
                        self._resync = False
                    wait = (msg.timestamp - clock_anchor) * 1e-6 / self.speed - (now - wall_anchor)
                    if wait > 0:
                        time.sleep(wait)
                for ready in ssync.push(msg):
                    step(ready)
                    if self.quit or (opt.max_frames is not None and n >= opt.max_frames):
                        break
                if self.quit or (opt.max_frames is not None and n >= opt.max_frames):
                    break
            else:
                for ready in ssync.flush():
                    if opt.max_frames is not None and n >= opt.max_frames:
                        break
                    step(ready)
        finally:
            wall = time.perf_counter() - t_start
            if video is not None:
                video.release()
            if fox is not None:
                fox.close()
            renderer_name = self.scene_renderer.name if self.scene_renderer is not None else ""
            if self.scene_renderer is not None:
                self.scene_renderer.close()
            if self._dash_window is not None:
                self._dash_window.destroy_window()
            summary = ReplaySummary(
                frames=n, wall_s=wall, fps=n / wall if wall > 0 else 0.0, renderer=renderer_name,
                mean_ms={k: 1000 * v / max(n, 1) for k, v in totals.items()}, video=opt.out_video,
                json=opt.out_json, video_size=video_size, max_buffered=dict(ssync.max_buffered),
                rss_mb_first=rss_first, rss_mb_last=rss_last, reference=opt.reference,
                problems=self.builder.missing)
            if jlog is not None:
                jlog.close({"frames": n, "wall_s": round(wall, 3), "fps": round(summary.fps, 3),
                            "renderer": renderer_name, "mean_ms": {k: round(v, 3) for k, v in summary.mean_ms.items()},
                            "max_buffered": summary.max_buffered, "rss_mb_first": round(rss_first, 1),
                            "rss_mb_last": round(rss_last, 1), "video_fps": video_fps,
                            "unreadable_files": self.builder.missing.to_dict()})
        return summary
