"""Camera simulation: z-buffer rasterization of the world's boxes over an analytic ground and sky.

Each box face is drawn with a class-dependent procedural appearance (windows, wheels, lights,
clothing, cone bands, barrier stripes, facades) in box-local coordinates, Lambert shading under the
scene's sun, a slowly changing overall brightness, distance haze and sensor noise. The same pass
counts, per box, the pixels its front faces cover and the pixels that stay visible, which gives the
occlusion-based visibility of the annotations.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Tuple

import numba
import numpy as np
from PIL import Image

from . import rig
from .lidar import T_global_from_ego, rigid_inverse, scene_boxes, scene_classes, shape_parts
from .world import (G_ASPHALT, G_CROSSWALK, G_GRASS, G_SIDEWALK, G_WHITE, G_YELLOW, STATIC_KINDS, World)
from perception.structures import CLASS_TO_ID

# Corner j of a box has local sign (x, y, z) = bits (1, 2, 4) of j; faces as cyclic corner lists.
_SIGNS = np.array([[1 if j & 1 else -1, 1 if j & 2 else -1, 1 if j & 4 else -1] for j in range(8)], np.float64)
FACES = np.array([[1, 3, 7, 5], [0, 2, 6, 4], [2, 3, 7, 6], [0, 1, 5, 4], [4, 5, 7, 6], [0, 1, 3, 2]], np.int64)
FACE_AXIS = np.array([0, 0, 1, 1, 2, 2])
FACE_SIGN = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
NEAR = 0.05


@dataclass
class CameraConfig:
    width: int = 400
    height: int = 225
    jpeg_quality: int = 85
    noise: float = 2.5  # sensor noise, 1 sigma in 0-255 units


@numba.njit(cache=True)
def raster_kernel(corners, group, K, width, height, zbuf):
    """Draw boxes into a z-buffer (in place).

    corners: float64[N, 8, 3] box corners in the camera frame (x right, y down, z forward), m, in the
    _SIGNS order; group: int64[N] the object each box is a part of (parts of one object consecutive);
    K: float64[3, 3]; zbuf: float64[H, W] camera-frame depth already drawn (ground), m
    Returns objid int32[H, W] (-1 none), face int8[H, W], uvw float32[H, W, 3] box-local coordinates
    in [0, 1], covered int64[N] pixels of the box's front faces inside the image (depth test ignored)
    that no earlier box of the same group covered, so a group's sum counts each pixel once.
    """
    N = corners.shape[0]
    objid = np.full((height, width), -1, dtype=np.int32)
    face = np.zeros((height, width), dtype=np.int8)
    uvw = np.zeros((height, width, 3), dtype=np.float32)
    covered = np.zeros(N, dtype=np.int64)
    stamp = np.full((height, width), -1, dtype=np.int64)
    faces = np.array([[1, 3, 7, 5], [0, 2, 6, 4], [2, 3, 7, 6], [0, 1, 5, 4], [4, 5, 7, 6], [0, 1, 3, 2]])
    poly = np.zeros((8, 3))
    pattr = np.zeros((8, 3))
    cpoly = np.zeros((8, 3))
    cattr = np.zeros((8, 3))
    for i in range(N):
        cen = np.zeros(3)
        for j in range(8):
            for k in range(3):
                cen[k] += corners[i, j, k] / 8.0
        for f in range(6):
            # Face centre and outward normal; draw only faces turned towards the camera.
            fc = np.zeros(3)
            for m in range(4):
                for k in range(3):
                    fc[k] += corners[i, faces[f, m], k] / 4.0
            nrm = fc - cen
            if nrm[0] * fc[0] + nrm[1] * fc[1] + nrm[2] * fc[2] >= 0.0:
                continue
            for m in range(4):
                j = faces[f, m]
                for k in range(3):
                    poly[m, k] = corners[i, j, k]
                pattr[m, 0] = 1.0 if j & 1 else 0.0
                pattr[m, 1] = 1.0 if j & 2 else 0.0
                pattr[m, 2] = 1.0 if j & 4 else 0.0
            # Clip against the near plane (Sutherland-Hodgman, one plane).
            nc = 0
            for m in range(4):
                a = m
                b = (m + 1) % 4
                ina = poly[a, 2] > NEAR
                inb = poly[b, 2] > NEAR
                if ina:
                    for k in range(3):
                        cpoly[nc, k] = poly[a, k]
                        cattr[nc, k] = pattr[a, k]
                    nc += 1
                if ina != inb:
                    t = (NEAR - poly[a, 2]) / (poly[b, 2] - poly[a, 2])
                    for k in range(3):
                        cpoly[nc, k] = poly[a, k] + t * (poly[b, k] - poly[a, k])
                        cattr[nc, k] = pattr[a, k] + t * (pattr[b, k] - pattr[a, k])
                    nc += 1
            if nc < 3:
                continue
            px = np.zeros(nc)
            py = np.zeros(nc)
            for m in range(nc):
                px[m] = (K[0, 0] * cpoly[m, 0] + K[0, 1] * cpoly[m, 1]) / cpoly[m, 2] + K[0, 2]
                py[m] = K[1, 1] * cpoly[m, 1] / cpoly[m, 2] + K[1, 2]
            for tri in range(1, nc - 1):
                i0, i1, i2 = 0, tri, tri + 1
                x0, y0, x1, y1, x2, y2 = px[i0], py[i0], px[i1], py[i1], px[i2], py[i2]
                area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
                if abs(area) < 1e-12:
                    continue
                xmin = max(int(np.floor(min(x0, x1, x2))), 0)
                xmax = min(int(np.ceil(max(x0, x1, x2))), width - 1)
                ymin = max(int(np.floor(min(y0, y1, y2))), 0)
                ymax = min(int(np.ceil(max(y0, y1, y2))), height - 1)
                iz0 = 1.0 / cpoly[i0, 2]
                iz1 = 1.0 / cpoly[i1, 2]
                iz2 = 1.0 / cpoly[i2, 2]
                for yy in range(ymin, ymax + 1):
                    sy = yy + 0.5
                    for xx in range(xmin, xmax + 1):
                        sx = xx + 0.5
                        w0 = ((x1 - sx) * (y2 - sy) - (x2 - sx) * (y1 - sy)) / area
                        w1 = ((x2 - sx) * (y0 - sy) - (x0 - sx) * (y2 - sy)) / area
                        w2 = 1.0 - w0 - w1
                        # Half-open edge rule so that shared edges are drawn once.
                        if w0 < 0.0 or w1 < 0.0 or w2 < 0.0 or (w2 == 0.0 and tri < nc - 2):
                            continue
                        if stamp[yy, xx] != group[i]:
                            stamp[yy, xx] = group[i]
                            covered[i] += 1
                        iz = w0 * iz0 + w1 * iz1 + w2 * iz2
                        z = 1.0 / iz
                        if z < zbuf[yy, xx]:
                            zbuf[yy, xx] = z
                            objid[yy, xx] = i
                            face[yy, xx] = f
                            for k in range(3):
                                uvw[yy, xx, k] = (w0 * cattr[i0, k] * iz0 + w1 * cattr[i1, k] * iz1
                                                  + w2 * cattr[i2, k] * iz2) * z
    return objid, face, uvw, covered


def _hash_noise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random texture in [0, 1) from integer lattice coordinates."""
    h = np.sin(a * 12.9898 + b * 78.233) * 43758.5453
    return h - np.floor(h)


