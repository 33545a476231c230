"""The quality bar (``python tools/benchmark.py quality``): the same data, step budget and seed for
every model, trained and evaluated with the project's own tools, and the product's claims checked.

1. Fusion beats single modality: fusion_tiny, lidar_tiny and camera_tiny trained with the same budget
   on the synthetic drives and evaluated on their val split (official devkit metrics): fusion must
   beat both on NDS and on mAP.
2. Robustness: fusion with all cameras dropped keeps >= 90% of the LiDAR-only model's NDS; fusion
   with the LiDAR dropped keeps >= 80% of the camera-only model's mAP.
3. Real data: fusion_tiny trained on the real keyframes of ``../shared/data/nuscenes-real`` and
   evaluated on them reaches car AP >= 0.5 (a check of every convention on real nuScenes). This is a
   fit of the very frames it is scored on, so it trains without augmentation or modality dropout.

Each run is a ``tools/train.py`` / ``tools/eval.py`` subprocess (what a user would run); a finished
training or evaluation is reused when the script runs again with the same budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

from ..fileio import write_text_atomic

# the real-data fit: augmentation and modality dropout off (see run_quality)
REAL_FIT_OVERRIDES = ["train.augment.enabled=false", "model.fusion.dropout_lidar=0", "model.fusion.dropout_camera=0",
                      "model.fusion.dropout_radar=0"]

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(PROJECT, "tools")
CONFIGS = os.path.join(PROJECT, "configs")


def _run(cmd: List[str], log_path: str) -> None:
    """Run a tool, its output into log_path; a failure raises with the log's tail."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT)
    if rc != 0:
        tail = open(log_path).read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[1:3])} failed (exit {rc}), log {log_path}:\n{tail}")
    print(f"  done in {time.time() - t0:.0f} s: {' '.join(os.path.relpath(c, PROJECT) if c.startswith(PROJECT) else c for c in cmd[1:3])}",
          flush=True)


def train_once(config: str, dataroot: str, work_dir: str, steps: int, overrides: List[str]) -> str:
    """Train to ``steps`` (reusing a finished run); returns the final checkpoint path."""
    final = os.path.join(work_dir, "checkpoints", f"ckpt_{steps:08d}.pt")
    if not os.path.isfile(final):
        _run([sys.executable, os.path.join(TOOLS, "train.py"), config, "--dataroot", dataroot,
              "--version", "v1.0-trainval", "--work-dir", work_dir, "--max-steps", str(steps), "--resume",
              "--no-progress", "--set", *overrides], os.path.join(work_dir, "train_stdout.log"))
    if not os.path.isfile(final):
        raise RuntimeError(f"training finished without {final}")
    return final


def evaluate_once(config: str, checkpoint: str, dataroot: str, out: str, drop: Optional[str],
                  overrides: List[str]) -> Dict:
    """Evaluate a checkpoint on the val split (reusing a finished evaluation); returns the devkit's
    metrics_summary.json."""
    summary = os.path.join(out, "metrics_summary.json")
    stamp = os.path.join(out, "checkpoint.txt")
    if not (os.path.isfile(summary) and os.path.isfile(stamp) and open(stamp).read() == checkpoint):
        cmd = [sys.executable, os.path.join(TOOLS, "eval.py"), config, "--checkpoint", checkpoint, "--dataroot",
               dataroot, "--version", "v1.0-trainval", "--split", "val", "--out", out, "--no-plots"]
        if drop:
            cmd += ["--drop", drop]
        if overrides:
            cmd += ["--set", *overrides]
        _run(cmd, os.path.join(out, "eval_stdout.log"))
        with open(stamp, "w") as f:
            f.write(checkpoint)
    with open(summary) as f:
        return json.load(f)


def _metrics(summary: Dict) -> Dict[str, float]:
    return {"mAP": round(float(summary["mean_ap"]), 4), "NDS": round(float(summary["nd_score"]), 4),
            "car_AP": round(float(summary["mean_dist_aps"]["car"]), 4)}


