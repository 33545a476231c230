"""Training throughput: the data loader alone, the training step alone, and both together.

``run_train_benchmark(cfg_path)`` (``python tools/benchmark.py train --config C [--json OUT]``):

- loader: samples/s that the DataLoader (the config's workers, augmentation, collation) delivers
  when nothing consumes them;
- step: samples/s of forward + backward + optimizer step on batches already in memory, with the
  head's targets delivered by the loader workers (now) and built after the forward in the main
  process by the per-box reference (before), and the fraction of each step the main process spends
  building targets (goal: under 5%);
- together: samples/s of the real training loop (``engine.trainer.train``, loader workers running
  beside the step), from its per-step log, first steps (warm-up) excluded;
- the training loop's main-process target building (calls, fraction of the loop's time);
- peak resident memory of the training process tree (trainer + loader workers) during the
  together phase, sampled from /proc.

Target for the tiny config: the loader delivers at least twice what the step consumes, and the
peak RSS stays under 8 GB. Without ``dataroot`` a synthetic root (preset 'default' images and
LiDAR, one short train scene) is generated in a temporary folder.
"""
from __future__ import annotations

import dataclasses
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


class _TargetTimer:
    """Context: while active, every ``CenterHead.targets`` call (the per-box reference the training
    step falls back to when a batch carries no targets) is timed; ``seconds`` and ``calls`` add up."""

    def __init__(self):
        self.seconds, self.calls, self._saved = 0.0, 0, None

    def __enter__(self) -> "_TargetTimer":
        from ..models.heads.centerpoint import CenterHead

        self._saved = CenterHead.targets
        timer, reference = self, CenterHead.targets

        def timed(head, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return reference(head, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.calls += 1

        CenterHead.targets = timed
        return self

    def __exit__(self, *exc) -> None:
        from ..models.heads.centerpoint import CenterHead

        CenterHead.targets = self._saved


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
    from ..ops.center_targets import center_target_builder
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

    # 2. The step alone, on batches in memory: the head's targets built in the main process after the
    # forward (before: batch.targets dropped, so compute_losses calls the head's per-box reference)
    # and delivered with the batch by the loader workers (after). The two are timed interleaved, on
    # the same batches, so that a busy machine slows both alike.
    # On the device the trainer uses (the first GPU when there is one): on a GPU machine a CPU step here
    # compared the loader against the wrong step (first H200 run: 0.435 samples/s here, 14.6 in the loop).
    torch.manual_seed(t.seed)
    dev = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    res["step_device"] = str(dev)
    model = build_model(cfg).train().to(dev)
    opt = build_optimizer(model, cfg)
    assert all(b.targets is not None for b in batches), "TrainDataset builds the targets in the workers"
    on_dev = [b.to(dev) for b in batches]
    without = [dataclasses.replace(b, targets=None) for b in on_dev]
    main_targets = _TargetTimer()

    def step(batch):
        with _autocast(t.amp, dev), main_targets:
            terms = compute_losses(model, model, batch, t.loss_reduction)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # the step's time, not its launch

    step(on_dev[0])  # warm-up
    step(without[0])
    spent = {"before": 0.0, "after": 0.0}
    targets_s = {"before": 0.0, "after": 0.0}
    for i in range(steps):
        for name, bs in (("before", without), ("after", on_dev)):
            main_targets.seconds = 0.0
            t0 = time.perf_counter()
            step(bs[i % len(bs)])
            spent[name] += time.perf_counter() - t0
            targets_s[name] += main_targets.seconds
    res["step_samples_per_s"] = round(steps * t.batch_size / spent["after"], 3)
    res["step_before_samples_per_s"] = round(steps * t.batch_size / spent["before"], 3)
    res["step_targets_fraction_before"] = round(targets_s["before"] / spent["before"], 4)
    res["step_targets_fraction"] = round(targets_s["after"] / spent["after"], 4)
    # what the workers now do per sample, against the reference in the main process
    builder = center_target_builder(cfg)
    gts = [(b.gt_boxes[i], b.gt_labels[i], b.gt_attributes[i]) for b in batches for i in range(b.batch_size)]
    t0 = time.perf_counter()
    for bx, lb, at in gts:
        builder(bx.numpy(), lb.numpy(), at.numpy())
    res["targets_worker_ms_per_sample"] = round(1e3 * (time.perf_counter() - t0) / len(gts), 2)
    t0 = time.perf_counter()
    for bx, lb, at in gts:
        model.head.targets([bx], [lb], [at])
    res["targets_reference_ms_per_sample"] = round(1e3 * (time.perf_counter() - t0) / len(gts), 2)
    res["gt_boxes_per_sample"] = round(sum(len(g[0]) for g in gts) / len(gts), 1)
    del model, opt

    # 3. Both together: the real training loop with its loader workers.
    work = os.path.join(tmp.name, "work")
    cfg_tog = load_config(cfg_path, list(overrides) + ["train.log_every=1", "train.checkpoint_every=100000",
                                                       f"train.cache_dir={cache}"])
    rss_before = _tree_memory_bytes(os.getpid())[0]
    with PeakRSS() as mem, _TargetTimer() as loop_targets:
        train(cfg_tog, root, version, work, max_steps=together_steps, progress=False)
    with open(os.path.join(work, "log.jsonl")) as f:
        recs = [json.loads(l) for l in f if '"loss"' in l]
    timed = recs[2:] if len(recs) > 3 else recs[1:]
    total_t = sum(r["data_time_s"] + r["compute_time_s"] for r in timed)
    res["together_samples_per_s"] = round(len(timed) * t.batch_size / total_t, 3)
    res["together_data_wait_s_per_step"] = round(sum(r["data_time_s"] for r in timed) / len(timed), 4)
    res["together_compute_s_per_step"] = round(sum(r["compute_time_s"] for r in timed) / len(timed), 3)
    all_t = sum(r["data_time_s"] + r["compute_time_s"] for r in recs)
    # the training loop's main process building targets (0 calls when the workers deliver them)
    res["together_targets_calls"] = loop_targets.calls
    res["together_targets_fraction"] = round(loop_targets.seconds / max(all_t, 1e-9), 4)
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
    print(f"{'training step alone':24s} {res['step_samples_per_s']:9.3f} samples/s  (on {res['step_device']}; "
          f"targets from the loader workers; main process building targets: "
          f"{100 * res['step_targets_fraction']:.1f}% of the step)")
    print(f"{'  before (in the loop)':24s} {res['step_before_samples_per_s']:9.3f} samples/s  (targets built after "
          f"the forward in the main process: {100 * res['step_targets_fraction_before']:.1f}% of the step)")
    print(f"{'  targets per sample':24s} {res['targets_worker_ms_per_sample']:9.2f} ms in a worker "
          f"(reference per-box loop: {res['targets_reference_ms_per_sample']:.2f} ms; "
          f"{res['gt_boxes_per_sample']} boxes/sample)")
    print(f"{'together (train loop)':24s} {res['together_samples_per_s']:9.3f} samples/s  "
          f"(data wait {res['together_data_wait_s_per_step']:.3f} s/step, compute "
          f"{res['together_compute_s_per_step']:.2f} s/step)")
    print(f"{'peak RSS (with workers)':24s} {res['peak_rss_gb']:9.2f} GB summed over {res['processes']} processes "
          f"(PSS {res['peak_pss_gb']:.2f} GB; the trainer held {res['main_process_rss_before_train_gb']:.2f} GB "
          f"before the loop)")
    print(f"{'  targets in the loop':24s} {res['together_targets_calls']:9d} calls in the main process "
          f"({100 * res['together_targets_fraction']:.2f}% of the loop's time)")
    res["target_targets_under_5pct"] = res["together_targets_fraction"] < 0.05 and res["step_targets_fraction"] < 0.05
    print(f"target: main process building targets < 5% of the step: "
          f"{'met' if res['target_targets_under_5pct'] else 'NOT met'}")
    print(f"target: loader >= 2x step: {'met' if res['target_loader_2x_step'] else 'NOT met'} "
          f"({res['loader_over_step']}x); peak RSS < 8 GB: {'met' if res['target_rss_under_8gb'] else 'NOT met'}")
    tmp.cleanup()
    if json_out:
        from ..fileio import atomic_write_bytes

        atomic_write_bytes(json_out, json.dumps(res, indent=1).encode())
    return res
