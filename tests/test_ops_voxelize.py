"""Voxelization: the numba CPU kernel and the numba.cuda kernel (simulator) equal the reference bit
for bit, and the reference equals a literal transcription of mmcv's CPU kernel."""
import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from perception.ops import voxelize as vx

PILLARS = dict(voxel_size=[0.2, 0.2, 8.0], point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
GRID3D = dict(voxel_size=[0.075, 0.075, 0.2], point_cloud_range=[-54.0, -54.0, -5.0, 54.0, 54.0, 3.0])
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIDAR_GLOB = os.path.join(PROJECT, "..", "shared", "data", "nuscenes-real", "trainval-extract", "samples",
                          "LIDAR_TOP", "*.pcd.bin")


def mmcv_literal(points, voxel_size, point_cloud_range, P, V):
    """mmcv's hard_voxelize_forward_cpu_kernel transcribed line by line (float32 scalars), with the
    documented choice for NaN/inf (out of range). Slow: small inputs only."""
    vs = np.asarray(voxel_size, np.float32)
    pcr = np.asarray(point_cloud_range, np.float32)
    grid = []
    for j in range(3):
        q = float((pcr[3 + j] - pcr[j]) / vs[j])
        grid.append(int(np.floor(q + 0.5)))  # C round() of a positive value
    N, C = points.shape
    voxels = np.zeros((V, P, C), np.float32)
    coors = np.zeros((V, 3), np.int32)
    num = np.zeros(V, np.int32)
    table = {}
    voxel_num = 0
    for i in range(N):
        coor = [0, 0, 0]
        failed = False
        for j in range(3):
            q = (points[i, j] - pcr[j]) / vs[j]
            assert q.dtype == np.float32
            if not np.isfinite(q):
                failed = True
                break
            c = int(np.floor(q))
            if c < 0 or c >= grid[j]:
                failed = True
                break
            coor[2 - j] = c
        if failed:
            continue
        v = table.get(tuple(coor), -1)
        if v == -1:
            v = voxel_num
            if voxel_num >= V:
                continue
            voxel_num += 1
            table[tuple(coor)] = v
            coors[v] = coor
        n = num[v]
        if n < P:
            voxels[v, n] = points[i]
            num[v] += 1
    return voxels[:voxel_num], coors[:voxel_num], num[:voxel_num]


def assert_bit_identical(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = g.numpy() if isinstance(g, torch.Tensor) else g
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, w.dtype, g.shape, w.shape)
        assert g.tobytes() == w.tobytes()


def random_cloud(n, C=5, seed=0, lo=-60.0, hi=60.0, zlo=-7.0, zhi=5.0, dup_every=5):
    rng = np.random.default_rng(seed)
    pts = np.empty((n, C), np.float32)
    pts[:, :2] = rng.uniform(lo, hi, (n, 2))
    pts[:, 2] = rng.uniform(zlo, zhi, n)
    pts[:, 3:] = rng.uniform(0, 255, (n, C - 3))
    if n > dup_every:  # repeated positions: voxels with many points, some over the cap
        pts[::dup_every, :3] = pts[1, :3]
    return pts


def check_all(points, P, V, **grid):
    ref = vx.hard_voxelize_reference(points, max_points_per_voxel=P, max_voxels=V, **grid)
    assert_bit_identical(vx.hard_voxelize(points, max_points_per_voxel=P, max_voxels=V, **grid), ref)
    dyn_ref = vx.dynamic_voxelize_reference(points, **grid)
    assert_bit_identical([vx.dynamic_voxelize(points, **grid)], [dyn_ref])
    return ref


@pytest.fixture(params=["dense", "hash"])
def table_kind(request, monkeypatch):
    """Runs a test with the dense cell table and again with the hash table forced."""
    if request.param == "hash":
        monkeypatch.setattr(vx, "DENSE_TABLE_MAX_CELLS", 0)
    return request.param


def test_reference_matches_mmcv_transcription():
    pts = random_cloud(3000, seed=1, lo=-6, hi=6, zlo=-6, zhi=4)
    pts[7, 0] = np.nan
    pts[8, 1] = np.inf
    pts[9, 2] = -np.inf
    for grid, P, V in [(dict(voxel_size=[1.0, 1.0, 8.0], point_cloud_range=[-5, -5, -5, 5, 5, 3]), 4, 60),
                       (dict(voxel_size=[0.5, 0.5, 0.5], point_cloud_range=[-5, -5, -5, 5, 5, 3]), 3, 10_000)]:
        assert_bit_identical(vx.hard_voxelize_reference(pts, max_points_per_voxel=P, max_voxels=V, **grid),
                             mmcv_literal(pts, grid["voxel_size"], grid["point_cloud_range"], P, V))


@pytest.mark.parametrize("n,seed", [(1000, 0), (50_000, 1)])
@pytest.mark.parametrize("grid", [PILLARS, GRID3D], ids=["pillars", "grid3d"])
def test_random_clouds(n, seed, grid, table_kind):
    ref = check_all(random_cloud(n, seed=seed), 8, 20_000, **grid)
    assert len(ref[0]) > 0


def test_real_sweeps(table_kind):
    files = sorted(glob.glob(LIDAR_GLOB))
    if not files:
        pytest.skip(f"no real LiDAR sweeps at {LIDAR_GLOB}")
    pts = np.concatenate([np.fromfile(f, np.float32).reshape(-1, 5) for f in files[:4]])
    ref = check_all(pts, 32, 40_000, **PILLARS)
    assert 1000 < len(ref[0]) < 40_000 and ref[2].max() == 32  # caps overflow on real data
    check_all(pts, 10, 30_000, **GRID3D)  # reaches the voxel cap
    # A few thousand points against the literal mmcv transcription too.
    assert_bit_identical(vx.hard_voxelize(pts[:4000], max_points_per_voxel=5, max_voxels=500, **PILLARS),
                         mmcv_literal(pts[:4000], PILLARS["voxel_size"], PILLARS["point_cloud_range"], 5, 500))


def test_repeated_calls_reuse_tables_cleanly(table_kind):
    a, b = random_cloud(20_000, seed=2), random_cloud(5_000, seed=3)
    for pts in (a, b, a, b):
        check_all(pts, 5, 3_000, **PILLARS)


def test_empty_and_single_point(table_kind):
    empty = np.zeros((0, 5), np.float32)
    vox, coords, num = check_all(empty, 4, 10, **PILLARS)
    assert vox.shape == (0, 4, 5) and coords.shape == (0, 3) and num.shape == (0,)
    one = np.array([[0.1, -0.1, 0.0, 7.0, 0.5]], np.float32)
    vox, coords, num = check_all(one, 4, 10, **PILLARS)
    assert coords.tolist() == [[0, 255, 256]] and num.tolist() == [1]
    assert vox[0, 0].tolist() == one[0].tolist() and not vox[0, 1:].any()
    outside = np.array([[60.0, 0.0, 0.0, 1.0, 0.0]], np.float32)
    assert check_all(outside, 4, 10, **PILLARS)[0].shape == (0, 4, 5)


def test_cell_borders_and_upper_bound(table_kind):
    grid = dict(voxel_size=[0.25, 0.5, 1.0], point_cloud_range=[0.0, -1.0, -2.0, 2.0, 1.0, 2.0])
    ub = np.float32(2.0)
    pts = np.array([
        [0.0, -1.0, -2.0],           # lower corner: cell (0, 0, 0)
        [0.5, 0.0, 0.0],             # exact borders (exact in float32): x 2, y 2, z 2
        [0.25, 0.5, 1.0],            # x 1, y 3, z 3
        [ub, 0.0, 0.0],              # x on the upper bound: out of range
        [np.nextafter(ub, np.float32(0)), 0.0, 0.0],  # just below: last cell
        [1.0, 1.0, 0.0],             # y on the upper bound: out
        [1.0, 0.0, 2.0],             # z on the upper bound: out
        [-1e-7, 0.0, 0.0],           # just below the lower bound: out
    ], np.float32)
    pts = np.concatenate([pts, np.arange(len(pts), dtype=np.float32)[:, None]], axis=1)
    dyn = vx.dynamic_voxelize(pts, **grid)
    assert dyn.tolist() == [[0, 0, 0], [2, 2, 2], [3, 3, 1], [-1, -1, -1], [2, 2, 7],
                            [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]
    vox, coords, num = check_all(pts, 2, 10, **grid)
    assert num.tolist() == [1, 1, 1, 1] and vox[:, 0, 3].tolist() == [0, 1, 2, 4]


def test_grid_size_rounds_half_away_from_zero():
    # (2.5 - 0) / 1 = 2.5: C round gives 3 (numpy's round-half-even would give 2).
    assert vx.voxel_grid([1.0, 1.0, 1.0], [0, 0, 0, 2.5, 1, 1])[2].tolist() == [3, 1, 1]
    assert vx.voxel_grid(**PILLARS)[2].tolist() == [512, 512, 1]
    assert vx.voxel_grid(**GRID3D)[2].tolist() == [1440, 1440, 40]


def test_nan_and_inf_are_out_of_range(table_kind):
    pts = random_cloud(200, seed=4, lo=-10, hi=10, zlo=-4, zhi=2)
    bad = [np.nan, np.inf, -np.inf]
    for k in range(9):
        pts[k, k % 3] = bad[k // 3]
    pts[20, 4] = np.nan  # a NaN feature column is just data: copied
    dyn = vx.dynamic_voxelize(pts, **PILLARS)
    assert (dyn[:9] == -1).all() and (dyn[9:] >= 0).all()
    vox, coords, num = check_all(pts, 100, 1000, **PILLARS)
    assert num.sum() == 200 - 9
    assert np.isnan(vox[..., 4]).sum() == 1


def test_per_voxel_cap_overflow_keeps_first_points_in_input_order(table_kind):
    rng = np.random.default_rng(5)
    pts = np.zeros((40, 4), np.float32)
    pts[:, :3] = rng.uniform(0.01, 0.19, (40, 3))  # all in one pillar
    pts[:, 3] = np.arange(40)
    vox, coords, num = check_all(pts, 6, 10, **PILLARS)
    assert num.tolist() == [6] and vox[0, :, 3].tolist() == [0, 1, 2, 3, 4, 5]


def test_voxel_cap_reached_still_fills_existing_voxels(table_kind):
    # Voxel of each point (pillars 1 m): a b c a d b a e c; cap 3 voxels.
    cell_x = {"a": 0.5, "b": 1.5, "c": 2.5, "d": 3.5, "e": 4.5}
    seq = "abcadbaec"
    pts = np.array([[cell_x[s], 0.5, 0.0, i] for i, s in enumerate(seq)], np.float32)
    grid = dict(voxel_size=[1.0, 1.0, 4.0], point_cloud_range=[0, 0, -2, 10, 10, 2])
    vox, coords, num = check_all(pts, 4, 3, **grid)
    assert coords[:, 2].tolist() == [0, 1, 2] and num.tolist() == [3, 2, 2]
    assert vox[0, :3, 3].tolist() == [0, 3, 6] and vox[1, :2, 3].tolist() == [1, 5]
    assert vox[2, :2, 3].tolist() == [2, 8] and not vox[0, 3].any()


def test_non_contiguous_input_and_feature_columns(table_kind):
    base = random_cloud(6000, C=9, seed=6)
    for pts in (base[::3], np.asfortranarray(base), base[:, :3], base[:, :6]):
        assert not pts.flags.c_contiguous
        ref = check_all(pts, 5, 2000, **PILLARS)
        assert ref[0].shape[2] == pts.shape[1]


def test_torch_inputs_follow_the_input_type():
    pts = random_cloud(3000, seed=7)
    ref = vx.hard_voxelize_reference(pts, max_points_per_voxel=5, max_voxels=1000, **PILLARS)
    out = vx.hard_voxelize(torch.from_numpy(pts)[:, :], max_points_per_voxel=5, max_voxels=1000, **PILLARS)
    assert all(isinstance(t, torch.Tensor) for t in out)
    assert [t.dtype for t in out] == [torch.float32, torch.int32, torch.int32]
    assert_bit_identical(out, ref)
    t_ref = vx.hard_voxelize(torch.from_numpy(pts), max_points_per_voxel=5, max_voxels=1000, impl="reference",
                             **PILLARS)
    assert_bit_identical(t_ref, ref)
    dyn = vx.dynamic_voxelize(torch.from_numpy(pts).t().contiguous().t(), **PILLARS)
    assert isinstance(dyn, torch.Tensor) and dyn.dtype == torch.int32
    assert_bit_identical([dyn], [vx.dynamic_voxelize_reference(pts, **PILLARS)])


def test_rejects_bad_inputs():
    with pytest.raises(TypeError):
        vx.hard_voxelize(np.zeros((3, 4)), max_points_per_voxel=2, max_voxels=2, **PILLARS)
    with pytest.raises(ValueError):
        vx.dynamic_voxelize(np.zeros((3, 2), np.float32), **PILLARS)
    with pytest.raises(ValueError):
        vx.hard_voxelize(np.zeros((3, 4), np.float32), max_points_per_voxel=0, max_voxels=2, **PILLARS)


def test_scatter_pillars_dense_map_and_gradient():
    feats = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    coords = torch.tensor([[0, 0, 1, 2], [1, 0, 0, 0], [0, 0, 3, 4], [1, 0, 2, 4]], dtype=torch.int32)
    bev = vx.scatter_pillars(feats, coords, batch_size=2, grid_hw=(4, 5))
    assert bev.shape == (2, 3, 4, 5) and bev.is_contiguous()
    want = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    for m, (b, _, y, x) in enumerate(coords.tolist()):
        want[b, :, y, x] = feats[m].detach()
    assert torch.equal(bev.detach(), want)
    assert torch.autograd.gradcheck(lambda f: vx.scatter_pillars(f, coords, 2, (4, 5)), (feats,))
    assert vx.scatter_pillars(feats[:0], coords[:0], 2, (4, 5)).abs().sum() == 0


def test_scatter_pillars_from_hard_voxelize():
    pts = random_cloud(5000, seed=8)
    vox, coords, num = vx.hard_voxelize(torch.from_numpy(pts), max_points_per_voxel=8, max_voxels=4000, **PILLARS)
    feats = vox.sum(1) / num[:, None].float()
    bcoords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], 1)
    bev = vx.scatter_pillars(feats, bcoords, 1, (512, 512))
    assert torch.equal(bev[0][:, coords[:, 1].long(), coords[:, 2].long()].t(), feats)
    assert (bev.abs().sum(1) > 0).sum() == len(coords)


# ----------------------------------------------------------------------------------------------
# numba.cuda kernels: the simulator always (in a subprocess: numba reads NUMBA_ENABLE_CUDASIM at
# import), a real GPU when there is one.
# ----------------------------------------------------------------------------------------------
CUDA_CHECK = textwrap.dedent("""
    import itertools, numpy as np, sys
    sys.path.insert(0, {tests!r})
    from test_ops_voxelize import random_cloud, assert_bit_identical, PILLARS
    from perception.ops import voxelize as vx
    grids = [dict(voxel_size=[1.0, 1.0, 6.0], point_cloud_range=[-4, -4, -3, 4, 4, 3]),
             dict(voxel_size=[0.5, 0.5, 0.5], point_cloud_range=[-3, -3, -2, 3, 3, 2])]
    pts = random_cloud({n}, C=4, seed=11, lo=-5, hi=5, zlo=-3, zhi=3)
    pts[3, 0] = np.nan; pts[4, 2] = np.inf
    # a pile: 150 points in one cell, interleaved with the rest (input order decides which P are kept)
    pile = random_cloud(150, C=4, seed=12, lo=0.1, hi=0.4, zlo=0.1, zhi=0.4)
    piled = np.concatenate([pts, pile])[np.random.default_rng(3).permutation(len(pts) + len(pile))]
    cases = [(pts, 3, 12), (pts, 6, 10_000), (pts[::2], 2, 5), (pts[:1], 3, 3), (pts[:0], 3, 3),
             (piled, 5, 10_000), (piled, 1, 7)]
    # crowded voxels (more than max(_CROWDED, P) points) go to the block kernel write_crowded: at 64 only
    # the pile, at 0 every voxel with more than P points
    for crowded, dense_max, grid in itertools.product((64, 0), (1 << 20, 0), grids):
        vx._CROWDED = crowded
        vx.DENSE_TABLE_MAX_CELLS = dense_max  # dense table, then hash table
        for p, P, V in cases:
            ref = vx.hard_voxelize_reference(p, max_points_per_voxel=P, max_voxels=V, **grid)
            assert_bit_identical(vx.hard_voxelize(p, max_points_per_voxel=P, max_voxels=V, impl="cuda", **grid),
                                 ref)
            assert_bit_identical([vx.dynamic_voxelize(p, impl="cuda", **grid)],
                                 [vx.dynamic_voxelize_reference(p, **grid)])
    print("CUDA-CHECK-OK")
""")


def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = CUDA_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)), n=120)
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "CUDA-CHECK-OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device; the simulator twin above runs instead")
def test_cuda_kernels_on_gpu_tensors():
    pts = random_cloud(300_000, seed=12)
    # random_cloud puts every 5th point on one position: a 60k-point voxel for write_crowded
    for grid, P, V in [(PILLARS, 32, 40_000), (GRID3D, 10, 120_000)]:
        ref = vx.hard_voxelize_reference(pts, max_points_per_voxel=P, max_voxels=V, **grid)
        out = vx.hard_voxelize(torch.from_numpy(pts).cuda(), max_points_per_voxel=P, max_voxels=V, **grid)
        assert all(t.is_cuda for t in out)
        assert_bit_identical([t.cpu() for t in out], ref)
        dyn = vx.dynamic_voxelize(torch.from_numpy(pts).cuda(), **grid)
        assert_bit_identical([dyn.cpu()], [vx.dynamic_voxelize_reference(pts, **grid)])


