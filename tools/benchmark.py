#!/usr/bin/env python
"""Benchmarks (not tests): numbers measured side by side in one run, printed and optionally saved.

    python tools/benchmark.py data [--dataroot DIR --version V] [--frames N] [--json OUT]
    python tools/benchmark.py ops [--json OUT]
    python tools/benchmark.py train --config C [--dataroot DIR --version V] [--json OUT]
    python tools/benchmark.py model --config C [--frames N] [--threads T] [--backend torch onnxruntime]
                                    [--precision fp32 bf16] [--json OUT]
    python tools/benchmark.py tracking [--objects N] [--frames N] [--json OUT]
    python tools/benchmark.py eval-data [--dataroot DIR] [--workers W] [--samples N] [--json OUT]
    python tools/benchmark.py index --dataroot ROOT [--config C] [--split S] [--variants list store mmap]
        [--load samples|plans] [--workers 2] [--max-samples N] [--rebuild] [--json OUT]

index: the training index at scale (perception.engine.index_benchmark): build time, then per variant
(old list of plans, PlanStore, memory-mapped PlanStore) the RSS/PSS/USS of the main process and of
each loader worker sampled across an epoch. ROOT: e.g. a tools/make_scale_root.py root.

data: frames per second of building synchronized frames (10 LiDAR sweeps, 6 sweeps per radar) on
one core, LiDAR+radar assembly alone and with the six images decoded. Without --dataroot it runs on
a copy of the real scenes whose absent sweep files are filled with the nearest keyframe file of the
same channel (links, so real file sizes and real tables; nothing is written into ../shared).
"""
import argparse
import json
import os
import sys
import tempfile
import time



