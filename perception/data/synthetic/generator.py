"""Orchestration: presets, per-scene generation (in parallel processes), failure injection, tables.

Timing follows nuScenes: a LiDAR sample_data timestamp is the END of its 50 ms rotation; cameras are
triggered when the beam crosses their optical axis (``rig.CAMERA_TRIGGER_OFFSET_US`` before the sweep
end) on 3 of every 5 sweeps (12 Hz, always on keyframe sweeps); radars run free at ~13 Hz and a
keyframe takes the message nearest to the keyframe LiDAR time; every channel's chain starts and
ends on a keyframe; a sweep belongs to the sample of the next keyframe in its chain; every
sample_data has an ego_pose with its own timestamp and token.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import rig
from .camera import CameraConfig, encode_jpeg, render
from .lidar import LidarConfig, simulate_sweep
from .radar import RadarConfig, encode_pcd, simulate_message
from .world import World, build_world
from .writer import (ATTRIBUTE_TOKENS, calibrated_sensor_token, category_token, count_points_in_boxes,
                     fixed_tables, radar_points_devkit_view, token, visibility_token, write_json,
                     write_tables, yaw_quaternion)
from perception.structures import CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS

VERSION = "v1.0-trainval"
# CAN-bus data are missing for these official scene numbers (the devkit refuses them), skip their names.
_CAN_BLACKLIST = {161, 162, 163, 164, 165, 166, 167, 168, 170, 171, 172, 173, 174, 175, 176,
                  309, 310, 311, 312, 313, 314}
_EPOCH0 = 1_533_000_000_000_000  # 2018-07-31, us


@dataclass
class Failures:
    """Failure injection. Intervals are seconds from the scene start; applied to every scene.

    drop_rate: probability that a non-keyframe message (any channel) is lost (record and file)
    kill_camera: (channel, start_s, end_s): the camera sends nothing in that interval
    lidar_blackout: (start_s, end_s): LiDAR sweeps in that interval hold no points
    timestamp_jitter_us: each sample_data timestamp is off by up to +- this many us
    corrupt_files: this many sensor files (over the whole root) are truncated

    The manifest (``synthetic_manifest.json``, key ``injected_failures``) records each failure as a
    health check would see it, one record per problem:

    - message_dropped: one record per run of consecutive lost messages of a channel, with the
      surviving neighbours' timestamps (``after_timestamp`` / ``before_timestamp``). A run of ONE
      radar or camera message is marked ``detectable: False``: real nuScenes drives lose single
      radar and camera messages routinely (2x-period gaps in the shared real scenes), so one lost
      message cannot be told from the sensor's normal behaviour; LiDAR never skips a sweep.
    - camera_killed: one record per silent run of the camera (``timestamps`` of the lost images).
    - lidar_blackout: one record per run of consecutive empty sweeps (``filenames``).
    - timestamp_jitter: one record per scene and channel (``offsets_us`` per sample_data token).
      Only a channel on a triggered clock (LiDAR, cameras) has a model its timestamps must follow;
      radars run free (real periods scatter 68-81 ms), so jitter on them is marked
      ``detectable: False``. ``keyframe_association_broken`` lists the samples whose keyframe
      message of the channel is no longer the one nearest to the (jittered) keyframe time, where
      the dataset's association now contradicts its own timestamps.
    - corrupt_file: one record per truncated file.
    """

    drop_rate: float = 0.0
    kill_camera: Optional[Tuple[str, float, float]] = None
    lidar_blackout: Optional[Tuple[float, float]] = None
    timestamp_jitter_us: int = 0
    corrupt_files: int = 0

    def any(self) -> bool:
        return bool(self.drop_rate or self.kill_camera or self.lidar_blackout or self.timestamp_jitter_us
                    or self.corrupt_files)


@dataclass
class GeneratorConfig:
    train_scenes: int = 8
    val_scenes: int = 2
    duration_s: float = 20.0
    lidar_sweeps: bool = True  # write the 20 Hz LiDAR sweeps between keyframes
    radar_sweeps: bool = True  # write all ~13 Hz radar messages
    camera_sweeps: bool = False  # write the 12 Hz camera images between keyframes
    lidar: LidarConfig = field(default_factory=LidarConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    radar: RadarConfig = field(default_factory=RadarConfig)
    annotation_range: float = 70.0  # m from the ego, as far as nuScenes annotates
    pose_noise_m: float = 0.01  # localization (ego_pose) error, 1 sigma
    can_noise_m: float = 0.15  # CAN-bus / GNSS pose error, 1 sigma
    failures: Failures = field(default_factory=Failures)
    workers: int = 2


PRESETS: Dict[str, GeneratorConfig] = {
    # The built-in data of the main job: trains and validates the small model on a CPU.
    "default": GeneratorConfig(lidar=LidarConfig(azimuth_steps=384)),
    # nuScenes' own volumes: every sweep of every sensor, full-size images, full LiDAR resolution.
    "full": GeneratorConfig(camera_sweeps=True, lidar=LidarConfig(azimuth_steps=1084, max_range=100.0),
                            camera=CameraConfig(width=1600, height=900, jpeg_quality=90)),
    # Tests: two short scenes, small images.
    "tiny": GeneratorConfig(train_scenes=1, val_scenes=1, duration_s=4.0, lidar=LidarConfig(azimuth_steps=256),
                            camera=CameraConfig(width=192, height=108), workers=1),
}


def scene_names(n_train: int, n_val: int) -> List[Tuple[str, str]]:
    """(name, split) pairs from the devkit's official split lists (train names, then val names)."""
    from nuscenes.utils import splits

    def pick(names, n):
        ok = [s for s in names if int(s[-4:]) not in _CAN_BLACKLIST]
        if n > len(ok):
            raise ValueError(f"at most {len(ok)} scenes of this split")
        return ok[:n]

    return [(s, "train") for s in pick(splits.train, n_train)] + [(s, "val") for s in pick(splits.val, n_val)]


