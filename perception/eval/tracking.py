"""Offline tracking evaluation with the official nuScenes devkit.

Flow: a detection submission (``results_nusc.json``: global frame, nuScenes box format, any
producer's) -> per scene, its samples in time order -> ``Tracker.step_global`` on each sample's boxes
at the sample's timestamp -> the tracking submission (``results_tracking.json``: per box
``tracking_id``, ``tracking_name``, ``tracking_score``; the 7 tracking classes only) -> the devkit's
``TrackingEval`` with ``tracking_nips_2019`` -> ``metrics_summary.json`` / ``metrics_details.json``
(and its plots) as the devkit writes them, in their own folder beside the detection metrics.

Starting from the detection file (not from the model) makes ``--tracking`` work for every way
``tools/eval.py`` gets detections: a model, the oracle, or ``--results FILE``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..data.convert import box_row_from_nuscenes, box_row_to_nuscenes
from ..structures import CLASS_TO_ID, CLASSES, NO_ATTRIBUTE, Boxes3D
from ..tracking import TRACKING_CLASSES, Tracker, Tracks
from .evaluate import EvalError, _headless_matplotlib, check_results_file, split_sample_tokens
from .export import write_json_atomic

TRACKING_EVAL_CONFIG = "tracking_nips_2019"
TRACKING_DIR = "tracking"
TRACKING_RESULTS_FILE = "results_tracking.json"
# (summary key, report name); the devkit's names, lower case in its JSON
SUMMARY_METRICS = (("amota", "AMOTA"), ("amotp", "AMOTP"), ("recall", "RECALL"), ("mota", "MOTA"),
                   ("motp", "MOTP"), ("ids", "IDS"), ("frag", "FRAG"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN"))
CLASS_METRICS = (("amota", "AMOTA"), ("amotp", "AMOTP"), ("mota", "MOTA"), ("ids", "IDS"), ("frag", "FRAG"),
                 ("recall", "recall"), ("gt", "GT"))


def scenes_in_time_order(nusc, sample_tokens: Sequence[str]) -> List[List[str]]:
    """The samples of ``sample_tokens`` grouped by scene, each scene's in time order (the scene's
    prev/next chain; the order the tracker must see them)."""
    wanted = set(sample_tokens)
    scenes: Dict[str, List[str]] = {}
    for token in sample_tokens:
        scenes.setdefault(nusc.get("sample", token)["scene_token"], [])
    out = []
    for scene_token in scenes:
        scene = nusc.get("scene", scene_token)
        chain, token = [], scene["first_sample_token"]
        while token:
            if token in wanted:
                chain.append(token)
            token = nusc.get("sample", token)["next"]
        out.append(sorted(chain, key=lambda t: nusc.get("sample", t)["timestamp"]))
    return out


def boxes_from_results(boxes: Sequence[Mapping]) -> Boxes3D:
    """Boxes of one sample of a detection submission -> Boxes3D in the global frame (the data edge's
    conversion, ``box_row_from_nuscenes``); attributes are not carried (tracking does not use them)."""
    n = len(boxes)
    rows = np.array([box_row_from_nuscenes(b["translation"], b["size"], b["rotation"], b["velocity"])
                     for b in boxes]).reshape(n, 9)
    labels = [CLASS_TO_ID[b["detection_name"]] for b in boxes]
    scores = [b["detection_score"] for b in boxes]
    return Boxes3D(rows, labels, np.full(n, NO_ATTRIBUTE), scores, -np.ones(n), -np.ones(n), [""] * n, [""] * n,
                   frame="global")


def tracks_to_results(sample_token: str, tracks: Tracks) -> List[dict]:
    """One sample's reported tracks -> the tracking submission's boxes (global frame)."""
    out = []
    for row, label, score, tid in zip(tracks.boxes, tracks.labels, tracks.scores, tracks.ids):
        translation, size, rotation, velocity = box_row_to_nuscenes(row)
        out.append({"sample_token": sample_token, "translation": translation, "size": size, "rotation": rotation,
                    "velocity": [v if np.isfinite(v) else 0.0 for v in velocity],
                    "tracking_id": str(int(tid)), "tracking_name": CLASSES[int(label)],
                    "tracking_score": float(score)})
    return out


@dataclass
class TrackingRun:
    """out_dir: where the devkit wrote; results_path: the tracking submission; summary: the devkit's
    metrics summary; frames / tracker_ms: samples tracked and the tracker's mean time per sample (ms)."""

    out_dir: str
    results_path: str
    summary: dict
    frames: int
    tracker_ms: float
    num_ids: int


def track_detection_results(nusc, detection_results: Mapping[str, Sequence[Mapping]], sample_tokens: Sequence[str],
                            tracker: Tracker) -> tuple:
    """Run ``tracker`` over every scene's samples in time order (``reset`` per scene).

    Returns (results: sample token -> tracking boxes, frames, mean tracker ms per frame, IDs issued).
    """
    results: Dict[str, List[dict]] = {}
    spent, frames, ids = 0.0, 0, 0
    for scene in scenes_in_time_order(nusc, sample_tokens):
        tracker.reset()
        for token in scene:
            boxes = boxes_from_results(detection_results.get(token, []))
            t0 = time.perf_counter()
            tracks = tracker.step_global(boxes, nusc.get("sample", token)["timestamp"])
            spent += time.perf_counter() - t0
            frames += 1
            results[token] = tracks_to_results(token, tracks)
        ids += tracker._next_id - 1
    return results, frames, 1000.0 * spent / max(frames, 1), ids


