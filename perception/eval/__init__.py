"""Offline evaluation: export to the nuScenes submission format, the official devkit metrics,
sensor-failure robustness, reports (see ``evaluate`` for the detector interface)."""
from .evaluate import (CheckpointError, EvalError, OracleDetector, as_detector, evaluate_detector,
                       evaluate_results, failure_cases, load_checkpoint_into, run_inference, run_robustness,
                       split_sample_tokens)
from .export import ExportError, detections_to_results, make_meta, write_results
from .report import write_report

__all__ = [
    "CheckpointError", "EvalError", "ExportError", "OracleDetector", "as_detector", "detections_to_results",
    "evaluate_detector", "evaluate_results", "failure_cases", "load_checkpoint_into", "make_meta",
    "run_inference", "run_robustness", "split_sample_tokens", "write_report", "write_results",
]
