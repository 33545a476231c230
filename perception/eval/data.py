"""The evaluation data path: a DataLoader with workers over the cached index, as training has.

Before (``data_path="frames"``, kept as the reference): the main process planned each frame through
the devkit (synchronization, calibration, ground truth and its velocities), read and decoded its
files and warped its images, one frame after another, while the model waited; ``--robustness``
did all of that again for each of its 15 sensor failures.

Now (``data_path="loader"``):

- the plans come from ``perception.engine.dataset.build_index`` with a cache folder (the same
  cached index training uses, ground truth and velocities computed once, when it is built), taken
  in the order of the split's sample tokens and sharded across ranks as before;
- ``EvalDataset`` workers assemble each frame (read, decode, motion compensation) and, for a model
  (a detector with ``predict_samples``), turn it into the model's ``Sample`` (image warp, depth
  targets); the main process only collates and predicts;
- several sensor cases (the robustness table) share one read: the frame is assembled once with the
  channels every case drops, and ``mask_frame`` makes each case's frame in memory, equal to
  dropping at read time. A model's images travel once per sample (``EvalItem.images``) and the
  main process zeroes the cameras a case drops.

Results are the same as the reference path's, batch for batch (tests/test_eval_loader.py).
"""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.problems import FileProblems
from ..structures import Frame

log = logging.getLogger(__name__)

MODALITIES = ("lidar", "camera", "radar")


class _QuietProblems(FileProblems):
    """A worker's per-sample record: the run's FileProblems logs the first of each channel when it
    merges (a per-sample record would log the first of every sample)."""

    def add(self, channel: str, path: str, reason: str, log_first: bool = True) -> None:
        super().add(channel, path, reason, log_first=False)


def channel_dropped(channel: str, drop: Sequence[str]) -> bool:
    from ..structures import modality_of

    return channel in drop or modality_of(channel) in drop


def problems_without(problems: FileProblems, drop: Sequence[str]) -> FileProblems:
    """The record without the channels ``drop`` removes (what reading with that drop records)."""
    out = FileProblems(strict=problems.strict, keep=problems.keep)
    for ch, n in problems.items():
        if n and not channel_dropped(ch, drop):
            out[ch] = n
            out.examples[ch] = list(problems.examples.get(ch, []))
    return out


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------
class PlanSubset(Sequence):
    """Plans ``plans[i] for i in indices`` without copying the store (workers index it)."""

    def __init__(self, plans: Sequence, indices: Sequence[int]):
        self.plans, self.indices = plans, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.plans[int(self.indices[i])]


def _devkit_split(source, split: str) -> bool:
    from nuscenes.utils.splits import create_splits_scenes

    from .evaluate import _custom_splits

    return split in create_splits_scenes() and split not in _custom_splits(source.dataroot, source.version)


def eval_plans(source, cfg, split: Optional[str], tokens: Sequence[str], cache_dir: Optional[str] = None) -> Sequence:
    """The FramePlan (ground truth included) of every sample token, in ``tokens``' order.

    cache_dir: with a devkit split, the split's cached index (``build_index``: built once, read by every
    later run and every rank); otherwise (no cache folder, a custom split) the plans of ``tokens``
    only, built here. An index built from a source with other radar filters than ``source`` is not
    used (the plans record them)."""
    if cache_dir and split is not None and _devkit_split(source, split):
        from ..engine.dataset import DataError, build_index

        try:
            plans = build_index(source.dataroot, source.version, split, cfg, cache_dir, source=source)
        except DataError as e:
            log.warning("evaluation index: %s; planning the frames without the cache", e)
            plans = None
        if plans is not None and len(plans) and (
                getattr(plans[0], "radar_default_filters", None) == source.radar_default_filters):
            where = {}
            for i in range(len(plans)):
                where[plans[i].sample_token] = i
            if all(t in where for t in tokens):
                return PlanSubset(plans, [where[t] for t in tokens])
            log.warning("evaluation index %s lacks samples of split %s; planning the frames without it",
                        cache_dir, split)
    from ..sync.synchronizer import FrameBuilder

    nusc = source.nusc
    builders: Dict[str, FrameBuilder] = {}
    plans = []
    for token in tokens:
        scene_token = nusc.get("sample", token)["scene_token"]
        if scene_token not in builders:
            builders[scene_token] = FrameBuilder(source, scene_token, cfg)
        fb = builders[scene_token]
        plans.append(fb.plan(fb.reference_for_sample(token), with_gt=True))
    return plans


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class CaseItem:
    """One sample under one sensor case: a Frame (frame detectors) or a Sample with ``images`` None
    (model detectors: the images are the item's, masked by ``camera_mask`` in the main process)."""

    present: Dict[str, bool]
    problems: FileProblems
    frame: Optional[Frame] = None
    sample: Optional[object] = None


@dataclass
class EvalItem:
    """What a worker sends for one sample: its identity, pose, ground truth and one CaseItem per case.

    images: float32[N, 3, H, W] the network images of the cameras read (for model detectors), shared
        by the cases; error: the strict mode's SensorFileError message, raised in the main process
    """

    index: int
    sample_token: str
    timestamp: int
    T_global_from_ego: Optional[np.ndarray]
    gt: Optional[object]
    cases: List[CaseItem] = field(default_factory=list)
    images: Optional[torch.Tensor] = None
    camera_mask: Optional[torch.Tensor] = None
    error: Optional[str] = None
    # (logger name, level, message) of the warnings logged while a worker read the sample (e.g. NaN
    # points dropped): a worker's log records stay in its process, so the main process logs these
    logs: List[tuple] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: List[tuple] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


