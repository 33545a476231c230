"""nuScenes-format drives as sensor streams, built on the official devkit.

``NuScenesSource(dataroot, version)`` opens any nuScenes-format root (real nuScenes, the shared
real scenes, synthetic drives). For a scene it gives every ``sample_data`` record of every channel
(keyframes and sweeps) as a timestamped ``Message``, a per-channel index of sorted timestamps for
the synchronizer, the ego-pose stream, and the validated sensor rig. Files are read lazily
(``load_lidar`` / ``load_radar`` / ``load_image``), never when the index is built.
"""
from __future__ import annotations

import json
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


# The tables the devkit loads, each of them required (it opens every one), and the optional ones it
# loads when present.
DEVKIT_TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
                 "log", "scene", "sample", "sample_data", "sample_annotation", "map")
OPTIONAL_TABLES = ("lidarseg", "panoptic", "image_annotations")
# Foreign keys whose target table is not their name less "_token" / "_tokens" (None: the row's own table).
IRREGULAR_KEYS = {"prev": None, "next": None,
                  "first_sample_token": "sample", "last_sample_token": "sample",
                  "first_annotation_token": "sample_annotation", "last_annotation_token": "sample_annotation"}


class TableError(DataRootError):
    """The tables of a root are broken (malformed JSON, dangling tokens): a problem in the data rather
    than in the arguments. ``problems`` holds every one as a line (the message names the first);
    ``path`` is the table file of a table that cannot be read, else None."""

    def __init__(self, message: str, problems: List[str], path: Optional[str] = None):
        super().__init__(message)
        self.problems = problems
        self.path = path


def read_tables(dataroot: str, version: str) -> Dict[str, list]:
    """The raw JSON tables of a root, {name: rows}, read once (``open_nuscenes`` hands them to the
    devkit). Raises DataRootError for a missing root, version folder or table, TableError for a
    table that is not JSON (naming the file and the line and column) or not a list of records with
    tokens."""
    table_dir = os.path.join(dataroot, version)
    if not os.path.isdir(dataroot):
        raise DataRootError(f"{dataroot}: data root not found")
    if not os.path.isdir(table_dir):
        have = sorted(d for d in os.listdir(dataroot) if d.startswith("v1.0"))
        raise DataRootError(f"{table_dir}: version folder not found (versions here: {', '.join(have) or 'none'})")
    names = list(DEVKIT_TABLES)
    for table in DEVKIT_TABLES:
        if not os.path.isfile(os.path.join(table_dir, table + ".json")):
            raise DataRootError(f"{os.path.join(table_dir, table + '.json')}: table missing")
    names += [t for t in OPTIONAL_TABLES if os.path.isfile(os.path.join(table_dir, t + ".json"))]
    tables = {}
    for table in names:
        path = os.path.join(table_dir, table + ".json")
        try:
            with open(path, "rb") as f:
                rows = json.loads(f.read())
        except json.JSONDecodeError as e:
            line = f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})"
            raise TableError(line, [line], path) from None
        except UnicodeDecodeError as e:
            line = f"{path}: not UTF-8 text (byte {e.start})"
            raise TableError(line, [line], path) from None
        except OSError as e:
            raise DataRootError(f"{path}: unreadable ({e.strerror or e})") from None
        bad = None
        if not isinstance(rows, list):
            bad = f"{path}: not a list of records (a JSON {type(rows).__name__})"
        else:
            i = next((i for i, r in enumerate(rows) if type(r) is not dict or type(r.get("token")) is not str), None)
            if i is not None:
                bad = f"{path}: record {i} is not an object with a string 'token'"
        if bad:
            raise TableError(bad, [bad], path)
        tables[table] = rows
    return tables


