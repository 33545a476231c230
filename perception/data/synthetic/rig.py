"""The nuScenes sensor rig as constants: real extrinsics and intrinsics, rates and the LiDAR model.

The numbers are copied from the real nuScenes ``calibrated_sensor`` table (log
n008-2018-08-30-10-33-52-0400, Boston; translation in metres in the ego frame, rotation quaternion
(w, x, y, z) sensor -> ego, camera intrinsics for the 1600 x 900 images), so that generated drives
have the geometry of the real car. Nothing here reads files at run time.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from pyquaternion import Quaternion

from perception.structures import ALL_CHANNELS, CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS

# channel -> (translation xyz m, rotation wxyz, intrinsics 3x3 or None)
CALIBRATION: Dict[str, Tuple[tuple, tuple, object]] = {
    "LIDAR_TOP": ((0.985793, 0.0, 1.84019),
                  (0.706749235646644, -0.015300993788500868, 0.01739745181256607, -0.7070846669051719),
                  None),
    "CAM_FRONT": ((1.72200568478, 0.00475453292289, 1.49491291905),
                  (0.5077241387638071, -0.4973392230703816, 0.49837167536166627, -0.4964832014373754),
                  ((1252.8131021185304, 0.0, 826.588114781398), (0.0, 1252.8131021185304, 469.9846626224581),
                   (0.0, 0.0, 1.0))),
    "CAM_FRONT_RIGHT": ((1.58082565783, -0.499078711449, 1.51749368405),
                        (0.20335173766558642, -0.19146333228946724, 0.6785710044972951, -0.6793609166212989),
                        ((1256.7485116440405, 0.0, 817.7887570959712),
                         (0.0, 1256.7485116440403, 451.9541780095127), (0.0, 0.0, 1.0))),
    "CAM_FRONT_LEFT": ((1.5752559464, 0.500519383135, 1.50696032589),
                       (0.6812088525125634, -0.6687507165046241, 0.2101702448905517, -0.21108161122114324),
                       ((1257.8625342125129, 0.0, 827.2410631095686),
                        (0.0, 1257.8625342125129, 450.915498205774), (0.0, 0.0, 1.0))),
    "CAM_BACK": ((0.05524611077, 0.0107882366898, 1.56794286957),
                 (0.5067997344989889, -0.4977567019405021, -0.4987849934090844, 0.496594225837321),
                 ((796.8910634503094, 0.0, 857.7774326863696), (0.0, 796.8910634503094, 476.8848988407415),
                  (0.0, 0.0, 1.0))),
    "CAM_BACK_LEFT": ((1.04852047718, 0.483058131052, 1.56210154484),
                      (0.7048620297871717, -0.6907306801461466, -0.11209091960167808, 0.11617345743327073),
                      ((1254.9860565800168, 0.0, 829.5769333630991),
                       (0.0, 1254.9860565800168, 467.1680561863987), (0.0, 0.0, 1.0))),
    "CAM_BACK_RIGHT": ((1.05945173053, -0.46720294852, 1.55050857555),
                       (0.13819187705364147, -0.13796718183628456, -0.6893329941542625, 0.697630335509333),
                       ((1249.9629280788233, 0.0, 825.3768045375984),
                        (0.0, 1249.9629280788233, 462.54816385708756), (0.0, 0.0, 1.0))),
    "RADAR_FRONT": ((3.412, 0.0, 0.5), (0.9999974259839071, 0.0, 0.0, -0.0022689260808398757), None),
    "RADAR_FRONT_LEFT": ((2.422, 0.8, 0.78), (0.7028982997921758, 0.0, 0.0, 0.7112903627557937), None),
    "RADAR_FRONT_RIGHT": ((2.422, -0.8, 0.77), (0.7087093341000862, 0.0, 0.0, -0.7055005880645404), None),
    "RADAR_BACK_LEFT": ((-0.562, 0.628, 0.53), (0.0458860416542946, 0.0, 0.0, 0.9989466808500344), None),
    "RADAR_BACK_RIGHT": ((-0.562, -0.618, 0.53), (0.04361938736533623, 0.0, 0.0, -0.9990482215818578), None),
}
assert set(CALIBRATION) == set(ALL_CHANNELS)

# Real sensor-table tokens, so that generated roots share the sensor table with nuScenes.
SENSOR_TOKENS: Dict[str, str] = {
    "CAM_FRONT": "725903f5b62f56118f4094b46a4470d8", "CAM_BACK": "ce89d4f3050b5892b33b3d328c5e82a3",
    "CAM_BACK_LEFT": "a89643a5de885c6486df2232dc954da2", "CAM_FRONT_LEFT": "ec4b5d41840a509984f7ec36419d4c09",
    "CAM_FRONT_RIGHT": "2f7ad058f1ac5557bf321c7543758f43", "CAM_BACK_RIGHT": "ca7dba2ec9f95951bbe67246f7f2c3f7",
    "LIDAR_TOP": "dc8b396651c05aedbb9cdaae573bb567", "RADAR_FRONT": "47fcd48f71d75e0da5c8c1704a9bfe0a",
    "RADAR_FRONT_RIGHT": "232a6c4dc628532e81de1c57120876e9", "RADAR_FRONT_LEFT": "1f69f87a4e175e5ba1d03e2e6d9bcd27",
    "RADAR_BACK_LEFT": "df2d5b8be7be55cca33c8c92384f2266", "RADAR_BACK_RIGHT": "5c29dee2f70b528a817110173c2e71b9",
}

NATIVE_IMAGE_SIZE = (1600, 900)  # (width, height) of nuScenes images, pixels

# Clocks (microseconds). LiDAR 20 Hz; keyframes every 10th sweep (2 Hz); cameras fire on 3 of every
# 5 LiDAR sweeps (12 Hz, pattern 2-2-1 sweeps apart as in nuScenes, always on keyframe sweeps);
# radars ~13 Hz on free-running clocks; CAN-bus pose 50 Hz.
LIDAR_PERIOD_US = 50_000
SWEEPS_PER_KEYFRAME = 10
RADAR_PERIOD_US = 76_923
CAN_POSE_PERIOD_US = 20_000
# Azimuth (deg, LIDAR_TOP frame, counter-clockwise from +x) the beam points at when a sweep ends.
LIDAR_END_AZIMUTH_DEG = 186.0

# Velodyne HDL-32E elevation angles (deg), ring 0 = lowest beam.
HDL32E_ELEVATION_DEG = np.array([
    -30.67, -29.33, -28.00, -26.66, -25.33, -24.00, -22.67, -21.33, -20.00, -18.67, -17.33, -16.00,
    -14.67, -13.33, -12.00, -10.67, -9.33, -8.00, -6.66, -5.33, -4.00, -2.67, -1.33, 0.00,
    1.33, 2.67, 4.00, 5.33, 6.67, 8.00, 9.33, 10.67])


def T_ego_from_sensor(channel: str) -> np.ndarray:
    """float64[4, 4] sensor -> ego transform of a channel."""
    t, q, _ = CALIBRATION[channel]
    T = np.eye(4)
    T[:3, :3] = Quaternion(list(q)).rotation_matrix
    T[:3, 3] = t
    return T


def intrinsics(channel: str, width: int, height: int) -> np.ndarray:
    """float64[3, 3] pinhole matrix of a camera scaled to an image of width x height pixels."""
    K = np.array(CALIBRATION[channel][2], dtype=np.float64)
    sx, sy = width / NATIVE_IMAGE_SIZE[0], height / NATIVE_IMAGE_SIZE[1]
    K[0] *= sx
    K[1] *= sy
    return K


def camera_azimuth_deg(channel: str) -> float:
    """Azimuth (deg in [0, 360)) of a camera's optical axis in the LIDAR_TOP frame."""
    R_ego_cam = T_ego_from_sensor(channel)[:3, :3]
    R_ego_lidar = T_ego_from_sensor(LIDAR_CHANNEL)[:3, :3]
    axis = R_ego_lidar.T @ (R_ego_cam @ np.array([0.0, 0.0, 1.0]))
    return float(np.degrees(np.arctan2(axis[1], axis[0])) % 360.0)


def camera_trigger_offset_us(channel: str) -> int:
    """How long before the end of a LiDAR sweep (us, > 0) the beam crosses the camera's axis."""
    frac = ((camera_azimuth_deg(channel) - LIDAR_END_AZIMUTH_DEG) % 360.0) / 360.0
    return int(round(LIDAR_PERIOD_US * frac))


def camera_fires(sweep_index: int) -> bool:
    """Whether cameras fire on LiDAR sweep ``sweep_index`` (12 of 20 sweeps; all keyframe sweeps)."""
    return (sweep_index * 3) // 5 != ((sweep_index - 1) * 3) // 5


CAMERA_TRIGGER_OFFSET_US: Dict[str, int] = {ch: camera_trigger_offset_us(ch) for ch in CAMERA_CHANNELS}
