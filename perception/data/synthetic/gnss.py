"""A GNSS receiver, a gyro and wheel odometry on the synthetic ego's true motion.

The synthetic global frame is taken as the local ENU frame (x east, y north, z up) of the map's
geodetic origin (``MAP_ORIGINS``: the reference coordinates of the devkit's pose export,
nuscenes/scripts/export_poses.py), so a fix is the true rear-axle position plus receiver error,
converted to latitude/longitude/altitude with ``pymap3d``.

Error model (SBAS-grade single-frequency receiver at 10 Hz):

- white noise, sigma ``sigma_white_m`` horizontal (1.5x vertical), and a slowly wandering bias
  (first-order Gauss-Markov, sigma ``sigma_bias_m``, correlation time ``bias_tau_s``): multipath and
  atmosphere move the error over tens of seconds, which no filter can average away;
- dropouts: each fix is lost with ``dropout_rate`` in short bursts (tunnels, bridges), plus optional
  outages [start_s, end_s) from the scene start; a lost fix is published with status NO_FIX (-1) and
  NaN coordinates, as receivers do, so the consumer has to reject it;
- reported covariance: the sum of the two variances, diagonal (COVARIANCE_TYPE_DIAGONAL_KNOWN).

Gyro: z rate with white noise ``gyro_sigma`` per sample and a constant bias ``gyro_bias_sigma``
(drawn once). Wheel odometry: forward speed times (1 + scale error) plus white noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

# Geodetic (lat, lon) of each map's global-frame origin, degrees (devkit export_poses.py), altitude 0.
MAP_ORIGINS = {
    "boston-seaport": (42.336849169438615, -71.05785369873047),
    "singapore-onenorth": (1.2882100868743724, 103.78475189208984),
    "singapore-hollandvillage": (1.2993652317780957, 103.78217697143555),
    "singapore-queenstown": (1.2782562240223188, 103.76741409301758),
}

STATUS_NO_FIX, STATUS_FIX, STATUS_SBAS_FIX = -1, 0, 1


@dataclass
class GnssConfig:
    rate_hz: float = 10.0
    sigma_white_m: float = 0.5
    sigma_bias_m: float = 0.2
    bias_tau_s: float = 30.0
    dropout_rate: float = 0.02  # a burst of lost fixes starts at this share of fixes
    dropout_burst_s: Tuple[float, float] = (0.2, 1.0)
    outages: List[Tuple[float, float]] = field(default_factory=list)  # seconds from the start
    imu_rate_hz: float = 100.0
    gyro_sigma: float = 0.003  # rad/s per sample
    gyro_bias_sigma: float = 0.002  # rad/s
    odom_rate_hz: float = 50.0
    odom_sigma: float = 0.03  # m/s per sample
    odom_scale_sigma: float = 0.005


@dataclass
class SimulatedStreams:
    """GNSS fixes, gyro and wheel speed of one drive.

    fix_t: int64[F] us; fix_lla: float64[F, 3] (lat deg, lon deg, alt m), NaN when lost;
    fix_status: int8[F] (NavSatStatus); fix_var: float64[F, 3] reported ENU variances, m^2
    imu_t: int64[I] us; gyro_z: float64[I] rad/s (measured)
    odom_t: int64[O] us; speed: float64[O] m/s (measured)
    origin: (lat, lon, alt) of the global frame's origin
    """

    fix_t: np.ndarray
    fix_lla: np.ndarray
    fix_status: np.ndarray
    fix_var: np.ndarray
    imu_t: np.ndarray
    gyro_z: np.ndarray
    odom_t: np.ndarray
    speed: np.ndarray
    origin: Tuple[float, float, float]


def _gauss_markov(rng: np.random.Generator, n: int, dt: float, sigma: float, tau: float, dims: int) -> np.ndarray:
    a = np.exp(-dt / tau)
    out = np.empty((n, dims))
    out[0] = rng.normal(0, sigma, dims)
    w = rng.normal(0, sigma * np.sqrt(1 - a * a), (n, dims))
    for i in range(1, n):
        out[i] = a * out[i - 1] + w[i]
    return out


def simulate(world, t_first: int, t_last: int, rng: np.random.Generator, cfg: GnssConfig = GnssConfig(),
             location: str = "boston-seaport") -> SimulatedStreams:
    """The three streams over [t_first, t_last] us of a synthetic World (its ego_state is the truth)."""
    import pymap3d

    lat0, lon0 = MAP_ORIGINS[location]
    origin = (lat0, lon0, 0.0)
    period = int(round(1e6 / cfg.rate_hz))
    ft = np.arange(t_first, t_last + 1, period, dtype=np.int64)
    xy, _, _, _ = world.ego_state(ft)
    n = len(ft)
    err = rng.normal(0, cfg.sigma_white_m, (n, 3)) * [1, 1, 1.5]
    err += _gauss_markov(rng, n, period * 1e-6, cfg.sigma_bias_m, cfg.bias_tau_s, 3) * [1, 1, 1.5]
    enu = np.column_stack([xy, np.zeros(n)]) + err
    lat, lon, alt = pymap3d.enu2geodetic(enu[:, 0], enu[:, 1], enu[:, 2], lat0, lon0, 0.0)
    lla = np.column_stack([lat, lon, alt])
    lost = np.zeros(n, bool)
    i = 0
    while i < n:
        if rng.random() < cfg.dropout_rate:
            k = int(round(rng.uniform(*cfg.dropout_burst_s) * cfg.rate_hz))
            lost[i:i + max(1, k)] = True
            i += max(1, k)
        i += 1
    tau = (ft - t_first) * 1e-6
    for a, b in cfg.outages:
        lost |= (tau >= a) & (tau < b)
    lla[lost] = np.nan
    status = np.where(lost, STATUS_NO_FIX, STATUS_SBAS_FIX).astype(np.int8)
    var_h = cfg.sigma_white_m ** 2 + cfg.sigma_bias_m ** 2
    fix_var = np.tile([var_h, var_h, 2.25 * var_h], (n, 1))

    it = np.arange(t_first, t_last + 1, int(round(1e6 / cfg.imu_rate_hz)), dtype=np.int64)
    _, _, _, yr = world.ego_state(it)
    gyro = yr + rng.normal(0, cfg.gyro_bias_sigma) + rng.normal(0, cfg.gyro_sigma, len(it))
    ot = np.arange(t_first, t_last + 1, int(round(1e6 / cfg.odom_rate_hz)), dtype=np.int64)
    _, _, v, _ = world.ego_state(ot)
    speed = np.hypot(v[:, 0], v[:, 1]) * (1 + rng.normal(0, cfg.odom_scale_sigma)) + rng.normal(0, cfg.odom_sigma, len(ot))
    return SimulatedStreams(ft, lla, status, fix_var, it, gyro, ot, speed, origin)


def fixes_json(s: SimulatedStreams) -> List[dict]:
    """The fixes as CAN-bus-style records (``can_bus/<scene>_gnss.json``): utime, latitude, longitude,
    altitude (null when lost), status, position_covariance (ENU variances, m^2)."""
    out = []
    for t, (la, lo, al), st, var in zip(s.fix_t, s.fix_lla, s.fix_status, s.fix_var):
        ok = np.isfinite(la)
        out.append({"utime": int(t), "latitude": float(la) if ok else None, "longitude": float(lo) if ok else None,
                    "altitude": round(float(al), 4) if ok else None, "status": int(st),
                    "position_covariance": [round(float(v), 6) for v in var]})
    return out
