"""The compact index (perception.engine.plan_store.PlanStore, returned by build_index) against the
list of FramePlans it replaces, and the scale-rehearsal root generator at a tiny size."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import PROJECT, REAL_VERSION
from perception.config import load_config
from perception.engine.dataset import (ClassBalancedSampler, TrainDataset, build_index, index_path, sample_classes,
                                       split_scene_names)
from perception.engine.plan_store import PlanStore, StoreError, difference, write_store

VERSION = "v1.0-trainval"
# 10 LiDAR and 6 radar sweeps: the plans of the nuScenes config (the most reads per plan)
NUSCENES = f"{PROJECT}/configs/fusion_nuscenes.yaml"


def reference_plans(source, split, cfg):
    """The list build_index returned before the store: FrameBuilder.plan of every keyframe."""
    from perception.sync.synchronizer import FrameBuilder

    present = set(source.scene_names())
    out = []
    for name in [s for s in split_scene_names(split) if s in present]:
        fb = FrameBuilder(source, name, cfg)
        out += [fb.plan(ref, with_gt=True) for ref in fb.keyframe_references]
    return out


def assert_same_plans(store, plans):
    assert len(store) == len(plans)
    for i, (a, b) in enumerate(zip(plans, store)):
        d = difference(a, b)
        assert d is None, f"plan {i}: {d}"


@pytest.fixture(scope="module")
def scale_root(tmp_path_factory):
    from perception.data.synthetic.scale import generate_scale_root

    out = str(tmp_path_factory.mktemp("scale") / "root")
    summary = generate_scale_root(out, train_samples=7, val_samples=4, keyframes_per_scene=3, boxes_per_sample=12,
                                  lidar_points=300)
    return out, summary


@pytest.fixture(scope="module")
def scale_source(scale_root):
    from perception.data.nuscenes_source import NuScenesSource

    return NuScenesSource(scale_root[0], VERSION)


@pytest.fixture(scope="module")
def real_plans(real_source):
    """The real scenes' plans as the list build_index returned before (nuScenes config)."""
    return reference_plans(real_source, "val", load_config(NUSCENES))


@pytest.fixture(scope="module")
def real_store(real_root, real_source, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("real_cache"))
    return build_index(real_root, REAL_VERSION, "val", load_config(NUSCENES), cache, source=real_source)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
def test_store_equals_the_list_on_the_real_scenes(real_root, real_plans, real_store):
    cfg, plans, store = load_config(NUSCENES), real_plans, real_store
    assert len(plans) == 81 and sum(len(p.channels["LIDAR_TOP"].reads) for p in plans) > 81 * 5
    assert isinstance(store, PlanStore) and store.mode == "pread"
    assert_same_plans(store, plans)
    # read back from the cache file (a new process's view), and memory-mapped
    again = build_index(real_root, REAL_VERSION, "val", cfg, os.path.dirname(store.path))
    assert again.meta["build_id"] == store.meta["build_id"]
    assert_same_plans(again, plans)
    mapped = PlanStore.open(store.path, mode="mmap")
    assert difference(mapped[-1], plans[-1]) is None and difference(mapped[40], plans[40]) is None


def test_store_equals_the_list_on_a_synthetic_root(scale_root, scale_source, tmp_path):
    cfg = load_config(NUSCENES)
    for split, n in (("train", 7), ("val", 4)):
        plans = reference_plans(scale_source, split, cfg)
        assert len(plans) == n
        assert_same_plans(build_index(scale_root[0], VERSION, split, cfg, None, source=scale_source), plans)
        assert_same_plans(build_index(scale_root[0], VERSION, split, cfg, str(tmp_path), source=scale_source), plans)


def test_store_is_a_sequence_views_and_pickles(scale_root, scale_source, tmp_path):
    cfg = load_config(NUSCENES)
    plans = reference_plans(scale_source, "train", cfg)
    for store in (build_index(scale_root[0], VERSION, "train", cfg, str(tmp_path), source=scale_source),
                  build_index(scale_root[0], VERSION, "train", cfg, None, source=scale_source)):
        assert difference(store[-1], plans[-1]) is None
        with pytest.raises(IndexError):
            store[len(plans)]
        view = store[2:6]
        assert isinstance(view, PlanStore) and len(view) == 4
        assert_same_plans(view, plans[2:6])
        assert_same_plans(view[::-2], plans[2:6][::-2])
        assert_same_plans(store[np.array([5, 0, 3])], [plans[5], plans[0], plans[3]])
        # a spawned worker (or another rank) gets the store pickled: a file store reopens its file
        back = pickle.loads(pickle.dumps(view))
        assert_same_plans(back, plans[2:6])
        assert len(pickle.dumps(store)) < (1000 if store.mode == "pread" else store.nbytes + 1000)
        # a fresh FramePlan on every access: changing one never changes the index
        p = store[1]
        p.channels["LIDAR_TOP"].reads[0].T_ref_from_sensor[:] = 0
        assert difference(store[1], plans[1]) is None


