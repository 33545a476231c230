"""The ego-pose (GPS/localization) stream: interpolation at any timestamp and ego velocity.

Interpolation is linear in translation and spherical-linear (slerp) in rotation between the two
bracketing poses. A query outside the stream's span by more than ``max_extrapolation_us`` is an
error; within that bound the nearest end pose is held (no extrapolation of motion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


class PoseError(ValueError):
    """A pose query or pose data problem; the message names the time or the record."""


@dataclass
class PoseStream:
    """Ego poses of one drive.

    timestamps: int64[N] strictly increasing, us
    translations: float64[N, 3] ego origin in the global frame, metres
    rotations_wxyz: float64[N, 4] ego -> global rotation as quaternions (w, x, y, z)
    name: where the poses come from (for messages)
    """

    timestamps: np.ndarray
    translations: np.ndarray
    rotations_wxyz: np.ndarray
    name: str = "ego_pose"
    max_extrapolation_us: int = 100_000

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64).reshape(-1)
        self.translations = np.asarray(self.translations, dtype=np.float64).reshape(-1, 3)
        q = np.asarray(self.rotations_wxyz, dtype=np.float64).reshape(-1, 4)
        n = len(self.timestamps)
        if n == 0:
            raise PoseError(f"{self.name}: no poses")
        if len(self.translations) != n or len(q) != n:
            raise PoseError(f"{self.name}: {n} timestamps but {len(self.translations)} translations "
                            f"and {len(q)} rotations")
        step = np.diff(self.timestamps)
        if (step <= 0).any():
            i = int(np.argmax(step <= 0))
            raise PoseError(f"{self.name}: timestamps not strictly increasing at index {i + 1} "
                            f"({self.timestamps[i]} then {self.timestamps[i + 1]})")
        if not (np.isfinite(self.translations).all() and np.isfinite(q).all()):
            raise PoseError(f"{self.name}: non-finite translation or rotation")
        norms = np.linalg.norm(q, axis=1)
        if (np.abs(norms - 1.0) > 1e-3).any():
            i = int(np.argmax(np.abs(norms - 1.0) > 1e-3))
            raise PoseError(f"{self.name}: rotation quaternion at t={self.timestamps[i]} has norm "
                            f"{norms[i]:.4f}, not 1")
        self.rotations_wxyz = q / norms[:, None]
        # scipy wants (x, y, z, w)
        self._rot = Rotation.from_quat(self.rotations_wxyz[:, [1, 2, 3, 0]])
        self._slerp = Slerp(self.timestamps.astype(np.float64), self._rot) if n > 1 else None

    @property
    def start(self) -> int:
        return int(self.timestamps[0])

    @property
    def end(self) -> int:
        return int(self.timestamps[-1])

    def _clamped(self, t: np.ndarray) -> np.ndarray:
        lo, hi = self.start - self.max_extrapolation_us, self.end + self.max_extrapolation_us
        if (t < lo).any() or (t > hi).any():
            bad = int(t[(t < lo) | (t > hi)][0])
            raise PoseError(f"{self.name}: no pose at t={bad}: outside the stream's span "
                            f"[{self.start}, {self.end}] by more than {self.max_extrapolation_us} us")
        return np.clip(t, self.start, self.end)

    def transforms(self, t: Union[int, np.ndarray]) -> np.ndarray:
        """T_global_from_ego at times t (us): float64[4, 4] for a scalar, [K, 4, 4] for an array."""
        scalar = np.ndim(t) == 0
        tq = self._clamped(np.atleast_1d(np.asarray(t, dtype=np.int64)))
        out = np.tile(np.eye(4), (len(tq), 1, 1))
        if self._slerp is None:
            out[:, :3, :3] = self._rot.as_matrix()[0]
            out[:, :3, 3] = self.translations[0]
        else:
            out[:, :3, :3] = self._slerp(tq.astype(np.float64)).as_matrix()
            for axis in range(3):
                out[:, axis, 3] = np.interp(tq, self.timestamps, self.translations[:, axis])
        return out[0] if scalar else out

    def velocity(self, t: int, half_window_us: int = 250_000) -> np.ndarray:
        """Ego velocity float64[3] in the global frame (m/s) at time t: central difference of the
        interpolated positions over +-half_window_us (clipped to the span), which averages out
        localization noise; zeros for a single pose."""
        if len(self.timestamps) < 2:
            return np.zeros(3)
        self._clamped(np.array([t]))
        t0 = max(self.start, t - half_window_us)
        t1 = min(self.end, t + half_window_us)
        if t1 <= t0:
            return np.zeros(3)
        p = self.transforms(np.array([t0, t1]))[:, :3, 3]
        return (p[1] - p[0]) / ((t1 - t0) * 1e-6)

    def ego_velocity(self, t: int) -> np.ndarray:
        """Ego velocity float64[3] in the ego frame at t (m/s): x forward, y left."""
        R = self.transforms(t)[:3, :3]
        return R.T @ self.velocity(t)
