"""Process groups and distributed helpers.

``init_distributed()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...):
a plain ``python tools/train.py`` is one process with no process group; ``torchrun
--nproc_per_node=G tools/train.py`` (one machine) or ``torchrun --nnodes=N --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT ...`` (several) gives a group on gloo (CPU) or nccl (GPU) with no other
change.

Batch norm under DDP: on GPU the model's BatchNorm layers become ``torch.nn.SyncBatchNorm``; that
module has no CPU implementation, so on CPU they become ``AllReduceBatchNorm`` (as do the pillar
nets' ``PointBatchNorm`` on either device, see ``convert_batchnorm``), which all-reduces
(sum, sum of squares, count) over the group with the differentiable
``torch.distributed.nn.functional.all_reduce`` in training mode. Either way the statistics are those
of the global batch, so G processes with batch b normalize as one process with batch G x b would,
and the state-dict keys stay those of ``nn.BatchNorm*d``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist
from torch import nn

from ..models.common import norm_with_running_stats


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool, timeout_s: int = 1800) -> DistInfo:
    """The process group from torchrun's environment (none for a single plain process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, backend)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> List[Any]:
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over the group; the tensor itself on one process."""
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are over the whole process group (CPU and GPU).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d``; in eval mode (or outside
    a process group) it is the plain batch norm. The batch statistics come from one all-reduce of
    (sum, sum of squares, count) per channel; the gradient flows through the all-reduce.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        # float64 sums: var = E[x^2] - mean^2 loses float32 precision when the mean is large next to
        # the spread (raw point coordinates of tens of metres); ATen's one-process batch norm uses Welford
        xd = x.double()
        count = torch.full((1,), float(x.numel() // max(C, 1)), dtype=torch.float64, device=x.device)
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])
        stats = all_reduce(stats, op=dist.ReduceOp.SUM)
        n = stats[-1]
        if float(n) < 2:
            # no statistics from fewer than 2 values in the whole group (a sensor absent on every
            # rank): normalize with the running ones, as PointBatchNorm does in one process
            return norm_with_running_stats(self, x)
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp(min=0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * (n / (n - 1).clamp(min=1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        shape = [1, C] + [1] * (x.dim() - 2)
        mean, var = mean.float(), var.float()
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, use_cuda: bool) -> nn.Module:
    """BatchNorm layers -> global-batch norms, weights and buffers kept (the same state-dict keys).

    On GPU a BatchNorm becomes ``nn.SyncBatchNorm``, on CPU (which SyncBatchNorm does not run on)
    ``AllReduceBatchNorm``. A ``PointBatchNorm`` (per-point norms of the pillar nets) becomes
    ``AllReduceBatchNorm`` on either device: it keeps PointBatchNorm's fallback to the running
    statistics when the whole group holds fewer than 2 points (an absent sensor on every rank), which
    SyncBatchNorm would lose (it fails on a single value, and has no statistics of none).
    """
    from ..models.lidar.pointpillars import PointBatchNorm

    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                       AllReduceBatchNorm)):
        if use_cuda and not isinstance(module, PointBatchNorm):
            out = nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        else:
            out = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, use_cuda))
    return out

def derived_buffer_names(module: nn.Module) -> List[str]:
    """Names of ``module``'s non-persistent buffers: constants every process derives from the config
    when it builds the model (positional grids, frustum pixels, depth bin centres, range vectors), so
    they are never checkpointed and never need sending."""
    persistent = set(module.state_dict().keys())
    return [name for name, _ in module.named_buffers() if name not in persistent]


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool,
             sync_bn: bool) -> nn.Module:
    """``model`` in DistributedDataParallel, without re-sending buffers that need no sending.

    DDP's default ``broadcast_buffers=True`` copies every buffer of rank 0 to all ranks before each
    forward (8.7 MB per step for the nuScenes model, mostly the fusion's positional grid). The
    derived constants (``derived_buffer_names``) are identical on every rank by construction: they
    are left out of DDP's buffer handling altogether. The other buffers are batch-norm running
    statistics: with ``sync_bn`` every rank computes them from the same all-reduced batch statistics,
    so they stay identical without a broadcast (the torchrun tests check it); without ``sync_bn``
    each rank's differ and rank 0's are still broadcast, as before, so that every rank (and the
    checkpoint) holds one set.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    derived = derived_buffer_names(model)
    if derived and hasattr(DDP, "_set_params_and_buffers_to_ignore_for_model"):
        DDP._set_params_and_buffers_to_ignore_for_model(model, derived)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, broadcast_buffers=not sync_bn)