_GROUND_RGB = np.array([[0.33, 0.42, 0.22], [0.30, 0.30, 0.32], [0.88, 0.88, 0.86], [0.85, 0.7, 0.15],
                        [0.62, 0.6, 0.57], [0.88, 0.88, 0.86]])
_SKIN = np.array([0.85, 0.65, 0.5])
_GLASS = np.array([0.10, 0.13, 0.17])
_TIRE = np.array([0.06, 0.06, 0.06])
STATIC_CODE0 = 10  # appearance code of static kind k is 10 + k


def _object_albedo(code, face, u, v, w, L, Wd, H, c1, c2) -> np.ndarray:
    """RGB albedo float64[P, 3] of object pixels from their class code and box-local coordinates
    u (back->front), v (right->left), w (bottom->top) in [0, 1]; L, Wd, H box size m; c1, c2 colours."""
    col = c1.copy()
    present = set(np.nonzero(np.bincount(code, minlength=16))[0].tolist())
    side = (face == 2) | (face == 3)
    endf = (face == 0) | (face == 1)
    um, wm = u * L, w * H
    vehicle = code <= 4
    # Wheels and dark underbody on vehicles.
    wheel = vehicle & side & (w < 0.28) & ((np.abs(um - 0.18 * L) < 0.4) | (np.abs(um - 0.82 * L) < 0.4) |
                                           ((code == 3) & (np.abs(um - 0.2 * L) < 0.9)))
    col[vehicle & (wm < 0.25)] = _TIRE * 2
    # Car: window band, lights.
    car = code == 0
    if 0 not in present:
        car = np.zeros_like(car)
    m = car & side & (w > 0.58) & (w < 0.9) & (u > 0.2) & (u < 0.78)
    col[m] = _GLASS
    m = car & endf & (w > 0.6) & (w < 0.9) & (v > 0.1) & (v < 0.9)
    col[m] = _GLASS
    lights = car & endf & (w > 0.42) & (w < 0.52) & ((v < 0.18) | (v > 0.82))
    col[lights & (face == 0)] = np.array([1.0, 1.0, 0.9])
    col[lights & (face == 1)] = np.array([0.8, 0.05, 0.05])
    # Truck: cab at the front, light cargo box behind.
    truck = code == 1
    cargo = truck & (u < 0.72) & (face != 0)
    col[cargo] = 0.4 * c2[cargo] + 0.6 * np.array([0.85, 0.85, 0.85])
    col[truck & (u >= 0.72) & side & (w > 0.6) & (w < 0.85) & (u > 0.8)] = _GLASS
    col[truck & (face == 0) & (w > 0.6) & (w < 0.88)] = _GLASS
    # Bus: window band with pillars, big windscreen.
    bus = code == 2
    m = bus & side & (w > 0.45) & (w < 0.85) & (np.mod(um, 1.6) > 0.2)
    col[m] = _GLASS
    col[bus & (face == 0) & (w > 0.35) & (w < 0.9) & (v > 0.05) & (v < 0.95)] = _GLASS
    # Trailer: ribbed metal, open gap under the box.
    tr = code == 3
    col[tr & side & (np.mod(um, 0.6) < 0.08)] *= 0.75
    col[tr & (w < 0.25)] = _TIRE * 3
    # Construction vehicle: hazard stripes along the bottom, high cab glass.
    cv = code == 4
    col[cv & (w < 0.22) & (np.mod(um + wm, 0.6) < 0.3)] = _TIRE
    col[cv & (u > 0.6) & (w > 0.6) & (w < 0.9) & (face != 4)] = _GLASS
    col[wheel] = _TIRE
    # Pedestrian: legs, torso, head.
    ped = code == 5
    col[ped & (w >= 0.5)] = c2[ped & (w >= 0.5)]
    col[ped & (w < 0.5)] = 0.5 * c1[ped & (w < 0.5)]
    col[ped & (w > 0.86)] = _SKIN * (0.7 + 0.3 * c1[ped & (w > 0.86), :1])
    # Cycles: tyres and a see-through frame below, rider (if tall) above.
    cyc = (code == 6) | (code == 7)
    rider = cyc & (H > 1.3)
    lowpart = cyc & (wm < 0.75)
    wheel_c = cyc & side & lowpart & ((np.hypot(um - 0.2 * L, wm - 0.33) < 0.34) | (np.hypot(um - 0.8 * L, wm - 0.33) < 0.34))
    see = (code == 7) & lowpart & ~wheel_c & (np.mod(um + wm, 0.35) > 0.08)
    col[see] = np.array([0.45, 0.45, 0.45])
    col[wheel_c] = _TIRE
    col[rider & (wm >= 0.75)] = c2[rider & (wm >= 0.75)]
    col[rider & (w > 0.86)] = np.where((code[rider & (w > 0.86)] == 6)[:, None], c1[rider & (w > 0.86)], _SKIN)
    col[(code == 6) & ~rider & (wm >= 0.75)] = 0.6 * c1[(code == 6) & ~rider & (wm >= 0.75)]
    # Traffic cone bands; barrier diagonal stripes.
    cone = code == 8
    col[cone & (((w > 0.45) & (w < 0.58)) | ((w > 0.68) & (w < 0.78)))] = c2[cone & (((w > 0.45) & (w < 0.58)) | ((w > 0.68) & (w < 0.78)))]
    col[cone & (w < 0.06)] = _TIRE
    bar = code == 9
    stripe = bar & (np.mod(v * Wd + wm, 0.5) < 0.25) & (w > 0.4)
    col[stripe] = c2[stripe]
    # Buildings: window grid above a darker ground floor; walls: brick courses.
    bld = code == STATIC_CODE0
    win = bld & (face < 4) & (np.mod(wm, 3.2) > 1.0) & (np.mod(wm, 3.2) < 2.3) & (wm > 3.2) & \
        (np.mod(np.where(side, um, v * Wd), 2.6) > 0.6) & (np.mod(np.where(side, um, v * Wd), 2.6) < 1.9)
    col[win] = _GLASS + 0.15 * c1[win]
    col[bld & (wm < 3.0) & (face < 4)] *= 0.7
    col[bld & (face == 4)] = np.array([0.35, 0.35, 0.36])
    wall = code == STATIC_CODE0 + 1
    col[wall & (np.mod(wm, 0.25) < 0.03)] *= 0.6
    return col