def test_a_store_file_rebuilt_since_pickling_is_refused(scale_root, scale_source, tmp_path):
    cfg = load_config(NUSCENES)
    store = build_index(scale_root[0], VERSION, "val", cfg, str(tmp_path), source=scale_source)
    blob = pickle.dumps(store)
    os.unlink(store.path)
    build_index(scale_root[0], VERSION, "val", cfg, str(tmp_path), source=scale_source)
    with pytest.raises(StoreError, match="rebuilt"):
        pickle.loads(blob)
    assert_same_plans(store, reference_plans(scale_source, "val", cfg))  # the open descriptor still reads


# ---------------------------------------------------------------------------------------------
# A damaged cache
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "old_pickle"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(scale_root, scale_source, tmp_path, caplog, damage):
    cfg = load_config(NUSCENES)
    store = build_index(scale_root[0], VERSION, "val", cfg, str(tmp_path), source=scale_source)
    path = index_path(scale_root[0], VERSION, "val", cfg, str(tmp_path))
    assert store.path == os.path.abspath(path)
    plans = list(store)  # before the damage: it is done in place, under the store's descriptor
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0x40  # inside a plan: only the crc32 notices
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "empty":
        data = bytearray()
    else:  # what INDEX_FORMAT 1 wrote
        data = bytearray(pickle.dumps({"format": 1, "plans": plans}))
    with open(path, "wb") as f:
        f.write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="perception.engine.dataset"):
        again = build_index(scale_root[0], VERSION, "val", cfg, str(tmp_path), source=scale_source)
    assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert_same_plans(again, plans)
    assert PlanStore.open(path).meta["count"] == len(plans)  # the file is whole again
    assert os.listdir(str(tmp_path)) == [os.path.basename(path)]  # no temporary left


def test_store_open_refuses_what_is_not_a_store(tmp_path):
    bad = tmp_path / "x.plans"
    bad.write_bytes(b"not a store at all, but long enough to hold a footer")
    with pytest.raises(StoreError, match="not a plan store"):
        PlanStore.open(str(bad))
    import io

    buf = io.BytesIO()
    write_store(buf, [{"a": np.arange(3)}, "two"])
    good = PlanStore.from_bytes(buf.getvalue())
    assert len(good) == 2 and good[1] == "two" and difference(good[0], {"a": np.arange(3)}) is None
    empty = io.BytesIO()
    write_store(empty, [])
    assert len(PlanStore.from_bytes(empty.getvalue())) == 0


# ---------------------------------------------------------------------------------------------
# What the trainer does with the plans
# ---------------------------------------------------------------------------------------------
def test_cbgs_sample_classes_are_the_same(real_plans, real_store, scale_root, scale_source):
    cfg = load_config(NUSCENES, ["train.cbgs=true"])
    synthetic = (reference_plans(scale_source, "train", cfg),
                 build_index(scale_root[0], VERSION, "train", cfg, None, source=scale_source))
    for plans, store in ((real_plans, real_store), synthetic):
        a, b = sample_classes(plans, cfg), sample_classes(store, cfg)
        assert len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
        assert sum(len(x) for x in a) > len(a)
        sa, sb = ClassBalancedSampler(a, 2, seed=3), ClassBalancedSampler(b, 2, seed=3)
        assert list(sa) == list(sb)


def test_a_training_sample_is_the_same_through_the_store(real_plans, real_store):
    # the tiny model (cheap targets) on the nuScenes config's plans (10 LiDAR, 6 radar sweeps)
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", ["model.use_camera=false"])
    plans, store = real_plans, real_store
    from_list = TrainDataset(plans, cfg, augment=True, seed=4)
    from_store = TrainDataset(store, cfg, augment=True, seed=4)
    assert from_store.plans is store  # kept as it is, not copied into a list
    for key in ((0, 3), (1, 40, 2)):
        a, b = from_list[key], from_store[key]
        for name in ("lidar_points", "radar_points", "images", "intrinsics", "img_aug", "T_ego_from_cam",
                     "camera_mask", "modality_mask", "ego_velocity", "gt_boxes", "gt_labels", "gt_attributes"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
        assert a.sample_token == b.sample_token and a.timestamp == b.timestamp
        assert np.array_equal(a.T_global_from_ego, b.T_global_from_ego)
        assert len(a.gt_boxes) > 0
        for name in a.targets.__dataclass_fields__:
            x, y = getattr(a.targets, name), getattr(b.targets, name)
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), name
            elif isinstance(x, list):
                assert all(torch.equal(u, v) for u, v in zip(x, y)), name


