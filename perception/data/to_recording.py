"""A nuScenes-format scene as a ROS recording (``tools/to_mcap.py``): MCAP (ROS 2 types), a ROS 1
bag or a ROS 2 sqlite3 bag, with the rig file that reads it back (perception.data.recording).

Topics (header stamp and receive time = the sample_data timestamp; header.frame_id = the channel):

- ``/LIDAR_TOP`` PointCloud2 x, y, z, intensity, ring (float32: the ``.pcd.bin`` bytes as they are);
- ``/RADAR_*`` PointCloud2 with the 18 nuScenes radar fields, float32;
- ``/CAM_*/image/compressed`` CompressedImage (the JPEG bytes as they are) and ``/CAM_*/camera_info``;
- ``/tf_static``: base_link -> each sensor (calibrated_sensor); ``/tf``: map -> base_link at every ego
  pose (the nuScenes global frame is ``map``);
- ``/gps/fix`` NavSatFix: the scene's synthetic GNSS stream (``can_bus/<scene>_gnss.json``) when the
  root has one, else a fix at every ego pose, converted to latitude/longitude/altitude around the
  map's geodetic origin (the reference coordinates of the devkit's pose export) with pymap3d;
- ``/imu`` Imu and ``/odom`` Odometry: from the CAN bus (``ms_imu`` rotation rate and acceleration,
  ``pose`` forward speed) when the root has it, else derived from the ego poses (yaw rate and speed
  by central differences);
- ``/nuscenes/keyframes`` std_msgs/Header at each keyframe LiDAR stamp, frame_id = the sample token.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

from ..structures import CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS, modality_of
from . import io, rosmsg
from .synthetic.gnss import MAP_ORIGINS, STATUS_SBAS_FIX

log = logging.getLogger(__name__)

BASE, MAP = "base_link", "map"


def sensor_topic(ch: str) -> str:
    return f"/{ch}/image/compressed" if modality_of(ch) == "camera" else f"/{ch}"


def rig_yaml(channels, scene: str) -> str:
    """The rig file of a converted scene (its topics; every calibration is in /tf_static)."""
    lines = [f"scene: {scene}", f"base_frame: {BASE}", "channels:"]
    for ch in channels:
        if modality_of(ch) == "camera":
            lines.append(f"  {ch}: {{topic: {sensor_topic(ch)}, camera_info: /{ch}/camera_info}}")
        else:
            lines.append(f"  {ch}: {{topic: {sensor_topic(ch)}}}")
    lines += ["pose:", f"  tf_parent: {MAP}", "  gnss: /gps/fix", "  imu: /imu", "  odometry: /odom",
              "keyframes: /nuscenes/keyframes"]
    return "\n".join(lines) + "\n"


def convert_scene(source, scene: str, out: str, rig_out: Optional[str] = None) -> dict:
    """Write the scene of a NuScenesSource to ``out`` (.mcap / .bag / .db3 or folder) and its rig file
    (default: ``<out without suffix>.rig.yaml``). Returns counts per topic."""
    import pymap3d

    from ..fileio import write_text_atomic

    nusc = source.nusc
    rec = source.scene(scene)
    name = rec["name"]
    idx = source.index(rec["token"])
    rig = source.rig(rec["token"])
    location = nusc.get("log", rec["log_token"])["location"]
    if location not in MAP_ORIGINS:
        raise ValueError(f"scene {name}: location {location!r} has no geodetic origin (known: {sorted(MAP_ORIGINS)})")
    lat0, lon0 = MAP_ORIGINS[location]
    fac = rosmsg.MessageFactory(ros1=rosmsg.recording_kind(out) == "ros1")
    writer = rosmsg.RecordingWriter(out, fac)
    counts: dict = {}
    # Every message with its time, written in time order (receive time = stamp).
    items = []  # (t_us, order, topic, msgtype, builder)

    def add(t, topic, msgtype, build, order=1):
        items.append((int(t), order, topic, msgtype, build))

    # /tf_static: once, at the start
    t_start = min(int(c.timestamps[0]) for c in idx.channels.values())
    tfs = [fac.transform(t_start, BASE, ch, cal.T_ego_from_sensor) for ch, cal in rig.sensors.items()]
    add(t_start, "/tf_static", rosmsg.TFMESSAGE, lambda tfs=tfs: fac.tf_message(tfs), order=0)
    poses = source.pose_stream(rec["token"])
    for t, tr, q in zip(poses.timestamps, poses.translations, poses.rotations_wxyz):
        add(t, "/tf", rosmsg.TFMESSAGE, lambda t=int(t), tr=tr, q=q: fac.tf_message(
            [fac.transform_wxyz(t, MAP, BASE, tr, q)]), order=0)
    channels = [c for c in (LIDAR_CHANNEL,) + CAMERA_CHANNELS + RADAR_CHANNELS if c in idx.channels]
    for ch in channels:
        cal = rig[ch]
        for m in idx.channels[ch].messages:
            path = source.path(m)
            if not os.path.isfile(path):
                continue  # a sweep the root does not hold (keyframe-only extracts)
            if ch == LIDAR_CHANNEL:
                def build(m=m, path=path, ch=ch):
                    pts = io.read_lidar(path, drop_nonfinite=False) if os.path.getsize(path) else np.zeros((0, 5), np.float32)
                    cols = {k: pts[:, j] for j, k in enumerate(("x", "y", "z", "intensity", "ring"))}
                    return fac.point_cloud2(m.timestamp, ch, rosmsg.structured_points(cols))
                add(m.timestamp, sensor_topic(ch), rosmsg.POINTCLOUD2, build)
                if m.is_key_frame:
                    add(m.timestamp, "/nuscenes/keyframes", rosmsg.HEADER,
                        lambda m=m: fac.header(m.timestamp, m.sample_token))
            elif modality_of(ch) == "radar":
                def build(m=m, path=path, ch=ch):
                    r = io.read_radar(path)
                    cols = {k: r[:, j] for j, k in enumerate(io.RADAR_FIELDS)}
                    return fac.point_cloud2(m.timestamp, ch, rosmsg.structured_points(cols))
                add(m.timestamp, sensor_topic(ch), rosmsg.POINTCLOUD2, build)
            else:
                def build(m=m, path=path, ch=ch):
                    with open(path, "rb") as f:
                        return fac.compressed_image(m.timestamp, ch, f.read(), "jpeg")
                add(m.timestamp, sensor_topic(ch), rosmsg.COMPRESSED_IMAGE, build)
                add(m.timestamp, f"/{ch}/camera_info", rosmsg.CAMERA_INFO,
                    lambda m=m, cal=cal, ch=ch: fac.camera_info(m.timestamp, ch, cal.intrinsics, cal.width or m.width,
                                                         cal.height or m.height))

    # GNSS: the root's own stream (synthetic drives) or one fix per ego pose.
    gnss_file = os.path.join(source.dataroot, "can_bus", f"{name}_gnss.json")
    if os.path.isfile(gnss_file):
        with open(gnss_file) as f:
            fixes = json.load(f)
        for r in fixes:
            lla = [np.nan if r[k] is None else r[k] for k in ("latitude", "longitude", "altitude")]
            add(r["utime"], "/gps/fix", rosmsg.NAVSATFIX, lambda r=r, lla=lla: fac.navsatfix(
                r["utime"], "gnss", *lla, r["status"], r["position_covariance"]))
    else:
        lat, lon, alt = pymap3d.enu2geodetic(poses.translations[:, 0], poses.translations[:, 1],
                                             poses.translations[:, 2], lat0, lon0, 0.0)
        for t, a, b, c in zip(poses.timestamps, lat, lon, alt):
            add(t, "/gps/fix", rosmsg.NAVSATFIX, lambda t=int(t), a=a, b=b, c=c: fac.navsatfix(
                t, "gnss", a, b, c, STATUS_SBAS_FIX, [0.01, 0.01, 0.04]))
    # IMU and odometry: CAN bus or ego-pose differences.
    can = os.path.join(source.dataroot, "can_bus")
    imu_f, pose_f = os.path.join(can, f"{name}_ms_imu.json"), os.path.join(can, f"{name}_pose.json")
    if os.path.isfile(imu_f) and os.path.isfile(pose_f):
        with open(imu_f) as f:
            for r in json.load(f):
                add(r["utime"], "/imu", rosmsg.IMU, lambda r=r: fac.imu(r["utime"], BASE, r["rotation_rate"],
                                                                          r["linear_accel"], 1e-5, 1e-2))
        with open(pose_f) as f:
            for r in json.load(f):
                add(r["utime"], "/odom", rosmsg.ODOMETRY, lambda r=r: fac.odometry(
                    r["utime"], "odom", BASE, r["vel"][0], 0.02 ** 2, r["rotation_rate"][2]))
    else:
        ts = poses.timestamps
        if len(ts) > 2:
            yaw = np.unwrap(np.array([np.arctan2(2 * (q[0] * q[3] + q[1] * q[2]), 1 - 2 * (q[2] ** 2 + q[3] ** 2))
                                      for q in poses.rotations_wxyz]))
            tt = ts * 1e-6
            yr = np.gradient(yaw, tt)
            sp = np.hypot(np.gradient(poses.translations[:, 0], tt), np.gradient(poses.translations[:, 1], tt))
            for t, w, v in zip(ts, yr, sp):
                add(t, "/imu", rosmsg.IMU, lambda t=int(t), w=w: fac.imu(t, BASE, [0, 0, w], [0, 0, 9.81], 1e-4, 1e-1))
                add(t, "/odom", rosmsg.ODOMETRY, lambda t=int(t), v=v, w=w: fac.odometry(t, "odom", BASE, v, 0.05 ** 2, w))

    items.sort(key=lambda x: (x[0], x[1], x[2]))
    try:
        for t, _, topic, msgtype, build in items:
            writer.write(topic, msgtype, t, build())
            counts[topic] = counts.get(topic, 0) + 1
        writer.close()
    except BaseException:
        writer.abort()
        raise
    rig_out = rig_out or (os.path.splitext(out.rstrip("/"))[0] + ".rig.yaml")
    write_text_atomic(rig_yaml(channels, name), rig_out)
    return {"out": out, "rig": rig_out, "counts": counts, "location": location, "origin": [lat0, lon0, 0.0]}
