"""Recorded drives (ROS 1 bags, ROS 2 bags, MCAP) as sensor streams, beside the nuScenes source.

``RecordingSource(path, rig_file)`` reads a recording with ``rosbags`` (pure Python, no ROS install)
and gives the synchronizer what ``NuScenesSource`` gives it: one scene (the recording), per-channel
sorted ``Message`` indices, the ego-pose stream and the validated sensor rig. Paths: ``*.bag`` (ROS 1),
``*.mcap`` (ROS 2 MCAP), ``*.db3`` or a ROS 2 bag folder (sqlite3 or MCAP storage).

The rig file (YAML) maps topics to the project's channels and gives what the recording lacks::

    scene: my-drive                       # optional; default: the recording's file name
    base_frame: base_link                 # the ego frame (rear axle, x forward, z up)
    channels:
      LIDAR_TOP: {topic: /lidar/points}   # PointCloud2 with x, y, z (intensity, ring optional)
      CAM_FRONT: {topic: /cam_front/image/compressed, camera_info: /cam_front/camera_info}
      RADAR_FRONT:                        # PointCloud2; fields: our name -> the cloud's field
        topic: /radar_front/points
        fields: {x: x, y: y, z: z, rcs: rcs, vx_comp: vx_comp, vy_comp: vy_comp}
    extrinsics:                           # sensor frame -> base_frame where /tf_static lacks it
      lidar_link: {translation: [0.9, 0.0, 1.8], rotation: [1, 0, 0, 0]}   # (w, x, y, z)
    pose:
      tf_parent: map                      # /tf parent -> base_frame gives the ego pose, if recorded
      gnss: /gps/fix                      # else NavSatFix + Imu + Odometry through the filter
      imu: /imu
      odometry: /odom
      origin: [42.3368, -71.0578, 0.0]    # optional ENU origin (lat, lon, alt); default: first fix
    keyframes: /nuscenes/keyframes        # optional std_msgs/Header topic (frame_id = sample token)
    stamp_tolerance_ms: 50                # doctor: header vs receive time

Message time is the header stamp. A sensor message's payload is decoded once, when the recording is
opened, into files of the nuScenes layout under a cache folder (LiDAR ``.pcd.bin``, radar ``.pcd``,
camera images as recorded: JPEG/PNG bytes as they were, raw images as PNG): the synchronizer, the
frame assembly and replay read them as they read a nuScenes root, and memory stays flat over a long
recording. Calibration: sensor -> base from /tf_static (chained through intermediate frames), else
the rig file's ``extrinsics``; intrinsics from CameraInfo; each sensor then goes through the same
validation as a nuScenes calibrated_sensor record (perception.sync.calibration).

Ego pose: /tf ``tf_parent -> base_frame`` when recorded, else the GNSS + IMU + odometry filter
(perception.sync.gnss). Keyframes: with a ``keyframes`` topic, the LiDAR messages at its stamps
(a converted nuScenes scene keeps its samples); without one, every LiDAR message is a keyframe with
its own token.

Errors (``RecordingError``), each one line naming the file and the topic, with the message index where
one message is at fault: a rig topic the recording lacks, a topic of an unsupported type (or of the
wrong type for its role), a PointCloud2 without x/y/z, header stamps going backwards within a topic,
a message that cannot be decoded, a truncated or unreadable file, a sensor frame with no transform
to the base frame.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..structures import ALL_CHANNELS, LIDAR_CHANNEL, modality_of
from ..sync.calibration import CalibrationError, SensorCalibration, SensorRig, calibration_from_record
from ..sync.pose import PoseStream
from . import io, rosmsg
from .nuscenes_source import ChannelIndex, DataRootError, Message, SceneIndex

log = logging.getLogger(__name__)

SENSOR_TYPES = {"lidar": (rosmsg.POINTCLOUD2,), "radar": (rosmsg.POINTCLOUD2,),
                "camera": (rosmsg.COMPRESSED_IMAGE, rosmsg.IMAGE)}
KNOWN_TYPES = {rosmsg.POINTCLOUD2, rosmsg.IMAGE, rosmsg.COMPRESSED_IMAGE, rosmsg.CAMERA_INFO, rosmsg.NAVSATFIX,
               rosmsg.IMU, rosmsg.ODOMETRY, rosmsg.TFMESSAGE, rosmsg.HEADER}
LIDAR_FIELDS = ("x", "y", "z", "intensity", "ring")
RADAR_REQUIRED = io.RADAR_MODEL_FIELDS
# Radar fields a cloud may lack, with the value that lets the devkit's default filters keep the return.
RADAR_DEFAULTS = {"invalid_state": 0.0, "dyn_prop": 0.0, "ambig_state": 3.0}


class RecordingError(DataRootError):
    """A recording or rig file cannot be used; the message names the file, topic and message index."""


@dataclass
class ChannelSpec:
    channel: str
    topic: str
    camera_info: Optional[str] = None
    frame: Optional[str] = None  # overrides the messages' header.frame_id
    fields: Dict[str, str] = field(default_factory=dict)  # our field name -> the cloud's


@dataclass
class PoseSpec:
    tf_parent: str = "map"
    gnss: Optional[str] = None
    imu: Optional[str] = None
    odometry: Optional[str] = None
    origin: Optional[Tuple[float, float, float]] = None
    source: str = "auto"  # 'auto' (tf when recorded, else gnss) | 'tf' | 'gnss'


@dataclass
class RigFile:
    path: str
    channels: Dict[str, ChannelSpec]
    base_frame: str = "base_link"
    extrinsics: Dict[str, Tuple[List[float], List[float]]] = field(default_factory=dict)  # frame -> (t, q wxyz)
    pose: PoseSpec = field(default_factory=PoseSpec)
    keyframes: Optional[str] = None
    scene: Optional[str] = None
    stamp_tolerance_ms: float = 50.0

    def topics(self) -> Dict[str, str]:
        """{topic: role}: channel names for sensors, 'camera_info:<channel>', 'gnss', 'imu', ..."""
        out = {}
        for ch, spec in self.channels.items():
            out[spec.topic] = ch
            if spec.camera_info:
                out[spec.camera_info] = f"camera_info:{ch}"
        for role in ("gnss", "imu", "odometry"):
            if getattr(self.pose, role):
                out[getattr(self.pose, role)] = role
        if self.keyframes:
            out[self.keyframes] = "keyframes"
        return out


def load_rig_file(path: str) -> RigFile:
    """Parse and check a rig file; RecordingError naming the file and the key for a bad one."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise RecordingError(f"{path}: rig file unreadable ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise RecordingError(f"{path}: rig file is not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("channels"), dict) or not raw["channels"]:
        raise RecordingError(f"{path}: rig file needs a 'channels' mapping (channel: {{topic: ...}})")
    known = {"scene", "base_frame", "channels", "extrinsics", "pose", "keyframes", "stamp_tolerance_ms"}
    if set(raw) - known:
        raise RecordingError(f"{path}: unknown key(s) {sorted(set(raw) - known)} (known: {sorted(known)})")
    channels = {}
    for ch, spec in raw["channels"].items():
        if ch not in ALL_CHANNELS:
            raise RecordingError(f"{path}: channels.{ch}: not a channel of the model ({', '.join(ALL_CHANNELS)})")
        if not isinstance(spec, dict) or not isinstance(spec.get("topic"), str):
            raise RecordingError(f"{path}: channels.{ch}.topic: missing (a topic name)")
        if modality_of(ch) == "camera" and not spec.get("camera_info"):
            raise RecordingError(f"{path}: channels.{ch}.camera_info: missing (the CameraInfo topic: intrinsics)")
        channels[ch] = ChannelSpec(ch, spec["topic"], spec.get("camera_info"), spec.get("frame"),
                                   {str(k): str(v) for k, v in (spec.get("fields") or {}).items()})
    extr = {}
    for frame, e in (raw.get("extrinsics") or {}).items():
        try:
            t = [float(v) for v in e["translation"]]
            q = [float(v) for v in e["rotation"]]
        except (KeyError, TypeError, ValueError):
            raise RecordingError(f"{path}: extrinsics.{frame}: needs translation [x, y, z] and rotation [w, x, y, z]") from None
        extr[str(frame)] = (t, q)
    p = raw.get("pose") or {}
    origin = p.get("origin")
    if origin is not None:
        try:
            origin = tuple(float(v) for v in origin)
            assert len(origin) == 3 and np.isfinite(origin).all()
        except (TypeError, ValueError, AssertionError):
            raise RecordingError(f"{path}: pose.origin: needs [latitude, longitude, altitude]") from None
    pose = PoseSpec(p.get("tf_parent", "map"), p.get("gnss"), p.get("imu"), p.get("odometry"), origin,
                    p.get("source", "auto"))
    if pose.source not in ("auto", "tf", "gnss"):
        raise RecordingError(f"{path}: pose.source: 'auto', 'tf' or 'gnss', got {pose.source!r}")
    return RigFile(path, channels, raw.get("base_frame", "base_link"), extr, pose, raw.get("keyframes"),
                   raw.get("scene"), float(raw.get("stamp_tolerance_ms", 50.0)))


@dataclass
class TopicTimes:
    """Per topic: header stamps and receive (log) times, us, in recording order."""

    topic: str
    msgtype: str
    header_us: List[int] = field(default_factory=list)
    receive_us: List[int] = field(default_factory=list)


def _open_reader(path: str):
    from rosbags.highlevel import AnyReader

    p = Path(path)
    if not p.exists():
        raise RecordingError(f"{path}: recording not found")
    try:
        reader = AnyReader([p])
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises many kinds; all mean "this file cannot be read"
        raise RecordingError(f"{path}: cannot open the recording ({e.__class__.__name__}: {e}); truncated or "
                             f"not a ROS 1 bag / ROS 2 bag / MCAP file?") from None
    return reader


def _matrix(t, q_wxyz) -> np.ndarray:
    from ..sync.calibration import _quaternion_matrix

    T = np.eye(4)
    T[:3, :3] = _quaternion_matrix(q_wxyz)
    T[:3, 3] = t
    return T


def _tf_matrix(tr) -> np.ndarray:
    q = tr.rotation
    return _matrix([tr.translation.x, tr.translation.y, tr.translation.z], [q.w, q.x, q.y, q.z])


def _wxyz(R: np.ndarray) -> List[float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return [float(w), float(x), float(y), float(z)]


class RecordingSource:
    """Sensor streams of one recording (see module doc). The interface is NuScenesSource's, with one
    scene; ``nusc`` is None (no ground truth).

    path: the recording; rig: a RigFile or the path of one
    cache_dir: where the decoded sensor files go (default: a folder under the system temp dir keyed
        by the recording's path, size and time and the rig file's text; reused when complete)
    """

    version = "recording"
    nusc = None

    def __init__(self, path: str, rig, cache_dir: Optional[str] = None, radar_default_filters: bool = False,
                 max_pose_extrapolation_us: int = 100_000):
        self.recording = str(path)
        self.rig_file = rig if isinstance(rig, RigFile) else load_rig_file(rig)
        self.radar_default_filters = radar_default_filters
        self.max_pose_extrapolation_us = max_pose_extrapolation_us
        self.name = self.rig_file.scene or os.path.splitext(os.path.basename(self.recording.rstrip("/")))[0]
        if cache_dir is None:
            st = os.stat(self.recording)
            with open(self.rig_file.path, "rb") as f:
                rig_text = f.read()
            key = hashlib.sha1(f"{os.path.abspath(self.recording)}|{st.st_size}|{st.st_mtime_ns}".encode() + rig_text).hexdigest()[:16]
            cache_dir = os.path.join(tempfile.gettempdir(), "perception-recordings", key)
        self.dataroot = cache_dir  # message filenames are relative to it, as in a nuScenes root
        self.topic_times: Dict[str, TopicTimes] = {}
        self.unmapped_topics: Dict[str, str] = {}  # sensor-type topics of the recording the rig does not map
        self.gnss_pose = None  # FusedPose when the pose came from the filter
        self._read()

    # ------------------------------------------------------------------ reading the recording
    def _err(self, text: str) -> RecordingError:
        return RecordingError(f"{self.recording}: {text}")

    def _read(self) -> None:
        rig = self.rig_file
        reader = _open_reader(self.recording)
        try:
            self._read_open(reader, rig)
        finally:
            try:
                reader.close()
            except Exception:  # noqa: BLE001
                pass

    def _read_open(self, reader, rig: RigFile) -> None:
        types = {c.topic: c.msgtype for c in reader.connections}
        roles = rig.topics()
        for topic, role in roles.items():
            if topic not in types:
                raise self._err(f"topic {topic} ({role} in {rig.path}) is not in the recording "
                                f"(topics: {', '.join(sorted(types)) or 'none'})")
            want = SENSOR_TYPES.get(modality_of(role)) if role in ALL_CHANNELS else {
                "gnss": (rosmsg.NAVSATFIX,), "imu": (rosmsg.IMU,), "odometry": (rosmsg.ODOMETRY,),
                "keyframes": (rosmsg.HEADER,)}.get(role, (rosmsg.CAMERA_INFO,))
            if types[topic] not in KNOWN_TYPES:
                raise self._err(f"topic {topic} ({role}): unknown message type {types[topic]} (readable: "
                                f"{', '.join(sorted(KNOWN_TYPES))})")
            if types[topic] not in want:
                raise self._err(f"topic {topic} ({role}): message type {types[topic]}, expected {' or '.join(want)}")
        for topic, typ in types.items():
            if topic not in roles and typ in (rosmsg.POINTCLOUD2, rosmsg.IMAGE, rosmsg.COMPRESSED_IMAGE):
                self.unmapped_topics[topic] = typ
                log.warning("%s: sensor topic %s (%s) is not in the rig file %s: not used", self.recording, topic, typ, rig.path)
        wanted = set(roles) | {"/tf_static", "/tf"}
        conns = [c for c in reader.connections if c.topic in wanted]
        if "/tf" in types and types["/tf"] != rosmsg.TFMESSAGE or "/tf_static" in types and types["/tf_static"] != rosmsg.TFMESSAGE:
            raise self._err("/tf or /tf_static is not a tf2_msgs/msg/TFMessage topic")
        os.makedirs(self.dataroot, exist_ok=True)

        msgs: Dict[str, List[Message]] = {ch: [] for ch in rig.channels}
        frame_of: Dict[str, str] = {}
        static: Dict[str, Tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_from_child)
        caminfo: Dict[str, Tuple[np.ndarray, int, int, str]] = {}
        pose_t, pose_T = [], []
        keyframes: Dict[int, str] = {}
        fixes, imus, odoms = [], [], []
        count: Dict[str, int] = {}
        last_stamp: Dict[str, int] = {}
        n_sensor = 0
        it = reader.messages(connections=conns)
        while True:
            try:
                conn, log_ns, raw = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - a truncated chunk or record surfaces here
                where = ", ".join(f"{t} after message {n - 1}" for t, n in sorted(count.items())) or "before any message"
                raise self._err(f"cannot read further ({e.__class__.__name__}: {e}); truncated? ({where})") from None
            topic = conn.topic
            i = count.get(topic, 0)
            count[topic] = i + 1
            try:
                m = reader.deserialize(raw, conn.msgtype)
            except Exception as e:  # noqa: BLE001
                raise self._err(f"topic {topic} message {i}: cannot decode {conn.msgtype} ({e})") from None
            recv = int(log_ns) // 1000
            if topic in ("/tf", "/tf_static") and topic not in roles:
                for tr in m.transforms:
                    T = _tf_matrix(tr.transform)
                    if topic == "/tf_static":
                        static[tr.child_frame_id] = (tr.header.frame_id, T)
                    elif tr.child_frame_id == rig.base_frame and tr.header.frame_id == rig.pose.tf_parent:
                        pose_t.append(rosmsg.stamp_us(tr.header.stamp)); pose_T.append(T)
                self._times(topic, conn.msgtype, rosmsg.stamp_us(m.transforms[0].header.stamp) if m.transforms else recv, recv)
                continue
            stamp = rosmsg.stamp_us(m.header.stamp if hasattr(m, "header") else m.stamp)
            if conn.msgtype == rosmsg.HEADER:
                stamp = rosmsg.stamp_us(m.stamp)
            if topic in last_stamp and stamp < last_stamp[topic]:
                raise self._err(f"topic {topic} message {i}: header stamp {stamp} us is before the previous "
                                f"message's ({last_stamp[topic]} us): stamps must not go backwards within a topic")
            last_stamp[topic] = stamp
            self._times(topic, conn.msgtype, stamp, recv)
            role = roles[topic]
            if role == "keyframes":
                keyframes[stamp] = m.frame_id
            elif role == "gnss":
                cov = np.asarray(m.position_covariance, np.float64).reshape(9)[[0, 4, 8]]
                if int(m.position_covariance_type) == 0:
                    cov[:] = np.nan
                fixes.append((stamp, m.latitude, m.longitude, m.altitude, int(m.status.status), *cov))
            elif role == "imu":
                oc = np.asarray(m.orientation_covariance, np.float64).reshape(9)
                rp = (np.nan, np.nan)
                if oc[0] >= 0:
                    from scipy.spatial.transform import Rotation

                    o = m.orientation
                    yaw_pitch_roll = Rotation.from_quat([o.x, o.y, o.z, o.w]).as_euler("ZYX")
                    rp = (yaw_pitch_roll[2], yaw_pitch_roll[1])
                imus.append((stamp, m.angular_velocity.z, *rp))
            elif role == "odometry":
                tc = np.asarray(m.twist.covariance, np.float64).reshape(36)
                odoms.append((stamp, m.twist.twist.linear.x, tc[0] if tc[0] > 0 else np.nan))
            elif role.startswith("camera_info:"):
                ch = role.split(":", 1)[1]
                K = np.asarray(getattr(m, "k", None) if hasattr(m, "k") else m.K, np.float64).reshape(3, 3)
                if ch not in caminfo:
                    caminfo[ch] = (K, int(m.width), int(m.height), m.header.frame_id)
            else:
                ch = role
                spec = rig.channels[ch]
                frame_of.setdefault(ch, spec.frame or m.header.frame_id)
                rel = self._write_payload(ch, spec, topic, i, stamp, conn.msgtype, m)
                w = h = 0
                if conn.msgtype == rosmsg.IMAGE:
                    w, h = int(m.width), int(m.height)
                msgs[ch].append(Message(ch, stamp, f"{topic}#{i}", rel, False, "", ch, "", w, h))
                n_sensor += 1
        for topic, role in roles.items():
            if not count.get(topic):
                raise self._err(f"topic {topic} ({role}) holds no message")

        self._build_rig(rig, frame_of, static, caminfo, msgs)
        self._build_index(msgs, keyframes)
        self._build_poses(rig, pose_t, pose_T, fixes, imus, odoms)
        log.info("%s: %d sensor messages of %d channels decoded into %s", self.recording, n_sensor, len(msgs), self.dataroot)

    def _times(self, topic: str, msgtype: str, header_us: int, recv_us: int) -> None:
        tt = self.topic_times.get(topic)
        if tt is None:
            tt = self.topic_times[topic] = TopicTimes(topic, msgtype)
        tt.header_us.append(header_us)
        tt.receive_us.append(recv_us)

    def _write_payload(self, ch: str, spec: ChannelSpec, topic: str, i: int, stamp: int, msgtype: str, m) -> str:
        """Decode one sensor message into its file under the cache folder; returns the relative path."""
        from ..fileio import atomic_write_bytes

        mod = modality_of(ch)
        if mod == "camera":
            if msgtype == rosmsg.COMPRESSED_IMAGE:
                fmt = str(m.format).lower()
                ext = "png" if "png" in fmt else "jpg"
                data = np.asarray(m.data, np.uint8).tobytes()
            else:
                data, ext = self._encode_raw_image(topic, i, m), "png"
            rel = f"samples/{ch}/{ch}__{stamp}__{i}.{ext}"
        else:
            names = LIDAR_FIELDS if mod == "lidar" else io.RADAR_FIELDS
            want = {ours: spec.fields.get(ours, ours) for ours in names}
            try:
                cols = rosmsg.cloud_columns(m, list(want.values()))
            except ValueError as e:
                raise self._err(f"topic {topic} message {i}: bad PointCloud2 ({e})") from None
            have = [f.name for f in m.fields]
            required = ("x", "y", "z") if mod == "lidar" else RADAR_REQUIRED
            lacking = [want[r] for r in required if want[r] not in cols]
            if lacking:
                raise self._err(f"topic {topic} message {i}: PointCloud2 without field(s) {', '.join(lacking)} "
                                f"(fields: {', '.join(have) or 'none'}; map names in the rig file's channels.{ch}.fields)")
            n = int(m.width) * int(m.height)
            if mod == "lidar":
                pts = np.zeros((n, 5), np.float32)
                for k, ours in enumerate(LIDAR_FIELDS):
                    if want[ours] in cols:
                        pts[:, k] = cols[want[ours]]
                rel = f"samples/{ch}/{ch}__{stamp}__{i}.pcd.bin"
                data = pts.astype("<f4").tobytes()
            else:
                rec = np.zeros((n, len(io.RADAR_FIELDS)), np.float32)
                for k, ours in enumerate(io.RADAR_FIELDS):
                    rec[:, k] = cols[want[ours]] if want[ours] in cols else RADAR_DEFAULTS.get(ours, 0.0)
                rel = f"samples/{ch}/{ch}__{stamp}__{i}.pcd"
                header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS " + " ".join(io.RADAR_FIELDS)
                          + "\nSIZE " + " ".join(["4"] * 18) + "\nTYPE " + " ".join(["F"] * 18) + "\nCOUNT "
                          + " ".join(["1"] * 18) + f"\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n")
                data = header.encode("ascii") + rec.astype("<f4").tobytes()
        path = os.path.join(self.dataroot, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, data)
        return rel

    def _encode_raw_image(self, topic: str, i: int, m) -> bytes:
        import cv2

        enc = str(m.encoding).lower()
        H, W = int(m.height), int(m.width)
        buf = np.asarray(m.data, np.uint8)
        chans = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
        if chans is None:
            raise self._err(f"topic {topic} message {i}: Image encoding {m.encoding!r} not supported "
                            f"(rgb8, bgr8, rgba8, bgra8, mono8)")
        try:
            img = np.lib.stride_tricks.as_strided(buf, (H, W * chans), (int(m.step), 1)).reshape(H, W, chans).copy()
        except ValueError:
            raise self._err(f"topic {topic} message {i}: Image data of {len(buf)} bytes does not hold {H}x{W} {enc}") from None
        if enc.startswith("rgb"):
            img = img[..., [2, 1, 0] + ([3] if chans == 4 else [])]
        ok, png = cv2.imencode(".png", img)
        return png.tobytes()

    def _build_rig(self, rig: RigFile, frame_of, static, caminfo, msgs) -> None:
        def to_base(frame: str, ch: str) -> np.ndarray:
            T = np.eye(4)
            f, seen = frame, set()
            while f != rig.base_frame:
                if f in static and f not in seen:
                    seen.add(f)
                    parent, Tp = static[f]
                    T = Tp @ T
                    f = parent
                elif f in rig.extrinsics:
                    t, q = rig.extrinsics[f]
                    return _matrix(t, q) @ T
                else:
                    topic = rig.channels[ch].topic
                    raise self._err(f"topic {topic} message 0: no transform from frame {f!r} to {rig.base_frame!r} "
                                    f"in /tf_static nor in {rig.path} extrinsics")
            return T

        self._cal: Dict[str, SensorCalibration] = {}
        for ch, spec in rig.channels.items():
            if not msgs[ch]:
                continue
            frame = frame_of[ch]
            if modality_of(ch) == "camera":
                if spec.camera_info and spec.camera_info in self.topic_times and ch not in caminfo:
                    raise self._err(f"topic {spec.camera_info}: no CameraInfo decoded for {ch}")
                K, w, h, info_frame = caminfo[ch]
                frame = spec.frame or frame
                for m in msgs[ch]:
                    object.__setattr__(m, "width", w)
                    object.__setattr__(m, "height", h)
            T = to_base(frame, ch)
            rec = {"token": ch, "translation": T[:3, 3].tolist(), "rotation": _wxyz(T[:3, :3])}
            if modality_of(ch) == "camera":
                rec["camera_intrinsic"] = caminfo[ch][0].tolist()
            where = f"{self.recording} /tf_static + {spec.camera_info or spec.topic}"
            cal = calibration_from_record(ch, rec, *(caminfo[ch][1:3] if ch in caminfo else (0, 0)), where=where)
            # Keep the chained matrix itself: the quaternion round trip above only validates it.
            cal.T_ego_from_sensor = T
            self._cal[ch] = cal

    def _build_index(self, msgs: Dict[str, List[Message]], keyframes: Dict[int, str]) -> None:
        channels = {}
        samples = []
        for ch, lst in msgs.items():
            if not lst:
                continue
            if ch == LIDAR_CHANNEL:
                for k, m in enumerate(lst):
                    key = m.timestamp in keyframes if keyframes else True
                    tok = keyframes.get(m.timestamp, "") if keyframes else m.token
                    lst[k] = Message(m.channel, m.timestamp, m.token, m.filename, key, tok if key else "",
                                     m.calibrated_sensor_token, "", m.width, m.height)
                samples = [m.sample_token for m in lst if m.is_key_frame]
            lst.sort(key=lambda m: (m.timestamp, m.token))
            channels[ch] = ChannelIndex(ch, np.array([m.timestamp for m in lst], np.int64), lst)
        self._index = SceneIndex(self.name, self.name, channels, samples)

    def _build_poses(self, rig: RigFile, pose_t, pose_T, fixes, imus, odoms) -> None:
        from ..sync.gnss import GnssStreams, fuse

        use_tf = rig.pose.source == "tf" or (rig.pose.source == "auto" and pose_t)
        if use_tf:
            if not pose_t:
                raise self._err(f"no /tf transform {rig.pose.tf_parent} -> {rig.base_frame} (pose.source is 'tf')")
            ts = np.array(pose_t, np.int64)
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            keep = np.concatenate([[True], np.diff(ts) > 0])
            Ts = np.array(pose_T)[order][keep]
            self._poses = PoseStream(ts[keep], Ts[:, :3, 3], np.array([_wxyz(R) for R in Ts[:, :3, :3]]),
                                     name=f"{self.recording} /tf {rig.pose.tf_parent}->{rig.base_frame}",
                                     max_extrapolation_us=self.max_pose_extrapolation_us)
            return
        if not fixes:
            raise self._err(f"no ego pose: no /tf {rig.pose.tf_parent} -> {rig.base_frame} and no GNSS topic "
                            f"(pose.gnss in {rig.path})")
        f = np.array(fixes, np.float64)
        im = np.array(imus, np.float64).reshape(-1, 4)
        od = np.array(odoms, np.float64).reshape(-1, 3)
        streams = GnssStreams(f[:, 0].astype(np.int64), f[:, 1:4], f[:, 4].astype(int), f[:, 5:8],
                              im[:, 0].astype(np.int64), im[:, 1], im[:, 2:4], od[:, 0].astype(np.int64), od[:, 1], od[:, 2])
        self.gnss_pose = fuse(streams, rig.pose.origin, name=f"{self.recording} {rig.pose.gnss}")
        self._poses = self.gnss_pose.pose_stream(f"{self.recording} GNSS/IMU/odometry filter", self.max_pose_extrapolation_us)

    # ------------------------------------------------------------------ the NuScenesSource interface
    def scene_names(self) -> List[str]:
        return [self.name]

    def scene(self, name_or_token: str) -> dict:
        if name_or_token not in (self.name, None):
            raise RecordingError(f"{self.recording}: no scene {name_or_token!r} (a recording holds one: {self.name})")
        samples = self._index.sample_tokens
        return {"name": self.name, "token": self.name, "first_sample_token": samples[0] if samples else "",
                "last_sample_token": samples[-1] if samples else "", "nbr_samples": len(samples)}

    def index(self, scene: str) -> SceneIndex:
        self.scene(scene)
        return self._index

    def messages(self, scene: str, channels: Optional[List[str]] = None) -> Iterator[Message]:
        idx = self.index(scene)
        chans = [c for c in (channels or ALL_CHANNELS) if c in idx.channels]
        merged = [m for c in chans for m in idx.channels[c].messages]
        merged.sort(key=lambda m: (m.timestamp, m.channel))
        return iter(merged)

    def pose_stream(self, scene: str, source: str = "ego_pose") -> PoseStream:
        self.scene(scene)
        return self._poses

    def calibration(self, calibrated_sensor_token: str, width: int = 0, height: int = 0) -> SensorCalibration:
        return self._cal[calibrated_sensor_token]

    def rig(self, scene: str) -> SensorRig:
        self.scene(scene)
        return SensorRig(dict(self._cal))

    def path(self, msg: Message) -> str:
        return os.path.join(self.dataroot, msg.filename)

    def load_lidar(self, msg: Message) -> np.ndarray:
        return io.read_lidar(self.path(msg))

    def load_radar(self, msg: Message) -> np.ndarray:
        return io.read_radar(self.path(msg), default_filters=self.radar_default_filters)

    def load_image(self, msg: Message) -> np.ndarray:
        return io.read_image(self.path(msg))

    # ------------------------------------------------------------------ doctor
    def stamp_disagreements(self) -> Dict[str, Tuple[float, int]]:
        """{topic: (max |receive - header| ms, message index)} over every topic read."""
        out = {}
        for topic, tt in self.topic_times.items():
            d = np.abs(np.array(tt.receive_us, np.int64) - np.array(tt.header_us, np.int64))
            if len(d):
                k = int(np.argmax(d))
                out[topic] = (float(d[k]) / 1000.0, k)
        return out