def dangling_tokens(tables: Dict[str, list]) -> List[str]:
    """Every reference to a record that does not exist, one line each, e.g. ``sample_data.json row
    T: ego_pose_token X not in ego_pose.json``. Foreign keys are the fields named ``<table>_token``
    or ``<table>_tokens`` (a list) of a loaded table, plus IRREGULAR_KEYS; an empty token is no
    reference (the ends of prev/next chains). Also every log no map lists in its ``log_tokens``: the
    devkit's log -> map index fails on it. One pass per foreign key over sets of tokens (full
    nuScenes: 2.6M sample_data rows, a few seconds)."""
    tokens = {name: {r["token"] for r in rows} for name, rows in tables.items()}
    out: List[str] = []
    for name, rows in tables.items():
        fields = sorted(set().union(*rows) - {"token"}) if rows else []
        for field in fields:
            if field in IRREGULAR_KEYS:
                target = IRREGULAR_KEYS[field] or name
            elif field.endswith("_token"):
                target = field[:-len("_token")]
            elif field.endswith("_tokens"):
                target = field[:-len("_tokens")]
            else:
                continue
            if target not in tokens:
                continue  # a *_token field of no table we know (e.g. an extension's): nothing to check against
            have = tokens[target]
            if field.endswith("_tokens"):
                for r in rows:
                    refs = r.get(field) or []
                    for v in (refs if isinstance(refs, list) else [refs]):
                        if v and (type(v) is not str or v not in have):
                            out.append(f"{name}.json row {r['token']}: {field} entry {v} not in {target}.json")
            else:
                for r in rows:
                    v = r.get(field)
                    if v and (type(v) is not str or v not in have):
                        out.append(f"{name}.json row {r['token']}: {field} {v} not in {target}.json")
    if "log" in tables and "map" in tables:
        mapped = set()
        for m in tables["map"]:
            refs = m.get("log_tokens") or []
            if isinstance(refs, list):
                mapped.update(t for t in refs if type(t) is str)
        for r in tables["log"]:
            if r["token"] not in mapped:
                out.append(f"log.json row {r['token']}: no map.json row lists it in log_tokens")
    return out


def check_tables(tables: Dict[str, list], table_dir: str = "") -> None:
    """Raise TableError naming the first dangling token (its table file under table_dir) and how
    many more there are; ``problems`` lists them all."""
    lines = dangling_tokens(tables)
    if lines:
        more = f" (and {len(lines) - 1} more dangling token{'s' if len(lines) > 2 else ''})" if len(lines) > 1 else ""
        raise TableError(os.path.join(table_dir, lines[0]) + more, lines)


def open_nuscenes(dataroot: str, version: str, verbose: bool = False, tables: Optional[Dict[str, list]] = None):
    """``NuScenes(version, dataroot)`` with a one-line error for a bad root, version or table.

    The tables are read and checked here first (or taken from ``tables``, as ``read_tables`` gives
    them) and handed to the devkit without reading them again: the devkit's reverse indices fail
    with a bare KeyError on a dangling token, and its JSON errors do not name the file."""
    from nuscenes.nuscenes import NuScenes

    if tables is None:
        tables = read_tables(dataroot, version)
    table_dir = os.path.join(dataroot, version)
    check_tables(tables, table_dir)

    class PreloadedNuScenes(NuScenes):
        def __load_table__(self, table_name):  # not name-mangled: trailing underscores
            if table_name in tables:
                return tables[table_name]
            return super().__load_table__(table_name)

    try:
        return PreloadedNuScenes(version=version, dataroot=dataroot, verbose=verbose)
    except (AssertionError, KeyError, ValueError, OSError, IndexError) as e:
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

    @classmethod
    def from_config(cls, dataroot: str, version: str, cfg, nusc=None) -> "NuScenesSource":
        """The source as ``cfg.sync`` reads it (radar filters, pose extrapolation limit): every tool that
        takes a config opens its root through this, so evaluation, export and replay read the sensors
        exactly as training's index does."""
        return cls(dataroot, version, nusc=nusc, radar_default_filters=cfg.sync.radar_default_filters,
                   max_pose_extrapolation_us=cfg.sync.max_pose_extrapolation_us)

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
        # (scene, channel) -> [count, first message stamped before its predecessor on the prev/next chain]
        out_of_order: Dict[tuple, list] = {}
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
            if sd.get("prev"):
                prev_t = int(self.nusc.get("sample_data", sd["prev"])["timestamp"])
                if msg.timestamp < prev_t:
                    entry = out_of_order.setdefault((scene_token, channel), [0, (msg.token, msg.timestamp, prev_t)])
                    entry[0] += 1
        # The index is in timestamp order whatever the chain says: a message stamped out of order is
        # used at its stamped time. Said once per channel, so that no run is silent about it.
        for (scene_token, channel), (n, (token, t, prev_t)) in out_of_order.items():
            log.warning("%s %s: sample_data %s timestamp %d is before the previous message's (%d)%s; the "
                        "channel's messages are used in timestamp order (tools/doctor.py lists each one)",
                        self.nusc.get("scene", scene_token)["name"], channel, token, t, prev_t,
                        f" ({n} out-of-order timestamps in this channel)" if n > 1 else "")
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
