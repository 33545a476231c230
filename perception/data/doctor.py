"""Health check of a recorded drive (``tools/doctor.py``): what is wrong before a GPU-day is spent.

First the raw tables, before the devkit sees them: a malformed table (its file, line and column)
and every dangling token (the table, the row, the field and the missing target), as the devkit
cannot index such a root and no scene is checked then.
Per channel: message count, rate, silent intervals (messages missing from the channel's cadence,
keyframes without the channel), timestamps off their clock model (LiDAR sweeps off the 20 Hz grid,
camera images off their LiDAR trigger time), out-of-order or duplicate timestamps along the
sample_data chain, ego poses that do not match their message's time, missing and corrupt files (a
LiDAR file whose size is not a multiple of 20 bytes, a radar file whose header disagrees with its
size, an unreadable image, NaN or inf points), LiDAR blackouts (runs of sweeps with almost no
points), calibration validity, and per keyframe the synchronizer's choice for every channel with its
offset (and whether it agrees with the dataset's own keyframe association). Not problems, but
reported: per LiDAR channel the fraction of points ``sync.lidar_remove_close`` drops (the car's own
returns), and the ground-truth boxes that leave the config's ``grid.point_cloud_range`` in z (a
grid that cuts objects; ``gt_z_range``). Every problem names the
file or record it concerns; a problem that spans time (a silent interval, a blackout, a jittery
clock) is one line with its interval. Thresholds are below, each with the real-data figure it
leaves room for.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from ..config import Config
from ..structures import LIDAR_CHANNEL, modality_of
from ..geometry import invert
from .convert import gt_boxes_global
from .gt_filter import GtZRange
from ..sync.calibration import CalibrationError, calibration_from_record
from . import io
from .nuscenes_source import NuScenesSource, TableError, dangling_tokens, open_nuscenes, read_tables

# Cadence (periods from _period). A LiDAR spins at a fixed 20 Hz and never skips a sweep on real drives (the shared real
# scenes: every period within 45-55 ms), so an interval over 1.5 periods is a lost sweep. Radars and
# cameras do lose single messages on real drives (2.0-2.07x-period gaps in both real scenes), so
# for them only an interval over 2.25 periods, two or more lost messages in a row, is a problem
# (a camera's 2-2-1-sweep trigger pattern makes two lost images at least 2.5 median periods).
LIDAR_GAP_FACTOR = 1.5
GAP_FACTOR = 2.25
# Timestamp model of triggered clocks. LiDAR: each sweep on its channel's grid of median periods,
# fitted on the LIDAR_GRID_NEIGHBOURS sweeps either side (real scenes: within 5.2 ms of it).
# Cameras: the offset of each image to its LiDAR trigger time, minus the median offset of the
# cameras fired by the same sweep (that common part is the LiDAR stamp's own scatter and the
# trigger model's bias; real scenes: within 3.1 ms). Tolerances are about 1.5x the real maxima.
LIDAR_JITTER_TOL_US = 8_000
LIDAR_GRID_NEIGHBOURS = 10
CAMERA_JITTER_TOL_US = 5_000
MIN_CAMERAS_PER_TRIGGER = 3  # fewer images of one sweep give no common offset to compare with
# A LiDAR sweep with fewer points than this fraction of the channel's median is a blackout (real
# keyframes: 34,400-34,816 points, median 34,720).
LIDAR_MIN_POINTS_FRACTION = 0.1


@dataclass
class Problem:
    kind: str  # missing_file, lidar_size, nonfinite_points, radar_header, unreadable_image, gap,
    #            out_of_order, duplicate_timestamp, pose_time, calibration, sync_mismatch, no_messages,
    #            lidar_blackout, timestamp_jitter, malformed_table, dangling_token
    scene: str
    channel: str
    where: str  # the file or record (table + token) it concerns
    message: str
    interval: Optional[List[int]] = None  # [first, last] us of a problem that spans time (gap, blackout, jitter)
    count: Optional[int] = None  # messages concerned (lost, empty or off their clock model)

    def line(self) -> str:
        if not self.scene and not self.channel:  # a table problem: of the root, not of a scene
            return f"{self.where}: {self.message}"
        return f"{self.scene} {self.channel or '-'} {self.where}: {self.message}"


def _check_file(source: NuScenesSource, msg, close_radius: float = 0.0,
                stats: Optional[Dict[str, int]] = None) -> Optional[Problem]:
    """One sensor file: None when fine, else the problem. A LiDAR file that reads fine adds its point
    count to ``stats['points']`` and its points within ``close_radius`` of the sensor (the ones
    ``sync.lidar_remove_close`` drops) to ``stats['close']``."""
    path = source.path(msg)
    rel = msg.filename

    def problem(kind, text):
        return Problem(kind, "", msg.channel, rel, text)

    if not os.path.isfile(path):
        return problem("missing_file", "file missing")
    mod = modality_of(msg.channel)
    try:
        if mod == "lidar":
            size = os.path.getsize(path)
            if size % io.LIDAR_POINT_BYTES:
                return problem("lidar_size", f"size {size} bytes is not a multiple of {io.LIDAR_POINT_BYTES} "
                                             f"(truncated?)")
            pts = np.fromfile(path, dtype="<f4").reshape(-1, io.LIDAR_NUM_COLUMNS)
            bad = int((~np.isfinite(pts).all(axis=1)).sum())
            if bad:
                return problem("nonfinite_points", f"{bad} of {len(pts)} points have NaN or inf values")
            if stats is not None:
                from ..sync.synchronizer import close_mask

                stats["points"] = stats.get("points", 0) + len(pts)
                stats["close"] = stats.get("close", 0) + int(close_mask(pts, close_radius).sum())
        elif mod == "radar":
            with open(path, "rb") as f:
                blob = f.read()
            try:
                dtype, count, offset = io.radar_pcd_layout(path, blob)
            except io.SensorFileError as e:
                return problem("radar_header", str(e).split(": ", 1)[-1])
            rec = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            bad = int(sum((~np.isfinite(rec[n])).sum() for n in io.RADAR_MODEL_FIELDS))
            if bad:
                return problem("nonfinite_points", f"{bad} NaN or inf values in positions, RCS or velocities")
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # a full decode: verify() alone misses truncated JPEG data
                if msg.width and msg.height and im.size != (msg.width, msg.height):
                    return problem("unreadable_image", f"image is {im.size[0]}x{im.size[1]}, sample_data says "
                                                       f"{msg.width}x{msg.height}")
    except Exception as e:  # any decoder failure is the file's problem, reported, not raised
        return problem("unreadable_image" if mod == "camera" else "corrupt_file",
                       f"unreadable ({e.__class__.__name__}: {e})")
    return None


def check_scene(source: NuScenesSource, scene_name: str, cfg: Config, keyframes_only: bool = False) -> Dict:
    """Check one scene; returns {'channels': {...}, 'keyframes': {...}, 'problems': [Problem]}."""
    from ..sync.synchronizer import FrameBuilder

    nusc = source.nusc
    idx = source.index(scene_name)
    problems: List[Problem] = []
    channels = {}
    for ch, cidx in sorted(idx.channels.items()):
        ts = cidx.timestamps
        n = len(ts)
        info = {"count": n, "rate_hz": None, "median_period_ms": None, "max_interval_ms": None,
                "missing_files": 0, "corrupt_files": 0, "files_checked": 0}
        if n >= 2:
            d = np.diff(ts)
            pos = d[d > 0]
            med = float(np.median(pos)) if len(pos) else 0.0
            info.update(rate_hz=round((n - 1) / ((ts[-1] - ts[0]) * 1e-6), 3) if ts[-1] > ts[0] else None,
                        median_period_ms=round(med / 1e3, 3), max_interval_ms=round(float(d.max()) / 1e3, 3))
        # Order along the recorded prev/next chain (the index itself is sorted by time).
        by_token = {m.token: m for m in cidx.messages}
        first = [m for m in cidx.messages if not nusc.get("sample_data", m.token)["prev"]
                 or nusc.get("sample_data", m.token)["prev"] not in by_token]
        chain_pos: Dict[str, int] = {}  # token -> position along the chain (chains one after another)
        misordered = set()
        for start in first:
            tok, prev_t = start.token, None
            while tok and tok in by_token and tok not in chain_pos:
                chain_pos[tok] = len(chain_pos)
                t = by_token[tok].timestamp
                if prev_t is not None and t == prev_t:
                    misordered.add(tok)
                    problems.append(Problem("duplicate_timestamp", scene_name, ch, f"sample_data {tok}",
                                            f"timestamp {t} repeats the previous message's"))
                elif prev_t is not None and t < prev_t:
                    misordered.add(tok)
                    problems.append(Problem("out_of_order", scene_name, ch, f"sample_data {tok}",
                                            f"timestamp {t} is before the previous message's ({prev_t})"))
                prev_t = t
                tok = nusc.get("sample_data", tok)["next"]
        problems.extend(_gaps(nusc, idx, ch, scene_name, chain_pos, cfg.sync.lidar_period_us))
        if ch == LIDAR_CHANNEL:
            problems.extend(_lidar_clock(cidx, scene_name, cfg.sync.lidar_period_us, misordered))
        # Ego pose of every message at the message's own time.
        for m in cidx.messages:
            pose = nusc.get("ego_pose", m.ego_pose_token)
            if pose["timestamp"] != m.timestamp:
                problems.append(Problem("pose_time", scene_name, ch, f"ego_pose {m.ego_pose_token}",
                                        f"pose time {pose['timestamp']} differs from its sample_data's {m.timestamp} "
                                        f"by {pose['timestamp'] - m.timestamp} us"))
        # Files.
        missing_sweeps = []
        lidar_points = []  # (message, points) of the LiDAR files that read fine
        close = {"points": 0, "close": 0} if modality_of(ch) == "lidar" else None
        for m in cidx.messages:
            if keyframes_only and not m.is_key_frame:
                continue
            info["files_checked"] += 1
            p = _check_file(source, m, cfg.sync.lidar_remove_close, close)
            if p is None:
                if ch == LIDAR_CHANNEL:
                    lidar_points.append((m, os.path.getsize(source.path(m)) // io.LIDAR_POINT_BYTES))
                continue
            p.scene = scene_name
            if p.kind == "missing_file":
                info["missing_files"] += 1
                if not m.is_key_frame:
                    missing_sweeps.append(p)
                    continue
            else:
                info["corrupt_files"] += 1
            problems.append(p)
        n_sweeps = sum(1 for m in cidx.messages if not m.is_key_frame)
        if missing_sweeps and len(missing_sweeps) == n_sweeps and n_sweeps > 1:
            # One line, not thousands, for a keyframes-only copy of a drive.
            problems.append(Problem("missing_file", scene_name, ch, f"sweeps/{ch}/",
                                    f"all {n_sweeps} sweep files are absent (a keyframes-only copy? "
                                    f"use --keyframes-only to check just the keyframes)"))
        else:
            problems.extend(missing_sweeps)
        if ch == LIDAR_CHANNEL:
            problems.extend(_lidar_blackouts(lidar_points, scene_name))
        if close is not None:
            # What sync.lidar_remove_close takes from the sweeps (not a problem: the car's own returns)
            info.update(remove_close_m=cfg.sync.lidar_remove_close, points_read=close["points"],
                        points_removed_close=close["close"],
                        removed_close_fraction=round(close["close"] / close["points"], 4) if close["points"] else None)
        # Calibration (each record once per scene).
        for cs_token in sorted({m.calibrated_sensor_token for m in cidx.messages}):
            m = next(x for x in cidx.messages if x.calibrated_sensor_token == cs_token)
            try:
                calibration_from_record(ch, nusc.get("calibrated_sensor", cs_token), m.width, m.height)
            except CalibrationError as e:
                problems.append(Problem("calibration", scene_name, ch, f"calibrated_sensor {cs_token}",
                                        str(e).split(": ", 1)[-1]))
        channels[ch] = info

    keyframes: Dict[str, Dict] = {}
    gt_z = None
    if LIDAR_CHANNEL not in idx.channels:
        problems.append(Problem("no_messages", scene_name, LIDAR_CHANNEL, f"scene {idx.scene_token}",
                                "no LiDAR messages: nothing to synchronize against"))
    elif not any(p.kind == "calibration" for p in problems):
        fb = FrameBuilder(source, scene_name, cfg)
        problems.extend(_camera_clocks(idx, fb.sync.trigger_offset_us, scene_name))
        gt_z = GtZRange(cfg.grid.point_cloud_range)
        for sample_token in idx.sample_tokens:
            sample = nusc.get("sample", sample_token)
            ref = fb.reference_for_sample(sample_token)
            # the ego pose at the reference time, as FrameBuilder.plan puts the ground truth
            T_global_from_ref = fb.poses.transforms(np.array([ref.timestamp], np.int64))[0]
            gt_z.add(gt_boxes_global(nusc, sample_token).transformed(invert(T_global_from_ref), "ego"))
            sel = fb.sync.select(ref)
            entry = {}
            for ch, choice in sel.choices.items():
                chosen = choice.messages[0].token if choice.messages else None
                entry[ch] = {"token": chosen, "offset_us": choice.offset_us}
                expected = sample["data"].get(ch)
                if ch != LIDAR_CHANNEL and expected is not None and chosen != expected:
                    exp_t = nusc.get("sample_data", expected)["timestamp"]
                    problems.append(Problem(
                        "sync_mismatch", scene_name, ch, f"sample {sample_token}",
                        f"synchronizer chose {chosen} (offset {choice.offset_us} us) but the dataset's keyframe "
                        f"is {expected} (offset {exp_t - ref.timestamp} us)" if chosen else
                        f"synchronizer found no message ({choice.reason}); the dataset's keyframe is {expected} "
                        f"(offset {exp_t - ref.timestamp} us)"))
            keyframes[sample_token] = entry
    return {"channels": channels, "keyframes": keyframes, "problems": problems, "gt_z_range": gt_z}


def _period(ts: np.ndarray, ch: str, nominal_us: float = 0.0) -> float:
    """The channel's period, us (0 when unknown). LiDAR and radars: every interval divided by the
    number of periods it spans (rounded against the nominal period, for radars the median
    interval), then the median: lost messages and timestamp jitter under half a period leave it
    right, unlike the plain median (a third of the sweeps lost makes that 75 ms). Cameras: the plain
    median, as their 2-2-1-sweep trigger pattern mixes one- and two-sweep intervals (real: 50 and
    100 ms, median 100 ms)."""
    d = np.diff(ts.astype(np.int64))
    d = d[d > 0]
    if not len(d):
        return 0.0
    if modality_of(ch) == "camera":
        return float(np.median(d))
    p0 = float(nominal_us) if nominal_us else float(np.median(d))
    return float(np.median(d / np.maximum(1, np.round(d / p0))))


def _gaps(nusc, idx, ch: str, scene_name: str, chain_pos: Dict[str, int], lidar_period_us: float) -> List[Problem]:
    """Intervals in which a channel is silent: messages missing from its cadence (an interval over
    LIDAR_GAP_FACTOR / GAP_FACTOR median periods) or keyframes without a message of the channel
    (the devkit's ``sample['data']`` lacks it: a sensor dead at a keyframe, at the scene's start or
    end too). One problem per silent interval, bounded by the surviving messages around it (or the
    scene's first / last keyframe time). A cadence gap between two messages that are not neighbours
    on the recorded prev/next chain holds a message stamped out of order, not a lost one: the order
    check reports it (chain_pos: token -> position along the chain)."""
    cidx = idx.channels[ch]
    ts, msgs = cidx.timestamps, cidx.messages
    n = len(ts)
    d = np.diff(ts)
    med = _period(ts, ch, lidar_period_us if ch == LIDAR_CHANNEL else 0.0)
    factor = LIDAR_GAP_FACTOR if ch == LIDAR_CHANNEL else GAP_FACTOR
    silent: Dict[tuple, int] = {}  # (index before, index after) -> keyframes without the channel
    if med > 0:
        for k in np.nonzero(d > factor * med)[0]:
            pa, pb = chain_pos.get(msgs[k].token), chain_pos.get(msgs[k + 1].token)
            if pa is not None and pb is not None and pb != pa + 1:
                continue
            silent[(int(k), int(k) + 1)] = 0
    samples = [nusc.get("sample", tok) for tok in idx.sample_tokens]
    for sample in samples:
        if ch in sample["data"]:
            continue
        i = int(np.searchsorted(ts, sample["timestamp"], side="right"))  # messages [0, i) are not later
        key = (i - 1, i)
        silent[key] = silent.get(key, 0) + 1
    out = []
    for (a, b), n_key in sorted(silent.items()):
        t_a = int(ts[a]) if a >= 0 else int(samples[0]["timestamp"])
        t_b = int(ts[b]) if b < n else int(samples[-1]["timestamp"])
        lost = max(1, int(round((t_b - t_a) / med)) - 1) if med > 0 else None
        where = msgs[b] if b < n else msgs[a]
        text = (f"no message for {(t_b - t_a) / 1e3:.1f} ms from t={t_a} to t={t_b}"
                + (f" ({(t_b - t_a) / med:.1f}x the period {med / 1e3:.1f} ms, about {lost} lost)"
                   if med > 0 else ""))
        if a < 0:
            text += ", from the scene's first keyframe on"
        if b >= n:
            text += ", up to the scene's last keyframe"
        if n_key:
            text += f"; {n_key} keyframe{'s' if n_key > 1 else ''} without this channel"
        out.append(Problem("gap", scene_name, ch, f"sample_data {where.token}", text, [t_a, t_b], lost))
    return out


def _lidar_clock(cidx, scene_name: str, lidar_period_us: float, misordered=frozenset()) -> List[Problem]:
    """LiDAR sweeps off their 20 Hz grid by more than LIDAR_JITTER_TOL_US: one problem per channel
    (sweeps in ``misordered``, tokens the order check reported, are not reported twice).
    Each sweep's expected time is the median over its neighbours j of t_j + round((t - t_j) / P) * P
    (P the channel's period), which lost sweeps and a slowly drifting clock do not disturb."""
    ts = cidx.timestamps.astype(np.int64)
    n = len(ts)
    P = _period(ts, LIDAR_CHANNEL, lidar_period_us)
    if n < 3 or P <= 0:
        return []
    W = LIDAR_GRID_NEIGHBOURS
    resid = np.zeros(n)
    for k in range(n):
        j = np.r_[max(0, k - W):k, k + 1:min(n, k + W + 1)]
        slots = np.round((ts[k] - ts[j]) / P)
        resid[k] = np.median(ts[k] - (ts[j] + slots * P))
    bad = np.array([k for k in np.nonzero(np.abs(resid) > LIDAR_JITTER_TOL_US)[0]
                    if cidx.messages[k].token not in misordered], np.int64)
    if not len(bad):
        return []
    worst = int(bad[np.argmax(np.abs(resid[bad]))])
    return [Problem("timestamp_jitter", scene_name, LIDAR_CHANNEL, f"sample_data {cidx.messages[worst].token}",
                    f"{len(bad)} of {n} sweeps are more than {LIDAR_JITTER_TOL_US / 1e3:.0f} ms off the "
                    f"{P / 1e3:.1f} ms sweep grid (worst {resid[worst] / 1e3:+.1f} ms at t={int(ts[worst])})",
                    [int(ts[bad[0]]), int(ts[bad[-1]])], len(bad))]


def _camera_clocks(idx, trigger_offset_us: Dict[str, int], scene_name: str) -> List[Problem]:
    """Camera images off their LiDAR trigger time by more than CAMERA_JITTER_TOL_US, relative to the
    other cameras fired by the same sweep: one problem per camera channel."""
    if LIDAR_CHANNEL not in idx.channels:
        return []
    lidar = idx.channels[LIDAR_CHANNEL].timestamps.astype(np.int64)
    period = float(np.median(np.diff(lidar))) if len(lidar) > 1 else 50_000.0
    per_sweep: Dict[int, Dict[str, tuple]] = {}
    for cam, off in trigger_offset_us.items():
        c = idx.channels.get(cam)
        if c is None:
            continue
        trig = lidar + off
        for m, t in zip(c.messages, c.timestamps):
            j = int(np.argmin(np.abs(trig - t)))
            r = int(t) - int(trig[j])
            if abs(r) < period / 2:  # an image that belongs to no sweep is the gap check's business
                per_sweep.setdefault(j, {})[cam] = (r, m)
    off_model: Dict[str, list] = {}
    for j, cams in per_sweep.items():
        if len(cams) < MIN_CAMERAS_PER_TRIGGER:
            continue
        common = float(np.median([r for r, _ in cams.values()]))
        for cam, (r, m) in cams.items():
            if abs(r - common) > CAMERA_JITTER_TOL_US:
                off_model.setdefault(cam, []).append((r - common, m))
    out = []
    for cam, lst in sorted(off_model.items()):
        lst.sort(key=lambda x: x[1].timestamp)
        dev, worst = max(lst, key=lambda x: abs(x[0]))
        n = len(idx.channels[cam])
        out.append(Problem("timestamp_jitter", scene_name, cam, f"sample_data {worst.token}",
                           f"{len(lst)} of {n} images are more than {CAMERA_JITTER_TOL_US / 1e3:.0f} ms off their "
                           f"LiDAR trigger time relative to the other cameras (worst {dev / 1e3:+.1f} ms at "
                           f"t={worst.timestamp})", [lst[0][1].timestamp, lst[-1][1].timestamp], len(lst)))
    return out


def _lidar_blackouts(lidar_points, scene_name: str) -> List[Problem]:
    """Runs of consecutive LiDAR sweeps with fewer than LIDAR_MIN_POINTS_FRACTION of the median
    point count (files that read fine; broken ones are reported by the file check)."""
    if not lidar_points:
        return []
    counts = np.array([c for _, c in lidar_points])
    limit = LIDAR_MIN_POINTS_FRACTION * float(np.median(counts))
    out, run = [], []
    for (m, c) in lidar_points + [(None, None)]:
        if m is not None and c < limit:
            run.append((m, c))
            continue
        if run:
            first, last = run[0][0], run[-1][0]
            empty = sum(1 for _, x in run if x == 0)
            out.append(Problem(
                "lidar_blackout", scene_name, LIDAR_CHANNEL, first.filename,
                f"{len(run)} consecutive sweep{'s' if len(run) > 1 else ''} from t={first.timestamp} to "
                f"t={last.timestamp} hold fewer than {LIDAR_MIN_POINTS_FRACTION:.0%} of the median "
                f"{int(np.median(counts))} points ({empty} hold none)", [first.timestamp, last.timestamp], len(run)))
            run = []
    return out


def run_doctor(dataroot: str, version: str, cfg: Config, scene: Optional[str] = None,
               keyframes_only: bool = False) -> Dict:
    """Check every scene of a root (or one); returns a JSON-ready report with a 'problems' list.

    The raw tables are checked first: a malformed table or dangling tokens are the report's problems
    (every dangling token, one each) and no scene is checked, as the devkit cannot index such a root.
    Raises DataRootError for a root, version folder or table that is not there, or an unknown scene."""
    report = {"dataroot": os.path.abspath(dataroot), "version": version, "keyframes_only": keyframes_only,
              "scenes": {}, "keyframes": {}, "problems": []}
    try:
        tables = read_tables(dataroot, version)
    except TableError as e:
        report["problems"].append(_table_problem("malformed_table", e.path, e.problems[0][len(e.path) + 2:]))
        return report
    dangling = dangling_tokens(tables)
    if dangling:
        # Dicts built directly (not asdict): a systematically broken table of full nuScenes is millions.
        report["problems"].extend(_table_problem("dangling_token", *ln.split(": ", 1)) for ln in dangling)
        return report
    source = NuScenesSource.from_config(dataroot, version, cfg, nusc=open_nuscenes(dataroot, version, tables=tables))
    names = [source.scene(scene)["name"]] if scene else source.scene_names()
    gt_z = GtZRange(cfg.grid.point_cloud_range)
    for name in names:
        res = check_scene(source, name, cfg, keyframes_only)
        report["scenes"][name] = {"channels": res["channels"], "num_keyframes": len(res["keyframes"])}
        if res["gt_z_range"] is not None:
            report["scenes"][name]["gt_z_range"] = res["gt_z_range"].summary()
            gt_z.merge(res["gt_z_range"])
        report["keyframes"].update(res["keyframes"])
        report["problems"].extend(asdict(p) | {"line": p.line()} for p in res["problems"])
    # A warning, not a problem: the drive is fine, the config's grid cuts its objects
    report["gt_z_range"] = gt_z.summary()
    return report


def _table_problem(kind: str, where: str, message: str) -> Dict:
    """The report entry of a problem of the tables (no scene or channel): where is the file or
    ``<table>.json row <token>``."""
    p = Problem(kind, "", "", where, message)
    return {"kind": kind, "scene": "", "channel": "", "where": where, "message": message, "interval": None,
            "count": None, "line": p.line()}