def set_threads(n: int) -> None:
    """Thread count for torch, numba and BLAS; must run before they are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REAL_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                          "data", "nuscenes-real", "trainval-extract"))


def filled_copy_of_real_root(dst: str, version: str = "v1.0-trainval") -> str:
    """Link the real extract into dst and fill every absent sweep file with a link to the nearest
    keyframe file of its channel (same size and content type)."""
    import numpy as np

    os.symlink(os.path.join(REAL_ROOT, version), os.path.join(dst, version))
    os.symlink(os.path.join(REAL_ROOT, "maps"), os.path.join(dst, "maps"))
    os.symlink(os.path.join(REAL_ROOT, "samples"), os.path.join(dst, "samples"))
    with open(os.path.join(REAL_ROOT, version, "sample_data.json")) as f:
        records = json.load(f)
    keyframes = {}
    for r in records:
        if r["is_key_frame"]:
            keyframes.setdefault(r["filename"].split("/")[1], []).append((r["timestamp"], r["filename"]))
    for ch in keyframes:
        keyframes[ch].sort()
    for r in records:
        if r["is_key_frame"]:
            continue
        ch = r["filename"].split("/")[1]
        ts = np.array([t for t, _ in keyframes[ch]])
        src = keyframes[ch][int(np.argmin(np.abs(ts - r["timestamp"])))][1]
        out = os.path.join(dst, r["filename"])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if not os.path.exists(out):
            os.symlink(os.path.join(REAL_ROOT, src), out)
    return dst


def bench_data(args) -> dict:
    from perception.config import load_config
    from perception.data.nuscenes_source import NuScenesSource
    from perception.sync.synchronizer import FrameBuilder

    tmp = None
    root = args.dataroot
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_root_")
        root = filled_copy_of_real_root(tmp.name)
    cfg = load_config(None, ["sync.lidar_sweeps=10", "sync.radar_sweeps=6"])
    source = NuScenesSource(root, args.version)
    scene = source.scene_names()[0]
    fb = FrameBuilder(source, scene, cfg)
    refs = fb.references[10:10 + args.frames]
    results = {"dataroot": root if args.dataroot else "real scenes, sweeps filled with keyframe files",
               "scene": scene, "frames": len(refs), "lidar_sweeps": 10, "radar_sweeps": 6}
    fb.build(refs[0], load_images=False, with_gt=False)  # warm-up (imports, caches)
    keyframes = fb.keyframe_references[1:1 + args.frames]
    cases = (("lidar_radar", refs, dict(load_images=False, with_gt=False)),
             ("keyframes_with_gt", keyframes, dict(load_images=False, with_gt=True)),
             ("with_images", refs, dict(load_images=True, with_gt=False)))
    for name, frames, kw in cases:
        t0 = time.perf_counter()
        npts = 0
        for ref in frames:
            frame = fb.build(ref, **kw)
            npts += len(frame.lidar_points)
        dt = time.perf_counter() - t0
        results[name] = {"frames": len(frames), "frames_per_s": round(len(frames) / dt, 2),
                         "ms_per_frame": round(1e3 * dt / len(frames), 2),
                         "lidar_points_per_frame": int(npts / len(frames)),
                         "radar_points_per_frame": int(len(frame.radar_points))}
    results["depth_targets"] = bench_depth_targets(fb, keyframes)
    if fb.missing:
        results["missing_files"] = dict(fb.missing)
    print(f"frame building on one core, {results['dataroot']}, scene {scene}, {len(refs)} frames")
    print(f"{'case':18s} {'frames':>6s} {'frames/s':>9s} {'ms/frame':>9s} {'lidar pts':>10s} {'radar pts':>10s}")
    for name, _, _ in cases:
        r = results[name]
        print(f"{name:18s} {r['frames']:6d} {r['frames_per_s']:9.1f} {r['ms_per_frame']:9.1f} {r['lidar_points_per_frame']:10d} "
              f"{r['radar_points_per_frame']:10d}")
    d = results["depth_targets"]
    print(f"camera depth targets (6 cameras, reference sweep of ~{d['points']} points, one core): "
          + ", ".join(f"{k} {v['ms_per_frame']:.2f} ms/frame ({v['cells_per_camera']} of {v['cells']} cells "
                      f"supervised)" for k, v in d["cases"].items())
          + f"; per-camera Python reference at stride 16: {d['reference_ms_per_frame']:.0f} ms/frame")
    target = 20.0
    ok = results["lidar_radar"]["frames_per_s"] >= target
    print(f"target: >= {target:.0f} frames/s of LiDAR+radar assembly on one core: "
          f"{'met' if ok else 'NOT met'} ({results['lidar_radar']['frames_per_s']:.1f})")
    if tmp:
        tmp.cleanup()
    return results


def bench_depth_targets(fb, refs) -> dict:
    """Cost of the camera depth targets in the data path (``perception.ops.depth_targets``) on real
    keyframes, at the tiny (128 x 352) and nuScenes (256 x 704) input sizes and both strides, against
    the per-camera Python reference (one frame)."""
    import numpy as np

    from perception.data.batch import resize_crop_matrix
    from perception.ops.depth_targets import depth_target_maps, project_to_cells

    frames = [fb.build(ref, load_images=False, with_gt=False) for ref in refs[:10]]
    inputs = []
    for f in frames:
        pts = f.lidar_points[f.lidar_points[:, 5] == 0]
        K = np.stack([c.intrinsics for c in f.cameras])
        T = np.stack([c.T_ego_from_cam for c in f.cameras])
        inputs.append((pts, K, T, [c.width for c in f.cameras], [c.height for c in f.cameras]))
    out = {"frames": len(frames), "points": int(np.mean([len(i[0]) for i in inputs])), "cases": {}}
    for hw in ((128, 352), (256, 704)):
        for stride in (16, 8):
            t0 = time.perf_counter()
            cells = 0
            for pts, K, T, ws, hs in inputs:
                A = np.stack([resize_crop_matrix(w, h, hw) for w, h in zip(ws, hs)])
                maps = depth_target_maps(pts, K, T, A, np.ones(len(K), bool), hw, stride)
                cells += int((maps > 0).sum())
            dt = time.perf_counter() - t0
            out["cases"][f"{hw[0]}x{hw[1]}/s{stride}"] = {
                "ms_per_frame": round(1e3 * dt / len(inputs), 2), "cells": (hw[0] // stride) * (hw[1] // stride),
                "cells_per_camera": int(cells / len(inputs) / 6)}
    pts, K, T, ws, hs = inputs[0]
    t0 = time.perf_counter()
    for i in range(len(K)):
        project_to_cells(pts, K[i], T[i], resize_crop_matrix(ws[i], hs[i], (128, 352)), (128, 352), 16)
    out["reference_ms_per_frame"] = round(1e3 * (time.perf_counter() - t0), 1)
    return out


def bench_model(args) -> dict:
    """Parameters per component, latency per stage and end to end, peak memory, for one config on
    real keyframes (the shared real scenes; sweep files absent there, so the LiDAR input is the
    keyframe sweep: ~34k points)."""
    import resource

    import numpy as np
    import torch

    from perception.config import load_config
    from perception.data.batch import collate, frame_to_sample
    from perception.data.nuscenes_source import NuScenesSource
    from perception.models.build import build_model
    from perception.models.lidar.pointpillars import voxelize_batch

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    source = NuScenesSource(args.dataroot or REAL_ROOT, args.version)
    from perception.sync.synchronizer import FrameBuilder

    fb = FrameBuilder(source, source.scene_names()[-1], cfg)
    refs = fb.keyframe_references[: args.frames]
    batches = [collate([frame_to_sample(fb.build(r), cfg)]) for r in refs]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.checkpoint:  # trained weights: decode then sees a trained model's peaks
        from perception.eval.evaluate import load_checkpoint_into

        load_checkpoint_into(model, args.checkpoint)
    params = {name: sum(p.numel() for p in mod.parameters()) for name, mod in
              (("lidar", model.lidar), ("camera", model.camera), ("radar", model.radar),
               ("fusion", model.fusion), ("decoder", model.decoder), ("head", model.head)) if mod is not None}
    params["total"] = sum(p.numel() for p in model.parameters())
    impls = ("reference", "fast")
    stages = {k: [] for k in ("voxelize", "lidar", "camera", "radar", "fusion_reference", "fusion_fast", "decoder",
                              "head", "decode", "end_to_end_reference", "end_to_end_fast", "onnxruntime_inputs",
                              "onnxruntime_session", "onnxruntime_end_to_end")}
    session = None
    if "onnxruntime" in args.backend:
        from perception.deploy.export import export_onnx, load_session
        from perception.deploy.graph import decode_outputs, prepare_inputs

        tmp = tempfile.TemporaryDirectory(prefix="bench_onnx_")
        t0 = time.perf_counter()
        export_onnx(model, batches[0], os.path.join(tmp.name, "model.onnx"))
        export_s = time.perf_counter() - t0
        session = load_session(os.path.join(tmp.name, "model.onnx"), args.threads)
        names = [i.name for i in session.get_inputs()]

        def ort_predict(b):
            inputs = timed("onnxruntime_inputs", lambda: prepare_inputs(model, b))
            out = timed("onnxruntime_session", lambda: session.run(None, {n: inputs[n].numpy() for n in names}))
            return decode_outputs(model, out, b)

    cpu = {}  # process CPU seconds per stage (all threads): robust to other work on the machine

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        stages.setdefault(name, []).append(time.perf_counter() - t0)
        cpu.setdefault(name, []).append(time.process_time() - c0)
        return out

    precisions = [p for p in args.precision if p != "fp32"]
    agreement = {p: {"max_map_diff": {}, "boxes": 0, "matched": 0, "max_score_diff": 0.0} for p in precisions}

    def set_paths(on):
        """The inference-only paths of the LiDAR and camera encoders (channels_last) and the head (folded,
        fused) on or off."""
        for enc in (model.lidar, model.camera):
            if enc is not None:
                enc.fast_inference = on
        model.head.fast_inference = on

    def both_paths(i, name, fn):
        """fn timed with the inference-only paths on (``name``) and off (``name``_off), alternating which
        goes first (load drifts); the paths end on and the 'on' result is returned."""
        out = None
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            set_paths(on)
            r = timed(name if on else f"{name}_off", fn)
            out = r if on else out
        set_paths(True)
        return out

    def low_precision(i, b, p):
        """Stages and end to end at precision p (fast fusion), and its maps and detections against fp32."""
        from perception.deploy.precision import autocast, compare_detections, compare_maps, float_maps

        with autocast(p, "cpu"):
            f = [None, None, None]
            if model.lidar is not None:
                f[0] = both_paths(i, f"lidar_{p}", lambda: model.lidar(b.lidar_points))
            if model.camera is not None:
                f[1] = both_paths(i, f"camera_{p}", lambda: model.camera(b.images, b.intrinsics, b.img_aug,
                                                                         b.T_ego_from_cam, b.camera_mask))
            if model.radar is not None:
                f[2] = timed(f"radar_{p}", lambda: model.radar(b.radar_points))
            pr = b.modality_mask.clone()
            for m, x in enumerate(f):
                if x is None:
                    pr[:, m] = False
            model.fusion.implementation = "fast"
            fz = timed(f"fusion_fast_{p}", lambda: model.fusion(f, pr))
            if model.decoder is not None:
                fz = timed(f"decoder_{p}", lambda: model.decoder(fz))
            both_paths(i, f"head_{p}", lambda: model.head(fz, b.ego_velocity))
        model.precision = p
        dets = both_paths(i, f"end_to_end_fast_{p}", lambda: model.predict(b))
        model.precision = "fp32"
        ref = model(b)
        with autocast(p, "cpu"):
            low = float_maps(model(b))
        a = agreement[p]
        for k, v in compare_maps(ref, low).items():
            a["max_map_diff"][k] = round(max(a["max_map_diff"].get(k, 0.0), v), 5)
        c = compare_detections(model.head.decode(ref, b.sample_tokens, b.timestamps)[0], dets[0])
        a["boxes"] += c["boxes"]
        a["matched"] += c["matched"]
        a["max_score_diff"] = round(max(a["max_score_diff"], c["max_score_diff"]), 5)

    with torch.no_grad():
        for b in batches[:2]:  # warm-up: numba compilation, allocator, both paths' kernels
            for on in (False, True):
                set_paths(on)
                model.predict(b)
                for p in precisions:  # and the low-precision kernels
                    model.precision = p
                    model.predict(b)
                    model.precision = "fp32"
            if session is not None:
                ort_predict(b)
        for i, b in enumerate(batches):
            if model.lidar is not None:
                lc = model.lidar
                pts = [p[:, list(lc.POINT_COLUMNS)].float() for p in b.lidar_points]
                timed("voxelize", lambda: voxelize_batch(pts, lc.voxel_size, lc.point_cloud_range, lc.max_points,
                                                         lc.max_voxels[1]))
            feats = [None, None, None]
            if model.lidar is not None:
                feats[0] = both_paths(i, "lidar", lambda: model.lidar(b.lidar_points))
            if model.camera is not None:
                feats[1] = both_paths(i, "camera", lambda: model.camera(b.images, b.intrinsics, b.img_aug,
                                                                        b.T_ego_from_cam, b.camera_mask))
            if model.radar is not None:
                feats[2] = timed("radar", lambda: model.radar(b.radar_points))
            present = b.modality_mask.clone()
            for m, f in enumerate(feats):
                if f is None:
                    present[:, m] = False
            # both fusion implementations on the same inputs, alternating which goes first (load drifts)
            for impl in (impls if i % 2 == 0 else impls[::-1]):
                model.fusion.implementation = impl
                fused = timed(f"fusion_{impl}", lambda: model.fusion(feats, present))
            if model.decoder is not None:
                fused = timed("decoder", lambda: model.decoder(fused))
            preds = both_paths(i, "head", lambda: model.head(fused, b.ego_velocity))
            timed("decode", lambda: model.head.decode(preds, b.sample_tokens, b.timestamps))
            for impl in (impls if i % 2 == 0 else impls[::-1]):
                model.fusion.implementation = impl
                if impl == "fast":  # and the fast fusion without the camera's and head's inference paths
                    both_paths(i, "end_to_end_fast", lambda: model.predict(b))
                else:
                    timed(f"end_to_end_{impl}", lambda: model.predict(b))
            if session is not None:
                timed("onnxruntime_end_to_end", lambda: ort_predict(b))
            for p in precisions:
                low_precision(i, b, p)
    model.fusion.implementation = cfg.model.fusion.implementation
    ms = {k: round(1e3 * float(np.median(v)), 1) for k, v in stages.items() if v}
    cpu_ms = {k: round(1e3 * float(np.median(v)), 1) for k, v in cpu.items() if v}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    res = {"config": cfg.source, "threads": args.threads, "frames": len(batches), "parameters": params,
           "median_ms": ms, "median_cpu_ms": cpu_ms, "frames_per_s": {k[len("end_to_end_"):] if k.startswith("end_to_end_") else "onnxruntime":
                                              round(1e3 / v, 2) for k, v in ms.items() if "end_to_end" in k},
           "fusion_speedup_cpu": round(cpu_ms["fusion_reference"] / cpu_ms["fusion_fast"], 2),
           "fusion_share_of_end_to_end_cpu": {impl: round(cpu_ms[f"fusion_{impl}"] / cpu_ms[f"end_to_end_{impl}"], 3)
                                              for impl in impls},
           "fusion_speedup": round(ms["fusion_reference"] / ms["fusion_fast"], 2),
           "fusion_share_of_end_to_end": {impl: round(ms[f"fusion_{impl}"] / ms[f"end_to_end_{impl}"], 3)
                                          for impl in impls},
           "load_average_1min": load,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "bev_shape": list(cfg.bev_shape)}
    if session is not None:
        res["onnx_export_s"] = round(export_s, 1)
    if precisions:
        res["precision_vs_fp32"] = agreement
    print(f"model benchmark: {cfg.source}, {len(batches)} real keyframes, batch 1, {args.threads} threads, "
          f"fused BEV {cfg.bev_shape[0]}x{cfg.bev_shape[1]}; load average {load}")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items()))
    print("median latency ms (lidar includes voxelize; end_to_end = predict incl. decode; onnxruntime_inputs = "
          "voxelization and camera geometry):")
    print("  " + "  ".join(f"{k} {v}" for k, v in ms.items()))
    print("median process CPU ms (all threads; what the stage costs when other work shares the cores):")
    print("  " + "  ".join(f"{k} {v}" for k, v in cpu_ms.items()))
    print(f"fusion: fast {res['fusion_speedup']}x the reference; share of end to end "
          + ", ".join(f"{k} {v:.0%}" for k, v in res["fusion_share_of_end_to_end"].items())
          + f"; by CPU time {res['fusion_speedup_cpu']}x, share "
          + ", ".join(f"{k} {v:.0%}" for k, v in res["fusion_share_of_end_to_end_cpu"].items()))
    for p, a in agreement.items():
        print(f"{p} vs fp32 (fast fusion): end to end {ms[f'end_to_end_fast_{p}']} ms vs {ms['end_to_end_fast']} ms "
              f"(CPU {cpu_ms[f'end_to_end_fast_{p}']} vs {cpu_ms['end_to_end_fast']}); max map difference "
              + ", ".join(f"{k} {v:.3g}" for k, v in a["max_map_diff"].items())
              + f"; detections (score >= 0.1) matched {a['matched']}/{a['boxes']} (same class, centre within 0.5 m), "
              f"max score difference {a['max_score_diff']:.3g}")
    print("inference-only paths (LiDAR and camera channels_last, head folded/fused; _off: switched off, same frames, "
          "interleaved), process CPU ms on / off: "
          + ", ".join(f"{k} {cpu_ms[k]} / {cpu_ms[k + '_off']}" for k in cpu_ms if k + "_off" in cpu_ms))
    print("frames/s: " + ", ".join(f"{k} {v}" for k, v in res["frames_per_s"].items())
          + f"; peak RSS {res['peak_rss_mb']} MB")
    if session is not None:
        tmp.cleanup()
    return res


def bench_tracking(args) -> dict:
    """Tracker ms per frame on one core: N objects moving at constant velocities (mixed tracking classes,
    or cars only, where every pair is a candidate within the gates), detected every frame with 0.1 m
    noise, so each step matches N detections against N live tracks."""
    import numpy as np

    from perception.config import load_config
    from perception.structures import CLASS_TO_ID, Boxes3D
    from perception.tracking import TRACKING_CLASSES, tracker_from_config

    rng = np.random.default_rng(0)
    n = args.objects
    start = rng.uniform(-50, 50, (n, 2))
    vel = rng.normal(0, 5, (n, 2))
    res = {"objects": n, "frames": args.frames, "threads": 1}

    def frame(k, labels):
        b = np.zeros((n, 9))
        b[:, :2] = start + vel * 0.5 * k + rng.normal(0, 0.1, (n, 2))
        b[:, 3:6] = (4.5, 1.9, 1.6)
        b[:, 7:9] = vel
        return Boxes3D(b, labels, -np.ones(n), rng.uniform(0.1, 1, n), -np.ones(n), -np.ones(n), [""] * n,
                       [""] * n, "global")

    for classes in ("mixed", "cars"):
        names = TRACKING_CLASSES if classes == "mixed" else ("car",)
        labels = np.array([CLASS_TO_ID[names[i % len(names)]] for i in range(n)])
        frames = [frame(k, labels) for k in range(args.frames + 5)]
        for matching in ("greedy", "hungarian"):
            trk = tracker_from_config(load_config(None, [f"tracking.matching={matching}"]).tracking)
            for k in range(5):  # warm-up: the tracks exist
                trk.step_global(frames[k], k * 500_000)
            times = []
            for k in range(5, len(frames)):
                t0 = time.perf_counter()
                out = trk.step_global(frames[k], k * 500_000)
                times.append(time.perf_counter() - t0)
            key = f"{classes}_{matching}"
            res[key + "_ms"] = round(1000 * float(np.median(times)), 3)
            res[key + "_live_tracks"] = trk.num_live
            res[key + "_ids"] = int(trk._next_id - 1)
            print(f"tracker, {n} detections x {trk.num_live} tracks, {classes} classes, {matching}: "
                  f"median {res[key + '_ms']:.3f} ms per frame ({len(out)} reported, {res[key + '_ids']} IDs issued)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="benchmarks")
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data", help="frame building throughput")
    d.add_argument("--dataroot")
    d.add_argument("--version", default="v1.0-trainval")
    d.add_argument("--frames", type=int, default=60)
    d.add_argument("--json")
    o = sub.add_parser("ops", help="voxelization, BEV pooling and NMS kernels")
    o.add_argument("--json")
    q = sub.add_parser("quality", help="train fusion / LiDAR-only / camera-only tiny models with one budget, "
                                         "evaluate, check the quality bar")
    q.add_argument("--synthetic", default="work/data/synthetic", help="synthetic root (generated if absent)")
    q.add_argument("--real", default=REAL_ROOT)
    q.add_argument("--work", default="work/quality")
    q.add_argument("--steps", type=int, default=300, help="optimizer steps per model (batch train.batch_size)")
    q.add_argument("--real-steps", type=int, default=2400)
    q.add_argument("--skip-real", action="store_true")
    q.add_argument("--models", nargs="+", help="only these synthetic models (no checks), e.g. camera_only "
                                               "camera_only_prev")
    q.add_argument("--json")
    q.add_argument("--md")
    m = sub.add_parser("model", help="detector parameters, per-stage latency, frames/s, memory")
    m.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                    "fusion_tiny.yaml"))
    m.add_argument("--set", action="append", default=[])
    m.add_argument("--dataroot")
    m.add_argument("--version", default="v1.0-trainval")
    m.add_argument("--frames", type=int, default=12)
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--checkpoint", help="weights to load (default: random, seed 0)")
    m.add_argument("--backend", nargs="+", default=["torch"], choices=("torch", "onnxruntime"),
                   help="torch (eager, both fusion implementations) and/or onnxruntime (the ONNX export, "
                        "same frames, interleaved)")
    m.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16"),
                   help="fp32 and/or bf16 (CPU autocast, fast fusion): per-stage and end-to-end latency side by "
                        "side, and bf16's head maps and detections against fp32 on the same frames")
    m.add_argument("--json")
    k = sub.add_parser("tracking", help="tracker ms per frame at N detections and N tracks, one core")
    k.add_argument("--objects", type=int, default=200)
    k.add_argument("--frames", type=int, default=200)
    k.add_argument("--json")
    t = sub.add_parser("train", help="loader alone, training step alone, both together (samples/s), peak RSS")
    t.add_argument("--config", required=True)
    t.add_argument("--set", action="append", default=[])
    t.add_argument("--dataroot", help="default: a generated synthetic root")
    t.add_argument("--version", default="v1.0-trainval")
    t.add_argument("--json")
    x = sub.add_parser("index", help="index build time and the memory of the trainer and its loader workers "
                                     "over an epoch: list of plans vs PlanStore")
    x.add_argument("--dataroot", required=True)
    x.add_argument("--version", default="v1.0-trainval")
    x.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                    "fusion_nuscenes.yaml"))
    x.add_argument("--set", action="append", default=[])
    x.add_argument("--split", default="train")
    x.add_argument("--cache", help="index cache folder (default: DATAROOT/../cache)")
    x.add_argument("--variants", nargs="+", default=["list", "store"], choices=("list", "store", "mmap"))
    x.add_argument("--load", default="samples", choices=("samples", "plans"),
                   help="samples: TrainDataset (files read, augmented, targets; no camera unless --set "
                        "model.use_camera=true); plans: decode and walk each plan only")
    x.add_argument("--workers", type=int, default=2)
    x.add_argument("--max-samples", type=int, default=0, help="iterate only this many (0: the whole epoch)")
    x.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    x.add_argument("--rebuild", action="store_true", help="build the index again even when cached")
    x.add_argument("--worker-mmap-threshold", type=int, nargs="+", default=None,
                   help="bytes, one run per value and variant (0: glibc's dynamic default); default: the "
                        "workers' setting (perception.engine.dataset.WORKER_MMAP_THRESHOLD)")
    x.add_argument("--json")
    e = sub.add_parser("eval-data", help="evaluation data path: frame by frame in the main process vs the "
                                         "DataLoader over the cached index; --robustness in one pass vs a pass per case")
    e.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                                                    "fusion_tiny.yaml"))
    e.add_argument("--set", action="append", default=["sync.lidar_sweeps=1", "sync.radar_sweeps=1"],
                   help="config overrides (default: keyframe-only LiDAR and radar, as the real extract holds)")
    e.add_argument("--dataroot", default=REAL_ROOT)
    e.add_argument("--version", default="v1.0-trainval")
    e.add_argument("--split", default="val")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--samples", type=int, default=40, help="samples per pass (0: the whole split)")
    e.add_argument("--robustness-samples", type=int, default=12)
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--json")
    args = ap.parse_args(argv)
    if args.what == "eval-data":
        set_threads(1)  # the data path: one core per process
        from perception.eval.data_benchmark import print_eval_data, run_eval_data_benchmark

        res = run_eval_data_benchmark(os.path.abspath(args.config), args.set, args.dataroot, args.version, args.split,
                                      args.workers, args.samples, args.robustness_samples, args.batch_size)
        print_eval_data(res)
    elif args.what == "index":
        set_threads(1)  # the data path: one core per process
        from perception.engine.index_benchmark import run_index_benchmark

        res = run_index_benchmark(args.dataroot, os.path.abspath(args.config), args.set, args.version, args.split,
                                  args.cache, args.variants, args.load, args.workers, args.max_samples,
                                  args.interval, args.rebuild, args.worker_mmap_threshold)
    elif args.what == "train":
        set_threads(os.cpu_count() or 1)  # the trainer uses the machine; its loader workers take one each
        from perception.engine.benchmark import run_train_benchmark

        res = run_train_benchmark(args.config, None, args.dataroot, args.version, args.set)
    elif args.what == "data":
        set_threads(1)  # the data path runs inside loader workers, one process (one core) each
        res = bench_data(args)
    elif args.what == "quality":
        from perception.eval.quality import run_quality

        if not os.path.isfile(os.path.join(args.synthetic, ".complete")):
            import subprocess

            subprocess.check_call([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                "make_synthetic.py"), "--out", args.synthetic,
                                   "--preset", "default", "--seed", "0"])
            open(os.path.join(args.synthetic, ".complete"), "w").close()
        res = run_quality(args.synthetic, args.real, args.work, args.steps, args.real_steps,
                          args.json or os.path.join(args.work, "quality.json"),
                          args.md or os.path.join(args.work, "quality.md"), args.skip_real, args.models)
    elif args.what == "model":
        set_threads(args.threads)
        res = bench_model(args)
    elif args.what == "tracking":
        set_threads(1)  # the tracker is numpy on one core (BLAS threads would only add overhead here)
        res = bench_tracking(args)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from benchmark_ops import run_ops_benchmark

        res = run_ops_benchmark(None)
    if args.json:
        from perception.fileio import write_json_atomic

        write_json_atomic(res, args.json, indent=1, strict=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
