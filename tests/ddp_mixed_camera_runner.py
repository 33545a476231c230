"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): two training steps of
the micro fusion model wrapped as the trainer wraps it (global-batch norms, DDP), where rank 0's
batch has no camera image and rank 1's has all six. Every rank must issue the same collectives
(a rank whose camera encoder skipped its norms would pair its next all-reduce with another rank's
camera norm: an error or a hang). Prints 'RANK <r> OK <json>' at the end."""
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from perception.engine.distributed import (DistInfo, convert_batchnorm, derived_buffer_names,  # noqa: E402
                                          wrap_ddp)
from perception.models.common import norm_with_running_stats  # noqa: E402
from perception.engine.trainer import compute_losses  # noqa: E402
from perception.models.build import build_model  # noqa: E402
from test_model import micro_cfg, random_batch  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=int(os.environ.get("DDP_TIMEOUT_S", "60"))))
    rank, world = dist.get_rank(), dist.get_world_size()
    info = DistInfo(rank, world, rank, "gloo")
    cfg = micro_cfg("model.fusion.dropout_lidar=0.0", "model.fusion.dropout_camera=0.0",
                    "model.fusion.dropout_radar=0.0")
    torch.manual_seed(0)
    model = convert_batchnorm(build_model(cfg), use_cuda=False)
    ddp = wrap_ddp(model, info, torch.device("cpu"), find_unused_parameters=cfg.train.find_unused_parameters,
                   sync_bn=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = random_batch(cfg, B=1, seed=rank, camera=(rank == 1))
    assert bool(batch.camera_mask.any()) == (rank == 1)
    losses = []
    for _ in range(2):
        terms = compute_losses(ddp, model, batch, "sample")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        losses.append(float(terms["total"].detach()))
    # parameters and every buffer (batch-norm running statistics included: DDP does not re-send
    # them) are identical on both ranks
    worst = 0.0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        ref = t.detach().clone()
        dist.broadcast(ref, 0)
        if t.numel():
            worst = max(worst, float((t.detach().double() - ref.double()).abs().max()))
    cam_grad = [p.grad for p in model.camera.parameters()]
    # DDP's per-forward buffer traffic: off (global-batch norms keep the statistics identical), and
    # the derived constants are outside DDP's buffers altogether
    sent = [b for b in getattr(ddp, "modules_buffers", [])]
    derived = set(derived_buffer_names(model))
    # a pillar net's norm (PointBatchNorm, converted) with 1 point on rank 0 and none on rank 1: the
    # group has fewer than 2 values, so both ranks normalize with the running statistics
    pnorm = model.lidar.pfn.mlp[1]
    x = torch.randn(1 if rank == 0 else 0, pnorm.num_features, generator=torch.Generator().manual_seed(3))
    before = pnorm.num_batches_tracked.clone()
    y = pnorm(x)
    fallback_ok = (torch.equal(y, norm_with_running_stats(pnorm, x))
                   and torch.equal(pnorm.num_batches_tracked, before))
    out = {"losses": losses, "max_diff_to_rank0": worst, "camera_images": int(batch.camera_mask.sum()),
           "camera_params_with_grad": sum(g is not None for g in cam_grad),
           "camera_params": len(cam_grad),
           "bev_encoder_bn_batches": int(model.camera.bev_encoder[0][1].num_batches_tracked),
           "broadcast_buffers": bool(ddp.broadcast_buffers),
           "ddp_buffer_bytes": sum(b.numel() * b.element_size() for b in sent),
           "derived_buffers": len(derived),
           "derived_in_ddp_buffers": sum(any(b is d for b in sent) for d in
                                         (dict(model.named_buffers())[n] for n in derived)),
           "point_norm_type": type(pnorm).__name__, "point_norm_fallback_ok": bool(fallback_ok)}
    dist.barrier()
    print(f"RANK {rank} OK {json.dumps(out)}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
