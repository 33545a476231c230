"""Training data: the cached per-sample index, the Dataset, the resumable distributed sampler and
collation.

Index: one ``FramePlan`` per annotated keyframe of the split's scenes (``FrameBuilder.plan``: which
sweep files, their sensor -> reference-ego transforms, calibration, pose, ground truth). Building it
needs the devkit once; the plans are streamed into ``<cache_dir>/index_<split>_<key>.plans``, a
``PlanStore`` file (perception.engine.plan_store: each plan serialized into one blob, int64
offsets), where the key hashes the absolute root, the version, the split, the config's
``grid``/``sync``/``data`` sections and the size and mtime of ``sample_data.json``: a changed root or
config builds a new index, nothing else ever does. ``build_index`` returns the ``PlanStore``, a
Sequence of FramePlans decoded on access: the whole index is a few Python objects, so loader workers
forked from the trainer share it without copying (a list of 28k plans was ~2.4 GB of small objects
per process, copied into every worker page by page by reference counting, pytorch#13246). Loader
workers only call ``assemble_frame(plan)`` (no devkit, no tables in the workers' memory).

Splits: ``nuscenes.utils.splits.create_splits_scenes()``; the samples are the scenes of the split
that the root holds (the shared real root has two val scenes; synthetic roots use official names).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import Config
from ..fileio import atomic_write
from ..data.batch import Sample, collate, frame_to_sample
from ..data.problems import FileProblems
from ..ops.center_targets import center_target_builder
from ..structures import Batch
from .augment import augment_frame, sample_rng
from .plan_store import PlanStore, write_store

log = logging.getLogger(__name__)

INDEX_FORMAT = 2  # bump when FramePlan's layout changes: old caches are then rebuilt (2: PlanStore files)


class DataError(RuntimeError):
    """The data root, version or split cannot be used; the message says why in one line."""


# ---------------------------------------------------------------------------------------------
# The per-sample index
# ---------------------------------------------------------------------------------------------
def split_scene_names(split: str) -> List[str]:
    """Scene names of a devkit split ('train', 'val', 'mini_train', ...)."""
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    if split not in splits:
        raise DataError(f"unknown split {split!r} (devkit splits: {', '.join(sorted(splits))})")
    return list(splits[split])


def index_key(dataroot: str, version: str, split: str, cfg: Config) -> str:
    """The cache key of an index (see module doc)."""
    root = os.path.abspath(dataroot)
    table = os.path.join(root, version, "sample_data.json")
    st = os.stat(table) if os.path.isfile(table) else None
    blob = json.dumps({"format": INDEX_FORMAT, "root": root, "version": version, "split": split,
                       "grid": asdict(cfg.grid), "sync": asdict(cfg.sync), "data": asdict(cfg.data),
                       "sample_data": [st.st_size, st.st_mtime_ns] if st else None}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def index_path(dataroot: str, version: str, split: str, cfg: Config, cache_dir: str) -> str:
    """The cache file of an index."""
    return os.path.join(cache_dir, f"index_{split}_{index_key(dataroot, version, split, cfg)}.plans")


def build_index(dataroot: str, version: str, split: str, cfg: Config, cache_dir: Optional[str] = None,
                source=None) -> PlanStore:
    """FramePlans of every keyframe of the split's scenes present in the root, as a ``PlanStore``
    (a Sequence of FramePlans; cached, see module doc).

    cache_dir: None builds without caching (the store then holds its bytes in memory). source: an
    open NuScenesSource to reuse (tests). A cache file that cannot be read is rebuilt with a warning.
    Raises DataError for a bad root, version or split, or a split with no scene in the root.
    """
    if not os.path.isdir(dataroot):
        raise DataError(f"{dataroot}: data root not found")
    path = None
    if cache_dir:
        path = index_path(dataroot, version, split, cfg, cache_dir)
        if os.path.isfile(path):
            try:
                store = PlanStore.open(path)
                if store.meta.get("index_format") == INDEX_FORMAT:
                    log.info("index of %s/%s split %s: %d samples from cache %s", dataroot, version, split,
                             len(store), path)
                    return store
                store.close()
                log.warning("index cache %s has another format; rebuilding", path)
            except Exception as e:  # a damaged cache (StoreError, OSError, ...) is rebuilt, never fatal
                log.warning("index cache %s unreadable (%s); rebuilding", path, e)
    if path and source is None and _table_bytes(dataroot, version) >= SUBPROCESS_BUILD_BYTES:
        # A big root (nuScenes: ~1 GB of sample_data) is indexed in a spawned process: the devkit's
        # tables (GBs) and its imports never enter this process, whose heap forked loader workers
        # inherit (they would count in every worker's RSS).
        import concurrent.futures as cf
        import multiprocessing as mp

        log.info("indexing %s split %s in a separate process (tables of %.0f MB)", dataroot, split,
                 _table_bytes(dataroot, version) / 1e6)
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            ex.submit(_write_index, dataroot, version, split, cfg, path, None, logging.getLogger().level).result()
        store = PlanStore.open(path, verify=False)
        log.info("index of %s/%s split %s: %d samples in %.1f s (tables %.1f s), %.1f MB -> %s", dataroot, version,
                 split, len(store), store.meta["build_s"], store.meta["tables_s"], store.nbytes / 1e6, path)
        return store
    return _write_index(dataroot, version, split, cfg, path, source)


# sample_data.json at least this big: build_index works in a spawned process
SUBPROCESS_BUILD_BYTES = 64 << 20


def _table_bytes(dataroot: str, version: str) -> int:
    table = os.path.join(dataroot, version, "sample_data.json")
    return os.path.getsize(table) if os.path.isfile(table) else 0


def _write_index(dataroot: str, version: str, split: str, cfg: Config, path: Optional[str], source=None,
                 log_level: Optional[int] = None) -> Optional[PlanStore]:
    """Build the index into ``path`` (a PlanStore file, written atomically) or, without a path, into
    memory; returns the store (None when run in a spawned process: ``log_level`` given)."""
    from ..data.nuscenes_source import DataRootError, NuScenesSource
    from ..sync.synchronizer import FrameBuilder

    if log_level is not None and not logging.getLogger().handlers:  # a spawned process: log as the parent
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wanted = split_scene_names(split)  # after the cache: the devkit import costs a second
    start = time.perf_counter()
    try:
        if source is None:
            source = NuScenesSource.from_config(os.path.abspath(dataroot), version, cfg)
    except DataRootError as e:
        raise DataError(str(e)) from None
    present = set(source.scene_names())
    scenes = [s for s in wanted if s in present]
    if not scenes:
        raise DataError(f"{dataroot}: no scene of split {split!r} in this root "
                        f"(scenes here: {', '.join(sorted(present)[:8])}{'...' if len(present) > 8 else ''})")
    tables_s = time.perf_counter() - start

    def plans():  # streamed into the store: the plans are never all in memory at once
        for k, name in enumerate(scenes):
            fb = FrameBuilder(source, name, cfg)
            for ref in fb.keyframe_references:
                yield fb.plan(ref, with_gt=True)
            if (k + 1) % 100 == 0:
                log.info("indexing split %s: %d of %d scenes, %.0f s", split, k + 1, len(scenes),
                         time.perf_counter() - start)

    meta = {"index_format": INDEX_FORMAT, "scenes": scenes, "dataroot": os.path.abspath(dataroot),
            "version": version, "split": split, "tables_s": round(tables_s, 3)}

    def write(f):
        write_store(f, plans(), meta, started=start)

    if path:
        atomic_write(path, write)
        if log_level is not None:
            return None
        store = PlanStore.open(path, verify=False)
    else:
        import io

        buf = io.BytesIO()
        write(buf)
        store = PlanStore.from_bytes(buf.getvalue())
    log.info("index of %s/%s split %s: %d samples from %d scenes in %.1f s (tables %.1f s), %.1f MB%s",
             dataroot, version, split, len(store), len(scenes), store.meta["build_s"], tables_s,
             store.nbytes / 1e6, f" -> {path}" if path else "")
    return store


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
class TrainDataset(torch.utils.data.Dataset):
    """Samples of an index, augmented as a function of (seed, epoch, index), with the head's targets
    built from the augmented ground truth.

    Items are addressed by ``(epoch, index)`` keys (what ``ResumableSampler`` yields), so persistent
    workers need no epoch state and a sample's augmentation is the same in any worker and after a
    resume. A sample that fails to load (an exception beyond the per-file handling of
    ``assemble_frame``, which already marks a sensor with a corrupt or missing file absent) is
    logged and replaced by the next sample of the index, so every batch keeps its size and every
    process of a distributed run keeps stepping together.
    """

    def __init__(self, plans: Sequence, cfg: Config, augment: bool = True, seed: int = 0, max_retries: int = 8,
                 strict: bool = False, targets: bool = True):
        # A PlanStore stays as it is (decoded per sample, shared by forked workers); other sequences
        # are copied into a list as before.
        self.plans = plans if isinstance(plans, PlanStore) else list(plans)
        # The head's targets are built here, in the loader workers, from the augmented ground truth
        # (``sample.targets``); targets=False leaves them to the trainer's main process (the old path,
        # kept for the benchmark's before/after).
        self.target_builder = center_target_builder(cfg) if targets else None
        self.cfg = cfg
        self.augment = augment and cfg.train.augment.enabled
        self.seed = seed
        self.max_retries = max_retries
        m = cfg.model
        # A camera model reads the LiDAR even without a LiDAR encoder: its depth targets come from it
        # (frame_to_sample keeps the points away from the model).
        self.drop = [name for name, used in (("lidar", m.use_lidar or m.use_camera), ("camera", m.use_camera),
                                             ("radar", m.use_radar)) if not used]
        self.load_images = cfg.sync.load_images and m.use_camera
        self.strict = strict  # an unreadable file or a sample that fails to load is an error
        self.missing = FileProblems()  # per channel unreadable files (this process's; see __getitem__)
        self.failed = 0

    def __len__(self) -> int:
        return len(self.plans)

    def load(self, epoch: int, index: int, problems: Optional[FileProblems] = None, copy: int = 0) -> Sample:
        """One sample (raises on failure; ``__getitem__`` handles that). Unreadable files go to
        ``problems`` (default: this dataset's ``missing``). ``copy``: which repetition of the sample
        in the epoch (``ClassBalancedSampler``), so that repeats are augmented differently."""
        from ..sync.synchronizer import assemble_frame

        frame = assemble_frame(self.plans[index], drop=self.drop, load_images=self.load_images,
                               missing=self.missing if problems is None else problems)
        img_aug = None
        if self.augment:
            rng = sample_rng(self.seed, epoch, index, copy=copy)
            frame, _, img_aug = augment_frame(frame, rng, self.cfg.train.augment, self.cfg.data.cameras,
                                              self.cfg.model.camera.image_size)
        sample = frame_to_sample(frame, self.cfg, image_aug=img_aug)
        if self.target_builder is not None and sample.gt_boxes is not None:
            sample.targets = self.target_builder(sample.gt_boxes.numpy(), sample.gt_labels.numpy(),
                                                 sample.gt_attributes.numpy())
        return sample

    def __getitem__(self, key) -> Sample:
        """The sample of ``key``, carrying in ``sample.problems`` what could not be read for it (a
        sample replaced by the next one is recorded under the channel 'sample'); loader workers
        are separate processes, so this is how their problems reach the trainer's summary."""
        from ..data.io import SensorFileError

        # (epoch, index) from ResumableSampler, (epoch, index, copy) from ClassBalancedSampler
        epoch, index, copy = (tuple(key) + (0,))[:3] if isinstance(key, tuple) else (0, int(key), 0)
        problems = FileProblems(strict=self.strict)
        for attempt in range(self.max_retries + 1):
            i = (index + attempt) % len(self.plans)
            try:
                # copy only for a repeat: load(epoch, index, problems) stays the call of the plain order
                sample = self.load(epoch, i, problems, copy=copy) if copy else self.load(epoch, i, problems)
                self.missing.merge(problems)
                sample.problems = problems
                return sample
            except Exception as e:  # corrupt data must not end the epoch (unless strict)
                if self.strict and isinstance(e, SensorFileError):
                    raise DataError(str(e)) from None
                if self.strict:
                    raise DataError(f"sample {getattr(self.plans[i], 'sample_token', '?')} failed to load "
                                    f"({e.__class__.__name__}: {e}) (--strict)") from None
                self.failed += 1
                plan = self.plans[i]
                problems.add("sample", getattr(plan, "sample_token", "?"),
                             f"sample {getattr(plan, 'sample_token', '?')} (index {i}) failed to load "
                             f"({e.__class__.__name__}: {e}); replaced by index {(i + 1) % len(self.plans)}")
        raise DataError(f"{self.max_retries + 1} consecutive samples from index {index} failed to load "
                        f"(first: {problems.examples.get('sample', [('', '?')])[0][1]})")


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------
class ResumableSampler(torch.utils.data.Sampler):
    """Deterministic, rank-sliced, resumable order of ``(epoch, index)`` keys.

    The epoch's order is a permutation drawn from (seed, epoch) alone, padded by wrapping around to
    a whole number of global batches (batch_size x world_size). Step s of the epoch uses the global
    batch ``order[s * G:(s + 1) * G]`` and process r takes its r-th contiguous slice of batch_size:
    the union over processes of a step's samples does not depend on the number of processes, which
    is what makes a G-process run match a 1-process run with the same global batch.
    ``set_epoch(epoch, start_step)`` skips the steps of the epoch already done (resume).
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if num_samples < 1:
            raise DataError("the index holds no sample")
        self.n, self.batch_size, self.world_size, self.rank = num_samples, batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = -(-num_samples // self.global_batch)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64[steps_per_epoch * global_batch] sample indices of the whole epoch (all processes)."""
        order = (np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), 0x5A3]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))
        total = self.steps_per_epoch * self.global_batch
        return np.resize(order, total)  # wraps around

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        for s in range(self.start_step, self.steps_per_epoch):
            lo = s * self.global_batch + self.rank * self.batch_size
            for i in order[lo:lo + self.batch_size]:
                yield (self.epoch, int(i))

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


