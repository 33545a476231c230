"""The export edge: ``Detections`` (ego frame, package box layout) -> nuScenes submission JSON.

What the nuScenes detection submission expects, per box (https://www.nuscenes.org/object-detection):
``translation`` (m, global frame, box centre), ``size`` (w, l, h) in m, ``rotation`` quaternion
(w, x, y, z) in the global frame, ``velocity`` (vx, vy) m/s in the global frame,
``detection_name`` (one of the 10 classes), ``detection_score`` and ``attribute_name`` (an attribute
of the box's class, '' for classes without attributes). At most 500 boxes per sample; every sample
of the evaluated split has an entry (an empty list when nothing was detected).

This module is the only place that goes from the ego frame to the global frame for detections:
``Boxes3D.transformed`` moves centre, yaw and velocity, ``perception.data.convert.box_row_to_nuscenes``
reorders the size and builds the quaternion. A box that is not in the ego frame, a label outside
``CLASSES``, a non-finite score or a non-positive size is an ``ExportError`` rather than a silently
wrong file (a non-finite centre, size or yaw cannot reach here: ``Boxes3D`` refuses it).

``result_box_problem`` is the same contract for a box read back from a submission file (any
producer's): evaluation refuses a file with a box it flags, naming the sample and the field.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np

from ..data.convert import box_row_to_nuscenes
from ..structures import ATTRIBUTES, CLASSES, DEFAULT_ATTRIBUTE, NO_ATTRIBUTE, Detections
from ..fileio import write_json_atomic, write_text_atomic  # noqa: F401  (re-exported)

MAX_BOXES_PER_SAMPLE = 500

# The attributes that make sense for each class, as nuScenes annotates them. The devkit only checks
# that a name is one of its 8 attributes; a car exported as 'pedestrian.moving' would be a silent
# attribute error, so anything outside this table is replaced by the class default.
_VEHICLE = ("vehicle.moving", "vehicle.parked", "vehicle.stopped")
_CYCLE = ("cycle.with_rider", "cycle.without_rider")
CLASS_ATTRIBUTES: Dict[str, tuple] = {
    "car": _VEHICLE, "truck": _VEHICLE, "bus": _VEHICLE, "trailer": _VEHICLE,
    "construction_vehicle": _VEHICLE,
    "pedestrian": ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"),
    "motorcycle": _CYCLE, "bicycle": _CYCLE,
    "traffic_cone": (), "barrier": (),
}


class ExportError(ValueError):
    """Detections that cannot be exported as they are; the message names the sample and the box."""


def attribute_name(class_name: str, attribute_id: int) -> str:
    """The exported attribute of a box: its own if valid for its class, else the class default
    (``DEFAULT_ATTRIBUTE``); '' for classes without attributes (traffic_cone, barrier)."""
    allowed = CLASS_ATTRIBUTES[class_name]
    if not allowed:
        return ""
    if attribute_id != NO_ATTRIBUTE and 0 <= attribute_id < len(ATTRIBUTES):
        name = ATTRIBUTES[attribute_id]
        if name in allowed:
            return name
    return DEFAULT_ATTRIBUTE[class_name]


def make_meta(use_camera: bool = False, use_lidar: bool = False, use_radar: bool = False,
              use_map: bool = False, use_external: bool = False) -> Dict[str, bool]:
    """The submission's ``meta`` block: which inputs produced the results."""
    return {"use_camera": bool(use_camera), "use_lidar": bool(use_lidar), "use_radar": bool(use_radar),
            "use_map": bool(use_map), "use_external": bool(use_external)}


def detections_to_results(detections_by_sample: Mapping[str, Detections],
                          T_global_from_ego_by_sample: Mapping[str, np.ndarray],
                          max_boxes: int = MAX_BOXES_PER_SAMPLE) -> Dict[str, List[dict]]:
    """Detections in the ego frame -> the submission's ``results`` mapping.

    detections_by_sample: sample token -> Detections, boxes in the ego frame at the sample's LiDAR
        (reference) time
    T_global_from_ego_by_sample: sample token -> float64[4, 4] ego pose at that time (``Frame.T_global_from_ego``)
    max_boxes: keep this many boxes per sample, highest score first (the devkit rejects more than 500)
    Returns sample token -> list of box dicts in the global frame (see module doc). A velocity that is
    not finite is exported as 0 (standing still): JSON has no portable NaN, and the devkit would skip a
    NaN velocity in AVE instead of scoring it.
    """
    results: Dict[str, List[dict]] = {}
    for token, det in detections_by_sample.items():
        if token not in T_global_from_ego_by_sample:
            raise ExportError(f"sample {token}: no ego pose to export its detections with")
        boxes = det.boxes
        if boxes.frame != "ego":
            raise ExportError(f"sample {token}: detections are in the {boxes.frame!r} frame; export expects "
                              f"the ego frame (the global transform happens here, once)")
        if len(boxes) and (boxes.labels.min() < 0 or boxes.labels.max() >= len(CLASSES)):
            bad = int(boxes.labels[(boxes.labels < 0) | (boxes.labels >= len(CLASSES))][0])
            raise ExportError(f"sample {token}: label {bad} is not a class index (0..{len(CLASSES) - 1})")
        if not np.all(np.isfinite(boxes.scores)):
            raise ExportError(f"sample {token}: non-finite detection score")
        if len(boxes) and np.any(boxes.boxes[:, 3:6] <= 0):
            i = int(np.nonzero(np.any(boxes.boxes[:, 3:6] <= 0, axis=1))[0][0])
            raise ExportError(f"sample {token}: box {i} has a non-positive size (l, w, h) = "
                              f"{tuple(float(v) for v in boxes.boxes[i, 3:6])}")
        # Stable sort: equal scores keep the detector's order.
        order = np.argsort(-boxes.scores.astype(np.float64), kind="stable")[:max_boxes]
        glob = boxes.select(order).transformed(np.asarray(T_global_from_ego_by_sample[token], np.float64), "global")
        out = []
        for row, label, attr, score in zip(glob.boxes, glob.labels, glob.attributes, glob.scores):
            translation, size, rotation, velocity = box_row_to_nuscenes(row)
            velocity = [v if np.isfinite(v) else 0.0 for v in velocity]
            name = CLASSES[int(label)]
            out.append({
                "sample_token": token,
                "translation": translation,
                "size": size,
                "rotation": rotation,
                "velocity": velocity,
                "detection_name": name,
                "detection_score": float(score),
                "attribute_name": attribute_name(name, int(attr)),
            })
        results[token] = out
    return results