def evaluate_tracking_results(nusc, results_path: str, split: str, out_dir: str, render_curves: bool = False,
                              verbose: bool = False) -> dict:
    """The devkit's ``TrackingEval`` (``tracking_nips_2019``) on a tracking submission; writes
    ``metrics_summary.json`` and ``metrics_details.json`` (and plots) into ``out_dir``; returns the summary."""
    from nuscenes.eval.common.config import config_factory
    import nuscenes.eval.tracking.evaluate as devkit_tracking

    if render_curves:
        _headless_matplotlib()
    os.makedirs(out_dir, exist_ok=True)
    devkit_filter = devkit_tracking.filter_eval_boxes

    def filter_eval_boxes(nusc_, eval_boxes, max_dist, verbose=False):
        # as in the detection evaluation: the devkit's filter raises on a submission without any box
        if not any(len(b) for b in eval_boxes.boxes.values()):
            return eval_boxes
        return devkit_filter(nusc_, eval_boxes, max_dist, verbose=verbose)

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        devkit_tracking.filter_eval_boxes = filter_eval_boxes
        with sink:
            ev = devkit_tracking.TrackingEval(config_factory(TRACKING_EVAL_CONFIG), results_path, split, out_dir,
                                              nusc.version, nusc.dataroot, verbose=verbose)
            summary = ev.main(render_curves=render_curves)
    except AssertionError as e:
        raise EvalError(f"{results_path}: the devkit rejected the tracking results: {e}") from None
    finally:
        devkit_tracking.filter_eval_boxes = devkit_filter
    return summary


# The oracle's tracker keeps a missed track for a whole drive: ground truth has no false positives, and
# its misses are the boxes without any LiDAR or radar point that the devkit drops (and interpolates
# back into its own ground-truth tracks), some of them several seconds long. With CenterPoint's
# max_age of 3 frames the oracle measures how often those gaps outlast the tracker, not the chain.
ORACLE_MAX_AGE = 100_000


def oracle_tracker(tracker: Tracker) -> Tracker:
    """The same tracker with every class's max_age raised to ``ORACLE_MAX_AGE`` frames."""
    out = Tracker({c: tracker.gate[CLASS_TO_ID[c]] for c in TRACKING_CLASSES},
                  {c: ORACLE_MAX_AGE for c in TRACKING_CLASSES},
                  {c: tracker.birth[CLASS_TO_ID[c]] for c in TRACKING_CLASSES}, tracker.matching)
    return out


def evaluate_tracking(nusc, detection_results_path: str, split: str, out_dir: str, tracker: Tracker,
                      render_curves: bool = False) -> TrackingRun:
    """Track a detection submission and evaluate the tracks (module doc); everything goes to ``out_dir``
    (``results_tracking.json`` and the devkit's files)."""
    tokens = split_sample_tokens(nusc, split)
    doc = check_results_file(detection_results_path, tokens, split)
    results, frames, ms, ids = track_detection_results(nusc, doc["results"], tokens, tracker)
    path = write_json_atomic({"meta": doc["meta"], "results": results},
                             os.path.join(out_dir, TRACKING_RESULTS_FILE))
    summary = evaluate_tracking_results(nusc, path, split, out_dir, render_curves=render_curves)
    return TrackingRun(out_dir, path, summary, frames, ms, ids)


COUNT_METRICS = ("ids", "frag", "tp", "fp", "fn", "gt")


def _fmt(v, key: str) -> str:
    if v is None:
        return "-"
    v = float(v)
    if np.isnan(v):
        return "nan"
    return f"{v:.0f}" if key in COUNT_METRICS else f"{v:.4f}"


def tracking_report_lines(summary: Mapping, run: Optional[TrackingRun] = None) -> List[str]:
    """Markdown: the summary table and one row per tracking class, read from the devkit's summary."""
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {_fmt(summary.get(key), key)} |" for key, name in SUMMARY_METRICS]
    lm = summary["label_metrics"]
    lines += ["", "| class | " + " | ".join(n for _, n in CLASS_METRICS) + " |",
              "| --- " * (1 + len(CLASS_METRICS)) + "|"]
    for c in TRACKING_CLASSES:
        cells = [_fmt(lm.get(key, {}).get(c), key) for key, _ in CLASS_METRICS]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if run is not None:
        lines += ["", f"Tracker: {run.frames} samples, {run.num_ids} track IDs, {run.tracker_ms:.3f} ms per "
                      f"sample; tracks in {os.path.basename(run.results_path)}, the devkit's files in "
                      f"{os.path.basename(run.out_dir)}/."]
    return lines
