"""Ego pose from GNSS fixes, a gyro and wheel odometry: an extended Kalman filter with a
Rauch-Tung-Striebel smoother, for recordings that carry no ego pose.

Frames: fixes (latitude, longitude, altitude) become a local ENU frame with ``pymap3d`` (origin: the
first usable fix, or a given one; with a map's geodetic origin that ENU frame is the map's global
frame, see perception.data.synthetic.gnss.MAP_ORIGINS). The antenna is taken to be at the ego origin.

Model (planar motion, no side slip; the state is the ego at time t):

    state x = [e, n, u, yaw, v, b]     e, n, u: position, m (ENU); yaw: heading from east towards
                                       north, rad; v: forward speed, m/s; b: gyro z bias, rad/s
    predict over dt with the gyro's rate w (held between IMU samples):
        e += v cos(yaw) dt    n += v sin(yaw) dt    yaw += (w - b) dt     u, v, b: random walks
    process noise (per second): position q_pos, altitude q_alt, yaw (gyro noise) q_yaw,
        speed q_speed (acceleration), bias q_bias
    updates: a fix measures (e, n, u) with its reported covariance (NavSatFix.position_covariance,
        or ``default_fix_sigma`` when its type is UNKNOWN); odometry measures v.

A fix is rejected when its status is NO_FIX, a coordinate is not finite, or its innovation fails a
chi-square gate (3 dof, ``gate``): each kind is counted and the first logged. Between accepted fixes
the filter dead-reckons on the gyro and odometry; a gap longer than ``outage_s`` is an outage, logged
with the position sigma it reached (``FusedPose.outages``). The forward pass is smoothed backwards
(RTS), so the pose at every time uses the fixes before and after it: smooth, with the uncertainty of
an outage largest in its middle. Roll and pitch come from the IMU's orientation where it gives one
(covariance[0] != -1), else 0 (a planar ego). The pose covariance is 6x6 (x, y, z, roll, pitch, yaw).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .pose import PoseStream

log = logging.getLogger(__name__)


class GnssError(ValueError):
    """The GNSS/IMU/odometry streams cannot give a pose; the message names the stream."""


@dataclass
class FilterConfig:
    q_pos: float = 0.01  # m^2/s: unmodelled lateral motion
    q_alt: float = 0.05  # m^2/s
    q_yaw: float = 1e-5  # rad^2/s: gyro noise density
    q_speed: float = 0.5  # (m/s)^2/s: acceleration
    q_bias: float = 1e-8  # (rad/s)^2/s
    default_fix_sigma: float = 3.0  # m, a fix without covariance
    default_speed_sigma: float = 0.05  # m/s, odometry without covariance
    gate: float = 16.27  # chi-square, 3 dof, 99.9 %
    outage_s: float = 1.0
    smooth: bool = True


@dataclass
class GnssStreams:
    """Inputs of the filter (times in us, sorted).

    fix_t: int64[F]; fix_lla: float64[F, 3] (lat deg, lon deg, alt m); fix_status: int[F]
        (NavSatStatus, -1 = no fix); fix_var: float64[F, 3] ENU variances m^2, NaN = unknown
    imu_t: int64[I]; gyro_z: float64[I] rad/s; imu_rp: float64[I, 2] roll, pitch rad (NaN = none)
    odom_t: int64[O]; speed: float64[O] m/s; speed_var: float64[O] (m/s)^2, NaN = unknown
    """

    fix_t: np.ndarray
    fix_lla: np.ndarray
    fix_status: np.ndarray
    fix_var: np.ndarray
    imu_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    gyro_z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    imu_rp: Optional[np.ndarray] = None
    odom_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    speed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    speed_var: Optional[np.ndarray] = None


@dataclass
class Outage:
    start_us: int  # last accepted fix before the gap
    end_us: int  # first accepted fix after it (the stream's end when none)
    max_sigma_m: float  # largest horizontal position sigma reached in the gap (forward filter)


@dataclass
class FusedPose:
    """The filter's output.

    timestamps: int64[N] us; translations: float64[N, 3] ENU m; rotations_wxyz: float64[N, 4]
    covariances: float64[N, 6, 6] (x, y, z, roll, pitch, yaw), m^2 / rad^2
    dead_reckoning: bool[N], no fix accepted within outage_s; origin: (lat, lon, alt)
    rejected: {reason: count}
    """

    timestamps: np.ndarray
    translations: np.ndarray
    rotations_wxyz: np.ndarray
    yaw: np.ndarray
    covariances: np.ndarray
    dead_reckoning: np.ndarray
    origin: Tuple[float, float, float]
    outages: List[Outage]
    rejected: dict

    def pose_stream(self, name: str = "GNSS/IMU/odometry filter", max_extrapolation_us: int = 100_000) -> PoseStream:
        return PoseStream(self.timestamps, self.translations, self.rotations_wxyz, name=name,
                          max_extrapolation_us=max_extrapolation_us)


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _quat_wxyz(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    q = Rotation.from_euler("ZYX", np.column_stack([yaw, pitch, roll])).as_quat()
    return q[:, [3, 0, 1, 2]]


def fuse(streams: GnssStreams, origin: Optional[Sequence[float]] = None, cfg: FilterConfig = FilterConfig(),
         name: str = "GNSS") -> FusedPose:
    """Run the filter (and the smoother) over the streams; see the module doc."""
    import pymap3d

    s = streams
    lla = np.asarray(s.fix_lla, np.float64).reshape(-1, 3)
    status = np.asarray(s.fix_status).reshape(-1)
    usable = (status >= 0) & np.isfinite(lla).all(axis=1)
    rejected = {"no_fix_status": int((status < 0).sum()),
                "non_finite": int(((status >= 0) & ~np.isfinite(lla).all(axis=1)).sum()), "gated": 0}
    if rejected["no_fix_status"]:
        log.info("%s: %d fixes with status NO_FIX ignored", name, rejected["no_fix_status"])
    if rejected["non_finite"]:
        i = int(np.flatnonzero((status >= 0) & ~np.isfinite(lla).all(axis=1))[0])
        log.warning("%s: %d fixes with a NaN/inf coordinate ignored (first at t=%d us)", name,
                    rejected["non_finite"], int(s.fix_t[i]))
    if usable.sum() < 2:
        raise GnssError(f"{name}: {int(usable.sum())} usable fixes (of {len(status)}): a pose needs at least 2")
    if origin is None:
        origin = tuple(float(v) for v in lla[np.flatnonzero(usable)[0]])
    lat0, lon0, alt0 = origin
    enu = np.full((len(lla), 3), np.nan)
    e, n, u = pymap3d.geodetic2enu(lla[usable, 0], lla[usable, 1], lla[usable, 2], lat0, lon0, alt0)
    enu[usable] = np.column_stack([e, n, u])
    fvar = np.asarray(s.fix_var, np.float64).reshape(-1, 3).copy()
    fvar[~np.isfinite(fvar) | (fvar <= 0)] = cfg.default_fix_sigma ** 2

    # Events in time order: 0 = gyro, 1 = odometry, 2 = fix (at equal times inputs come first).
    ev = [(int(t), 0, i) for i, t in enumerate(s.imu_t)] + [(int(t), 1, i) for i, t in enumerate(s.odom_t)]
    ev += [(int(s.fix_t[i]), 2, i) for i in np.flatnonzero(usable)]
    ev.sort()
    has_gyro = len(s.imu_t) > 0
    q_yaw = cfg.q_yaw if has_gyro else 0.05  # without a gyro the heading follows the track alone

    # Initial state: the first usable fix; heading from the first fix at least 5 m away (or 0).
    iu = np.flatnonzero(usable)
    p0 = enu[iu[0]]
    far = [k for k in iu if np.hypot(*(enu[k, :2] - p0[:2])) >= 5.0]
    yaw0 = math.atan2(enu[far[0], 1] - p0[1], enu[far[0], 0] - p0[0]) if far else 0.0
    v0 = 0.0
    if len(s.odom_t):
        v0 = float(s.speed[0])
    elif far:
        v0 = float(np.hypot(*(enu[far[0], :2] - p0[:2])) / max(1e-3, (s.fix_t[far[0]] - s.fix_t[iu[0]]) * 1e-6))
    x = np.array([p0[0], p0[1], p0[2], yaw0, v0, 0.0])
    P = np.diag([fvar[iu[0], 0], fvar[iu[0], 1], fvar[iu[0], 2], 0.05 if far else 10.0, 1.0, 1e-5])
    t_prev = int(s.fix_t[iu[0]])
    w = 0.0
    H_fix = np.zeros((3, 6)); H_fix[0, 0] = H_fix[1, 1] = H_fix[2, 2] = 1.0
    H_v = np.zeros((1, 6)); H_v[0, 4] = 1.0

    T, XP, PP, XF, PF, FF = [], [], [], [], [], []
    last_fix = t_prev
    outages: List[Outage] = []
    gap_sigma = 0.0
    for t, kind, i in ev:
        if t < t_prev:
            continue  # before the first fix: nothing to start from
        dt = (t - t_prev) * 1e-6
        c, sn = math.cos(x[3]), math.sin(x[3])
        F = np.eye(6)
        F[0, 3], F[0, 4] = -x[4] * sn * dt, c * dt
        F[1, 3], F[1, 4] = x[4] * c * dt, sn * dt
        F[3, 5] = -dt
        x = x + np.array([x[4] * c * dt, x[4] * sn * dt, 0.0, (w - x[5]) * dt, 0.0, 0.0])
        x[3] = _wrap(x[3])
        Q = np.diag([cfg.q_pos, cfg.q_pos, cfg.q_alt, q_yaw, cfg.q_speed, cfg.q_bias]) * dt
        P = F @ P @ F.T + Q
        xp, Pp = x.copy(), P.copy()
        if kind == 0:
            w = float(s.gyro_z[i])
        elif kind == 1:
            var = cfg.default_speed_sigma ** 2
            if s.speed_var is not None and np.isfinite(s.speed_var[i]) and s.speed_var[i] > 0:
                var = float(s.speed_var[i])
            y = float(s.speed[i]) - x[4]
            S = P[4, 4] + var
            K = P[:, 4] / S
            x = x + K * y
            P = P - np.outer(K, P[4, :])
        else:
            R = np.diag(fvar[i])
            y = enu[i] - x[:3]
            S = P[:3, :3] + R
            if y @ np.linalg.solve(S, y) > cfg.gate:
                rejected["gated"] += 1
                if rejected["gated"] == 1:
                    log.warning("%s: fix at t=%d us is %.1f m from the prediction, beyond the %.1f chi-square "
                                "gate: rejected (further rejections counted)", name, t, float(np.linalg.norm(y)), cfg.gate)
            else:
                K = np.linalg.solve(S, H_fix @ P).T
                x = x + K @ y
                P = (np.eye(6) - K @ H_fix) @ P
                if (t - last_fix) * 1e-6 > cfg.outage_s:
                    outages.append(Outage(last_fix, t, gap_sigma))
                last_fix, gap_sigma = t, 0.0
        x[3] = _wrap(x[3])
        P = 0.5 * (P + P.T)
        if (t - last_fix) * 1e-6 > cfg.outage_s:
            gap_sigma = max(gap_sigma, float(np.sqrt(P[0, 0] + P[1, 1])))
        if T and T[-1] == t:
            # Several events at one microsecond: one state (the last) per time.
            XF[-1], PF[-1] = x.copy(), P.copy()
            continue
        T.append(t); XP.append(xp); PP.append(Pp); XF.append(x.copy()); PF.append(P.copy()); FF.append(F)
        t_prev = t
    if (T[-1] - last_fix) * 1e-6 > cfg.outage_s:
        outages.append(Outage(last_fix, T[-1], gap_sigma))
    for o in outages:
        log.warning("%s: no usable fix for %.1f s (t=%d..%d us): dead reckoning on %s; position sigma reached "
                    "%.2f m", name, (o.end_us - o.start_us) * 1e-6, o.start_us, o.end_us,
                    "gyro + odometry" if has_gyro and len(s.odom_t) else "the motion model", o.max_sigma_m)

    X, PS = np.array(XF), np.array(PF)
    if cfg.smooth and len(T) > 1:
        for k in range(len(T) - 2, -1, -1):
            Pp1 = PP[k + 1]
            C = np.linalg.solve(Pp1.T, (PF[k] @ FF[k + 1].T).T).T
            d = X[k + 1] - XP[k + 1]
            d[3] = _wrap(d[3])
            X[k] = XF[k] + C @ d
            X[k, 3] = _wrap(X[k, 3])
            PS[k] = PF[k] + C @ (PS[k + 1] - Pp1) @ C.T
    ts = np.array(T, np.int64)
    rp = np.zeros((len(ts), 2))
    rp_var = np.full((len(ts), 2), 0.01)  # a planar ego: roll/pitch unknown to ~6 deg
    if s.imu_rp is not None and len(s.imu_t):
        ok = np.isfinite(s.imu_rp).all(axis=1)
        if ok.any():
            for j in range(2):
                rp[:, j] = np.interp(ts, s.imu_t[ok], s.imu_rp[ok, j])
            rp_var[:] = 1e-4
    cov = np.zeros((len(ts), 6, 6))
    cov[:, :3, :3] = PS[:, :3, :3]
    cov[:, 3, 3], cov[:, 4, 4] = rp_var[:, 0], rp_var[:, 1]
    cov[:, 5, 5] = PS[:, 3, 3]
    cov[:, :3, 5] = PS[:, :3, 3]
    cov[:, 5, :3] = PS[:, 3, :3]
    fix_times = np.array(sorted(int(s.fix_t[i]) for i in iu), np.int64)
    j = np.searchsorted(fix_times, ts)
    near = np.minimum(np.abs(ts - fix_times[np.clip(j - 1, 0, len(fix_times) - 1)]),
                      np.abs(fix_times[np.clip(j, 0, len(fix_times) - 1)] - ts))
    dr = near * 1e-6 > cfg.outage_s
    return FusedPose(ts, X[:, :3].copy(), _quat_wxyz(rp[:, 0], rp[:, 1], X[:, 3]), X[:, 3].copy(), cov, dr,
                     (float(lat0), float(lon0), float(alt0)), outages, rejected)
