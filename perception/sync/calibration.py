"""The sensor rig: intrinsics and sensor -> ego extrinsics, validated on load, and projection.

Validation (a bad record is an error naming the sensor and the field): the rotation quaternion is
finite and of unit norm so that its matrix is orthonormal with determinant 1; the translation is
finite; a camera has finite intrinsics with positive focal lengths, zero bottom row (0, 0, 1) and a
principal point inside the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..structures import modality_of


class CalibrationError(ValueError):
    """A calibration record is invalid; the message names the sensor and the field."""


@dataclass
class SensorCalibration:
    """One sensor of the rig.

    T_ego_from_sensor: float64[4, 4] sensor frame -> ego frame, metres
    intrinsics: float64[3, 3] pinhole matrix (cameras only), pixels
    width, height: image size in pixels (cameras only)
    """

    channel: str
    token: str
    T_ego_from_sensor: np.ndarray
    intrinsics: Optional[np.ndarray] = None
    width: int = 0
    height: int = 0

    @property
    def modality(self) -> str:
        return modality_of(self.channel)


def _quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of (w, x, y, z) WITHOUT normalising, so a bad quaternion shows as a
    non-orthonormal matrix instead of being silently repaired."""
    w, x, y, z = q
    return np.array([
        [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z],
    ])


def calibration_from_record(channel: str, record: dict, width: int = 0, height: int = 0,
                            where: str = "calibrated_sensor") -> SensorCalibration:
    """Validate a nuScenes ``calibrated_sensor`` record and build the SensorCalibration."""
    token = record.get("token", "?")
    name = f"{where} {token} ({channel})"
    try:
        q = np.asarray(record["rotation"], dtype=np.float64)
        t = np.asarray(record["translation"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(f"{name}: missing or non-numeric rotation/translation") from None
    if q.shape != (4,) or not np.isfinite(q).all():
        raise CalibrationError(f"{name}: field 'rotation' must be 4 finite numbers (w, x, y, z), got {q.tolist()}")
    if t.shape != (3,) or not np.isfinite(t).all():
        raise CalibrationError(f"{name}: field 'translation' must be 3 finite numbers, got {t.tolist()}")
    R = _quaternion_matrix(q)
    ortho_err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if ortho_err > 1e-4 or abs(det - 1.0) > 1e-4:
        raise CalibrationError(f"{name}: field 'rotation' is not a rotation (|R R^T - I| = {ortho_err:.2e}, "
                               f"det = {det:.4f}; quaternion norm {np.linalg.norm(q):.4f})")
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    K = None
    if modality_of(channel) == "camera":
        K = np.asarray(record.get("camera_intrinsic") or [], dtype=np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all():
            raise CalibrationError(f"{name}: field 'camera_intrinsic' must be a finite 3x3 matrix")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CalibrationError(f"{name}: field 'camera_intrinsic' has non-positive focal length "
                                   f"(fx={K[0, 0]}, fy={K[1, 1]})")
        if not np.allclose(K[2], [0.0, 0.0, 1.0]):
            raise CalibrationError(f"{name}: field 'camera_intrinsic' last row must be (0, 0, 1)")
        if width > 0 and height > 0 and not (0 <= K[0, 2] <= width and 0 <= K[1, 2] <= height):
            raise CalibrationError(f"{name}: field 'camera_intrinsic' principal point "
                                   f"({K[0, 2]:.1f}, {K[1, 2]:.1f}) outside the {width}x{height} image")
    return SensorCalibration(channel, token, T, K, int(width), int(height))


@dataclass
class SensorRig:
    """The sensors of one drive (nuScenes calibrates per log), keyed by channel."""

    sensors: Dict[str, SensorCalibration]

    def __getitem__(self, channel: str) -> SensorCalibration:
        return self.sensors[channel]

    def __contains__(self, channel: str) -> bool:
        return channel in self.sensors

    @property
    def cameras(self) -> Tuple[str, ...]:
        return tuple(c for c in self.sensors if modality_of(c) == "camera")

    @property
    def radars(self) -> Tuple[str, ...]:
        return tuple(c for c in self.sensors if modality_of(c) == "radar")


def project_to_image(points_ego: np.ndarray, T_ego_from_cam: np.ndarray, intrinsics: np.ndarray,
                     width: int, height: int, min_depth: float = 1e-3
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project ego-frame points into a camera.

    points_ego: float[N, 3] ego frame, metres
    T_ego_from_cam: float64[4, 4] camera -> ego
    intrinsics: float64[3, 3]
    Returns uv float64[N, 2] pixels (x right, y down; pixel centres at +0.5 in nuScenes' convention
    of the devkit, i.e. plain K @ p / z), depth float64[N] metres along the optical axis, and
    inside bool[N]: depth > min_depth and 0 <= u < width, 0 <= v < height.
    """
    R, t = T_ego_from_cam[:3, :3], T_ego_from_cam[:3, 3]
    cam = (np.asarray(points_ego, dtype=np.float64) - t) @ R  # = R^T (p - t), row form
    depth = cam[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    uvw = cam @ intrinsics.T
    uv = uvw[:, :2] / safe[:, None]
    inside = (depth > min_depth) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv, depth, inside
