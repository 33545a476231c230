"""DDP on CPU (gloo): a rank whose batch has no camera image issues the same collectives as a rank
whose batch has them (no hang, identical weights and batch-norm statistics on both ranks); DDP sends
no buffers per forward; batch-norm conversion keeps the pillar nets' fallback for fewer than 2 points."""
import json
import re
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from perception.engine.distributed import AllReduceBatchNorm, convert_batchnorm, derived_buffer_names
from perception.models.build import build_model
from perception.models.lidar.pointpillars import PointBatchNorm

from conftest import PROJECT, require_real_root
from test_model import micro_cfg

PY = os.path.join(PROJECT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable


def test_two_ranks_one_without_camera_step_together():
    """Rank 0's batch has no image, rank 1's has six. Before the fix rank 0's camera encoder
    returned early and its next all-reduce met rank 1's camera norm (gloo: 'collective mismatch',
    or a hang): the subprocess and gloo timeouts turn a hang into a failure."""
    require_real_root()  # random_batch takes the real camera rig
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(PROJECT, "tests", "ddp_mixed_camera_runner.py")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", DDP_TIMEOUT_S="90")
    p = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("2-process run with a camera-less rank hung (no result within 420 s)")
    assert p.returncode == 0, out[-4000:]
    # Both ranks print to one pipe: a rank's line can land in the middle of the other's (or of a
    # warning), so each record is found by its marker and decoded up to the end of its JSON object.
    res = {}
    decoder = json.JSONDecoder()
    for m in re.finditer(r"RANK (\d+) OK ", out):
        res[int(m.group(1))] = decoder.raw_decode(out, m.end())[0]
    assert sorted(res) == [0, 1], out[-4000:]
    assert res[0]["camera_images"] == 0 and res[1]["camera_images"] == 6
    for r in res.values():
        assert r["max_diff_to_rank0"] == 0.0  # parameters and running statistics, without re-sending
        assert all(torch.isfinite(torch.tensor(r["losses"])))
        # the image-less rank ran the camera network on no image: every camera parameter has a
        # gradient (zero there), and the norms took the group's statistics on both ranks
        assert r["camera_params_with_grad"] == r["camera_params"]
        assert r["bev_encoder_bn_batches"] == 2
        assert r["broadcast_buffers"] is False
        assert r["derived_buffers"] >= 3 and r["derived_in_ddp_buffers"] == 0
        assert r["point_norm_type"] == "AllReduceBatchNorm" and r["point_norm_fallback_ok"]


@pytest.mark.parametrize("use_cuda", [True, False], ids=["gpu-conversion", "cpu-conversion"])
def test_batchnorm_conversion_keeps_point_norm_fallback_and_state(use_cuda):
    torch.manual_seed(0)
    model = build_model(micro_cfg())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    params = {name: p for name, p in model.named_parameters()}
    converted = convert_batchnorm(model, use_cuda)
    after = dict(converted.named_modules())
    assert any(k is PointBatchNorm for k in kinds.values())
    for name, kind in kinds.items():
        if kind is PointBatchNorm or not use_cuda:
            assert type(after[name]) is AllReduceBatchNorm, name  # keeps the < 2 points fallback
        else:
            assert type(after[name]) is nn.SyncBatchNorm, name
    state = converted.state_dict()
    assert state.keys() == before.keys()
    for k in state:
        assert torch.equal(state[k], before[k]), k
    for name, p in converted.named_parameters():  # the optimizer's parameters stay the same objects
        assert p is params[name], name


def test_derived_buffers_are_the_constants_not_the_statistics():
    model = build_model(micro_cfg())
    derived = set(derived_buffer_names(model))
    assert {"fusion.pos", "camera.frustum_pixels", "camera.depth_centres"} <= derived
    assert not any("running_" in n or "num_batches" in n for n in derived)
