"""The training loop: one function for one process, several GPUs, or several machines.

``train(cfg, dataroot, version, work_dir)`` runs a whole training (or its rest, with ``resume``):

- data: the cached per-sample index of ``cfg.train.split`` (``engine.dataset``), augmented per
  (seed, epoch, index), loaded by DataLoader workers (pinned memory on GPU), collated into a Batch;
- model: ``build_model(cfg)``; under DDP batch norms become global-batch norms
  (``engine.distributed``); every rank starts from the same seed and DDP broadcasts rank 0's weights;
- optimization: AdamW (or SGD), one-cycle / cosine / constant schedule, gradient clipping, autocast
  (bf16 on CPU or GPU, fp16 with a GradScaler on GPU);
- loss: with ``loss_reduction='sample'`` the mean over the samples of the head's per-sample losses,
  so the DDP-averaged gradient of G processes with batch b is that of one process with batch G x b;
- checkpoints (rank 0, atomic, the last K kept) every ``checkpoint_every`` steps and at the end,
  with every process's RNG states; ``resume`` continues from the newest readable one and, with
  ``deterministic`` on CPU, reaches bitwise the weights of a run that never stopped;
- SIGTERM (preemption, torchrun shutting down): a checkpoint at the next step boundary, then exit;
- a NaN or inf loss term (or gradient norm) stops every process with ``NonFiniteLossError`` naming
  the step and the term, before the weights change: the last good checkpoint stays;
- observability (rank 0): tqdm bar (loss, samples/s), TensorBoard scalars under ``<work_dir>/tb``
  (each loss term, learning rate, samples/s, data vs compute time), ``<work_dir>/log.jsonl``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from ..config import Config, ConfigError
from . import checkpoint as ckpt
from ..data.problems import FileProblems
from ..data.gt_filter import GtZRange
from .dataset import (DataError, ResumableSampler, TrainDataset, build_index, collate_samples, make_sampler,
                      shutdown_loader, worker_init)
from .distributed import (DistInfo, all_gather_objects, all_reduce_mean, barrier, cleanup, convert_batchnorm,
                          init_distributed, wrap_ddp)

log = logging.getLogger(__name__)

LOSS_KEYS = ("heatmap", "offset", "height", "size", "yaw", "velocity", "attribute", "direction", "depth", "camera_aux", "total")
# Logged beside the losses (detached, rank 0's batch; present when the batch has depth targets).
METRIC_KEYS = ("depth_abs_rel", "depth_rmse", "depth_delta1")


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss term or gradient norm; the message names the step and the term."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM received; a checkpoint was written and --resume continues."""


class ScheduleError(ConfigError):
    """--resume asked for more steps than the saved schedule plans, without --extend."""


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------
def setup_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """Weight decay on weights (>= 2-D) only, not on norms and biases. With ``train.camera_lr_scale``
    != 1 the camera branch (encoder and auxiliary head) gets its own two groups at lr x scale; each
    group's ``peak_lr`` (kept in checkpoints; ``lr`` is the current rate) is what the schedule scales."""
    t = cfg.train
    camera = set()
    if t.camera_lr_scale != 1.0:
        for part in (getattr(model, "camera", None), getattr(model, "camera_aux_head", None)):
            if part is not None:
                camera.update(id(p) for p in part.parameters())
    split = {False: ([], []), True: ([], [])}  # in the camera branch -> (decay, no_decay)
    for p in model.parameters():
        if p.requires_grad:
            decay, no_decay = split[id(p) in camera]
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    for in_camera, scale in ((False, 1.0), (True, t.camera_lr_scale)):
        decay, no_decay = split[in_camera]
        if in_camera and not camera:
            continue  # one rate for the whole model: the two groups of before, checkpoints unchanged
        peak = t.lr * scale
        groups += [{"params": decay, "weight_decay": t.weight_decay, "lr": peak, "peak_lr": peak},
                   {"params": no_decay, "weight_decay": 0.0, "lr": peak, "peak_lr": peak}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, 0.999))


