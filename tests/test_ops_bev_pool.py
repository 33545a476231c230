"""BEV pooling: the interval kernels equal the index_add_ reference bit for bit, forward and backward."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from perception.ops.bev_pool import bev_pool, bev_pool_geometry, bev_pool_reference

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_case(P, C, B, H, W, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # Some coordinates fall outside the grid or the batch: those points are dropped.
    coords = torch.stack([torch.randint(-1, B + 1, (P,), generator=g), torch.randint(-2, H + 2, (P,), generator=g),
                          torch.randint(-2, W + 2, (P,), generator=g)], 1)
    coords[: P // 4, 1:] = torch.tensor([H // 2, W // 3])  # a crowded cell
    feats = torch.randn(P, C, generator=g, dtype=dtype)
    return feats, coords


def forward_backward(fn, feats, grad_out_seed=1):
    f = feats.clone().requires_grad_(True)
    out = fn(f)
    g = torch.Generator().manual_seed(grad_out_seed)
    go = torch.randn(out.shape, generator=g, dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, f, go)
    return out.detach(), grad


@pytest.mark.parametrize("P,C,B,H,W", [(5000, 16, 2, 20, 30), (40_000, 64, 1, 64, 64), (300, 3, 3, 5, 7)])
def test_forward_backward_equal_reference(P, C, B, H, W):
    feats, coords = random_case(P, C, B, H, W)
    geom = bev_pool_geometry(coords, B, (H, W))
    out, grad = forward_backward(lambda f: bev_pool(f, geom), feats)
    ref_out, ref_grad = forward_backward(lambda f: bev_pool_reference(f, coords, B, (H, W)), feats)
    assert out.shape == (B, C, H, W) and out.is_contiguous()
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
    dropped = geom.point_cells < 0
    assert dropped.any() and (grad[dropped] == 0).all()


def test_empty_cells_are_zero_and_geometry_is_reused():
    feats, coords = random_case(2000, 8, 2, 16, 16, seed=3)
    coords[:, 1] = coords[:, 1].clamp(0, 7)  # rows 8..15 stay empty
    geom = bev_pool_geometry(coords, 2, (16, 16))
    for seed in (4, 5):  # one geometry, two feature tensors
        f = torch.randn(2000, 8, generator=torch.Generator().manual_seed(seed))
        out = bev_pool(f, geom)
        assert torch.equal(out, bev_pool_reference(f, coords, 2, (16, 16)))
        assert (out[:, :, 8:] == 0).all() and (out[:, :, :8] != 0).any()


def test_all_points_in_one_cell():
    P, C = 3000, 5
    feats = torch.randn(P, C)
    coords = torch.tensor([[1, 2, 3]]).repeat(P, 1)
    geom = bev_pool_geometry(coords, 2, (4, 5))
    assert geom.interval_starts.tolist() == [0] and geom.interval_lengths.tolist() == [P]
    out, grad = forward_backward(lambda f: bev_pool(f, geom), feats)
    ref_out, ref_grad = forward_backward(lambda f: bev_pool_reference(f, coords, 2, (4, 5)), feats)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 2, 3] = True
    assert (out.permute(0, 2, 3, 1)[~mask] == 0).all()


def test_no_points_and_all_dropped():
    for coords in (torch.zeros(0, 3, dtype=torch.long), torch.tensor([[0, -1, 0], [5, 0, 0]])):
        feats = torch.randn(len(coords), 4, requires_grad=True)
        geom = bev_pool_geometry(coords, 2, (3, 3))
        out = bev_pool(feats, geom)
        assert out.shape == (2, 4, 3, 3) and (out == 0).all()
        out.sum().backward()
        assert feats.grad.shape == feats.shape and (feats.grad == 0).all()


def test_gradcheck_double():
    feats, coords = random_case(60, 3, 2, 4, 4, seed=6, dtype=torch.float64)
    geom = bev_pool_geometry(coords, 2, (4, 4))
    assert torch.autograd.gradcheck(lambda f: bev_pool(f, geom), (feats.requires_grad_(True),))


def test_rejects_mismatched_features():
    geom = bev_pool_geometry(torch.zeros(5, 3, dtype=torch.long), 1, (2, 2))
    with pytest.raises(ValueError):
        bev_pool(torch.randn(4, 2), geom)


CUDA_CHECK = textwrap.dedent("""
    import sys, numpy as np, torch
    sys.path.insert(0, {tests!r})
    from numba import cuda
    from test_ops_bev_pool import random_case
    from perception.ops.bev_pool import (bev_pool_geometry, bev_pool_reference, bev_pool_forward_cuda,
                                         bev_pool_backward_cuda)
    for (P, C, B, H, W) in [(150, 3, 2, 4, 5), (40, 2, 1, 3, 3)]:
        feats, coords = random_case(P, C, B, H, W, seed=P)
        geom = bev_pool_geometry(coords, B, (H, W))
        d = lambda t: cuda.to_device(t.numpy())
        out = cuda.to_device(np.zeros((B * H * W, C), np.float32))
        bev_pool_forward_cuda(d(feats), d(geom.order), d(geom.interval_starts), d(geom.interval_lengths),
                              d(geom.interval_cells), out)
        f = feats.clone().requires_grad_(True)
        ref = bev_pool_reference(f, coords, B, (H, W))
        got = out.copy_to_host().reshape(B, H, W, C).transpose(0, 3, 1, 2)
        assert np.array_equal(got, ref.detach().numpy())
        go = torch.randn(B, C, H, W)
        (ref_grad,) = torch.autograd.grad(ref, f, go)
        grad = cuda.to_device(np.full((P, C), np.nan, np.float32))
        bev_pool_backward_cuda(d(go.permute(0, 2, 3, 1).reshape(-1, C)), d(geom.point_cells), grad)
        assert np.array_equal(grad.copy_to_host(), ref_grad.numpy())
    print("CUDA-CHECK-OK")
""")


def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = CUDA_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "CUDA-CHECK-OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device; the simulator twin above runs instead")
def test_cuda_tensors_equal_reference():
    feats, coords = random_case(200_000, 80, 2, 128, 128, seed=9)
    geom = bev_pool_geometry(coords.cuda(), 2, (128, 128))
    out, grad = forward_backward(lambda f: bev_pool(f.cuda(), geom).cpu(), feats)
    ref_out, ref_grad = forward_backward(lambda f: bev_pool_reference(f, coords, 2, (128, 128)), feats)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
