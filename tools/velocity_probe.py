#!/usr/bin/env python
"""Where a model's velocity error comes from (a diagnosis, not a test).

    python tools/velocity_probe.py inputs --dataroot DIR [--version V] [--config C] [--frames N]
    python tools/velocity_probe.py predictions --dataroot DIR --results OUT/results_nusc.json
    python tools/velocity_probe.py headings --dataroot DIR [--results OUT/results_nusc.json]

inputs: what the model receives about motion on N val frames (the config's frames): the velocity
targets against the devkit's box_velocity; per ground-truth object with >= 15 LiDAR points in each
sweep, the per-sweep centroid motion over the sweeps' time lags (static objects show any ego-motion
compensation error, moving ones whether the sweeps carry their motion); radar's compensated radial
speed against the truth's.
predictions: a results file's car detections (score >= 0.3) within 1 m of a ground-truth car: error
against the truth, against the truth minus the ego velocity (a relative-velocity fault), against
standing still; direction (cosine) and scale of the predicted velocities.
headings: the ground truth's moving objects (> 1 m/s): how many move against their annotated heading
(none should: this found the synthetic oncoming lanes driving backwards); with --results, the car
detections (score >= 0.3) within 1 m of a ground-truth car: heading error, share turned by ~180 degrees,
split by the car facing with or against the ego and by its attribute, and how many face along the ego.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def inputs(root, version, config, frames):
    from perception.config import load_config
    from perception.data.nuscenes_source import NuScenesSource
    from perception.eval.evaluate import split_sample_tokens
    from perception.sync.synchronizer import FrameBuilder

    cfg = load_config(config)
    src = NuScenesSource(root, version)
    tokens = split_sample_tokens(src.nusc, "val")
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(tokens), min(frames, len(tokens)), replace=False))
    lidar_rows, radar_rows, tgt_rows, lags = [], [], [], set()
    for i in pick:
        tok = tokens[i]
        scene = src.nusc.get("sample", tok)["scene_token"]
        fb = FrameBuilder(src, scene, cfg)
        f = fb.build(fb.reference_for_sample(tok), with_gt=True, load_images=False)
        pts, gt = f.lidar_points, f.gt
        lags.update(np.round(np.unique(pts[:, 5]), 3).tolist())
        R = f.T_global_from_ego[:3, :3]
        for k in range(len(gt)):
            b = gt.boxes[k]
            if not np.isfinite(b[7:9]).all():
                continue
            # GT target (ego frame) vs devkit global velocity
            vg = src.nusc.box_velocity(gt.tokens[k])[:2]
            tgt_rows.append((np.hypot(*(R[:2, :2] @ b[7:9] - vg))))
            c, s = np.cos(b[6]), np.sin(b[6])
            d = pts[:, :2] - b[:2]
            u = d @ np.array([c, s]); w = d @ np.array([-s, c])
            inside = (np.abs(u) < b[3] / 2 + 0.3) & (np.abs(w) < b[4] / 2 + 0.3) & (np.abs(pts[:, 2] - b[2]) < b[5] / 2)
            lag_vals = np.unique(pts[inside, 5])
            if len(lag_vals) < 2:
                continue
            cents = [(l, pts[inside & (pts[:, 5] == l), :2].mean(0), (inside & (pts[:, 5] == l)).sum()) for l in lag_vals]
            cents = [x for x in cents if x[2] >= 15]
            if len(cents) < 2:
                continue
            (l0, c0, _), (l1, c1, _) = cents[0], cents[-1]
            v_app = (c0 - c1) / (l1 - l0)  # newest minus oldest over the time between
            lidar_rows.append((np.hypot(*b[7:9]), v_app[0], v_app[1], b[7], b[8], f.ego_velocity[0], f.ego_velocity[1]))
        rp = f.radar_points
        for k in range(len(gt)):
            b = gt.boxes[k]
            if not np.isfinite(b[7:9]).all() or not len(rp):
                continue
            c, s = np.cos(b[6]), np.sin(b[6])
            d = rp[:, :2] - b[:2]
            inside = (np.abs(d @ [c, s]) < b[3] / 2 + 0.5) & (np.abs(d @ [-s, c]) < b[4] / 2 + 0.5)
            for p in rp[inside]:
                ray = p[:2] / max(np.hypot(*p[:2]), 1e-6)
                radar_rows.append((float(p[4:6] @ ray), float(b[7:9] @ ray), np.hypot(*b[7:9])))
    L = np.array(lidar_rows); Rr = np.array(radar_rows); T = np.array(tgt_rows)
    print(f"time_lag values seen (s): {sorted(lags)}")
    print(f"GT velocity target (ego frame, rotated to global) vs devkit box_velocity: max diff {T.max():.2e} m/s over {len(T)} boxes")
    mov, sta = L[:, 0] > 1.0, L[:, 0] < 0.1
    err = np.hypot(L[:, 1] - L[:, 3], L[:, 2] - L[:, 4])
    print(f"LiDAR apparent velocity from per-sweep centroids (>=15 points per sweep):")
    print(f"  static objects ({sta.sum()}): median |apparent v| {np.median(np.hypot(L[sta, 1], L[sta, 2])):.2f} m/s "
          f"(ego-motion compensation error would show as the ego speed)")
    print(f"    mean apparent vector of static objects (ego frame) {L[sta, 1].mean():+.2f}, {L[sta, 2].mean():+.2f} m/s; "
          f"mean ego velocity then {L[sta, 5].mean():+.2f}, {L[sta, 6].mean():+.2f} m/s")
    print(f"  moving objects ({mov.sum()}): median |GT v| {np.median(L[mov, 0]):.2f} m/s, median |apparent - GT| "
          f"{np.median(err[mov]):.2f} m/s, median cos(apparent, GT) "
          f"{np.median((L[mov, 1] * L[mov, 3] + L[mov, 2] * L[mov, 4]) / (np.hypot(L[mov, 1], L[mov, 2]) * L[mov, 0] + 1e-9)):.3f}")
    m = Rr[:, 2] > 1.0
    print(f"radar compensated radial velocity vs GT radial, moving objects ({m.sum()} returns): median |diff| "
          f"{np.median(np.abs(Rr[m, 0] - Rr[m, 1])):.2f} m/s; corr {np.corrcoef(Rr[m, 0], Rr[m, 1])[0, 1]:.3f}")
    print(f"  static objects ({(Rr[:, 2] < 0.1).sum()} returns): median |radial v| {np.median(np.abs(Rr[Rr[:, 2] < 0.1, 0])):.2f} m/s")


def predictions(root, version, results):
    import json

    from nuscenes import NuScenes

    nusc = NuScenes(version, root, verbose=False)
    res = json.load(open(results))["results"]
    rows = []
    for tok, boxes in res.items():
        s = nusc.get("sample", tok)
        ego = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
        nxt = s["next"] or s["prev"]
        ego2 = nusc.get("ego_pose", nusc.get("sample_data", nusc.get("sample", nxt)["data"]["LIDAR_TOP"])["ego_pose_token"])
        v_ego = (np.array(ego2["translation"][:2]) - ego["translation"][:2]) / ((ego2["timestamp"] - ego["timestamp"]) * 1e-6)
        gts = []
        for a in s["anns"]:
            ann = nusc.get("sample_annotation", a)
            if ann["category_name"].startswith("vehicle.car") and ann["num_lidar_pts"] > 0:
                v = nusc.box_velocity(a)[:2]
                if np.isfinite(v).all():
                    gts.append((np.array(ann["translation"][:2]), v))
        if not gts:
            continue
        G = np.array([g[0] for g in gts])
        for b in boxes:
            if b["detection_name"] != "car" or b["detection_score"] < 0.3:
                continue
            d = np.hypot(*(G - b["translation"][:2]).T)
            j = int(d.argmin())
            if d[j] < 1.0:
                rows.append((*gts[j][1], *b["velocity"], *v_ego))
    A = np.array(rows)
    gt, pr, ve = A[:, 0:2], A[:, 2:4], A[:, 4:6]
    sp = np.hypot(*gt.T)
    def err(x): return np.hypot(*(pr - x).T)
    print(f"{len(A)} car detections (score >= 0.3) within 1 m of a GT car")
    print(f"  mean |pred - GT| {err(gt).mean():.2f} m/s (moving GT > 1 m/s: {err(gt)[sp > 1].mean():.2f}, static: {err(gt)[sp < 0.2].mean():.2f})")
    print(f"  mean |pred - (GT - ego)| {err(gt - ve).mean():.2f} m/s  (relative-velocity fault hypothesis)")
    print(f"  mean |pred - 0| {err(0 * gt).mean():.2f} m/s  (predicting standstill)")
    k = sp > 1
    cos = (pr[k] * gt[k]).sum(1) / (np.hypot(*pr[k].T) * sp[k] + 1e-9)
    scale = (pr[k] * gt[k]).sum() / (gt[k] ** 2).sum()
    print(f"  moving GT: median cos(pred, GT) {np.median(cos):.3f}; least-squares scale pred ~ s * GT: s = {scale:.2f}; "
          f"median |pred| {np.median(np.hypot(*pr[k].T)):.2f} vs |GT| {np.median(sp[k]):.2f} m/s")


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def headings(root, version, results):
    import json

    from nuscenes import NuScenes
    from pyquaternion import Quaternion

    nusc = NuScenes(version, root, verbose=False)
    yaw_of = lambda q: Quaternion(q).yaw_pitch_roll[0]  # noqa: E731
    back = {}
    for ann in nusc.sample_annotation:
        if not ann["category_name"].startswith(("vehicle.", "human.")):
            continue
        v = nusc.box_velocity(ann["token"])[:2]
        if not np.isfinite(v).all() or np.hypot(*v) < 1.0:
            continue
        fam = ann["category_name"].split(".")[1]
        n, b = back.get(fam, (0, 0))
        back[fam] = (n + 1, b + int(np.cos(yaw_of(ann["rotation"]) - np.arctan2(v[1], v[0])) < 0))
    print("ground truth, moving objects (> 1 m/s) against their heading: " +
          ", ".join(f"{k} {b}/{n}" for k, (n, b) in sorted(back.items())))
    if not results:
        return
    res = json.load(open(results))["results"]
    stats, errs = {}, []
    for tok, boxes in res.items():
        s = nusc.get("sample", tok)
        ego_yaw = yaw_of(nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])["rotation"])
        gts = [nusc.get("sample_annotation", a) for a in s["anns"]]
        gts = [g for g in gts if g["category_name"].startswith("vehicle.car")]
        if not gts:
            continue
        G = np.array([g["translation"][:2] for g in gts])
        for b in boxes:
            if b["detection_name"] != "car" or b["detection_score"] < 0.3:
                continue
            d = np.hypot(*(G - b["translation"][:2]).T)
            j = int(d.argmin())
            if d[j] >= 1.0:
                continue
            g = gts[j]
            gy, py = yaw_of(g["rotation"]), yaw_of(b["rotation"])
            err = abs(_wrap(py - gy))
            errs.append(err)
            attr = nusc.get("attribute", g["attribute_tokens"][0])["name"] if g["attribute_tokens"] else "-"
            key = ("with ego" if abs(_wrap(gy - ego_yaw)) < np.pi / 2 else "against ego", attr)
            n, f, a = stats.get(key, (0, 0, 0))
            stats[key] = (n + 1, f + int(err > 2.8), a + int(abs(_wrap(py - ego_yaw)) < np.pi / 2))
    e = np.array(errs)
    print(f"{len(e)} car detections (score >= 0.3) within 1 m of a GT car: heading error mean {e.mean():.3f} rad, "
          f"median {np.median(e):.3f}, turned by ~pi (> 2.8 rad) {np.mean(e > 2.8):.1%}")
    for (facing, attr), (n, f, a) in sorted(stats.items()):
        print(f"  GT {facing:11s} {attr:16s} n {n:4d}  turned {f / n:6.1%}  predicted facing with the ego {a / n:6.1%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("inputs", "predictions", "headings"))
    ap.add_argument("--dataroot", required=True)
    ap.add_argument("--version", default="v1.0-trainval")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                     "fusion_tiny.yaml"))
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--results")
    a = ap.parse_args(argv)
    if a.what == "inputs":
        inputs(a.dataroot, a.version, a.config, a.frames)
    elif a.what == "headings":
        headings(a.dataroot, a.version, a.results)
    else:
        if not a.results:
            ap.error("predictions needs --results")
        predictions(a.dataroot, a.version, a.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
