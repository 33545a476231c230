"""Training throughput: the data loader alone, the training step alone, and both together.

``run_train_benchmark(cfg_path)`` (``python tools/benchmark.py train --config C [--json OUT]``):

- loader: samples/s that the DataLoader (the config's workers, augmentation, collation) delivers
  when nothing consumes them;
- step: samples/s of forward + backward + optimizer step on batches already in memory;
- together: samples/s of the real training loop (``engine.trainer.train``, loader workers running
  beside the step), from its per-step log, first steps (warm-up) excluded;
- peak resident memory of the training process tree (trainer + loader workers) during the
  together phase, sampled from /proc.

Target for the tiny config: the loader delivers at least twice what the step consumes, and the
peak RSS stays under 8 GB. Without ``dataroot`` a synthetic root (preset 'default' images and
LiDAR, one short train scene) is generated in a temporary folder.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from typing import List, Optional, Sequence

import torch


def _tree_memory_bytes(pid: int) -> tuple:
    """(sum of RSS, sum of PSS, processes) over a process and all its descendants (Linux /proc).

    The RSS sum counts pages that forked loader workers share with the trainer once per process
    (an upper bound); PSS divides shared pages among their sharers (what the tree really holds).
    """
    rss = pss = 0
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                        break
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1]) * 1024
                            break
            except OSError:
                pass
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return rss, pss, len(seen)


class PeakRSS:
    """Samples the process tree's memory every ``interval`` s in a thread: peak RSS sum, peak PSS
    sum (bytes) and the most processes seen."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self.peak_pss, self.processes = interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss, n = _tree_memory_bytes(os.getpid())
        self.peak, self.peak_pss, self.processes = max(self.peak, rss), max(self.peak_pss, pss), max(self.processes, n)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _make_root(tmp: str) -> str:
    from ..data.synthetic import generate, preset

    root = os.path.join(tmp, "root")
    generate(root, preset("default", train_scenes=1, val_scenes=1, duration_s=10.0, workers=1), seed=0)
    return root


def run_train_benchmark(cfg_path: str, json_out: Optional[str] = None, dataroot: Optional[str] = None,
                        version: str = "v1.0-trainval", overrides: Sequence[str] = (), loader_batches: int = 20,
                        steps: int = 4, together_steps: int = 6) -> dict:
    from ..config import load_config
    from ..models.build import build_model
    from .dataset import ResumableSampler, TrainDataset, build_index, collate_samples, worker_init
    from .trainer import build_optimizer, compute_losses, _autocast, train

    cfg = load_config(cfg_path, list(overrides))
    t = cfg.train
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
    root = dataroot or _make_root(tmp.name)
    cache = os.path.join(tmp.name, "cache")
    plans = build_index(root, version, t.split, cfg, cache)
    res = {"config": os.path.abspath(cfg_path), "dataroot": dataroot or "synthetic (preset default, 1 train scene)",
           "samples": len(plans), "batch_size": t.batch_size, "num_workers": t.num_workers,
           "threads": torch.get_num_threads(), "amp": t.amp}

    # 1. The loader alone.
    ds = TrainDataset(plans, cfg, augment=True, seed=t.seed)
    sampler = ResumableSampler(len(ds), t.batch_size, seed=t.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers,
                                         collate_fn=collate_samples, persistent_workers=t.num_workers > 0,
                                         worker_init_fn=worker_init)
    n, epoch, t0, warm = 0, 0, None, 2
    batches: List = []
    while n < loader_batches + warm:
        sampler.set_epoch(epoch)
        for lb in loader:
            n += 1
            if len(batches) < 3:
                batches.append(lb.batch)
            if n == warm:
                t0 = time.perf_counter()
            if n >= loader_batches + warm:
                break
        epoch += 1
    dt = time.perf_counter() - t0
    res["loader_samples_per_s"] = round(loader_batches * t.batch_size / dt, 2)
    del loader

    # 2. The step alone, on batches in memory.
    torch.manual_seed(t.seed)
    model = build_model(cfg).train()
    opt = build_optimizer(model, cfg)
    dev = torch.device("cpu")

    def step(batch):
        with _autocast(t.amp, dev):
            terms = compute_losses(model, model, batch, t.loss_reduction)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    dt = time.perf_counter() - t0
    res["step_samples_per_s"] = round(steps * t.batch_size / dt, 3)
    del model, opt

    # 3. Both together: the real training loop with its loader workers.
    work = os.path.join(tmp.name, "work")
    cfg_tog = load_config(cfg_path, list(overrides) + ["train.log_every=1", "train.checkpoint_every=100000",
                                                       f"train.cache_dir={cache}"])
    rss_before = _tree_memory_bytes(os.getpid())[0]
    with PeakRSS() as mem:
        train(cfg_tog, root, version, work, max_steps=together_steps, progress=False)
    with open(os.path.join(work, "log.jsonl")) as f:
        recs = [json.loads(l) for l in f if '"loss"' in l]
    timed = recs[2:] if len(recs) > 3 else recs[1:]
    total_t = sum(r["data_time_s"] + r["compute_time_s"] for r in timed)
    res["together_samples_per_s"] = round(len(timed) * t.batch_size / total_t, 3)
    res["together_data_wait_s_per_step"] = round(sum(r["data_time_s"] for r in timed) / len(timed), 4)
    res["together_compute_s_per_step"] = round(sum(r["compute_time_s"] for r in timed) / len(timed), 3)
    res["peak_rss_gb"] = round(mem.peak / 1e9, 3)  # sum over the tree: shared pages counted per process
    res["peak_pss_gb"] = round(mem.peak_pss / 1e9, 3)
    res["processes"] = mem.processes
    res["main_process_rss_before_train_gb"] = round(rss_before / 1e9, 3)
    res["loader_over_step"] = round(res["loader_samples_per_s"] / res["step_samples_per_s"], 1)
    res["target_loader_2x_step"] = res["loader_over_step"] >= 2.0
    res["target_rss_under_8gb"] = res["peak_rss_gb"] < 8.0  # the conservative sum

    print(f"training throughput, {res['config']}, {res['dataroot']}, batch {t.batch_size}, "
          f"{t.num_workers} workers, {res['threads']} threads")
    print(f"{'loader alone':24s} {res['loader_samples_per_s']:9.2f} samples/s")
    print(f"{'training step alone':24s} {res['step_samples_per_s']:9.3f} samples/s")
    print(f"{'together (train loop)':24s} {res['together_samples_per_s']:9.3f} samples/s  "
          f"(data wait {res['together_data_wait_s_per_step']:.3f} s/step, compute "
          f"{res['together_compute_s_per_step']:.2f} s/step)")
    print(f"{'peak RSS (with workers)':24s} {res['peak_rss_gb']:9.2f} GB summed over {res['processes']} processes "
          f"(PSS {res['peak_pss_gb']:.2f} GB; the trainer held {res['main_process_rss_before_train_gb']:.2f} GB "
          f"before the loop)")
    print(f"target: loader >= 2x step: {'met' if res['target_loader_2x_step'] else 'NOT met'} "
          f"({res['loader_over_step']}x); peak RSS < 8 GB: {'met' if res['target_rss_under_8gb'] else 'NOT met'}")
    tmp.cleanup()
    if json_out:
        from ..fileio import atomic_write_bytes

        atomic_write_bytes(json_out, json.dumps(res, indent=1).encode())
    return res