# field -> number of components, for the numeric vector fields of a submission box
_VECTOR_FIELDS = (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2))
_REQUIRED_FIELDS = ("sample_token",) + tuple(f for f, _ in _VECTOR_FIELDS) + (
    "detection_name", "detection_score", "attribute_name")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def result_box_problem(box: Any, sample_token: str) -> Optional[str]:
    """What is wrong with one box of a submission's ``results[sample_token]`` list, or None.

    The text names the field and its value ('velocity [nan, 0.0] is not finite'). Checked: every
    field of the format is present; translation, size, rotation and velocity are lists of 3, 3, 4, 2
    finite numbers (Python's json reads NaN and Infinity literals, and the devkit skips a NaN
    velocity in AVE instead of scoring it); size is positive; rotation is not the zero quaternion;
    detection_name is one of ``CLASSES``; detection_score is a finite number; attribute_name is one of
    ``ATTRIBUTES`` or ''; the box's own sample_token is the one it is listed under.
    """
    if not isinstance(box, dict):
        return f"a box must be a mapping of fields, got {type(box).__name__}"
    missing = [f for f in _REQUIRED_FIELDS if f not in box]
    if missing:
        return f"field {missing[0]!r} is missing (a box needs {', '.join(_REQUIRED_FIELDS)})"
    if box["sample_token"] != sample_token:
        return f"sample_token {box['sample_token']!r} differs from the sample it is listed under"
    for name, n in _VECTOR_FIELDS:
        v = box[name]
        if not isinstance(v, list) or len(v) != n or not all(_is_number(x) for x in v):
            return f"{name} must be a list of {n} numbers, got {v!r}"
        if not all(math.isfinite(x) for x in v):
            return f"{name} {v!r} is not finite" + (" (write 0 for a box that stands still)"
                                                    if name == "velocity" else "")
    if min(box["size"]) <= 0:
        return f"size {box['size']!r} is not positive (w, l, h in metres)"
    if not any(box["rotation"]):
        return f"rotation {box['rotation']!r} is the zero quaternion, not a rotation"
    if box["detection_name"] not in CLASSES:
        return f"detection_name {box['detection_name']!r} is not a detection class ({', '.join(CLASSES)})"
    score = box["detection_score"]
    if not _is_number(score) or not math.isfinite(score):
        return f"detection_score {score!r} is not a finite number"
    if box["attribute_name"] != "" and box["attribute_name"] not in ATTRIBUTES:
        return f"attribute_name {box['attribute_name']!r} is not a nuScenes attribute (or '')"
    return None


def submission(results: Mapping[str, List[dict]], meta: Mapping[str, bool]) -> dict:
    """The whole submission document: ``{"meta": ..., "results": ...}``."""
    missing = {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"} - set(meta)
    if missing:
        raise ExportError(f"submission meta lacks {sorted(missing)}")
    return {"meta": dict(meta), "results": dict(results)}


def write_results(path: str, detections_by_sample: Mapping[str, Detections],
                  T_global_from_ego_by_sample: Mapping[str, np.ndarray], meta: Mapping[str, bool],
                  sample_tokens: Optional[Iterable[str]] = None, max_boxes: int = MAX_BOXES_PER_SAMPLE) -> str:
    """Export and write a submission file.

    sample_tokens: when given, every one of them must have detections (the devkit needs every sample
        of the split, an empty list included) and no other sample may appear
    """
    if sample_tokens is not None:
        want = list(sample_tokens)
        have = set(detections_by_sample)
        missing = [t for t in want if t not in have]
        extra = sorted(have - set(want))
        if missing or extra:
            raise ExportError(f"detections for {len(have)} samples do not match the {len(want)} samples to export"
                              f" ({len(missing)} missing, first {missing[:1]}; {len(extra)} extra, first {extra[:1]})")
    results = detections_to_results(detections_by_sample, T_global_from_ego_by_sample, max_boxes)
    return write_json_atomic(submission(results, meta), path)
