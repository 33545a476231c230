"""Track IDs and trails for the renderers: what the BEV panel, the camera mosaic and the 3D scene
draw for each track besides its box (the box itself is the detection's, drawn as a detection)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np


@dataclass
class TrackOverlay:
    """Tracks to draw on one frame, in that frame's ego frame.

    ids: int64[K] track IDs
    boxes: float64[K, 9] (x, y, z, l, w, h, yaw, vx, vy), ego frame, metres
    labels: int64[K] index into CLASSES (the colour)
    trails: K x float64[T_k, 3] past centres, oldest first, the current one last, ego frame, metres
    """

    ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    trails: List[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(n, 9)
        if len(self.labels) != n or len(self.trails) not in (0, n):
            raise ValueError(f"TrackOverlay: {n} ids, {len(self.labels)} labels, {len(self.trails)} trails")

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, i: int) -> str:
        return f"#{int(self.ids[i])}"

    def trail_segments(self) -> tuple:
        """(starts float[S, 3], ends float[S, 3], track index int[S]) of every trail's consecutive centres."""
        s, e, k = [], [], []
        for i, t in enumerate(self.trails):
            if len(t) >= 2:
                s.append(t[:-1]); e.append(t[1:]); k.append(np.full(len(t) - 1, i))
        if not s:
            return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, np.int64)
        return np.concatenate(s), np.concatenate(e), np.concatenate(k)
