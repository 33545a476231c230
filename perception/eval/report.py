"""``report.md``: the devkit's numbers in one page, with where they came from.

Everything in the report is read from the devkit's ``metrics_summary`` (never recomputed), so the
per-class table agrees with ``metrics_summary.json`` by construction; values are printed with four
decimals, NaN (a TP error the devkit does not score for a class, e.g. cone orientation) as ``nan``.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..structures import CLASSES

TP_NAMES = (("trans_err", "mATE", "ATE"), ("scale_err", "mASE", "ASE"), ("orient_err", "mAOE", "AOE"),
            ("vel_err", "mAVE", "AVE"), ("attr_err", "mAAE", "AAE"))
REPORT_FILE = "report.md"


def fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    v = float(v)
    return "nan" if math.isnan(v) else f"{v:.4f}"


def ap0_tp_credit(summary: Mapping) -> Tuple[List[str], float]:
    """(classes, NDS) that classes with AP 0 add to NDS through their TP errors.

    The devkit scores a class's TP errors once its boxes reach 10% recall, at any precision, and counts
    them as 1 below that. A class the model never finds (AP 0) can still lower its TP errors with junk
    boxes near its objects, in one run and not the next; on small budgets that moves NDS by several
    hundredths. The NDS a class adds is, per TP metric, (1 - its error) over the number of classes the
    metric is defined for (NaN: not scored, e.g. cone orientation), over NDS's 10."""
    errs = summary["label_tp_errors"]
    # per TP metric, how many classes it is defined for (the devkit's mean over classes skips NaN)
    defined = {m: sum(1 for e in errs.values() if not math.isnan(e[m])) for m in summary["tp_errors"]}
    classes, worth = [], 0.0
    for cls, ap in summary["mean_dist_aps"].items():
        scored = {m: v for m, v in errs[cls].items() if m in defined and not math.isnan(v)}
        if ap > 0 or not any(v < 1 for v in scored.values()):
            continue
        classes.append(cls)
        worth += sum((1.0 - min(1.0, v)) / defined[m] for m, v in scored.items())
    return classes, worth / 10.0


def summary_lines(summary: Mapping) -> List[str]:
    lines = ["| metric | value |", "| --- | --- |",
             f"| mAP | {fmt(summary['mean_ap'])} |", f"| NDS | {fmt(summary['nd_score'])} |"]
    for key, mean_name, _ in TP_NAMES:
        lines.append(f"| {mean_name} | {fmt(summary['tp_errors'][key])} |")
    classes, credit = ap0_tp_credit(summary)
    lines.append(f"| NDS from AP-0 classes' TP errors | {fmt(credit)} ({', '.join(classes) or 'none'}) |")
    lines.append(f"| NDS, AP-0 classes' TP errors at 1 | {fmt(summary['nd_score'] - credit)} |")
    return lines


