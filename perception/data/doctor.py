"""Health check of a recorded drive (``tools/doctor.py``): what is wrong before a GPU-day is spent.

Per channel: message count, rate, gaps, out-of-order or duplicate timestamps along the sample_data
chain, ego poses that do not match their message's time, missing and corrupt files (a LiDAR file
whose size is not a multiple of 20 bytes, a radar file whose header disagrees with its size, an
unreadable image, NaN or inf points), calibration validity, and per keyframe the synchronizer's
choice for every channel with its offset (and whether it agrees with the dataset's own keyframe
association). Every problem names the file or record it concerns.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from ..config import Config
from ..structures import LIDAR_CHANNEL, modality_of
from ..sync.calibration import CalibrationError, calibration_from_record
from . import io
from .nuscenes_source import NuScenesSource

# A gap is an interval longer than this many median periods of the channel (real nuScenes drives
# show occasional single dropped frames, i.e. 2x the period, which are not worth a warning).
GAP_FACTOR = 2.5


@dataclass
class Problem:
    kind: str  # missing_file, lidar_size, nonfinite_points, radar_header, unreadable_image, gap,
    #            out_of_order, duplicate_timestamp, pose_time, calibration, sync_mismatch, no_messages
    scene: str
    channel: str
    where: str  # the file or record (table + token) it concerns
    message: str

    def line(self) -> str:
        return f"{self.scene} {self.channel or '-'} {self.where}: {self.message}"


def _check_file(source: NuScenesSource, msg) -> Optional[Problem]:
    """One sensor file: None when fine, else the problem."""
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
        elif mod == "radar":
            with open(path, "rb") as f:
                blob = f.read()
            try:
                dtype, count, offset = io.radar_pcd_layout(path, blob)
            except io.SensorFileError as e:
                return problem("radar_header", str(e).split(": ", 1)[-1])
            rec = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            bad = int(sum((~np.isfinite(rec[n])).sum() for n in ("x", "y", "z", "vx_comp", "vy_comp")))
            if bad:
                return problem("nonfinite_points", f"{bad} NaN or inf values in positions or velocities")
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
            for k in np.nonzero(d > GAP_FACTOR * med)[0] if med > 0 else []:
                a, b = cidx.messages[k], cidx.messages[k + 1]
                problems.append(Problem("gap", scene_name, ch, f"sample_data {b.token}",
                                        f"gap of {d[k] / 1e3:.1f} ms after t={a.timestamp} "
                                        f"({d[k] / med:.1f}x the median period {med / 1e3:.1f} ms)"))
        # Order along the recorded prev/next chain (the index itself is sorted by time).
        by_token = {m.token: m for m in cidx.messages}
        first = [m for m in cidx.messages if not nusc.get("sample_data", m.token)["prev"]
                 or nusc.get("sample_data", m.token)["prev"] not in by_token]
        for start in first:
            tok, prev_t = start.token, None
            while tok and tok in by_token:
                t = by_token[tok].timestamp
                if prev_t is not None and t == prev_t:
                    problems.append(Problem("duplicate_timestamp", scene_name, ch, f"sample_data {tok}",
                                            f"timestamp {t} repeats the previous message's"))
                elif prev_t is not None and t < prev_t:
                    problems.append(Problem("out_of_order", scene_name, ch, f"sample_data {tok}",
                                            f"timestamp {t} is before the previous message's ({prev_t})"))
                prev_t = t
                tok = nusc.get("sample_data", tok)["next"]
        # Ego pose of every message at the message's own time.
        for m in cidx.messages:
            pose = nusc.get("ego_pose", m.ego_pose_token)
            if pose["timestamp"] != m.timestamp:
                problems.append(Problem("pose_time", scene_name, ch, f"ego_pose {m.ego_pose_token}",
                                        f"pose time {pose['timestamp']} differs from its sample_data's {m.timestamp} "
                                        f"by {pose['timestamp'] - m.timestamp} us"))
        # Files.
        missing_sweeps = []
        for m in cidx.messages:
            if keyframes_only and not m.is_key_frame:
                continue
            info["files_checked"] += 1
            p = _check_file(source, m)
            if p is None:
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
    if LIDAR_CHANNEL not in idx.channels:
        problems.append(Problem("no_messages", scene_name, LIDAR_CHANNEL, f"scene {idx.scene_token}",
                                "no LiDAR messages: nothing to synchronize against"))
    elif not any(p.kind == "calibration" for p in problems):
        fb = FrameBuilder(source, scene_name, cfg)
        for sample_token in idx.sample_tokens:
            sample = nusc.get("sample", sample_token)
            ref = fb.reference_for_sample(sample_token)
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
    return {"channels": channels, "keyframes": keyframes, "problems": problems}


def run_doctor(dataroot: str, version: str, cfg: Config, scene: Optional[str] = None,
               keyframes_only: bool = False) -> Dict:
    """Check every scene of a root (or one); returns a JSON-ready report with a 'problems' list."""
    source = NuScenesSource(dataroot, version, radar_default_filters=cfg.sync.radar_default_filters)
    names = [source.scene(scene)["name"]] if scene else source.scene_names()
    report = {"dataroot": os.path.abspath(dataroot), "version": version, "keyframes_only": keyframes_only,
              "scenes": {}, "keyframes": {}, "problems": []}
    for name in names:
        res = check_scene(source, name, cfg, keyframes_only)
        report["scenes"][name] = {"channels": res["channels"], "num_keyframes": len(res["keyframes"])}
        report["keyframes"].update(res["keyframes"])
        report["problems"].extend(asdict(p) | {"line": p.line()} for p in res["problems"])
    return report