# ----------------------------------------------------------------------------------------------
# Batched hard voxelization: one call per batch equals one call per sample, stacked
# ----------------------------------------------------------------------------------------------
def batch_clouds(seed=0):
    """Samples of the batch edge cases: an empty one, a single point, one over the voxel cap, NaN/inf."""
    a = random_cloud(4000, seed=seed)
    a[7, 0], a[8, 2] = np.nan, np.inf
    return [a, random_cloud(0, seed=seed + 1), random_cloud(1, seed=seed + 2), random_cloud(9000, seed=seed + 3),
            a[:50].copy()]


@pytest.mark.parametrize("grid", [PILLARS, GRID3D], ids=["pillars", "grid3d"])
def test_hard_voxelize_batch_equals_per_sample(grid, table_kind):
    clouds = batch_clouds()
    for P, V in [(8, 20_000), (3, 700), (1, 1)]:
        per = [vx.hard_voxelize_reference(c, max_points_per_voxel=P, max_voxels=V, **grid) for c in clouds]
        want = (np.concatenate([v for v, _, _ in per]),
                np.concatenate([np.concatenate([np.full((len(c), 1), b, np.int32), c], 1)
                                for b, (_, c, _) in enumerate(per)]),
                np.concatenate([n for _, _, n in per]))
        assert_bit_identical(vx.hard_voxelize_batch(clouds, max_points_per_voxel=P, max_voxels=V, **grid), want)
        assert_bit_identical(vx.hard_voxelize_batch(clouds, max_points_per_voxel=P, max_voxels=V, impl="per_sample",
                                                    **grid), want)
        got = vx.hard_voxelize_batch([torch.from_numpy(c) for c in clouds], max_points_per_voxel=P, max_voxels=V,
                                     **grid)
        assert all(isinstance(t, torch.Tensor) for t in got)
        assert_bit_identical(got, want)
    one = vx.hard_voxelize_batch(clouds[:1], max_points_per_voxel=4, max_voxels=100, **grid)
    assert_bit_identical(one[1:2], [np.concatenate([np.zeros((len(one[1]), 1), np.int32),
                                                    vx.hard_voxelize(clouds[0], max_points_per_voxel=4, max_voxels=100,
                                                                     **grid)[1]], 1)])
    with pytest.raises(ValueError):
        vx.hard_voxelize_batch([], max_points_per_voxel=4, max_voxels=100, **grid)


