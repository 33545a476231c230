"""Radar simulation (Continental ARS 408-21 as on the nuScenes car) and the PCD v0.7 writer.

Each message holds sparse cluster returns in the radar frame (x forward, y left, z = 0): objects are
detected with a probability that falls with range and rises with their radar cross section (near
mode +-60 deg to 70 m, far mode +-9 deg to 200 m), occluded objects less often; every return carries
the radial (Doppler) velocity, raw (relative to the moving sensor) and ego-motion compensated,
projected on the line of sight as the sensor reports it. Static structures give clutter and random
false alarms are added, some flagged invalid (dropped by the devkit's default filters).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import rig
from .lidar import T_global_from_ego, rigid_inverse, scene_boxes
from .world import World

FIELDS = ("x y z dyn_prop id rcs vx vy vx_comp vy_comp is_quality_valid ambig_state x_rms y_rms "
          "invalid_state pdh0 vx_rms vy_rms").split()
_FMT = "<fffbhfffffbbbbbbbb"  # 43 bytes per record, as in the nuScenes files
_STATIC_RCS = np.array([14.0, 8.0, 6.0, 2.0, -6.0, -2.0])  # building, wall, pole, trunk, canopy, hedge


@dataclass
class RadarConfig:
    near_fov_deg: float = 60.0
    near_range: float = 70.0
    far_fov_deg: float = 9.0
    far_range: float = 200.0
    false_alarms: float = 2.0  # mean per message
    range_noise: float = 0.15  # m
    azimuth_noise_deg: float = 0.3
    velocity_noise: float = 0.1  # m/s


def _p_detect(rcs: np.ndarray, r: np.ndarray, far: np.ndarray) -> np.ndarray:
    eff = rcs - 30.0 * np.log10(np.maximum(r, 1.0) / 10.0) + 8.0 * far
    return 1.0 / (1.0 + np.exp(-(eff + 13.0) / 4.0))


def _blocked(p0: np.ndarray, targets: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """bool[M, K]: whether the 2D segment p0 -> targets[m] crosses the footprint of boxes[k].

    p0: float64[2] global xy; targets: float64[M, 2] global xy; boxes: float64[K, 9] global boxes.
    """
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])

    def local(p):  # [..., K, 2] coordinates in each box frame
        d = p[..., None, :] - boxes[:, :2]
        return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)

    a = local(p0)[None]  # [1, K, 2]
    d = local(targets) - a  # [M, K, 2]
    half = np.stack([boxes[:, 3], boxes[:, 4]], -1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - a) / d
        t2 = (half - a) / d
    lo = np.where(np.abs(d) < 1e-12, np.where(np.abs(a) <= half, -np.inf, np.inf), np.minimum(t1, t2))
    hi = np.where(np.abs(d) < 1e-12, np.where(np.abs(a) <= half, np.inf, -np.inf), np.maximum(t1, t2))
    t0 = np.maximum(lo.max(-1), 0.0)
    t1 = np.minimum(hi.min(-1), 1.0)
    return t0 <= t1


def simulate_message(world: World, channel: str, t_us: int, cfg: RadarConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """One radar message of ``channel`` at t_us.

    Returns float64[P, 18] records in FIELDS order: x, y (radar frame, m), z = 0, states, rcs (dBsm),
    vx, vy raw and vx_comp, vy_comp compensated radial velocities in the radar frame (m/s).
    """
    xy, yaw, v_ego, yaw_rate = world.ego_state(t_us)
    T_g_r = T_global_from_ego(xy[0], yaw[0]) @ rig.T_ego_from_sensor(channel)
    T_r_g = rigid_inverse(T_g_r)
    # Sensor velocity in the global frame: ego velocity plus yaw rate x lever arm.
    lever = T_g_r[:2, 3] - xy[0]
    v_sensor = v_ego[0] + yaw_rate[0] * np.array([-lever[1], lever[0]])
    boxes, _, n_agents = scene_boxes(world, t_us)
    rcs_mean = np.concatenate([np.array([a.rcs for a in world.agents]), _STATIC_RCS[world.static_kind]])
    cen = boxes[:, :3] @ T_r_g[:3, :3].T + T_r_g[:3, 3]
    r = np.hypot(cen[:, 0], cen[:, 1])
    az = np.degrees(np.arctan2(cen[:, 1], cen[:, 0]))
    ext = 0.5 * np.hypot(boxes[:, 3], boxes[:, 4])
    near = (np.abs(az) < cfg.near_fov_deg) & (r < cfg.near_range + ext)
    far = (np.abs(az) < cfg.far_fov_deg) & (r < cfg.far_range)
    cand = np.nonzero((near | far) & (r > 1.0))[0]
    p = _p_detect(rcs_mean[cand], r[cand], far[cand] & ~near[cand])
    u_det = rng.uniform(size=len(cand))
    rows = []
    sensor_xy = T_g_r[:2, 3]
    agent_boxes = boxes[:n_agents]
    close = np.nonzero(np.hypot(*(agent_boxes[:, :2] - sensor_xy).T) < cfg.near_range)[0]
    # Partly blocked line of sight: radar still sees under and around cars, but less often.
    blk = _blocked(sensor_xy, boxes[cand, :2], agent_boxes[close])
    blk &= (close[None, :] != cand[:, None]) & (r[close][None, :] < r[cand][:, None])
    p = np.where(blk.any(1), 0.3 * p, p)
    for j, i in enumerate(cand):
        if u_det[j] >= p[j]:
            continue
        is_agent = i < n_agents
        n_pts = 1 + (rng.poisson(min(3.0, (boxes[i, 3] + boxes[i, 4]) / 6.0)) if is_agent else 0)
        for _ in range(min(n_pts, 4)):
            # A point on the box's sensor-facing half, inside its footprint.
            c, s = np.cos(boxes[i, 6]), np.sin(boxes[i, 6])
            to_sensor = sensor_xy - boxes[i, :2]
            local_dir = np.array([c * to_sensor[0] + s * to_sensor[1], -s * to_sensor[0] + c * to_sensor[1]])
            half = boxes[i, 3:5] / 2
            loc = rng.uniform(-1, 1, 2) * half * 0.8
            loc = np.where(np.sign(local_dir) * loc < 0, -loc, loc) if rng.uniform() < 0.8 else loc
            pg = boxes[i, :2] + np.array([c * loc[0] - s * loc[1], s * loc[0] + c * loc[1]])
            rows.append(_record(pg, boxes[i, 7:9], rcs_mean[i], T_r_g, sensor_xy, v_sensor, cfg, rng,
                                is_agent, moving=bool(np.hypot(*boxes[i, 7:9]) > 0.3)))
    # False alarms (multipath ghosts, noise), some of them flagged invalid.
    for _ in range(rng.poisson(cfg.false_alarms)):
        rr = rng.uniform(2.0, cfg.near_range)
        aa = np.radians(rng.uniform(-cfg.near_fov_deg, cfg.near_fov_deg))
        pr = np.array([rr * np.cos(aa), rr * np.sin(aa), 0.0])
        pg = (T_g_r[:3, :3] @ pr + T_g_r[:3, 3])[:2]
        rec = _record(pg, np.zeros(2), rng.uniform(-10, 5), T_r_g, sensor_xy, v_sensor, cfg, rng, False, False)
        rec[15] = rng.integers(3, 8)  # pdh0: high false-alarm probability
        if rng.uniform() < 0.5:
            rec[14] = rng.choice([1, 2, 3, 6, 7])
            rec[11] = rng.choice([0, 1, 3])
        rows.append(rec)
    out = np.array(rows, dtype=np.float64).reshape(-1, 18)
    out[:, 4] = np.arange(len(out))
    return out


def _record(pg, v_obj, rcs, T_r_g, sensor_xy, v_sensor, cfg, rng, is_agent, moving) -> np.ndarray:
    los = pg - sensor_xy
    rng_true = np.hypot(*los)
    u = los / max(rng_true, 1e-6)
    v_rad_comp = float(v_obj @ u)
    v_rad_raw = float((v_obj - v_sensor) @ u)
    # Measurement noise in polar coordinates of the radar frame.
    pr = T_r_g[:3, :3] @ np.array([pg[0], pg[1], 0.0]) + T_r_g[:3, 3]
    rr = np.hypot(pr[0], pr[1]) + rng.normal(0, cfg.range_noise)
    aa = np.arctan2(pr[1], pr[0]) + np.radians(rng.normal(0, cfg.azimuth_noise_deg))
    ur = np.array([np.cos(aa), np.sin(aa)])
    raw = (v_rad_raw + rng.normal(0, cfg.velocity_noise)) * ur
    comp = (v_rad_comp + rng.normal(0, cfg.velocity_noise)) * ur
    if moving:
        dyn = 2 if v_rad_comp < -0.5 * np.hypot(*v_obj) else (0 if v_rad_comp > 0.5 * np.hypot(*v_obj) else 6)
    else:
        dyn = 1 if is_agent or rng.uniform() < 0.6 else 3
    rec = np.zeros(18)
    rec[0], rec[1], rec[2] = rr * ur[0], rr * ur[1], 0.0
    rec[3] = dyn
    rec[5] = np.round((rcs + rng.normal(0, 3.0)) * 2) / 2
    rec[6:8] = np.round(raw * 4) / 4  # the sensor reports velocities in 0.25 m/s steps
    rec[8:10] = comp
    rec[10], rec[11] = 1, 3  # quality valid, Doppler unambiguous
    rec[12], rec[13] = rng.integers(19, 23), rng.integers(19, 25)
    rec[14], rec[15] = 0, 1  # valid cluster, false-alarm probability < 25 %
    rec[16], rec[17] = rng.integers(16, 19), 3
    return rec


def encode_pcd(records: np.ndarray) -> bytes:
    """PCD v0.7 binary bytes of radar records float64[P, 18] (FIELDS order), as nuScenes writes them.

    Zero padding follows the records as in the real files. The devkit reader asserts WIDTH > 0, so an empty message is written as one invalid record
    (invalid_state 7: outside the field of view), which the default filters drop.
    """
    if len(records) == 0:
        records = np.zeros((1, 18))
        records[0, 14] = 7
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS " + " ".join(FIELDS) +
              "\nSIZE 4 4 4 1 2 4 4 4 4 4 1 1 1 1 1 1 1 1\nTYPE F F F I I F F F F F I I I I I I I I\n"
              "COUNT 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1\n"
              f"WIDTH {len(records)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(records)}\nDATA binary\n")
    body = b"".join(struct.pack(_FMT, *(float(v) if k in (0, 1, 2, 5, 6, 7, 8, 9) else int(v)
                                        for k, v in enumerate(rec))) for rec in records)
    # The devkit reader needs bytes after the last record (real files end in zero padding).
    return header.encode("ascii") + body + bytes(43)