# -------------------------------------------------------------------------------------------------
# Pose noise: smooth, deterministic functions of time
# -------------------------------------------------------------------------------------------------
@dataclass
class _SmoothNoise:
    amp: np.ndarray  # [M, D]
    freq: np.ndarray  # [M] Hz
    phase: np.ndarray  # [M, D]

    @classmethod
    def make(cls, rng: np.random.Generator, sigma: np.ndarray, fmax: float) -> "_SmoothNoise":
        M = 6
        freq = rng.uniform(0.02, fmax, M)
        amp = rng.normal(0, 1, (M, len(sigma))) * np.asarray(sigma) / np.sqrt(M / 2)
        return cls(amp, freq, rng.uniform(0, 2 * np.pi, (M, len(sigma))))

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        """float64[N, D] noise at times tau float64[N] s."""
        return np.sum(self.amp[None] * np.sin(2 * np.pi * self.freq[None, :, None] * tau[:, None, None]
                                              + self.phase[None]), axis=1)


# -------------------------------------------------------------------------------------------------
# One scene
# -------------------------------------------------------------------------------------------------
@dataclass
class _Msg:
    channel: str
    t: int  # true capture time, us
    key: int  # keyframe (sample) index or -1
    stamp: int = 0  # written timestamp (true time + injected jitter)
    token: str = ""
    filename: str = ""


def _logfile(t0: int) -> Tuple[str, str]:
    import datetime

    local = datetime.datetime.fromtimestamp(t0 * 1e-6, datetime.timezone.utc) - datetime.timedelta(hours=4)
    return "n008-" + local.strftime("%Y-%m-%d-%H-%M-%S") + "-0400", local.strftime("%Y-%m-%d")


