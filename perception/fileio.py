"""Atomic file writes: a reader (or a crash) never sees half a file, and a failed write leaves the
previous file in place. Every output the package writes (reports, results, indices, logs' JSON
summaries) goes through here; checkpoints stream through torch.save with the same scheme
(perception.engine.checkpoint)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import BinaryIO, Callable, Optional


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call ``write(f)`` on a temporary file beside ``path`` (named ``.<name>.<random>.tmp``), fsync,
    then rename it over ``path``; on any failure the temporary file is removed and ``path`` is
    untouched."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(text: str, path: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(obj, path: str, indent: Optional[int] = None, strict: bool = True) -> str:
    """JSON written atomically; ``strict`` refuses NaN/Infinity (not valid JSON) with a ValueError."""
    return write_text_atomic(json.dumps(obj, indent=indent, allow_nan=not strict), path)
