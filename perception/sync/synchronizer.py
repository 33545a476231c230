"""The synchronizer: which message of every channel belongs to a LiDAR reference sweep, and the
motion-compensated ``Frame`` built from them.

Reference clock: each LiDAR message (keyframe or sweep). For a reference at time t_ref:

- LiDAR: the reference sweep and up to ``lidar_sweeps - 1`` earlier sweeps within
  ``lidar_window_us``.
- Cameras: in nuScenes a LiDAR timestamp marks the END of its 50 ms rotation and each camera is
  triggered when the beam crosses the centre of its field of view, so the image that belongs to a
  sweep is older than t_ref by a fraction of the rotation that depends on the camera's azimuth.
  ``camera_match='trigger'`` predicts that trigger time from the rig's calibration (camera optical
  axis azimuth in the LiDAR frame, the rotation's end azimuth and spin direction) and takes the image
  nearest to it; plain nearest-to-t_ref matching picks a wrong image when a camera has two frames
  close to t_ref (``camera_match='nearest'``, kept for comparison).
- Radars (unsynchronized, ~13 Hz): the message nearest t_ref within ``radar_tolerance_us`` and up
  to ``radar_sweeps - 1`` earlier ones within ``radar_window_us``.

Motion compensation: every message is brought into the ego frame at t_ref through the ego pose at
the message's own timestamp: sensor -> ego(t_msg) -> global -> ego(t_ref). Before that, every LiDAR
sweep loses its points within ``sync.lidar_remove_close`` of the sensor (the car itself).

A message whose file is missing or unreadable makes its sensor absent (or one sweep fewer) in that
frame: the first of a channel logged, each one counted with the first few paths in
``FrameBuilder.missing`` (a ``FileProblems``), the path in that channel's ``SensorStatus.reason``;
never an exception out of ``build``, unless the FileProblems is ``strict`` (``--strict``).
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..config import Config, SyncConfig
from ..data.problems import FileProblems
from ..geometry import apply, invert, rotate
from ..structures import (CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS, CameraImage, Frame,
                          SensorStatus)
from .calibration import SensorRig

log = logging.getLogger(__name__)


def camera_trigger_offset_us(T_ego_from_cam: np.ndarray, T_ego_from_lidar: np.ndarray,
                             sync: SyncConfig) -> int:
    """Expected camera timestamp minus the LiDAR sweep's (end) timestamp, us (<= 0).

    T_ego_from_cam, T_ego_from_lidar: float64[4, 4] sensor -> ego
    The beam points at ``lidar_cut_azimuth_deg`` (LiDAR frame) at the sweep's timestamp; going back
    in time it sweeps the other way round, reaching the camera's optical axis azimuth phi after
    ((phi - cut) mod 360) / 360 of a rotation for a clockwise spin.
    """
    axis_ego = T_ego_from_cam[:3, 2]  # optical axis (camera z) in the ego frame
    axis_lidar = T_ego_from_lidar[:3, :3].T @ axis_ego
    phi = math.degrees(math.atan2(axis_lidar[1], axis_lidar[0]))
    delta = phi - sync.lidar_cut_azimuth_deg if sync.lidar_spin == "cw" else sync.lidar_cut_azimuth_deg - phi
    return -int(round((delta % 360.0) / 360.0 * sync.lidar_period_us))


@dataclass
class ChannelChoice:
    """The messages chosen for one channel: ``messages[0]`` is the primary (newest for sweeps)."""

    channel: str
    messages: list = field(default_factory=list)
    offset_us: Optional[int] = None  # primary timestamp - t_ref
    reason: str = ""  # why nothing was chosen


@dataclass
class Selection:
    reference: object  # Message
    choices: Dict[str, ChannelChoice]


def _nearest(timestamps: np.ndarray, t: int) -> int:
    """Index of the timestamp nearest t (the earlier one on a tie); -1 for an empty array."""
    n = len(timestamps)
    if n == 0:
        return -1
    i = int(np.searchsorted(timestamps, t))
    if i == 0:
        return 0
    if i == n:
        return n - 1
    return i - 1 if t - timestamps[i - 1] <= timestamps[i] - t else i


class Synchronizer:
    """Chooses, for a LiDAR reference message, the messages of every channel (see module doc).

    index: SceneIndex of the scene (perception.data.nuscenes_source)
    rig: the scene's SensorRig (camera trigger times come from its extrinsics)
    """

    def __init__(self, index, rig: SensorRig, sync: SyncConfig,
                 cameras: Sequence[str] = CAMERA_CHANNELS, radars: Sequence[str] = RADAR_CHANNELS):
        self.index = index
        self.sync = sync
        self.cameras = [c for c in cameras]
        self.radars = [r for r in radars]
        self.trigger_offset_us: Dict[str, int] = {}
        if LIDAR_CHANNEL in rig:
            for cam in self.cameras:
                if cam in rig:
                    self.trigger_offset_us[cam] = camera_trigger_offset_us(
                        rig[cam].T_ego_from_sensor, rig[LIDAR_CHANNEL].T_ego_from_sensor, sync)

    def expected_camera_time(self, channel: str, t_ref: int) -> int:
        if self.sync.camera_match == "trigger":
            return t_ref + self.trigger_offset_us.get(channel, 0)
        return t_ref

    def select(self, ref) -> Selection:
        t_ref = ref.timestamp
        ch_idx = self.index.channels
        choices: Dict[str, ChannelChoice] = {}

        lidar = ch_idx[LIDAR_CHANNEL]
        i = int(np.searchsorted(lidar.timestamps, t_ref, side="right")) - 1
        msgs = [ref]
        j = i
        while len(msgs) < self.sync.lidar_sweeps and j > 0:
            j -= 1
            m = lidar.messages[j]
            if m.token == ref.token or m.timestamp == t_ref:
                continue
            if t_ref - m.timestamp > self.sync.lidar_window_us:
                break
            msgs.append(m)
        choices[LIDAR_CHANNEL] = ChannelChoice(LIDAR_CHANNEL, msgs, 0)

        for cam in self.cameras:
            c = ch_idx.get(cam)
            if c is None or len(c) == 0:
                choices[cam] = ChannelChoice(cam, reason="no messages in this scene")
                continue
            expected = self.expected_camera_time(cam, t_ref)
            k = _nearest(c.timestamps, expected)
            # Plain nearest matching cannot know the trigger delay, so it accepts a whole rotation more.
            tolerance = self.sync.camera_tolerance_us + (self.sync.lidar_period_us
                                                         if self.sync.camera_match == "nearest" else 0)
            if abs(int(c.timestamps[k]) - expected) > tolerance:
                choices[cam] = ChannelChoice(cam, reason=f"no image within {self.sync.camera_tolerance_us} us "
                                                         f"of the expected trigger time")
                continue
            choices[cam] = ChannelChoice(cam, [c.messages[k]], int(c.timestamps[k]) - t_ref)

        for radar in self.radars:
            c = ch_idx.get(radar)
            if c is None or len(c) == 0 or self.sync.radar_sweeps == 0:
                choices[radar] = ChannelChoice(radar, reason="no messages in this scene" if self.sync.radar_sweeps
                                               else "radar_sweeps is 0")
                continue
            k = _nearest(c.timestamps, t_ref)
            if abs(int(c.timestamps[k]) - t_ref) > self.sync.radar_tolerance_us:
                choices[radar] = ChannelChoice(radar, reason=f"no message within {self.sync.radar_tolerance_us} us")
                continue
            chosen = [c.messages[k]]
            j = k
            while len(chosen) < self.sync.radar_sweeps and j > 0:
                j -= 1
                if t_ref - int(c.timestamps[j]) > self.sync.radar_window_us:
                    break
                chosen.append(c.messages[j])
            choices[radar] = ChannelChoice(radar, chosen, int(c.timestamps[k]) - t_ref)
        return Selection(ref, choices)


class FrameBuilder:
    """Builds synchronized, motion-compensated ``Frame``s of one scene.

    source: NuScenesSource
    scene: scene name or token
    cfg: Config (its ``sync`` and ``data`` sections are used)
    problems: FileProblems recording unreadable files (shared by the builders of one run, so the
        run ends with one summary); a new one when None
    """

    def __init__(self, source, scene: str, cfg: Config, pose_source: str = "ego_pose",
                 problems: Optional[FileProblems] = None):
        self.source = source
        self.cfg = cfg
        self.scene = source.scene(scene)
        self.index = source.index(self.scene["token"])
        self.rig = source.rig(self.scene["token"])
        self.poses = source.pose_stream(self.scene["token"], pose_source)
        self.poses.max_extrapolation_us = cfg.sync.max_pose_extrapolation_us
        self.cameras = [c for c in cfg.data.cameras if c in self.rig]
        self.radars = [r for r in cfg.data.radars if r in self.rig]
        if LIDAR_CHANNEL not in self.index.channels:
            raise ValueError(f"scene {self.scene['name']}: no {LIDAR_CHANNEL} messages: the LiDAR is the "
                             f"reference clock of the synchronizer")
        self.sync = Synchronizer(self.index, self.rig, cfg.sync, self.cameras, self.radars)
        # channel -> messages whose file was missing/unreadable, with the first few paths
        self.missing: FileProblems = FileProblems() if problems is None else problems

    # ------------------------------------------------------------------ references
    @property
    def references(self) -> List:
        """Every LiDAR message of the scene (keyframes and sweeps), in time order."""
        return list(self.index.channels[LIDAR_CHANNEL].messages)

    @property
    def keyframe_references(self) -> List:
        return [m for m in self.references if m.is_key_frame]

    def reference_for_sample(self, sample_token: str):
        sample = self.source.nusc.get("sample", sample_token)
        token = sample["data"][LIDAR_CHANNEL]
        for m in self.index.channels[LIDAR_CHANNEL].messages:
            if m.token == token:
                return m
        raise KeyError(f"sample {sample_token}: its LiDAR record {token} is not in scene {self.scene['name']}")

    # ------------------------------------------------------------------ building
    def plan(self, ref, with_gt: bool = True, selection: Optional[Selection] = None) -> "FramePlan":
        """Everything needed to assemble the frame of one LiDAR reference message (a Message or its
        sample_data token) without the devkit: which files, their timestamps, their sensor -> reference
        ego transforms, camera intrinsics, ego pose and velocity, and the ground truth in the ego frame.
        Plans are small and picklable: the training dataset caches them on disk.

        selection: the messages chosen for ``ref`` when already made (the streaming synchronizer's,
        perception.sync.streaming); None selects them here with ``self.sync.select(ref)``."""
        from ..data.convert import gt_boxes_global

        if isinstance(ref, str):
            ref = next(m for m in self.index.channels[LIDAR_CHANNEL].messages if m.token == ref)
        sel = self.sync.select(ref) if selection is None else selection
        t_ref = ref.timestamp
        times = sorted({m.timestamp for ch in sel.choices.values() for m in ch.messages} | {t_ref})
        pose_at = dict(zip(times, self.poses.transforms(np.array(times, np.int64))))
        T_global_from_ref = pose_at[t_ref]
        T_ref_from_global = invert(T_global_from_ref)

        def read(msg) -> SensorRead:
            cal = self.source.calibration(msg.calibrated_sensor_token, msg.width, msg.height)
            return SensorRead(msg.channel, msg.token, self.source.path(msg), msg.timestamp,
                              T_ref_from_global @ pose_at[msg.timestamp] @ cal.T_ego_from_sensor)

        channels: Dict[str, ChannelPlan] = {}
        for ch, choice in sel.choices.items():
            channels[ch] = ChannelPlan(ch, [read(m) for m in choice.messages], choice.offset_us, choice.reason)
        cameras = {}
        for cam in self.cameras:
            cal = self.rig[cam]
            msgs = sel.choices[cam].messages
            T = channels[cam].reads[0].T_ref_from_sensor if msgs else cal.T_ego_from_sensor
            cameras[cam] = (cal.intrinsics, T, cal.width, cal.height)
        gt = None
        # A recording (perception.data.recording) has no annotation tables: no ground truth.
        if with_gt and ref.is_key_frame and getattr(self.source, "nusc", None) is not None:
            gt = gt_boxes_global(self.source.nusc, ref.sample_token).transformed(T_ref_from_global, "ego")
        return FramePlan(t_ref, self.scene["token"], ref.sample_token if ref.is_key_frame else "", ref.token,
                         T_global_from_ref, self.poses.ego_velocity(t_ref), channels, cameras, gt,
                         self.cfg.data.use_lidar, self.source.radar_default_filters,
                         self.cfg.sync.lidar_remove_close)

    def build(self, ref, drop: Iterable[str] = (), with_gt: bool = True,
              load_images: Optional[bool] = None) -> Frame:
        """The Frame for one LiDAR reference message (a Message or its sample_data token).

        drop: channels (or 'lidar', 'camera', 'radar') treated as failed: absent, nothing read
        """
        load_images = self.cfg.sync.load_images if load_images is None else load_images
        return assemble_frame(self.plan(ref, with_gt), drop, load_images, self.missing)


@dataclass
class SensorRead:
    """One file to read. T_ref_from_sensor: float64[4, 4] sensor -> ego frame at the reference time."""

    channel: str
    token: str
    path: str
    timestamp: int
    T_ref_from_sensor: np.ndarray


@dataclass
class ChannelPlan:
    """The chosen messages of one channel (reads[0] is the primary / reference one)."""

    channel: str
    reads: List[SensorRead]
    offset_us: Optional[int]
    reason: str = ""


@dataclass
class FramePlan:
    """A frame before any file is read (see FrameBuilder.plan).

    cameras: channel -> (intrinsics float64[3, 3], T_ref_from_cam float64[4, 4], width, height) for
        every camera of the rig (the calibration is kept for absent cameras too)
    """

    timestamp: int
    scene_token: str
    sample_token: str
    lidar_token: str
    T_global_from_ego: np.ndarray
    ego_velocity: np.ndarray
    channels: Dict[str, ChannelPlan]
    cameras: Dict[str, tuple]
    gt: Optional[object]
    use_lidar: bool = True
    radar_default_filters: bool = False
    # metres, sensor frame (SyncConfig.lidar_remove_close); 0 keeps every point. The default is the
    # old behaviour, for plans pickled before the field existed (the index key changes with it anyway).
    lidar_remove_close: float = 0.0


def _read_file(read: SensorRead, reader, missing: Counter):
    """(data, None) or (None, one-line error naming the file); an unreadable file is recorded in
    ``missing`` (a FileProblems: counted, the first of a channel logged, the first few paths kept;
    with ``strict`` it raises instead)."""
    from ..data.io import SensorFileError

    try:
        return reader(read.path), None
    except SensorFileError as e:
        _record(missing, read.channel, read.path, str(e))
        return None, str(e)


def _record(missing: Counter, channel: str, path: str, reason: str) -> None:
    if hasattr(missing, "add"):
        missing.add(channel, path, reason)
    else:  # a plain Counter from older callers
        if missing[channel] == 0:
            log.warning("%s (further unreadable %s files are counted, not logged)", reason, channel)
        missing[channel] += 1


def close_mask(points: np.ndarray, radius: float) -> np.ndarray:
    """bool[N]: points (float[N, >= 2], sensor frame, metres) whose horizontal (x, y) distance from the
    sensor is below ``radius`` metres; all False for radius <= 0.

    A circle, where mmdet3d's ``_remove_close`` drops the square |x| < r and |y| < r: the radius means
    the same in every direction. Horizontal only, as theirs: the roof and body returns lie at any
    height below the sensor."""
    if radius <= 0 or not len(points):
        return np.zeros(len(points), bool)
    xy = points[:, :2].astype(np.float64)
    return (xy[:, 0] ** 2 + xy[:, 1] ** 2) < radius * radius


def remove_close(points: np.ndarray, radius: float) -> np.ndarray:
    """The points of a LiDAR sweep (float32[N, C], sensor frame) outside ``radius`` (see close_mask)."""
    if radius <= 0:
        return points
    return points[~close_mask(points, radius)]


def assemble_frame(plan: FramePlan, drop: Iterable[str] = (), load_images: bool = True,
                   missing: Optional[Counter] = None, radar_rows: Optional[Dict[str, int]] = None) -> Frame:
    """Read the planned files and build the motion-compensated Frame (no devkit needed).

    drop: channels (or 'lidar', 'camera', 'radar') treated as failed: absent, nothing read
    missing: counter of unreadable files per channel, updated in place
    radar_rows: when given, filled with radar channel -> its rows in ``radar_points`` (the channels'
        rows follow each other in ``plan.channels`` order), what ``mask_frame`` needs
    """
    from ..data import io
    from ..structures import modality_of

    drop = set(drop)
    missing = FileProblems() if missing is None else missing
    t_ref = plan.timestamp
    status: Dict[str, SensorStatus] = {}

    def dropped(ch: str) -> bool:
        return ch in drop or modality_of(ch) in drop

    # LiDAR sweeps
    lidar_parts = []
    lp = plan.channels[LIDAR_CHANNEL]
    if dropped(LIDAR_CHANNEL) or not plan.use_lidar:
        status[LIDAR_CHANNEL] = SensorStatus(False, 0, plan.lidar_token, 0, 0, "dropped")
    else:
        ref_read, n_missing, ref_error = False, 0, ""
        for r in lp.reads:
            pts, err = _read_file(r, io.read_lidar, missing)
            if pts is None:
                n_missing += 1
                if r.token == plan.lidar_token:
                    ref_error = err
                continue
            ref_read |= r.token == plan.lidar_token
            # The car's own returns, dropped in the sensor frame before compensation moves them (see
            # SyncConfig.lidar_remove_close); getattr: plans pickled before the field existed.
            pts = remove_close(pts, getattr(plan, "lidar_remove_close", 0.0))
            out = np.empty((len(pts), 6), np.float32)
            out[:, :3] = apply(r.T_ref_from_sensor, pts[:, :3].astype(np.float64))
            out[:, 3:5] = pts[:, 3:5]
            out[:, 5] = (t_ref - r.timestamp) * 1e-6
            lidar_parts.append(out)
        # Without the reference sweep the LiDAR is absent: past sweeps alone would show the world
        # as it was, not as it is at t_ref.
        status[LIDAR_CHANNEL] = SensorStatus(ref_read, 0, plan.lidar_token, len(lp.reads), n_missing,
                                             "" if ref_read else f"reference sweep unreadable: {ref_error}")
        if not ref_read:
            lidar_parts = []
    lidar_points = np.concatenate(lidar_parts) if lidar_parts else np.zeros((0, 6), np.float32)

    # Radars
    radar_parts = []
    for ch, cp in plan.channels.items():
        if modality_of(ch) != "radar":
            continue
        if dropped(ch):
            status[ch] = SensorStatus(False, cp.offset_us, "", 0, 0, "dropped")
            continue
        if not cp.reads:
            status[ch] = SensorStatus(False, None, "", 0, 0, cp.reason)
            continue
        n_missing, got, first_error = 0, 0, ""
        for r in cp.reads:
            pts, err = _read_file(r, lambda p: io.read_radar(p, default_filters=plan.radar_default_filters),
                                  missing)
            if pts is None:
                n_missing += 1
                first_error = first_error or err
                continue
            got += 1
            out = np.empty((len(pts), 7), np.float32)
            out[:, :3] = apply(r.T_ref_from_sensor, pts[:, :3].astype(np.float64))
            out[:, 3] = pts[:, 5]  # rcs
            vel = np.zeros((len(pts), 3))
            vel[:, :2] = pts[:, 8:10]  # ego-motion compensated vx, vy in the radar frame
            out[:, 4:6] = rotate(r.T_ref_from_sensor, vel)[:, :2]
            out[:, 6] = (t_ref - r.timestamp) * 1e-6
            radar_parts.append(out)
            if radar_rows is not None:
                radar_rows[ch] = radar_rows.get(ch, 0) + len(out)
        status[ch] = SensorStatus(got > 0, cp.offset_us, cp.reads[0].token, len(cp.reads), n_missing,
                                  "" if got else f"files unreadable: {first_error}")
    radar_points = np.concatenate(radar_parts) if radar_parts else np.zeros((0, 7), np.float32)

    # Cameras
    cameras: List[CameraImage] = []
    for cam, (K, T, width, height) in plan.cameras.items():
        cp = plan.channels[cam]
        if dropped(cam) or not cp.reads:
            status[cam] = SensorStatus(False, cp.offset_us, "", 0, 0, "dropped" if dropped(cam) else cp.reason)
            cameras.append(CameraImage(cam, None, K, T, t_ref, width, height, present=False))
            continue
        r = cp.reads[0]
        image, err = None, ""
        if load_images:
            image, err = _read_file(r, io.read_image, missing)
            present = image is not None
        else:
            present = os.path.isfile(r.path)
            if not present:
                err = f"{r.path}: camera image not found"
                _record(missing, cam, r.path, err)
        status[cam] = SensorStatus(present, cp.offset_us, r.token, 1, 0 if present else 1,
                                   "" if present else f"file unreadable: {err}")
        cameras.append(CameraImage(cam, image, K, T, r.timestamp, width, height, present=present, token=r.token,
                                   filename=r.path))

    return Frame(timestamp=t_ref, scene_token=plan.scene_token, sample_token=plan.sample_token,
                 lidar_token=plan.lidar_token, lidar_points=lidar_points, radar_points=radar_points,
                 cameras=cameras, T_global_from_ego=plan.T_global_from_ego, ego_velocity=plan.ego_velocity,
                 gt=plan.gt, status=status)


def mask_frame(frame: Frame, plan: FramePlan, drop: Iterable[str], radar_rows: Dict[str, int]) -> Frame:
    """The frame that ``assemble_frame(plan, drop)`` gives, made in memory from ``frame`` (assembled
    from ``plan`` with a subset of ``drop``, ``radar_rows`` filled): the dropped channels' points,
    images and status replaced as dropping at read time does, everything else shared (not copied).
    The robustness evaluation builds every frame once and masks it for each sensor failure.
    Unreadable-file records are not touched (the caller keeps those of the channels still present).
    """
    from ..structures import modality_of

    drop = set(drop)
    if not drop:
        return frame

    def dropped(ch: str) -> bool:
        return ch in drop or modality_of(ch) in drop

    status = dict(frame.status)  # same channel order: values are replaced in place
    lidar_points = frame.lidar_points
    if dropped(LIDAR_CHANNEL):
        status[LIDAR_CHANNEL] = SensorStatus(False, 0, plan.lidar_token, 0, 0, "dropped")
        lidar_points = np.zeros((0, 6), np.float32)
    radar_points = frame.radar_points
    keep, start, any_dropped = [], 0, False
    for ch, cp in plan.channels.items():
        if modality_of(ch) != "radar":
            continue
        n = radar_rows.get(ch, 0)
        if dropped(ch):
            status[ch] = SensorStatus(False, cp.offset_us, "", 0, 0, "dropped")
            any_dropped = True
        elif n:
            keep.append(np.arange(start, start + n))
        start += n
    if start != len(frame.radar_points):
        raise ValueError(f"radar_rows count {start} rows, the frame has {len(frame.radar_points)}")
    if any_dropped:
        radar_points = frame.radar_points[np.concatenate(keep)] if keep else np.zeros((0, 7), np.float32)
    cameras = []
    for cam in frame.cameras:
        if dropped(cam.channel):
            K, T, width, height = plan.cameras[cam.channel]
            status[cam.channel] = SensorStatus(False, plan.channels[cam.channel].offset_us, "", 0, 0, "dropped")
            cam = CameraImage(cam.channel, None, K, T, plan.timestamp, width, height, present=False)
        cameras.append(cam)
    return Frame(timestamp=frame.timestamp, scene_token=frame.scene_token, sample_token=frame.sample_token,
                 lidar_token=frame.lidar_token, lidar_points=lidar_points, radar_points=radar_points,
                 cameras=cameras, T_global_from_ego=frame.T_global_from_ego, ego_velocity=frame.ego_velocity,
                 gt=frame.gt, status=status)
