"""Multi-object tracking: the online tracker (``tracker``) used by offline evaluation
(``perception.eval.tracking``), replay and any streaming caller."""
from .tracker import (MATCHINGS, TRACKING_CLASSES, Tracker, TrackingError, Tracks, TrailHistory,
                      greedy_match, hungarian_match, tracker_from_config)

__all__ = ["MATCHINGS", "TRACKING_CLASSES", "Tracker", "TrackingError", "Tracks", "TrailHistory", "greedy_match",
           "hungarian_match", "tracker_from_config"]