def per_class_lines(summary: Mapping) -> List[str]:
    """| class | AP | ATE | ASE | AOE | AVE | AAE | rows, one per class in the devkit's order."""
    lines = ["| class | AP | " + " | ".join(short for _, _, short in TP_NAMES) + " |",
             "| --- " * (2 + len(TP_NAMES)) + "|"]
    aps, tps = summary["mean_dist_aps"], summary["label_tp_errors"]
    names = [c for c in CLASSES if c in aps] + [c for c in aps if c not in CLASSES]
    for name in names:
        cells = [fmt(aps[name])] + [fmt(tps[name][key]) for key, _, _ in TP_NAMES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def depth_lines(depth: Mapping) -> List[str]:
    """Markdown table of a ``DepthStats.summary()``: one row per camera and one for all."""
    lines = ["| camera | AbsRel | RMSE (m) | delta < 1.25 | cells |", "| --- | --- | --- | --- | --- |"]
    rows = list(depth.get("per_camera", {}).items()) + [("all", depth["all"])]
    for name, m in rows:
        if m is None:
            lines.append(f"| {name} | - | - | - | 0 |")
        else:
            lines.append(f"| {name} | {m['abs_rel']:.4f} | {m['rmse']:.3f} | {m['delta1']:.4f} | {m['cells']} |")
    return lines


def robustness_lines(rows: Sequence[Mapping]) -> List[str]:
    lines = ["| failure | dropped | mAP | NDS | mAP / all sensors | NDS / all sensors |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {', '.join(r['drop']) or '-'} | {fmt(r['mAP'])} | {fmt(r['NDS'])} | "
                     f"{fmt(r['mAP_rel'])} | {fmt(r['NDS_rel'])} |")
    return lines


def write_report(out_dir: str, summary: Mapping, provenance: Mapping[str, object],
                 robustness: Optional[Sequence[Mapping]] = None, title: str = "Detection evaluation",
                 problems=None, depth: Optional[Mapping] = None, tracking=None) -> str:
    """Write ``out_dir/report.md``; returns its path.

    provenance: ordered facts shown at the top (config, checkpoint, data root, version, split, mode,
        dropped sensors, results file, submission meta)
    robustness: rows of ``evaluate.robustness_rows`` (None: no robustness section)
    problems: FileProblems of the inference (None: not recorded, e.g. a results file); a "Data
        problems" section says what was unreadable (that sensor was absent in that frame)
    depth: ``DepthStats.summary()`` of the camera branch against the LiDAR (None: no "Camera depth" section)
    tracking: ``perception.eval.tracking.TrackingRun`` (None: no "Tracking" section)
    """
    from .export import write_text_atomic

    lines = [f"# {title}", ""]
    for key, value in provenance.items():
        lines.append(f"- {key}: {value if value not in (None, '', []) else '-'}")
    lines += ["", "## Summary (nuScenes detection_cvpr_2019)", ""] + summary_lines(summary)
    lines += ["", "## Per class", ""] + per_class_lines(summary)
    if problems is not None:
        lines += ["", "## Data problems", ""]
        found = problems.summary_lines()
        lines += (["Unreadable sensor files; each made its sensor absent in that frame (the metrics above "
                   "include those frames):", ""] + [f"- {line}" for line in found]) if found else \
            ["Every planned sensor file was read."]
    if depth is not None:
        lines += ["", "## Camera depth", "",
                  "Expected depth of the camera branch's depth distribution against the nearest LiDAR depth "
                  "of the same feature cell (reference sweep, cells inside the depth bins); the LiDAR is only "
                  "the yardstick here, never a camera input.", ""] + depth_lines(depth)
    if robustness is not None:
        lines += ["", "## Robustness to sensor failure", "",
                  "Each row removes the named sensors at inference (the frame builder marks them absent); "
                  "ratios are relative to the all-sensors run.", ""] + robustness_lines(robustness)
    if tracking is not None:
        from .tracking import tracking_report_lines

        lines += ["", "## Tracking (nuScenes tracking_nips_2019)", "",
                  "The detections above tracked scene by scene in time order (perception.tracking), evaluated with "
                  "the devkit's TrackingEval; per class, MOTA, IDS, FRAG and recall are at the devkit's best-MOTA "
                  "threshold.", ""] + tracking_report_lines(tracking.summary, tracking)
    plot_dir = os.path.join(out_dir, "plots")
    if os.path.isdir(plot_dir):
        plots = sorted(os.listdir(plot_dir))
        if plots:
            lines += ["", "## Plots (devkit)", ""] + [f"- [plots/{p}](plots/{p})" for p in plots]
    lines += ["", "Files: results_nusc.json (submission), metrics_summary.json and metrics_details.json "
              "(written by the devkit).", ""]
    return write_text_atomic("\n".join(lines), os.path.join(out_dir, REPORT_FILE))


def parse_table(text: str, heading: str) -> Dict[str, List[str]]:
    """The rows of the markdown table under ``## heading``: first cell -> other cells (for tests and tools)."""
    out: Dict[str, List[str]] = {}
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip().startswith("## ") and l.strip()[3:].startswith(heading))
    except StopIteration:
        raise KeyError(f"no section {heading!r}") from None
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    for cells in rows[2:]:
        out[cells[0]] = cells[1:]
    return out
