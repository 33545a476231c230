"""Inference backends behind one detector interface (``predict(frames) -> list[Detections]``), for
tools/eval.py and tools/replay.py (``--backend torch|onnxruntime``).

Both go frames -> ``frame_to_sample`` / ``collate`` -> network -> the head's ``decode``; they differ only
in what runs the network: torch eager (``perception.eval.evaluate.ModelDetector``) or an ONNX Runtime
session of the exported graph, fed by ``prepare_inputs`` and decoded by ``decode_outputs``.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..structures import Detections
from .export import export_onnx, load_session
from .graph import decode_outputs, outputs_to_preds, prepare_inputs

BACKENDS = ("torch", "onnxruntime")


class OnnxRuntimeDetector:
    """The exported graph in ONNX Runtime as a detector, one frame per session run (the graph's batch
    size is 1).

    model: the FusionDetector the graph was exported from (eval mode, CPU): its voxelization, camera
        geometry and decode are the shared pre- and post-processing
    onnx_path: the graph; when the file does not exist it is exported from ``model`` on the first frame
    compare: also run ``model`` on every frame and keep the largest |onnxruntime - torch| of any head
        map (``max_abs_diff``) and the frames whose decoded classes differ (``detections_differ``)
    threads: ONNX Runtime intra-op threads (default: its own choice)
    """

    def __init__(self, model, cfg, onnx_path: str, compare: bool = False, threads: Optional[int] = None):
        self.torch_model, self.cfg = model.eval(), cfg
        self.onnx_path = os.path.abspath(onnx_path)
        self.compare = bool(compare)
        self.threads = threads
        self.session = None
        self.modalities = tuple(model.modalities)
        self.needs_images = "camera" in self.modalities
        self.max_abs_diff = 0.0
        self.detections_differ = 0
        self.frames = 0
        self.session_s = 0.0
        self.exported = False

    def _session(self, batch):
        if self.session is None:
            if not os.path.isfile(self.onnx_path):
                export_onnx(self.torch_model, batch, self.onnx_path)
                self.exported = True
            self.session = load_session(self.onnx_path, self.threads)
            self.input_names = [i.name for i in self.session.get_inputs()]
        return self.session

    def run(self, batch) -> List[np.ndarray]:
        """The graph's outputs (``graph.output_names`` order) for a one-sample batch."""
        inputs = prepare_inputs(self.torch_model, batch)
        session = self._session(batch)
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.onnx_path}: the graph wants inputs {missing} this model does not make "
                             f"(exported from another config?)")
        t0 = time.perf_counter()
        out = session.run(None, {n: inputs[n].cpu().numpy() for n in self.input_names})
        self.session_s += time.perf_counter() - t0
        return out

    @torch.no_grad()
    def predict(self, frames: Sequence) -> List[Detections]:
        from ..data.batch import collate, frame_to_sample

        dets: List[Detections] = []
        for frame in frames:
            batch = collate([frame_to_sample(frame, self.cfg)])
            outputs = self.run(batch)
            det = decode_outputs(self.torch_model, outputs, batch)
            if self.compare:
                ref = self.torch_model(batch)
                preds = outputs_to_preds(outputs, len(ref), self.torch_model.head.output_names)
                diff = max(float((p[k] - r[k]).abs().max()) for p, r in zip(preds, ref) for k in r)
                self.max_abs_diff = max(self.max_abs_diff, diff)
                ref_det = self.torch_model.head.decode(ref, batch.sample_tokens, batch.timestamps)
                if not np.array_equal(ref_det[0].boxes.labels, det[0].boxes.labels):
                    self.detections_differ += 1
            self.frames += 1
            dets.extend(det)
        return dets

    def summary(self) -> str:
        text = (f"onnxruntime: {self.frames} frames, session {1e3 * self.session_s / max(self.frames, 1):.1f} ms/frame, "
                f"graph {self.onnx_path}" + (" (exported now)" if self.exported else ""))
        if self.compare:
            text += (f"; vs torch: max |diff| {self.max_abs_diff:.2e} over every head map, "
                     f"{self.detections_differ} frame(s) with different classes after decode")
        return text


def build_backend_detector(cfg, checkpoint: str, backend: str = "torch", onnx_path: Optional[str] = None,
                           compare: bool = False, threads: Optional[int] = None):
    """The detector of ``checkpoint`` on ``backend``: 'torch' is ``evaluate.build_detector``'s;
    'onnxruntime' runs ``onnx_path`` (exported from the checkpoint there when absent) on the CPU."""
    from ..eval.evaluate import EvalError, build_detector

    if backend not in BACKENDS:
        raise EvalError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    det = build_detector(cfg, checkpoint)
    if backend == "torch":
        return det
    if onnx_path is None:
        raise EvalError("the onnxruntime backend needs the path of the ONNX graph (exported there when absent)")
    return OnnxRuntimeDetector(det.model.cpu(), cfg, onnx_path, compare=compare, threads=threads)
