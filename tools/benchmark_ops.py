"""Kernel benchmark: voxelization, BEV pooling and NMS, each fast path side by side with its reference.

    python tools/benchmark.py ops [--json OUT]      (or: python tools/benchmark_ops.py [--json OUT])

Every case reports the median seconds of repeated calls after a warm-up call; the warm-up (first
call: numba compilation, or loading from numba's on-disk cache) is reported separately, and a fresh
process is started once to show the first-call time when the cache is already there. The LiDAR cloud
is built from the real nuScenes keyframe sweeps in ../shared/data/nuscenes-real (10-sweep-like:
consecutive sweeps stacked, 5th column replaced by the sweep's time lag); without that data a
synthetic cloud of the same size stands in (reported as ``cloud_source``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

LIDAR_GLOB = os.path.join(PROJECT, "..", "shared", "data", "nuscenes-real", "trainval-extract", "samples",
                          "LIDAR_TOP", "*.pcd.bin")
PILLARS = dict(voxel_size=[0.2, 0.2, 8.0], point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
               max_points_per_voxel=32, max_voxels=40_000)
# CenterPoint / BEVFusion nuScenes voxel config.
GRID3D = dict(voxel_size=[0.075, 0.075, 0.2], point_cloud_range=[-54.0, -54.0, -5.0, 54.0, 54.0, 3.0],
              max_points_per_voxel=10, max_voxels=120_000)


def lidar_cloud(n: int, seed: int = 0):
    """(float32[n, 5] (x, y, z, intensity, time lag s), source description)."""
    files = sorted(glob.glob(LIDAR_GLOB))
    if files:
        parts, total, k = [], 0, 0
        while total < n:
            p = np.fromfile(files[k % len(files)], np.float32).reshape(-1, 5).copy()
            p[:, 4] = 0.05 * (k % 10)  # nuScenes multi-sweep clouds carry the time lag here
            parts.append(p)
            total += len(p)
            k += 1
        return np.ascontiguousarray(np.concatenate(parts)[:n]), f"real nuScenes LIDAR_TOP, {k} sweeps stacked"
    rng = np.random.default_rng(seed)
    r = np.abs(rng.normal(0, 20, n)) + 2
    a = rng.uniform(-np.pi, np.pi, n)
    pts = np.stack([r * np.cos(a), r * np.sin(a), rng.normal(-1, 1, n), rng.uniform(0, 255, n),
                    rng.integers(0, 10, n) * 0.05], 1).astype(np.float32)
    return pts, "synthetic (real sweeps not found)"


def _time(fn: Callable, repeats: int, warmup: int = 1) -> Dict[str, float]:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(ts)), "min_s": float(np.min(ts)), "first_call_s": first,
            "repeats": repeats}


def _spconv_point_to_voxel():
    try:
        import torch
        from spconv.pytorch.utils import PointToVoxel
    except Exception as e:  # optional comparison, never a dependency
        return None, f"spconv not installed ({type(e).__name__}); column skipped"

    def make(cfg, C):
        gen = PointToVoxel(vsize_xyz=cfg["voxel_size"], coors_range_xyz=cfg["point_cloud_range"],
                           num_point_features=C, max_num_voxels=cfg["max_voxels"],
                           max_num_points_per_voxel=cfg["max_points_per_voxel"], device=torch.device("cpu"))
        return lambda pts_th: gen(pts_th, empty_mean=False)
    return make, "spconv PointToVoxel (CPU)"


def _memory_bandwidth_gbs() -> float:
    """Streaming copy bandwidth (bytes read + written per second), 64 MiB arrays."""
    src = np.ones(16 * 2**20, np.float32)
    dst = np.empty_like(src)
    t = _time(lambda: np.copyto(dst, src), repeats=10)["median_s"]
    return 2 * src.nbytes / t / 1e9


def _fresh_process_first_call() -> Dict[str, object]:
    """First hard_voxelize call in a new process: should load from numba's cache, not compile."""
    code = ("import time, numpy as np\n"
            "t0 = time.perf_counter()\n"
            "from perception.ops import voxelize as vx\n"
            "t1 = time.perf_counter()\n"
            "p = np.random.default_rng(0).uniform(-50, 50, (1000, 5)).astype(np.float32)\n"
            "vx.hard_voxelize(p, [0.2, 0.2, 8], [-51.2, -51.2, -5, 51.2, 51.2, 3], 32, 40000)\n"
            "t2 = time.perf_counter()\n"
            "fns = [vx._cell_ids_cpu, vx._assign_dense, vx._fill_cpu, vx._coords_dense]\n"
            "hits = sum(sum(f.stats.cache_hits.values()) for f in fns)\n"
            "miss = sum(sum(f.stats.cache_misses.values()) for f in fns)\n"
            "print(t1 - t0, t2 - t1, hits, miss)\n")
    try:
        res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=300)
        imp, first, hits, miss = res.stdout.split()
        return {"import_s": float(imp), "first_call_s": float(first), "cache_hits": int(hits),
                "cache_misses": int(miss), "recompiled": int(miss) > 0}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _add(cases, name, impls, note=None, baseline="reference", **extra):
    entry = {"impls": impls, **extra}
    if note:
        entry["note"] = note
    base = impls.get(baseline)
    if base:
        entry["ratios_vs_" + baseline] = {k: v["median_s"] / base["median_s"] for k, v in impls.items()}
    cases[name] = entry


