"""What a run could not read: unreadable sensor files per channel, with the first few paths.

Every tool that reads sensor files (train, eval, replay) ends with this summary so that a damaged
file is never silent, and never floods the log either: ``FileProblems`` counts every unreadable
file per channel and keeps the first ``keep`` (path, reason) pairs of each channel. The first one of
a channel is logged when it happens; the rest are counted and shown in the summary.

It is a ``Counter`` of channel -> unreadable files (what ``FrameBuilder.missing`` has always been),
so ``problems["LIDAR_TOP"]`` and ``dict(problems)`` keep working, plus the examples. It pickles
(DataLoader workers send theirs to the trainer with each batch) and merges (``update``).

``strict=True`` turns the first unreadable file into a ``SensorFileError`` instead (``--strict``).
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

KEEP_PATHS = 3  # example paths kept per channel


class FileProblems(Counter):
    """channel -> count of unreadable files, plus ``examples``: channel -> [(path, reason)] (first few)."""

    def __init__(self, strict: bool = False, keep: int = KEEP_PATHS):
        super().__init__()
        self.strict = strict
        self.keep = keep
        self.examples: Dict[str, List[Tuple[str, str]]] = {}

    def __reduce__(self):  # Counter's own pickling would drop the attributes
        return (_rebuild, (self.strict, self.keep, dict(self), {k: list(v) for k, v in self.examples.items()}))

    def add(self, channel: str, path: str, reason: str, log_first: bool = True) -> None:
        """Record one unreadable file. ``reason`` is the one-line error (it names the file)."""
        if self.strict:
            from .io import SensorFileError

            raise SensorFileError(f"{reason} (--strict: unreadable files are errors)")
        if log_first and self[channel] == 0:
            log.warning("%s (further %s problems are counted and listed in the run's summary)", reason, channel)
        else:
            log.debug("%s", reason)
        self[channel] += 1
        ex = self.examples.setdefault(channel, [])
        if len(ex) < self.keep:
            ex.append((path, reason))

    def merge(self, other: Optional[Counter]) -> None:
        """Add another record's counts and examples (a worker's, a shard's)."""
        if not other:
            return
        for ch, n in other.items():
            self[ch] += n
            ex = self.examples.setdefault(ch, [])
            for item in getattr(other, "examples", {}).get(ch, []):
                if len(ex) < self.keep and tuple(item) not in ex:
                    ex.append(tuple(item))

    def total(self) -> int:  # Counter.total exists from Python 3.10 only
        return sum(self.values())

    def to_dict(self) -> dict:
        """JSON form: {channel: {"count": n, "first": [{"path": p, "reason": r}, ...]}}."""
        return {ch: {"count": int(n), "first": [{"path": p, "reason": r} for p, r in self.examples.get(ch, [])]}
                for ch, n in sorted(self.items()) if n}

    def summary_lines(self) -> List[str]:
        """One line per channel with unreadable files (none when everything was read)."""
        lines = []
        for ch, n in sorted(self.items()):
            if not n:
                continue
            ex = self.examples.get(ch, [])
            more = f" (+{n - len(ex)} more)" if n > len(ex) else ""
            lines.append(f"{ch}: {n} unreadable file{'s' if n != 1 else ''}: "
                         + "; ".join(r for _, r in ex) + more)
        return lines


def _rebuild(strict, keep, counts, examples) -> FileProblems:
    p = FileProblems(strict, keep)
    p.update(counts)
    p.examples = {k: [tuple(x) for x in v] for k, v in examples.items()}
    return p
