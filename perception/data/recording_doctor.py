"""Health check of a recording (``tools/doctor.py --recording R --rig RIG``).

A recording that cannot be read at all (a missing topic, a PointCloud2 without x/y/z, stamps going
backwards, an unknown type, a truncated file, a sensor without a transform) is a RecordingError when
it is opened (exit 2, one line). What a readable recording can still have wrong, each a problem
naming the topic or channel:

- per channel: silent intervals (an interval over GAP_FACTOR median periods, LiDAR over
  LIDAR_GAP_FACTOR, as for roots), and each decoded sensor payload checked as a root's files are
  (NaN points, unreadable images);
- header stamp vs receive (log) time: a topic whose largest |receive - header| exceeds the rig file's
  ``stamp_tolerance_ms`` (the message time is the header stamp; a large disagreement means a
  sensor clock or a driver that stamps wrong) - named with the message index where it is largest;
- the GNSS pose: each outage the filter dead-reckoned through (its interval and the position sigma it
  reached) and the fixes it rejected.

Reported, not problems: the sensor topics the rig file does not map, where the pose came from, the
calibration of each channel, and per keyframe the synchronizer's choice for every channel.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Dict

import numpy as np

from ..config import Config
from ..structures import LIDAR_CHANNEL
from .doctor import GAP_FACTOR, LIDAR_GAP_FACTOR, Problem, _check_file


def run_recording_doctor(source, cfg: Config) -> Dict:
    """A RecordingSource checked; a JSON-ready report shaped like run_doctor's."""
    from ..sync.synchronizer import Synchronizer

    name = source.name
    idx = source.index(name)
    problems = []
    channels = {}
    for ch, cidx in idx.channels.items():
        ts = cidx.timestamps
        d = np.diff(ts)
        period = float(np.median(d)) if len(d) else None
        max_gap = float(d.max()) if len(d) else None
        entry = {"count": len(cidx), "topic": source.rig_file.channels[ch].topic,
                 "rate_hz": 1e6 / period if period else None, "median_period_ms": period / 1000 if period else None,
                 "max_interval_ms": max_gap / 1000 if max_gap is not None else None, "files_checked": 0,
                 "missing_files": 0, "corrupt_files": 0}
        if period:
            factor = LIDAR_GAP_FACTOR if ch == LIDAR_CHANNEL else GAP_FACTOR
            for k in np.flatnonzero(d > factor * period):
                problems.append(Problem("gap", name, ch, f"{entry['topic']} message {k + 1}",
                                        f"{d[k] / 1000:.0f} ms since the previous message ({d[k] / period:.1f} median "
                                        f"periods)", [int(ts[k]), int(ts[k + 1])], int(round(d[k] / period)) - 1))
        for m in cidx.messages:
            entry["files_checked"] += 1
            p = _check_file(source, m)
            if p is not None:
                p.scene, p.where = name, f"{entry['topic']} message {m.token.rsplit('#', 1)[-1]}"
                entry["corrupt_files"] += 1
                problems.append(p)
        channels[ch] = entry
    tol = source.rig_file.stamp_tolerance_ms
    stamps = {}
    for topic, (ms, k) in sorted(source.stamp_disagreements().items()):
        stamps[topic] = {"max_abs_ms": round(ms, 3), "message": k}
        if ms > tol:
            problems.append(Problem("stamp_disagreement", name, "", f"{topic} message {k}",
                                    f"header stamp and receive time differ by {ms:.1f} ms (tolerance "
                                    f"{tol:g} ms, stamp_tolerance_ms in the rig file)"))
    pose = {"source": source._poses.name}
    g = source.gnss_pose
    if g is not None:
        pose.update(rejected=g.rejected, origin=list(g.origin),
                    outages=[asdict(o) for o in g.outages])
        for o in g.outages:
            problems.append(Problem("gnss_outage", name, "", source.rig_file.pose.gnss,
                                    f"no usable fix for {(o.end_us - o.start_us) / 1e6:.1f} s: dead reckoning, "
                                    f"position sigma reached {o.max_sigma_m:.2f} m", [o.start_us, o.end_us]))
    rig = source.rig(name)
    calib = {ch: {"translation": c.T_ego_from_sensor[:3, 3].round(4).tolist(),
                  "intrinsics": None if c.intrinsics is None else c.intrinsics.round(3).tolist()}
             for ch, c in rig.sensors.items()}
    keyframes = {}
    if LIDAR_CHANNEL in idx.channels:
        sync = Synchronizer(idx, rig, cfg.sync, [c for c in cfg.data.cameras if c in rig],
                            [r for r in cfg.data.radars if r in rig])
        for m in idx.channels[LIDAR_CHANNEL].messages:
            if not m.is_key_frame:
                continue
            sel = sync.select(m)
            keyframes[m.sample_token or m.token] = {ch: {"offset_us": c.offset_us, "reason": c.reason,
                                                         "messages": [x.token for x in c.messages]}
                                                    for ch, c in sel.choices.items()}
    scene = {"channels": channels, "num_keyframes": len(keyframes), "stamps": stamps, "pose": pose,
             "calibration": calib, "unmapped_topics": dict(source.unmapped_topics)}
    return {"recording": source.recording, "rig": source.rig_file.path, "scenes": {name: scene},
            "keyframes": keyframes, "problems": [asdict(p) | {"line": p.line()} for p in problems]}
