"""Online multi-object tracking in the global frame, CenterPoint's scheme, vectorized.

Per frame (``Tracker.step``): the detections (ego frame) go to the global frame with the ego pose;
each one is moved back by its own predicted velocity times the time since the previous frame and
compared with every live track's centre at that previous time (BEV distance). A pair can match when
both have the same class and the distance is within the detection class's gate; among those, pairs
are taken closest first (``greedy_match``) or by ``scipy.optimize.linear_sum_assignment``
(``hungarian_match``). Matched tracks take the detection's box, score and velocity; a track left
unmatched is carried forward by its velocity, kept without being reported, and deleted once it has
missed ``max_age`` frames in a row; an unmatched detection from ``birth_score`` up starts a track with
a new ID. Working in the global frame is what makes the association independent of the ego's own
motion: a parked object stays put however the car that sees it moves.

Only the 7 nuScenes tracking classes are tracked (``TRACKING_CLASSES``); detections of the other
classes are ignored. Track IDs are integers from 1, never reused within a tracker's life.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Mapping, Optional

import numpy as np

from ..structures import BOX_DIM, CLASS_TO_ID, CLASSES, Boxes3D, Detections

# The devkit's tracking_nips_2019 classes, in CLASSES order.
TRACKING_CLASSES: tuple = ("car", "truck", "bus", "trailer", "pedestrian", "motorcycle", "bicycle")
MATCHINGS: tuple = ("greedy", "hungarian")


class TrackingError(ValueError):
    """Input the tracker cannot use as given (frames out of time order, a box in the wrong frame)."""


@dataclass
class Tracks:
    """The tracks reported at one frame: those matched or started in it (kept-but-missed ones are not).

    timestamp: the frame's time, us
    ids: int64[K] track IDs (>= 1, unique over the tracker's life)
    boxes: float64[K, 9] (x, y, z, l, w, h, yaw, vx, vy), global frame, metres, m/s (this frame's detection)
    labels: int64[K] index into CLASSES
    scores: float32[K] this frame's detection score
    attributes: int64[K] index into ATTRIBUTES or NO_ATTRIBUTE
    hits: int64[K] frames in which the track was matched, its birth included
    """

    timestamp: int
    ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    attributes: np.ndarray
    hits: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def to_boxes(self) -> Boxes3D:
        """The tracks as a Boxes3D in the global frame (instance_tokens: the IDs as strings)."""
        n = len(self)
        return Boxes3D(self.boxes, self.labels, self.attributes, self.scores, -np.ones(n), -np.ones(n),
                       [""] * n, [str(int(i)) for i in self.ids], frame="global")

    def in_ego(self, T_global_from_ego: np.ndarray) -> Boxes3D:
        """The tracks' boxes in the ego frame of ``T_global_from_ego`` float64[4, 4] (for drawing)."""
        return self.to_boxes().transformed(np.linalg.inv(np.asarray(T_global_from_ego, np.float64)), "ego")


def _split_isolated(cost: np.ndarray) -> tuple:
    """The allowed pairs that are the only choice of both their row and their column (every matching
    takes them), and the rows and columns left with a real choice.

    cost: float[N, M], ``np.inf`` where forbidden. Returns (pairs int64[K, 2], rows int64[R], cols int64[C]).
    In traffic most objects have a single candidate within their gate; taking those in one vectorized
    step leaves the matching proper a small matrix.
    """
    allowed = np.isfinite(cost)
    per_row, per_col = allowed.sum(axis=1), allowed.sum(axis=0)
    r, c = np.nonzero(allowed)
    iso = (per_row[r] == 1) & (per_col[c] == 1)
    pairs = np.stack([r[iso], c[iso]], axis=1).astype(np.int64)
    rows = np.flatnonzero(per_row > 0)
    cols = np.flatnonzero(per_col > 0)
    return pairs, np.setdiff1d(rows, r[iso]), np.setdiff1d(cols, c[iso])


def greedy_match(cost: np.ndarray) -> np.ndarray:
    """Closest-first one-to-one matching.

    cost: float[N, M] distances, ``np.inf`` where a pair must not match
    Returns int64[K, 2] (row, col) pairs. Equal to taking the finite pairs in increasing cost and
    keeping each whose row and column are still free; done in rounds of mutual nearest neighbours
    (a pair that is the smallest of its row and of its column is one greedy takes), so each round is
    two vectorized argmins instead of a Python loop over pairs.
    """
    N, M = cost.shape
    if N == 0 or M == 0:
        return np.zeros((0, 2), np.int64)
    iso, rows, cols = _split_isolated(cost)
    out = [iso]
    c = cost[np.ix_(rows, cols)].astype(np.float64, copy=True)
    while c.size:
        best_col = c.argmin(axis=1)
        best_row = c.argmin(axis=0)
        r = np.arange(len(best_col))
        mutual = (best_row[best_col] == r) & np.isfinite(c[r, best_col])
        if not mutual.any():
            break
        r, k = r[mutual], best_col[mutual]
        out.append(np.stack([rows[r], cols[k]], axis=1))
        c[r, :] = np.inf
        c[:, k] = np.inf
    return np.concatenate(out).astype(np.int64)


def hungarian_match(cost: np.ndarray) -> np.ndarray:
    """Minimum-total-distance matching among the allowed pairs (scipy's linear_sum_assignment).

    cost: float[N, M] distances, ``np.inf`` where a pair must not match
    Returns int64[K, 2] (row, col) pairs. Forbidden pairs get one large cost, so the assignment first
    matches as many allowed pairs as it can, then the closest (CenterPoint's 1e18 trick); any forbidden
    pair it still returns is dropped.
    """
    from scipy.optimize import linear_sum_assignment

    N, M = cost.shape
    if N == 0 or M == 0:
        return np.zeros((0, 2), np.int64)
    iso, rows, cols = _split_isolated(cost)
    if not len(rows) or not len(cols):
        return iso
    c = cost[np.ix_(rows, cols)]
    finite = np.isfinite(c)
    big = 1.0 + 2.0 * float(c[finite].max()) * min(c.shape)  # more than any all-allowed total
    r, k = linear_sum_assignment(np.where(finite, c, big))
    keep = finite[r, k]
    return np.concatenate([iso, np.stack([rows[r[keep]], cols[k[keep]]], axis=1)]).astype(np.int64)


def _per_label(values: Mapping[str, float], name: str, fill: float) -> np.ndarray:
    """float64[10] per CLASSES index from a per-tracking-class mapping (``fill`` for other classes)."""
    missing = [c for c in TRACKING_CLASSES if c not in values]
    unknown = [c for c in values if c not in TRACKING_CLASSES]
    if missing or unknown:
        raise TrackingError(f"tracker {name}: needs exactly the tracking classes {', '.join(TRACKING_CLASSES)}"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(map(str, unknown))}" if unknown else ""))
    out = np.full(len(CLASSES), fill, np.float64)
    for c, v in values.items():
        out[CLASS_TO_ID[c]] = float(v)
    return out


class Tracker:
    """The online tracker of one drive (``reset`` before another).

    gate_m: class -> largest BEV centre distance (metres) of a match, for each of TRACKING_CLASSES
    max_age: class -> consecutive missed frames that delete a track (fewer keep it, unreported)
    birth_score: class -> lowest score of an unmatched detection that starts a track
    matching: 'greedy' (closest first) or 'hungarian'
    """

    def __init__(self, gate_m: Mapping[str, float], max_age: Mapping[str, int],
                 birth_score: Mapping[str, float], matching: str = "greedy"):
        if matching not in MATCHINGS:
            raise TrackingError(f"tracker matching must be one of {', '.join(MATCHINGS)}, got {matching!r}")
        self.gate = _per_label(gate_m, "gate_m", np.nan)
        self.max_age = _per_label(max_age, "max_age", 0).astype(np.int64)
        self.birth = _per_label(birth_score, "birth_score", np.inf)
        if np.any(self.gate[np.isfinite(self.gate)] <= 0) or np.any(self.max_age[self._tracked_labels()] < 1):
            raise TrackingError("tracker gate_m must be > 0 and max_age >= 1 for every tracking class")
        self.matching = matching
        self._match = greedy_match if matching == "greedy" else hungarian_match
        self.reset()

    @staticmethod
    def _tracked_labels() -> np.ndarray:
        return np.array([CLASS_TO_ID[c] for c in TRACKING_CLASSES])

    def reset(self) -> None:
        """Forget every track (a new drive); IDs start again from 1."""
        self._ids = np.zeros(0, np.int64)
        self._boxes = np.zeros((0, BOX_DIM), np.float64)  # global frame, at self._t
        self._labels = np.zeros(0, np.int64)
        self._scores = np.zeros(0, np.float32)
        self._attrs = np.zeros(0, np.int64)
        self._hits = np.zeros(0, np.int64)
        self._misses = np.zeros(0, np.int64)
        self._t: Optional[int] = None
        self._next_id = 1

    @property
    def num_live(self) -> int:
        """Tracks held, reported or not."""
        return len(self._ids)

    def step(self, detections: Detections, T_global_from_ego: np.ndarray) -> Tracks:
        """One frame: detections in the ego frame at ``detections.timestamp`` (us) and the ego pose then.

        T_global_from_ego: float64[4, 4] ego pose at the detections' time (``Frame.T_global_from_ego``)
        """
        boxes = detections.boxes
        if boxes.frame != "ego":
            raise TrackingError(f"tracker: detections of {detections.sample_token or detections.timestamp} are in "
                                f"the {boxes.frame!r} frame; step() takes the ego frame (step_global the global)")
        return self.step_global(boxes.transformed(np.asarray(T_global_from_ego, np.float64), "global"),
                                detections.timestamp)

    def step_global(self, boxes: Boxes3D, timestamp: int) -> Tracks:
        """One frame of boxes already in the global frame at ``timestamp`` (us)."""
        if boxes.frame != "global":
            raise TrackingError(f"tracker: step_global takes global-frame boxes, got the {boxes.frame!r} frame")
        timestamp = int(timestamp)
        if self._t is not None and timestamp <= self._t:
            raise TrackingError(f"tracker: frame at {timestamp} us is not after the previous one ({self._t} us); "
                                f"frames must come in time order (reset() between drives)")
        dt = 0.0 if self._t is None else (timestamp - self._t) * 1e-6
        det = boxes.select(np.isfinite(self.gate[boxes.labels]) if len(boxes) else np.zeros(0, bool))
        d_box = det.boxes
        d_lab = det.labels
        # an unknown velocity (NaN) predicts no motion rather than poisoning every distance
        d_vel = d_box[:, 7:9]
        d_vel = np.where(np.isfinite(d_vel), d_vel, 0.0)
        back = d_box[:, :2] - d_vel * dt  # where each detection was at the previous frame's time
        # squared distances per axis: a [N, M, 2] array summed over its last axis is several times slower
        dx = back[:, 0:1] - self._boxes[None, :, 0]
        dy = back[:, 1:2] - self._boxes[None, :, 1]
        d2 = dx * dx + dy * dy  # [N, M]
        gate = self.gate[d_lab]
        allowed = (d2 <= (gate * gate)[:, None]) & (d_lab[:, None] == self._labels[None, :])
        r, c = np.nonzero(allowed)
        cost = np.full(d2.shape, np.inf)
        cost[r, c] = np.sqrt(d2[r, c])
        pairs = self._match(cost)
        di, tj = pairs[:, 0], pairs[:, 1]

        N, M = len(det), len(self._ids)
        det_free = np.ones(N, bool)
        det_free[di] = False
        trk_free = np.ones(M, bool)
        trk_free[tj] = False

        # reported this frame: matched detections with their track's ID, then births, in detection order
        ids = np.zeros(N, np.int64)
        hits = np.zeros(N, np.int64)
        ids[di] = self._ids[tj]
        hits[di] = self._hits[tj] + 1
        born = det_free & (det.scores >= self.birth[d_lab])
        ids[born] = self._next_id + np.arange(int(born.sum()))
        hits[born] = 1
        self._next_id += int(born.sum())
        shown = ~det_free | born

        # kept, not reported: missed tracks younger than max_age, carried forward by their velocity
        misses = self._misses + 1
        keep = trk_free & (misses < self.max_age[self._labels])
        kept_boxes = self._boxes[keep].copy()
        kept_vel = kept_boxes[:, 7:9]
        kept_boxes[:, :2] += np.where(np.isfinite(kept_vel), kept_vel, 0.0) * dt

        self._ids = np.concatenate([ids[shown], self._ids[keep]])
        self._boxes = np.concatenate([d_box[shown], kept_boxes])
        self._labels = np.concatenate([d_lab[shown], self._labels[keep]])
        self._scores = np.concatenate([det.scores[shown], self._scores[keep]])
        self._attrs = np.concatenate([det.attributes[shown], self._attrs[keep]])
        self._hits = np.concatenate([hits[shown], self._hits[keep]])
        self._misses = np.concatenate([np.zeros(int(shown.sum()), np.int64), misses[keep]])
        self._t = timestamp
        k = int(shown.sum())
        return Tracks(timestamp, self._ids[:k].copy(), self._boxes[:k].copy(), self._labels[:k].copy(),
                      self._scores[:k].copy(), self._attrs[:k].copy(), self._hits[:k].copy())


def tracker_from_config(tcfg) -> Tracker:
    """The tracker of a ``perception.config.TrackingConfig`` (the config's ``tracking`` section)."""
    per = {c: getattr(tcfg, c) for c in TRACKING_CLASSES}
    return Tracker({c: p.gate_m for c, p in per.items()}, {c: p.max_age for c, p in per.items()},
                   {c: p.birth_score for c, p in per.items()}, tcfg.matching)


class TrailHistory:
    """Recent centres of each track, for drawing short trails.

    length: centres kept per track (the current one included); a track not reported for ``forget``
    frames is dropped, so memory stays bounded over a long drive.
    """

    def __init__(self, length: int = 10, forget: int = 5):
        self.length, self.forget = int(length), int(forget)
        self._trails: Dict[int, Deque[np.ndarray]] = {}
        self._last_seen: Dict[int, int] = {}
        self._frame = 0

    def update(self, tracks: Tracks) -> None:
        self._frame += 1
        for tid, centre in zip(tracks.ids.tolist(), tracks.boxes[:, :3]):
            self._trails.setdefault(tid, deque(maxlen=self.length)).append(centre.copy())
            self._last_seen[tid] = self._frame
        for tid in [t for t, f in self._last_seen.items() if self._frame - f >= self.forget]:
            del self._trails[tid], self._last_seen[tid]

    def trail(self, track_id: int) -> np.ndarray:
        """float64[T, 3] past centres of a track, oldest first, global frame (empty when unknown)."""
        pts = self._trails.get(int(track_id))
        return np.array(pts) if pts else np.zeros((0, 3))
