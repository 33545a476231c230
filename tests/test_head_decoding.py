"""Decoding (issue 15): per-class peak filter, attributes within the class's family, the BEV decoder."""
import numpy as np
import pytest
import torch

from perception.config import ConfigError, load_config
from perception.models.build import build_model
from perception.structures import ATTRIBUTES, CLASS_TO_ID, CLASSES

from conftest import PROJECT
from test_model import MICRO as MODEL_MICRO

# the model tests' micro model, with a small decoder (the tiny config has none)
MICRO = MODEL_MICRO + ["model.decoder.layers=[1, 1]", "model.decoder.strides=[1, 2]",
                       "model.decoder.channels=[16, 16]", "model.decoder.neck_channels=[16, 16]"]


def _head(*extra):
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO + list(extra))
    return cfg, build_model(cfg).head


def _empty_preds(head, H, W):
    return [{"heatmap": torch.full((1, len(ids), H, W), -10.0), "attribute": torch.zeros(1, 8, H, W),
             "offset": torch.full((1, 2, H, W), 0.5), "height": torch.zeros(1, 1, H, W),
             "size": torch.zeros(1, 3, H, W), "yaw": torch.zeros(1, 2, H, W), "velocity": torch.zeros(1, 2, H, W)}
            for ids in head.task_class_ids]


def _put_peak(head, preds, cls: str, y: int, x: int, logit: float):
    for t, ids in enumerate(head.task_class_ids):
        if CLASS_TO_ID[cls] in ids:
            preds[t]["heatmap"][0, ids.index(CLASS_TO_ID[cls]), y, x] = logit
            return
    raise AssertionError(cls)


@pytest.mark.parametrize("cls", ["pedestrian", "traffic_cone"])
def test_adjacent_pedestrians_and_cones_are_both_decoded(cls):
    """Two objects in neighbouring 0.8 m cells (centres 0.8 m apart, beyond the class's circle-NMS
    radius) both come out; the recipe before issue 15 (3 x 3 peaks for every class) keeps one."""
    cfg, head = _head()
    H, W = cfg.bev_shape
    preds = _empty_preds(head, H, W)
    _put_peak(head, preds, cls, 10, 10, 3.0)
    _put_peak(head, preds, cls, 10, 11, 2.5)
    _put_peak(head, preds, cls, 30, 30, 3.0)  # and a diagonal pair
    _put_peak(head, preds, cls, 31, 31, 2.0)
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert int(np.sum(det.labels == CLASS_TO_ID[cls])) == 4
    _, old = _head("model.head.peak_kernel=[3, 3, 3, 3, 3, 3, 3, 3, 3, 3]")
    det_old = old.decode(preds, ["s"], [0])[0].boxes
    assert int(np.sum(det_old.labels == CLASS_TO_ID[cls])) == 2


@pytest.mark.parametrize("cls", ["pedestrian", "traffic_cone"])
def test_duplicates_of_one_pedestrian_from_neighbouring_cells_merge(cls):
    """A 1 x 1 peak filter lets the cell next to a pedestrian's peak through as well; when both cells'
    offsets point at the same person (centres 0.5 m apart) the circle NMS keeps one box. CenterPoint's
    0.42 m radius (the previous value) keeps both."""
    cfg, head = _head()
    H, W = cfg.bev_shape
    cell = cfg.grid.voxel_size[0] * cfg.model.bev_stride
    preds = _empty_preds(head, H, W)
    _put_peak(head, preds, cls, 10, 10, 3.0)
    _put_peak(head, preds, cls, 10, 11, 2.0)
    for t in range(len(preds)):  # x offsets: the first box at 10.7 cells, the second at 10.7 + 0.5 m
        preds[t]["offset"][0, 0, 10, 10] = 0.7
        preds[t]["offset"][0, 0, 10, 11] = 0.7 + 0.5 / cell - 1.0
    det = head.decode(preds, ["s"], [0])[0].boxes
    kept = det.labels == CLASS_TO_ID[cls]
    assert int(np.sum(kept)) == 1 and float(det.scores[kept][0]) > 0.9
    old_radius = list(cfg.model.head.nms_radius)
    old_radius[CLASS_TO_ID[cls]] = 0.42
    _, old = _head(f"model.head.nms_radius={old_radius}")
    assert int(np.sum(old.decode(preds, ["s"], [0])[0].boxes.labels == CLASS_TO_ID[cls])) == 2


def test_cars_in_neighbouring_cells_still_suppressed():
    cfg, head = _head()
    H, W = cfg.bev_shape
    preds = _empty_preds(head, H, W)
    _put_peak(head, preds, "car", 20, 20, 3.0)
    _put_peak(head, preds, "car", 20, 21, 2.0)
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert int(np.sum(det.labels == CLASS_TO_ID["car"])) == 1


