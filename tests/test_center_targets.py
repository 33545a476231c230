"""Head targets built in the loader workers (``ops.center_targets``) equal the head's per-box
reference (``CenterHead.targets``) bit for bit: on augmented samples of the synthetic drives, on the
real keyframes, on edge cases (cell borders, the map edge, zero sizes, NaN velocities, more boxes
than slots), through collation and the DataLoader's workers; and the training losses are the same
whichever path built them."""

import numpy as np
import pytest
import torch

from perception.config import load_config
from perception.engine.dataset import TrainDataset, build_index, collate_samples
from perception.models.heads.centerpoint import build_head
from perception.ops.center_targets import CenterTargetBuilder, HeadTargets, center_target_builder
from perception.structures import CLASSES

from conftest import PROJECT, REAL_VERSION, require_real_root
from test_model import MICRO

FIELDS = ("indices", "mask", "task_of", "regression", "velocity_valid", "attributes")


def assert_same(a: HeadTargets, b: HeadTargets) -> None:
    """Bitwise: same dtypes, shapes and values (NaN-free by construction)."""
    assert len(a.heatmaps) == len(b.heatmaps)
    for t, (x, y) in enumerate(zip(a.heatmaps, b.heatmaps)):
        assert x.dtype == y.dtype and x.shape == y.shape, t
        assert torch.equal(x, y), f"heatmap of task {t}: max diff {float((x - y).abs().max())}"
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name


def reference(head, samples) -> HeadTargets:
    return head.targets([s.gt_boxes for s in samples], [s.gt_labels for s in samples],
                        [s.gt_attributes for s in samples])


@pytest.fixture(scope="module")
def synthetic_plans(tmp_path_factory):
    """Plans of a small synthetic drive generated here (one 4 s train scene of the tiny preset), so the
    test runs the same on a fresh clone as beside a generated ``work/data``."""
    from perception.data.synthetic import generate, preset

    root = str(tmp_path_factory.mktemp("synthetic"))
    generate(root, preset("tiny", train_scenes=1, val_scenes=0, duration_s=4.0), seed=5)
    return build_index(root, "v1.0-trainval", "train", synthetic_cfg(), str(tmp_path_factory.mktemp("cache")))


def synthetic_cfg(*extra):
    # no camera: the targets do not depend on it, and images are the slow part of a sample
    return load_config(f"{PROJECT}/configs/fusion_tiny.yaml", ["model.use_camera=false"] + list(extra))


def test_builder_takes_the_heads_settings():
    for cfg in (synthetic_cfg(), load_config(f"{PROJECT}/configs/fusion_nuscenes.yaml"),
                load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO)):
        head, builder = build_head(cfg), center_target_builder(cfg)
        assert builder.task_class_ids == head.task_class_ids
        assert builder.range[:2] == head.range[:2] and builder.cell == head.cell
        assert builder.bev_hw == tuple(head.bev_hw) and builder.max_objects == head.max_objects
        assert (builder.min_radius, builder.overlap) == (head.min_radius, head.overlap)


def test_augmented_synthetic_samples_equal_the_reference(synthetic_plans):
    cfg = synthetic_cfg()
    assert cfg.train.augment.enabled
    head = build_head(cfg)
    ds = TrainDataset(synthetic_plans, cfg, augment=True, seed=3)
    plain = TrainDataset(synthetic_plans, cfg, augment=False, seed=3)
    idx = np.linspace(0, len(ds) - 1, 12).astype(int)
    samples = [ds[(1, int(i))] for i in idx]
    objects = 0
    for s in samples:
        assert s.targets is not None
        assert_same(s.targets, reference(head, [s]))  # the reference of the augmented boxes
        objects += int(s.targets.mask.sum())
    assert objects > 100  # the comparison covered real content
    # ... and they are the augmented boxes' targets, not the raw ones
    raw = [plain[(1, int(i))] for i in idx]
    assert any(not torch.equal(s.targets.regression, r.targets.regression) for s, r in zip(samples, raw))
    # collated: one HeadTargets of the batch, equal to the reference over the batch
    batch = collate_samples(samples[:4]).batch
    assert_same(batch.targets, reference(head, samples[:4]))


def test_loader_workers_deliver_the_reference_targets(synthetic_plans):
    cfg = synthetic_cfg()
    head = build_head(cfg)
    ds = TrainDataset(synthetic_plans[:6], cfg, augment=True, seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=[(0, i) for i in range(6)], num_workers=2,
                                         collate_fn=collate_samples, pin_memory=False)
    n = 0
    for lb in loader:
        b = lb.batch
        assert_same(b.targets, head.targets(b.gt_boxes, b.gt_labels, b.gt_attributes))
        moved = b.to("cpu")
        assert_same(moved.targets, b.targets)
        n += 1
    assert n == 2


def test_real_keyframes_equal_the_reference(tmp_path):
    root = require_real_root()
    cfg = load_config(f"{PROJECT}/configs/fusion_nuscenes.yaml", ["model.use_camera=false", "sync.lidar_sweeps=1",
                                                                   "sync.radar_sweeps=1"])
    plans = build_index(root, REAL_VERSION, "val", cfg, str(tmp_path / "cache"))
    head = build_head(cfg)
    ds = TrainDataset(plans, cfg, augment=True, seed=0)
    objects = 0
    for i in range(0, len(ds), 3):
        s = ds[(0, i)]
        assert_same(s.targets, reference(head, [s]))
        objects += int(s.targets.mask.sum())
    assert objects > 150