def batch_voxelize_cases(cases: Dict[str, dict], rep_fast: int) -> None:
    """Batched hard voxelization (one numba call for the batch, samples in parallel) vs one call per
    sample, interleaved on the same clouds: B real-sized samples (a keyframe ~35k, 10 sweeps ~300k)."""
    from perception.ops import voxelize as vx

    cloud_big, _ = lidar_cloud(1_200_000)
    for name, n, B, cfg in (("hard_batch4_pillars_35k", 35_000, 4, PILLARS),
                            ("hard_batch4_pillars_300k", 300_000, 4, PILLARS),
                            ("hard_batch4_grid3d_300k", 300_000, 4, GRID3D)):
        clouds = [np.ascontiguousarray(cloud_big[b * n:(b + 1) * n]) for b in range(B)]
        vx.hard_voxelize_batch(clouds, **cfg)  # compile / cache load outside the timing
        per, bat = [], []
        for _ in range(2):  # interleaved halves: a load change hits both
            per.append(_time(lambda: vx.hard_voxelize_batch(clouds, impl="per_sample", **cfg), max(2, rep_fast // 2)))
            bat.append(_time(lambda: vx.hard_voxelize_batch(clouds, **cfg), max(2, rep_fast // 2)))
        pick = lambda ts: min(ts, key=lambda t: t["median_s"])  # noqa: E731
        _add(cases, name, {"batched": pick(bat), "per_sample": pick(per)}, baseline="per_sample", batch=B,
             points_per_sample=n)


def run_ops_benchmark(json_out: Optional[str] = None, quick: bool = False) -> dict:
    """Runs every case, prints a table, writes JSON to json_out when given, returns the dict."""
    import numba
    import torch

    from perception.ops import (circle_nms, circle_nms_reference, rotated_nms_bev, rotated_nms_bev_reference)
    from perception.ops.bev_pool import bev_pool, bev_pool_geometry, bev_pool_reference
    from perception.ops import voxelize as vx

    rep_fast, rep_ref = (5, 2) if quick else (40, 5)
    cases: Dict[str, dict] = {}
    info = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "numba_threads": numba.get_num_threads(), "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__, "torch": torch.__version__,
            # Other jobs on the machine inflate medians (a parallel region waits for a descheduled
            # thread): the load is recorded so that a reader can tell, and min_s is kept too.
            "load_average_1min_at_start": os.getloadavg()[0]}
    if numba.get_num_threads() < (os.cpu_count() or 1):
        # The targets are for all cores (2 here); NUMBA_NUM_THREADS is read at numba's import, so
        # this can only be reported, not undone, from inside the process.
        info["warning"] = (f"numba runs {numba.get_num_threads()} thread(s) of {os.cpu_count()} cores "
                           f"(NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}): parallel kernels are "
                           f"measured below their capacity")

    # First calls, before anything else has run in this process: compile or cache load.
    fns = [vx._cell_ids_cpu, vx._assign_dense, vx._assign_hash, vx._fill_cpu, vx._coords_dense,
           vx._coords_hash, vx._dynamic_cpu]
    cloud300, source = lidar_cloud(300_000)
    info["cloud_source"] = source
    t0 = time.perf_counter()
    vx.hard_voxelize(cloud300, **PILLARS)
    vx.hard_voxelize(cloud300, **GRID3D)
    vx.dynamic_voxelize(cloud300, PILLARS["voxel_size"], PILLARS["point_cloud_range"])
    info["voxelize_first_calls_s"] = time.perf_counter() - t0
    info["voxelize_cache_hits"] = sum(sum(f.stats.cache_hits.values()) for f in fns)
    info["voxelize_cache_misses"] = sum(sum(f.stats.cache_misses.values()) for f in fns)
    info["fresh_process"] = _fresh_process_first_call()
    info["memory_bandwidth_GBps"] = bw = _memory_bandwidth_gbs()

    spconv_make, spconv_note = _spconv_point_to_voxel()
    torch.set_num_threads(2)

    # Hard voxelization at 300k points, pillars and the 0.075 m 3D grid.
    for name, cfg in (("hard_pillars_300k", PILLARS), ("hard_grid3d_0.075_300k", GRID3D)):
        impls = {"numba_cpu": _time(lambda: vx.hard_voxelize(cloud300, **cfg), rep_fast),
                 "reference": _time(lambda: vx.hard_voxelize_reference(cloud300, **cfg), rep_ref)}
        if spconv_make:
            gen = spconv_make(cfg, cloud300.shape[1])
            pts_th = torch.from_numpy(cloud300)
            impls["spconv_cpu"] = _time(lambda: gen(pts_th), rep_fast)
        vox, coords, num = vx.hard_voxelize(cloud300, **cfg)
        moved = cloud300.nbytes + vox.nbytes + coords.nbytes + num.nbytes
        floor = moved / (bw * 1e9)
        _add(cases, name, impls, note=None if spconv_make else spconv_note, voxels=int(len(vox)),
             bytes_moved=int(moved), bandwidth_floor_s=floor,
             numba_over_floor=impls["numba_cpu"]["median_s"] / floor)
        if spconv_make:
            cases[name]["numba_over_spconv"] = impls["numba_cpu"]["median_s"] / impls["spconv_cpu"]["median_s"]

    for name, cfg in (("dynamic_pillars_300k", PILLARS), ("dynamic_grid3d_0.075_300k", GRID3D)):
        args = (cfg["voxel_size"], cfg["point_cloud_range"])
        _add(cases, name, {"numba_cpu": _time(lambda: vx.dynamic_voxelize(cloud300, *args), rep_fast),
                           "reference": _time(lambda: vx.dynamic_voxelize_reference(cloud300, *args), rep_ref)},
             note="spconv has no dynamic voxelization")

    # Scaling of hard voxelization (pillars).
    scaling = {}
    for n in (100_000, 300_000, 1_000_000):
        pts = cloud300 if n == 300_000 else lidar_cloud(n)[0]
        scaling[str(n)] = {"numba_cpu": _time(lambda: vx.hard_voxelize(pts, **PILLARS), rep_fast),
                           "reference": _time(lambda: vx.hard_voxelize_reference(pts, **PILLARS), rep_ref)}
    cases["hard_pillars_scaling"] = {
        "impls_by_points": scaling,
        "ratio_1M_over_300k": {k: scaling["1000000"][k]["median_s"] / scaling["300000"][k]["median_s"]
                               for k in ("numba_cpu", "reference")}}

    # BEV pooling: 6 cameras x 41 depth bins x 16 x 44 frustum points, 80 channels, 128 x 128 grid.
    g = torch.Generator().manual_seed(0)
    P, C, H, W = 6 * 41 * 16 * 44, 80, 128, 128
    coords = torch.stack([torch.zeros(P, dtype=torch.long), torch.randint(-8, H + 8, (P,), generator=g),
                          torch.randint(-8, W + 8, (P,), generator=g)], 1)
    feats = torch.randn(P, C, generator=g)
    geom = bev_pool_geometry(coords, 1, (H, W))
    geo_t = _time(lambda: bev_pool_geometry(coords, 1, (H, W)), rep_ref)
    _add(cases, f"bev_pool_forward_{P}x{C}", {
        "numba_cpu": _time(lambda: bev_pool(feats, geom), rep_fast // 2),
        "reference": _time(lambda: bev_pool_reference(feats, coords, 1, (H, W)), rep_ref)},
        note="numba path excludes the geometry precompute (once per camera geometry)", geometry_precompute=geo_t)
    fr = feats.clone().requires_grad_(True)

    def fwd_bwd(fn):
        out = fn(fr)
        (gr,) = torch.autograd.grad(out, fr, torch.ones_like(out))
        return gr
    _add(cases, f"bev_pool_forward_backward_{P}x{C}", {
        "numba_cpu": _time(lambda: fwd_bwd(lambda f: bev_pool(f, geom)), rep_fast // 2),
        "reference": _time(lambda: fwd_bwd(lambda f: bev_pool_reference(f, coords, 1, (H, W))), rep_ref)})

    # NMS on 1,000 boxes (some crowded around a few centres, as detections are).
    rng = np.random.default_rng(0)
    n = 1000
    boxes = np.zeros((n, 9))
    boxes[:, :2] = rng.uniform(-50, 50, (n, 2))
    boxes[: n // 2, :2] = rng.uniform(-50, 50, (20, 2))[rng.integers(0, 20, n // 2)] + rng.normal(0, 1, (n // 2, 2))
    boxes[:, 3:6] = rng.uniform(0.5, 5, (n, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    scores = rng.random(n)
    _add(cases, "circle_nms_1000", {
        "numba_cpu": _time(lambda: circle_nms(boxes, scores, 1.0), rep_fast),
        "reference": _time(lambda: circle_nms_reference(boxes, scores, 1.0), rep_ref)},
        kept=int(len(circle_nms(boxes, scores, 1.0))))
    _add(cases, "rotated_nms_bev_1000", {
        "numba_cpu": _time(lambda: rotated_nms_bev(boxes, scores, 0.2), rep_fast),
        "reference": _time(lambda: rotated_nms_bev_reference(boxes, scores, 0.2), max(1, rep_ref // 2))},
        kept=int(len(rotated_nms_bev(boxes, scores, 0.2))))

    batch_voxelize_cases(cases, rep_fast)

    result = {"info": info, "cases": cases,
              "targets": {"hard_pillars_300k_numba_s_max": 0.0065,
                          "hard_pillars_1M_over_300k_max": 3.5,
                          "spconv_reference_s_on_this_machine_per_issue": 0.013}}
    _print_table(result, spconv_note)
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _print_table(result: dict, spconv_note: str) -> None:
    info, cases = result["info"], result["cases"]
    print(f"ops benchmark: {info['cpu_count']} CPU cores, numba {info['numba']} with {info['numba_threads']} "
          f"threads, torch {info['torch']}; cloud: {info['cloud_source']}")
    print(f"first calls in this process (3 voxelizations): {info['voxelize_first_calls_s']:.2f} s, numba cache "
          f"hits {info['voxelize_cache_hits']}, misses (= compiled) {info['voxelize_cache_misses']}")
    fp = info["fresh_process"]
    if "error" not in fp:
        print(f"fresh process: import {fp['import_s']:.2f} s, first hard_voxelize {fp['first_call_s']:.3f} s, "
              f"cache hits {fp['cache_hits']}, misses {fp['cache_misses']} -> "
              f"{'RECOMPILED' if fp['recompiled'] else 'no recompilation'}")
    print(f"memory bandwidth (streaming copy): {info['memory_bandwidth_GBps']:.1f} GB/s; {spconv_note}")
    print(f"load average at start: {info['load_average_1min_at_start']:.2f}")
    if "warning" in info:
        print("WARNING: " + info["warning"])
    print(f"{'case':40s} {'impl':12s} {'median ms':>10s} {'min ms':>8s} {'first s':>8s} {'x ref':>8s}")
    for name, c in cases.items():
        if "impls_by_points" in c:
            for npts, impls in c["impls_by_points"].items():
                for k, v in impls.items():
                    print(f"{'hard_pillars_' + npts:40s} {k:12s} {1e3 * v['median_s']:10.2f} "
                          f"{1e3 * v['min_s']:8.2f} {v['first_call_s']:8.2f}")
            r = c["ratio_1M_over_300k"]
            print(f"{'':40s} 1M / 300k: numba {r['numba_cpu']:.2f}x, reference {r['reference']:.2f}x")
            continue
        ratios = c.get("ratios_vs_reference", {})
        for k, v in c["impls"].items():
            rr = ratios.get(k)
            print(f"{name:40s} {k:12s} {1e3 * v['median_s']:10.2f} {1e3 * v['min_s']:8.2f} {v['first_call_s']:8.2f} "
                  f"{'' if rr is None else f'{rr:8.3f}'}")
        if "bandwidth_floor_s" in c:
            print(f"{'':40s} {c['voxels']} voxels, {c['bytes_moved'] / 1e6:.1f} MB moved: bandwidth floor "
                  f"{1e3 * c['bandwidth_floor_s']:.2f} ms, numba at {c['numba_over_floor']:.2f}x the floor")
        if "numba_over_spconv" in c:
            print(f"{'':40s} numba / spconv = {c['numba_over_spconv']:.2f}")
        if "ratios_vs_per_sample" in c:
            print(f"{'':40s} batched / per-sample = {c['ratios_vs_per_sample']['batched']:.3f} "
                  f"(batch {c['batch']} x {c['points_per_sample']} points)")
        if "geometry_precompute" in c:
            print(f"{'':40s} geometry precompute (once per geometry) "
                  f"{1e3 * c['geometry_precompute']['median_s']:.2f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    ap.add_argument("--batch-only", action="store_true", help="only batched vs per-sample hard voxelization")
    args = ap.parse_args(argv)
    if args.batch_only:
        cases: Dict[str, dict] = {}
        batch_voxelize_cases(cases, 5 if args.quick else 20)
        for name, c in cases.items():
            print(f"{name:28s} batched {1e3 * c['impls']['batched']['median_s']:8.2f} ms  per-sample "
                  f"{1e3 * c['impls']['per_sample']['median_s']:8.2f} ms  batched / per-sample "
                  f"{c['ratios_vs_per_sample']['batched']:.3f}  (load {os.getloadavg()[0]:.1f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(cases, f, indent=1)
        return 0
    run_ops_benchmark(args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
