"""Offline evaluation with the official nuScenes devkit.

Flow: split name -> the split's samples present in the tables -> one ``Frame`` per keyframe sample
(``FrameBuilder``, one per scene, sensors in ``drop`` removed) -> ``Detector.predict`` in batches ->
``Detections`` (ego frame) -> ``export.write_results`` (global frame, nuScenes conventions) ->
``DetectionEval`` with ``detection_cvpr_2019`` -> ``metrics_summary.json``, ``metrics_details.json``,
``plots/`` as the devkit writes them.

The detector interface the evaluation loop calls::

    class Detector(Protocol):
        def predict(self, frames: list[Frame]) -> list[Detections]: ...   # one per frame, ego frame
        modalities: tuple = ("lidar", "camera", "radar")  # optional: inputs it reads (submission meta)
        needs_images: bool = True                         # optional: False skips JPEG decoding

A plain callable ``frame -> Detections`` is accepted too (``as_detector``). A model from
``perception.models.build.build_model(cfg)`` with ``predict(batch) -> list[Detections]`` becomes one
through ``ModelDetector`` (frames -> ``perception.data.batch.frame_to_sample`` -> ``collate``);
``build_detector(cfg, checkpoint)`` does that after ``load_checkpoint_into``.

Data path (``perception.eval.data``): the split's plans come from the cached index (built once, as
training's; ground truth and velocities included), a DataLoader's workers read, decode and prepare
the frames, and ``--robustness`` reads each frame once and masks the sensors of each failure in
memory. ``data_path="frames"`` keeps the reference: frame by frame in the main process.

Distributed: when ``torch.distributed`` is initialized (torchrun), each rank runs the samples
``tokens[rank::world_size]`` and rank 0 gathers the detections (``gather_object``), writes the results
and runs the devkit; the other ranks return ``None``. Without it everything runs in one process.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..data.gt_filter import GtZRange
from ..data.problems import FileProblems
from ..structures import CAMERA_CHANNELS, RADAR_CHANNELS, Detections, Frame
from . import export

log = logging.getLogger(__name__)

DETECTION_CONFIG = "detection_cvpr_2019"
RESULTS_FILE = "results_nusc.json"
SUMMARY_FILE = "metrics_summary.json"
DETAILS_FILE = "metrics_details.json"
DEPTH_FILE = "camera_depth.json"  # DepthStats.summary() of a camera model's run (camera depth vs LiDAR)
MODALITIES = ("lidar", "camera", "radar")


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the one-line message says why and what is valid."""


class CheckpointError(EvalError):
    """A checkpoint that does not fit the model; the message names the first mismatched parameter."""


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def _predefined_splits_for_version(version: str) -> List[str]:
    """The devkit's predefined splits that ``load_gt`` accepts for a version (same rules)."""
    from nuscenes.utils.splits import create_splits_scenes

    names = list(create_splits_scenes().keys())
    if version.endswith("trainval"):
        ok = {"train", "val", "train_detect", "train_track"}
    elif version.endswith("mini"):
        ok = {"mini_train", "mini_val"}
    elif version.endswith("test"):
        ok = {"test"}
    else:
        ok = set()
    return [n for n in names if n in ok]


