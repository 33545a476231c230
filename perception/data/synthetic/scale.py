"""A nuScenes-sized root, cheaply: full-volume tables, sensor files that are hard links to a few
small template files. For rehearsing the data path at scale (index build time, memory of the index
in the trainer and its loader workers) without the data.

What is at nuScenes' volume: the scenes (official names from the devkit's split lists, so that
``split_scene_names`` finds them: by default 700 train scenes holding 28,130 keyframes and 150 val
scenes holding 6,019, 40-41 keyframes each, as in nuScenes), every LiDAR sweep (20 Hz), every radar
message (~13 Hz, 5 radars), one image per camera and keyframe (no camera sweeps, as the ``default``
synthetic preset), an ego pose per sample_data, and about ``boxes_per_sample`` annotations per
keyframe (nuScenes has 34 on average) in tracks with instances, attributes, visibilities and point
counts. What is not: the sensor data. Every file is a hard link to a template (a LiDAR sweep of
``lidar_points`` random points, a radar message, a small JPEG), a new template every 50,000 links
(ext4 allows 65,000 per inode), so ~1.7 M files take the disk space of their directory entries.
Motion is a plain constant-turn drive; boxes move in straight lines. No CAN bus (so no scene name
is excluded), no failure injection.

The tables are streamed to disk scene by scene (the generator never holds them all).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import rig
from .generator import VERSION, _EPOCH0, _logfile
from .writer import ATTRIBUTE_TOKENS, TABLES, calibrated_sensor_token, category_token, fixed_tables, token, yaw_quaternion
from perception.structures import CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS

NUSCENES_TRAIN_SAMPLES = 28_130
NUSCENES_VAL_SAMPLES = 6_019
LINKS_PER_TEMPLATE = 50_000

# category -> (share of nuScenes' annotations (about), size (l, w, h) m, attributes to draw from)
_CATEGORIES: Sequence[Tuple[str, float, Tuple[float, float, float], Tuple[str, ...]]] = (
    ("vehicle.car", 0.43, (4.6, 1.9, 1.7), ("vehicle.moving", "vehicle.parked", "vehicle.stopped")),
    ("human.pedestrian.adult", 0.19, (0.7, 0.7, 1.8), ("pedestrian.moving", "pedestrian.standing")),
    ("movable_object.barrier", 0.13, (0.5, 2.5, 1.0), ()),
    ("movable_object.trafficcone", 0.08, (0.4, 0.4, 1.0), ()),
    ("vehicle.truck", 0.08, (6.9, 2.5, 2.8), ("vehicle.moving", "vehicle.parked", "vehicle.stopped")),
    ("vehicle.trailer", 0.02, (12.0, 2.9, 3.9), ("vehicle.parked", "vehicle.moving")),
    ("vehicle.bus.rigid", 0.02, (11.0, 2.9, 3.5), ("vehicle.moving", "vehicle.stopped")),
    ("vehicle.construction", 0.015, (6.5, 2.8, 3.2), ("vehicle.parked",)),
    ("vehicle.motorcycle", 0.01, (2.1, 0.8, 1.5), ("cycle.with_rider", "cycle.without_rider")),
    ("vehicle.bicycle", 0.01, (1.7, 0.6, 1.3), ("cycle.with_rider", "cycle.without_rider")),
)
_LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")


def scene_plan(n_samples: int, names: Sequence[str], keyframes_per_scene: int = 40) -> List[Tuple[str, int]]:
    """(scene name, keyframes) for ``n_samples`` keyframes over the first scenes of ``names``: as
    many scenes as ``keyframes_per_scene`` allows (at most all names), the keyframes spread evenly
    (the first scenes take one more). Every scene gets at least 2 keyframes."""
    if n_samples <= 0:
        return []
    n_scenes = min(len(names), max(1, n_samples // max(2, keyframes_per_scene)), max(1, n_samples // 2))
    base, extra = divmod(n_samples, n_scenes)
    return [(names[i], base + (i < extra)) for i in range(n_scenes)]


class _Linker:
    """Hard links to template files, a fresh copy of the template every LINKS_PER_TEMPLATE links."""

    def __init__(self, template_dir: str, templates: Dict[str, bytes], mode: str):
        self.dir, self.templates, self.mode = template_dir, templates, mode
        self.count: Dict[str, int] = {}
        self.files = 0

    def place(self, kind: str, path: str) -> None:
        if self.mode == "none":
            return
        n = self.count.get(kind, 0)
        self.count[kind] = n + 1
        src = os.path.join(self.dir, f"{kind}_{n // LINKS_PER_TEMPLATE}{_EXT[kind]}")
        if n % LINKS_PER_TEMPLATE == 0 and not os.path.exists(src):
            with open(src, "wb") as f:
                f.write(self.templates[kind])
        if os.path.lexists(path):
            os.unlink(path)
        if self.mode == "link":
            os.link(src, path)
        else:
            shutil.copyfile(src, path)
        self.files += 1


_EXT = {"lidar": ".pcd.bin", "radar": ".pcd", "camera": ".jpg"}


def _templates(lidar_points: int, image_size: Tuple[int, int], rng: np.random.Generator) -> Dict[str, bytes]:
    from .camera import encode_jpeg
    from .radar import encode_pcd

    n = lidar_points
    pts = np.zeros((n, 5), np.float32)
    r = rng.uniform(2.0, 60.0, n)
    a = rng.uniform(-np.pi, np.pi, n)
    pts[:, 0], pts[:, 1] = r * np.cos(a), r * np.sin(a)
    pts[:, 2] = rng.uniform(-1.9, 1.0, n)
    pts[:, 3] = rng.integers(0, 100, n)
    pts[:, 4] = rng.integers(0, 32, n)
    m = 60
    radar = np.zeros((m, 18))
    radar[:, 0] = rng.uniform(2.0, 80.0, m)
    radar[:, 1] = rng.uniform(-20.0, 20.0, m)
    radar[:, 3] = 1  # dyn_prop
    radar[:, 4] = np.arange(m)  # id
    radar[:, 5] = rng.uniform(-5.0, 20.0, m)  # rcs
    radar[:, 8:10] = rng.normal(0.0, 1.0, (m, 2))  # vx_comp, vy_comp
    radar[:, 10] = 1  # is_quality_valid
    radar[:, 11] = 3  # ambig_state
    radar[:, 15] = 1  # pdh0
    w, h = image_size
    img = (rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1))
    return {"lidar": pts.tobytes(), "radar": encode_pcd(radar), "camera": encode_jpeg(img, 75)}


def _pose(t_us: np.ndarray, t0: int, origin: np.ndarray, yaw0: float, speed: float, yaw_rate: float):
    """(xy float64[N, 2], yaw float64[N]) of a constant-speed, constant-turn drive."""
    tau = (np.asarray(t_us, np.int64) - t0) * 1e-6
    yaw = yaw0 + yaw_rate * tau
    if abs(yaw_rate) < 1e-9:
        dx, dy = speed * tau * math.cos(yaw0), speed * tau * math.sin(yaw0)
    else:
        dx = speed / yaw_rate * (np.sin(yaw) - math.sin(yaw0))
        dy = -speed / yaw_rate * (np.cos(yaw) - math.cos(yaw0))
    return np.stack([origin[0] + dx, origin[1] + dy], 1), yaw


def scale_scene(seed: int, index: int, name: str, n_key: int, boxes_per_sample: float,
                image_size: Tuple[int, int]) -> dict:
    """Table records of one scene ({table: records}) and its files ([(kind, filename)])."""
    rng = np.random.default_rng([seed, index, 0x5CA1E])
    t0 = _EPOCH0 + index * 3_600_000_000 + int(rng.integers(0, 600_000_000))
    logfile, date = _logfile(t0)
    scene_tok, log_tok = token(seed, name, "scene"), token(seed, name, "log")
    origin = rng.uniform(300.0, 2000.0, 2)
    yaw0, speed, yaw_rate = float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.0, 12.0)), float(rng.normal(0, 0.02))

    n_sweeps = (n_key - 1) * rig.SWEEPS_PER_KEYFRAME + 1
    lidar_t = t0 + 100_000 + np.arange(n_sweeps) * rig.LIDAR_PERIOD_US + rng.integers(-300, 301, n_sweeps)
    key_t = lidar_t[::rig.SWEEPS_PER_KEYFRAME]
    # channel -> [(timestamp, keyframe index or -1)]
    msgs: Dict[str, List[Tuple[int, int]]] = {
        LIDAR_CHANNEL: [(int(t), k // 10 if k % 10 == 0 else -1) for k, t in enumerate(lidar_t)]}
    for ch in CAMERA_CHANNELS:
        msgs[ch] = [(int(t) - rig.CAMERA_TRIGGER_OFFSET_US[ch] - int(rng.integers(0, 1500)), k)
                    for k, t in enumerate(key_t)]
    for ch in RADAR_CHANNELS:
        period = rig.RADAR_PERIOD_US * (1.0 + rng.normal(0, 0.01))
        times = np.arange(key_t[0] - period * rng.uniform(0, 1), key_t[-1] + period, period).astype(np.int64)
        key_idx = np.abs(times[:, None] - key_t[None, :]).argmin(0)
        kmap = {int(i): k for k, i in enumerate(key_idx)}
        msgs[ch] = [(int(times[i]), kmap.get(i, -1)) for i in range(int(key_idx[0]), int(key_idx[-1]) + 1)]

    sample_tok = [token(seed, name, "sample", k) for k in range(n_key)]
    samples = [{"token": sample_tok[k], "timestamp": int(key_t[k]), "scene_token": scene_tok,
                "prev": sample_tok[k - 1] if k else "", "next": sample_tok[k + 1] if k + 1 < n_key else ""}
               for k in range(n_key)]
    sample_data, ego_pose, files = [], [], []
    w, h = image_size
    for ch in sorted(msgs):
        lst = msgs[ch]
        kind = "lidar" if ch == LIDAR_CHANNEL else ("camera" if ch in CAMERA_CHANNELS else "radar")
        ext = _EXT[kind]
        toks = [token(seed, name, "sample_data", ch, t) for t, _ in lst]
        owner, next_key = [0] * len(lst), n_key - 1
        for i in range(len(lst) - 1, -1, -1):  # a sweep belongs to the sample of the next keyframe
            if lst[i][1] >= 0:
                next_key = lst[i][1]
            owner[i] = next_key
        xy, yaw = _pose(np.array([t for t, _ in lst]), t0, origin, yaw0, speed, yaw_rate)
        cs = calibrated_sensor_token(ch)
        for i, (t, k) in enumerate(lst):
            folder = "samples" if k >= 0 else "sweeps"
            filename = f"{folder}/{ch}/{logfile}__{ch}__{t}{ext}"
            files.append((kind, filename))
            sample_data.append({"token": toks[i], "sample_token": sample_tok[owner[i]], "ego_pose_token": toks[i],
                                "calibrated_sensor_token": cs, "timestamp": t, "fileformat": ext.split(".")[1],
                                "is_key_frame": k >= 0, "height": h if kind == "camera" else 0,
                                "width": w if kind == "camera" else 0, "filename": filename,
                                "prev": toks[i - 1] if i else "", "next": toks[i + 1] if i + 1 < len(lst) else ""})
            ego_pose.append({"token": toks[i], "timestamp": t,
                             "translation": [round(float(xy[i, 0]), 4), round(float(xy[i, 1]), 4), 0.0],
                             "rotation": yaw_quaternion(float(yaw[i]))})

    # Annotations: instances on straight tracks near the ego, each over a contiguous run of keyframes
    # (about 5/8 of the scene on average), so that a keyframe holds ~boxes_per_sample of them.
    ego_xy, ego_yaw = _pose(key_t, t0, origin, yaw0, speed, yaw_rate)
    n_inst = max(1, int(rng.poisson(boxes_per_sample / 0.625)))
    shares = np.array([c[1] for c in _CATEGORIES])
    cats = rng.choice(len(_CATEGORIES), size=n_inst, p=shares / shares.sum())
    annotations, instances = [], []
    for a in range(n_inst):
        cat, _, size, attrs = _CATEGORIES[int(cats[a])]
        length = int(rng.integers(max(1, n_key // 4), n_key + 1))
        first = int(rng.integers(0, n_key - length + 1))
        ks = np.arange(first, first + length)
        start = ego_xy[first] + rng.uniform(-50.0, 50.0, 2)
        moving = bool(attrs) and rng.uniform() < 0.5
        heading = float(rng.uniform(-np.pi, np.pi))
        v = rng.uniform(0.5, 12.0 if cat.startswith("vehicle") else 1.5) if moving else 0.0
        jitter = 1.0 + rng.uniform(-0.15, 0.15, 3)
        size_lwh = [float(round(s * j, 3)) for s, j in zip(size, jitter)]
        attr = [ATTRIBUTE_TOKENS[attrs[0 if moving else -1]]] if attrs else []
        inst_tok = token(seed, name, "instance", a)
        toks = [token(seed, name, "annotation", a, int(k)) for k in ks]
        for j, k in enumerate(ks):
            tau = (key_t[k] - key_t[first]) * 1e-6
            x = start[0] + v * tau * math.cos(heading)
            y = start[1] + v * tau * math.sin(heading)
            dist = float(np.hypot(x - ego_xy[k, 0], y - ego_xy[k, 1]))
            n_lidar = 0 if dist > 55 or rng.uniform() < 0.08 else int(rng.integers(1, max(2, int(3000 / (dist + 5)))))
            annotations.append({
                "token": toks[j], "sample_token": sample_tok[k], "instance_token": inst_tok,
                "visibility_token": str(int(rng.integers(1, 5))), "attribute_tokens": attr,
                "translation": [round(x, 4), round(y, 4), round(size_lwh[2] / 2 + float(rng.normal(0, 0.05)), 4)],
                "size": [size_lwh[1], size_lwh[0], size_lwh[2]], "rotation": yaw_quaternion(heading),
                "prev": toks[j - 1] if j else "", "next": toks[j + 1] if j + 1 < len(ks) else "",
                "num_lidar_pts": n_lidar, "num_radar_pts": int(rng.integers(0, 4)) if n_lidar else 0})
        instances.append({"token": inst_tok, "category_token": category_token(cat), "nbr_annotations": len(ks),
                          "first_annotation_token": toks[0], "last_annotation_token": toks[-1]})
    scene = {"token": scene_tok, "log_token": log_tok, "nbr_samples": n_key, "first_sample_token": sample_tok[0],
             "last_sample_token": sample_tok[-1], "name": name,
             "description": f"Scale rehearsal: {n_inst} instances, {speed:.1f} m/s"}
    log = {"token": log_tok, "logfile": logfile, "vehicle": "n008", "date_captured": date,
           "location": _LOCATIONS[index % len(_LOCATIONS)]}
    return {"scene": [scene], "log": [log], "sample": samples, "sample_data": sample_data, "ego_pose": ego_pose,
            "sample_annotation": annotations, "instance": instances, "files": files}


class _TableStream:
    """A JSON array written record chunk by record chunk (the C encoder, no indentation)."""

    def __init__(self, path: str):
        self.f = open(path, "w")
        self.f.write("[")
        self.n = 0

    def add(self, records: List[dict]) -> None:
        if not records:
            return
        body = json.dumps(records, sort_keys=True)[1:-1]
        self.f.write(("," if self.n else "") + body)
        self.n += len(records)

    def close(self) -> None:
        self.f.write("]")
        self.f.close()


def generate_scale_root(out_dir: str, train_samples: int = NUSCENES_TRAIN_SAMPLES,
                        val_samples: int = NUSCENES_VAL_SAMPLES, seed: int = 0, keyframes_per_scene: int = 40,
                        boxes_per_sample: float = 34.0, files: str = "link", lidar_points: int = 2000,
                        image_size: Tuple[int, int] = (320, 180), verbose: bool = False) -> dict:
    """Write a nuScenes-sized v1.0-trainval root to ``out_dir`` (see module doc); returns a summary.

    files: 'link' (hard links to templates), 'copy' (real copies: for filesystems without hard links)
    or 'none' (tables only: the index builds, loading samples finds no file)."""
    from nuscenes.utils import splits

    if files not in ("link", "copy", "none"):
        raise ValueError(f"files must be 'link', 'copy' or 'none', got {files!r}")
    start = time.perf_counter()
    plan = [(n, k, "train") for n, k in scene_plan(train_samples, splits.train, keyframes_per_scene)] + \
           [(n, k, "val") for n, k in scene_plan(val_samples, splits.val, keyframes_per_scene)]
    table_dir = os.path.join(out_dir, VERSION)
    os.makedirs(table_dir, exist_ok=True)
    tmpl_dir = os.path.join(out_dir, ".templates")
    os.makedirs(tmpl_dir, exist_ok=True)
    linker = _Linker(tmpl_dir, _templates(lidar_points, image_size, np.random.default_rng([seed, 1])), files)
    made_dirs = set()
    streams = {t: _TableStream(os.path.join(table_dir, t + ".json"))
               for t in ("scene", "log", "sample", "sample_data", "ego_pose", "sample_annotation", "instance")}
    counts = {"train": 0, "val": 0}
    logs = []
    try:
        for i, (name, n_key, split) in enumerate(plan):
            rec = scale_scene(seed, i, name, n_key, boxes_per_sample, image_size)
            for t, s in streams.items():
                s.add(rec[t])
            logs.append(rec["log"][0]["token"])
            counts[split] += n_key
            for kind, rel in rec["files"]:
                path = os.path.join(out_dir, rel)
                d = os.path.dirname(path)
                if d not in made_dirs:
                    os.makedirs(d, exist_ok=True)
                    made_dirs.add(d)
                linker.place(kind, path)
            if verbose and (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(plan)} scenes, {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        for s in streams.values():
            s.close()
    # The fixed tables, and one blank map raster for every log.
    import cv2

    ok, png = cv2.imencode(".png", np.zeros((64, 64), np.uint8))
    map_token = token(seed, "scale", "map")
    os.makedirs(os.path.join(out_dir, "maps"), exist_ok=True)
    with open(os.path.join(out_dir, "maps", map_token + ".png"), "wb") as f:
        f.write(png.tobytes())
    fixed = fixed_tables(*image_size)
    fixed["map"] = [{"token": map_token, "category": "semantic_prior", "filename": f"maps/{map_token}.png",
                     "log_tokens": logs}]
    for t in TABLES:
        if t in fixed:
            with open(os.path.join(table_dir, t + ".json"), "w") as f:
                json.dump(fixed[t], f, sort_keys=True)
    summary = {"kind": "scale rehearsal", "seed": seed, "version": VERSION, "scenes": len(plan),
               "train_samples": counts["train"], "val_samples": counts["val"],
               "sample_data": streams["sample_data"].n, "sample_annotation": streams["sample_annotation"].n,
               "files": linker.files, "file_mode": files, "seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(out_dir, "scale_manifest.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    if verbose:
        print(f"scale root: {summary}")
    return summary
