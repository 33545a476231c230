"""ONNX export of the detector (``ExportableDetector``) with standard operators only.

``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's translation), opset ``OPSET``; the
pillar counts are the only dynamic axes (``DYNAMIC_AXES``); the file is checked with
``onnx.checker.check_model(full_check=True)`` and must use the default ONNX domain alone.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..fileio import atomic_write_bytes
from .graph import ExportableDetector, input_names, output_names, prepare_inputs

OPSET = 20
# input name -> {axis: dimension name}; every other axis is static (batch size, cameras, image size)
DYNAMIC_AXES: Dict[str, Dict[int, str]] = {
    "lidar_voxels": {0: "lidar_pillars"}, "lidar_num_points": {0: "lidar_pillars"},
    "lidar_coords": {0: "lidar_pillars"},
    "radar_voxels": {0: "radar_pillars"}, "radar_num_points": {0: "radar_pillars"},
    "radar_coords": {0: "radar_pillars"},
}


class ExportError(RuntimeError):
    """The export failed or produced a graph that is not plain ONNX."""


@dataclass
class ExportReport:
    path: str
    opset: int
    inputs: List[str]
    outputs: List[str]
    op_types: List[str]
    bytes: int


def export_onnx(model, batch, path: str, opset: int = OPSET, optimize: bool = True) -> ExportReport:
    """Write ``model`` (a FusionDetector, put in eval mode) as ONNX to ``path`` (atomically), traced on
    ``batch`` (its batch size becomes the graph's); checks the result. Needs the 'onnx' extra."""
    try:
        import onnx
    except ImportError as e:
        raise ExportError(f"ONNX export needs the 'onnx' extra (pip install -e '.[onnx]'): {e}") from None
    model.eval()
    graph = ExportableDetector(model, batch.batch_size).eval()
    inputs = prepare_inputs(model, batch)
    names = list(inputs)
    if names != input_names(model):
        raise ExportError(f"prepared inputs {names} differ from the graph's {input_names(model)}")
    dims = {name: torch.export.Dim(name, min=1, max=1 << 20) for name in ("lidar_pillars", "radar_pillars")}
    shapes = tuple({a: dims[d] for a, d in DYNAMIC_AXES[n].items()} if n in DYNAMIC_AXES else None for n in names)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter's deprecation notes and "axis name ... will not be used" (the three pillar
        # inputs share one axis, by design) say nothing about this graph
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*")
        try:
            program = torch.onnx.export(graph, tuple(inputs.values()), input_names=names,
                                        output_names=output_names(model), opset_version=opset, dynamo=True,
                                        dynamic_shapes={"args": shapes}, optimize=optimize, verbose=False)
        except Exception as e:  # the exporter raises many types; one line with the first cause
            raise ExportError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0]}") from e
        finally:
            quiet.setLevel(level)
    proto = program.model_proto
    domains = {o.domain for o in proto.opset_import} | {n.domain for n in proto.graph.node}
    if domains - {"", "ai.onnx"}:
        raise ExportError(f"the graph uses operators outside the ONNX domain: {sorted(domains - {'', 'ai.onnx'})}")
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    atomic_write_bytes(path, data)
    return ExportReport(path, opset, names, output_names(model), sorted({n.op_type for n in proto.graph.node}),
                        len(data))


def load_session(path: str, threads: Optional[int] = None, providers: Optional[List[str]] = None):
    """An ONNX Runtime InferenceSession of ``path``; threads: intra-op threads (default: ORT's)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"the onnxruntime backend needs the 'onnx' extra (pip install -e '.[onnx]'): {e}") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])
