"""A compact, shareable store of ``FramePlan``s: one file of serialized plans + int64 offsets.

Why: a list of FramePlans is ~85 KB of small Python objects per sample (2.4 GB at nuScenes' 28k
training samples); a DataLoader worker forked from the trainer touches their reference counts, so
page after page of that heap is copied into every worker (pytorch#13246). Here the whole index is a
handful of Python objects: an ``int64[n + 1]`` offsets array and one file (or, uncached, one
``bytes`` buffer). ``store[i]`` decodes plan i into a fresh FramePlan, equal field for field to the
one ``FrameBuilder.plan`` built.

Layout of a store file (little endian)::

    MAGIC                      8 bytes
    blob 0 .. blob n-1         each one plan: zlib(pickle(FramePlan)), level 1
    offsets                    int64[n + 1], absolute file positions of the blobs (offsets[n]: end)
    meta                       UTF-8 JSON: format, count, codec, scenes, crc32 of the blobs, build id
    footer                     <offsets position Q, meta position Q, meta length Q> + MAGIC

Codec, chosen by measurement on the real scenes (``fusion_nuscenes``: 10 LiDAR + 6 radar sweeps, 57
boxes): a plan pickles to 29 KB and decodes in 150 us; zlib level 1 halves it (15 KB) for 45 us more
per decode, negligible beside the ~100 ms of reading and decoding the sample's files. A per-plan
pickle keeps every field (dtypes, shapes, strings) exactly and follows FramePlan's layout without
a schema to maintain.

Access (``mode``): ``'pread'`` (default) reads a plan's bytes with ``os.pread`` from a descriptor
opened once: the file lives once in the machine's page cache, shared by every rank and worker, and
never enters a process's resident set, so a worker's RSS does not grow as an epoch touches every
plan. ``'mmap'`` maps the file instead (same sharing, but the touched pages count in each process's
RSS; kept for the benchmark). A store built without a cache holds the file's bytes in one ``bytes``
object (one reference count: forked workers share it untouched).

The file is written atomically (``perception.fileio``) and checked when opened (magic, footer,
offsets, the crc32 of the blobs): a damaged file raises ``StoreError`` and the caller rebuilds it.
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import uuid
import zlib
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

MAGIC = b"PLANS\x00\x01\x00"
FOOTER = struct.Struct("<QQQ8s")
CODEC = "pickle5+zlib1"
_CRC_CHUNK = 8 << 20


class StoreError(RuntimeError):
    """A store file that cannot be used (truncated, corrupt, not a store); the message says why."""


def encode_plan(plan) -> bytes:
    return zlib.compress(pickle.dumps(plan, protocol=5), 1)


def decode_plan(blob) -> object:
    return pickle.loads(zlib.decompress(blob))


def write_store(f: BinaryIO, plans: Iterable, meta: Optional[dict] = None,
                started: Optional[float] = None) -> dict:
    """Stream ``plans`` (any iterable: nothing is kept but the offsets) into the open binary file
    ``f`` in the store layout; returns the meta written (with ``count``, and ``build_s``, the
    seconds since ``started`` (a ``time.perf_counter()``) when given)."""
    import time

    pos = f.write(MAGIC)
    offsets = [pos]
    crc = 0
    for plan in plans:
        blob = encode_plan(plan)
        crc = zlib.crc32(blob, crc)
        pos += f.write(blob)
        offsets.append(pos)
    off = np.asarray(offsets, np.int64)
    meta = dict(meta or {}, format=1, codec=CODEC, count=len(offsets) - 1, crc32=crc, build_id=uuid.uuid4().hex)
    if started is not None:
        meta["build_s"] = round(time.perf_counter() - started, 3)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    offsets_pos = pos
    pos += f.write(off.tobytes())
    meta_pos = pos
    pos += f.write(meta_bytes)
    f.write(FOOTER.pack(offsets_pos, meta_pos, len(meta_bytes), MAGIC))
    return meta


class PlanStore(Sequence):
    """FramePlans of an index, decoded on access (see module doc). A Sequence: ``len``, ``store[i]``
    (a new FramePlan each time; negative i allowed), iteration in index order, and ``store[a:b]`` /
    ``store[int array]`` giving a view (another PlanStore over the same file, no copy).

    Open with ``PlanStore.open(path)`` or ``PlanStore.from_bytes(buf)``. ``meta``: the JSON meta
    (``count``, ``scenes``, ``build_s``, ...). Picklable: a pickled file store reopens its path and
    checks it is the same build."""

    def __init__(self, offsets: np.ndarray, meta: dict, path: Optional[str] = None, buffer=None,
                 mode: str = "pread", rows: Optional[np.ndarray] = None, fd: Optional[int] = None,
                 mapped=None):
        self._offsets = offsets
        self.meta = meta
        self.path = path
        self.mode = mode
        self._buffer = buffer  # bytes (uncached store) or the mmap (mode 'mmap')
        self._rows = rows  # int64 positions of this view's plans in the file, None: all
        self._fd = fd
        self._mapped = mapped
        self._owner = rows is None  # closes the descriptor / mapping (a view borrows its parent's)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str, mode: str = "pread", verify: bool = True) -> "PlanStore":
        """The store in ``path``; raises StoreError for a file that is not a complete store (and,
        with ``verify``, whose blobs fail their crc32)."""
        if mode not in ("pread", "mmap"):
            raise ValueError(f"mode must be 'pread' or 'mmap', got {mode!r}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, len(MAGIC), 0)
            offsets, meta = _read_tail(lambda n, at: os.pread(fd, n, at), size, head, path)
            if verify:
                crc, lo, hi = 0, int(offsets[0]), int(offsets[-1])
                while lo < hi:
                    chunk = os.pread(fd, min(_CRC_CHUNK, hi - lo), lo)
                    if not chunk:
                        raise StoreError(f"{path}: truncated")
                    crc = zlib.crc32(chunk, crc)
                    lo += len(chunk)
                if crc != meta.get("crc32"):
                    raise StoreError(f"{path}: plans damaged (crc32 {crc:#x}, expected {meta.get('crc32', 0):#x})")
            mapped = None
            if mode == "mmap":
                mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
                os.close(fd)
                fd = None
            return cls(offsets, meta, path=os.path.abspath(path), mode=mode, fd=fd, mapped=mapped)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise

    @classmethod
    def from_bytes(cls, buf: bytes) -> "PlanStore":
        """A store over the bytes of a store file (held in memory)."""
        offsets, meta = _read_tail(lambda n, at: buf[at:at + n], len(buf), buf[:len(MAGIC)], "<memory>")
        return cls(offsets, meta, buffer=buf, mode="memory")

    def close(self) -> None:
        if self._owner:
            if self._fd is not None:
                os.close(self._fd)
            if self._mapped is not None:
                self._mapped.close()
        self._fd, self._mapped = None, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ Sequence
    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._rows is None else len(self._rows)

    def _row(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"plan index {i} out of range ({n} plans)")
        return i if self._rows is None else int(self._rows[i])

    def blob(self, i: int) -> bytes:
        """The encoded bytes of plan i."""
        r = self._row(i)
        lo, hi = int(self._offsets[r]), int(self._offsets[r + 1])
        if self.mode == "pread":
            if self._fd is None:
                raise StoreError(f"{self.path}: store closed")
            return os.pread(self._fd, hi - lo, lo)
        if self.mode == "mmap":
            return self._mapped[lo:hi]
        return self._buffer[lo:hi]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._view(np.arange(len(self))[i])
        if isinstance(i, (list, np.ndarray)):
            idx = np.asarray(i)
            if idx.dtype == bool:
                idx = np.nonzero(idx)[0]
            return self._view(np.arange(len(self))[idx.astype(np.int64)])
        return decode_plan(self.blob(int(i)))

    def _view(self, positions: np.ndarray) -> "PlanStore":
        rows = positions if self._rows is None else self._rows[positions]
        view = PlanStore(self._offsets, self.meta, self.path, self._buffer, self.mode,
                         np.ascontiguousarray(rows, np.int64), self._fd, self._mapped)
        view._parent = self  # keeps the descriptor open while the view lives
        return view

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"PlanStore({len(self)} plans, {self.mode}, {self.path or 'in memory'})"

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded plans (all of the file's, for a view too)."""
        return int(self._offsets[-1] - self._offsets[0])

    # ------------------------------------------------------------------ pickling (spawned workers)
    def __getstate__(self):
        if self.mode == "memory":
            return {"buffer": self._buffer, "rows": self._rows}
        return {"path": self.path, "mode": self.mode, "build_id": self.meta.get("build_id"), "rows": self._rows}

    def __setstate__(self, state):
        if "buffer" in state:
            other = PlanStore.from_bytes(state["buffer"])
        else:
            other = PlanStore.open(state["path"], state["mode"], verify=False)
            if other.meta.get("build_id") != state["build_id"]:
                other.close()
                raise StoreError(f"{state['path']}: the index file was rebuilt since this store was made")
        other._rows = state["rows"]
        self.__dict__.update(other.__dict__)
        self._owner = True
        other._fd, other._mapped = None, None  # now owned by self


