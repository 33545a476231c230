"""LiDAR simulation: a spinning 32-beam HDL-32E ray-cast against the world's boxes and the ground.

The beam turns clockwise seen from above (azimuth decreasing over time) and points at
``LIDAR_END_AZIMUTH_DEG`` in the LIDAR_TOP frame when the sweep ends. Each azimuth column fires at
its own time: the sensor pose and the agents' positions are those of that instant (so moving
objects smear a little, as on the real sensor), and every point is then expressed in the LIDAR_TOP
frame at the sweep's end time (ego-motion compensated, as the nuScenes files are).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import rig
from .world import G_CROSSWALK, G_WHITE, G_YELLOW, World


@dataclass
class LidarConfig:
    azimuth_steps: int = 512  # columns per rotation (the HDL-32E at 20 Hz has ~1084)
    max_range: float = 80.0  # m
    range_noise: float = 0.02  # m, 1 sigma
    dropout: float = 0.03  # base probability that a return is lost


@numba.njit(cache=True, parallel=True)
def raycast_kernel(col_az, col_dt, col_origin, col_rot, elev, box_c, box_R, box_half, box_v, box_az,
                   box_halfwidth, box_rmin, box_el_lo, box_el_hi, ground_n, ground_d, max_range):
    """Ray-cast one sweep; all inputs in the LIDAR_TOP frame at the sweep end.

    col_az: float64[C] azimuth rad; col_dt: float64[C] firing time - end time, s (<= 0)
    col_origin: float64[C, 3] sensor origin at firing time, m; col_rot: float64[C, 3, 3] sensor axes
    at firing time; elev: float64[B] beam elevations rad
    box_c: float64[N, 3] centres at end time; box_R: float64[N, 3, 3] box-local -> frame; box_half:
    float64[N, 3] half sizes; box_v: float64[N, 3] m/s; box_az/box_halfwidth: float64[N] angular
    extent seen from the origin, rad; box_rmin: float64[N] nearest possible range, m;
    box_el_lo/box_el_hi: float64[N] band of beam elevations (rad) that can reach the box
    ground_n: float64[3], ground_d: plane n.p + d = 0 of the ground
    Returns range float64[C, B] (inf: no return), hit int64[C, B] (box index, -1 ground, -2 none),
    cos_inc float64[C, B] cosine of the incidence angle.
    """
    C = col_az.shape[0]
    NB = elev.shape[0]
    N = box_c.shape[0]
    rng_out = np.full((C, NB), np.inf)
    hit = np.full((C, NB), -2, dtype=np.int64)
    cos_inc = np.zeros((C, NB))
    for c in numba.prange(C):
        az = col_az[c]
        o = col_origin[c]
        Rc = col_rot[c]
        dirs = np.empty((NB, 3))
        for b in range(NB):
            ce = np.cos(elev[b])
            dl0 = ce * np.cos(az)
            dl1 = ce * np.sin(az)
            dl2 = np.sin(elev[b])
            for k in range(3):
                dirs[b, k] = Rc[k, 0] * dl0 + Rc[k, 1] * dl1 + Rc[k, 2] * dl2
        # Ground plane.
        no = ground_n[0] * o[0] + ground_n[1] * o[1] + ground_n[2] * o[2] + ground_d
        for b in range(NB):
            nd = ground_n[0] * dirs[b, 0] + ground_n[1] * dirs[b, 1] + ground_n[2] * dirs[b, 2]
            if nd < -1e-9:
                t = -no / nd
                if t < max_range:
                    rng_out[c, b] = t
                    hit[c, b] = -1
                    cos_inc[c, b] = -nd
        for i in range(N):
            if box_rmin[i] > max_range:
                continue
            da = az - box_az[i]
            da = (da + np.pi) % (2 * np.pi) - np.pi
            if abs(da) > box_halfwidth[i]:
                continue
            # Ray origin in box-local coordinates (box moved to the firing time).
            p = np.empty(3)
            for k in range(3):
                p[k] = o[k] - (box_c[i, k] + box_v[i, k] * col_dt[c])
            pl = np.empty(3)
            for k in range(3):
                pl[k] = box_R[i, 0, k] * p[0] + box_R[i, 1, k] * p[1] + box_R[i, 2, k] * p[2]
            for b in range(NB):
                if elev[b] < box_el_lo[i] or elev[b] > box_el_hi[i]:
                    continue
                tmin = -1e30
                tmax = 1e30
                axis = 0
                ok = True
                for k in range(3):
                    dk = box_R[i, 0, k] * dirs[b, 0] + box_R[i, 1, k] * dirs[b, 1] + box_R[i, 2, k] * dirs[b, 2]
                    if abs(dk) < 1e-12:
                        if abs(pl[k]) > box_half[i, k]:
                            ok = False
                            break
                        continue
                    t1 = (-box_half[i, k] - pl[k]) / dk
                    t2 = (box_half[i, k] - pl[k]) / dk
                    if t1 > t2:
                        t1, t2 = t2, t1
                    if t1 > tmin:
                        tmin = t1
                        axis = k
                    if t2 < tmax:
                        tmax = t2
                if not ok or tmax < tmin or tmin <= 0.0:
                    continue
                if tmin < rng_out[c, b]:
                    rng_out[c, b] = tmin
                    hit[c, b] = i
                    dk = box_R[i, 0, axis] * dirs[b, 0] + box_R[i, 1, axis] * dirs[b, 1] + box_R[i, 2, axis] * dirs[b, 2]
                    cos_inc[c, b] = abs(dk)
    return rng_out, hit, cos_inc


def _yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.zeros((len(yaw), 3, 3))
    R[:, 0, 0], R[:, 0, 1], R[:, 1, 0], R[:, 1, 1], R[:, 2, 2] = c, -s, s, c, 1.0
    return R


def T_global_from_ego(xy: np.ndarray, yaw: float) -> np.ndarray:
    """float64[4, 4] ego -> global for an ego at global xy (m) with heading yaw (rad)."""
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[0, 0], T[0, 1], T[1, 0], T[1, 1] = c, -s, s, c
    T[:2, 3] = xy
    return T


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform float64[4, 4]."""
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def scene_boxes(world: World, t_us: int):
    """All boxes of the world at t_us: (boxes float64[N, 9] global (x, y, z, l, w, h, yaw, vx, vy),
    reflectivity float64[N] 0-1, n_agents) with the agents first, then the static structures."""
    agents = world.agent_boxes(t_us)
    st = np.zeros((len(world.statics), 9))
    st[:, :7] = world.statics
    boxes = np.concatenate([agents, st], 0)
    refl = np.concatenate([np.array([_agent_refl(a.cls) for a in world.agents]),
                           np.array([0.35, 0.3, 0.5, 0.2, 0.15, 0.15])[world.static_kind]])
    return boxes, refl, len(agents)