def sample_classes(plans: Sequence, cfg: Config) -> List[np.ndarray]:
    """Per plan the sorted class ids (int64[K], indices into CLASSES) of the ground truth training
    uses (``used_gt_mask``, before augmentation), as CBGS groups samples; empty without ground truth."""
    from ..data.gt_filter import used_gt_mask

    out = []
    for p in plans:
        gt = getattr(p, "gt", None)
        if gt is None or not len(gt):
            out.append(np.zeros(0, np.int64))
            continue
        out.append(np.unique(gt.labels[used_gt_mask(gt, cfg.grid.point_cloud_range)]).astype(np.int64))
    return out


class ClassBalancedSampler(ResumableSampler):
    """CBGS (CenterPoint / BEVFusion's class-balanced grouping and sampling) as a resumable order.

    Grouping: for every class, the samples that hold it (a sample with k classes is in k groups).
    Sampling, as mmdet3d's ``CBGSDataset``: with P the number of (sample, class) pairs and C the
    classes present, group c of n_c samples contributes int(n_c * (1 / C) / (n_c / P)) = int(P / C)
    draws with replacement, so every class holds an equal share of the epoch and rare classes'
    samples repeat; an epoch has about P samples. Classes no sample holds are left out (mmdet3d
    divides by zero there); samples without any class are never drawn.

    Unlike mmdet3d (one draw when the dataset is built), the draws are made per epoch from
    (seed, epoch) alone, so later epochs repeat other samples of the rare classes, and everything
    ``ResumableSampler`` guarantees holds: the same order in every process and after a resume
    (``set_epoch(epoch, start_step)``), rank slices of one global order. Keys are
    ``(epoch, index, copy)``: copy counts the earlier occurrences of the sample in the epoch's
    order, so that ``TrainDataset`` augments each repeat differently (copy 0 is augmented as the
    plain sampler's key would be).

    sample_classes: per sample the class ids it holds (``sample_classes(plans, cfg)``)
    """

    def __init__(self, sample_classes: Sequence[np.ndarray], batch_size: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True):
        groups: Dict[int, List[int]] = {}
        for i, classes in enumerate(sample_classes):
            for c in np.unique(np.asarray(classes, np.int64)):
                groups.setdefault(int(c), []).append(i)
        if not groups:
            raise DataError("train.cbgs: no sample of the index holds a ground-truth box of any class")
        self.classes = sorted(groups)
        self.groups = [np.asarray(groups[c], np.int64) for c in self.classes]
        pairs = sum(len(g) for g in self.groups)
        # mmdet3d's int(len(cls_inds) * ratio), ratio = frac / class_distribution; the same integer
        # for every class up to float rounding, computed as theirs for counts that match
        self.draws = [int(len(g) * ((1.0 / len(self.groups)) / (len(g) / pairs))) for g in self.groups]
        self.num_source_samples = len(sample_classes)
        super().__init__(sum(self.draws), batch_size, world_size, rank, seed, shuffle)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """int64[n] the epoch's draws (sample indices, class groups one after another, unshuffled)."""
        rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), 0xCB65])
        return np.concatenate([rng.choice(g, size=k, replace=True) for g, k in zip(self.groups, self.draws)])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64[steps_per_epoch * global_batch] sample indices of the whole epoch (all processes)."""
        drawn = self.epoch_indices(epoch)
        if self.shuffle:
            drawn = drawn[np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch), 0x5A3]).permutation(len(drawn))]
        return np.resize(drawn, self.steps_per_epoch * self.global_batch)  # wraps around

    @staticmethod
    def copy_numbers(order: np.ndarray) -> np.ndarray:
        """int64[n]: for each position, how many times its sample occurred before it in ``order``."""
        n = len(order)
        by_sample = np.argsort(order, kind="stable")  # positions grouped by sample, in order within
        sorted_ids = order[by_sample]
        starts = np.r_[0, np.nonzero(np.diff(sorted_ids))[0] + 1]
        first_of_run = np.zeros(n, np.int64)
        first_of_run[starts] = starts
        np.maximum.accumulate(first_of_run, out=first_of_run)
        copies = np.empty(n, np.int64)
        copies[by_sample] = np.arange(n) - first_of_run
        return copies

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        order = self.epoch_order(self.epoch)
        copies = self.copy_numbers(order)
        for s in range(self.start_step, self.steps_per_epoch):
            lo = s * self.global_batch + self.rank * self.batch_size
            for i, c in zip(order[lo:lo + self.batch_size], copies[lo:lo + self.batch_size]):
                yield (self.epoch, int(i), int(c))


def make_sampler(plans: Sequence, cfg: Config, world_size: int = 1, rank: int = 0) -> ResumableSampler:
    """The training sampler the config asks for: ``ClassBalancedSampler`` with ``train.cbgs``, else the
    plain shuffled ``ResumableSampler`` over the plans."""
    t = cfg.train
    if t.cbgs:
        return ClassBalancedSampler(sample_classes(plans, cfg), t.batch_size, world_size, rank, t.seed, shuffle=True)
    return ResumableSampler(len(plans), t.batch_size, world_size, rank, t.seed, shuffle=True)


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------
class LoadedBatch:
    """A collated Batch that the DataLoader's pin-memory thread can pin (it calls ``pin_memory()``)."""

    def __init__(self, batch: Batch, problems: Optional[FileProblems] = None):
        self.batch = batch
        self.problems = FileProblems() if problems is None else problems  # of the batch's samples

    def pin_memory(self) -> "LoadedBatch":
        b = self.batch

        def pin(x):
            if x is None:
                return None
            if isinstance(x, list):
                return [t.pin_memory() for t in x]
            return x.pin_memory()

        return LoadedBatch(Batch(pin(b.lidar_points), pin(b.radar_points), pin(b.images), pin(b.intrinsics),
                                 pin(b.img_aug), pin(b.T_ego_from_cam), pin(b.camera_mask), pin(b.modality_mask),
                                 pin(b.ego_velocity), pin(b.gt_boxes), pin(b.gt_labels), pin(b.gt_attributes),
                                 b.sample_tokens, b.timestamps, b.T_global_from_ego, pin(b.depth_targets),
                                 None if b.targets is None else b.targets.pin_memory()),
                           self.problems)


