#!/usr/bin/env python
"""One prepared GPU check: every CUDA path of the project exercised in a few minutes (issue 20).

    python tools/gpu_check.py [--out DIR] [--mode auto|gpu|cpu] [--parts kernels inference train replay] [--quick]
    make gpu-check                     (installs first: with nvidia-smi present, the CUDA torch and numba-cuda)

Parts, each in its own process with its own time limit (a crash, a hang or a failure in one does not
stop the others; a part that runs out of time is killed with its children):

1. kernels    every numba.cuda kernel (hard voxelization on the dense and the hash table, dynamic
              voxelization, BEV pooling forward and backward) against the numba CPU kernel and the
              plain reference on real keyframes: exact for integer outputs and copied points, 1e-5 for
              float sums; the torch <-> numba interop (as_cuda_array, external stream, outputs
              allocated in torch memory, the autograd backward); times beside the CPU kernel and, when
              installed, spconv's PointToVoxel. NMS has no CUDA twin: its CPU kernels are checked
              against their references.
2. inference  the tiny and the nuScenes configs on real keyframes: frames/s end to end (host->device,
              voxelization, model, decode with NMS), per stage, fp32 and bf16, peak GPU memory;
              detections of the GPU and the CPU from one checkpoint agree (centres within 1e-3 m, fp32).
3. train      the nuScenes config on a synthetic root generated here: bf16 steps, samples/s, peak
              memory, loss finite and falling; resume from the mid-run checkpoint; a torchrun worker
              with a process group (NCCL on GPU) and the batch norms converted to SyncBatchNorm.
4. replay     a few frames of a real scene through the player with the model on the GPU.

Outputs (written atomically): OUT/gpu_check.json, OUT/gpu_check.md, OUT/parts/<part>.json,
OUT/logs/<part>.log. The console ends with where the time went. Exit status 0 when every part
passed, 1 otherwise.

Without CUDA (--mode cpu, what auto picks there) the same parts run reduced: the numba.cuda kernels
under NUMBA_ENABLE_CUDASIM=1 on tiny inputs (the torch interop through a shim: the simulator has no
as_cuda_array / external_stream), the tiny config only, a few training steps, two replay frames.
tests/test_gpu_check.py runs that mode, and proves that a kernel disagreeing with its reference fails
it (PERCEPTION_GPU_CHECK_INJECT=<kernel> corrupts that kernel's CUDA result; used by that test only).

--quick (CPU mode only; what the test runs, so that CI stays short): the same parts, sub-checks,
step counts and code paths on less arithmetic: a micro model (narrow channels, a 64 x 64 BEV grid,
two cameras) and a 2 s synthetic drive. The kernels part is unchanged (already at simulator sizes).
Ignored in GPU mode.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT not in sys.path:
    sys.path.insert(0, PROJECT)

# PERCEPTION_REAL_ROOT: a devkit root elsewhere (a GPU machine gets no ../shared; tools/gpu_bundle.py packs a
# trimmed copy of SHARED_REAL_ROOT that travels there).
SHARED_REAL_ROOT = os.path.normpath(os.path.join(PROJECT, "..", "shared", "data", "nuscenes-real", "trainval-extract"))
REAL_ROOT = os.environ.get("PERCEPTION_REAL_ROOT") or SHARED_REAL_ROOT
VERSION = "v1.0-trainval"
PARTS = ("kernels", "inference", "train", "replay")
# Seconds per part. GPU: the whole check with a bare-machine install must stay under 8 minutes and
# leave room for a second try in a 15-minute slot. CPU: the reduced mode that CI runs.
LIMITS = {"gpu": {"kernels": 75, "inference": 120, "train": 150, "replay": 60},
          "cpu": {"kernels": 90, "inference": 120, "train": 240, "replay": 90}}
INJECT_ENV = "PERCEPTION_GPU_CHECK_INJECT"
TINY_CFG = os.path.join(PROJECT, "configs", "fusion_tiny.yaml")
NUSC_CFG = os.path.join(PROJECT, "configs", "fusion_nuscenes.yaml")
# No ImageNet file on a bare machine: the nuScenes config's camera starts from random weights here.
NUSC_SET = ["model.camera.pretrained="]
# CPU mode: the tiny config made smaller still (images 64 x 192, one LiDAR and one radar sweep), same code.
CPU_SET = ["model.camera.image_size=[64,192]", "sync.lidar_sweeps=1", "sync.radar_sweeps=1"]
# --quick on top of CPU_SET: the micro model of tests/test_model.py (MICRO) with a slim BEV decoder and
# two cameras. Same modules, same code paths; a fraction of the arithmetic.
QUICK_SET = [
    "grid.point_cloud_range=[-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]", "grid.voxel_size=[0.8, 0.8, 8.0]",
    "model.bev_stride=1", "model.bev_channels=16", "model.lidar.pfn_channels=[16]",
    "model.lidar.backbone_layers=[1, 1]", "model.lidar.backbone_strides=[1, 2]",
    "model.lidar.backbone_channels=[16, 16]", "model.lidar.neck_channels=[16, 16]",
    "model.camera.image_size=[64, 160]", "model.camera.backbone_width=8", "model.camera.channels=8",
    "model.camera.depth_bins=[1.0, 33.0, 2.0]", "model.radar.pfn_channels=[8]", "model.radar.conv_channels=16",
    "model.head.channels=16", "model.fusion.heads=2", "model.decoder.layers=[1, 1]", "model.decoder.strides=[1, 2]",
    "model.decoder.channels=[16, 16]", "model.decoder.neck_channels=[16, 16]", "data.cameras=[CAM_FRONT, CAM_BACK]",
]
# Set by main for --quick in CPU mode; the part processes and the torchrun worker inherit it.
QUICK_ENV = "PERCEPTION_GPU_CHECK_QUICK"
FPS_GOAL = 20.0


def _quick(mode: str) -> bool:
    return mode == "cpu" and os.environ.get(QUICK_ENV) == "1"


def _cpu_set(mode: str) -> List[str]:
    """The overrides of the tiny config in CPU mode (with --quick: the micro model)."""
    return list(CPU_SET) + (list(QUICK_SET) if _quick(mode) else [])


# ----------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------
class Recorder:
    """What one part found: named checks (ok or not, with details), metrics, and seconds per phase."""

    def __init__(self, part: str, mode: str, path: Optional[str] = None):
        self.part, self.mode, self.path = part, mode, path
        self.t0 = time.perf_counter()
        self.checks: List[dict] = []
        self.metrics: Dict[str, object] = {}
        self.phases: Dict[str, float] = {}
        self.notes: List[str] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 3)

    def check(self, name: str, ok: Optional[bool] = None, **detail) -> bool:
        """Record a check; ``ok`` may come inside ``detail`` (the comparison helpers return it there)."""
        ok = detail.pop("ok") if ok is None else (detail.pop("ok", None), ok)[1]
        self.checks.append({"name": name, "ok": bool(ok), **detail})
        print(f"[{self.part}] {'ok  ' if ok else 'FAIL'} {name}" + (f"  {detail}" if detail else ""), flush=True)
        return bool(ok)

    def attempt(self, name: str, fn: Callable[[], None]) -> None:
        """Run one sub-check; an exception is that sub-check's failure, the part goes on."""
        with self.phase(name):
            try:
                fn()
            except Exception as e:
                tb = traceback.format_exc()
                print(tb, file=sys.stderr, flush=True)
                self.check(name, False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           where=_where(tb))
        self.save()

    def save(self, final: bool = False) -> None:
        """The result so far, atomically: a part killed at its time limit still reports what it did."""
        if self.path:
            from perception.fileio import write_json_atomic

            r = self.result(time.perf_counter() - self.t0)
            r["complete"] = final
            write_json_atomic(r, self.path, indent=1, strict=False)

    def result(self, wall_s: float) -> dict:
        ok = bool(self.checks) and all(c["ok"] for c in self.checks)
        return {"part": self.part, "mode": self.mode, "status": "passed" if ok else "failed",
                "wall_s": round(wall_s, 3), "checks": self.checks, "metrics": self.metrics,
                "phases_s": self.phases, "notes": self.notes}