def test_attributes_always_of_the_box_class():
    """Whatever attribute logit wins overall, a decoded box's attribute belongs to its own class."""
    cfg, head = _head()
    H, W = cfg.bev_shape
    gen = torch.Generator().manual_seed(0)
    preds = _empty_preds(head, H, W)
    for t, ids in enumerate(head.task_class_ids):
        for j, c in enumerate(ids):
            # a peak of each class, and attribute logits where a wrong family wins the plain argmax
            y, x = 5 + 4 * c, 5 + 4 * t
            preds[t]["heatmap"][0, j, y, x] = 4.0
            logits = torch.randn(8, generator=gen)
            wrong = [a for a in range(8) if not ATTRIBUTES[a].startswith(
                {"car": "vehicle", "truck": "vehicle", "bus": "vehicle", "trailer": "vehicle",
                 "construction_vehicle": "vehicle", "pedestrian": "pedestrian", "motorcycle": "cycle",
                 "bicycle": "cycle"}.get(CLASSES[c], "none"))]
            logits[wrong[0]] = 10.0
            preds[t]["attribute"][0, :, y, x] = logits
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert len(det) == len(CLASSES)
    for label, attr in zip(det.labels, det.attributes):
        cls = CLASSES[label]
        if cls in ("traffic_cone", "barrier"):
            assert attr == -1
        else:
            assert attr >= 0, cls
            family = {"pedestrian": "pedestrian.", "motorcycle": "cycle.", "bicycle": "cycle."}.get(cls, "vehicle.")
            assert ATTRIBUTES[attr].startswith(family), (cls, ATTRIBUTES[attr])
    # the recipe before issue 15 drops the out-of-family winner to "no attribute"
    _, old = _head("model.head.attributes_in_family=false")
    det_old = old.decode(preds, ["s"], [0])[0].boxes
    assert np.all(det_old.attributes == -1)


def test_decoder_keeps_the_fused_grid_and_is_optional():
    cfg = load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO)
    model = build_model(cfg)
    assert model.decoder is not None
    H, W = cfg.bev_shape
    x = torch.randn(2, cfg.model.bev_channels, H, W)
    assert model.decoder(x).shape == x.shape
    off = build_model(load_config(f"{PROJECT}/configs/fusion_tiny.yaml",
                                  MICRO + ["model.decoder.layers=[]", "model.decoder.strides=[]",
                                           "model.decoder.channels=[]", "model.decoder.neck_channels=[]"]))
    assert off.decoder is None


def test_per_task_quota_keeps_other_classes_from_a_flat_heatmap():
    """A pedestrian heatmap stuck near its initial prior (every cell a 1 x 1 peak at 0.13) outranks five
    cars at 0.12: without a quota its boxes take all max_objects slots and no car is decoded; with
    CenterPoint's per-task quota each task keeps its own best boxes."""
    cfg, head = _head("model.head.max_per_task=0")
    H, W = cfg.bev_shape
    assert H * W > head.max_objects  # the flat map alone can fill every slot
    preds = _empty_preds(head, H, W)
    ped_task = next(t for t, ids in enumerate(head.task_class_ids) if CLASS_TO_ID["pedestrian"] in ids)
    j = head.task_class_ids[ped_task].index(CLASS_TO_ID["pedestrian"])
    ramp = torch.linspace(0.0, 0.05, H * W).reshape(H, W)  # distinct scores, all above the cars'
    preds[ped_task]["heatmap"][0, j] = float(np.log(0.13 / 0.87)) + ramp
    cars = [(8 * i + 4, 8 * i + 4) for i in range(5)]  # 6.4 m apart: no NMS between them
    for y, x in cars:
        _put_peak(head, preds, "car", y, x, float(np.log(0.12 / 0.88)))
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert len(det.labels) == head.max_objects and not np.any(det.labels == CLASS_TO_ID["car"])
    _, quota = _head("model.head.max_per_task=20")
    det = quota.decode(preds, ["s"], [0])[0].boxes
    assert int(np.sum(det.labels == CLASS_TO_ID["car"])) == len(cars)
    assert int(np.sum(det.labels == CLASS_TO_ID["pedestrian"])) == 20
    # the kept pedestrians are the task's 20 best
    best = torch.sigmoid(preds[ped_task]["heatmap"][0, j]).flatten().topk(20).values.numpy()
    kept = np.sort(det.scores[det.labels == CLASS_TO_ID["pedestrian"]])[::-1]
    np.testing.assert_allclose(kept, best, rtol=1e-6)