def _scene_rngs(seed: int, index: int) -> List[np.random.Generator]:
    """Independent generators of one scene: world, lidar, camera, radar, clock, failures, noise, start."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(8)]


def make_world(seed: int, index: int, duration_s: float) -> World:
    """The world of scene number ``index`` (its position in the root) for a seed."""
    rngs = _scene_rngs(seed, index)
    t0 = _EPOCH0 + index * 3_600_000_000 + int(rngs[7].integers(0, 600_000_000))
    return build_world(rngs[0], t0, duration_s)


def generate_scene(out_dir: str, seed: int, index: int, name: str, cfg: GeneratorConfig) -> dict:
    """Generate one scene: writes its sensor files, CAN-bus files and map raster; returns its table
    records and a summary (dict of lists)."""
    _, r_lidar, r_cam, r_radar, r_clock, r_fail, r_noise, _ = _scene_rngs(seed, index)
    world = make_world(seed, index, cfg.duration_s)
    t0 = world.t0
    logfile, date = _logfile(t0)
    log_token = token(seed, name, "log")
    fl = cfg.failures

    # ---- clocks
    n_key = max(2, int(round(cfg.duration_s * 2)))
    n_sweeps = (n_key - 1) * rig.SWEEPS_PER_KEYFRAME + 1
    t_lidar0 = t0 + 100_000
    lidar_t = t_lidar0 + np.arange(n_sweeps) * rig.LIDAR_PERIOD_US + r_clock.integers(-300, 301, n_sweeps)
    key_t = lidar_t[::rig.SWEEPS_PER_KEYFRAME]
    msgs: Dict[str, List[_Msg]] = {}
    msgs[LIDAR_CHANNEL] = [_Msg(LIDAR_CHANNEL, int(t), k // 10 if k % 10 == 0 else -1)
                           for k, t in enumerate(lidar_t) if cfg.lidar_sweeps or k % 10 == 0]
    for ch in CAMERA_CHANNELS:
        lst = []
        for k, t in enumerate(lidar_t):
            if rig.camera_fires(k) and (cfg.camera_sweeps or k % 10 == 0):
                tc = int(t) - rig.CAMERA_TRIGGER_OFFSET_US[ch] - int(r_clock.integers(0, 1500))
                lst.append(_Msg(ch, tc, k // 10 if k % 10 == 0 else -1))
        msgs[ch] = lst
    for ch in RADAR_CHANNELS:
        period = rig.RADAR_PERIOD_US * (1.0 + r_clock.normal(0, 0.01))
        t = key_t[0] - period - r_clock.uniform(0, period)
        times = []
        while t < key_t[-1] + period:
            times.append(int(t))
            t += period + r_clock.uniform(-2500, 2500)
        times = np.array(times)
        key_idx = [int(np.argmin(np.abs(times - kt))) for kt in key_t]
        first, last = key_idx[0], key_idx[-1]
        lst = []
        for i in range(first, last + 1):
            k = key_idx.index(i) if i in key_idx else -1
            if cfg.radar_sweeps or k >= 0:
                lst.append(_Msg(ch, int(times[i]), k))
        msgs[ch] = lst

    # ---- failure injection on the message lists
    injected: List[dict] = []
    lost_runs = []  # (record, index of the first kept message after the run, or None)
    for ch in sorted(msgs):
        keep = []
        run_kind, run = None, None
        for m in msgs[ch]:
            kind = None
            if fl.kill_camera and ch == fl.kill_camera[0] and \
                    t0 + fl.kill_camera[1] * 1e6 <= m.t <= t0 + fl.kill_camera[2] * 1e6:
                kind = "camera_killed"
            elif fl.drop_rate and m.key < 0 and r_fail.uniform() < fl.drop_rate:
                kind = "message_dropped"
            if kind is None:
                if run is not None:
                    lost_runs.append((run, m))
                run_kind, run = None, None
                keep.append(m)
                continue
            # Consecutive lost messages are one failure (one gap in the channel), whatever the cause
            # of each; a kill interval names the failure when it is part of it.
            if run is None:
                run = {"kind": kind, "scene": name, "channel": ch, "timestamp": m.t, "timestamps": [],
                       "after": keep[-1] if keep else None}
                injected.append(run)
            elif kind == "camera_killed":
                run["kind"] = kind
            run["timestamps"].append(m.t)
        if run is not None:
            lost_runs.append((run, None))
        msgs[ch] = keep
    jitter_rec: Dict[str, dict] = {}
    for ch in sorted(msgs):
        prev = None
        for m in msgs[ch]:
            j = int(r_fail.integers(-fl.timestamp_jitter_us, fl.timestamp_jitter_us + 1)) if fl.timestamp_jitter_us else 0
            m.stamp = m.t + j
            if prev is not None and m.stamp <= prev:
                m.stamp = prev + 1  # keep each chain in time order
            if m.stamp != m.t:
                rec = jitter_rec.get(ch)
                if rec is None:
                    rec = jitter_rec[ch] = {
                        "kind": "timestamp_jitter", "scene": name, "channel": ch,
                        "amplitude_us": fl.timestamp_jitter_us, "offsets_us": {}, "max_abs_offset_us": 0,
                        "detectable": ch == LIDAR_CHANNEL or ch in CAMERA_CHANNELS,
                        "keyframe_association_broken": []}
                    injected.append(rec)
                rec["offsets_us"][m.t] = m.stamp - m.t  # keyed by true time until tokens exist
                rec["max_abs_offset_us"] = max(rec["max_abs_offset_us"], abs(m.stamp - m.t))
            prev = m.stamp
            ext = "pcd.bin" if ch == LIDAR_CHANNEL else ("jpg" if ch.startswith("CAM") else "pcd")
            folder = "samples" if m.key >= 0 else "sweeps"
            m.filename = f"{folder}/{ch}/{logfile}__{ch}__{m.stamp}.{ext}"
            m.token = token(seed, name, "sample_data", ch, m.t)
    # A keyframe's sample time is its LiDAR keyframe's (possibly jittered) timestamp.
    sample_t = {m.key: m.stamp for m in msgs[LIDAR_CHANNEL] if m.key >= 0}
    sample_tok = [token(seed, name, "sample", k) for k in range(n_key)]
    _record_lost_runs(lost_runs, msgs, sample_t, n_key)
    _record_jitter(jitter_rec, msgs, sample_t, sample_tok)

    # ---- ego poses (localization output: truth + small smooth error), one per sample_data
    pose_noise = _SmoothNoise.make(r_noise, np.array([cfg.pose_noise_m, cfg.pose_noise_m, cfg.pose_noise_m * 0.02]), 0.5)
    ego_pose: Dict[str, dict] = {}
    for ch in sorted(msgs):
        if not msgs[ch]:
            continue
        ts = np.array([m.t for m in msgs[ch]])
        xy, yaw, _, _ = world.ego_state(ts)
        nz = pose_noise((ts - t0) * 1e-6)
        for m, p, a, e in zip(msgs[ch], xy, yaw, nz):
            ego_pose[m.token] = {"token": m.token, "timestamp": m.stamp,
                                 "translation": [round(float(p[0] + e[0]), 6), round(float(p[1] + e[1]), 6), 0.0],
                                 "rotation": yaw_quaternion(float(a + e[2]))}

    # ---- sensor files
    def path(m):
        p = os.path.join(out_dir, m.filename)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    lidar_key_points: Dict[int, np.ndarray] = {}
    blackout: Optional[dict] = None
    for m in msgs[LIDAR_CHANNEL]:
        pts = simulate_sweep(world, m.t, cfg.lidar, r_lidar)
        if fl.lidar_blackout and t0 + fl.lidar_blackout[0] * 1e6 <= m.t <= t0 + fl.lidar_blackout[1] * 1e6:
            pts = pts[:0]
            if blackout is None:  # the blacked-out sweeps are consecutive: one failure
                blackout = {"kind": "lidar_blackout", "scene": name, "channel": LIDAR_CHANNEL,
                            "timestamp": m.stamp, "filename": m.filename, "timestamps": [], "filenames": []}
                injected.append(blackout)
            blackout["timestamps"].append(m.stamp)
            blackout["filenames"].append(m.filename)
        pts.tofile(path(m))
        if m.key >= 0:
            lidar_key_points[m.key] = pts
    n_agents = len(world.agents)
    vis_px = np.zeros((n_key, n_agents), np.int64)
    cov_px = np.zeros((n_key, n_agents), np.int64)
    for ch in CAMERA_CHANNELS:
        for m in msgs[ch]:
            xy, yaw, _, _ = world.ego_state(m.t)
            img, vis, cov = render(world, ch, m.t, cfg.camera, r_cam, xy[0], yaw[0])
            with open(path(m), "wb") as f:
                f.write(encode_jpeg(img, cfg.camera.jpeg_quality))
            if m.key >= 0:
                vis_px[m.key] += vis
                cov_px[m.key] += cov
    radar_key: Dict[Tuple[str, int], np.ndarray] = {}
    for ch in RADAR_CHANNELS:
        for m in msgs[ch]:
            rec = simulate_message(world, ch, m.t, cfg.radar, r_radar)
            with open(path(m), "wb") as f:
                f.write(encode_pcd(rec))
            if m.key >= 0:
                radar_key[(ch, m.key)] = rec

    # ---- tables: sample, sample_data
    samples = []
    for k in range(n_key):
        samples.append({"token": sample_tok[k], "timestamp": int(sample_t[k]), "scene_token": token(seed, name, "scene"),
                        "prev": sample_tok[k - 1] if k > 0 else "", "next": sample_tok[k + 1] if k + 1 < n_key else ""})
    sample_data = []
    key_sd: Dict[Tuple[str, int], dict] = {}
    for ch in sorted(msgs):
        lst = msgs[ch]
        next_key = n_key - 1
        owner = [0] * len(lst)
        for i in range(len(lst) - 1, -1, -1):  # a sweep belongs to the sample of the next keyframe
            if lst[i].key >= 0:
                next_key = lst[i].key
            owner[i] = next_key
        for i, m in enumerate(lst):
            w, h = (cfg.camera.width, cfg.camera.height) if ch.startswith("CAM") else (0, 0)
            rec = {"token": m.token, "sample_token": sample_tok[owner[i]], "ego_pose_token": m.token,
                   "calibrated_sensor_token": calibrated_sensor_token(ch), "timestamp": m.stamp,
                   "fileformat": "jpg" if ch.startswith("CAM") else "pcd", "is_key_frame": m.key >= 0,
                   "height": h, "width": w, "filename": m.filename,
                   "prev": lst[i - 1].token if i > 0 else "", "next": lst[i + 1].token if i + 1 < len(lst) else ""}
            sample_data.append(rec)
            if m.key >= 0:
                key_sd[(ch, m.key)] = rec

    # ---- annotations
    ann_range = np.zeros((n_key, n_agents), bool)
    boxes_at = []
    for k in range(n_key):
        b = world.agent_boxes(int(key_t[k]))
        exy, _, _, _ = world.ego_state(int(key_t[k]))
        ann_range[k] = np.hypot(b[:, 0] - exy[0, 0], b[:, 1] - exy[0, 1]) < cfg.annotation_range
        boxes_at.append(b)
    annotations, instances = [], []
    per_sample: Dict[int, List[dict]] = {k: [] for k in range(n_key)}
    for a_i, agent in enumerate(world.agents):
        ks = np.nonzero(ann_range[:, a_i])[0]
        if len(ks) == 0:
            continue
        ks = np.arange(ks[0], ks[-1] + 1)  # one contiguous track per instance
        inst_tok = token(seed, name, "instance", a_i)
        toks = [token(seed, name, "annotation", a_i, k) for k in ks]
        for j, k in enumerate(ks):
            b = boxes_at[k][a_i]
            frac = vis_px[k, a_i] / cov_px[k, a_i] if cov_px[k, a_i] > 0 else 0.0
            rec = {"token": toks[j], "sample_token": sample_tok[k], "instance_token": inst_tok,
                   "visibility_token": visibility_token(frac),
                   "attribute_tokens": [ATTRIBUTE_TOKENS[agent.attribute]] if agent.attribute else [],
                   "translation": [round(float(b[0]), 4), round(float(b[1]), 4), round(float(b[2]), 4)],
                   "size": [float(agent.size[1]), float(agent.size[0]), float(agent.size[2])],
                   "rotation": yaw_quaternion(agent.yaw),
                   "prev": toks[j - 1] if j > 0 else "", "next": toks[j + 1] if j + 1 < len(ks) else "",
                   "num_lidar_pts": 0, "num_radar_pts": 0}
            annotations.append(rec)
            per_sample[k].append(rec)
        instances.append({"token": inst_tok, "category_token": category_token(agent.category),
                          "nbr_annotations": len(ks), "first_annotation_token": toks[0],
                          "last_annotation_token": toks[-1]})
    # Point counts from the keyframe files, with the devkit's own geometry.
    for k in range(n_key):
        anns = per_sample[k]
        if not anns:
            continue
        if (LIDAR_CHANNEL, k) in key_sd and k in lidar_key_points:
            sd = key_sd[(LIDAR_CHANNEL, k)]
            n = count_points_in_boxes(anns, lidar_key_points[k][:, :3].T, ego_pose[sd["token"]], LIDAR_CHANNEL)
            for rec, c in zip(anns, n):
                rec["num_lidar_pts"] = int(c)
        for ch in RADAR_CHANNELS:
            if (ch, k) in key_sd:
                sd = key_sd[(ch, k)]
                n = count_points_in_boxes(anns, radar_points_devkit_view(radar_key[(ch, k)]), ego_pose[sd["token"]], ch)
                for rec, c in zip(anns, n):
                    rec["num_radar_pts"] += int(c)

    # ---- scene, log, map, CAN bus
    counts: Dict[str, int] = {}
    for a in world.agents:
        counts[a.cls] = counts.get(a.cls, 0) + 1
    desc = "Synthetic drive: " + ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) + \
        (", dusk" if world.sun[2] < 0.3 else ", day")
    scene = {"token": token(seed, name, "scene"), "log_token": log_token, "nbr_samples": n_key,
             "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1], "name": name,
             "description": desc}
    map_png = _map_png(world)
    import hashlib

    map_token = hashlib.md5(map_png).hexdigest()
    os.makedirs(os.path.join(out_dir, "maps"), exist_ok=True)
    with open(os.path.join(out_dir, "maps", map_token + ".png"), "wb") as f:
        f.write(map_png)
    log = {"token": log_token, "logfile": logfile, "vehicle": "n008", "date_captured": date,
           "location": "boston-seaport"}
    map_rec = {"token": map_token, "category": "semantic_prior", "filename": f"maps/{map_token}.png",
               "log_tokens": [log_token]}
    _write_can_bus(out_dir, name, world, int(key_t[0]), int(key_t[-1]), cfg, r_noise)
    # GNSS fixes beside the CAN bus (perception.data.synthetic.gnss); their own generator, so that the
    # other streams stay as they were for a seed.
    from .gnss import fixes_json, simulate as simulate_gnss

    gnss = simulate_gnss(world, int(key_t[0]), int(key_t[-1]), np.random.default_rng([seed, index, 19]),
                         location=log["location"])
    write_json(os.path.join(out_dir, "can_bus", f"{name}_gnss.json"), fixes_json(gnss))
    return {"scene": [scene], "log": [log], "map": [map_rec], "sample": samples, "sample_data": sample_data,
            "ego_pose": [ego_pose[k] for k in sorted(ego_pose)], "sample_annotation": annotations,
            "instance": instances, "injected": injected,
            "files": sorted(m.filename for ch in msgs for m in msgs[ch])}


def _record_lost_runs(lost_runs, msgs, sample_t, n_key) -> None:
    """Complete the records of lost-message runs once the survivors' timestamps are known: the
    neighbours bounding the gap (None at a chain end) and whether one can tell it from a healthy
    sensor (see ``Failures``)."""
    for rec, nxt in lost_runs:
        after = rec.pop("after")
        rec["after_timestamp"] = after.stamp if after is not None else None
        rec["before_timestamp"] = nxt.stamp if nxt is not None else None
        rec["count"] = len(rec["timestamps"])
        single_ok = rec["channel"] != LIDAR_CHANNEL and rec["count"] == 1 and rec["kind"] == "message_dropped"
        rec["detectable"] = not single_ok
        if single_ok:
            rec["why_not"] = ("one lost radar/camera message: real sensors lose single messages routinely, "
                              "a 2x-period gap is normal")


def _record_jitter(jitter_rec, msgs, sample_t, sample_tok) -> None:
    """Key the jitter offsets by sample_data token and list the keyframes whose association the
    jitter broke: the dataset's keyframe message of a channel is no longer the one nearest to the
    keyframe's (camera: trigger) time among the recorded timestamps."""
    for ch, rec in jitter_rec.items():
        by_t = {m.t: m for m in msgs[ch]}
        rec["offsets_us"] = {by_t[t].token: off for t, off in rec["offsets_us"].items()}
    for ch in sorted(msgs):
        if ch == LIDAR_CHANNEL or not msgs[ch]:
            continue
        stamps = np.array([m.stamp for m in msgs[ch]])
        for i, m in enumerate(msgs[ch]):
            if m.key < 0 or m.key not in sample_t:
                continue
            target = sample_t[m.key] - rig.CAMERA_TRIGGER_OFFSET_US.get(ch, 0)
            if abs(int(stamps[i]) - target) > int(np.min(np.abs(stamps - target))):
                rec = jitter_rec.get(ch)
                if rec is not None:
                    rec["keyframe_association_broken"].append(sample_tok[m.key])