def collate_samples(samples: List[Sample]) -> LoadedBatch:
    problems = FileProblems()
    for s in samples:
        problems.merge(s.problems)
    return LoadedBatch(collate(samples), problems)


# Bytes; arrays at least this large are mmapped by glibc's malloc and returned to the system when freed.
# glibc's default threshold starts at 128 KiB and rises each time such a block is freed (up to 32 MiB),
# after which a sample's multi-MB temporaries (sweeps, voxels, targets) come from the heap, whose freed
# pages the worker keeps: measured on the nuScenes config's samples, one process grew 289 -> 318 MB
# over its first 5 samples and stayed there; with the threshold fixed at 256 KiB, 289 -> 292 MB.
# 0 keeps glibc's dynamic default.
WORKER_MMAP_THRESHOLD = 256 << 10


def fix_malloc_threshold(threshold: int) -> bool:
    """Fix glibc malloc's mmap threshold at ``threshold`` bytes (which turns off its dynamic raising)
    and its trim threshold at twice that, in this process. Returns whether it was applied: False for
    ``threshold <= 0`` and off glibc (no ``mallopt``), where malloc is left as it is."""
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, int(threshold))) and \
            bool(libc.mallopt(m_trim_threshold, 2 * int(threshold)))
    except (OSError, AttributeError):  # musl and others: no libc.so.6 or no mallopt
        return False


def worker_init(worker_id: int) -> None:
    """One intra-op thread per loader worker (the workers are the data path's parallelism); SIGTERM
    ignored, so a scheduler that signals the whole process group lets the trainer write its
    checkpoint and shut the workers down (they also exit when the trainer dies); malloc's mmap
    threshold fixed (``WORKER_MMAP_THRESHOLD``), so a worker's resident memory does not creep up."""
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fix_malloc_threshold(WORKER_MMAP_THRESHOLD)


def shutdown_loader(loader: torch.utils.data.DataLoader, timeout_s: float = 5.0) -> None:
    """Stop a DataLoader's worker processes now (persistent workers included): the polite shutdown
    first, then SIGKILL for any still alive after ``timeout_s`` (they ignore SIGTERM, see
    ``worker_init``). Safe to call on a loader without workers or whose workers already exited."""
    it = getattr(loader, "_iterator", None)
    if it is None:
        return
    workers = list(getattr(it, "_workers", []))
    try:
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
    except Exception as e:  # a broken queue must not keep the workers alive
        log.debug("loader shutdown: %s", e)
    for w in workers:
        w.join(timeout=timeout_s)
        if w.is_alive():
            w.kill()
            w.join(timeout=timeout_s)
    loader._iterator = None
