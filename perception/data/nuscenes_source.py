"""nuScenes-format drives as sensor streams, built on the official devkit.

``NuScenesSource(dataroot, version)`` opens any nuScenes-format root (real nuScenes, the shared
real scenes, synthetic drives). For a scene it gives every ``sample_data`` record of every channel
(keyframes and sweeps) as a timestamped ``Message``, a per-channel index of sorted timestamps for
the synchronizer, the ego-pose stream, and the validated sensor rig. Files are read lazily
(``load_lidar`` / ``load_radar`` / ``load_image``), never when the index is built.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..structures import ALL_CHANNELS, modality_of
from ..sync.calibration import SensorCalibration, SensorRig, calibration_from_record
from ..sync.pose import PoseStream
from . import io

log = logging.getLogger(__name__)


class DataRootError(RuntimeError):
    """The data root or version cannot be used; the message names the path."""


@dataclass(frozen=True)
class Message:
    """One sample_data record as a timestamped sensor message (file not read)."""

    channel: str
    timestamp: int  # us
    token: str
    filename: str  # relative to the data root
    is_key_frame: bool
    sample_token: str
    calibrated_sensor_token: str
    ego_pose_token: str
    width: int = 0
    height: int = 0

    @property
    def modality(self) -> str:
        return modality_of(self.channel)


@dataclass
class ChannelIndex:
    """The messages of one channel of one scene, sorted by timestamp.

    timestamps: int64[N] us, non-decreasing
    """

    channel: str
    timestamps: np.ndarray
    messages: List[Message]

    def __len__(self) -> int:
        return len(self.messages)


@dataclass
class SceneIndex:
    scene_token: str
    name: str
    channels: Dict[str, ChannelIndex]
    sample_tokens: List[str]  # keyframes in time order


def open_nuscenes(dataroot: str, version: str, verbose: bool = False):
    """``NuScenes(version, dataroot)`` with a one-line error for a bad root or version."""
    from nuscenes.nuscenes import NuScenes

    table_dir = os.path.join(dataroot, version)
    if not os.path.isdir(dataroot):
        raise DataRootError(f"{dataroot}: data root not found")
    if not os.path.isdir(table_dir):
        have = sorted(d for d in os.listdir(dataroot) if d.startswith("v1.0"))
        raise DataRootError(f"{table_dir}: version folder not found (versions here: {', '.join(have) or 'none'})")
    for table in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor"):
        if not os.path.isfile(os.path.join(table_dir, table + ".json")):
            raise DataRootError(f"{os.path.join(table_dir, table + '.json')}: table missing")
    try:
        return NuScenes(version=version, dataroot=dataroot, verbose=verbose)
    except (AssertionError, KeyError, ValueError, OSError) as e:
        raise DataRootError(f"{table_dir}: the devkit cannot load this root ({e.__class__.__name__}: {e})") from None


class NuScenesSource:
    """Sensor streams of a nuScenes-format root.

    dataroot: folder holding ``<version>/``, ``samples/``, ``sweeps/``, ``maps/``
    radar_default_filters: apply the devkit's default radar state filters when reading radar
    """

    def __init__(self, dataroot: str, version: str = "v1.0-trainval", nusc=None,
                 radar_default_filters: bool = False, max_pose_extrapolation_us: int = 100_000):
        self.dataroot = dataroot
        self.version = version
        self.nusc = nusc if nusc is not None else open_nuscenes(dataroot, version)
        self.radar_default_filters = radar_default_filters
        self.max_pose_extrapolation_us = max_pose_extrapolation_us
        self._channel_of_cs = {}
        for cs in self.nusc.calibrated_sensor:
            self._channel_of_cs[cs["token"]] = self.nusc.get("sensor", cs["sensor_token"])["channel"]
        self._scene_by_name = {s["name"]: s for s in self.nusc.scene}
        self._indices: Dict[str, SceneIndex] = {}

    # ------------------------------------------------------------------ scenes and messages
    def scene_names(self) -> List[str]:
        return [s["name"] for s in self.nusc.scene]

    def scene(self, name_or_token: str) -> dict:
        if name_or_token in self._scene_by_name:
            return self._scene_by_name[name_or_token]
        try:
            return self.nusc.get("scene", name_or_token)
        except KeyError:
            raise DataRootError(f"{self.dataroot}: no scene {name_or_token!r} "
                                f"(scenes here: {', '.join(sorted(self._scene_by_name)[:10])}...)") from None

    def index(self, scene: str) -> SceneIndex:
        """Per-channel sorted message index of a scene (built once, cached)."""
        rec = self.scene(scene)
        token = rec["token"]
        if token not in self._indices:
            self._build_indices()
        return self._indices[token]

    def _build_indices(self) -> None:
        scene_of_sample = {s["token"]: s["scene_token"] for s in self.nusc.sample}
        per_scene: Dict[str, Dict[str, List[Message]]] = {s["token"]: {} for s in self.nusc.scene}
        for sd in self.nusc.sample_data:
            scene_token = scene_of_sample.get(sd["sample_token"])
            if scene_token is None:
                log.warning("sample_data %s points to unknown sample %s; skipped", sd["token"], sd["sample_token"])
                continue
            channel = self._channel_of_cs.get(sd["calibrated_sensor_token"])
            if channel is None:
                log.warning("sample_data %s has unknown calibrated_sensor %s; skipped", sd["token"],
                            sd["calibrated_sensor_token"])
                continue
            msg = Message(channel, int(sd["timestamp"]), sd["token"], sd["filename"], bool(sd["is_key_frame"]),
                          sd["sample_token"], sd["calibrated_sensor_token"], sd["ego_pose_token"],
                          int(sd.get("width") or 0), int(sd.get("height") or 0))
            per_scene[scene_token].setdefault(channel, []).append(msg)
        for scene in self.nusc.scene:
            channels = {}
            for ch, msgs in per_scene[scene["token"]].items():
                msgs.sort(key=lambda m: (m.timestamp, m.token))
                channels[ch] = ChannelIndex(ch, np.array([m.timestamp for m in msgs], np.int64), msgs)
            samples, tok = [], scene["first_sample_token"]
            while tok:
                samples.append(tok)
                tok = self.nusc.get("sample", tok)["next"]
            self._indices[scene["token"]] = SceneIndex(scene["token"], scene["name"], channels, samples)

    def messages(self, scene: str, channels: Optional[List[str]] = None) -> Iterator[Message]:
        """Every message of the scene (optionally only some channels) in timestamp order."""
        idx = self.index(scene)
        chans = [c for c in (channels or ALL_CHANNELS) if c in idx.channels]
        merged = [m for c in chans for m in idx.channels[c].messages]
        merged.sort(key=lambda m: (m.timestamp, m.channel))
        return iter(merged)

    # ------------------------------------------------------------------ poses and calibration
    def pose_stream(self, scene: str, source: str = "ego_pose") -> PoseStream:
        """The ego-pose stream of a scene: from the ``ego_pose`` records of its sample_data
        (``source='ego_pose'``) or from the CAN-bus ``pose`` messages (``source='can_bus'``,
        needs a ``can_bus/`` folder beside the version folder)."""
        rec = self.scene(scene)
        if source == "can_bus":
            return self._can_bus_poses(rec)
        if source != "ego_pose":
            raise ValueError(f"pose source must be 'ego_pose' or 'can_bus', got {source!r}")
        idx = self.index(rec["token"])
        poses = {}
        for ch in idx.channels.values():
            for m in ch.messages:
                poses[m.ego_pose_token] = None
        recs = sorted((self.nusc.get("ego_pose", t) for t in poses), key=lambda p: p["timestamp"])
        ts, tr, rot = [], [], []
        for p in recs:
            if ts and p["timestamp"] == ts[-1]:
                continue  # several sensors at the same microsecond share one pose
            ts.append(p["timestamp"]); tr.append(p["translation"]); rot.append(p["rotation"])
        return PoseStream(np.array(ts), np.array(tr), np.array(rot), name=f"ego_pose of {rec['name']}",
                          max_extrapolation_us=self.max_pose_extrapolation_us)

    def _can_bus_poses(self, scene_rec: dict) -> PoseStream:
        can_dir = os.path.join(self.dataroot, "can_bus")
        if not os.path.isdir(can_dir):
            raise DataRootError(f"{can_dir}: no CAN-bus folder for pose messages")
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        msgs = NuScenesCanBus(dataroot=self.dataroot).get_messages(scene_rec["name"], "pose")
        if not msgs:
            raise DataRootError(f"{can_dir}: no CAN-bus pose messages for {scene_rec['name']}")
        msgs = sorted(msgs, key=lambda m: m["utime"])
        ts = np.array([m["utime"] for m in msgs], np.int64)
        keep = np.concatenate([[True], np.diff(ts) > 0])
        return PoseStream(ts[keep], np.array([m["pos"] for m in msgs])[keep],
                          np.array([m["orientation"] for m in msgs])[keep],
                          name=f"can_bus pose of {scene_rec['name']}",
                          max_extrapolation_us=self.max_pose_extrapolation_us)

    @lru_cache(maxsize=None)
    def calibration(self, calibrated_sensor_token: str, width: int = 0, height: int = 0) -> SensorCalibration:
        """The validated calibration of one calibrated_sensor record (cached)."""
        rec = self.nusc.get("calibrated_sensor", calibrated_sensor_token)
        return calibration_from_record(self._channel_of_cs[calibrated_sensor_token], rec, width, height)

    def rig(self, scene: str) -> SensorRig:
        """The scene's sensor rig (one calibration per channel; each record validated)."""
        idx = self.index(scene)
        sensors = {}
        for ch, cidx in idx.channels.items():
            m = cidx.messages[0]
            sensors[ch] = self.calibration(m.calibrated_sensor_token, m.width, m.height)
        return SensorRig(sensors)

    # ------------------------------------------------------------------ lazy file reading
    def path(self, msg: Message) -> str:
        return os.path.join(self.dataroot, msg.filename)

    def load_lidar(self, msg: Message) -> np.ndarray:
        """float32[N, 5] (x, y, z, intensity, ring), LIDAR_TOP frame."""
        return io.read_lidar(self.path(msg))

    def load_radar(self, msg: Message) -> np.ndarray:
        """float32[N, 18] radar fields (io.RADAR_FIELDS), radar frame."""
        return io.read_radar(self.path(msg), default_filters=self.radar_default_filters)

    def load_image(self, msg: Message) -> np.ndarray:
        """uint8[H, W, 3] RGB."""
        return io.read_image(self.path(msg))
