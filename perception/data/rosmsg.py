"""ROS message builders and a writer for the three recording formats, on ``rosbags`` and ``mcap``.

The builders take plain numbers and arrays and return message objects of the chosen typestore: ROS 2
(Humble definitions) or ROS 1 (Noetic: ``CameraInfo.K`` instead of ``.k``, a ``seq`` in the header).
``RecordingWriter`` writes them as

- ``.mcap``: one MCAP file with the ROS 2 profile (``ros2msg`` schemas, CDR messages), written with
  ``mcap``'s writer and the schema text rosbags generates, so ROS 2 tools and Foxglove read it;
- ``.bag``: a ROS 1 bag (rosbags' rosbag1 writer);
- ``.db3`` or a folder: a ROS 2 bag with the sqlite3 storage (rosbags' rosbag2 writer; the bag is
  the folder, as ``ros2 bag record`` makes it).

Times: integer microseconds (the project's convention) become ROS ``(sec, nanosec)`` exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

# PointField datatypes (sensor_msgs/PointField) and their numpy types.
POINTFIELD_DTYPE = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
FLOAT32 = 7

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
IMU = "sensor_msgs/msg/Imu"
ODOMETRY = "nav_msgs/msg/Odometry"
TFMESSAGE = "tf2_msgs/msg/TFMessage"
HEADER = "std_msgs/msg/Header"


def typestore(ros1: bool):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    if TFMESSAGE not in ts.types:
        # rosbags' Noetic store leaves out tf2_msgs; its one message, as tf2_msgs/msg/TFMessage.msg says.
        ts.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", TFMESSAGE))
    return ts


def stamp_us(stamp) -> int:
    """ROS time (sec, nanosec) -> integer microseconds (nanoseconds below 1 us are dropped)."""
    return int(stamp.sec) * 1_000_000 + int(stamp.nanosec) // 1000


class MessageFactory:
    """Builds messages of one typestore (``ros1``: Noetic, else Humble)."""

    def __init__(self, ros1: bool = False):
        self.ros1 = ros1
        self.ts = typestore(ros1)
        self.T = self.ts.types

    def time(self, t_us: int):
        return self.T["builtin_interfaces/msg/Time"](sec=int(t_us // 1_000_000), nanosec=int(t_us % 1_000_000) * 1000)

    def header(self, t_us: int, frame_id: str):
        H = self.T[HEADER]
        if self.ros1:
            return H(seq=0, stamp=self.time(t_us), frame_id=frame_id)
        return H(stamp=self.time(t_us), frame_id=frame_id)

    def point_cloud2(self, t_us: int, frame_id: str, points: np.ndarray):
        """points: a structured numpy array [N] (one field per PointField) or float32[N, C] with the
        names given by ``dtype.names``; written little-endian, dense, height 1."""
        PF = self.T["sensor_msgs/msg/PointField"]
        kinds = {v: k for k, v in POINTFIELD_DTYPE.items()}
        fields = []
        for name in points.dtype.names:
            dt, off = points.dtype.fields[name][:2]
            fields.append(PF(name=name, offset=int(off), datatype=kinds[dt.str[1:]], count=1))
        data = np.frombuffer(np.ascontiguousarray(points).tobytes(), np.uint8)
        return self.T[POINTCLOUD2](header=self.header(t_us, frame_id), height=1, width=len(points), fields=fields,
                                   is_bigendian=False, point_step=points.dtype.itemsize,
                                   row_step=points.dtype.itemsize * len(points), data=data, is_dense=True)

    def compressed_image(self, t_us: int, frame_id: str, data: bytes, fmt: str = "jpeg"):
        return self.T[COMPRESSED_IMAGE](header=self.header(t_us, frame_id), format=fmt,
                                        data=np.frombuffer(data, np.uint8))

    def image(self, t_us: int, frame_id: str, rgb: np.ndarray):
        """rgb: uint8[H, W, 3]."""
        H, W, _ = rgb.shape
        return self.T[IMAGE](header=self.header(t_us, frame_id), height=H, width=W, encoding="rgb8",
                             is_bigendian=0, step=3 * W, data=np.ascontiguousarray(rgb).reshape(-1))

    def camera_info(self, t_us: int, frame_id: str, K: np.ndarray, width: int, height: int):
        """K: float64[3, 3] pinhole matrix, pixels (no distortion: nuScenes images are rectified)."""
        P = np.zeros((3, 4))
        P[:3, :3] = K
        roi = self.T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        arrays = {"D": np.zeros(5), "K": np.asarray(K, np.float64).reshape(9), "R": np.eye(3).reshape(9),
                  "P": P.reshape(12)}
        if not self.ros1:
            arrays = {k.lower(): v for k, v in arrays.items()}
        return self.T[CAMERA_INFO](header=self.header(t_us, frame_id), height=int(height), width=int(width),
                                   distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi, **arrays)

    def transform(self, t_us: int, parent: str, child: str, T: np.ndarray):
        """T: float64[4, 4] child -> parent (the ROS convention of a transform parent <- child)."""
        from scipy.spatial.transform import Rotation

        x, y, z, w = Rotation.from_matrix(T[:3, :3]).as_quat()
        G = "geometry_msgs/msg/"
        tr = self.T[G + "Transform"](translation=self.T[G + "Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                                     rotation=self.T[G + "Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)))
        return self.T[G + "TransformStamped"](header=self.header(t_us, parent), child_frame_id=child, transform=tr)

    def transform_wxyz(self, t_us: int, parent: str, child: str, translation: Sequence[float],
                       rotation_wxyz: Sequence[float]):
        """A transform from a quaternion as stored (no matrix round trip: the values are kept exactly)."""
        G = "geometry_msgs/msg/"
        w, x, y, z = (float(v) for v in rotation_wxyz)
        tr = self.T[G + "Transform"](translation=self.T[G + "Vector3"](x=float(translation[0]), y=float(translation[1]),
                                                                         z=float(translation[2])),
                                     rotation=self.T[G + "Quaternion"](x=x, y=y, z=z, w=w))
        return self.T[G + "TransformStamped"](header=self.header(t_us, parent), child_frame_id=child, transform=tr)

    def tf_message(self, transforms: list):
        return self.T[TFMESSAGE](transforms=transforms)

    def navsatfix(self, t_us: int, frame_id: str, lat: float, lon: float, alt: float, status: int,
                  cov_enu: Sequence[float], cov_type: int = 2):
        """cov_enu: float[3] variances (east, north, up), m^2 (ROS: position_covariance is ENU)."""
        st = self.T["sensor_msgs/msg/NavSatStatus"](status=int(status), service=1)
        cov = np.zeros(9)
        cov[[0, 4, 8]] = cov_enu
        return self.T[NAVSATFIX](header=self.header(t_us, frame_id), status=st, latitude=float(lat), longitude=float(lon),
                                 altitude=float(alt), position_covariance=cov, position_covariance_type=int(cov_type))

    def imu(self, t_us: int, frame_id: str, angular_velocity: Sequence[float], linear_acceleration: Sequence[float],
            gyro_var: float, accel_var: float, orientation_wxyz: Optional[Sequence[float]] = None):
        """No orientation (covariance[0] = -1, as REP 145 says) unless orientation_wxyz is given."""
        G = "geometry_msgs/msg/"
        if orientation_wxyz is None:
            q, qcov = self.T[G + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0), np.array([-1.0] + [0.0] * 8)
        else:
            w, x, y, z = (float(v) for v in orientation_wxyz)
            q, qcov = self.T[G + "Quaternion"](x=x, y=y, z=z, w=w), np.diag([1e-4] * 3).reshape(9)
        av = self.T[G + "Vector3"](x=float(angular_velocity[0]), y=float(angular_velocity[1]), z=float(angular_velocity[2]))
        la = self.T[G + "Vector3"](x=float(linear_acceleration[0]), y=float(linear_acceleration[1]),
                                   z=float(linear_acceleration[2]))
        return self.T[IMU](header=self.header(t_us, frame_id), orientation=q, orientation_covariance=qcov,
                           angular_velocity=av, angular_velocity_covariance=np.diag([gyro_var] * 3).reshape(9),
                           linear_acceleration=la, linear_acceleration_covariance=np.diag([accel_var] * 3).reshape(9))

    def odometry(self, t_us: int, frame_id: str, child: str, speed: float, speed_var: float, yaw_rate: float = 0.0):
        """Wheel odometry: forward speed (m/s, base frame) in the twist; the pose is unknown (covariance
        -1 on the diagonal... ROS has no flag for it, so a huge variance)."""
        G = "geometry_msgs/msg/"
        pose = self.T[G + "PoseWithCovariance"](
            pose=self.T[G + "Pose"](position=self.T[G + "Point"](x=0.0, y=0.0, z=0.0),
                                    orientation=self.T[G + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.diag([1e6] * 6).reshape(36))
        tw = self.T[G + "Twist"](linear=self.T[G + "Vector3"](x=float(speed), y=0.0, z=0.0),
                                 angular=self.T[G + "Vector3"](x=0.0, y=0.0, z=float(yaw_rate)))
        tcov = np.diag([speed_var, 1e-2, 1e-2, 1e6, 1e6, 1e6]).reshape(36)
        return self.T[ODOMETRY](header=self.header(t_us, frame_id), child_frame_id=child, pose=pose,
                                twist=self.T[G + "TwistWithCovariance"](twist=tw, covariance=tcov))


def recording_kind(path: str) -> str:
    """'mcap' | 'ros1' | 'sqlite3' from the path ('.mcap', '.bag', '.db3' or a folder)."""
    p = str(path)
    if p.endswith(".mcap"):
        return "mcap"
    if p.endswith(".bag"):
        return "ros1"
    return "sqlite3"


class RecordingWriter:
    """Writes messages of a MessageFactory to ``path`` (kind from the suffix, see recording_kind).

    ``write(topic, msgtype, log_time_us, msg)``: log_time_us is the receive (recording) time. Written
    to a temporary name and renamed on ``close`` (an interrupted conversion leaves no half file
    under the final name)."""

    def __init__(self, path: str, factory: MessageFactory):
        self.path = str(path)
        self.kind = recording_kind(self.path)
        self.factory = factory
        if (self.kind == "ros1") != factory.ros1:
            raise ValueError(f"{path}: a {'ROS 1' if self.kind == 'ros1' else 'ROS 2'} recording needs "
                             f"{'ROS 1' if self.kind == 'ros1' else 'ROS 2'} messages")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        base = os.path.basename(self.path.rstrip("/"))
        self.tmp = os.path.join(parent, f".{base}.partial-{os.getpid()}" + (".mcap" if self.kind == "mcap" else
                                                                            ".bag" if self.kind == "ros1" else ""))
        self._conn: Dict[str, object] = {}
        if self.kind == "mcap":
            from mcap.writer import Writer

            self._file = open(self.tmp, "wb")
            self._w = Writer(self._file)
            self._w.start(profile="ros2", library="perception tools/to_mcap.py")
            self._schemas: Dict[str, int] = {}
        elif self.kind == "ros1":
            from rosbags.rosbag1 import Writer

            self._w = Writer(Path(self.tmp))
            self._w.open()
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer

            self._w = Writer(Path(self.tmp), version=8, storage_plugin=StoragePlugin.SQLITE3)
            self._w.open()
        self._seq: Dict[str, int] = {}

    def _connection(self, topic: str, msgtype: str):
        if topic in self._conn:
            return self._conn[topic]
        ts = self.factory.ts
        if self.kind == "mcap":
            if msgtype not in self._schemas:
                text, _ = ts.generate_msgdef(msgtype, ros_version=2)
                self._schemas[msgtype] = self._w.register_schema(msgtype, "ros2msg", text.encode())
            conn = self._w.register_channel(topic, "cdr", self._schemas[msgtype])
        elif self.kind == "ros1":
            conn = self._w.add_connection(topic, msgtype, typestore=ts)
        else:
            conn = self._w.add_connection(topic, msgtype, typestore=ts)
        self._conn[topic] = conn
        return conn

    def write(self, topic: str, msgtype: str, log_time_us: int, msg) -> None:
        conn = self._connection(topic, msgtype)
        ns = int(log_time_us) * 1000
        if self.kind == "mcap":
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            data = bytes(self.factory.ts.serialize_cdr(msg, msgtype))
            self._w.add_message(conn, log_time=ns, data=data, publish_time=ns, sequence=seq)
        elif self.kind == "ros1":
            self._w.write(conn, ns, self.factory.ts.serialize_ros1(msg, msgtype))
        else:
            self._w.write(conn, ns, self.factory.ts.serialize_cdr(msg, msgtype))

    def close(self) -> str:
        import shutil

        if self.kind == "mcap":
            self._w.finish()
            self._file.close()
        else:
            self._w.close()
        target = self.path
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(self.tmp, target)
        return target

    def abort(self) -> None:
        import shutil

        try:
            if self.kind == "mcap":
                self._file.close()
        finally:
            if os.path.isdir(self.tmp):
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif os.path.exists(self.tmp):
                os.remove(self.tmp)


def structured_points(columns: Dict[str, np.ndarray], dtypes: Optional[Dict[str, str]] = None) -> np.ndarray:
    """A packed structured array [N] from named columns (float32 unless dtypes names another type)."""
    names = list(columns)
    dt = np.dtype([(n, (dtypes or {}).get(n, "<f4")) for n in names])
    n = len(next(iter(columns.values()))) if columns else 0
    out = np.zeros(n, dt)
    for k in names:
        out[k] = columns[k]
    return out


def cloud_fields(msg) -> Tuple[np.ndarray, Dict[str, Tuple[int, int, int]]]:
    """(raw bytes uint8[N * point_step], {field name: (offset, datatype, count)}) of a PointCloud2."""
    return np.asarray(msg.data, np.uint8), {f.name: (int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields}


def cloud_columns(msg, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The named fields of a PointCloud2 as float64 arrays [N] (fields absent from the cloud: missing
    from the result; the caller decides whether that is an error)."""
    data, fields = cloud_fields(msg)
    n = int(msg.width) * int(msg.height)
    step = int(msg.point_step)
    if n and len(data) < n * step:
        raise ValueError(f"data holds {len(data)} bytes, width*height*point_step needs {n * step}")
    order = ">" if msg.is_bigendian else "<"
    out = {}
    for name in names:
        if name not in fields:
            continue
        off, dt, count = fields[name]
        if dt not in POINTFIELD_DTYPE:
            raise ValueError(f"field {name!r} has unknown PointField datatype {dt}")
        npdt = np.dtype(POINTFIELD_DTYPE[dt]).newbyteorder(order)
        rec = np.dtype({"names": [name], "formats": [npdt], "offsets": [off], "itemsize": step})
        out[name] = np.frombuffer(data[:n * step].tobytes(), rec, count=n)[name].astype(np.float64)
    return out
