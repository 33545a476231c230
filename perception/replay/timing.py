"""Per-stage timing of a detector on one frame: batch (frame -> Batch), voxelize, model, decode.

For a ``ModelDetector`` (perception.eval.evaluate) the stages are run here one by one, as
``FusionDetector.predict`` runs them (``head.decode(model(batch), tokens, timestamps)``); the time
spent in ``voxelize_batch`` (LiDAR and radar pillars) is measured by wrapping that function for the
duration of the call, and 'model' is the forward pass without it. Any other detector is timed as a
whole ('model').
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Tuple

from ..structures import Detections, Frame


@contextlib.contextmanager
def _timed_voxelize(acc: Dict[str, float]):
    """Accumulate the wall time of voxelize_batch calls in acc['voxelize'] while active."""
    from ..models.lidar import pointpillars
    from ..models.radar import radar_pillars

    modules = [m for m in (pointpillars, radar_pillars) if hasattr(m, "voxelize_batch")]
    originals = [m.voxelize_batch for m in modules]
    inner = originals[0]

    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            acc["voxelize"] += time.perf_counter() - t0

    for m in modules:
        m.voxelize_batch = wrapped
    try:
        yield
    finally:
        for m, f in zip(modules, originals):
            m.voxelize_batch = f


class TimedDetector:
    """detector: anything with ``predict(frames) -> list[Detections]``."""

    def __init__(self, detector):
        self.detector = detector
        model = getattr(detector, "model", None)
        self.staged = (model is not None and hasattr(detector, "cfg") and callable(model)
                       and hasattr(getattr(model, "head", None), "decode"))

    def predict(self, frame: Frame) -> Tuple[Detections, Dict[str, float]]:
        """Detections of one frame and the seconds per stage."""
        if not self.staged:
            t0 = time.perf_counter()
            det = self.detector.predict([frame])[0]
            return det, {"model": time.perf_counter() - t0}
        import torch

        from ..data.batch import collate, frame_to_sample

        d = self.detector
        device = getattr(d, "device", torch.device("cpu"))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times = {"voxelize": 0.0}
        t0 = time.perf_counter()
        batch = collate([frame_to_sample(frame, d.cfg)])
        if hasattr(batch, "to"):
            batch = batch.to(device)
        t1 = time.perf_counter()
        times["batch"] = t1 - t0
        with torch.no_grad(), _timed_voxelize(times):
            preds = d.model(batch)
            sync()
        t2 = time.perf_counter()
        times["model"] = t2 - t1 - times["voxelize"]
        det = d.model.head.decode(preds, batch.sample_tokens, batch.timestamps)[0]
        times["decode"] = time.perf_counter() - t2
        return det, times