def run_quality(synthetic_root: str, real_root: str, work: str, steps: int, real_steps: int,
                json_out: Optional[str] = None, md_out: Optional[str] = None, skip_real: bool = False) -> Dict:
    t_start = time.time()
    models = {"fusion": "fusion_tiny.yaml", "lidar_only": "lidar_tiny.yaml", "camera_only": "camera_tiny.yaml"}
    seed = ["train.seed=0"]
    results: Dict = {"synthetic_root": os.path.abspath(synthetic_root), "steps": steps, "models": {}}
    ckpts = {}
    for name, cfg_name in models.items():
        print(f"[quality] train {name} ({cfg_name}, {steps} steps)", flush=True)
        ckpts[name] = train_once(os.path.join(CONFIGS, cfg_name), synthetic_root, os.path.join(work, name), steps,
                                 seed)
    evals = {"fusion": ("fusion", None), "lidar_only": ("lidar_only", None), "camera_only": ("camera_only", None),
             "fusion_no_camera": ("fusion", "camera"), "fusion_no_lidar": ("fusion", "lidar")}
    for key, (model, drop) in evals.items():
        print(f"[quality] evaluate {key}", flush=True)
        summary = evaluate_once(os.path.join(CONFIGS, models[model]), ckpts[model], synthetic_root,
                                os.path.join(work, "eval", key), drop, [])
        results["models"][key] = _metrics(summary)
    m = results["models"]
    checks = {
        "fusion_beats_lidar_only_NDS": m["fusion"]["NDS"] > m["lidar_only"]["NDS"],
        "fusion_beats_lidar_only_mAP": m["fusion"]["mAP"] > m["lidar_only"]["mAP"],
        "fusion_beats_camera_only_NDS": m["fusion"]["NDS"] > m["camera_only"]["NDS"],
        "fusion_beats_camera_only_mAP": m["fusion"]["mAP"] > m["camera_only"]["mAP"],
        "no_camera_keeps_90pct_lidar_only_NDS": m["fusion_no_camera"]["NDS"] >= 0.9 * m["lidar_only"]["NDS"],
        "no_lidar_keeps_80pct_camera_only_mAP": m["fusion_no_lidar"]["mAP"] >= 0.8 * m["camera_only"]["mAP"],
    }
    if not skip_real:
        print(f"[quality] real data: train fusion on the real keyframes ({real_steps} steps)", flush=True)
        # A fit of the 81 keyframes it is evaluated on, so no augmentation and no modality dropout:
        # the check is whether every convention (frames, boxes, export, metrics) holds on real data,
        # which a model can only show by reproducing the boxes it was shown.
        real_over = ["train.seed=0", "train.split=val", "train.val_split=val", "train.checkpoint_every=400",
                     *REAL_FIT_OVERRIDES]
        ck = train_once(os.path.join(CONFIGS, "fusion_tiny.yaml"), real_root, os.path.join(work, "real_fusion"),
                        real_steps, real_over)
        summary = evaluate_once(os.path.join(CONFIGS, "fusion_tiny.yaml"), ck, real_root,
                                os.path.join(work, "eval", "real_fusion"), None, [])
        m["real_fusion"] = _metrics(summary)
        checks["real_car_AP_at_least_0.5"] = m["real_fusion"]["car_AP"] >= 0.5
    results["checks"] = checks
    results["minutes"] = round((time.time() - t_start) / 60, 1)

    lines = ["| model | sensors at inference | mAP | NDS | car AP |", "| --- | --- | --- | --- | --- |"]
    sensors = {"fusion": "all", "lidar_only": "LiDAR", "camera_only": "cameras", "fusion_no_camera": "LiDAR + radar",
               "fusion_no_lidar": "cameras + radar", "real_fusion": "all (real keyframes)"}
    for key, v in m.items():
        lines.append(f"| {key} | {sensors[key]} | {v['mAP']:.4f} | {v['NDS']:.4f} | {v['car_AP']:.4f} |")
    lines += ["", "| check | result |", "| --- | --- |"]
    lines += [f"| {k} | {'pass' if ok else 'FAIL'} |" for k, ok in checks.items()]
    table = "\n".join(lines)
    print(table)
    for path, text in ((json_out, json.dumps(results, indent=1)), (md_out, table + "\n")):
        if path:
            write_text_atomic(text, path)
    return results