# ---------------------------------------------------------------------------------------------
# The scale rehearsal root
# ---------------------------------------------------------------------------------------------
def test_scene_plan_gives_nuscenes_volumes_with_official_names():
    from nuscenes.utils import splits

    from perception.data.synthetic.scale import scene_plan

    train = scene_plan(28_130, splits.train)
    val = scene_plan(6_019, splits.val)
    assert len(train) == 700 and sum(k for _, k in train) == 28_130 and {k for _, k in train} == {40, 41}
    assert len(val) == 150 and sum(k for _, k in val) == 6_019
    assert [n for n, _ in val] == list(splits.val)
    assert scene_plan(5, splits.val, 2) == [(splits.val[0], 3), (splits.val[1], 2)]


def test_tiny_scale_root_loads_with_its_counts_and_links(scale_root, scale_source):
    root, summary = scale_root
    assert summary["train_samples"] == 7 and summary["val_samples"] == 4
    from nuscenes.utils import splits

    names = set(scale_source.scene_names())
    assert names <= set(splits.train) | set(splits.val)
    nusc = scale_source.nusc
    assert len(nusc.sample) == 11 and len(nusc.sample_data) == summary["sample_data"] == summary["files"]
    sd = nusc.sample_data[0]
    path = os.path.join(root, sd["filename"])
    assert os.path.isfile(path) and os.stat(path).st_nlink > 2  # a hard link to a shared template
    # every keyframe has annotations of detection classes, with points (training uses them)
    store = build_index(root, VERSION, "train", load_config(NUSCENES), None, source=scale_source)
    assert all(p.gt is not None and len(p.gt) > 0 for p in store)
    lidar = [len(p.channels["LIDAR_TOP"].reads) for p in store]
    assert max(lidar) == 10  # the 20 Hz sweeps are there
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", ["model.use_camera=false"])
    s = TrainDataset(store, cfg, augment=False)[(0, 2)]
    assert len(s.lidar_points) > 0 and len(s.radar_points) > 0 and bool(s.modality_mask[0])


def test_a_big_root_is_indexed_in_a_spawned_process(scale_root, tmp_path, monkeypatch):
    import perception.data.nuscenes_source as ns
    import perception.engine.dataset as ds

    monkeypatch.setattr(ds, "SUBPROCESS_BUILD_BYTES", 0)  # every root is "big"

    def no_devkit(*a, **k):
        raise AssertionError("the devkit was opened in the trainer's process")

    monkeypatch.setattr(ns, "NuScenesSource", no_devkit)  # the spawned process imports its own
    store = build_index(scale_root[0], VERSION, "val", load_config(NUSCENES), str(tmp_path))
    assert len(store) == 4 and store.meta["tables_s"] >= 0 and store.mode == "pread"


_HEAP_PROBE = r"""
import sys, numpy as np
from perception.engine.dataset import fix_malloc_threshold
applied = fix_malloc_threshold(int(sys.argv[1]))
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
big = np.ones(8 << 20, np.uint8); del big   # freeing an 8 MB block is what makes glibc raise its threshold
base = rss_mb()
blocks = [np.ones(1 << 20, np.uint8) for _ in range(64)]  # 64 x 1 MB, touched
del blocks[::2]                                           # every other one freed: holes in a heap
print(applied, rss_mb() - base)
"""


def test_worker_malloc_threshold_returns_freed_blocks():
    """Loader workers fix glibc's mmap threshold (``worker_init``): 1 MB temporaries freed between
    live ones go back to the system instead of staying in the heap as holes (a worker's RSS then stops
    creeping up with the samples it builds). Measured in fresh processes, with and without."""
    import subprocess
    import sys

    from perception.engine.dataset import WORKER_MMAP_THRESHOLD, fix_malloc_threshold

    assert fix_malloc_threshold(0) is False  # 0: glibc's default left alone
    out = {}
    for th in (0, WORKER_MMAP_THRESHOLD):
        r = subprocess.run([sys.executable, "-c", _HEAP_PROBE, str(th)], capture_output=True, text=True, check=True)
        applied, grown = r.stdout.split()
        out[th] = (applied == "True", float(grown))
    if not out[WORKER_MMAP_THRESHOLD][0]:
        pytest.skip("not glibc: mallopt unavailable, malloc left as it is")
    assert out[0][0] is False
    # 32 live 1 MB blocks: both keep ~32 MB; the dynamic threshold also keeps the 32 freed ones
    assert out[WORKER_MMAP_THRESHOLD][1] < 40, out
    assert out[0][1] > out[WORKER_MMAP_THRESHOLD][1] + 20, out
