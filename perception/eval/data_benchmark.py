"""``tools/benchmark.py eval-data``: the evaluation data path before and after, side by side in one run.

What is timed is the data path of an evaluation with a model: planning (before: per frame through
the devkit), reading and decoding, motion compensation, the image warp and depth targets
(``frame_to_sample``) and the collation; the network is replaced by a detector that returns no box
(``NullModel``), so the accelerator's share is left out, as it is when the accelerator waits.

- reference: ``run_inference_frames`` (frame by frame in the main process), one pass;
- loader: ``run_inference_cases`` with ``workers`` processes over the cached index (its build time,
  once per root and config, reported apart), one pass;
- robustness: the 15 failure cases of ``failure_cases()`` and the all-sensors run in one loader pass,
  against 16 reference passes (measured once and multiplied: the reference re-reads every frame
  for each case).

The projection to N GPUs x W workers assumes the per-worker rate measured here (one core per
worker) and a machine with N x W cores and the storage to feed them.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import List, Optional

import numpy as np

FULL_VAL = 6019


class NullModel:
    """A model-shaped detector without a network: it needs the images, builds the model's input as
    ``ModelDetector`` does (``frame_to_sample`` + ``collate``) and detects nothing."""

    needs_images = True
    modalities = ("lidar", "camera", "radar")

    def __init__(self, cfg):
        self.cfg = cfg

    def predict(self, frames):
        from ..data.batch import frame_to_sample

        return self.predict_samples([frame_to_sample(f, self.cfg) for f in frames])

    def predict_samples(self, samples):
        from ..data.batch import collate
        from ..structures import Boxes3D, Detections

        batch = collate(list(samples))
        return [Detections(t, ts, Boxes3D.empty()) for t, ts in zip(batch.sample_tokens, batch.timestamps)]


def run_eval_data_benchmark(config: Optional[str], overrides: List[str], dataroot: str, version: str, split: str,
                            workers: int, samples: int, robustness_samples: int, batch_size: int = 1,
                            gpus: int = 8, gpu_workers: int = 6) -> dict:
    from ..config import load_config
    from ..data.nuscenes_source import NuScenesSource
    from . import data as evdata
    from . import evaluate as ev

    cfg = load_config(config, overrides)
    source = NuScenesSource.from_config(dataroot, version, cfg)
    tokens = ev.split_sample_tokens(source.nusc, split)
    tokens = tokens[:samples] if samples else tokens
    det = NullModel(cfg)
    res = {"dataroot": dataroot, "split": split, "samples": len(tokens), "workers": workers,
           "batch_size": batch_size, "config": config, "overrides": overrides,
           "load_average_start": list(os.getloadavg()), "cpu_count": os.cpu_count()}
    cache = tempfile.mkdtemp(prefix="evalbench_cache_")

    t0 = time.perf_counter()
    evdata.eval_plans(source, cfg, split, tokens, cache)
    res["index_build_s"] = time.perf_counter() - t0  # the whole split's index, once per root and config
    t0 = time.perf_counter()
    plans = evdata.eval_plans(source, cfg, split, tokens, cache)
    res["index_load_s"] = time.perf_counter() - t0

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    # interleaved: reference, loader, reference, loader (the machine's load drifts)
    ref_s, new_s = [], []
    for _ in range(2):
        ref_s.append(timed(lambda: ev.run_inference_frames(det, source, cfg, tokens, batch_size=batch_size)))
        new_s.append(timed(lambda: ev.run_inference_cases(det, source, cfg, tokens, [[]], batch_size=batch_size,
                                                          workers=workers, plans=plans)))
    n = len(tokens)
    # CPU time per sample (this process, workers=0: the whole data path here), robust to the machine's load:
    # what the projection divides among the workers
    def cpu(fn):
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    res["reference_cpu_ms_per_sample"] = 1e3 * cpu(
        lambda: ev.run_inference_frames(det, source, cfg, tokens, batch_size=batch_size)) / n
    res["loader_cpu_ms_per_sample"] = 1e3 * cpu(
        lambda: ev.run_inference_cases(det, source, cfg, tokens, [[]], batch_size=batch_size, workers=0,
                                       plans=plans)) / n
    res["reference_s"], res["loader_s"] = ref_s, new_s
    res["reference_ms_per_sample"] = 1e3 * min(ref_s) / n
    res["reference_samples_per_s"] = n / min(ref_s)
    res["loader_samples_per_s"] = n / min(new_s)
    res["speedup"] = min(ref_s) / min(new_s)
    per_worker = res["loader_samples_per_s"] / max(1, workers)
    res["projection"] = {"gpus": gpus, "workers_per_gpu": gpu_workers, "samples": FULL_VAL,
                         "per_worker_samples_per_s": per_worker,
                         "data_s": FULL_VAL / (per_worker * gpus * gpu_workers),
                         "reference_data_s_per_rank": FULL_VAL / gpus * min(ref_s) / n,
                         "data_s_from_cpu_time": FULL_VAL * res["loader_cpu_ms_per_sample"] / 1e3 / (gpus * gpu_workers),
                         "reference_data_s_per_rank_from_cpu_time":
                             FULL_VAL / gpus * res["reference_cpu_ms_per_sample"] / 1e3}

    cases = ev.failure_cases()
    rtok = tokens[:robustness_samples] if robustness_samples else tokens
    rplans = evdata.PlanSubset(plans, range(len(rtok)))
    drops = [[]] + [list(d) for d in cases.values()]
    one_ref = timed(lambda: ev.run_inference_frames(det, source, cfg, rtok, batch_size=batch_size))
    one_new = timed(lambda: ev.run_inference_cases(det, source, cfg, rtok, [[]], batch_size=batch_size,
                                                   workers=workers, plans=rplans))
    all_new = timed(lambda: ev.run_inference_cases(det, source, cfg, rtok, drops, batch_size=batch_size,
                                                   workers=workers, plans=rplans))
    res["robustness"] = {"samples": len(rtok), "cases": len(drops), "reference_one_pass_s": one_ref,
                         "reference_all_cases_s (cases x one pass)": len(drops) * one_ref,
                         "loader_one_pass_s": one_new, "loader_all_cases_one_pass_s": all_new,
                         "loader_all_cases_vs_cases_x_one_loader_pass": all_new / (len(drops) * one_new),
                         "speedup_vs_reference": len(drops) * one_ref / all_new}
    res["load_average_end"] = list(os.getloadavg())
    return res


def print_eval_data(res: dict) -> None:
    n = res["samples"]
    print(f"eval data path, {n} samples of {res['dataroot']} ({res['split']}), batch {res['batch_size']}, "
          f"load average {res['load_average_start'][0]:.1f} -> {res['load_average_end'][0]:.1f} on "
          f"{res['cpu_count']} cores")
    print(f"  index: built in {res['index_build_s']:.1f} s (once per root and config), read in "
          f"{res['index_load_s']:.2f} s")
    print(f"  reference (frame by frame in the main process): {res['reference_ms_per_sample']:.0f} ms per sample, "
          f"{res['reference_samples_per_s']:.2f} samples/s  (runs {', '.join(f'{s:.1f}' for s in res['reference_s'])} s)")
    print(f"  loader, {res['workers']} workers: {res['loader_samples_per_s']:.2f} samples/s  "
          f"(runs {', '.join(f'{s:.1f}' for s in res['loader_s'])} s): {res['speedup']:.2f}x")
    p = res["projection"]
    print(f"  projected full val ({p['samples']} samples) on {p['gpus']} GPUs x {p['workers_per_gpu']} workers: "
          f"{p['data_s']:.0f} s of data preparation ({p['per_worker_samples_per_s']:.2f} samples/s per worker); "
          f"reference: {p['reference_data_s_per_rank']:.0f} s per rank")
    print(f"  CPU time per sample (workers=0, load-independent): reference {res['reference_cpu_ms_per_sample']:.0f} ms, "
          f"loader path {res['loader_cpu_ms_per_sample']:.0f} ms; full val on {p['gpus']} x {p['workers_per_gpu']} "
          f"workers from it: {p['data_s_from_cpu_time']:.0f} s (reference, main process of each rank: "
          f"{p['reference_data_s_per_rank_from_cpu_time']:.0f} s)")
    r = res["robustness"]
    print(f"  robustness, {r['samples']} samples x {r['cases']} cases: reference {r['cases']} x "
          f"{r['reference_one_pass_s']:.1f} s = {r['reference_all_cases_s (cases x one pass)']:.0f} s; loader one pass "
          f"{r['loader_one_pass_s']:.1f} s, all cases in one pass {r['loader_all_cases_one_pass_s']:.1f} s "
          f"({r['loader_all_cases_vs_cases_x_one_loader_pass']:.2f} x {r['cases']} loader passes; "
          f"{r['speedup_vs_reference']:.1f}x faster than the reference)")
