"""Memory of the training index at scale: the old list of FramePlans vs the PlanStore, side by side.

``run_index_benchmark`` (``python tools/benchmark.py index --dataroot ROOT``):

1. build: the split's index built into the cache in a fresh process (skipped when cached, unless
   ``rebuild``): seconds (tables, total), the file's size, the builder's peak RSS;
2. per variant, in a fresh process each: the index opened from the cache as the trainer does
   (``build_index``), then
   - ``list``: materialized into a list of FramePlans (what ``build_index`` returned before),
   - ``store``: the PlanStore as returned (``os.pread`` access),
   - ``mmap``: the same file memory-mapped (``PlanStore.open(mode='mmap')``);
   CBGS's ``sample_classes`` timed over it, then one epoch (or ``max_samples``) iterated by a
   DataLoader with ``workers`` forked workers, the resident memory of the main process and of each
   worker sampled from /proc every ``interval_s``: RSS (VmRSS), PSS and USS (private clean + dirty
   pages) from ``/proc/PID/smaps_rollup``.

``load='samples'`` loads real training samples (``TrainDataset``: files read, augmentation, targets;
the config with ``model.use_camera=false`` unless told otherwise, so no JPEG decoding);
``load='plans'`` only decodes each plan and walks every field (what ``assemble_frame`` touches)
without reading files: the index's own memory, fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

MB = 1 << 20


def proc_memory(pid: int) -> Optional[Dict[str, float]]:
    """{'rss', 'pss', 'uss', 'anon', 'file'} in MB of a live process (Linux /proc), None if gone."""
    out: Dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kb = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    kb[parts[0][:-1]] = int(parts[1])
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    kb[line.split(":")[0]] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    out["rss"] = kb.get("Rss", 0) / 1024
    out["pss"] = kb.get("Pss", 0) / 1024
    out["uss"] = (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024
    out["anon"] = kb.get("RssAnon", 0) / 1024
    out["file"] = kb.get("RssFile", 0) / 1024
    return out


class _PlanWalk:
    """A dataset that decodes plan i and touches every field assemble_frame reads (no files)."""

    def __init__(self, plans):
        self.plans = plans

    def __len__(self):
        return len(self.plans)

    def __getitem__(self, key):
        import numpy as np
        import torch

        i = key[1] if isinstance(key, tuple) else int(key)
        p = self.plans[i]
        acc = float(p.timestamp % 1000) + float(np.sum(p.T_global_from_ego)) + float(np.sum(p.ego_velocity))
        for ch, cp in p.channels.items():
            for r in cp.reads:
                acc += len(r.path) + len(r.token) + len(r.channel) + (r.timestamp % 7) + float(r.T_ref_from_sensor[0, 3])
        for cam, (K, T, w, h) in p.cameras.items():
            acc += float(K[0, 0]) + float(T[0, 3]) + w + h
        if p.gt is not None:
            acc += float(np.sum(p.gt.boxes[:, :7])) + int(np.sum(p.gt.labels)) + sum(len(t) for t in p.gt.tokens)
        return torch.tensor([acc], dtype=torch.float64)


def _child(args: dict) -> dict:
    """One variant, in this (fresh) process; see the module doc."""
    import gc

    import numpy as np
    import torch

    from ..config import load_config
    from .dataset import (ResumableSampler, TrainDataset, build_index, collate_samples, index_path,
                          sample_classes, worker_init)
    from .plan_store import PlanStore

    from . import dataset as dataset_module

    if args.get("mmap_threshold") is not None:  # read by worker_init in the forked workers
        dataset_module.WORKER_MMAP_THRESHOLD = int(args["mmap_threshold"])
    cfg = load_config(args["config"], list(args["overrides"]))
    res: dict = {"variant": args["variant"], "load": args["load"],
                 "worker_mmap_threshold": dataset_module.WORKER_MMAP_THRESHOLD}
    res["main_at_start"] = proc_memory(os.getpid())
    t0 = time.perf_counter()
    store = build_index(args["dataroot"], args["version"], args["split"], cfg, args["cache"])
    res["open_s"] = round(time.perf_counter() - t0, 3)
    plans = store
    if args["variant"] == "mmap":
        plans = PlanStore.open(index_path(args["dataroot"], args["version"], args["split"], cfg, args["cache"]),
                               mode="mmap", verify=False)
    elif args["variant"] == "list":
        t0 = time.perf_counter()
        plans = list(store)
        res["materialize_s"] = round(time.perf_counter() - t0, 3)
    gc.collect()
    res["samples"] = len(plans)
    res["main_after_index"] = proc_memory(os.getpid())
    t0 = time.perf_counter()
    classes = sample_classes(plans, cfg)
    res["sample_classes_s"] = round(time.perf_counter() - t0, 3)
    res["sample_classes_total"] = int(sum(len(c) for c in classes))
    del classes
    gc.collect()
    res["main_before_loader"] = proc_memory(os.getpid())

    if args["load"] == "samples":
        dataset = TrainDataset(plans, cfg, augment=True, seed=0)
        collate, batch_size = collate_samples, cfg.train.batch_size
    else:
        dataset, collate, batch_size = _PlanWalk(plans), None, 16
    n = len(plans) if not args["max_samples"] else min(len(plans), int(args["max_samples"]))
    sampler = ResumableSampler(n, batch_size, seed=0, shuffle=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                         num_workers=args["workers"], collate_fn=collate,
                                         worker_init_fn=worker_init, prefetch_factor=2,
                                         multiprocessing_context="fork")
    series: List[dict] = []
    done = [0]
    stop = threading.Event()
    pids: Dict[str, int] = {"main": os.getpid()}
    start = time.perf_counter()

    def sample():
        while not stop.is_set():
            row = {"t": round(time.perf_counter() - start, 2), "done": done[0]}
            for name, pid in list(pids.items()):
                m = proc_memory(pid)
                if m is not None:
                    row[name] = {k: round(v, 1) for k, v in m.items()}
            series.append(row)
            stop.wait(args["interval_s"])

    it = iter(loader)
    for k, w in enumerate(getattr(it, "_workers", [])):
        pids[f"worker{k}"] = w.pid
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    steps = 0
    for _ in it:
        steps += 1
        done[0] = steps * batch_size
    dt = time.perf_counter() - start
    stop.set()
    th.join()
    del it, loader
    res.update(epoch_s=round(dt, 1), samples_per_s=round(steps * batch_size / dt, 1), batch_size=batch_size,
               iterated=steps * batch_size, workers=args["workers"], interval_s=args["interval_s"])
    res["processes"] = _summary(series, [p for p in pids])
    res["series"] = series[:: max(1, len(series) // 200)]
    return res


def _summary(series: List[dict], names: Sequence[str]) -> dict:
    """Per process and measure: first, at 10% of the epoch, last and max (MB), and growth from 10% to
    the end (the first samples include the worker's start-up)."""
    out = {}
    for name in names:
        rows = [r[name] for r in series if name in r]
        if not rows:
            continue
        k10 = rows[min(len(rows) - 1, len(rows) // 10)]
        out[name] = {m: {"first": rows[0][m], "at_10pct": k10[m], "last": rows[-1][m],
                         "max": max(r[m] for r in rows), "growth_after_10pct": round(rows[-1][m] - k10[m], 1)}
                     for m in ("rss", "pss", "uss", "anon", "file")}
        out[name]["samples_taken"] = len(rows)
    return out


def _build(args: dict) -> dict:
    """Build (or rebuild) the index into the cache, in this fresh process."""
    import gc
    import resource

    from ..config import load_config
    from .dataset import build_index, index_path

    cfg = load_config(args["config"], list(args["overrides"]))
    path = index_path(args["dataroot"], args["version"], args["split"], cfg, args["cache"])
    if args.get("rebuild") and os.path.exists(path):
        os.unlink(path)
    t0 = time.perf_counter()
    store = build_index(args["dataroot"], args["version"], args["split"], cfg, args["cache"])
    wall = time.perf_counter() - t0
    gc.collect()
    return {"path": path, "samples": len(store), "scenes": len(store.meta.get("scenes", [])),
            "build_s": store.meta.get("build_s"), "tables_s": store.meta.get("tables_s"),
            "wall_s": round(wall, 1), "file_mb": round(os.path.getsize(path) / MB, 1),
            "bytes_per_plan": round(store.nbytes / max(1, len(store))),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            # a big root is indexed in a spawned process (build_index): its peak
            "spawned_builder_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "rss_after_build": proc_memory(os.getpid())}


def _run_fresh(fn: str, args: dict) -> dict:
    """Run ``fn`` (_build or _child) of this module with ``args`` in a fresh interpreter."""
    import tempfile

    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as f:
        out = f.name
    code = (f"import json, sys; from perception.engine import index_benchmark as b; "
            f"r = b.{fn}(json.loads(sys.argv[1])); json.dump(r, open(sys.argv[2], 'w'))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        subprocess.run([sys.executable, "-c", code, json.dumps(args), out], check=True, env=env)
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def run_index_benchmark(dataroot: str, config: str, overrides: Sequence[str] = (), version: str = "v1.0-trainval",
                        split: str = "train", cache: Optional[str] = None, variants: Sequence[str] = ("list", "store"),
                        load: str = "samples", workers: int = 2, max_samples: int = 0, interval_s: float = 1.0,
                        rebuild: bool = False, mmap_thresholds: Optional[Sequence[int]] = None) -> dict:
    """``mmap_thresholds``: the workers' malloc mmap threshold (bytes, 0: glibc's dynamic default), one run
    per value and variant, named ``variant@threshold`` when several are given; None: the trainer's."""
    cache = cache or os.path.join(os.path.dirname(os.path.abspath(dataroot.rstrip("/"))), "cache")
    overrides = list(overrides)
    if load == "samples" and not any(o.startswith("model.use_camera") for o in overrides):
        overrides.append("model.use_camera=false")
    base = {"dataroot": os.path.abspath(dataroot), "config": config, "overrides": overrides, "version": version,
            "split": split, "cache": cache}
    res = {"dataroot": base["dataroot"], "config": config, "overrides": overrides, "split": split,
           "load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    res["build"] = _run_fresh("_build", dict(base, rebuild=rebuild))
    print(json.dumps({"build": res["build"]}), flush=True)
    res["variants"] = {}
    thresholds = list(mmap_thresholds) if mmap_thresholds else [None]
    for v in variants:
        for th in thresholds:
            name = f"{v}@{th}" if len(thresholds) > 1 else v
            r = _run_fresh("_child", dict(base, variant=v, load=load, workers=workers, max_samples=max_samples,
                                          interval_s=interval_s, mmap_threshold=th))
            res["variants"][name] = r
            print(json.dumps({name: {k: x for k, x in r.items() if k != "series"}}), flush=True)
    res["load_average_end"] = os.getloadavg()
    res["table"] = summary_table(res)
    print(res["table"])
    return res


def summary_table(res: dict) -> str:
    lines = ["| variant | open s | sample_classes s | main RSS before loader MB | per worker RSS first / 10% / last / max MB "
             "| per worker USS last MB | per worker PSS last MB | main RSS max MB | epoch s (samples/s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, r in res.get("variants", {}).items():
        p = r["processes"]
        ws = [k for k in p if k.startswith("worker")]
        rss = " ; ".join(f"{p[w]['rss']['first']:.0f} / {p[w]['rss']['at_10pct']:.0f} / {p[w]['rss']['last']:.0f} / "
                         f"{p[w]['rss']['max']:.0f}" for w in ws)
        uss = " ; ".join(f"{p[w]['uss']['last']:.0f}" for w in ws)
        pss = " ; ".join(f"{p[w]['pss']['last']:.0f}" for w in ws)
        open_s = r["open_s"] + r.get("materialize_s", 0)
        lines.append(f"| {v} | {open_s:.1f} | {r['sample_classes_s']:.1f} | {r['main_before_loader']['rss']:.0f} | "
                     f"{rss} | {uss} | {pss} | {p['main']['rss']['max']:.0f} | {r['epoch_s']:.0f} "
                     f"({r['samples_per_s']:.0f}) |")
    return "\n".join(lines)
