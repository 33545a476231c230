"""Replay of recorded drives: messages streamed through the streaming synchronizer, the model run as
frames become ready, everything rendered (perception.viz) into a window or a video."""
from .player import Player, ReplayOptions, ReplaySummary
from .timing import TimedDetector

__all__ = ["Player", "ReplayOptions", "ReplaySummary", "TimedDetector"]