class EvalDataset(torch.utils.data.Dataset):
    """Items of plans for a list of sensor cases (``drops``: per case the channels or modalities
    removed), each frame read once.

    samples: turn frames into the model's Samples (``frame_to_sample``) in the worker; else frames
    strict: an unreadable file makes the item carry the error (raised by the main process)
    """

    def __init__(self, plans: Sequence, cfg, drops: Sequence[Sequence[str]], load_images: bool,
                 samples: bool = False, strict: bool = False):
        self.plans, self.cfg = plans, cfg
        self.drops = [list(d) for d in drops]
        if not self.drops:
            raise ValueError("EvalDataset needs at least one case")
        # read-time drop: what every case drops; the rest is masked in memory per case
        common = set(self.drops[0])
        for d in self.drops[1:]:
            common &= set(d)
        self.common = sorted(common)
        self.extra = [[x for x in d if x not in common] for d in self.drops]
        self.load_images, self.samples, self.strict = load_images, samples, strict

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> EvalItem:
        if torch.utils.data.get_worker_info() is None:  # the main process logs for itself
            return self._item(i)
        # In a loader worker, the project's warnings are collected (not printed there) and sent with
        # the item; ``iterate`` logs them in the main process, in sample order, like the frames path.
        logger, handler = logging.getLogger("perception"), _Collect()
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            item = self._item(i)
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
        item.logs = handler.records
        return item

    def _item(self, i: int) -> EvalItem:
        from ..data.batch import frame_to_sample
        from ..data.io import SensorFileError
        from ..sync.synchronizer import assemble_frame, mask_frame

        plan = self.plans[i]
        item = EvalItem(i, plan.sample_token, plan.timestamp, plan.T_global_from_ego, plan.gt)
        problems = _QuietProblems(strict=self.strict)
        rows: Dict[str, int] = {}
        try:
            frame = assemble_frame(plan, self.common, self.load_images, problems, radar_rows=rows)
        except SensorFileError as e:  # strict: the main process raises it (exception types need not pickle)
            item.error = str(e)
            return item
        base = FileProblems()
        base.merge(problems)
        cache: dict = {}
        tensors: Dict[tuple, torch.Tensor] = {}  # one tensor per points array: sent once, shared by the cases

        def shared(t: torch.Tensor) -> torch.Tensor:
            # the cases' frames share their unmasked points arrays (alive in ``variants``)
            return tensors.setdefault((t.data_ptr(), tuple(t.shape), t.dtype), t)

        variants = []
        for extra in self.extra:
            f = mask_frame(frame, plan, extra, rows)
            variants.append(f)  # kept alive: as_tensor's keys are ids of their arrays
            case = CaseItem({m: f.present(m) for m in MODALITIES}, problems_without(base, extra) if extra else base)
            if self.samples:
                s = frame_to_sample(f, self.cfg, cache=cache)
                s.lidar_points, s.radar_points = shared(s.lidar_points), shared(s.radar_points)
                # the shared images: every camera some case has (a camera's rows are the same in every
                # case that has it; frame_to_sample leaves the others zero)
                if item.images is None:
                    item.images, item.camera_mask = s.images, s.camera_mask.clone()
                else:
                    new = s.camera_mask & ~item.camera_mask
                    if bool(new.any()):
                        item.images[new] = s.images[new]
                        item.camera_mask |= new
                s.images = None
                case.sample = s
            else:
                case.frame = f
            item.cases.append(case)
        return item


def case_images(item: EvalItem, sample) -> torch.Tensor:
    """The case's images: the item's, with the cameras the case lacks zeroed (as frame_to_sample
    leaves an absent camera), copied only when the case lacks one."""
    if torch.equal(sample.camera_mask, item.camera_mask):
        return item.images
    out = item.images.clone()
    out[~sample.camera_mask] = 0
    return out


def _single(items):
    return items[0]


def make_loader(dataset: EvalDataset, workers: int) -> torch.utils.data.DataLoader:
    """Items in order, ``workers`` processes (0: in this process), one intra-op thread each."""
    from ..engine.dataset import worker_init

    kw = dict(num_workers=workers, batch_size=1, shuffle=False, collate_fn=_single)
    if workers > 0:
        kw.update(worker_init_fn=worker_init, prefetch_factor=4)
    return torch.utils.data.DataLoader(dataset, **kw)


def iterate(loader: torch.utils.data.DataLoader):
    """The loader's items; workers forked with the parent's objects frozen out of the collector (the
    devkit's tables are then not copied page by page into each worker by its garbage collector), and
    stopped on every exit path."""
    from ..engine.dataset import shutdown_loader

    frozen = loader.num_workers > 0 and hasattr(gc, "freeze")
    if frozen:
        gc.freeze()
    try:
        it = iter(loader)
    finally:
        if frozen:
            gc.unfreeze()
    try:
        for item in it:
            for name, level, message in item.logs:  # what the worker logged reading it
                logging.getLogger(name).log(level, "%s", message)
            yield item
    finally:
        shutdown_loader(loader)


def default_workers() -> int:
    """Loader workers when not asked: 2, or fewer on a machine with fewer cores."""
    return max(0, min(2, (os.cpu_count() or 1)))