def _where(tb: str) -> str:
    """The innermost 'File ..., line ...' of a traceback: where to look first."""
    lines = [l.strip() for l in tb.splitlines() if l.strip().startswith("File ")]
    return lines[-1] if lines else ""


def _inject(kernel: str, arrays):
    """The test hook: corrupt one element of a CUDA result when PERCEPTION_GPU_CHECK_INJECT names the
    kernel, so that the test can prove that a disagreement fails the check. Works on numpy arrays and
    torch tensors; returns copies (the inputs are untouched)."""
    import numpy as np

    if os.environ.get(INJECT_ENV) not in (kernel, "all"):
        return arrays
    # Contiguous copies: reshape(-1) of a strided view (bev_pool's permuted output) would be a copy
    # and the corruption would be lost.
    out = [a.clone().contiguous() if hasattr(a, "clone") else np.ascontiguousarray(a).copy() for a in arrays]
    for a in out:
        n = a.numel() if hasattr(a, "numel") else a.size
        if n:  # the first non-empty array: one element off by one (integers) or 1e-3 (floats)
            flat = a.reshape(-1)
            flat[0] = flat[0] + (1 if "int" in str(a.dtype) else 1e-3)
            break
    return out


def _to_numpy(a):
    import numpy as np

    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return np.asarray(a)


