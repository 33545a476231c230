"""Inference precision (issue 17): the detector's forward under autocast, decoding in float32.

    fp32  the default: no autocast
    bf16  torch.autocast(bfloat16) on the model's device: CPU (oneDNN bf16 matmuls/convolutions where the
          CPU has them, e.g. AVX512-BF16 / AMX) or GPU
    fp16  torch.autocast(float16): GPU only (on CPU it would run emulated, slower than fp32)

Autocast runs matmuls and convolutions in the low precision and keeps its float32 list (reductions,
losses) in float32; the numba kernels (voxelization, BEV pooling) take float32 inputs either way. The
head's maps are cast back to float32 before ``decode``, so every backend decodes the same way.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    pass


def check_precision(precision: str, device) -> None:
    """Raise PrecisionError when ``precision`` cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise PrecisionError("fp16 inference needs a CUDA device (use bf16 on the CPU)")


def autocast(precision: str, device):
    """A context for the forward at ``precision`` on ``device`` (nullcontext for fp32)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def float_maps(preds: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
    """The head's maps per task with every floating map in float32 (unchanged when already)."""
    return [{k: v.float() if v.is_floating_point() else v for k, v in task.items()} for task in preds]


def compare_maps(a: List[Dict[str, torch.Tensor]], b: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
    """Largest |a - b| per map name over every task (heatmap logits, regression maps), in float32."""
    out: Dict[str, float] = {}
    for ta, tb in zip(a, b):
        for k in ta:
            if ta[k].is_floating_point():
                d = float((ta[k].float() - tb[k].float()).abs().max())
                out[k] = max(out.get(k, 0.0), d)
    return out


def compare_detections(ref, other, min_score: float = 0.1, radius: float = 0.5) -> Dict[str, float]:
    """Agreement of two Detections of one frame: of ``ref``'s boxes scoring >= min_score, how many have a
    box in ``other`` of the same class whose centre is within ``radius`` metres (greedy, best score
    first, each box used once), and the largest score and centre differences of those pairs."""
    import numpy as np

    ra, ob = ref.boxes, other.boxes
    keep = np.flatnonzero(ra.scores >= min_score)
    keep = keep[np.argsort(-ra.scores[keep], kind="stable")]
    used = np.zeros(len(ob.scores), dtype=bool)
    matched, max_score, max_centre = 0, 0.0, 0.0
    for i in keep:
        cand = np.flatnonzero((ob.labels == ra.labels[i]) & ~used)
        if len(cand) == 0:
            continue
        dist = np.linalg.norm(ob.boxes[cand, :2] - ra.boxes[i, :2], axis=1)
        j = int(np.argmin(dist))
        if dist[j] > radius:
            continue
        used[cand[j]] = True
        matched += 1
        max_score = max(max_score, abs(float(ob.scores[cand[j]]) - float(ra.scores[i])))
        max_centre = max(max_centre, float(dist[j]))
    return {"boxes": int(len(keep)), "matched": matched, "max_score_diff": max_score, "max_centre_diff_m": max_centre}