_RAYS = {}


def _pixel_rays(channel: str, W: int, H: int) -> np.ndarray:
    """float64[H, W, 3] camera-frame rays (z = 1) through the pixel centres, cached."""
    key = (channel, W, H)
    if key not in _RAYS:
        K = rig.intrinsics(channel, W, H)
        uu, vv = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        _RAYS[key] = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)],
                              -1).astype(np.float32)
    return _RAYS[key]


def render(world: World, channel: str, t_us: int, cfg: CameraConfig, rng: np.random.Generator,
           ego_xy: np.ndarray, ego_yaw: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one image of camera ``channel`` at t_us with the ego at (ego_xy, ego_yaw).

    Returns image uint8[H, W, 3] RGB, visible int64[A] and covered int64[A] pixel counts per agent.
    """
    W, H = cfg.width, cfg.height
    K = rig.intrinsics(channel, W, H)
    T_g_cam = T_global_from_ego(ego_xy, ego_yaw) @ rig.T_ego_from_sensor(channel)
    T_cam_g = rigid_inverse(T_g_cam)
    boxes, _, n_agents = scene_boxes(world, t_us)
    # Vehicles are drawn as their solid parts (bonnet, cabin, cab), like the LiDAR sees them; the
    # appearance below works in the owner box's coordinates.
    parts, owner, uvw0, uvw_scale = shape_parts(boxes, scene_classes(world))
    # Cull parts far away or behind the camera before rasterizing.
    cen_c = parts[:, :3] @ T_cam_g[:3, :3].T + T_cam_g[:3, 3]
    rad = 0.5 * np.linalg.norm(parts[:, 3:6], axis=1)
    keep = (cen_c[:, 2] > -rad) & (np.linalg.norm(cen_c, axis=1) < 150.0 + rad)
    idx = np.nonzero(keep)[0]
    bx = parts[idx]
    c, s = np.cos(bx[:, 6]), np.sin(bx[:, 6])
    local = _SIGNS[None] * (bx[:, None, 3:6] / 2)
    gx = bx[:, None, 0] + c[:, None] * local[..., 0] - s[:, None] * local[..., 1]
    gy = bx[:, None, 1] + s[:, None] * local[..., 0] + c[:, None] * local[..., 1]
    gz = bx[:, None, 2] + local[..., 2]
    corners_g = np.stack([gx, gy, gz], -1)
    corners_c = corners_g @ T_cam_g[:3, :3].T + T_cam_g[:3, 3]
    # Per-pixel rays and the ground.
    rays_g = _pixel_rays(channel, W, H) @ T_g_cam[:3, :3].T.astype(np.float32)
    oz = T_g_cam[2, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(rays_g[..., 2] < -1e-6, -oz / rays_g[..., 2], np.inf)
    t_ground[t_ground > 400.0] = np.inf
    t_ground = t_ground.astype(np.float64)
    zbuf = t_ground.copy()
    objid, face, uvw, covered = raster_kernel(np.ascontiguousarray(corners_c), owner[idx], K, W, H, zbuf)
    # Lighting: scene light with slow cloud variation over time.
    tau = (t_us - world.t0) * 1e-6
    light = world.light * (1.0 + 0.1 * np.sin(2 * np.pi * tau / 17.0 + world.sun[0] * 5))
    elev = rays_g[..., 2] / np.linalg.norm(rays_g, axis=-1)
    horizon = np.array([0.78, 0.82, 0.88])
    zenith = np.array([0.35, 0.5, 0.8])
    img = (horizon + np.sqrt(np.clip(elev, 0, 1))[..., None] * (zenith - horizon)).astype(np.float32)
    # Ground.
    g = (objid < 0) & np.isfinite(t_ground)
    if np.any(g):
        p = T_g_cam[:3, 3] + rays_g[g] * t_ground[g][:, None]
        mat = world.ground_material(p[:, 0], p[:, 1])
        tex = _hash_noise(np.floor(p[:, 0] * 3), np.floor(p[:, 1] * 3))
        alb = _GROUND_RGB[mat] * (0.9 + 0.2 * tex)[:, None]
        shade = 0.55 + 0.45 * max(world.sun[2], 0.0)
        d = t_ground[g]
        haze = 1.0 - np.exp(-d / 350.0)
        img[g] = (alb * shade * light * world.tint) * (1 - haze[:, None]) + horizon * haze[:, None]
    # Objects.
    o = objid >= 0
    if np.any(o):
        pid = idx[objid[o]]
        gid = owner[pid]
        f = face[o].astype(np.int64)
        uvw_o = uvw0[pid] + uvw_scale[pid] * uvw[o].astype(np.float64)
        u, v, w = uvw_o[:, 0], uvw_o[:, 1], uvw_o[:, 2]
        n_st = len(world.statics)
        codes = np.concatenate([np.array([CLASS_TO_ID[a.cls] for a in world.agents], np.int64),
                                STATIC_CODE0 + world.static_kind])
        c1 = np.concatenate([np.array([a.color for a in world.agents]).reshape(-1, 3), world.static_color])
        c2 = np.concatenate([np.array([a.color2 for a in world.agents]).reshape(-1, 3),
                             world.static_color * 0.8])
        code = codes[gid]
        alb = _object_albedo(code, f, u, v, w, boxes[gid, 3], boxes[gid, 4], boxes[gid, 5], c1[gid], c2[gid])
        tex = _hash_noise(np.floor(u * boxes[gid, 3] * 8) + gid, np.floor(w * boxes[gid, 5] * 8))
        alb = alb * (0.93 + 0.14 * tex)[:, None]
        axis, sign = FACE_AXIS[f], FACE_SIGN[f]
        yaw = boxes[gid, 6]
        nrm = np.zeros((len(f), 3))
        nrm[:, 0] = np.where(axis == 0, np.cos(yaw), np.where(axis == 1, -np.sin(yaw), 0.0)) * sign
        nrm[:, 1] = np.where(axis == 0, np.sin(yaw), np.where(axis == 1, np.cos(yaw), 0.0)) * sign
        nrm[:, 2] = np.where(axis == 2, 1.0, 0.0) * sign
        lam = np.clip(nrm @ world.sun, 0, 1)
        shade = 0.42 + 0.68 * lam
        d = zbuf[o]
        haze = 1.0 - np.exp(-d / 350.0)
        img[o] = (alb * shade[:, None] * light * world.tint) * (1 - haze[:, None]) + horizon * haze[:, None]
    img = img * 255.0 + rng.standard_normal(img.shape, dtype=np.float32) * cfg.noise
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    visible = np.zeros(len(boxes), np.int64)
    np.add.at(visible, owner[idx[objid[o]]], 1)
    cov = np.zeros(len(boxes), np.int64)
    np.add.at(cov, owner[idx], covered)
    return image, visible[:n_agents], cov[:n_agents]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image (deterministic for identical pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