def _custom_splits(dataroot: str, version: str) -> Dict[str, List[str]]:
    path = os.path.join(dataroot, version, "splits.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if isinstance(v, list)}


def valid_splits(dataroot: str, version: str) -> List[str]:
    """Split names evaluable on this root's version: the devkit's predefined ones for the version and
    any custom split in ``<version>/splits.json``."""
    predefined = _predefined_splits_for_version(version)
    return predefined + [s for s in _custom_splits(dataroot, version) if s not in predefined]


def check_split(dataroot: str, version: str, split: str) -> None:
    """An unknown split for the version is an ``EvalError`` listing the valid ones (no tables loaded)."""
    valid = valid_splits(dataroot, version)
    if split not in valid:
        raise EvalError(f"unknown split {split!r} for version {version} (valid: {', '.join(valid) or 'none'})")


def split_sample_tokens(nusc, split: str) -> List[str]:
    """The keyframe samples of ``split`` that this root's tables hold, in table order.

    These are exactly the samples ``DetectionEval`` loads ground truth for (``load_gt`` keeps the
    samples whose scene is in the split's list), so a results file must hold every one of them:
    on a root with a few scenes of a split, that is the few scenes, not the whole split.
    """
    from nuscenes.utils.splits import create_splits_scenes

    check_split(nusc.dataroot, nusc.version, split)
    custom = _custom_splits(nusc.dataroot, nusc.version)
    scenes = set(create_splits_scenes()[split]) if split not in custom else set(custom[split])
    tokens = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
    if not tokens:
        raise EvalError(f"split {split!r} has no samples in {os.path.join(nusc.dataroot, nusc.version)} "
                        f"(scenes here: {', '.join(sorted(s['name'] for s in nusc.scene)[:8])})")
    return tokens


# ---------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------
class _CallableDetector:
    def __init__(self, fn: Callable[[Frame], Detections]):
        self.fn = fn
        self.modalities = getattr(fn, "modalities", MODALITIES)
        self.needs_images = getattr(fn, "needs_images", None)

    def predict(self, frames: Sequence[Frame]) -> List[Detections]:
        return [self.fn(f) for f in frames]


def as_detector(obj):
    """A detector with ``predict(frames) -> list[Detections]``: the object itself if it has one,
    else a plain callable ``frame -> Detections`` wrapped."""
    if hasattr(obj, "predict"):
        return obj
    if callable(obj):
        return _CallableDetector(obj)
    raise TypeError(f"a detector needs predict(frames) or to be callable, got {type(obj).__name__}")


class OracleDetector:
    """The ground truth as if it were a model's output: ``frame.gt`` (loaded into the ego frame by the
    data layer, in the package's box layout) with score 1.

    Boxes that hold no LiDAR and no radar point are left out: the devkit drops those from its ground
    truth, and a prediction there would be a false positive. Velocities the devkit cannot estimate
    (single-annotation instances) are NaN in ``frame.gt``; the export writes them as 0, and the
    devkit's ground truth is NaN there too, so they are not scored.
    """

    modalities: tuple = ()  # reads no sensor
    needs_images = False
    uses_ground_truth = True

    def predict(self, frames: Sequence[Frame]) -> List[Detections]:
        out = []
        for f in frames:
            if f.gt is None:
                raise EvalError(f"oracle: frame of sample {f.sample_token or f.lidar_token} has no ground truth")
            keep = (f.gt.num_lidar_pts + f.gt.num_radar_pts) != 0
            out.append(Detections(f.sample_token, f.timestamp, f.gt.select(keep)))
        return out


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
def dist_rank_world() -> Tuple[int, int]:
    """(rank, world size) of an initialized torch.distributed group, else (0, 1)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None:  # never imported, so no group can be initialized (and torch need not load)
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(tokens: Sequence[str], rank: int, world_size: int) -> List[str]:
    """The samples one rank runs: every ``world_size``-th, starting at ``rank`` (balanced across
    scenes, each sample on exactly one rank)."""
    return list(tokens[rank::world_size])


@dataclass
class InferenceOutput:
    """Detections of every sample (rank 0 after gathering) and what export needs beside them.

    detections: sample token -> Detections (ego frame)
    T_global_from_ego: sample token -> float64[4, 4] ego pose at the sample's LiDAR time
    present: modality -> whether any frame had that modality present
    """

    detections: Dict[str, Detections] = field(default_factory=dict)
    T_global_from_ego: Dict[str, np.ndarray] = field(default_factory=dict)
    present: Dict[str, bool] = field(default_factory=lambda: {m: False for m in MODALITIES})
    problems: FileProblems = field(default_factory=FileProblems)  # unreadable files (sensor absent there)
    # camera depth metrics against the LiDAR (models.camera.depth.DepthStats); None: the detector has none
    depth: Optional[object] = None

    def merge(self, other: "InferenceOutput") -> None:
        self.problems.merge(other.problems)
        if other.depth is not None:
            if self.depth is None:
                from ..models.camera.depth import DepthStats

                self.depth = DepthStats()
            self.depth.merge(other.depth)
        self.detections.update(other.detections)
        self.T_global_from_ego.update(other.T_global_from_ego)
        for m in MODALITIES:
            self.present[m] = self.present[m] or other.present.get(m, False)


_WARNED_Z_RANGE: set = set()  # z ranges already warned about in this process (run_inference)


DATA_PATHS = ("loader", "frames")


def run_inference(detector, source, cfg, sample_tokens: Sequence[str], drop: Iterable[str] = (),
                  batch_size: int = 1, load_images: Optional[bool] = None,
                  rank: Optional[int] = None, world_size: Optional[int] = None,
                  strict: bool = False, data_path: str = "loader", workers: int = 0,
                  cache_dir: Optional[str] = None, split: Optional[str] = None) -> Optional[InferenceOutput]:
    """Run ``detector`` on the frame of every sample (this rank's shard of them).

    source: NuScenesSource; cfg: Config (its sync and data sections build the frames)
    drop: channels or 'lidar' / 'camera' / 'radar' removed at inference
    load_images: decode camera images (default: ``detector.needs_images``, else ``cfg.sync.load_images``)
    rank, world_size: default from torch.distributed when initialized, else 0 and 1
    strict: an unreadable sensor file raises SensorFileError (else: that sensor absent, recorded)
    data_path: "loader" (``run_inference_cases``: DataLoader over the plans, ``workers`` processes,
        the split's cached index under ``cache_dir``) or "frames" (the reference: frame by frame in
        this process, ``run_inference_frames``); both give the same detections
    Returns everything on rank 0 (gathered), ``None`` on other ranks of a distributed run.
    """
    if data_path == "frames":
        return run_inference_frames(detector, source, cfg, sample_tokens, drop, batch_size, load_images, rank,
                                    world_size, strict)
    out = run_inference_cases(detector, source, cfg, sample_tokens, [list(drop)], batch_size, load_images, rank,
                              world_size, strict, workers=workers, cache_dir=cache_dir, split=split)
    return None if out is None else out[0]


def _gather(local, rank: int, world_size: int, dist_world: int):
    """Rank 0: every rank's value (a list, rank order); other ranks None; without a group [local]."""
    if world_size > 1 and dist_world > 1:
        import torch.distributed as dist

        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        return gathered if rank == 0 else None
    return [local]


def run_inference_cases(detector, source, cfg, sample_tokens: Sequence[str], drops: Sequence[Sequence[str]],
                        batch_size: int = 1, load_images: Optional[bool] = None, rank: Optional[int] = None,
                        world_size: Optional[int] = None, strict: bool = False, workers: int = 0,
                        cache_dir: Optional[str] = None, split: Optional[str] = None,
                        plans: Optional[Sequence] = None) -> Optional[List[InferenceOutput]]:
    """``run_inference`` for several sensor cases in one pass over the data (``perception.eval.data``):
    each frame is read once and masked in memory for each case of ``drops`` (per case the channels or
    modalities removed). Detections of each case are those ``run_inference_frames`` gives with that
    drop, batch for batch (the same ``batch_size`` consecutive samples of the rank's shard).

    workers: DataLoader worker processes (0: in this process)
    cache_dir: where the split's index is cached (``build_index``; ground truth and velocities planned
        once); None plans this rank's samples here. split: the split of ``sample_tokens`` (for the cache)
    plans: the plans of ``sample_tokens`` when already at hand (benchmarks); else ``eval_plans``
    Returns one InferenceOutput per case on rank 0 (gathered), None on the other ranks.
    """
    import torch

    from ..data.io import SensorFileError
    from . import data as evdata

    detector = as_detector(detector)
    dist_rank, dist_world = dist_rank_world()
    rank = dist_rank if rank is None else rank
    world_size = dist_world if world_size is None else world_size
    if load_images is None:
        load_images = getattr(detector, "needs_images", None)
    if load_images is None:
        load_images = cfg.sync.load_images
    drops = [list(d) for d in drops]
    mine = shard(list(sample_tokens), rank, world_size)
    if plans is None:
        plans = evdata.eval_plans(source, cfg, split, mine, cache_dir)
    if len(plans) != len(mine):
        raise EvalError(f"{len(plans)} plans for the {len(mine)} samples of this rank")
    samples = hasattr(detector, "predict_samples")
    dataset = evdata.EvalDataset(plans, cfg, drops, bool(load_images), samples=samples, strict=strict)
    loader = evdata.make_loader(dataset, workers)
    outs = [InferenceOutput(problems=FileProblems(strict=strict)) for _ in drops]
    depth = [None] * len(drops)
    pending: List[list] = [[] for _ in drops]
    measures_depth = hasattr(detector, "reset_depth_stats")

    def flush(c: int) -> None:
        batch = pending[c]
        if not batch:
            return
        if measures_depth:  # the detector accumulates into its depth_stats: one record per case
            detector.depth_stats = depth[c]
        with torch.no_grad():
            if samples:
                inputs = []
                for item, case in batch:
                    case.sample.images = evdata.case_images(item, case.sample)
                    inputs.append(case.sample)
                dets = detector.predict_samples(inputs)
            else:
                dets = detector.predict([case.frame for _, case in batch])
        if measures_depth:
            depth[c] = detector.depth_stats
        if len(dets) != len(batch):
            raise EvalError(f"detector returned {len(dets)} detections for a batch of {len(batch)} frames")
        local = outs[c]
        for (item, case), det in zip(batch, dets):
            if det.sample_token and det.sample_token != item.sample_token:
                raise EvalError(f"detector returned detections of sample {det.sample_token} for the frame of "
                                f"sample {item.sample_token}")
            local.detections[item.sample_token] = Detections(item.sample_token, item.timestamp, det.boxes)
            local.T_global_from_ego[item.sample_token] = item.T_global_from_ego
            for m in MODALITIES:
                local.present[m] = local.present[m] or case.present[m]
        batch.clear()

    if measures_depth:
        detector.reset_depth_stats()
    gt_z = GtZRange(cfg.grid.point_cloud_range)
    for item in evdata.iterate(loader):
        if item.error is not None:
            raise SensorFileError(item.error)
        gt_z.add(item.gt)
        for c, case in enumerate(item.cases):
            # the run's record logs the first unreadable file of each channel (workers' records are quiet)
            for ch, n in case.problems.items():
                if n and not outs[c].problems[ch] and c == 0:
                    log.warning("%s (further %s problems are counted and listed in the run's summary)",
                                case.problems.examples[ch][0][1], ch)
            outs[c].problems.merge(case.problems)
            pending[c].append((item, case))
            if len(pending[c]) >= batch_size:
                flush(c)
    for c in range(len(drops)):
        flush(c)
    key = tuple(gt_z.range)
    if gt_z.outside and key not in _WARNED_Z_RANGE:
        _WARNED_Z_RANGE.add(key)
        gt_z.warn("ground-truth boxes evaluated" + (f" by rank {rank}" if world_size > 1 else ""), log)
    for c in range(len(drops)):
        outs[c].depth = depth[c] if measures_depth else getattr(detector, "depth_stats", None)

    gathered = _gather(outs, rank, world_size, dist_world)
    if gathered is None:
        return None
    if len(gathered) == 1:
        return gathered[0]
    merged = [InferenceOutput() for _ in drops]
    for part in gathered:
        for c in range(len(drops)):
            merged[c].merge(part[c])
    return merged


def run_inference_frames(detector, source, cfg, sample_tokens: Sequence[str], drop: Iterable[str] = (),
                         batch_size: int = 1, load_images: Optional[bool] = None,
                         rank: Optional[int] = None, world_size: Optional[int] = None,
                         strict: bool = False) -> Optional[InferenceOutput]:
    """The reference data path of ``run_inference``: frames planned (devkit), read and prepared one by
    one in this process.

    source: NuScenesSource; cfg: Config (its sync and data sections build the frames)
    drop: channels or 'lidar' / 'camera' / 'radar' removed at inference (``FrameBuilder.build``)
    load_images: decode camera images (default: ``detector.needs_images``, else ``cfg.sync.load_images``)
    rank, world_size: default from torch.distributed when initialized, else 0 and 1
    strict: an unreadable sensor file raises SensorFileError (else: that sensor absent, recorded)
    Returns everything on rank 0 (gathered), ``None`` on other ranks of a distributed run.
    """
    from ..sync.synchronizer import FrameBuilder

    detector = as_detector(detector)
    dist_rank, dist_world = dist_rank_world()
    rank = dist_rank if rank is None else rank
    world_size = dist_world if world_size is None else world_size
    if load_images is None:
        load_images = getattr(detector, "needs_images", None)
    drop = list(drop)

    mine = shard(list(sample_tokens), rank, world_size)
    nusc = source.nusc
    builders: Dict[str, FrameBuilder] = {}
    local = InferenceOutput(problems=FileProblems(strict=strict))
    batch: List[Frame] = []
    if hasattr(detector, "reset_depth_stats"):
        detector.reset_depth_stats()

    def flush() -> None:
        if not batch:
            return
        import torch

        with torch.no_grad():
            dets = detector.predict(list(batch))
        if len(dets) != len(batch):
            raise EvalError(f"detector returned {len(dets)} detections for a batch of {len(batch)} frames")
        for frame, det in zip(batch, dets):
            if det.sample_token and det.sample_token != frame.sample_token:
                raise EvalError(f"detector returned detections of sample {det.sample_token} for the frame of "
                                f"sample {frame.sample_token}")
            local.detections[frame.sample_token] = Detections(frame.sample_token, frame.timestamp, det.boxes)
            local.T_global_from_ego[frame.sample_token] = frame.T_global_from_ego
            for m in MODALITIES:
                local.present[m] = local.present[m] or frame.present(m)
        batch.clear()

    gt_z = GtZRange(cfg.grid.point_cloud_range)
    for token in mine:
        scene_token = nusc.get("sample", token)["scene_token"]
        if scene_token not in builders:
            builders[scene_token] = FrameBuilder(source, scene_token, cfg, problems=local.problems)
        fb = builders[scene_token]
        batch.append(fb.build(fb.reference_for_sample(token), drop=drop, with_gt=True, load_images=load_images))
        gt_z.add(batch[-1].gt)
        if len(batch) >= batch_size:
            flush()
    flush()
    # A grid that cuts the evaluated objects: once per process and range (robustness runs repeat this)
    key = tuple(gt_z.range)
    if gt_z.outside and key not in _WARNED_Z_RANGE:
        _WARNED_Z_RANGE.add(key)
        gt_z.warn("ground-truth boxes evaluated" + (f" by rank {rank}" if world_size > 1 else ""), log)
    local.depth = getattr(detector, "depth_stats", None)

    if world_size > 1 and (dist_world > 1):
        import torch.distributed as dist

        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
        if rank != 0:
            return None
        out = InferenceOutput()
        for part in gathered:
            out.merge(part)
        return out
    return local


def submission_meta(detector, present: Dict[str, bool]) -> Dict[str, bool]:
    """Meta flags: a modality counts as used when the detector reads it and some frame had it."""
    reads = getattr(detector, "modalities", MODALITIES)
    reads = set(reads() if callable(reads) else reads)
    return export.make_meta(use_camera="camera" in reads and present["camera"],
                            use_lidar="lidar" in reads and present["lidar"],
                            use_radar="radar" in reads and present["radar"],
                            use_map=bool(getattr(detector, "uses_map", False)),
                            use_external=bool(getattr(detector, "uses_ground_truth", False)
                                              or getattr(detector, "uses_external", False)))


# ---------------------------------------------------------------------------------------------
# Devkit evaluation
# ---------------------------------------------------------------------------------------------
def check_results_file(path: str, sample_tokens: Sequence[str], split: str) -> dict:
    """Load a submission and check it against the split's samples before the devkit sees it
    (the devkit's own check is a bare assertion): every sample of the split and no other, at most
    500 boxes each, every box well-formed (``export.result_box_problem``). Returns the parsed document."""
    if not os.path.isfile(path):
        raise EvalError(f"{path}: results file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise EvalError(f"{path}: no 'results' mapping (sample token -> boxes); not a nuScenes detection submission")
    if not isinstance(data.get("meta"), dict):
        raise EvalError(f"{path}: no 'meta' block (use_camera, use_lidar, use_radar, use_map, use_external)")
    have = set(data["results"])
    want = list(sample_tokens)
    missing = [t for t in want if t not in have]
    if missing:
        raise EvalError(f"{path}: results miss {len(missing)} of the {len(want)} samples of split {split!r} in this "
                        f"data root (first missing: {missing[0]}); every sample needs an entry, [] if nothing was "
                        f"detected")
    extra = sorted(have - set(want))
    if extra:
        raise EvalError(f"{path}: results hold {len(extra)} samples that are not samples of split {split!r} in this "
                        f"data root (first: {extra[0]})")
    for token, boxes in data["results"].items():
        if not isinstance(boxes, list):
            raise EvalError(f"{path}: sample {token}: results must be a list of boxes, got {type(boxes).__name__}")
        if len(boxes) > export.MAX_BOXES_PER_SAMPLE:
            raise EvalError(f"{path}: sample {token} has {len(boxes)} boxes; at most "
                            f"{export.MAX_BOXES_PER_SAMPLE} are allowed")
        # Box by box, before the devkit: it ignores a NaN velocity and scores a negative size
        # without a word, and its own assertions name neither the sample nor the box.
        for i, box in enumerate(boxes):
            problem = export.result_box_problem(box, token)
            if problem:
                raise EvalError(f"{path}: sample {token} box {i}: {problem}")
    return data


def _headless_matplotlib() -> None:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import matplotlib

        matplotlib.use("Agg")


def evaluate_results(nusc, results_path: str, split: str, out_dir: str, render_curves: bool = True,
                     verbose: bool = False) -> dict:
    """Run the devkit's ``DetectionEval`` (``detection_cvpr_2019``) on a submission file.

    Writes ``metrics_summary.json``, ``metrics_details.json`` and (``render_curves``) the devkit's PR and
    TP-error plots under ``out_dir/plots`` exactly as the devkit does; returns the summary dict.
    """
    tokens = split_sample_tokens(nusc, split)
    check_results_file(results_path, tokens, split)
    if render_curves:
        _headless_matplotlib()
    import contextlib
    import io

    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    import nuscenes.eval.detection.evaluate as devkit_evaluate

    os.makedirs(out_dir, exist_ok=True)
    devkit_filter = devkit_evaluate.filter_eval_boxes

    def filter_eval_boxes(nusc_, eval_boxes, max_dist, verbose=False):
        # The devkit's filter reads the class field from the first box it finds and raises on a
        # submission without any box (a detector that sees nothing with the LiDAR gone). Filtering
        # nothing gives nothing; every other call is the devkit's own.
        if not any(len(b) for b in eval_boxes.boxes.values()):
            return eval_boxes
        return devkit_filter(nusc_, eval_boxes, max_dist, verbose=verbose)

    try:
        devkit_evaluate.filter_eval_boxes = filter_eval_boxes
        ev = DetectionEval(nusc, config=config_factory(DETECTION_CONFIG), result_path=results_path,
                           eval_set=split, output_dir=out_dir, verbose=verbose)
        # main() prints its summary unconditionally; the report carries it instead.
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            summary = ev.main(plot_examples=0, render_curves=render_curves)
    except AssertionError as e:
        raise EvalError(f"{results_path}: the devkit rejected the results: {e}") from None
    finally:
        devkit_evaluate.filter_eval_boxes = devkit_filter
    return summary


@dataclass
class EvalRun:
    """One evaluation: where its files are and the devkit's summary."""

    out_dir: str
    results_path: str
    summary: dict
    drop: List[str]
    meta: Dict[str, bool]
    problems: Optional[FileProblems] = None
    depth: Optional[dict] = None  # DepthStats.summary() of the camera depth, None when not measured


def evaluate_detector(detector, source, cfg, split: str, out_dir: str, drop: Iterable[str] = (),
                      batch_size: int = 1, render_curves: bool = True,
                      load_images: Optional[bool] = None, strict: bool = False, data_path: str = "loader",
                      workers: int = 0, cache_dir: Optional[str] = None) -> Optional[EvalRun]:
    """Inference over the split, export to ``out_dir/results_nusc.json`` and devkit evaluation.

    data_path, workers, cache_dir: see ``run_inference``.
    Returns the run on rank 0, ``None`` on the other ranks of a distributed run.
    """
    runs = evaluate_cases(detector, source, cfg, split, [(out_dir, list(drop), render_curves)], batch_size=batch_size,
                          load_images=load_images, strict=strict, data_path=data_path, workers=workers,
                          cache_dir=cache_dir)
    return None if runs is None else runs[0]


def evaluate_cases(detector, source, cfg, split: str, cases: Sequence[Tuple[str, List[str], bool]],
                   batch_size: int = 1, load_images: Optional[bool] = None, strict: bool = False,
                   data_path: str = "loader", workers: int = 0,
                   cache_dir: Optional[str] = None) -> Optional[List[EvalRun]]:
    """``evaluate_detector`` for several sensor cases, (out_dir, drop, render_curves) each. With the
    loader every frame is read once for all of them (``run_inference_cases``); "frames" runs the
    reference path case after case. Returns the runs on rank 0, None on the other ranks."""
    if data_path not in DATA_PATHS:
        raise EvalError(f"unknown data path {data_path!r} (valid: {', '.join(DATA_PATHS)})")
    detector = as_detector(detector)
    tokens = split_sample_tokens(source.nusc, split)
    drops = [list(drop) for _, drop, _ in cases]
    if data_path == "frames":
        infs = [run_inference_frames(detector, source, cfg, tokens, drop=d, batch_size=batch_size,
                                     load_images=load_images, strict=strict) for d in drops]
        if any(i is None for i in infs):
            return None
    else:
        infs = run_inference_cases(detector, source, cfg, tokens, drops, batch_size=batch_size,
                                   load_images=load_images, strict=strict, workers=workers, cache_dir=cache_dir,
                                   split=split)
        if infs is None:
            return None
    runs = []
    for (out_dir, drop, render_curves), inf in zip(cases, infs):
        meta = submission_meta(detector, inf.present)
        path = export.write_results(os.path.join(out_dir, RESULTS_FILE), inf.detections, inf.T_global_from_ego,
                                    meta, sample_tokens=tokens)
        summary = evaluate_results(source.nusc, path, split, out_dir, render_curves=render_curves)
        depth = inf.depth.summary(cfg.data.cameras) if inf.depth is not None else None
        if depth is not None:
            export.write_json_atomic(depth, os.path.join(out_dir, DEPTH_FILE), indent=1)
        runs.append(EvalRun(out_dir, path, summary, list(drop), meta, inf.problems, depth))
    return runs


# ---------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------
def failure_cases() -> "OrderedDict[str, List[str]]":
    """Sensor failures evaluated by ``run_robustness``: case name -> what ``FrameBuilder`` drops.
    Each camera, each radar, all cameras, all radars, the LiDAR."""
    cases: "OrderedDict[str, List[str]]" = OrderedDict()
    for ch in CAMERA_CHANNELS:
        cases[ch] = [ch]
    for ch in RADAR_CHANNELS:
        cases[ch] = [ch]
    cases["all cameras"] = ["camera"]
    cases["all radars"] = ["radar"]
    cases["lidar"] = ["lidar"]
    return cases


def _case_dir(name: str) -> str:
    return name.replace(" ", "_").lower()


def robustness_rows(baseline: dict, per_case: Dict[str, Tuple[List[str], dict]]) -> List[dict]:
    """Table rows: mAP and NDS per failure and their ratios to the all-sensors run (None where the
    all-sensors value is 0)."""
    base_map, base_nds = baseline["mean_ap"], baseline["nd_score"]
    rows = [{"case": "all sensors", "drop": [], "mAP": base_map, "NDS": base_nds,
             "mAP_rel": 1.0 if base_map > 0 else None, "NDS_rel": 1.0 if base_nds > 0 else None}]
    for name, (drop, s) in per_case.items():
        rows.append({"case": name, "drop": list(drop), "mAP": s["mean_ap"], "NDS": s["nd_score"],
                     "mAP_rel": s["mean_ap"] / base_map if base_map > 0 else None,
                     "NDS_rel": s["nd_score"] / base_nds if base_nds > 0 else None})
    return rows


def run_robustness(detector, source, cfg, split: str, out_dir: str, baseline: Optional[dict] = None,
                   cases: Optional[Dict[str, List[str]]] = None, batch_size: int = 1,
                   load_images: Optional[bool] = None, run_baseline: Optional[bool] = None,
                   data_path: str = "loader", workers: int = 0, cache_dir: Optional[str] = None,
                   main: Optional[Tuple[str, List[str], bool]] = None, strict: bool = False):
    """Evaluate the detector with each sensor failure of ``cases`` (default ``failure_cases()``).

    Each case writes its results and the devkit's metrics under ``out_dir/robustness/<case>/`` (no
    plots). ``baseline``: the all-sensors summary when already computed, else it is run too
    (``run_baseline``, default: when ``baseline`` is None; in a distributed run every rank must pass the
    same ``run_baseline``, since only rank 0 holds a summary).
    main: (out_dir, drop, render_curves) of the main evaluation, run in the same pass and used as the
    baseline (tools/eval.py); then the return value is (main EvalRun, rows).
    With the loader (``data_path``) every frame is read once for all cases and masked in memory.
    Returns the table rows (``robustness_rows``) on rank 0, None elsewhere; also written to
    ``out_dir/robustness.json``.
    """
    cases = failure_cases() if cases is None else cases
    if run_baseline is None:
        run_baseline = baseline is None and main is None
    todo: List[Tuple[str, List[str], bool]] = []
    if main is not None:
        todo.append((main[0], list(main[1]), main[2]))
    if run_baseline:
        todo.append((os.path.join(out_dir, "robustness", "all_sensors"), [], False))
    for name, drop in cases.items():
        todo.append((os.path.join(out_dir, "robustness", _case_dir(name)), list(drop), False))
    runs = evaluate_cases(detector, source, cfg, split, todo, batch_size=batch_size, load_images=load_images,
                          strict=strict, data_path=data_path, workers=workers, cache_dir=cache_dir)
    if runs is None:  # not rank 0
        return None
    first = 0
    main_run = None
    if main is not None:
        main_run, first = runs[0], 1
        baseline = main_run.summary if baseline is None else baseline
    if run_baseline:
        baseline = runs[first].summary
        first += 1
    per_case: Dict[str, Tuple[List[str], dict]] = {}
    for (name, drop), run in zip(cases.items(), runs[first:]):
        per_case[name] = (drop, run.summary)
        log.info("robustness %s: mAP %.4f NDS %.4f", name, run.summary["mean_ap"], run.summary["nd_score"])
    rows = robustness_rows(baseline, per_case)
    export.write_json_atomic(rows, os.path.join(out_dir, "robustness.json"), indent=1)
    return (main_run, rows) if main is not None else rows


# ---------------------------------------------------------------------------------------------
# Checkpoints and the model
# ---------------------------------------------------------------------------------------------
def _state_dict_of(obj) -> Dict:
    """The parameter mapping inside a checkpoint: the object itself, or its 'model' / 'state_dict' entry;
    a 'module.' prefix on every key (saved from DistributedDataParallel) is removed."""
    import torch

    sd = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint holds no state dict (a mapping of parameter names to tensors, "
                              "at the top level or under 'model' / 'state_dict')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def describe_state_dict_mismatch(model, state_dict) -> Optional[str]:
    """The first way ``state_dict`` does not fit ``model``, in one phrase, or None when it fits.

    Checked in the model's order first (a parameter or buffer missing from ``state_dict``, or there
    with another shape: both shapes are named), then in ``state_dict``'s order (a key the model does
    not have). The phrase starts with the key ("parameter 'head.0.weight' has shape ..."), so a
    caller prefixes the checkpoint path: ``f"{path}: checkpoint does not fit the model: {why}"``.
    A 'module.' prefix is not removed here (``load_checkpoint_into`` does that when reading a file).
    """
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state_dict:
            return f"parameter {name!r} {tuple(tensor.shape)} is missing from the checkpoint"
        theirs = state_dict[name]
        if not hasattr(theirs, "shape"):
            return f"parameter {name!r} is a {type(theirs).__name__} in the checkpoint, not a tensor"
        if tuple(theirs.shape) != tuple(tensor.shape):
            return (f"parameter {name!r} has shape {tuple(theirs.shape)} in the checkpoint, "
                    f"{tuple(tensor.shape)} in the model")
    for name, value in state_dict.items():
        if name not in own:
            shape = f" {tuple(value.shape)}" if hasattr(value, "shape") else ""
            return f"parameter {name!r}{shape} is not in the model"
    return None


def load_checkpoint_into(model, path: str) -> dict:
    """Load a checkpoint file into ``model`` after checking that it fits.

    Every parameter and buffer of the model must be in the checkpoint with the same shape and the
    checkpoint may hold nothing else; otherwise ``CheckpointError`` names the path and the first
    mismatched parameter (``describe_state_dict_mismatch``). A file that does not load (truncated,
    not a torch checkpoint) is a ``CheckpointError`` naming the path too. Returns the loaded object.
    """
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found"
                              + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many classes
        raise CheckpointError(f"{path}: cannot read the checkpoint, truncated or not a torch checkpoint "
                              f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        sd = _state_dict_of(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    why = describe_state_dict_mismatch(model, sd)
    if why is not None:
        raise CheckpointError(f"{path}: checkpoint does not fit the model: {why}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # what the checks above do not cover (a value torch cannot copy in)
        raise CheckpointError(f"{path}: checkpoint does not fit the model: {str(e).splitlines()[0]}") from None
    return obj


class ModelDetector:
    """A model as a detector: frames -> ``perception.data.batch`` samples -> collated ``Batch`` ->
    ``model.predict(batch) -> list[Detections]`` (ego frame), on the model's device."""

    def __init__(self, model, cfg):
        import torch

        self.model, self.cfg = model, cfg
        self.modalities = tuple(getattr(model, "modalities", MODALITIES))
        self.needs_images = "camera" in self.modalities
        # camera depth against the LiDAR targets, accumulated over one run_inference
        self.measures_depth = self.needs_images and hasattr(model, "predict_with_depth")
        self.depth_stats = None
        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")

    def predict(self, frames: Sequence[Frame]) -> List[Detections]:
        from ..data.batch import frame_to_sample

        return self.predict_samples([frame_to_sample(f, self.cfg) for f in frames])

    def predict_samples(self, samples: Sequence) -> List[Detections]:
        """``predict`` from the frames' Samples (``frame_to_sample``, made in the loader workers)."""
        from ..data.batch import collate

        batch = collate(list(samples))
        if hasattr(batch, "to"):
            batch = batch.to(self.device)
        if not self.measures_depth or getattr(batch, "depth_targets", None) is None:
            return list(self.model.predict(batch))
        from ..models.camera.depth import DepthStats

        dets, depth = self.model.predict_with_depth(batch)
        if self.depth_stats is None:
            self.depth_stats = DepthStats()
        self.depth_stats.add(depth, batch.depth_targets, self.model.camera.depth_bins)
        return list(dets)

    def reset_depth_stats(self) -> None:
        self.depth_stats = None


def build_detector(cfg, checkpoint: str) -> ModelDetector:
    """The model of ``cfg`` with ``checkpoint`` loaded, in eval mode, on the GPU of this rank when
    there is one, as a detector.

    Needs ``perception.models.build.build_model(cfg) -> torch.nn.Module`` with
    ``predict(batch) -> list[Detections]`` (ego frame) and ``perception.data.batch`` (``frame_to_sample``,
    ``collate``) to turn frames into its input.
    """
    try:
        from ..models.build import build_model
    except ImportError as e:
        name = str(getattr(e, "name", "") or "")
        if name and not name.startswith("perception.models"):
            raise  # a real import error inside the models package
        raise EvalError("no model available: perception.models.build.build_model is not in this tree yet "
                        "(evaluate a results file with --results, or the pipeline with --oracle)") from None
    import torch

    model = build_model(cfg)
    load_checkpoint_into(model, checkpoint)
    if torch.cuda.is_available():
        model = model.to(torch.device("cuda", torch.cuda.current_device()))
    model.eval()
    if not hasattr(model, "predict"):
        raise EvalError(f"{type(model).__name__} has no predict(batch) -> list[Detections]")
    return ModelDetector(model, cfg)