@pytest.mark.parametrize("bad, field", [
    (["model.decoder.strides=[1]"], "model.decoder.layers, strides"),
    (["model.decoder.strides=[1, 3]"], "powers of 2"),
    (["model.head.peak_kernel=[3, 3]"], "model.head.peak_kernel"),
    (["model.head.peak_kernel=[3, 3, 3, 3, 3, 2, 3, 3, 1, 3]"], "model.head.peak_kernel"),
    (["model.decoder.strides=[1, 128]"], "do not divide the fused BEV grid"),
    (["model.head.max_per_task=-1"], "model.head.max_per_task"),
])
def test_decoder_and_peak_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        load_config(f"{PROJECT}/configs/fusion_tiny.yaml", MICRO + bad)


# ------------------------------------------------------------------ direction classifier
def test_direction_bin_turns_a_disagreeing_yaw_by_pi():
    """The regressed yaw keeps its axis; the direction logit picks front or back along it."""
    cfg, head = _head("model.head.direction_classifier=true")
    H, W = cfg.bev_shape
    preds = _empty_preds(head, H, W)
    for p in preds:
        p["direction"] = torch.zeros(1, 1, H, W)
    yaws = {(10, 10): (0.3, 5.0), (10, 30): (0.3, -5.0), (30, 10): (2.9, 5.0), (30, 30): (-2.0, -5.0)}
    t = head.task_class_ids.index([CLASS_TO_ID["car"]])
    for (y, x), (yaw, logit) in yaws.items():
        _put_peak(head, preds, "car", y, x, 3.0)
        preds[t]["yaw"][0, :, y, x] = torch.tensor([np.sin(yaw), np.cos(yaw)])
        preds[t]["direction"][0, 0, y, x] = logit
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert len(det) == 4
    got = {}
    for b in det.boxes:
        x = int((b[0] - cfg.grid.point_cloud_range[0]) / head.cell[0])
        y = int((b[1] - cfg.grid.point_cloud_range[1]) / head.cell[1])
        got[(y, x)] = b[6]
    want = {(10, 10): 0.3, (10, 30): 0.3 - np.pi, (30, 10): 2.9 - np.pi, (30, 30): -2.0}  # already backward: kept
    for k, v in want.items():
        d = (got[k] - v + np.pi) % (2 * np.pi) - np.pi
        assert abs(d) < 1e-5, (k, got[k], v)
        assert (np.cos(got[k]) >= 0) == (yaws[k][1] > 0)  # the bin decides front or back


def test_direction_loss_trains_the_bin_of_cos_yaw():
    """A perfect bin costs ~0, the opposite bin costs a lot, and the term is weighted by its config."""
    from perception.ops.center_targets import HeadTargets

    cfg, head = _head("model.head.direction_classifier=true", "model.head.weight_direction=0.5")
    H, W = cfg.bev_shape
    t = head.task_class_ids.index([CLASS_TO_ID["car"]])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 4.5, 1.9, 1.6, 0.2, 0.0, 0.0],
                          [10.0, 5.0, 0.5, 4.5, 1.9, 1.6, np.pi - 0.2, 0.0, 0.0]], dtype=torch.float32)
    tgt = head.targets([boxes], [torch.tensor([CLASS_TO_ID["car"]] * 2)], [torch.tensor([-1, -1])])
    preds = _empty_preds(head, H, W)
    for p in preds:
        p["direction"] = torch.zeros(1, 1, H, W)
    cells = tgt.indices[0, :2]
    right = [p.copy() for p in preds]
    right[t] = dict(preds[t], direction=torch.zeros(1, 1, H, W))
    right[t]["direction"].view(-1)[cells] = torch.tensor([20.0, -20.0])
    wrong = [p.copy() for p in preds]
    wrong[t] = dict(preds[t], direction=torch.zeros(1, 1, H, W))
    wrong[t]["direction"].view(-1)[cells] = torch.tensor([-20.0, 20.0])
    lr, lw = head.loss(right, tgt)["direction"], head.loss(wrong, tgt)["direction"]
    assert float(lr) < 1e-6
    assert abs(float(lw) - 0.5 * 20.0) < 1e-3  # BCE of a -20 logit on a true bin, times the weight
    assert "direction" not in _head()[1].loss(_empty_preds(_head()[1], H, W), tgt)


