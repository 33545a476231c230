"""The data edge: nuScenes boxes <-> the package's box layout.

nuScenes: centre ``translation`` (m), ``size`` = (w, l, h), ``rotation`` quaternion (w, x, y, z),
global frame; velocity from the devkit's ``box_velocity`` (global, m/s). Package: rows
(x, y, z, l, w, h, yaw, vx, vy) (see ``perception.structures``). Nothing else converts sizes or
quaternions.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from pyquaternion import Quaternion

from ..geometry import quaternion_from_yaw
from ..structures import ATTRIBUTE_TO_ID, CLASS_TO_ID, NO_ATTRIBUTE, Boxes3D, wrap_angle


def box_row_from_nuscenes(translation: Sequence[float], size_wlh: Sequence[float],
                          rotation_wxyz: Sequence[float], velocity_xy: Sequence[float]) -> np.ndarray:
    """One nuScenes box -> float64[9] (x, y, z, l, w, h, yaw, vx, vy), same frame.

    The yaw is the heading of the box's x axis (its length direction); roll and pitch, which are
    zero for nuScenes annotations, are dropped.
    """
    q = Quaternion(list(rotation_wxyz))
    heading = q.rotate([1.0, 0.0, 0.0])
    yaw = float(np.arctan2(heading[1], heading[0]))
    w, l, h = size_wlh
    vx, vy = (float(velocity_xy[0]), float(velocity_xy[1])) if velocity_xy is not None else (np.nan, np.nan)
    return np.array([*translation, l, w, h, yaw, vx, vy], dtype=np.float64)


def box_row_to_nuscenes(row: np.ndarray) -> Tuple[List[float], List[float], List[float], List[float]]:
    """float[9] (x, y, z, l, w, h, yaw, vx, vy) -> (translation, size (w, l, h), rotation (w, x, y, z),
    velocity (vx, vy)), same frame."""
    x, y, z, l, w, h, yaw, vx, vy = (float(v) for v in row)
    q = quaternion_from_yaw(wrap_angle(yaw))
    return [x, y, z], [w, l, h], list(q.elements), [vx, vy]


def gt_boxes_global(nusc, sample_token: str) -> Boxes3D:
    """Ground truth of a keyframe sample in the global frame, detection classes only.

    Annotations whose category is not one of the 10 detection classes are left out. Velocities come
    from the devkit's ``box_velocity`` (NaN where it cannot be estimated: a single annotation).
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    sample = nusc.get("sample", sample_token)
    rows, labels, attrs, n_lidar, n_radar, tokens, inst = [], [], [], [], [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        vel = nusc.box_velocity(ann_token)[:2]
        rows.append(box_row_from_nuscenes(ann["translation"], ann["size"], ann["rotation"], vel))
        labels.append(CLASS_TO_ID[name])
        attr = NO_ATTRIBUTE
        if ann["attribute_tokens"]:
            attr = ATTRIBUTE_TO_ID.get(nusc.get("attribute", ann["attribute_tokens"][0])["name"], NO_ATTRIBUTE)
        attrs.append(attr)
        n_lidar.append(ann.get("num_lidar_pts", -1))
        n_radar.append(ann.get("num_radar_pts", -1))
        tokens.append(ann_token)
        inst.append(ann["instance_token"])
    n = len(rows)
    return Boxes3D(np.array(rows).reshape(n, 9), labels, attrs, np.ones(n), n_lidar, n_radar,
                   tokens, inst, frame="global")