def compare_exact(got, want) -> dict:
    """Bit equality of sequences of arrays: {'equal', 'mismatched_elements', 'shapes'}."""
    got, want = [_to_numpy(g) for g in got], [_to_numpy(w) for w in want]
    mism, shapes_ok = 0, True
    for g, w in zip(got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            shapes_ok = False
            continue
        mism += int((g.reshape(-1).view(f"u{g.itemsize}") != w.reshape(-1).view(f"u{w.itemsize}")).sum())
    return {"equal": shapes_ok and mism == 0 and len(got) == len(want), "mismatched_elements": mism,
            "shapes": [list(g.shape) for g in got], "shapes_match": shapes_ok}


def compare_close(got, want, atol: float) -> dict:
    import numpy as np

    g, w = _to_numpy(got).astype(np.float64), _to_numpy(want).astype(np.float64)
    if g.shape != w.shape:
        return {"close": False, "shapes": [list(g.shape), list(w.shape)]}
    diff = float(np.abs(g - w).max()) if g.size else 0.0
    return {"close": bool(diff <= atol), "max_abs_diff": diff, "atol": atol, "bit_identical": bool(np.array_equal(g, w))}


def _median_time(fn: Callable[[], object], repeats: int, sync: Optional[Callable[[], None]] = None) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return {"median_ms": round(1e3 * float(np.median(ts)), 3), "first_call_ms": round(1e3 * first, 1),
            "repeats": repeats}


# ----------------------------------------------------------------------------------------------
# Part 1: kernels
# ----------------------------------------------------------------------------------------------
def _real_cloud(n_keyframes: int):
    """float32[N, 5] (x, y, z, intensity, time lag s) from real LIDAR_TOP keyframes, stacked as a
    multi-sweep cloud (the lag column as nuScenes' 10-sweep input carries it)."""
    import numpy as np

    files = sorted(glob.glob(os.path.join(REAL_ROOT, "samples", "LIDAR_TOP", "*.pcd.bin")))
    if not files:
        raise FileNotFoundError(f"no LIDAR_TOP keyframes under {REAL_ROOT}/samples")
    parts = []
    for k, f in enumerate(files[:n_keyframes]):
        p = np.fromfile(f, np.float32).reshape(-1, 5).copy()
        p[:, 4] = 0.05 * k
        parts.append(p)
    return np.ascontiguousarray(np.concatenate(parts)), [os.path.basename(f) for f in files[:n_keyframes]]


@contextlib.contextmanager
def _simulator_torch_shim():
    """CPU mode only: let the torch-facing CUDA paths run on CPU tensors under the simulator.

    The simulator has no ``as_cuda_array``/``external_stream`` and torch has no CUDA device here, so
    these are stood in for: a CPU tensor is wrapped as a simulator array that shares its memory (as
    the real ``as_cuda_array`` shares device memory), the external stream is a simulator stream, and
    ``torch.cuda.device`` / ``current_stream`` are no-ops. What runs for real: the allocation of the
    outputs in torch memory in the order of the alloc contract, the kernels writing into it, the
    dtype mapping and the result assembly of ``_torch_cuda_call`` and ``bev_pool``'s ``_dev``.
    """
    import torch
    from numba import cuda
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class _Stream:
        cuda_stream = 0

    def as_cuda_array(t):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or not t.is_contiguous():
            raise TypeError("shim wraps contiguous CPU tensors only")
        if t.requires_grad:  # as torch's __cuda_array_interface__ does (found on the first H200 run)
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")
        return FakeCUDAArray(t.numpy())  # shares the tensor's memory

    saved = {k: getattr(cuda, k, None) for k in ("as_cuda_array", "external_stream")}
    saved_torch = (torch.cuda.device, torch.cuda.current_stream)
    cuda.as_cuda_array = as_cuda_array
    cuda.external_stream = lambda ptr: cuda.stream()
    torch.cuda.device = lambda dev: contextlib.nullcontext()
    torch.cuda.current_stream = lambda *a, **k: _Stream()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                delattr(cuda, k)
            else:
                setattr(cuda, k, v)
        torch.cuda.device, torch.cuda.current_stream = saved_torch


def part_kernels(rec: Recorder, args) -> None:
    import numpy as np
    import torch
    from numba import config as numba_config

    from perception.ops import bev_pool as bp
    from perception.ops import voxelize as vx

    gpu = rec.mode == "gpu"
    rec.metrics["cudasim"] = bool(numba_config.ENABLE_CUDASIM)
    if not gpu and not numba_config.ENABLE_CUDASIM:
        raise RuntimeError("CPU mode runs the numba.cuda kernels under NUMBA_ENABLE_CUDASIM=1 (set by the parent)")
    if gpu:
        def probe():
            from numba import cuda

            info = {"numba_cuda_module": os.path.dirname(cuda.__file__), "device": str(cuda.get_current_device().name)}
            try:
                from numba.cuda.cudadrv.nvvm import NVVM

                info["nvvm_version"] = list(NVVM().get_version())
            except Exception as e:  # the first failure expected on a bare machine (NvvmSupportError)
                info["nvvm_error"] = f"{type(e).__name__}: {e}"
            rec.metrics["numba_cuda"] = info
            rec.check("nvvm_found", "nvvm_version" in info, **{k: v for k, v in info.items() if k != "numba_cuda_module"})
        rec.attempt("nvvm_found", probe)

    with rec.phase("load_real_cloud"):
        cloud, files = _real_cloud(10 if gpu else 1)
    if gpu:
        grids = {"pillars_0.2_dense": (dict(voxel_size=[0.2, 0.2, 8.0], point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]), 20, 40_000),
                 "pillars_0.4_dense": (dict(voxel_size=[0.4, 0.4, 8.0], point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]), 16, 20_000),
                 "grid3d_0.075_hash": (dict(voxel_size=[0.075, 0.075, 0.2], point_cloud_range=[-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]), 10, 120_000)}
        cloud_note = f"{len(files)} real LIDAR_TOP keyframes stacked ({len(cloud)} points)"
    else:
        # The simulator runs each CUDA thread as a Python thread: a few hundred points and grids of a
        # few hundred cells. The real keyframe is scaled down so that its structure lands in them.
        sel = cloud[np.linalg.norm(cloud[:, :2], axis=1) < 48][:: max(1, len(cloud) // 150)][:150].copy()
        sel[:, :3] /= 12.0
        sel[3, 0], sel[4, 2] = np.nan, np.inf  # out of range by contract
        cloud = np.ascontiguousarray(sel)
        grids = {"pillars_dense": (dict(voxel_size=[1.0, 1.0, 6.0], point_cloud_range=[-4, -4, -3, 4, 4, 3]), 3, 40),
                 "grid3d_hash": (dict(voxel_size=[0.5, 0.5, 0.5], point_cloud_range=[-3, -3, -2, 3, 3, 2]), 2, 100)}
        cloud_note = f"1 real LIDAR_TOP keyframe, {len(cloud)} points scaled by 1/12 (simulator sizes)"
    rec.metrics["cloud"] = cloud_note
    timings: Dict[str, dict] = {}
    rec.metrics["timings"] = timings
    sync = torch.cuda.synchronize if gpu else None
    spconv = _spconv_gpu() if gpu else (None, "CPU mode")
    rec.metrics["spconv"] = spconv[1]

    for gname, (grid, P, V) in grids.items():
        dense_max = vx.DENSE_TABLE_MAX_CELLS
        if not gpu and gname.endswith("hash"):
            vx.DENSE_TABLE_MAX_CELLS = 0  # the hash-table path on a grid small enough for the simulator
        try:
            kw = dict(max_points_per_voxel=P, max_voxels=V, **grid)

            def hard(gname=gname, kw=kw):
                want = vx.hard_voxelize(cloud, impl="numba", **kw)
                ref = vx.hard_voxelize_reference(cloud, **kw)
                rec.check(f"hard_voxelize[{gname}] numba CPU == reference", compare_exact(want, ref)["equal"])
                got = _inject("hard_voxelize", list(vx.hard_voxelize(cloud, impl="cuda", **kw)))
                rec.check(f"hard_voxelize[{gname}] cuda == numba CPU", **_exact_detail(got, want))
                rec.metrics.setdefault("voxels", {})[gname] = int(len(want[0]))

            def hard_torch(gname=gname, kw=kw):
                want = vx.hard_voxelize(cloud, impl="numba", **kw)
                if gpu:
                    pts = torch.from_numpy(cloud).cuda()
                    got = vx.hard_voxelize(pts, **kw)  # auto: the CUDA path of a CUDA tensor
                    on_dev = all(t.is_cuda for t in got)
                else:
                    with _simulator_torch_shim():
                        got = vx.hard_voxelize(torch.from_numpy(cloud), impl="cuda", **kw)
                    on_dev = all(isinstance(t, torch.Tensor) for t in got)
                got = _inject("hard_voxelize", list(got))
                dtypes = [str(t.dtype) for t in got]
                rec.check(f"hard_voxelize[{gname}] torch interop (as_cuda_array, external stream, torch-allocated "
                          f"outputs) == numba CPU", on_dev and dtypes == ["torch.float32", "torch.int32", "torch.int32"]
                          and compare_exact(got, want)["equal"], dtypes=dtypes, on_device=on_dev,
                          **{k: v for k, v in _exact_detail(got, want).items() if k != "ok"})

            def dynamic(gname=gname, grid=grid):
                want = vx.dynamic_voxelize(cloud, impl="numba", **grid)
                ref = vx.dynamic_voxelize_reference(cloud, **grid)
                rec.check(f"dynamic_voxelize[{gname}] numba CPU == reference", compare_exact([want], [ref])["equal"])
                if gpu:
                    got = vx.dynamic_voxelize(torch.from_numpy(cloud).cuda(), **grid)
                else:
                    with _simulator_torch_shim():
                        got = vx.dynamic_voxelize(torch.from_numpy(cloud), impl="cuda", **grid)
                got = _inject("dynamic_voxelize", [got])
                rec.check(f"dynamic_voxelize[{gname}] cuda (torch interop) == numba CPU", **_exact_detail(got, [want]))

            def hard_batch(gname=gname, kw=kw):
                # one call for a batch (batch index in the cell id, temporaries from torch's allocator on
                # the GPU) against one numba CPU call per sample; an empty and a one-point sample included
                parts = [cloud[: len(cloud) // 2], cloud[:0], cloud[5:6], cloud[len(cloud) // 2:]]
                if not gpu:
                    parts = [p[:12] for p in parts]  # simulator time
                want = vx.hard_voxelize_batch(parts, impl="per_sample", **kw)
                if gpu:  # CPU mode: tests/test_ops_voxelize.py covers it (its compile would cost the time limit)
                    cpu = vx.hard_voxelize_batch(parts, **kw)
                    rec.check(f"hard_voxelize_batch[{gname}] numba CPU == per-sample",
                              compare_exact(cpu, want)["equal"])
                if gpu:
                    got = vx.hard_voxelize_batch([torch.from_numpy(p).cuda() for p in parts], **kw)
                    on_dev = all(t.is_cuda for t in got)
                else:
                    with _simulator_torch_shim():
                        got = vx.hard_voxelize_batch([torch.from_numpy(p) for p in parts], impl="cuda", **kw)
                    on_dev = all(isinstance(t, torch.Tensor) for t in got)
                got = _inject("hard_voxelize", list(got))
                rec.check(f"hard_voxelize_batch[{gname}] cuda (torch allocator, one host read) == per-sample",
                          on_dev and compare_exact(got, want)["equal"], on_device=on_dev,
                          **{k: v for k, v in _exact_detail(got, want).items() if k != "ok"})
                if gpu:
                    pts = [torch.from_numpy(p).cuda() for p in parts]
                    timings[f"hard_voxelize_batch[{gname}]"] = {
                        "batched_cuda": _median_time(lambda: vx.hard_voxelize_batch(pts, **kw), 10, sync),
                        "per_sample_cuda": _median_time(lambda: vx.hard_voxelize_batch(pts, impl="per_sample", **kw),
                                                        10, sync)}

            rec.attempt(f"hard_voxelize[{gname}]", hard)
            rec.attempt(f"hard_voxelize_torch[{gname}]", hard_torch)
            if gpu or gname == "pillars_dense":  # CPU mode: the simulator on one grid (time limit)
                rec.attempt(f"hard_voxelize_batch[{gname}]", hard_batch)
            rec.attempt(f"dynamic_voxelize[{gname}]", dynamic)
            if gpu:
                def time_it(gname=gname, kw=kw, grid=grid):
                    pts = torch.from_numpy(cloud).cuda()
                    t = {"cuda_torch": _median_time(lambda: vx.hard_voxelize(pts, **kw), 10, sync),
                         "numba_cpu": _median_time(lambda: vx.hard_voxelize(cloud, impl="numba", **kw), 5),
                         "dynamic_cuda_torch": _median_time(lambda: vx.dynamic_voxelize(pts, **grid), 10, sync),
                         "dynamic_numba_cpu": _median_time(lambda: vx.dynamic_voxelize(cloud, impl="numba", **grid), 5)}
                    if spconv[0] is not None:
                        gen = spconv[0](kw, cloud.shape[1])
                        t["spconv_gpu"] = _median_time(lambda: gen(pts), 10, sync)
                    timings[f"hard_voxelize[{gname}]"] = t
                rec.attempt(f"time[{gname}]", time_it)
        finally:
            vx.DENSE_TABLE_MAX_CELLS = dense_max

    # BEV pooling: nuScenes-config sizes on the GPU (6 cameras x 118 depth bins x 16 x 44 cells,
    # 80 channels, 128 x 128 BEV); a few hundred points under the simulator.
    g = torch.Generator().manual_seed(0)
    P, C, B, H, W = (6 * 118 * 16 * 44, 80, 1, 128, 128) if gpu else (150, 3, 2, 4, 5)
    coords = torch.stack([torch.randint(0, B + (0 if gpu else 1), (P,), generator=g),
                          torch.randint(-8 if gpu else -1, H + (8 if gpu else 1), (P,), generator=g),
                          torch.randint(-8 if gpu else -1, W + (8 if gpu else 1), (P,), generator=g)], 1)
    coords[: P // 4, 1:] = torch.tensor([H // 2, W // 3])  # a crowded cell: a long interval
    feats = torch.randn(P, C, generator=g)
    grad_out = torch.randn(B, C, H, W, generator=g)
    f_ref = feats.clone().requires_grad_(True)
    ref_out = bp.bev_pool_reference(f_ref, coords, B, (H, W))
    (ref_grad,) = torch.autograd.grad(ref_out, f_ref, grad_out)
    rec.metrics["bev_pool_case"] = {"points": P, "channels": C, "batch": B, "grid_hw": [H, W]}

    def pool_cpu():
        geom = bp.bev_pool_geometry(coords, B, (H, W))
        f = feats.clone().requires_grad_(True)
        out = bp.bev_pool(f, geom)
        (gr,) = torch.autograd.grad(out, f, grad_out)
        rec.check("bev_pool numba CPU forward == index_add reference", compare_exact([out], [ref_out])["equal"])
        rec.check("bev_pool numba CPU backward == reference", compare_exact([gr], [ref_grad])["equal"])

    def pool_cuda():
        if gpu:
            geom = bp.bev_pool_geometry(coords.cuda(), B, (H, W))
            f = feats.cuda().requires_grad_(True)
            out = bp.bev_pool(f, geom)  # autograd function: external stream, as_cuda_array, torch outputs
            (gr,) = torch.autograd.grad(out, f, grad_out.cuda())
        else:
            geom = bp.bev_pool_geometry(coords, B, (H, W))
            rows = torch.zeros(B * H * W, C)
            gr = torch.full((P, C), float("nan"))
            go_rows = grad_out.permute(0, 2, 3, 1).contiguous().view(B * H * W, C)
            with _simulator_torch_shim():
                # features that require grad, as the autograd function passes them on the GPU
                bp.bev_pool_forward_cuda(bp._dev(feats.clone().requires_grad_(True)), bp._dev(geom.order),
                                         bp._dev(geom.interval_starts), bp._dev(geom.interval_lengths),
                                         bp._dev(geom.interval_cells), bp._dev(rows), stream=0)
                bp.bev_pool_backward_cuda(bp._dev(go_rows), bp._dev(geom.point_cells), bp._dev(gr), stream=0)
            out = rows.view(B, H, W, C).permute(0, 3, 1, 2)
        out, gr = _inject("bev_pool", [out.detach(), gr.detach()])
        fwd = compare_close(out, ref_out.detach(), 1e-5)
        rec.check("bev_pool cuda forward == reference (1e-5)", fwd["close"], **fwd)
        rec.check("bev_pool cuda backward == reference (exact: a gather)", **_exact_detail([gr], [ref_grad]))
        if gpu:
            timings["bev_pool"] = {
                "cuda_forward_backward": _median_time(
                    lambda: torch.autograd.grad(bp.bev_pool(f, geom), f, grad_out.cuda()), 10, sync),
                "numba_cpu_forward": _median_time(lambda: bp.bev_pool(feats, bp.bev_pool_geometry(coords, B, (H, W))), 3)}

    rec.attempt("bev_pool_cpu", pool_cpu)
    rec.attempt("bev_pool_cuda", pool_cuda)

    def nms():
        from perception.ops import circle_nms, circle_nms_reference, rotated_nms_bev, rotated_nms_bev_reference

        rng = np.random.default_rng(0)
        n = 300 if gpu else 60
        boxes = np.zeros((n, 9))
        boxes[:, :2] = rng.uniform(-20, 20, (n, 2))
        boxes[: n // 2, :2] = rng.uniform(-20, 20, (8, 2))[rng.integers(0, 8, n // 2)] + rng.normal(0, 1, (n // 2, 2))
        boxes[:, 3:6] = rng.uniform(0.5, 5, (n, 3))
        boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
        scores = rng.random(n)
        a = _inject("nms", [circle_nms(boxes, scores, 1.0)])[0]
        rec.check("circle_nms numba CPU == reference (no CUDA twin)",
                  np.array_equal(a, circle_nms_reference(boxes, scores, 1.0)), kept=int(len(a)))
        b = rotated_nms_bev(boxes, scores, 0.2)
        rec.check("rotated_nms_bev numba CPU == reference (no CUDA twin)",
                  np.array_equal(b, rotated_nms_bev_reference(boxes, scores, 0.2)), kept=int(len(b)))
    rec.attempt("nms", nms)
    rec.notes.append("NMS has no CUDA twin: decode runs it on the host (its time is in the inference part's decode).")


def _exact_detail(got, want) -> dict:
    d = compare_exact(got, want)
    return {"ok": d["equal"], "mismatched_elements": d["mismatched_elements"], "shapes_match": d["shapes_match"]}


def _spconv_gpu():
    try:
        import torch
        from spconv.pytorch.utils import PointToVoxel
    except Exception as e:  # an optional comparison, never a dependency
        return None, f"spconv not installed ({type(e).__name__}); column skipped"

    def make(kw, C):
        gen = PointToVoxel(vsize_xyz=kw["voxel_size"], coors_range_xyz=kw["point_cloud_range"],
                           num_point_features=C, max_num_voxels=kw["max_voxels"],
                           max_num_points_per_voxel=kw["max_points_per_voxel"], device=torch.device("cuda"))
        return lambda pts: gen(pts, empty_mean=False)
    return make, "spconv PointToVoxel (GPU)"




# ----------------------------------------------------------------------------------------------
# Part 2: inference
# ----------------------------------------------------------------------------------------------
def _save_state(model, path: str) -> str:
    import torch

    from perception.fileio import atomic_write

    return atomic_write(path, lambda f: torch.save({"model": model.state_dict()}, f))


def _real_batches(cfg, n: int):
    from perception.data.batch import collate, frame_to_sample
    from perception.data.nuscenes_source import NuScenesSource
    from perception.sync.synchronizer import FrameBuilder

    source = NuScenesSource(REAL_ROOT, VERSION)
    fb = FrameBuilder(source, source.scene_names()[-1], cfg)
    refs = fb.keyframe_references[:n]
    return [collate([frame_to_sample(fb.build(r), cfg)]) for r in refs]


def compare_detections(a, b, tol_m: float = 1e-3, score_tol: float = 1e-3, threshold: float = 0.0,
                       max_boxes: Optional[int] = None) -> dict:
    """Detections of two runs (lists of Detections per frame) agree: every box of either side scoring
    more than ``threshold + score_tol`` has a box of the same class on the other side whose centre is
    within ``tol_m`` and whose score is within ``score_tol``. Boxes at a cut may fall on either side of
    it by rounding: the threshold, and the other side's lowest score when it holds ``max_boxes``."""
    import numpy as np

    n, worst, worst_size, unmatched = 0, 0.0, 0.0, 0
    for da, db in zip(a, b):
        for x, y in ((da.boxes, db.boxes), (db.boxes, da.boxes)):
            cut = threshold + score_tol
            if max_boxes and len(y.scores) >= max_boxes:
                cut = max(cut, float(y.scores.min()) + score_tol)
            for i in np.flatnonzero(x.scores > cut):
                same = np.flatnonzero(y.labels == x.labels[i])
                if not len(same):
                    unmatched += 1
                    continue
                d = np.linalg.norm(y.boxes[same, :3] - x.boxes[i, :3], axis=1)
                j = same[int(np.argmin(d))]
                n += 1
                worst = max(worst, float(d.min()))
                worst_size = max(worst_size, float(np.abs(y.boxes[j, 3:6] - x.boxes[i, 3:6]).max()))
                if d.min() > tol_m or abs(float(y.scores[j]) - float(x.scores[i])) > score_tol:
                    unmatched += 1
    return {"agree": unmatched == 0 and n > 0, "boxes_compared": n, "unmatched": unmatched,
            "max_centre_diff_m": worst, "max_size_diff_m": worst_size, "tolerance_m": tol_m}


def _random_model(cfg, batch=None, cells_per_task: int = 100):
    """The config's model with seeded random weights whose heatmap scores spread over (0, 1).

    A freshly initialized CenterPoint head scores every cell at sigmoid(bias) ~ 0.1, all within
    1e-3 of each other: the top-k cut and the threshold would then pick different cells on two
    devices by rounding alone, and a GPU/CPU comparison of boxes would compare nothing. The heatmap
    convolutions' weights are redrawn (std 2 / sqrt(fan in)); with ``batch``, they are scaled to a
    logit spread of 2 on that batch and each task's bias set so that about ``cells_per_task`` cells
    score above the config's threshold: fewer than the decoder's top-k, so the threshold is the one
    cut that matters."""
    import math

    import torch

    from perception.models.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    heat = {n: p for n, p in model.head.named_parameters() if n.startswith("heatmap.")}
    with torch.no_grad():
        for name, p in heat.items():
            if name.endswith(".weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel() ** 0.5))
            else:
                p.zero_()
        if batch is not None:
            thr = cfg.model.head.score_threshold
            for t, pred in enumerate(model(batch)):
                # Logits are linear in the (bias-free) weights: scale them to a spread of 2 (random
                # BEV features are small and nearly uniform), then shift by the bias.
                logits = pred["heatmap"].float().flatten()
                scale = 2.0 / max(float(logits.std()), 1e-12)
                heat[f"heatmap.{t}.weight"].mul_(scale)
                kth = float(logits.topk(min(cells_per_task, logits.numel())).values[-1]) * scale
                heat[f"heatmap.{t}.bias"].fill_(math.log(thr / (1 - thr)) - kth)
    return model


def _maps_and_detections(model, batch):
    """(head maps per task on the host, Detections of the first sample) of one forward pass."""
    import torch

    with torch.no_grad():
        preds = model(batch)
        dets = model.head.decode(preds, batch.sample_tokens, batch.timestamps)
    return [{k: v.float().cpu() for k, v in p.items()} for p in preds], dets[0]


def _staged_ms(model, batch_cpu, device, amp: Optional[str], sync) -> Dict[str, float]:
    """One frame's stages, each synchronized: transfer, voxelize, lidar (incl. its voxelize), camera,
    radar, fusion, head, decode."""
    import torch

    from perception.models.lidar.pointpillars import voxelize_batch

    t: Dict[str, float] = {}

    def timed(name, fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        t[name] = round(1e3 * (time.perf_counter() - t0), 3)
        return out

    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        b = timed("to_device", lambda: batch_cpu.to(device))
        feats = [None, None, None]
        if model.lidar is not None:
            lc = model.lidar
            pts = [p[:, list(lc.POINT_COLUMNS)].float() for p in b.lidar_points]
            timed("voxelize", lambda: voxelize_batch(pts, lc.voxel_size, lc.point_cloud_range, lc.max_points,
                                                     lc.max_voxels[1]))
            feats[0] = timed("lidar", lambda: model.lidar(b.lidar_points))
        if model.camera is not None:
            feats[1] = timed("camera", lambda: model.camera(b.images, b.intrinsics, b.img_aug, b.T_ego_from_cam,
                                                            b.camera_mask))
        if model.radar is not None:
            feats[2] = timed("radar", lambda: model.radar(b.radar_points))
        present = b.modality_mask.clone().bool()
        for m, f in enumerate(feats):
            if f is None:
                present[:, m] = False
        fused = timed("fusion", lambda: model.fusion(feats, present))
        preds = timed("head", lambda: model.head(fused, b.ego_velocity))
        timed("decode", lambda: model.head.decode(preds, b.sample_tokens, b.timestamps))
    return t


def _precision_agreement(model, batches, device, precision: str) -> dict:
    """``precision`` against fp32 on ``batches`` (the model's precision flag, as tools/eval.py --precision):
    the largest head-map difference per map name and how many fp32 boxes (score >= 0.1) bf16 matches."""
    from perception.deploy.precision import autocast, compare_detections, compare_maps, float_maps

    out = {"boxes": 0, "matched": 0, "max_score_diff": 0.0, "max_map_diff": {}}
    import torch

    with torch.no_grad():
        for b in batches:
            b = b.to(device)
            ref = model(b)
            with autocast(precision, device):
                low = float_maps(model(b))
            for k, d in compare_maps(ref, low).items():
                out["max_map_diff"][k] = round(max(out["max_map_diff"].get(k, 0.0), d), 5)
            c = compare_detections(model.head.decode(ref, b.sample_tokens, b.timestamps)[0],
                                   model.head.decode(low, b.sample_tokens, b.timestamps)[0])
            out["boxes"] += c["boxes"]
            out["matched"] += c["matched"]
            out["max_score_diff"] = round(max(out["max_score_diff"], c["max_score_diff"]), 5)
    return out


def part_inference(rec: Recorder, args) -> None:
    import numpy as np
    import torch

    from perception.config import load_config
    from perception.eval.evaluate import load_checkpoint_into
    from perception.models.build import build_model

    gpu = rec.mode == "gpu"
    out_dir = os.path.join(args.out, "inference")
    configs = [("tiny", TINY_CFG, []), ("nuscenes", NUSC_CFG, NUSC_SET)] if gpu else [("tiny", TINY_CFG, _cpu_set(rec.mode))]
    if not gpu:
        # The nuScenes config (ResNet-50 on six 256 x 704 images, 512 x 512 pillars) costs seconds per
        # frame on two cores: in CPU mode it is built (config and model construction) but not run.
        def build_only():
            cfg = load_config(NUSC_CFG, NUSC_SET)
            m = build_model(cfg)
            rec.check("nuscenes config builds (not run in CPU mode)", True,
                      parameters_m=round(sum(p.numel() for p in m.parameters()) / 1e6, 2))
        rec.attempt("nuscenes_build", build_only)
    device = torch.device("cuda" if gpu else "cpu")
    sync = (lambda: torch.cuda.synchronize()) if gpu else (lambda: None)
    n_frames = 12 if gpu else 1
    warm, staged_frames = (2, 4) if gpu else (0, 1)
    per_config: Dict[str, dict] = {}
    rec.metrics["configs"] = per_config

    for name, path, sets in configs:
        res: Dict[str, object] = {"config": os.path.relpath(path, PROJECT), "frames": n_frames}
        per_config[name] = res

        def run(name=name, path=path, sets=sets, res=res):
            with rec.phase(f"{name}: build frames"):
                cfg = load_config(path, sets)
                batches = _real_batches(cfg, n_frames)
            model = _random_model(cfg, batches[0])
            ckpt = _save_state(model, os.path.join(out_dir, f"{name}_random_init.pt"))
            # The same checkpoint on both sides: loaded, not shared in memory.
            ref = build_model(cfg).eval()
            load_checkpoint_into(ref, ckpt)
            dut = build_model(cfg)
            load_checkpoint_into(dut, ckpt)
            dut = dut.to(device).eval()
            res["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
            with rec.phase(f"{name}: agreement fp32"):
                # Strict fp32 for the comparison (TF32 matmul/conv would differ by ~1e-3 relative).
                tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                try:
                    a = [_maps_and_detections(ref, b) for b in batches[:2]]
                    d = [_maps_and_detections(dut, b.to(device)) for b in batches[:2]]
                finally:
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
                res["head_maps_max_abs_diff"] = max(float((ma[k] - mb[k]).abs().max()) for (pa, _), (pb, _) in zip(a, d)
                                                    for ma, mb in zip(pa, pb) for k in ma)
                agree = compare_detections([x[1] for x in a], [x[1] for x in d],
                                           threshold=cfg.model.head.score_threshold,
                                           max_boxes=cfg.model.head.max_objects)
                agree["boxes_per_frame"] = [len(x[1].boxes.scores) for x in a]
                res["agreement"] = agree
                rec.check(f"{name}: detections {'GPU' if gpu else 'reloaded'} vs CPU agree (1e-3 m, fp32)",
                          agree["agree"], **agree)
            for amp in ("fp32", "bf16"):
                with rec.phase(f"{name}: timing {amp}"):
                    # the model's precision flag: the path of tools/eval.py --precision (autocast, float32 decode)
                    dut.precision = amp
                    if gpu:
                        torch.cuda.reset_peak_memory_stats()
                    for b in batches[:warm]:  # warm-up: numba.cuda compilation, cuDNN autotuning, allocator
                        dut.predict(b.to(device))
                    sync()
                    ts, finite = [], True
                    for b in batches:
                        t0 = time.perf_counter()
                        dets = dut.predict(b.to(device))
                        sync()
                        ts.append(time.perf_counter() - t0)
                        finite = finite and all(np.isfinite(d.boxes.boxes).all() for d in dets)
                    stages = [_staged_ms(dut, b, device, amp if amp == "bf16" else None, sync) for b in batches[:staged_frames]]
                    entry = {"frames_per_s": round(1.0 / float(np.median(ts)), 2),
                             "median_ms": round(1e3 * float(np.median(ts)), 2),
                             "stage_median_ms": {s: round(float(np.median([x[s] for x in stages])), 3) for s in stages[0]},
                             "detections_finite": bool(finite)}
                    if gpu:
                        entry["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    res[amp] = entry
                    dut.precision = "fp32"
                    rec.check(f"{name}: {amp} inference finite", finite, frames_per_s=entry["frames_per_s"])
            with rec.phase(f"{name}: bf16 vs fp32"):
                res["bf16"]["vs_fp32"] = v = _precision_agreement(dut, batches[:2], device, "bf16")
                # random weights: peaks near the threshold may swap in bf16; a broken path matches nothing
                rec.check(f"{name}: bf16 detections agree with fp32 (>= 80% of boxes scoring >= 0.1: same class, "
                          f"centre within 0.5 m)", v["matched"] >= 0.8 * v["boxes"], **v)
            if gpu and name == "nuscenes":
                res["fps_goal"] = FPS_GOAL
                res["fps_goal_met_bf16"] = res["bf16"]["frames_per_s"] >= FPS_GOAL
                res["fps_goal_met_fp32"] = res["fp32"]["frames_per_s"] >= FPS_GOAL
        rec.attempt(f"{name}", run)
    rec.notes.append("End-to-end frames/s: host batch -> device, voxelization, model, decode with NMS, "
                     "synchronized; frame building (file reading, sync) is the data part's cost and excluded. "
                     "Weights are random (same checkpoint on both sides); the fps goal is reported, not a pass/fail.")


# ----------------------------------------------------------------------------------------------
# Part 3: training
# ----------------------------------------------------------------------------------------------
def _synthetic_root(out_dir: str, gpu: bool, rec: Recorder, quick: bool = False) -> str:
    from perception.data.synthetic import generate, preset

    root = os.path.join(out_dir, "synthetic_quick" if quick else "synthetic")
    stamp = os.path.join(root, ".complete")
    if not os.path.isfile(stamp):
        shutil.rmtree(root, ignore_errors=True)
        with rec.phase("generate synthetic root"):
            # 'tiny' sensors (192 x 108 images, 256 azimuth steps); GPU: three 6 s train scenes.
            # --quick: one 2 s train scene (4 keyframes) and no val scene (the part trains only).
            cfg = preset("tiny", train_scenes=3 if gpu else 1, val_scenes=0 if quick else 1,
                         duration_s=6.0 if gpu else 2.0 if quick else 3.0,
                         workers=min(4, os.cpu_count() or 1) if gpu else 1)
            generate(root, cfg, seed=0)
        open(stamp, "w").close()
    return root


def _losses_from_log(work: str) -> List[dict]:
    with open(os.path.join(work, "log.jsonl")) as f:
        return [r for r in (json.loads(l) for l in f if l.strip()) if "loss" in r and "step" in r]


def part_train(rec: Recorder, args) -> None:
    import numpy as np
    import torch

    from perception.config import load_config
    from perception.engine import checkpoint as ckpt
    from perception.engine.trainer import train

    gpu = rec.mode == "gpu"
    out_dir = os.path.join(args.out, "train")
    quick = _quick(rec.mode)
    root = _synthetic_root(out_dir, gpu, rec, quick)
    steps = 60 if gpu else 6
    half = steps // 2
    cfg_path, sets = (NUSC_CFG, list(NUSC_SET)) if gpu else (TINY_CFG, _cpu_set(rec.mode))
    workers = max(0, min(6, (os.cpu_count() or 2) - 2)) if gpu else 0
    sets += ["train.amp=bf16", "train.log_every=1", f"train.checkpoint_every={half}", "train.keep_last=5",
             f"train.num_workers={workers}", f"train.cache_dir={os.path.join(out_dir, 'cache')}"]
    if not gpu:
        sets += ["train.batch_size=1"]
    cfg = load_config(cfg_path, sets)
    rec.metrics.update({"config": os.path.relpath(cfg_path, PROJECT), "steps": steps, "batch_size": cfg.train.batch_size,
                        "amp": cfg.train.amp, "num_workers": workers, "dataroot": root, "quick": quick})
    work_a, work_b = os.path.join(out_dir, "run"), os.path.join(out_dir, "resumed")

    def run_a():
        shutil.rmtree(work_a, ignore_errors=True)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        with rec.phase("train (bf16)"):
            summary = train(cfg, root, VERSION, work_a, max_steps=steps, progress=False)
        losses = summary["losses"]
        recs = _losses_from_log(work_a)
        timed = recs[3:] if len(recs) > 6 else recs[1:]
        per_step = [r["data_time_s"] + r["compute_time_s"] for r in timed]
        k = max(2, len(losses) // 5)
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        rec.metrics["run"] = {
            "steps_done": summary["step"], "loss_first_mean": round(first, 4), "loss_last_mean": round(last, 4),
            "samples_per_s": round(cfg.train.batch_size * len(per_step) / max(sum(per_step), 1e-9), 2),
            "data_wait_s_per_step": round(float(np.mean([r["data_time_s"] for r in timed])), 4),
            "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
            "losses": [round(float(x), 4) for x in losses]}
        rec.check("train: steps done", summary["step"] == steps, steps=summary["step"])
        rec.check("train: loss finite", bool(np.all(np.isfinite(losses))))
        rec.check("train: loss falling (mean of the last fifth < first fifth)", last < first,
                  first=round(first, 4), last=round(last, 4))

    def resume():
        mid = os.path.join(ckpt.checkpoint_dir(work_a), f"ckpt_{half:08d}.pt")
        if not os.path.isfile(mid):
            raise FileNotFoundError(f"{mid}: the mid-run checkpoint of the first run is missing")
        shutil.rmtree(work_b, ignore_errors=True)
        os.makedirs(ckpt.checkpoint_dir(work_b))
        shutil.copy2(mid, ckpt.checkpoint_dir(work_b))
        with rec.phase("resume from mid-run checkpoint"):
            summary = train(cfg, root, VERSION, work_b, max_steps=steps, resume=True, progress=False)
        with open(os.path.join(work_b, "log.jsonl")) as f:
            start = next(r for r in (json.loads(l) for l in f if l.strip()) if r.get("event") == "start")
        a_last = rec.metrics.get("run", {}).get("losses", [None])[-1]
        b_losses = summary["losses"]
        rec.metrics["resume"] = {"resumed_at_step": start.get("step"), "steps_done": summary["step"],
                                 "last_loss": round(float(b_losses[-1]), 4) if b_losses else None,
                                 "last_loss_uninterrupted": a_last}
        rec.check("resume: continued from the mid-run step to the end", start.get("step") == half
                  and summary["step"] == steps and len(b_losses) == steps - half,
                  resumed_at=start.get("step"), steps=summary["step"])
        rec.check("resume: loss finite", bool(np.all(np.isfinite(b_losses))))

    def distributed():
        n = min(2, torch.cuda.device_count()) if gpu else 1
        res_path = os.path.join(out_dir, "ddp_worker.json")
        if os.path.exists(res_path):
            os.unlink(res_path)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               os.path.abspath(__file__), "--ddp-worker", "--mode", rec.mode, "--out", args.out,
               "--dataroot", root, "--worker-result", res_path]
        with rec.phase("torchrun worker"):
            r = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not os.path.isfile(res_path):
            # torchrun's own summary ends the output; the worker's exception is the last "...Error:" line
            lines = (r.stderr + r.stdout).strip().splitlines()
            errors = [ln.strip() for ln in lines if "Error:" in ln or "Exception:" in ln]
            sys.stderr.write(r.stderr[-6000:])  # the worker's traceback into this part's log
            raise RuntimeError(f"torchrun exit {r.returncode}: {errors[-1] if errors else lines[-3:]}")
        with open(res_path) as f:
            w = json.load(f)
        rec.metrics["torchrun"] = w
        rec.check(f"torchrun: {w['world_size']} process(es), backend {w['backend']}, "
                  f"{w['converted_norm_layers']} {w['norm_type']} layers, DDP steps finite",
                  w["backend"] == ("nccl" if gpu else "gloo") and w["converted_norm_layers"] > 0
                  and w["all_reduce_ok"] and w["losses_finite"], **{k: w[k] for k in ("losses", "syncbn_syncs")})
        if w["world_size"] == 1:
            rec.notes.append("torchrun ran one process: the process group, DDP's NCCL all-reduce and the "
                             "SyncBatchNorm modules ran, but SyncBatchNorm synchronizes only with 2+ processes "
                             "(NCCL refuses two ranks on one GPU), so its cross-process statistics path did not.")

    rec.attempt("train", run_a)
    rec.attempt("resume", resume)
    rec.attempt("torchrun", distributed)


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies. torchrun starts its workers in sessions of
    their own, so a torchrun killed at the part's time limit would otherwise leave them running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def ddp_worker(args) -> int:
    """Under torchrun: a process group of its own (the trainer starts none for one process), the
    model's batch norms converted as the trainer does under DDP, three bf16 DDP steps."""
    _die_with_parent()
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from perception.config import load_config
    from perception.engine.dataset import TrainDataset, build_index, collate_samples
    from perception.engine.distributed import convert_batchnorm
    from perception.engine.trainer import _autocast, build_optimizer, compute_losses
    from perception.models.build import build_model

    gpu = args.mode == "gpu"
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if gpu:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpu else "gloo")
    device = torch.device(f"cuda:{local}" if gpu else "cpu")
    cfg_path, sets = (NUSC_CFG, list(NUSC_SET)) if gpu else (TINY_CFG, _cpu_set(args.mode))
    cfg = load_config(cfg_path, sets + ["train.amp=bf16"])
    plans = build_index(args.dataroot, VERSION, cfg.train.split, cfg, os.path.join(args.out, "train", "cache"))
    ds = TrainDataset(plans, cfg, augment=True, seed=rank)
    torch.manual_seed(0)
    model = convert_batchnorm(build_model(cfg), gpu).to(device)
    norm_type = "SyncBatchNorm" if gpu else "AllReduceBatchNorm"
    n_norm = sum(type(m).__name__ == norm_type for m in model.modules())
    ddp = DDP(model, device_ids=[local] if gpu else None, find_unused_parameters=cfg.train.find_unused_parameters)
    opt = build_optimizer(model, cfg)
    ddp.train()
    losses = []
    bs = 2 if gpu else 1
    for step in range(3 if gpu else 2):
        lb = collate_samples([ds[(bs * step + i) % len(ds)] for i in range(bs)])
        batch = lb.batch.to(device)
        with _autocast("bf16", device):
            terms = compute_losses(ddp, model, batch, cfg.train.loss_reduction)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        losses.append(float(terms["total"].detach()))
    t = torch.ones(1, device=device)
    dist.all_reduce(t)
    out = {"world_size": world, "backend": dist.get_backend(), "norm_type": norm_type,
           "converted_norm_layers": int(n_norm), "losses": [round(x, 4) for x in losses],
           "losses_finite": bool(np.all(np.isfinite(losses))), "all_reduce_ok": float(t) == world,
           "syncbn_syncs": world > 1, "device": str(device)}
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        from perception.fileio import write_json_atomic

        write_json_atomic(out, args.worker_result, indent=1)
    return 0


# ----------------------------------------------------------------------------------------------
# Part 4: replay
# ----------------------------------------------------------------------------------------------
def part_replay(rec: Recorder, args) -> None:
    import torch

    from perception.config import load_config
    from perception.data.nuscenes_source import NuScenesSource
    from perception.eval.evaluate import build_detector
    from perception.models.build import build_model
    from perception.replay import Player, ReplayOptions

    gpu = rec.mode == "gpu"
    out_dir = os.path.join(args.out, "replay")
    cfg_path, sets = (NUSC_CFG, NUSC_SET) if gpu else (TINY_CFG, _cpu_set(rec.mode))
    n = 6 if gpu else 2

    def run():
        cfg = load_config(cfg_path, sets)
        ck = _save_state(_random_model(cfg), os.path.join(out_dir, "random_init.pt"))
        det = build_detector(cfg, ck)  # on the GPU when there is one
        rec.check(f"replay: model on {'cuda' if gpu else 'cpu'}", det.device.type == ("cuda" if gpu else "cpu"),
                  device=str(det.device))
        source = NuScenesSource(REAL_ROOT, VERSION)
        scene = source.scene_names()[-1]
        out_json = os.path.join(out_dir, "replay.json")
        opts = ReplayOptions(reference="keyframes", max_frames=n, out_video=os.path.join(out_dir, "replay.mp4"),
                             out_json=out_json, headless=True, renderer="software")
        with rec.phase("player"):
            s = Player(source, scene, cfg, det, opts).run()
        rec.metrics.update({"config": os.path.relpath(cfg_path, PROJECT), "scene": scene, "frames": s.frames,
                            "fps": round(s.fps, 2), "mean_ms": {k: round(v, 2) for k, v in s.mean_ms.items()}})
        rec.check("replay: frames played", s.frames == n, frames=s.frames)
        rec.check("replay: the model ran on every frame (model stage timed)", s.mean_ms.get("model", 0) > 0,
                  model_ms=round(s.mean_ms.get("model", 0), 2))
    rec.attempt("replay", run)


PART_FNS = {"kernels": part_kernels, "inference": part_inference, "train": part_train, "replay": part_replay}


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------
def _environment() -> dict:
    env: Dict[str, object] = {"python": platform.python_version(), "machine": platform.machine(),
                              "cpu_count": os.cpu_count(), "host": platform.node()}
    try:
        from importlib import metadata

        for pkg in ("torch", "numba", "numba-cuda", "llvmlite", "cuda-bindings", "nvidia-nvvm", "spconv"):
            try:
                env[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                env[pkg] = None
    except Exception as e:
        env["packages_error"] = str(e)
    smi = shutil.which("nvidia-smi")
    env["nvidia_smi"] = bool(smi)
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            env["gpus"] = [l.strip() for l in r.stdout.splitlines() if l.strip()]
        except Exception as e:
            env["gpus_error"] = str(e)
    try:
        import torch

        env["torch_cuda_build"] = torch.version.cuda
        env["torch_cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name(0)
            env["torch_device_count"] = torch.cuda.device_count()
    except Exception as e:
        env["torch_error"] = f"{type(e).__name__}: {e}"
    return env


def _run_part_process(part: str, mode: str, out: str, limit: int, extra_env: Dict[str, str]) -> dict:
    """The part in its own process group, killed with its children when it runs past ``limit``."""
    log_path = os.path.join(out, "logs", f"{part}.log")
    res_path = os.path.join(out, "parts", f"{part}.json")
    if os.path.exists(res_path):
        os.unlink(res_path)
    env = dict(os.environ, **extra_env)
    if part == "kernels" and mode == "cpu":
        env["NUMBA_ENABLE_CUDASIM"] = "1"  # read by numba at import: hence a process per part
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--mode", mode, "--out", out]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            # The part's own group (its loader workers, torchrun): SIGTERM first, which torchrun
            # forwards to its workers, then SIGKILL.
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    rc = proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group after the part exited
    wall = time.perf_counter() - t0
    result = None
    if os.path.isfile(res_path):
        with open(res_path) as f:
            result = json.load(f)
    if result is None or timed_out or not result.get("complete"):
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:].strip().splitlines()[-8:]
        result = dict(result or {"part": part, "mode": mode, "checks": [], "metrics": {}, "phases_s": {}, "notes": []})
        result["status"] = "failed"
        result["error"] = (f"time limit {limit} s reached: killed" if timed_out
                           else f"exit status {rc} before the part completed (crash)")
        result["log_tail"] = tail
    result["process_wall_s"] = round(wall, 3)
    result["limit_s"] = limit
    result["log"] = os.path.relpath(log_path, out)
    return result


def _markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [f"# GPU check ({summary['mode']} mode): {summary['status']}", "",
             f"- when: {summary['started']}, {summary['wall_s']:.1f} s in all"
             + (" (--quick: micro model, 2 s synthetic drive)" if summary.get("quick") else ""),
             f"- device: {env.get('torch_device') or 'none (CPU mode: numba.cuda kernels under the simulator)'}; "
             f"GPUs by nvidia-smi: {env.get('gpus') or 'none'}",
             f"- torch {env.get('torch')} (CUDA build {env.get('torch_cuda_build')}), numba {env.get('numba')}, "
             f"numba-cuda {env.get('numba-cuda')}, nvidia-nvvm {env.get('nvidia-nvvm')}", ""]
    for p in summary.get("environment_problems", []):
        lines.append(f"- **environment problem**: {p}")
    lines += ["", "| part | status | seconds | limit | checks failed |", "| --- | --- | ---: | ---: | --- |"]
    for name, r in summary["parts"].items():
        failed = [c["name"] for c in r.get("checks", []) if not c["ok"]]
        lines.append(f"| {name} | {r['status']} | {r.get('process_wall_s', 0):.1f} | {r.get('limit_s')} | "
                     f"{'; '.join(failed) or r.get('error', '') or '-'} |")
    lines += ["", "## Where the time went", ""]
    for name, r in summary["parts"].items():
        ph = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r.get("phases_s", {}).items(), key=lambda kv: -kv[1]))
        lines.append(f"- {name}: {r.get('process_wall_s', 0):.1f} s ({ph or 'no phases recorded'})")
    inf = summary["parts"].get("inference", {}).get("metrics", {}).get("configs", {})
    if inf:
        lines += ["", "## Inference", "", "| config | precision | frames/s | median ms | peak GPU MB | stages (median ms) |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for cname, c in inf.items():
            for amp in ("fp32", "bf16"):
                e = c.get(amp)
                if e:
                    lines.append(f"| {cname} | {amp} | {e['frames_per_s']} | {e['median_ms']} | "
                                 f"{e.get('peak_gpu_memory_mb', '-')} | "
                                 f"{', '.join(f'{k} {v}' for k, v in e['stage_median_ms'].items())} |")
            if "fps_goal" in c:
                lines.append(f"| {cname} | goal | >= {c['fps_goal']} | | | met: bf16 {c['fps_goal_met_bf16']}, "
                             f"fp32 {c['fps_goal_met_fp32']} |")
    lines += ["", "## Checks", ""]
    for name, r in summary["parts"].items():
        for c in r.get("checks", []):
            extra = {k: v for k, v in c.items() if k not in ("name", "ok")}
            lines.append(f"- {name}: {'ok' if c['ok'] else '**FAIL**'} {c['name']}" + (f" `{json.dumps(extra)}`" if extra else ""))
        for n in r.get("notes", []):
            lines.append(f"- {name} note: {n}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default=os.path.join(PROJECT, "work", "gpu_check"))
    ap.add_argument("--mode", default="auto", choices=("auto", "gpu", "cpu"))
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--quick", action="store_true",
                    help="CPU mode: the same parts on a micro model and a 2 s synthetic drive (the test's run)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: one part, in this process
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # internal: under torchrun
    ap.add_argument("--dataroot", help=argparse.SUPPRESS)
    ap.add_argument("--worker-result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.out = os.path.abspath(a.out)

    if a.ddp_worker:
        return ddp_worker(a)
    if a.part:
        rec = Recorder(a.part, a.mode, os.path.join(a.out, "parts", f"{a.part}.json"))
        try:
            PART_FNS[a.part](rec, a)
        except Exception as e:  # the part's setup failed: recorded, the parent reports it
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            rec.check(f"{a.part}: setup", False, error=f"{type(e).__name__}: {e}", where=_where(tb))
        rec.save(final=True)
        return 0

    from perception.fileio import write_json_atomic, write_text_atomic

    t_all = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "parts"), exist_ok=True)
    env = _environment()
    mode = a.mode if a.mode != "auto" else ("gpu" if env.get("torch_cuda_available") else "cpu")
    quick = a.quick and mode == "cpu"
    if quick:
        os.environ[QUICK_ENV] = "1"  # inherited by the part processes
    else:
        os.environ.pop(QUICK_ENV, None)
    problems = []
    if env.get("nvidia_smi") and not env.get("torch_cuda_available"):
        problems.append(f"nvidia-smi sees {env.get('gpus')} but torch {env.get('torch')} has no CUDA "
                        f"(build {env.get('torch_cuda_build')}): a CPU build, or a driver older than that build needs")
    if mode == "gpu" and not env.get("torch_cuda_available"):
        problems.append("--mode gpu without a CUDA device")
    print(f"gpu_check: {mode} mode{' (quick)' if quick else ''}; {env.get('torch_device') or 'no CUDA device'}; "
          f"out {a.out}" + ("; --quick ignored in GPU mode" if a.quick and not quick else ""), flush=True)
    for p in problems:
        print(f"gpu_check: ENVIRONMENT PROBLEM: {p}", flush=True)

    parts: Dict[str, dict] = {}
    for part in a.parts:
        limit = LIMITS[mode][part]
        print(f"gpu_check: part {part} (limit {limit} s) ...", flush=True)
        r = _run_part_process(part, mode, a.out, limit, {})
        parts[part] = r
        failed = [c["name"] for c in r.get("checks", []) if not c["ok"]]
        print(f"gpu_check: part {part}: {r['status']} in {r['process_wall_s']:.1f} s"
              + (f"; failed: {'; '.join(failed)}" if failed else "") + (f"; {r['error']}" if r.get("error") else ""),
              flush=True)
    status = "passed" if parts and not problems and all(r["status"] == "passed" for r in parts.values()) else "failed"
    summary = {"status": status, "mode": mode, "quick": quick, "started": started,
               "wall_s": round(time.perf_counter() - t_all, 3),
               "environment": env, "environment_problems": problems, "parts": parts,
               "injected": os.environ.get(INJECT_ENV), "real_root": REAL_ROOT}
    write_json_atomic(summary, os.path.join(a.out, "gpu_check.json"), indent=1, strict=False)
    write_text_atomic(_markdown(summary), os.path.join(a.out, "gpu_check.md"))
    print("\nwhere the time went:")
    for name, r in parts.items():
        ph = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.get("phases_s", {}).items(), key=lambda kv: -kv[1])[:6])
        print(f"  {name:10s} {r['process_wall_s']:7.1f} s / {r['limit_s']} s  {r['status']:7s} {ph}")
    print(f"  {'total':10s} {summary['wall_s']:7.1f} s")
    print(f"gpu_check: {status}; {os.path.join(a.out, 'gpu_check.json')} and gpu_check.md")
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
