"""ONNX Runtime against torch on one frame, with every sensor and with sensors missing."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

from ..structures import Batch, Detections
from .export import load_session
from .graph import decode_outputs, outputs_to_preds, prepare_inputs


def drop_sensors(batch: Batch, lidar: bool = False, cameras: Sequence[int] = ()) -> Batch:
    """``batch`` as the data path gives it when the LiDAR (``lidar``) or the camera slots ``cameras``
    failed: no points / no image, their presence flags off."""
    mm = batch.modality_mask.clone().bool()
    pts = batch.lidar_points
    if lidar:
        pts = [p[:0] for p in pts]
        mm[:, 0] = False
    cmask, images = batch.camera_mask.clone().bool(), batch.images.clone()
    for i in cameras:
        cmask[:, i] = False
        images[:, i] = 0
    mm[:, 1] = mm[:, 1] & cmask.any(dim=1)
    return dataclasses.replace(batch, lidar_points=pts, camera_mask=cmask, images=images, modality_mask=mm)


@dataclass
class BackendCase:
    name: str
    max_abs_diff: float  # over every head map of every task
    same_detections: bool  # same count and classes, boxes and scores within 1e-4
    detections_torch: int
    detections_ort: int
    torch_ms: float
    ort_ms: float


def same_detections(a: Detections, b: Detections, tol: float = 1e-4) -> bool:
    if len(a.boxes) != len(b.boxes) or not np.array_equal(a.boxes.labels, b.boxes.labels):
        return False
    return bool(np.allclose(a.boxes.boxes, b.boxes.boxes, rtol=0, atol=tol)
                and np.allclose(a.boxes.scores, b.boxes.scores, rtol=0, atol=tol))


@torch.no_grad()
def compare_batch(model, session, batch: Batch, name: str) -> BackendCase:
    """model (FusionDetector, eval) in torch vs the ONNX Runtime session of its graph on ``batch``."""
    t0 = time.perf_counter()
    ref = model(batch)
    t1 = time.perf_counter()
    inputs = prepare_inputs(model, batch)
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {n: inputs[n].numpy() for n in names})
    t2 = time.perf_counter()
    preds = outputs_to_preds(out, len(ref), model.head.output_names)
    diff = max(float((p[k] - r[k]).abs().max()) for p, r in zip(preds, ref) for k in r)
    det_t = model.head.decode(ref, batch.sample_tokens, batch.timestamps)[0]
    det_o = decode_outputs(model, out, batch)[0]
    return BackendCase(name, diff, same_detections(det_t, det_o), len(det_t.boxes), len(det_o.boxes),
                       1e3 * (t1 - t0), 1e3 * (t2 - t1))


def compare_backends(model, frame, cfg, onnx_path: str) -> List[BackendCase]:
    """The acceptance cases on one frame: every sensor, LiDAR absent, the first two cameras absent (only
    the cases the model has sensors for)."""
    from ..data.batch import collate, frame_to_sample

    session = load_session(onnx_path)
    batch = collate([frame_to_sample(frame, cfg)])
    cases = [("all sensors", batch)]
    if model.lidar is not None:
        cases.append(("lidar absent", drop_sensors(batch, lidar=True)))
    if model.camera is not None:
        cases.append(("two cameras absent", drop_sensors(batch, cameras=(0, 1))))
    return [compare_batch(model, session, b, name) for name, b in cases]
