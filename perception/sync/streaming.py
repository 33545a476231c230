"""The streaming synchronizer: messages pushed one at a time, selections emitted once they are final.

``StreamingSynchronizer.push(msg)`` takes the messages of a drive in timestamp order (as a live
vehicle or ``NuScenesSource.messages(scene)`` delivers them) and returns the selections that became
ready. A selection is exactly the one the offline ``Synchronizer.select`` makes for the same
reference over the whole scene: the streaming synchronizer keeps a small rolling index (bounded
per-channel buffers) and calls that very selection code on it.

When is a reference final? The selection of a channel depends on the messages around a target time
(cameras: the expected trigger time, <= t_ref; radars: t_ref), through ``_nearest``, which compares
the last message before the target with the first at or after it. A channel is resolved for a
reference once

- it has a message at or after its target (the bracket is complete; later messages cannot change
  the nearest), or
- the stream clock has passed target + the channel's tolerance: any message still to come is
  beyond the tolerance, so either the nearest is an earlier message (which the buffer holds) or the
  offline selection rejects it as too far, as the streaming one does with the earlier message; or
- the stream ended (``flush``).

So the latency of a selection is bounded by the largest tolerance (``radar_tolerance_us``, 60 ms by
default) past t_ref, and a dead sensor never stalls the stream.

Buffers: for the oldest pending reference t_0 a channel keeps every message not older than
t_0 - horizon plus the newest one before it, where horizon covers the LiDAR and radar sweep windows
and the earliest camera trigger offset. That holds both sides of every bracket and every sweep the
walk-backs can reach, so the choices equal the offline ones, and the buffers stay bounded by the
sensor rates times (horizon + look-ahead), whatever the length of the drive.

One difference from the offline selection that is visible: a channel with no message in its buffer
(a sensor that has not sent anything yet, or went silent for longer than the horizon) is reported
with the reason "no message received from this channel", where the offline synchronizer, which sees
the whole scene, says "no message within ... us". The chosen messages are the same (none).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Sequence

import numpy as np

from ..config import SyncConfig
from ..data.nuscenes_source import ChannelIndex
from ..structures import CAMERA_CHANNELS, LIDAR_CHANNEL, RADAR_CHANNELS
from .calibration import SensorRig
from .synchronizer import Selection, Synchronizer

SILENT_REASON = "no message received from this channel"


@dataclass
class ReadySelection:
    """A final selection and what producing it cost.

    select_s: wall time of the selection call (s)
    clock_us: the stream clock (newest pushed timestamp) when it was emitted; clock_us - t_ref is
        the look-ahead the synchronizer had to wait for
    """

    selection: Selection
    select_s: float
    clock_us: int

    @property
    def reference(self):
        return self.selection.reference


class _RollingIndex:
    """The SceneIndex interface (``channels``) over the current buffers."""

    def __init__(self, buffers: Dict[str, Deque]):
        self._buffers = buffers

    @property
    def channels(self) -> Dict[str, ChannelIndex]:
        out = {}
        for ch, buf in self._buffers.items():
            if buf:
                msgs = list(buf)
                out[ch] = ChannelIndex(ch, np.fromiter((m.timestamp for m in msgs), np.int64, len(msgs)), msgs)
        return out


class StreamingSynchronizer:
    """Push messages in timestamp order; get ``ReadySelection``s (see module doc).

    rig: the drive's SensorRig (camera trigger offsets)
    sync: SyncConfig (the same the offline Synchronizer uses)
    cameras, radars: channels to select (as FrameBuilder.cameras / .radars)
    is_reference: which LiDAR messages are references (default: every LiDAR message)
    """

    def __init__(self, rig: SensorRig, sync: SyncConfig, cameras: Sequence[str] = CAMERA_CHANNELS,
                 radars: Sequence[str] = RADAR_CHANNELS, is_reference: Optional[Callable] = None):
        self.sync = sync
        self.cameras = list(cameras)
        self.radars = list(radars)
        self.is_reference = is_reference or (lambda msg: True)
        self._buffers: Dict[str, Deque] = {ch: deque() for ch in [LIDAR_CHANNEL] + self.cameras + self.radars}
        self._selector = Synchronizer(_RollingIndex(self._buffers), rig, sync, self.cameras, self.radars)
        self._pending: Deque = deque()
        self.clock_us: Optional[int] = None
        self.max_buffered: Dict[str, int] = {ch: 0 for ch in self._buffers}
        self.max_pending = 0
        nearest = sync.camera_match == "nearest"
        self._camera_tolerance = sync.camera_tolerance_us + (sync.lidar_period_us if nearest else 0)
        offsets = [self._selector.expected_camera_time(c, 0) for c in self.cameras] or [0]
        self.horizon_us = max(sync.lidar_window_us, sync.radar_window_us, -min(offsets), 0)

    @classmethod
    def for_builder(cls, builder, is_reference: Optional[Callable] = None) -> "StreamingSynchronizer":
        """The streaming twin of a FrameBuilder's synchronizer (same rig, config and channels)."""
        return cls(builder.rig, builder.cfg.sync, builder.cameras, builder.radars, is_reference)

    # ------------------------------------------------------------------ stream
    def push(self, msg) -> List[ReadySelection]:
        """Add one message (timestamps must not decrease); returns the selections now final."""
        if self.clock_us is not None and msg.timestamp < self.clock_us:
            raise ValueError(f"message {msg.token} ({msg.channel}) at {msg.timestamp} us is older than the "
                             f"stream clock {self.clock_us} us: push messages in timestamp order")
        self.clock_us = msg.timestamp
        buf = self._buffers.get(msg.channel)
        if buf is not None:
            buf.append(msg)
            if msg.channel == LIDAR_CHANNEL and self.is_reference(msg):
                self._pending.append(msg)
                self.max_pending = max(self.max_pending, len(self._pending))
        out = []
        while self._pending and self._resolved(self._pending[0]):
            out.append(self._emit(self._pending.popleft()))
        self._prune()
        return out

    def flush(self) -> List[ReadySelection]:
        """End of stream: every pending reference is final."""
        out = [self._emit(self._pending.popleft()) for _ in range(len(self._pending))]
        self._prune()
        return out

    def buffer_sizes(self) -> Dict[str, int]:
        return {ch: len(b) for ch, b in self._buffers.items()}

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ internals
    def _channel_resolved(self, ch: str, target: int, tolerance: int) -> bool:
        buf = self._buffers[ch]
        return (bool(buf) and buf[-1].timestamp >= target) or self.clock_us > target + tolerance

    def _resolved(self, ref) -> bool:
        t_ref = ref.timestamp
        for cam in self.cameras:
            if not self._channel_resolved(cam, self._selector.expected_camera_time(cam, t_ref), self._camera_tolerance):
                return False
        if self.sync.radar_sweeps > 0:
            for radar in self.radars:
                if not self._channel_resolved(radar, t_ref, self.sync.radar_tolerance_us):
                    return False
        return True

    def _emit(self, ref) -> ReadySelection:
        t0 = time.perf_counter()
        sel = self._selector.select(ref)
        for ch, choice in sel.choices.items():
            if not choice.messages and ch in self._buffers and not self._buffers[ch]:
                choice.reason = SILENT_REASON
        return ReadySelection(sel, time.perf_counter() - t0, self.clock_us)

    def _prune(self) -> None:
        oldest = self._pending[0].timestamp if self._pending else self.clock_us
        cutoff = oldest - self.horizon_us
        for ch, buf in self._buffers.items():
            # keep the newest message before the cutoff: the left side of a bracket
            while len(buf) >= 2 and buf[1].timestamp < cutoff:
                buf.popleft()
            self.max_buffered[ch] = max(self.max_buffered[ch], len(buf))