def test_edge_cases_equal_the_reference():
    """Centres on cell borders and the map edge (Gaussians clipped), outside the grid, zero and
    negative sizes, NaN velocities, one class per task, and more valid boxes than slots."""
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO + ["model.head.max_objects=40"])
    head, builder = build_head(cfg), center_target_builder(cfg)
    x0, y0 = head.range[:2]
    cx, cy = head.cell
    H, W = head.bev_hw
    rng = np.random.default_rng(0)
    n = 90
    boxes = np.zeros((n, 9), np.float32)
    boxes[:, 0] = x0 + rng.integers(-2, W + 2, n) * cx + rng.choice([0.0, 0.5 * cx, cx - 1e-4], n)
    boxes[:, 1] = y0 + rng.integers(-2, H + 2, n) * cy + rng.choice([0.0, 0.3 * cy, cy - 1e-4], n)
    boxes[:, 2] = rng.uniform(-1, 2, n)
    boxes[:, 3:6] = rng.uniform(0.2, 20.0, (n, 3))  # up to bus-sized: radii clipped at the map edge
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    boxes[:, 7:9] = rng.normal(0, 5, (n, 2))
    boxes[::7, 3] = 0.0
    boxes[::11, 5] = -1.0
    boxes[::5, 7] = np.nan
    boxes[::6, 8] = np.nan
    boxes[0, :2] = (x0, y0)  # first cell's corner
    boxes[1, :2] = (x0 + W * cx - 1e-3, y0 + H * cy - 1e-3)  # last cell
    labels = rng.integers(0, len(CLASSES), n)
    attrs = rng.integers(-1, 8, n)
    ref = head.targets([torch.from_numpy(boxes)], [torch.from_numpy(labels)], [torch.from_numpy(attrs)])
    ours = builder(boxes, labels, attrs)
    assert_same(ours, ref)
    assert int(ours.mask.sum()) == 40  # more valid boxes than slots: the first 40 kept
    assert not ours.velocity_valid[ours.mask].all() and ours.velocity_valid.any()
    # an empty sample
    empty = np.zeros((0, 9), np.float32)
    z = np.zeros(0, np.int64)
    assert_same(builder(empty, z, z), head.targets([torch.from_numpy(empty)], [torch.from_numpy(z)],
                                                   [torch.from_numpy(z)]))


def test_a_class_no_task_predicts_raises_as_the_reference():
    builder = CenterTargetBuilder([[0, 1]], [-10, -10, -5, 10, 10, 3], [1.0, 1.0], (20, 20), 2, 0.1, 10)
    boxes = np.array([[0, 0, 0, 4, 2, 1.5, 0, 0, 0]], np.float32)
    with pytest.raises(KeyError):
        builder(boxes, np.array([5]), np.array([-1]))


def test_losses_are_the_same_with_worker_targets_and_in_loop_targets(synthetic_plans):
    from perception.engine.trainer import compute_losses
    from perception.models.build import build_model

    cfg = synthetic_cfg(*MICRO[:2], "model.bev_stride=1", "model.bev_channels=16", "model.lidar.pfn_channels=[16]",
                        "model.lidar.backbone_layers=[1, 1]", "model.lidar.backbone_strides=[1, 2]",
                        "model.lidar.backbone_channels=[16, 16]", "model.lidar.neck_channels=[16, 16]",
                        "model.radar.pfn_channels=[8]", "model.radar.conv_channels=16", "model.head.channels=16",
                        "model.fusion.heads=2", "model.fusion.dropout_lidar=0.0", "model.fusion.dropout_radar=0.0")
    ds = TrainDataset(synthetic_plans[:2], cfg, augment=True, seed=1)
    batch = collate_samples([ds[(0, 0)], ds[(0, 1)]]).batch
    assert batch.targets is not None
    torch.manual_seed(0)
    model = build_model(cfg).train()
    for reduction in ("sample", "batch"):
        torch.manual_seed(1)
        a = compute_losses(model, model, batch, reduction)
        batch.targets, saved = None, batch.targets
        torch.manual_seed(1)
        b = compute_losses(model, model, batch, reduction)
        batch.targets = saved
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (reduction, k)
        assert float(a["attribute"].detach()) > 0


def test_attribute_loss_without_host_sync_matches_the_indexed_mean():
    """The masked mean (no boolean indexing, so no device sync) is the cross-entropy of the slots
    with an attribute; 0 with a zero gradient when no slot has one."""
    import torch.nn.functional as F

    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO)
    head = build_head(cfg)
    g = torch.Generator().manual_seed(0)
    B, H, W = 2, *head.bev_hw
    preds = head(torch.randn(B, 16, H, W, generator=g), torch.zeros(B, 3))
    boxes = [torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0], [-5.0, 3.0, 0.0, 0.6, 0.6, 1.7, 0.0, 0, 0]]),
             torch.tensor([[8.0, -4.0, 0.0, 4.5, 2.0, 1.6, 1.0, 0.0, 0.0]])]
    labels = [torch.tensor([0, 5]), torch.tensor([0])]
    tgt = head.targets(boxes, labels, [torch.tensor([2, -1]), torch.tensor([0])])
    out = head.loss(preds, tgt)
    expected = 0.0
    for t, p in enumerate(preds):
        m = tgt.mask & (tgt.task_of == t) & (tgt.attributes >= 0)
        if m.any():
            logits = head._gather(p["attribute"], tgt.indices)
            expected = expected + F.cross_entropy(logits[m].float(), tgt.attributes[m])
    torch.testing.assert_close(out["attribute"], head.weights["attribute"] * expected, rtol=1e-6, atol=0)
    none = head.targets(boxes, labels, [torch.tensor([-1, -1]), torch.tensor([-1])])
    out = head.loss(preds, none)
    assert float(out["attribute"]) == 0.0
    grads = torch.autograd.grad(out["attribute"], [m.weight for m in head.attribute], allow_unused=True)
    assert all(gr is None or float(gr.abs().max()) == 0.0 for gr in grads)