def _map_png(world: World) -> bytes:
    import cv2

    img, _, _ = world.drivable_mask_raster(0.1)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    assert ok
    return buf.tobytes()


def _write_can_bus(out_dir: str, name: str, world: World, t_first: int, t_last: int, cfg: GeneratorConfig,
                   rng: np.random.Generator) -> None:
    """CAN-bus expansion files: 50 Hz pose (GNSS/INS-like error on the true motion), 100 Hz IMU,
    route and meta, in the layout NuScenesCanBus reads."""
    noise = _SmoothNoise.make(rng, np.array([cfg.can_noise_m, cfg.can_noise_m, 0.003]), 0.2)
    ts = np.arange(t_first, t_last + 1, rig.CAN_POSE_PERIOD_US, dtype=np.int64)
    xy, yaw, v, yr = world.ego_state(ts)
    _, _, v2, _ = world.ego_state(ts + 1000)
    acc_g = (v2 - v) / 1e-3
    nz = noise((ts - world.t0) * 1e-6)
    c, s = np.cos(yaw), np.sin(yaw)
    v_long, v_lat = c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]
    a_long, a_lat = c * acc_g[:, 0] + s * acc_g[:, 1], -s * acc_g[:, 0] + c * acc_g[:, 1]
    white = rng.normal(0, 1, (len(ts), 6))
    pose = []
    for i, t in enumerate(ts):
        pose.append({"utime": int(t),
                     "pos": [round(float(xy[i, 0] + nz[i, 0] + 0.02 * white[i, 0]), 4),
                             round(float(xy[i, 1] + nz[i, 1] + 0.02 * white[i, 1]), 4), 0.0],
                     "orientation": yaw_quaternion(float(yaw[i] + nz[i, 2])),
                     "vel": [round(float(v_long[i] + 0.02 * white[i, 2]), 4), round(float(v_lat[i] + 0.02 * white[i, 3]), 4), 0.0],
                     "accel": [round(float(a_long[i] + 0.05 * white[i, 4]), 4), round(float(a_lat[i] + 0.05 * white[i, 5]), 4), 9.81],
                     "rotation_rate": [0.0, 0.0, round(float(yr[i]), 5)]})
    ts_imu = np.arange(t_first, t_last + 1, 10_000, dtype=np.int64)
    _, yaw_i, v_i, yr_i = world.ego_state(ts_imu)
    _, _, v_i2, _ = world.ego_state(ts_imu + 1000)
    ai = (v_i2 - v_i) / 1e-3
    ci, si = np.cos(yaw_i), np.sin(yaw_i)
    wi = rng.normal(0, 1, (len(ts_imu), 3))
    imu = [{"utime": int(t), "linear_accel": [round(float(ci[i] * ai[i, 0] + si[i] * ai[i, 1] + 0.05 * wi[i, 0]), 4),
                                              round(float(-si[i] * ai[i, 0] + ci[i] * ai[i, 1] + 0.05 * wi[i, 1]), 4),
                                              round(9.81 + 0.05 * float(wi[i, 2]), 4)],
            "q": yaw_quaternion(float(yaw_i[i])), "rotation_rate": [0.0, 0.0, round(float(yr_i[i]), 5)]}
           for i, t in enumerate(ts_imu)]
    s_route = np.arange(world.s_range[0], world.s_range[1], 5.0)
    rx, ry = world.road_to_global(s_route, np.full_like(s_route, -1.75))
    route = [[round(float(x), 3), round(float(y), 3)] for x, y in zip(rx, ry)]
    speed = np.hypot(v[:, 0], v[:, 1])
    meta = {"vehicle_speed_mean": float(speed.mean()), "vehicle_speed_max": float(speed.max()),
            "num_pose_messages": len(pose), "synthetic": True}
    base = os.path.join(out_dir, "can_bus")
    write_json(os.path.join(base, f"{name}_pose.json"), pose)
    write_json(os.path.join(base, f"{name}_ms_imu.json"), imu)
    write_json(os.path.join(base, f"{name}_route.json"), route)
    write_json(os.path.join(base, f"{name}_meta.json"), meta)


