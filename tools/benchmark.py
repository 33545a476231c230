#!/usr/bin/env python
"""Benchmarks (not tests): numbers measured side by side in one run, printed and optionally saved.

    python tools/benchmark.py data [--dataroot DIR --version V] [--frames N] [--json OUT]
    python tools/benchmark.py ops [--json OUT]

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

# One core: the data path runs inside loader workers, one process each.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")
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
    if fb.missing:
        results["missing_files"] = dict(fb.missing)
    print(f"frame building on one core, {results['dataroot']}, scene {scene}, {len(refs)} frames")
    print(f"{'case':18s} {'frames':>6s} {'frames/s':>9s} {'ms/frame':>9s} {'lidar pts':>10s} {'radar pts':>10s}")
    for name, _, _ in cases:
        r = results[name]
        print(f"{name:18s} {r['frames']:6d} {r['frames_per_s']:9.1f} {r['ms_per_frame']:9.1f} {r['lidar_points_per_frame']:10d} "
              f"{r['radar_points_per_frame']:10d}")
    target = 20.0
    ok = results["lidar_radar"]["frames_per_s"] >= target
    print(f"target: >= {target:.0f} frames/s of LiDAR+radar assembly on one core: "
          f"{'met' if ok else 'NOT met'} ({results['lidar_radar']['frames_per_s']:.1f})")
    if tmp:
        tmp.cleanup()
    return results


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
    args = ap.parse_args(argv)
    if args.what == "data":
        res = bench_data(args)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from benchmark_ops import run_ops_benchmark

        res = run_ops_benchmark(None)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
