"""Checkpoints: atomic writes, the last K kept, every RNG state, and finding the newest good one.

A checkpoint is ``<work_dir>/checkpoints/ckpt_<step:08d>.pt``: a ``torch.save`` dict with
``model`` (state dict of the bare model, no ``module.`` prefix: ``perception.eval.load_checkpoint_into``
reads it), ``optimizer``, ``scheduler``, ``scaler``, ``step`` (optimizer steps done), ``epoch`` and
``batch_in_epoch`` (where the sampler resumes), ``rng`` (one entry per process: python, numpy, torch
and CUDA generator states), ``world_size``, ``config`` and ``time``. Everything in it is plain data
and tensors, so it loads with ``torch.load(weights_only=True)``.

Writing: the bytes go to a temporary file in the same folder, are fsynced, and the file is renamed
over the final name (``os.replace``, atomic on POSIX), then the folder is fsynced. A crash or
SIGKILL at any moment leaves either the previous set of checkpoints or the new one, never a torn
file under a final name; leftover temporary files are ignored and removed on the next write.
"""
from __future__ import annotations

import glob
import logging
import os
import random
import re
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..fileio import atomic_write

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required; the message names the folder."""


def checkpoint_dir(work_dir: str) -> str:
    return os.path.join(work_dir, "checkpoints")


def list_checkpoints(ckpt_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of the finished checkpoints, oldest first (temporary files excluded)."""
    if not os.path.isdir(ckpt_dir):
        return []
    out = []
    for name in os.listdir(ckpt_dir):
        m = _NAME.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(ckpt_dir, name)))
    return sorted(out)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Dict[str, Any], ckpt_dir: str, step: int, keep_last: int) -> str:
    """Write ``state`` atomically as ckpt_<step>.pt and delete all but the ``keep_last`` newest."""
    os.makedirs(ckpt_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(ckpt_dir, ".ckpt_*.tmp*")):
        try:
            os.unlink(stale)
        except OSError:
            pass
    target = os.path.join(ckpt_dir, f"ckpt_{step:08d}.pt")
    try:
        final = atomic_write(target, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:  # torch.save wraps a full disk in a RuntimeError of its writer
        from ..errors import root_os_error

        cause = root_os_error(e)
        why = f"[Errno {cause.errno}] {cause.strerror}" if cause is not None else str(e).splitlines()[0]
        raise CheckpointError(f"{target}: checkpoint not written ({why}); the previous checkpoints are "
                              f"intact") from e
    _fsync_dir(ckpt_dir)
    for _, old in list_checkpoints(ckpt_dir)[:-keep_last]:
        try:
            os.unlink(old)
        except OSError:
            pass
    return final


def load_checkpoint(path: str) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model_state(model: torch.nn.Module, saved: Dict[str, Any], path: str) -> None:
    """``model.load_state_dict(saved)``, or a one-line CheckpointError naming ``path`` and the first
    mismatching key (a checkpoint of another config)."""
    from ..eval.evaluate import describe_state_dict_mismatch  # one description of a mismatch, eval's too

    why = describe_state_dict_mismatch(model, saved)
    if why is None:
        try:
            model.load_state_dict(saved)
            return
        except RuntimeError as e:
            why = str(e).splitlines()[0]
    raise CheckpointError(f"{path}: does not fit this config's model: {why}; is it a checkpoint of another "
                          f"config? (use another --work-dir, or the config it was trained with)")


def latest_checkpoint(ckpt_dir: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of the newest checkpoint that loads; an unreadable one is skipped with a warning."""
    for step, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load_checkpoint(path)
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", path,
                        e.__class__.__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        if isinstance(state, dict) and "model" in state and "step" in state:
            return path, state
        log.warning("checkpoint %s holds no training state; trying the previous one", path)
    return None


# ---------------------------------------------------------------------------------------------
# RNG states as plain data (weights_only-loadable)
# ---------------------------------------------------------------------------------------------
def rng_state() -> Dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def now() -> float:
    return time.time()