class _WarmupCosine:
    """LambdaLR factor: linear warmup over ``warmup`` steps, cosine from 1 to ``floor`` at ``total``."""

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p))


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config, total_steps: int):
    t = cfg.train
    if t.schedule == "onecycle":
        peaks = [g.get("peak_lr", t.lr) for g in opt.param_groups]  # checkpoints before peak_lr: one rate
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=max(total_steps, 2),
                                                   pct_start=t.pct_start, anneal_strategy="cos",
                                                   cycle_momentum=False, div_factor=10.0, final_div_factor=1e3)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(total_steps, t.warmup_steps, t.min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _slice(x, b: int):
    return x[b:b + 1]


def compute_losses(model: torch.nn.Module, bare, batch, reduction: str,
                   depth_metrics: bool = False) -> Dict[str, torch.Tensor]:
    """Loss terms and 'total' of a batch through ``model`` (the DDP wrapper when distributed, so its
    hooks see the forward); ``bare`` is the FusionDetector itself.

    reduction 'sample': every term is the mean over the samples of the head's loss of that sample
    alone; 'batch': the head's loss over the whole batch (its normalizers count the batch's objects).
    The camera's depth term (``FusionDetector.add_depth_terms``) is added to the total; with
    ``depth_metrics`` (logging steps) the batch's depth metrics ride along as detached 'depth_<metric>'
    entries, not part of the total.
    """
    if batch.gt_boxes is None:
        raise ValueError("training needs ground truth in every batch")
    preds, depth, aux = model(batch, return_depth=True, return_aux=True)
    # built by the loader workers (TrainDataset); a batch from elsewhere gets the head's reference
    targets = (batch.targets if batch.targets is not None
               else bare.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes))
    if reduction == "batch":
        total = bare.head.loss(preds, targets)
    else:
        B = batch.batch_size
        total = {}
        for b in range(B):
            p_b = [{k: _slice(v, b) for k, v in p.items()} for p in preds]
            fields = {}
            for f in dataclasses.fields(targets):
                v = getattr(targets, f.name)
                fields[f.name] = [_slice(h, b) for h in v] if isinstance(v, list) else _slice(v, b)
            terms = bare.head.loss(p_b, type(targets)(**fields))
            for k, v in terms.items():
                total[k] = total[k] + v if k in total else v
        total = {k: v / B for k, v in total.items()}
    total = bare.add_depth_terms(total, depth, batch, reduction)
    total = bare.add_aux_terms(total, aux, targets, batch, reduction)
    if depth_metrics and depth is not None and batch.depth_targets is not None:
        from ..models.camera.depth import batch_depth_metrics

        metrics = batch_depth_metrics(depth, batch.depth_targets, bare.camera.depth_bins)
        for k, v in (metrics or {}).items():
            total[f"depth_{k}"] = torch.tensor(v, device=total["total"].device)
    return total


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Logger:
    """Rank-0 outputs: tqdm bar, JSON lines, TensorBoard (each optional)."""

    def __init__(self, work_dir: str, enabled: bool, total: int, initial: int, progress: bool):
        self.enabled = enabled
        self.bar = self.tb = self.jsonl = None
        if not enabled:
            return
        self.jsonl = open(os.path.join(work_dir, "log.jsonl"), "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(work_dir, "tb"), purge_step=initial + 1 if initial else None)
        except Exception as e:  # tensorboard missing: the JSON log still has everything
            log.warning("TensorBoard disabled (%s)", e)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, mininterval=0.5,
                            file=sys.stderr)

    def record(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(rec) + "\n")
        if self.tb is not None and "step" in rec and "loss" in rec:
            s = rec["step"]
            for k, v in rec["loss"].items():
                self.tb.add_scalar(f"loss/{k}", v, s)
            for k, v in rec.get("metrics", {}).items():
                self.tb.add_scalar(f"metrics/{k}", v, s)
            self.tb.add_scalar("lr", rec["lr"], s)
            self.tb.add_scalar("throughput/samples_per_s", rec["samples_per_s"], s)
            self.tb.add_scalar("time/data_s", rec["data_time_s"], s)
            self.tb.add_scalar("time/compute_s", rec["compute_time_s"], s)

    def progress(self, n: int, loss: float, sps: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{sps:.2f}", refresh=False)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _params_max_diff_across_ranks(model: torch.nn.Module, info: DistInfo) -> float:
    """max |p - p_rank0| over every parameter and buffer and every rank (0.0 on one process)."""
    if not info.enabled:
        return 0.0
    import torch.distributed as dist

    worst = torch.zeros((), dtype=torch.float64)
    for t in list(model.state_dict().values()):
        ref = t.detach().clone()
        dist.broadcast(ref, 0)
        if t.numel():
            worst = torch.maximum(worst, (t.detach().double() - ref.double()).abs().max().cpu())
    worst = worst.to(next(model.parameters()).device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train(cfg: Config, dataroot: str, version: str, work_dir: str, max_steps: Optional[int] = None,
          resume: bool = False, progress: bool = True, extend: bool = False, strict: bool = False) -> dict:
    """Train (see module doc). Returns a summary: steps, epochs, the last checkpoint, losses per step
    (rank 0's view of the all-reduced totals), the cross-rank parameter check."""
    t = cfg.train
    use_cuda = torch.cuda.is_available()
    # Validate what every rank can check alone before any collective call.
    if not os.path.isdir(dataroot):
        raise DataError(f"{dataroot}: data root not found")
    if t.amp == "fp16" and not use_cuda:
        raise DataError("train.amp=fp16 needs a GPU; use bf16 or none on CPU")
    info = init_distributed(use_cuda)
    device = torch.device(f"cuda:{info.local_rank}" if use_cuda else "cpu")
    try:
        return _train(cfg, dataroot, version, work_dir, max_steps, resume, progress, info, device, extend, strict)
    finally:
        cleanup(info)


def _train(cfg, dataroot, version, work_dir, max_steps, resume, progress, info: DistInfo, device,
           extend: bool = False, strict: bool = False) -> dict:
    from ..models.build import build_model

    t = cfg.train
    setup_determinism(t.deterministic)
    seed_everything(t.seed)
    work_dir = os.path.abspath(work_dir)
    ckpt_dir = ckpt.checkpoint_dir(work_dir)
    if info.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        import yaml

        with open(os.path.join(work_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    cache_dir = t.cache_dir or os.path.join(os.path.dirname(work_dir), "cache")

    # Index: built (or read) by each machine's first process, then read from the cache by the others.
    if info.local_rank == 0:
        plans = build_index(dataroot, version, t.split, cfg, cache_dir)
    barrier(info)
    if info.local_rank != 0:
        plans = build_index(dataroot, version, t.split, cfg, cache_dir)

    if info.is_main:
        # a grid that cuts the objects it is trained on: said once, at the start (tools/doctor.py too)
        GtZRange(cfg.grid.point_cloud_range).add_all(p.gt for p in plans).warn(f"ground-truth boxes of split {t.split}")
    dataset = TrainDataset(plans, cfg, augment=True, seed=t.seed, strict=strict)
    sampler = make_sampler(plans, cfg, info.world_size, info.rank)  # train.cbgs: class-balanced
    loader_gen = torch.Generator()
    loader_gen.manual_seed(t.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=t.batch_size, sampler=sampler, num_workers=t.num_workers,
        collate_fn=collate_samples, pin_memory=device.type == "cuda", drop_last=False,
        persistent_workers=t.num_workers > 0, prefetch_factor=2 if t.num_workers > 0 else None,
        worker_init_fn=worker_init, generator=loader_gen)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = int(max_steps or t.max_steps or t.epochs * steps_per_epoch)

    # Model: the same initial weights on every rank (DDP also broadcasts rank 0's).
    torch.manual_seed(t.seed)
    model = build_model(cfg)
    if info.enabled and t.sync_bn:
        model = convert_batchnorm(model, device.type == "cuda")
    model.to(device)
    bare = model
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=(t.amp == "fp16" and device.type == "cuda"))

    step, epoch, batch_in_epoch, last_ckpt = 0, 0, 0, None
    resumed_from, state = None, None
    plan_end = total_steps  # the step the schedule's plan ends at (saved in checkpoints as total_steps)
    schedule_start = 0  # the step the current schedule's plan starts at (> 0 after --extend)
    if resume:
        found = ckpt.latest_checkpoint(ckpt_dir)
        if found is None:
            if info.is_main:
                log.warning("--resume: no checkpoint in %s; starting from scratch", ckpt_dir)
        else:
            last_ckpt, state = found
            resumed_from = last_ckpt
            ckpt.load_model_state(bare, state["model"], last_ckpt)
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt.CheckpointError(f"{last_ckpt}: optimizer state does not fit this model's parameters "
                                           f"({str(e).splitlines()[0]}); is it a checkpoint of another config?") \
                    from None
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
            schedule_start = int(state.get("schedule_start", 0))
            saved_total = int(state.get("total_steps", total_steps))
            plan_end = saved_total
            if total_steps > saved_total and t.schedule != "constant":
                # One-cycle and cosine plans end at their last step: stepping on raises in torch
                # (one-cycle) or holds the floor LR (cosine). Continuing needs a decision.
                if not extend:
                    raise ScheduleError(
                        f"{last_ckpt}: this run's {t.schedule} schedule was planned for {saved_total} steps and "
                        f"cannot continue to {total_steps}; either add --extend (re-plans steps {step}..{total_steps}"
                        f" as a new warmup + anneal from these weights) or start a new run in another --work-dir")
                schedule_start, plan_end = step, total_steps
                if info.is_main:
                    log.info("--extend: the %s schedule is re-planned over steps %d..%d", t.schedule, step,
                             total_steps)
            elif total_steps > saved_total:  # a constant LR has no plan to outgrow
                plan_end = total_steps
            elif total_steps < saved_total and info.is_main:
                log.warning("resuming a run planned for %d steps with %d: it stops early and the schedule keeps "
                            "the saved plan", saved_total, total_steps)
    scheduler = build_scheduler(optimizer, cfg, plan_end - schedule_start)
    if state is not None and schedule_start == int(state.get("schedule_start", 0)):
        # Building a scheduler sets the LR of its first step: the optimizer's saved state (the LR
        # of the next step) goes back over it, then the scheduler's position.
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])  # else --extend: a fresh plan from here
    # Per-rank random streams (modality dropout and anything else drawing at train time).
    torch.manual_seed(t.seed + 1 + info.rank)
    random.seed(t.seed + 1 + info.rank)
    np.random.seed((t.seed + 1 + info.rank) % (2 ** 32))
    if resumed_from is not None:
        rngs = state.get("rng") or []
        if len(rngs) == info.world_size:
            ckpt.set_rng_state(rngs[info.rank])
        elif info.is_main:
            log.warning("checkpoint written by %d processes, resuming with %d: random streams are reseeded",
                        len(rngs), info.world_size)

    ddp = model
    if info.enabled:
        ddp = wrap_ddp(model, info, device, t.find_unused_parameters, t.sync_bn)
    model.train()

    stop = {"signal": None}
    old_handler = None
    if hasattr(signal, "SIGTERM"):
        try:
            old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.__setitem__("signal", signum))
        except ValueError:  # not the main thread
            old_handler = None

    logger = _Logger(work_dir, info.is_main, total_steps, step, progress)
    if info.is_main:
        logger.record({"event": "start", "time": time.time(), "world_size": info.world_size,
                       "backend": info.backend or "none", "device": str(device), "samples": len(dataset),
                       "samples_per_epoch": sampler.n, "cbgs": t.cbgs,
                       "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                       "global_batch": t.batch_size * info.world_size, "resumed_from": resumed_from,
                       "step": step,
                       # which image-backbone weights the camera started from (None: random init)
                       "camera_pretrained": (os.path.abspath(cfg.model.camera.pretrained)
                                             if cfg.model.use_camera and cfg.model.camera.pretrained else None)})
        logger.write(f"training {len(dataset)} samples"
                     + (f" (class-balanced: {sampler.n} per epoch)" if t.cbgs else "")
                     + f", {steps_per_epoch} steps/epoch, {total_steps} steps, "
                     f"{info.world_size} process(es) x batch {t.batch_size} on {device}"
                     + (f"; resumed from {resumed_from} at step {step}" if resumed_from else ""))

    def save(step_now: int, epoch_now: int, in_epoch: int) -> Optional[str]:
        if in_epoch >= steps_per_epoch:
            epoch_now, in_epoch = epoch_now + 1, 0
        rngs = all_gather_objects(info, ckpt.rng_state())
        path = None
        if info.is_main:
            state = {"model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "step": step_now, "epoch": epoch_now, "batch_in_epoch": in_epoch, "total_steps": plan_end,
                     "schedule_start": schedule_start,
                     "rng": rngs, "world_size": info.world_size, "config": cfg.to_dict(), "time": time.time()}
            path = ckpt.save_checkpoint(state, ckpt_dir, step_now, t.keep_last)
        barrier(info)
        return path or os.path.join(ckpt_dir, f"ckpt_{step_now:08d}.pt")

    losses: List[float] = []
    run_problems = FileProblems()  # unreadable files of every batch this process trained on
    window = {"data": 0.0, "compute": 0.0, "n": 0, "samples": 0}
    global_batch = t.batch_size * info.world_size
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        while step < total_steps:
            sampler.set_epoch(epoch, batch_in_epoch)
            tick = time.perf_counter()
            for lb in loader:
                t_data = time.perf_counter() - tick
                batch = lb.batch.to(device)
                run_problems.merge(lb.problems)
                with _autocast(t.amp, device):
                    logging_step = (step + 1) % t.log_every == 0 or step + 1 == total_steps
                    terms = compute_losses(ddp, bare, batch, t.loss_reduction, depth_metrics=logging_step)
                keys = [k for k in LOSS_KEYS if k in terms]
                metric_keys = [k for k in METRIC_KEYS if k in terms]
                flag = 1.0 if stop["signal"] is not None else 0.0
                values = torch.stack([terms[k].detach().float() for k in keys]
                                     + [torch.tensor(flag, device=device)])
                values = all_reduce_mean(info, values)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.unscale_(optimizer)
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                gnorm_t = torch.nn.utils.clip_grad_norm_(params, max_norm)
                # The step's one host read: the reduced losses (non-finite check, log, stop flag) and the
                # gradient norm together, after the backward is queued, so the device is never left
                # idle waiting for the host between forward and backward. A non-finite term is still
                # caught before the optimizer changes the weights (only gradients exist by then).
                host = torch.cat([values, gnorm_t.detach().float().reshape(1).to(values.device)]).cpu()
                values, gnorm = host[:-1], float(host[-1])
                bad = [k for k, v in zip(keys, values[:-1].tolist()) if not math.isfinite(v)]
                if bad:
                    name = next((k for k in bad if k != "total"), bad[0])
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1} (epoch {epoch}, batch {batch_in_epoch}): "
                        f"loss term '{name}' is {values[keys.index(name)].item()}; stopped before updating "
                        f"the weights; last good checkpoint: {last_ckpt or 'none written yet'}")
                if not math.isfinite(gnorm) and not scaler.is_enabled():
                    raise NonFiniteLossError(
                        f"non-finite gradient at step {step + 1} (epoch {epoch}, batch {batch_in_epoch}): "
                        f"gradient norm is {gnorm} (loss {values[keys.index('total')].item():.4g}); stopped "
                        f"before updating the weights; last good checkpoint: {last_ckpt or 'none written yet'}")
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                # no device synchronize for the timing: compute time ends at the host read above plus
                # the optimizer's launch; its kernels overlap the next batch's host-side work
                t_compute = time.perf_counter() - tick - t_data
                step += 1
                batch_in_epoch += 1
                loss_vals = dict(zip(keys, values[:-1].tolist()))
                # this rank's batch only: a diagnostic, and ranks may differ in which they have
                metric_vals = {k: float(terms[k]) for k in metric_keys}
                losses.append(loss_vals["total"])
                window["data"] += t_data
                window["compute"] += t_compute
                window["n"] += 1
                window["samples"] += global_batch
                sps = global_batch / max(t_data + t_compute, 1e-9)
                logger.progress(1, loss_vals["total"], sps)
                if step % t.log_every == 0 or step == total_steps:
                    wt = window["data"] + window["compute"]
                    logger.record({"step": step, "epoch": epoch, "batch": batch_in_epoch, "lr": lr,
                                   "loss": loss_vals, "grad_norm": gnorm, "metrics": metric_vals,
                                   "samples_per_s": window["samples"] / max(wt, 1e-9),
                                   "data_time_s": window["data"] / window["n"],
                                   "compute_time_s": window["compute"] / window["n"],
                                   "unreadable_files": run_problems.total(), "time": time.time()})
                    window = {"data": 0.0, "compute": 0.0, "n": 0, "samples": 0}
                interrupted = values[-1].item() > 0
                if step % t.checkpoint_every == 0 or step == total_steps or interrupted:
                    last_ckpt = save(step, epoch, batch_in_epoch)
                if interrupted:
                    logger.write(f"SIGTERM: stopped at step {step}; checkpoint {last_ckpt}; --resume continues")
                    raise TrainingInterrupted(f"interrupted at step {step}; checkpoint {last_ckpt} written; "
                                              f"run again with --resume to continue")
                if step >= total_steps:
                    break
                tick = time.perf_counter()
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
        diff = _params_max_diff_across_ranks(model, info)
        problems = FileProblems()
        for part in all_gather_objects(info, run_problems):
            problems.merge(part)
        summary = {"event": "end", "step": step, "epoch": epoch, "checkpoint": last_ckpt,
                   "world_size": info.world_size, "param_max_abs_diff_across_ranks": diff,
                   "failed_samples": int(problems["sample"]),
                   "unreadable_files": problems.to_dict(), "time": time.time()}
        if info.is_main:
            logger.record(summary)
            for line in problems.summary_lines():
                logger.write(f"data problems: {line}")
            logger.write(f"done: step {step}, checkpoint {last_ckpt}"
                         + (f"; {problems.total()} unreadable file(s) or failed sample(s), listed in log.jsonl"
                            if problems.total() else "; every file read"))
        summary["losses"] = losses
        return summary
    finally:
        # Loader workers ignore SIGTERM (see worker_init), so on an error path Python's exit
        # handler would wait for them forever: stop them here, whatever they are doing.
        shutdown_loader(loader)
        logger.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
