"""nuScenes v1.0 tables and files: tokens, fixed tables, annotation point counts, JSON and CAN bus.

Everything written here is deterministic: tokens are hashes of (seed, scene, kind, key), records are
written in a fixed order with sorted keys.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Sequence

import numpy as np
from pyquaternion import Quaternion

from . import rig
from perception.structures import ALL_CHANNELS, modality_of

TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")

# Real nuScenes tokens of the attributes; visibility tokens are '1'-'4' as in nuScenes.
ATTRIBUTE_TOKENS = {
    "vehicle.moving": "cb5118da1ab342aa947717dc53544259", "vehicle.stopped": "c3246a1e22a14fcb878aa61e69ae3329",
    "vehicle.parked": "58aa28b1c2a54dc88e169808c07331e3", "cycle.with_rider": "a14936d865eb4216b396adae8cb3939c",
    "cycle.without_rider": "5a655f9751944309a277276b8f473452",
    "pedestrian.sitting_lying_down": "03aa62109bf043afafdea7d875dd4f43",
    "pedestrian.standing": "4d8821270b4a47e3a8a300cbec48188e", "pedestrian.moving": "ab83627ff28b465b85c427162dec722f",
}
# The 23 annotated nuScenes categories with their lidarseg index.
CATEGORIES = (
    ("animal", 1), ("human.pedestrian.adult", 2), ("human.pedestrian.child", 3),
    ("human.pedestrian.construction_worker", 4), ("human.pedestrian.personal_mobility", 5),
    ("human.pedestrian.police_officer", 6), ("human.pedestrian.stroller", 7), ("human.pedestrian.wheelchair", 8),
    ("movable_object.barrier", 9), ("movable_object.debris", 10), ("movable_object.pushable_pullable", 11),
    ("movable_object.trafficcone", 12), ("static_object.bicycle_rack", 13), ("vehicle.bicycle", 14),
    ("vehicle.bus.bendy", 15), ("vehicle.bus.rigid", 16), ("vehicle.car", 17), ("vehicle.construction", 18),
    ("vehicle.emergency.ambulance", 19), ("vehicle.emergency.police", 20), ("vehicle.motorcycle", 21),
    ("vehicle.trailer", 22), ("vehicle.truck", 23),
)
VISIBILITY = (("1", "v0-40", 0.0), ("2", "v40-60", 0.4), ("3", "v60-80", 0.6), ("4", "v80-100", 0.8))


def token(*parts) -> str:
    """A 32-hex nuScenes-style token, a pure function of its parts."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def category_token(name: str) -> str:
    return token("category", name)


def calibrated_sensor_token(channel: str) -> str:
    return token("calibrated_sensor", channel)


def yaw_quaternion(yaw: float) -> List[float]:
    """[w, x, y, z] of a rotation by yaw (rad) about z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def visibility_token(fraction: float) -> str:
    tok = "1"
    for t, _, lo in VISIBILITY:
        if fraction >= lo:
            tok = t
    return tok


def fixed_tables(width: int, height: int) -> Dict[str, List[dict]]:
    """attribute, category, visibility, sensor and calibrated_sensor tables; camera intrinsics are those
    of the root's width x height images (the real 1600 x 900 ones scaled)."""
    att = [{"token": t, "name": n, "description": n} for n, t in sorted(ATTRIBUTE_TOKENS.items())]
    cat = [{"token": category_token(n), "name": n, "description": n, "index": i} for n, i in CATEGORIES]
    vis = [{"token": t, "level": lv, "description": f"visibility of whole object is between {lv[1:].replace('-', ' and ')}%"}
           for t, lv, _ in VISIBILITY]
    sensor = [{"token": rig.SENSOR_TOKENS[ch], "channel": ch, "modality": modality_of(ch)} for ch in ALL_CHANNELS]
    cs = []
    for ch in ALL_CHANNELS:
        t, q, K = rig.CALIBRATION[ch]
        cs.append({"token": calibrated_sensor_token(ch), "sensor_token": rig.SENSOR_TOKENS[ch],
                   "translation": list(t), "rotation": list(q),
                   "camera_intrinsic": rig.intrinsics(ch, width, height).tolist() if K is not None else []})
    return {"attribute": att, "category": cat, "visibility": vis, "sensor": sensor, "calibrated_sensor": cs}


def count_points_in_boxes(ann_records: Sequence[dict], points_xyz: np.ndarray, ego_pose: dict,
                          channel: str) -> np.ndarray:
    """Points of one sensor file inside each annotation box, computed exactly as the devkit does.

    ann_records: sample_annotation records (global translation, size (w, l, h), rotation wxyz)
    points_xyz: float32[3, P] points in the sensor frame as the devkit reads them from the file
    ego_pose: the sample_data's ego_pose record. Returns int64[len(ann_records)].
    """
    from nuscenes.utils.data_classes import Box
    from nuscenes.utils.geometry_utils import points_in_box

    from scipy.spatial import cKDTree

    t, q, _ = rig.CALIBRATION[channel]
    out = np.zeros(len(ann_records), dtype=np.int64)
    if points_xyz.shape[1] == 0:
        return out
    # A k-d tree only preselects the points near each box; the count itself is the devkit's test.
    tree = cKDTree(points_xyz.T.astype(np.float64))
    q_ego_inv = Quaternion(ego_pose["rotation"]).inverse
    q_cs_inv = Quaternion(list(q)).inverse
    for i, a in enumerate(ann_records):
        box = Box(a["translation"], a["size"], Quaternion(a["rotation"]))
        # Same operations, same order as NuScenes.get_sample_data.
        box.translate(-np.array(ego_pose["translation"]))
        box.rotate(q_ego_inv)
        box.translate(-np.array(list(t)))
        box.rotate(q_cs_inv)
        idx = tree.query_ball_point(box.center, 0.5 * float(np.linalg.norm(a["size"])) + 0.05)
        if idx:
            out[i] = int(np.sum(points_in_box(box, points_xyz[:, np.sort(np.asarray(idx))])))
    return out


def radar_points_devkit_view(records: np.ndarray) -> np.ndarray:
    """float32[3, P] xyz of the radar records that the devkit's default filters keep."""
    keep = (records[:, 14] == 0) & (records[:, 3] <= 6) & (records[:, 11] == 3)
    return records[keep, :3].astype(np.float32).T


def write_tables(out_dir: str, version: str, tables: Dict[str, List[dict]]) -> None:
    """Write the 13 tables as <out_dir>/<version>/<table>.json with sorted keys."""
    root = os.path.join(out_dir, version)
    os.makedirs(root, exist_ok=True)
    for name in TABLES:
        with open(os.path.join(root, name + ".json"), "w") as f:
            json.dump(tables[name], f, indent=0, sort_keys=True)


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=0, sort_keys=True)
