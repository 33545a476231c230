"""The synthetic world of one drive: a road layout, static structures, agents and the ego trajectory.

Everything lives in the nuScenes global frame (metres, z up, ground at z = 0). The layout is built in
a road frame (s along the main road, l to its left) placed in the global frame by ``origin`` and
``heading``. Agents move with constant velocity along straight lines (lanes, bike lanes,
sidewalks), so an annotation's finite-difference velocity is exactly its true velocity; moving
vehicles that share a lane share a speed, so they never run into each other.

Right-hand traffic. Cross-section of the main road (|l| in metres): travel lanes 0-7 (2 per
direction, 3.5 m), bike lane 7-8.5, parking lane 8.5-11, sidewalk 11-15, buildings beyond 16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from perception.structures import CLASS_TO_ID

LANE_W = 3.5
ROAD_HALF_W = 7.0
BIKE_OUT = 8.5
PARK_OUT = 11.0
SIDEWALK_OUT = 15.0
BUILDING_IN = 16.0
CROSS_HALF_W = 7.0  # half width of a cross street's carriageway
CROSS_SIDEWALK = 4.0

# Ground materials (camera colour and LiDAR reflectivity come from these).
G_GRASS, G_ASPHALT, G_WHITE, G_YELLOW, G_SIDEWALK, G_CROSSWALK = range(6)

# Static structure kinds.
S_BUILDING, S_WALL, S_POLE, S_TRUNK, S_CANOPY, S_HEDGE = range(6)
STATIC_KINDS = ("building", "wall", "pole", "trunk", "canopy", "hedge")

# nuScenes-like mean sizes (l, w, h) in metres, and the category each class is drawn from.
CLASS_SIZE: Dict[str, Tuple[float, float, float]] = {
    "car": (4.63, 1.96, 1.74), "truck": (6.94, 2.52, 2.84), "bus": (11.19, 2.95, 3.49),
    "trailer": (12.28, 2.92, 3.87), "construction_vehicle": (6.37, 2.82, 3.19),
    "pedestrian": (0.73, 0.67, 1.77), "motorcycle": (2.11, 0.77, 1.47), "bicycle": (1.70, 0.61, 1.30),
    "traffic_cone": (0.41, 0.41, 1.07), "barrier": (0.50, 2.53, 0.98),
}


@dataclass
class Agent:
    """One annotated object, moving with constant velocity.

    p0: float64[2] global xy (m) at the scene's start time t0; v: float64[2] global velocity (m/s);
    size: (l, w, h) m; yaw: rad in the global frame.
    """

    cls: str
    category: str
    attribute: str  # '' for classes without attributes
    p0: np.ndarray
    v: np.ndarray
    yaw: float
    size: Tuple[float, float, float]
    color: np.ndarray  # float64[3] main colour, RGB 0-1
    color2: np.ndarray  # float64[3] secondary colour (cargo, trousers, rider), RGB 0-1
    rcs: float  # mean radar cross section, dBsm


@dataclass
class World:
    """One drive's world.

    statics: float64[S, 7] (x, y, z, l, w, h, yaw) global boxes of buildings, walls, poles, trees
    static_kind: int64[S] index into STATIC_KINDS; static_color: float64[S, 3] RGB 0-1
    agents: annotated objects; cross_s: float64[K] s of cross-street centre lines
    """

    origin: np.ndarray
    heading: float
    s_range: Tuple[float, float]
    cross_s: np.ndarray
    statics: np.ndarray
    static_kind: np.ndarray
    static_color: np.ndarray
    agents: List[Agent]
    t0: int  # scene start, us
    ego_s0: float
    ego_v0: float
    ego_amp: float  # speed oscillation amplitude, m/s
    ego_period: float  # s
    ego_sway: float  # lateral sway amplitude, m
    sun: np.ndarray  # float64[3] unit vector towards the sun, global
    light: float  # overall brightness 0.5-1.2
    tint: np.ndarray  # float64[3] colour of the light

    # ------------------------------------------------------------------ frames
    def road_to_global(self, s: np.ndarray, l: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        c, si = np.cos(self.heading), np.sin(self.heading)
        return self.origin[0] + c * s - si * l, self.origin[1] + si * s + c * l

    def global_to_road(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        c, si = np.cos(self.heading), np.sin(self.heading)
        dx, dy = x - self.origin[0], y - self.origin[1]
        return c * dx + si * dy, -si * dx + c * dy

    # ------------------------------------------------------------------ ego
    def ego_state(self, t_us) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """True ego pose at times t_us (int64[N] or scalar).

        Returns xy float64[N, 2] global (rear axle), yaw float64[N] rad, velocity float64[N, 2] global
        m/s, yaw rate float64[N] rad/s.
        """
        tau = (np.atleast_1d(np.asarray(t_us, dtype=np.int64)) - self.t0) * 1e-6
        w = 2 * np.pi / self.ego_period
        s = self.ego_s0 + self.ego_v0 * tau - self.ego_amp / w * (np.cos(w * tau) - 1.0)
        ds = self.ego_v0 + self.ego_amp * np.sin(w * tau)
        dds = self.ego_amp * w * np.cos(w * tau)
        ws = 2 * np.pi / 9.0
        l = -LANE_W / 2 + self.ego_sway * np.sin(ws * tau)
        dl = self.ego_sway * ws * np.cos(ws * tau)
        ddl = -self.ego_sway * ws * ws * np.sin(ws * tau)
        x, y = self.road_to_global(s, l)
        c, si = np.cos(self.heading), np.sin(self.heading)
        vx, vy = c * ds - si * dl, si * ds + c * dl
        yaw_road = np.arctan2(dl, ds)
        yaw_rate = (ds * ddl - dl * dds) / (ds * ds + dl * dl)
        return (np.stack([x, y], 1), self.heading + yaw_road, np.stack([vx, vy], 1), yaw_rate)

    # ------------------------------------------------------------------ agents
    def agent_boxes(self, t_us: int) -> np.ndarray:
        """float64[A, 9] (x, y, z, l, w, h, yaw, vx, vy) global boxes of all agents at t_us."""
        dt = (int(t_us) - self.t0) * 1e-6
        if getattr(self, "_agent_table", None) is None or len(self._agent_table) != len(self.agents):
            tab = np.zeros((len(self.agents), 11))  # p0 (2), z, l, w, h, yaw, v (2), spare
            for i, a in enumerate(self.agents):
                tab[i, :2] = a.p0
                tab[i, 2] = a.size[2] / 2
                tab[i, 3:6] = a.size
                tab[i, 6] = a.yaw
                tab[i, 7:9] = a.v
            self._agent_table = tab
        out = self._agent_table[:, :9].copy()
        out[:, :2] += out[:, 7:9] * dt
        return out

    # ------------------------------------------------------------------ ground
    def ground_material(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """int64 material (G_*) of ground points with global coordinates x, y (any shape)."""
        s, l = self.global_to_road(x, y)
        al = np.abs(l)
        ds = np.min(np.abs(s[..., None] - self.cross_s), axis=-1) if len(self.cross_s) else np.full(s.shape, 1e9)
        mat = np.full(s.shape, G_GRASS, dtype=np.int64)
        main = al < PARK_OUT
        cross = ds < CROSS_HALF_W
        mat[(al < SIDEWALK_OUT) | (ds < CROSS_HALF_W + CROSS_SIDEWALK)] = G_SIDEWALK
        mat[main | cross] = G_ASPHALT
        in_junction = cross & (al < PARK_OUT)
        # Double yellow centre line, dashed white lane separators, solid white edge/bike lines.
        main_only = main & ~in_junction
        mat[main_only & (al < 0.25) & (al > 0.05)] = G_YELLOW
        dash = (np.mod(s, 9.0) < 3.0)
        mat[main_only & (np.abs(al - LANE_W) < 0.08) & dash] = G_WHITE
        mat[main_only & (np.abs(al - ROAD_HALF_W) < 0.1)] = G_WHITE
        # Crosswalks across the main road beside each junction.
        zebra = (np.abs(ds - CROSS_HALF_W - 2.0) < 1.5) & (al < PARK_OUT) & (np.mod(l, 1.2) < 0.6)
        mat[zebra] = G_CROSSWALK
        return mat

    def drivable_mask_raster(self, resolution: float = 0.1) -> Tuple[np.ndarray, float, float]:
        """uint8[H, W] raster of the drivable area (255) for maps/, as the devkit's MapMask reads it:
        pixel (row, col) covers global x = col * res, y = (H - row) * res."""
        import cv2

        s0, s1 = self.s_range
        polys = [[(s0, -PARK_OUT), (s1, -PARK_OUT), (s1, PARK_OUT), (s0, PARK_OUT)]]
        for sc in self.cross_s:
            polys.append([(sc - CROSS_HALF_W, -120.0), (sc + CROSS_HALF_W, -120.0),
                          (sc + CROSS_HALF_W, 120.0), (sc - CROSS_HALF_W, 120.0)])
        allx, ally = [], []
        for p in polys:
            s, l = np.array(p).T
            x, y = self.road_to_global(s, l)
            allx.append(x)
            ally.append(y)
        W = int(np.ceil(max(np.max(a) for a in allx) / resolution)) + 10
        H = int(np.ceil(max(np.max(a) for a in ally) / resolution)) + 10
        img = np.zeros((H, W), dtype=np.uint8)
        for x, y in zip(allx, ally):
            pts = np.stack([x / resolution, H - y / resolution], 1).round().astype(np.int32)
            cv2.fillPoly(img, [pts], 255)
        return img, W * resolution, H * resolution


# -------------------------------------------------------------------------------------------------
# World construction
# -------------------------------------------------------------------------------------------------
_CAR_COLORS = np.array([[0.9, 0.9, 0.92], [0.1, 0.1, 0.12], [0.55, 0.57, 0.6], [0.7, 0.1, 0.1],
                        [0.1, 0.2, 0.55], [0.75, 0.75, 0.78], [0.2, 0.35, 0.2], [0.85, 0.75, 0.55]])
_CLOTHES = np.array([[0.1, 0.1, 0.15], [0.2, 0.25, 0.5], [0.6, 0.1, 0.1], [0.85, 0.85, 0.8],
                     [0.3, 0.3, 0.3], [0.15, 0.4, 0.2], [0.75, 0.6, 0.3], [0.5, 0.2, 0.5]])
_RCS = {"car": 10.0, "truck": 18.0, "bus": 20.0, "trailer": 18.0, "construction_vehicle": 16.0,
        "pedestrian": -5.0, "motorcycle": 3.0, "bicycle": -3.0, "traffic_cone": -8.0, "barrier": 2.0}


def _jitter_size(rng: np.random.Generator, cls: str, scale=0.08) -> Tuple[float, float, float]:
    l, w, h = CLASS_SIZE[cls]
    f = 1.0 + scale * rng.standard_normal(3)
    f = np.clip(f, 0.8, 1.25)
    return (round(l * f[0], 3), round(w * f[1], 3), round(h * f[2], 3))


def build_world(rng: np.random.Generator, t0: int, duration_s: float) -> World:
    """A random world for one drive of ``duration_s`` seconds starting at t0 (us)."""
    heading = float(rng.uniform(-np.pi, np.pi))
    ego_v0 = float(rng.uniform(4.0, 11.0))
    ego_amp = float(rng.uniform(0.3, 2.0))
    travel = (ego_v0 + ego_amp) * duration_s
    ego_s0 = 0.0
    s_lo, s_hi = -160.0, travel + 160.0
    # Cross streets every 70-130 m, none right at the start.
    cross = []
    s = float(rng.uniform(-60, 20))
    while s < s_hi - 20:
        if s > s_lo + 20:
            cross.append(s)
        s += float(rng.uniform(70, 130))
    cross_s = np.array(cross)
    # Place the road so that the whole layout (plus cross streets) has positive global coordinates.
    c, si = np.cos(heading), np.sin(heading)
    corners = np.array([[s_lo, -130], [s_hi, -130], [s_hi, 130], [s_lo, 130]])
    gx = c * corners[:, 0] - si * corners[:, 1]
    gy = si * corners[:, 0] + c * corners[:, 1]
    origin = np.array([50.0 - gx.min() + rng.uniform(0, 200), 50.0 - gy.min() + rng.uniform(0, 200)])
    sun_az, sun_el = rng.uniform(-np.pi, np.pi), rng.uniform(0.15, 1.2)
    sun = np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)])
    light = float(rng.uniform(0.55, 1.15))
    tint = np.clip(np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.05, 3) + (sun_el < 0.35) * np.array([0.1, 0.0, -0.12]),
                   0.7, 1.2)
    world = World(origin=origin, heading=heading, s_range=(s_lo, s_hi), cross_s=cross_s,
                  statics=np.zeros((0, 7)), static_kind=np.zeros(0, np.int64), static_color=np.zeros((0, 3)),
                  agents=[], t0=int(t0), ego_s0=ego_s0, ego_v0=ego_v0, ego_amp=ego_amp,
                  ego_period=float(rng.uniform(8, 16)), ego_sway=float(rng.uniform(0.0, 0.25)),
                  sun=sun, light=light, tint=tint)
    _add_statics(world, rng)
    _add_agents(world, rng, duration_s)
    return world


def _near_cross(world: World, s: float, margin: float) -> bool:
    return bool(len(world.cross_s)) and bool(np.min(np.abs(world.cross_s - s)) < margin)


def _add_statics(world: World, rng: np.random.Generator) -> None:
    rows, kinds, colors = [], [], []

    def add(s, l, z, L, W, H, yaw_rel, kind, color):
        x, y = world.road_to_global(np.array(s), np.array(l))
        rows.append([float(x), float(y), z, L, W, H, world.heading + yaw_rel])
        kinds.append(kind)
        colors.append(color)

    s_lo, s_hi = world.s_range
    gap = CROSS_HALF_W + CROSS_SIDEWALK + 1.0
    for side in (-1.0, 1.0):
        s = s_lo
        while s < s_hi:
            if _near_cross(world, s, gap + 12):
                s += 3.0
                continue
            L = float(rng.uniform(8, 30))
            end = s + L
            if len(world.cross_s):
                nxt = world.cross_s[world.cross_s > s]
                if len(nxt) and end > nxt[0] - gap:
                    L = max(2.0, nxt[0] - gap - s)
            r = rng.uniform()
            if r < 0.7:
                D, H = float(rng.uniform(8, 20)), float(rng.uniform(5, 25))
                color = np.clip(rng.choice([[0.7, 0.68, 0.62], [0.6, 0.35, 0.28], [0.82, 0.82, 0.8],
                                            [0.45, 0.45, 0.5], [0.75, 0.65, 0.45]]) + rng.normal(0, 0.04, 3), 0, 1)
                add(s + L / 2, side * (BUILDING_IN + D / 2 + rng.uniform(0, 2)), H / 2, L, D, H, 0.0, S_BUILDING, color)
            elif r < 0.85:
                H = float(rng.uniform(1.2, 2.5))
                add(s + L / 2, side * (BUILDING_IN + 0.2), H / 2, L, 0.3, H, 0.0, S_WALL,
                    np.clip(np.array([0.6, 0.58, 0.55]) + rng.normal(0, 0.05, 3), 0, 1))
            else:
                add(s + L / 2, side * (BUILDING_IN + 1.0), 0.6, L, 1.2, 1.2, 0.0, S_HEDGE,
                    np.array([0.15, 0.35, 0.12]) + rng.normal(0, 0.03, 3))
            s += L + float(rng.uniform(0.5, 4.0))
        # Street lights at the curb, trees on the sidewalk.
        s = s_lo + float(rng.uniform(0, 10))
        while s < s_hi:
            if not _near_cross(world, s, CROSS_HALF_W + 1):
                add(s, side * (PARK_OUT + 0.4), 3.5, 0.25, 0.25, 7.0, 0.0, S_POLE, np.array([0.4, 0.42, 0.45]))
            s += float(rng.uniform(22, 34))
        s = s_lo + float(rng.uniform(0, 10))
        while s < s_hi:
            if not _near_cross(world, s, gap + 2) and rng.uniform() < 0.6:
                l = side * (SIDEWALK_OUT - 1.0)
                add(s, l, 1.3, 0.35, 0.35, 2.6, 0.0, S_TRUNK, np.array([0.35, 0.25, 0.15]))
                d = float(rng.uniform(2.5, 4.0))
                add(s, l, 2.6 + d / 2, d, d, d, float(rng.uniform(0, 1.5)), S_CANOPY,
                    np.clip(np.array([0.2, 0.45, 0.15]) + rng.normal(0, 0.05, 3), 0, 1))
            s += float(rng.uniform(10, 20))
    world.statics = np.array(rows, dtype=np.float64).reshape(-1, 7)
    world.static_kind = np.array(kinds, dtype=np.int64)
    world.static_color = np.array(colors, dtype=np.float64).reshape(-1, 3)


def _add_agents(world: World, rng: np.random.Generator, duration_s: float) -> None:
    agents: List[Agent] = []
    s_lo, s_hi = world.s_range
    c, si = np.cos(world.heading), np.sin(world.heading)

    def add(cls, category, attribute, s, l, yaw_rel, speed, size=None, color=None, color2=None):
        x, y = world.road_to_global(np.array(s), np.array(l))
        yaw = float((world.heading + yaw_rel + np.pi) % (2 * np.pi) - np.pi)
        v = speed * np.array([np.cos(yaw), np.sin(yaw)])
        if color is None:
            color = _CAR_COLORS[rng.integers(len(_CAR_COLORS))] + rng.normal(0, 0.03, 3)
        if color2 is None:
            color2 = _CLOTHES[rng.integers(len(_CLOTHES))] + rng.normal(0, 0.03, 3)
        agents.append(Agent(cls, category, attribute, np.array([float(x), float(y)]), v, yaw,
                            size or _jitter_size(rng, cls), np.clip(color, 0, 1), np.clip(color2, 0, 1),
                            _RCS[cls] + float(rng.normal(0, 2.0))))

    span_lo, span_hi = s_lo - 250.0, s_hi + 250.0
    # Moving traffic: one platoon speed per lane, spacing >= length + gap.
    ego_max = world.ego_v0 + world.ego_amp
    ego_min = world.ego_v0 - world.ego_amp
    for lane_l, direction in ((-LANE_W / 2, 1), (-1.5 * LANE_W, 1), (LANE_W / 2, -1), (1.5 * LANE_W, -1)):
        ego_lane = lane_l == -LANE_W / 2
        speed = float(rng.uniform(5, 13))
        s = span_lo + float(rng.uniform(0, 30))
        while s < span_hi:
            if ego_lane and -30.0 < s < 30.0:
                s = 30.0 + float(rng.uniform(0, 25))  # the ego's own place in its lane, with a leader ahead
            r = rng.uniform()
            cls = "car" if r < 0.75 else ("truck" if r < 0.87 else ("bus" if r < 0.93 else "motorcycle"))
            size = _jitter_size(rng, cls)
            sp = speed
            if ego_lane:
                # Ahead of the ego: faster than its fastest; behind: slower than its slowest.
                sp = ego_max + 1.0 + speed * 0.1 if s > 0 else max(1.5, ego_min - 1.0 - speed * 0.1)
            cat = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid",
                   "motorcycle": "vehicle.motorcycle"}[cls]
            attr = "cycle.with_rider" if cls == "motorcycle" else "vehicle.moving"
            if cls == "motorcycle":
                size = (size[0], size[1], round(CLASS_SIZE["motorcycle"][2] * 1.1, 3))
            # facing the lane's direction (yaw_rel pi for the opposite lanes) and driving forward:
            # the speed is along the agent's own heading, so it is positive in every lane
            add(cls, cat, attr, s, lane_l + rng.normal(0, 0.12), 0.0 if direction > 0 else np.pi, sp, size=size)
            s += size[0] + float(rng.uniform(8, 45))
    # Cyclists in the bike lanes (one speed per direction).
    for side, direction in ((-1, 1), (1, -1)):
        speed = float(rng.uniform(3, 6))
        s = span_lo + float(rng.uniform(0, 60))
        while s < span_hi:
            add("bicycle", "vehicle.bicycle", "cycle.with_rider", s, side * (ROAD_HALF_W + 0.75), 0.0 if direction > 0 else np.pi,
                speed, size=(round(rng.uniform(1.6, 1.85), 3), round(rng.uniform(0.55, 0.7), 3), round(rng.uniform(1.6, 1.85), 3)))
            s += float(rng.uniform(25, 90))
    # Construction zone on one side: cones along the lane edge, barriers, a construction vehicle.
    zone = None
    if rng.uniform() < 0.85:
        side = float(rng.choice([-1.0, 1.0]))
        zs = float(rng.uniform(30, max(40.0, s_hi - 200)))
        if not _near_cross(world, zs, 40):
            zone = (side, zs, zs + 28.0)
            for k, s in enumerate(np.arange(zs, zs + 28.0, 3.0)):
                add("traffic_cone", "movable_object.trafficcone", "", s, side * (ROAD_HALF_W + 0.4), 0.0, 0.0,
                    color=np.array([1.0, 0.45, 0.05]), color2=np.array([0.95, 0.95, 0.95]))
            for s in np.arange(zs + 1.5, zs + 27.0, 2.7):
                add("barrier", "movable_object.barrier", "", s, side * (PARK_OUT - 0.4), 0.0, 0.0,
                    size=(0.5, 2.5, 1.0), color=np.array([0.95, 0.2, 0.1]) if rng.uniform() < 0.5 else np.array([0.7, 0.7, 0.68]),
                    color2=np.array([0.95, 0.95, 0.95]))
            add("construction_vehicle", "vehicle.construction", "vehicle.parked", zs + 8.0,
                side * (BIKE_OUT + 0.3), float(rng.uniform(-0.2, 0.2)), 0.0, color=np.array([0.95, 0.75, 0.05]))
            if rng.uniform() < 0.7:
                add("trailer", "vehicle.trailer", "vehicle.parked", zs + 20.0, side * (BIKE_OUT + 0.4),
                    0.0, 0.0, color=np.array([0.8, 0.8, 0.82]))
            for _ in range(int(rng.integers(1, 4))):
                add("pedestrian", "human.pedestrian.construction_worker", "pedestrian.standing",
                    zs + float(rng.uniform(2, 26)), side * float(rng.uniform(PARK_OUT + 0.5, PARK_OUT + 2.5)),
                    float(rng.uniform(-np.pi, np.pi)), 0.0, color2=np.array([1.0, 0.6, 0.05]))
    # Parked vehicles along the parking lanes; a bus stopped at a stop; stopped cars at junctions.
    bus_stop = (float(rng.choice([-1.0, 1.0])), float(rng.uniform(20, max(30.0, s_hi - 150))))
    for side in (-1.0, 1.0):
        s = s_lo + float(rng.uniform(0, 8))
        while s < s_hi:
            if _near_cross(world, s, CROSS_HALF_W + 8) or (zone and zone[0] == side and zone[1] - 8 < s < zone[2] + 8) \
                    or (bus_stop[0] == side and abs(s - bus_stop[1]) < 12):
                s += 4.0
                continue
            r = rng.uniform()
            if r < 0.55:
                cls = "car" if rng.uniform() < 0.9 else "truck"
                size = _jitter_size(rng, cls)
                add(cls, "vehicle.car" if cls == "car" else "vehicle.truck", "vehicle.parked", s + size[0] / 2,
                    side * (BIKE_OUT + 1.25 + rng.normal(0, 0.1)), float(rng.normal(0, 0.03)) + (0 if side < 0 else np.pi), 0.0, size=size)
                s += size[0] + float(rng.uniform(0.8, 3.0))
            elif r < 0.6:
                size = _jitter_size(rng, "trailer")
                add("trailer", "vehicle.trailer", "vehicle.parked", s + size[0] / 2, side * (BIKE_OUT + 1.3), 0.0, 0.0,
                    size=size, color=np.array([0.75, 0.75, 0.78]) + rng.normal(0, 0.05, 3))
                s += size[0] + 2.0
            else:
                s += float(rng.uniform(4, 14))
    add("bus", "vehicle.bus.rigid", "vehicle.stopped", bus_stop[1], bus_stop[0] * (BIKE_OUT + 1.4),
        0.0 if bus_stop[0] < 0 else np.pi, 0.0, color=np.array([0.85, 0.15, 0.1]) if rng.uniform() < 0.5 else np.array([0.1, 0.3, 0.7]))
    for sc in world.cross_s:
        for side in (-1.0, 1.0):
            n = int(rng.integers(0, 3))
            l = side * (PARK_OUT + CROSS_SIDEWALK + 3.5)
            for k in range(n):
                size = _jitter_size(rng, "car")
                # Waiting to enter the main road: heading towards it, in the right-hand lane.
                add("car", "vehicle.car", "vehicle.stopped", sc - side * LANE_W / 2,
                    l + side * k * (size[0] + 2.0), -side * np.pi / 2, 0.0, size=size)
    # Pedestrians on the sidewalks (walking along them, or standing / sitting), parked cycles.
    for side in (-1.0, 1.0):
        s = span_lo / 2 + float(rng.uniform(0, 10))
        while s < s_hi + 60:
            r = rng.uniform()
            l = side * float(rng.uniform(PARK_OUT + 0.8, SIDEWALK_OUT - 0.5))
            if r < 0.6:
                sp = float(rng.uniform(0.8, 1.8))
                d = float(rng.choice([-1.0, 1.0]))
                add("pedestrian", "human.pedestrian.adult" if rng.uniform() < 0.9 else "human.pedestrian.child",
                    "pedestrian.moving", s, l, 0.0 if d > 0 else np.pi, sp,
                    size=_jitter_size(rng, "pedestrian", 0.06))
            elif r < 0.8:
                add("pedestrian", "human.pedestrian.adult", "pedestrian.standing", s, l,
                    float(rng.uniform(-np.pi, np.pi)), 0.0)
            elif r < 0.85:
                size = _jitter_size(rng, "pedestrian", 0.05)
                add("pedestrian", "human.pedestrian.adult", "pedestrian.sitting_lying_down", s, l,
                    float(rng.uniform(-np.pi, np.pi)), 0.0, size=(size[0] * 1.2, size[1], round(size[2] * 0.7, 3)))
            elif r < 0.93:
                add("bicycle", "vehicle.bicycle", "cycle.without_rider", s, side * (PARK_OUT + 0.9),
                    float(np.pi / 2 + rng.normal(0, 0.2)), 0.0,
                    size=(round(rng.uniform(1.6, 1.8), 3), round(rng.uniform(0.5, 0.65), 3), round(rng.uniform(1.0, 1.15), 3)))
            else:
                size = _jitter_size(rng, "motorcycle")
                add("motorcycle", "vehicle.motorcycle", "cycle.without_rider", s, side * (PARK_OUT + 1.2),
                    float(np.pi / 2 + rng.normal(0, 0.2)), 0.0, size=(size[0], size[1], round(size[2] * 0.85, 3)))
            s += float(rng.uniform(3, 16))
    world.agents = agents


def category_of_class_ok(agent: Agent) -> bool:
    """Whether the agent's category maps to its detection class (a guard used in tests)."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(agent.category) == agent.cls and agent.cls in CLASS_TO_ID