def test_voxelize_batch_equals_per_sample_in_the_encoder():
    from perception.models.lidar.pointpillars import voxelize_batch, voxelize_batch_per_sample

    pts = [torch.from_numpy(c) for c in batch_clouds(seed=5)]
    args = (PILLARS["voxel_size"], PILLARS["point_cloud_range"], 10, 3000)
    got, want = voxelize_batch(pts, *args), voxelize_batch_per_sample(pts, *args)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)


CUDA_BATCH_CHECK = textwrap.dedent("""
    import numpy as np, sys
    sys.path.insert(0, {tests!r})
    from test_ops_voxelize import random_cloud, assert_bit_identical
    from perception.ops import voxelize as vx
    grids = [dict(voxel_size=[1.0, 1.0, 6.0], point_cloud_range=[-4, -4, -3, 4, 4, 3]),
             dict(voxel_size=[0.5, 0.5, 0.5], point_cloud_range=[-3, -3, -2, 3, 3, 2])]
    pts = random_cloud({n}, C=4, seed=11, lo=-5, hi=5, zlo=-3, zhi=3)
    pts[3, 0] = np.nan; pts[4, 2] = np.inf
    k = {n} // 2
    clouds = [pts[:k], pts[:0], pts[k:k + 1], pts[k + 1:]]
    for dense_max in (1 << 20, 0):  # dense table, then hash table
        vx.DENSE_TABLE_MAX_CELLS = dense_max
        for g, grid in enumerate(grids):
            for P, V in [(3, 12), (2, 5)][:2 if dense_max else 1]:  # caps: both on the dense table (sim time)
                want = vx.hard_voxelize_batch(clouds, max_points_per_voxel=P, max_voxels=V, impl="per_sample", **grid)
                if g == 0 and P == 3:  # the public entry point once per table
                    assert_bit_identical(vx.hard_voxelize_batch(clouds, max_points_per_voxel=P, max_voxels=V,
                                                                impl="cuda", **grid), want)
                # allocators: temporaries and outputs through the callables (the torch path's contract)
                made = []
                def alloc(shape, dtype):
                    made.append(shape)
                    return vx.cuda.device_array(shape, dtype)
                outs = []
                def out(shape, dtype):
                    outs.append((shape, np.dtype(dtype).name))
                    return vx.cuda.device_array(shape, dtype)
                cat = np.concatenate(clouds)
                starts = np.cumsum([0] + [len(c) for c in clouds])
                got = vx.hard_voxelize_cuda_batch(cat, starts, max_points_per_voxel=P, max_voxels=V, alloc=alloc,
                                                  out=out, **grid)
                assert_bit_identical([g.copy_to_host() for g in got], want)
                M = len(want[0])
                assert outs == [((M, P, 4), "float32"), ((M, 4), "int32"), ((M,), "int32")], outs
                assert len(made) >= 10
    print("CUDA-BATCH-OK")
""")


def test_cuda_batch_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = CUDA_BATCH_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)), n=40)
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "CUDA-BATCH-OK" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device; the simulator twin above runs instead")
def test_cuda_batch_on_gpu_tensors():
    clouds = [random_cloud(n, seed=20 + n) for n in (300_000, 0, 1, 120_000)]
    for grid, P, V in [(PILLARS, 32, 40_000), (GRID3D, 10, 120_000)]:
        want = vx.hard_voxelize_batch(clouds, max_points_per_voxel=P, max_voxels=V, impl="per_sample", **grid)
        got = vx.hard_voxelize_batch([torch.from_numpy(c).cuda() for c in clouds], max_points_per_voxel=P,
                                     max_voxels=V, **grid)
        assert all(t.is_cuda for t in got)
        assert_bit_identical([t.cpu() for t in got], want)