# -------------------------------------------------------------------------------------------------
# A whole root
# -------------------------------------------------------------------------------------------------
def _scene_job(args):
    return generate_scene(*args)


def _init_worker():
    # Scenes already run in parallel processes; one numba thread each avoids oversubscription.
    import numba

    numba.set_num_threads(1)


def generate(out_dir: str, cfg: GeneratorConfig, seed: int = 0, verbose: bool = False) -> dict:
    """Write a complete nuScenes v1.0-trainval data root to out_dir; returns a summary dict.

    Same (cfg, seed) -> byte-identical output, whatever the number of workers.
    """
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    names = scene_names(cfg.train_scenes, cfg.val_scenes)
    jobs = [(out_dir, seed, i, name, cfg) for i, (name, _) in enumerate(names)]
    if cfg.workers > 1 and len(jobs) > 1:
        with cf.ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("fork"),
                                    initializer=_init_worker) as ex:
            results = list(ex.map(_scene_job, jobs))
    else:
        results = [_scene_job(j) for j in jobs]
    tables = fixed_tables(cfg.camera.width, cfg.camera.height)
    for tname in ("scene", "log", "map", "sample", "sample_data", "ego_pose", "sample_annotation", "instance"):
        tables[tname] = [rec for r in results for rec in r[tname]]
    injected = [x for r in results for x in r["injected"]]
    if cfg.failures.corrupt_files:
        injected += _corrupt_files(out_dir, [f for r in results for f in r["files"]], cfg.failures.corrupt_files, seed)
    write_tables(out_dir, VERSION, tables)
    summary = {
        "seed": seed, "version": VERSION,
        "scenes": [{"name": n, "split": sp, "token": r["scene"][0]["token"], "samples": len(r["sample"]),
                    "annotations": len(r["sample_annotation"])} for (n, sp), r in zip(names, results)],
        "config": _jsonable(asdict(cfg)),
        "injected_failures": injected,
    }
    write_json(os.path.join(out_dir, "synthetic_manifest.json"), summary)
    if verbose:
        print(f"generated {len(names)} scenes in {time.time() - start:.1f} s -> {out_dir}")
    return summary


def _corrupt_files(out_dir: str, files: List[str], n: int, seed: int) -> List[dict]:
    """Truncate n sensor files (chosen by the seed) to a length no reader accepts."""
    rng = np.random.default_rng([seed, 7_777])
    # An empty file (a LiDAR blackout sweep) stays empty when truncated: no corruption to record.
    files = [f for f in files if os.path.getsize(os.path.join(out_dir, f)) > 0]
    out = []
    for i in rng.choice(len(files), size=min(n, len(files)), replace=False):
        rel = files[int(i)]
        p = os.path.join(out_dir, rel)
        with open(p, "rb") as f:
            data = f.read()
        # Half the file, cut to a length that is not a whole number of LiDAR points.
        cut = max(1, len(data) // 2)
        cut -= (cut % 20 == 0)
        with open(p, "wb") as f:
            f.write(data[:cut])
        out.append({"kind": "corrupt_file", "filename": rel, "bytes_before": len(data), "bytes_after": cut})
    return sorted(out, key=lambda d: d["filename"])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def preset(name: str, **overrides) -> GeneratorConfig:
    """A preset's config with top-level fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