def test_moving_boxes_face_along_their_velocity():
    """heading_min_speed: a car or pedestrian at or above the speed takes the end of its regressed
    axis that its velocity points to; a slower one, and a cone (which never drives), keep the yaw."""
    cfg, head = _head("model.head.heading_min_speed=1.0")
    H, W = cfg.bev_shape
    preds = _empty_preds(head, H, W)
    cases = {  # (y, x): (class, yaw, velocity, expected yaw)
        (10, 10): ("car", 0.2, (-8.0, -1.0), 0.2 - np.pi),  # drives backwards along the axis: turned
        (10, 30): ("car", 0.2, (8.0, 1.0), 0.2),  # agrees: kept
        (30, 10): ("car", 0.2, (-0.5, 0.0), 0.2),  # below the speed: kept
        (30, 30): ("pedestrian", 2.0, (0.9, -1.0), 2.0 - np.pi),  # 1.35 m/s walking the other way
        (50, 50): ("traffic_cone", 1.0, (-3.0, -3.0), 1.0),  # cones do not move forward
    }
    for (y, x), (cls, yaw, v, _) in cases.items():
        _put_peak(head, preds, cls, y, x, 3.0)
        t = next(t for t, ids in enumerate(head.task_class_ids) if CLASS_TO_ID[cls] in ids)
        preds[t]["yaw"][0, :, y, x] = torch.tensor([np.sin(yaw), np.cos(yaw)])
        preds[t]["velocity"][0, :, y, x] = torch.tensor(v)
    det = head.decode(preds, ["s"], [0])[0].boxes
    assert len(det) == len(cases)
    for b, label in zip(det.boxes, det.labels):
        x = int((b[0] - cfg.grid.point_cloud_range[0]) / head.cell[0])
        y = int((b[1] - cfg.grid.point_cloud_range[1]) / head.cell[1])
        cls, _, _, want = cases[(y, x)]
        assert CLASSES[label] == cls
        assert abs((b[6] - want + np.pi) % (2 * np.pi) - np.pi) < 1e-5, (cls, b[6], want)
    _, off = _head()
    for b in off.decode(preds, ["s"], [0])[0].boxes.boxes:  # off by default: the regressed yaw
        x = int((b[0] - cfg.grid.point_cloud_range[0]) / head.cell[0])
        y = int((b[1] - cfg.grid.point_cloud_range[1]) / head.cell[1])
        assert abs((b[6] - cases[(y, x)][1] + np.pi) % (2 * np.pi) - np.pi) < 1e-5


@pytest.mark.parametrize("key,value", [("heading_min_speed", -1.0), ("weight_direction", -0.2),
                                       ("heading_min_speed", float("nan"))])
def test_heading_options_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"model.head.{key}"):
        load_config(f"{PROJECT}/configs/fusion_tiny.yaml", [f"model.head.{key}={value}"])


@pytest.mark.parametrize("top_k", [500, 10 ** 6])
def test_tasks_decoded_together_keep_each_task_its_classes_and_quota(top_k):
    """decode stacks the tasks (one- and two-class heatmaps, the smaller padded): every class's peak comes
    out with its own label, position and score, padding never does, and a top_k above every task's map
    (the padding is then inside the top-k) changes nothing. One task's flood of peaks does not take
    another task's top-k places."""
    cfg, head = _head(f"model.head.top_k={top_k}")
    H, W = cfg.bev_shape
    cell = cfg.grid.voxel_size[0] * cfg.model.bev_stride
    lo = cfg.grid.point_cloud_range
    preds = _empty_preds(head, H, W)
    assert len({len(ids) for ids in head.task_class_ids}) > 1  # one- and two-class tasks
    spots = {}
    for i, name in enumerate(CLASSES):  # one peak per class, apart from each other
        y, x = 4 + 5 * i, 6 + 3 * i
        _put_peak(head, preds, name, y, x, 2.0 - 0.1 * i)
        spots[CLASS_TO_ID[name]] = (y, x, float(torch.sigmoid(torch.tensor(2.0 - 0.1 * i))))
    # a flood of weaker car peaks (every third cell of a block) in the car task
    flood = torch.full((H, W), -10.0)
    flood[40:60:3, 10:60:3] = 0.0  # sigmoid 0.5 < every single peak above
    car = CLASS_TO_ID["car"]
    t_car = next(t for t, ids in enumerate(head.task_class_ids) if car in ids)
    preds[t_car]["heatmap"][0, head.task_class_ids[t_car].index(car)] = torch.maximum(
        preds[t_car]["heatmap"][0, head.task_class_ids[t_car].index(car)], flood)
    det = head.decode(preds, ["s"], [0])[0].boxes
    for c, (y, x, score) in spots.items():
        hit = (det.labels == c) & np.isclose(det.scores, score, atol=1e-6)
        assert int(hit.sum()) == 1, CLASSES[c]
        b = det.boxes[hit][0] if hasattr(det, "boxes") else det.tensor[hit][0]
        assert b[0] == pytest.approx(lo[0] + (x + 0.5) * cell, abs=1e-4)
        assert b[1] == pytest.approx(lo[1] + (y + 0.5) * cell, abs=1e-4)
    assert np.all(np.isfinite(det.scores)) and set(det.labels.tolist()) <= set(range(len(CLASSES)))
    n_flood = int(((flood == 0.0).sum()))
    assert int((det.labels == car).sum()) == 1 + min(n_flood, head.max_per_task - 1)
