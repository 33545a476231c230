"""Rigid transforms as 4 x 4 float64 matrices ``T_a_from_b`` (points of frame b into frame a).

Quaternions are nuScenes' (w, x, y, z). pyquaternion does the quaternion algebra; these helpers only
assemble matrices and apply them to arrays.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pyquaternion import Quaternion


def make_transform(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    """float64[4, 4] from a translation (m) and a unit quaternion (w, x, y, z)."""
    T = np.eye(4)
    T[:3, :3] = Quaternion(list(rotation_wxyz)).rotation_matrix
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform float64[4, 4] (exact for rotation + translation)."""
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def apply(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Points xyz: [N, 3] in frame b -> [N, 3] in frame a, same dtype as the input."""
    out = xyz @ T[:3, :3].T.astype(xyz.dtype) + T[:3, 3].astype(xyz.dtype)
    return out


def rotate(T: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Free vectors vec: [N, 3] (velocities) rotated by T's rotation, no translation."""
    return vec @ T[:3, :3].T.astype(vec.dtype)


def quaternion_from_yaw(yaw: float) -> Quaternion:
    """The rotation about +z by ``yaw`` radians."""
    return Quaternion(axis=[0.0, 0.0, 1.0], angle=float(yaw))
