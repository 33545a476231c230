"""Which ground-truth boxes training uses, and whether the config's grid holds them.

``used_gt_mask`` is the one rule for the boxes a model is trained on (``frame_to_sample``), counted
by the class-balanced sampler and the z-range check: boxes whose centre lies inside the BEV range
in x and y and that hold at least one LiDAR or radar point (nuScenes' evaluation drops the others,
so training on them teaches the model to hallucinate).

``GtZRange`` counts the used boxes that leave ``grid.point_cloud_range`` in z: their points above
or below the range never reach the LiDAR or radar encoder, so a grid that cuts them (the LiDAR-frame
[-5, 3] read in the ego frame cuts the tops of buses and trailers) is worth a warning in
``tools/doctor.py`` and at the start of training and evaluation.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from ..structures import CLASSES, Boxes3D

log = logging.getLogger(__name__)


def used_gt_mask(gt: Boxes3D, point_cloud_range: Sequence[float]) -> np.ndarray:
    """bool[N]: the boxes of ``gt`` (ego frame) training uses (see module doc)."""
    b, r = gt.boxes, point_cloud_range
    inside = (b[:, 0] >= r[0]) & (b[:, 0] < r[3]) & (b[:, 1] >= r[1]) & (b[:, 1] < r[4])
    seen = (gt.num_lidar_pts + gt.num_radar_pts > 0) | (gt.num_lidar_pts < 0)  # -1: unknown, kept
    return inside & seen


def z_outside_mask(boxes: np.ndarray, point_cloud_range: Sequence[float]) -> np.ndarray:
    """bool[N]: boxes float[N, >= 6] (x, y, z, l, w, h, ...; z the centre, metres) whose vertical
    extent [z - h/2, z + h/2] is not inside [z_min, z_max] of the range."""
    b = np.asarray(boxes, np.float64).reshape(len(boxes), -1)
    lo, hi = float(point_cloud_range[2]), float(point_cloud_range[5])
    return (b[:, 2] - b[:, 5] / 2 < lo) | (b[:, 2] + b[:, 5] / 2 > hi)


class GtZRange:
    """Counts of used ground-truth boxes (``used_gt_mask``) and of those leaving the range in z,
    overall and per class, with the lowest bottom and highest top seen (metres, ego frame)."""

    def __init__(self, point_cloud_range: Sequence[float]):
        self.range = [float(v) for v in point_cloud_range]
        self.total = 0
        self.outside = 0
        self.outside_by_class: Dict[str, int] = {}
        self.lowest: Optional[float] = None
        self.highest: Optional[float] = None

    def add(self, gt: Optional[Boxes3D]) -> None:
        if gt is None or not len(gt):
            return
        g = gt.select(used_gt_mask(gt, self.range))
        if not len(g):
            return
        b = g.boxes
        out = z_outside_mask(b, self.range)
        self.total += len(g)
        self.outside += int(out.sum())
        for label in g.labels[out]:
            name = CLASSES[int(label)]
            self.outside_by_class[name] = self.outside_by_class.get(name, 0) + 1
        bottom, top = float((b[:, 2] - b[:, 5] / 2).min()), float((b[:, 2] + b[:, 5] / 2).max())
        self.lowest = bottom if self.lowest is None else min(self.lowest, bottom)
        self.highest = top if self.highest is None else max(self.highest, top)

    def add_all(self, gts: Iterable[Optional[Boxes3D]]) -> "GtZRange":
        for gt in gts:
            self.add(gt)
        return self

    def merge(self, other: "GtZRange") -> None:
        self.total += other.total
        self.outside += other.outside
        for k, v in other.outside_by_class.items():
            self.outside_by_class[k] = self.outside_by_class.get(k, 0) + v
        for name, pick in (("lowest", min), ("highest", max)):
            a, b = getattr(self, name), getattr(other, name)
            setattr(self, name, b if a is None else a if b is None else pick(a, b))

    def summary(self) -> Dict:
        return {"z_range": [self.range[2], self.range[5]], "boxes": self.total, "outside": self.outside,
                "outside_by_class": dict(sorted(self.outside_by_class.items())),
                "lowest_bottom_m": None if self.lowest is None else round(self.lowest, 3),
                "highest_top_m": None if self.highest is None else round(self.highest, 3)}

    def message(self, what: str = "ground-truth boxes") -> str:
        """One line: how many boxes leave the z range, by class, and the extent they span."""
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(self.outside_by_class.items(), key=lambda kv: -kv[1]))
        return (f"{self.outside} of {self.total} {what} leave grid.point_cloud_range z "
                f"[{self.range[2]:g}, {self.range[5]:g}] m (ego frame) ({by_class}); boxes span "
                f"{self.lowest:.2f} to {self.highest:.2f} m: their points outside the range never reach "
                f"the LiDAR and radar encoders")

    def warn(self, what: str = "ground-truth boxes", logger: logging.Logger = log) -> bool:
        """Log ``message`` as a warning when any box leaves the range; True when it did."""
        if self.outside:
            logger.warning("%s", self.message(what))
            return True
        return False