def _read_tail(read: Callable[[int, int], bytes], size: int, head: bytes, path: str):
    if size < len(MAGIC) + FOOTER.size or head != MAGIC:
        raise StoreError(f"{path}: not a plan store (bad header or too short: {size} bytes)")
    offsets_pos, meta_pos, meta_len, magic = FOOTER.unpack(read(FOOTER.size, size - FOOTER.size))
    if magic != MAGIC or not (len(MAGIC) <= offsets_pos <= meta_pos and meta_pos + meta_len == size - FOOTER.size) \
            or (meta_pos - offsets_pos) % 8:
        raise StoreError(f"{path}: truncated or damaged (bad footer)")
    try:
        meta = json.loads(read(meta_len, meta_pos).decode())
    except ValueError as e:
        raise StoreError(f"{path}: damaged meta ({e})") from None
    offsets = np.frombuffer(read(meta_pos - offsets_pos, offsets_pos), np.int64).copy()
    if len(offsets) != meta.get("count", -1) + 1 or offsets[0] != len(MAGIC) or offsets[-1] != offsets_pos \
            or np.any(np.diff(offsets) < 0) or meta.get("codec") != CODEC:
        raise StoreError(f"{path}: damaged offsets or an unknown codec")
    return offsets, meta


def difference(a, b, where: str = "plan") -> Optional[str]:
    """None when ``a`` and ``b`` are equal field for field (dataclasses, dicts, lists, tuples, numpy
    arrays with their dtype and shape, NaN equal to NaN, scalars with their type), else where they
    first differ, e.g. ``plan.channels['LIDAR_TOP'].reads[3].T_ref_from_sensor: values``."""
    import dataclasses

    if type(a) is not type(b):
        return f"{where}: type {type(a).__name__} vs {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            d = difference(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
            if d:
                return d
        return None
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        same = np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return None if same else f"{where}: values"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            d = difference(a[k], b[k], f"{where}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and a != a and b != b:
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"