# Vehicle bodies as solid parts in box-local unit coordinates (u back -> front, v right -> left,
# w bottom -> top, each in [0, 1]): (u0, u1, v0, v1, w0, w1). A plain box looks the same from the
# front and from the back, so a LiDAR-only model cannot tell a car's heading from its mirror image
# (half of the synthetic cars used to come out turned by 180 degrees). A long bonnet in front of a
# cabin that sits towards the rear, and a truck's low cab in front of its tall cargo box, give every
# sensor that sees the shape (LiDAR, camera) a front and a back. The annotation stays the whole box.
VEHICLE_PARTS = {
    "car": ((0.0, 1.0, 0.0, 1.0, 0.0, 0.55), (0.12, 0.70, 0.05, 0.95, 0.55, 1.0)),
    "truck": ((0.0, 0.71, 0.0, 1.0, 0.0, 1.0), (0.73, 1.0, 0.02, 0.98, 0.0, 0.78)),
}


def shape_parts(boxes: np.ndarray, classes) -> tuple:
    """Split the boxes of shaped classes into their solid parts (VEHICLE_PARTS); others stay whole.

    boxes: float64[N, 9] (x, y, z, l, w, h, yaw, vx, vy), same frame; classes: length-N class names
    ('' for static structures). Returns (parts float64[M, 9] in the same layout, owner int64[M] index
    into boxes, uvw0 float64[M, 3] and uvw_scale float64[M, 3]: a part's box-local coordinate
    c in [0, 1] is uvw0 + uvw_scale * c in its owner's box-local coordinates).
    """
    parts, owner, uvw0, uvw_scale = [], [], [], []
    for i, cls in enumerate(classes):
        spec = VEHICLE_PARTS.get(cls)
        if spec is None:
            parts.append(boxes[i])
            owner.append(i)
            uvw0.append((0.0, 0.0, 0.0))
            uvw_scale.append((1.0, 1.0, 1.0))
            continue
        x, y, z, L, W, H, yaw = boxes[i, :7]
        c, s = np.cos(yaw), np.sin(yaw)
        for u0, u1, v0, v1, w0, w1 in spec:
            # centre offset in the box frame: u from back (-L/2) to front, v from right (-W/2) to left
            du, dv, dw = ((u0 + u1) / 2 - 0.5) * L, ((v0 + v1) / 2 - 0.5) * W, ((w0 + w1) / 2 - 0.5) * H
            p = boxes[i].copy()
            p[0] = x + c * du - s * dv
            p[1] = y + s * du + c * dv
            p[2] = z + dw
            p[3:6] = ((u1 - u0) * L, (v1 - v0) * W, (w1 - w0) * H)
            parts.append(p)
            owner.append(i)
            uvw0.append((u0, v0, w0))
            uvw_scale.append((u1 - u0, v1 - v0, w1 - w0))
    return (np.array(parts, np.float64).reshape(-1, boxes.shape[1]), np.array(owner, np.int64),
            np.array(uvw0, np.float64).reshape(-1, 3), np.array(uvw_scale, np.float64).reshape(-1, 3))


def scene_classes(world: World) -> list:
    """Class name per box of scene_boxes (agents first, '' for the static structures)."""
    return [a.cls for a in world.agents] + [""] * len(world.statics)


def _agent_refl(cls: str) -> float:
    return {"traffic_cone": 0.8, "barrier": 0.6, "pedestrian": 0.25, "bicycle": 0.3,
            "motorcycle": 0.4}.get(cls, 0.45)


def simulate_sweep(world: World, t_end: int, cfg: LidarConfig, rng: np.random.Generator) -> np.ndarray:
    """One LiDAR sweep ending at t_end (us).

    Returns float32[P, 5] (x, y, z, intensity 0-255, ring 0-31), LIDAR_TOP frame at t_end, metres.
    """
    C = cfg.azimuth_steps
    T = rig.LIDAR_PERIOD_US
    k = np.arange(C)
    tau_us = T * (C - k) / C  # column k fires tau before the end
    col_t = t_end - np.round(tau_us).astype(np.int64)
    az = np.radians(rig.LIDAR_END_AZIMUTH_DEG) + 2 * np.pi * (C - k) / C
    az = (az + np.pi) % (2 * np.pi) - np.pi
    T_el = rig.T_ego_from_sensor("LIDAR_TOP")
    xy, yaw, _, _ = world.ego_state(np.concatenate([col_t, [t_end]]))
    T_g_end = T_global_from_ego(xy[-1], yaw[-1]) @ T_el
    T_end_g = rigid_inverse(T_g_end)
    # Sensor pose at every column's firing time, in the end-time sensor frame (vectorized).
    T_ge = np.zeros((C, 4, 4))
    T_ge[:, :3, :3] = _yaw_matrix(yaw[:C])
    T_ge[:, :2, 3] = xy[:C]
    T_ge[:, 3, 3] = 1.0
    T_rel = T_end_g @ T_ge @ T_el
    col_origin = np.ascontiguousarray(T_rel[:, :3, 3])
    col_rot = np.ascontiguousarray(T_rel[:, :3, :3])
    boxes, refl, n_agents = scene_boxes(world, t_end)
    boxes, owner, _, _ = shape_parts(boxes, scene_classes(world))
    refl = refl[owner]
    R_end = T_end_g[:3, :3]
    c_s = boxes[:, :3] @ R_end.T + T_end_g[:3, 3]
    box_R = R_end @ _yaw_matrix(boxes[:, 6])
    v_s = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], 1) @ R_end.T
    half = boxes[:, 3:6] / 2
    r_xy = np.hypot(c_s[:, 0], c_s[:, 1])
    rho = np.hypot(half[:, 0], half[:, 1]) + np.linalg.norm(v_s, axis=1) * T * 1e-6 + \
        np.max(np.linalg.norm(col_origin, axis=1)) + 0.05
    halfwidth = np.where(r_xy > rho + 1e-3, np.arcsin(np.clip(rho / np.maximum(r_xy, 1e-9), 0, 1)), np.pi)
    rmin = np.maximum(r_xy - rho, 0.0)
    # Only boxes within range, and per box the band of beam elevations that can reach it (the
    # sensor's small tilt and the sweep's motion are covered by the margin).
    near = np.nonzero(rmin < cfg.max_range)[0]
    c_s, box_R, half, v_s, r_xy, rho, halfwidth, rmin = (a[near] for a in (c_s, box_R, half, v_s, r_xy, rho, halfwidth, rmin))
    rmax = r_xy + rho
    zc = c_s[:, 2]
    zr = np.sum(np.abs(box_R[:, 2, :]) * half, axis=1) + 0.1
    el_hi = np.where(zc + zr > 0, np.arctan2(zc + zr, np.maximum(rmin, 0.1)), np.arctan2(zc + zr, rmax)) + 0.06
    el_lo = np.where(zc - zr < 0, np.arctan2(zc - zr, np.maximum(rmin, 0.1)), np.arctan2(zc - zr, rmax)) - 0.06
    ground_n = R_end[:, 2].copy()  # global z axis in the sensor frame
    ground_d = float(T_g_end[2, 3])  # n.p + d = z_global(p)
    elev = np.radians(rig.HDL32E_ELEVATION_DEG)
    rng_hit, hit, cos_inc = raycast_kernel(az, (col_t - t_end) * 1e-6, col_origin, col_rot, elev, c_s, box_R,
                                           half, v_s, np.arctan2(c_s[:, 1], c_s[:, 0]), halfwidth, rmin,
                                           el_lo, el_hi, ground_n, ground_d, cfg.max_range)
    hit = np.where(hit >= 0, near[np.maximum(hit, 0)], hit)
    ci, bi = np.nonzero(np.isfinite(rng_hit))
    r = rng_hit[ci, bi]
    h = hit[ci, bi]
    cosi = cos_inc[ci, bi]
    # Dropout grows with range and grazing incidence; far ground returns fade first.
    p_drop = cfg.dropout + 0.35 * (r / cfg.max_range) ** 2 + 0.25 * (cosi < 0.1)
    keep = rng.uniform(size=len(r)) >= p_drop
    ci, bi, r, h, cosi = ci[keep], bi[keep], r[keep], h[keep], cosi[keep]
    r_noisy = r + rng.normal(0.0, cfg.range_noise, len(r))
    ce = np.cos(elev[bi])
    d_local = np.stack([ce * np.cos(az[ci]), ce * np.sin(az[ci]), np.sin(elev[bi])], 1)
    d = np.matmul(col_rot[ci], d_local[:, :, None])[:, :, 0]
    pts = col_origin[ci] + d * r_noisy[:, None]
    # Reflectivity: boxes by kind; ground by material (lane paint is retro-reflective).
    rf = np.where(h >= 0, refl[np.maximum(h, 0)], 0.12)
    g = h == -1
    if np.any(g):
        pg = pts[g] @ T_g_end[:3, :3].T + T_g_end[:3, 3]
        mat = world.ground_material(pg[:, 0], pg[:, 1])
        rf_g = np.where(np.isin(mat, [G_WHITE, G_YELLOW, G_CROSSWALK]), 0.75, 0.1 + 0.05 * (mat == 0))
        rf[g] = rf_g
    intensity = 255.0 * rf * (0.35 + 0.65 * cosi) / (1.0 + (r / 60.0) ** 2)
    intensity = np.clip(np.round(intensity + rng.normal(0, 2.0, len(r))), 0, 255)
    out = np.zeros((len(r), 5), dtype=np.float32)
    out[:, :3] = pts
    out[:, 3] = intensity
    out[:, 4] = bi
    return out
