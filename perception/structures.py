"""The shared vocabulary of the package: conventions, frames, units and the typed containers.

Conventions (decided once here; conversions to and from nuScenes happen only at the data edge,
``perception.data.convert``, and at the export edge):

- Time: integer microseconds since the Unix epoch (``int`` / ``np.int64``), as nuScenes stores it.
  Time offsets and lags are also integer microseconds unless a name says ``_s`` (seconds).
- Frames:
    * global: the nuScenes map frame of the log's location, metres;
    * ego: origin at the rear-axle centre, x forward, y left, z up, metres. The model works in the
      ego frame at the reference (LiDAR) timestamp of a frame;
    * sensor: as in ``calibrated_sensor`` (LIDAR_TOP: x right, y forward, z up; radar: x forward,
      y left; camera: x right, y down, z forward / optical axis).
- Rigid transforms: 4 x 4 homogeneous matrices ``T_a_from_b`` mapping points of frame b into
  frame a (``p_a = T_a_from_b @ p_b``), float64.
- Boxes: ``[N, 9]`` rows ``(x, y, z, l, w, h, yaw, vx, vy)``: centre (z at the box centre), length
  along the heading, width, height (m), yaw in radians from +x towards +y (counter-clockwise seen
  from above), wrapped to [-pi, pi), velocity (m/s) in the same frame as the centre. nuScenes stores
  size as (w, l, h) and rotation as a quaternion.
- Classes: the 10 nuScenes detection classes in the devkit's order; the 23 (or fewer) nuScenes
  categories map to them with the devkit's ``category_to_detection_name``. Attributes as in the
  devkit, with the devkit-style default attribute per class for export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

# ---------------------------------------------------------------------------------------------
# Classes and attributes
# ---------------------------------------------------------------------------------------------
CLASSES: tuple = (
    "car", "truck", "bus", "trailer", "construction_vehicle",
    "pedestrian", "motorcycle", "bicycle", "traffic_cone", "barrier",
)
CLASS_TO_ID: Dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

ATTRIBUTES: tuple = (
    "cycle.with_rider", "cycle.without_rider",
    "pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down",
    "vehicle.moving", "vehicle.parked", "vehicle.stopped",
)
ATTRIBUTE_TO_ID: Dict[str, int] = {name: i for i, name in enumerate(ATTRIBUTES)}
NO_ATTRIBUTE = -1  # classes without attributes (barrier, traffic_cone) or unannotated

# The attribute exported for a class when nothing better is known (as mmdetection3d does for
# nuScenes submissions); '' means the class takes no attribute.
DEFAULT_ATTRIBUTE: Dict[str, str] = {
    "car": "vehicle.parked", "truck": "vehicle.parked", "bus": "vehicle.moving",
    "trailer": "vehicle.parked", "construction_vehicle": "vehicle.parked",
    "pedestrian": "pedestrian.moving", "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider", "traffic_cone": "", "barrier": "",
}

# ---------------------------------------------------------------------------------------------
# Sensor channels of the nuScenes rig
# ---------------------------------------------------------------------------------------------
LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_CHANNELS: tuple = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
    "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
RADAR_CHANNELS: tuple = (
    "RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT",
)
ALL_CHANNELS: tuple = (LIDAR_CHANNEL,) + CAMERA_CHANNELS + RADAR_CHANNELS


def modality_of(channel: str) -> str:
    """'lidar', 'camera' or 'radar' for a nuScenes channel name."""
    if channel.startswith("LIDAR"):
        return "lidar"
    if channel.startswith("CAM"):
        return "camera"
    if channel.startswith("RADAR"):
        return "radar"
    raise ValueError(f"unknown sensor channel {channel!r}")


# ---------------------------------------------------------------------------------------------
# Column layouts
# ---------------------------------------------------------------------------------------------
BOX_DIM = 9
BOX_COLUMNS: tuple = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")

# LiDAR points in a Frame: ego frame at the reference time, metres; intensity 0-255; ring index;
# time lag = t_ref - t_sweep in seconds (>= 0 for past sweeps).
LIDAR_COLUMNS: tuple = ("x", "y", "z", "intensity", "ring", "time_lag")
# Radar points in a Frame: ego frame at the reference time; rcs in dBsm; vx, vy the ego-motion
# compensated velocity rotated into the reference ego frame (m/s); time lag in seconds.
RADAR_COLUMNS: tuple = ("x", "y", "z", "rcs", "vx", "vy", "time_lag")


def wrap_angle(yaw: np.ndarray) -> np.ndarray:
    """Wrap angles (radians) to [-pi, pi)."""
    return (np.asarray(yaw) + np.pi) % (2.0 * np.pi) - np.pi


# ---------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------
@dataclass
class Boxes3D:
    """A set of 3D boxes in one frame.

    boxes: float64[N, 9] (x, y, z, l, w, h, yaw, vx, vy), frame given by ``frame``, metres, m/s
    labels: int64[N] index into CLASSES
    attributes: int64[N] index into ATTRIBUTES or NO_ATTRIBUTE
    scores: float32[N] confidence (1.0 for ground truth)
    num_lidar_pts, num_radar_pts: int64[N] points inside (ground truth only; -1 where unknown)
    tokens: per-box identifier (sample_annotation token for ground truth), may be empty strings
    instance_tokens: per-box track identifier, may be empty strings
    """

    boxes: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray
    scores: np.ndarray
    num_lidar_pts: np.ndarray
    num_radar_pts: np.ndarray
    tokens: List[str]
    instance_tokens: List[str]
    frame: str = "ego"

    def __post_init__(self) -> None:
        n = len(self.boxes)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(n, BOX_DIM)
        for name in ("labels", "attributes", "num_lidar_pts", "num_radar_pts"):
            arr = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1)
            if len(arr) != n:
                raise ValueError(f"Boxes3D.{name} has {len(arr)} entries for {n} boxes")
            setattr(self, name, arr)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(self.scores) != n or len(self.tokens) != n or len(self.instance_tokens) != n:
            raise ValueError(f"Boxes3D fields disagree on the number of boxes ({n})")
        if not np.all(np.isfinite(self.boxes[:, :7])):
            raise ValueError("Boxes3D: non-finite centre, size or yaw")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls, frame: str = "ego") -> "Boxes3D":
        return cls(np.zeros((0, BOX_DIM)), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0),
                   np.zeros(0), [], [], frame)

    def select(self, mask_or_index) -> "Boxes3D":
        """The subset given by a boolean mask or an index array."""
        idx = np.arange(len(self))[mask_or_index]
        return Boxes3D(self.boxes[idx], self.labels[idx], self.attributes[idx], self.scores[idx],
                       self.num_lidar_pts[idx], self.num_radar_pts[idx],
                       [self.tokens[i] for i in idx], [self.instance_tokens[i] for i in idx],
                       self.frame)

    def transformed(self, T_to_from: np.ndarray, frame: str) -> "Boxes3D":
        """The same boxes expressed in another frame.

        T_to_from: float64[4, 4] rigid transform from this set's frame to ``frame``. Boxes stay
        upright (roll and pitch are not part of the layout); the yaw is the azimuth of the rotated
        heading. Velocities are rotated, not translated.
        """
        R = T_to_from[:3, :3]
        out = self.boxes.copy()
        out[:, :3] = self.boxes[:, :3] @ R.T + T_to_from[:3, 3]
        # Rotate each heading vector and read its azimuth: for the pure yaw between ego and global
        # this adds the yaw; for a slightly tilted sensor frame (LiDAR calibration) it is what the
        # devkit's rotated quaternion projects to.
        heading = np.stack([np.cos(self.boxes[:, 6]), np.sin(self.boxes[:, 6]), np.zeros(len(self))], axis=1) @ R.T
        out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
        vel = np.concatenate([self.boxes[:, 7:9], np.zeros((len(self), 1))], axis=1)
        out[:, 7:9] = (vel @ R.T)[:, :2]
        return Boxes3D(out, self.labels, self.attributes, self.scores, self.num_lidar_pts,
                       self.num_radar_pts, list(self.tokens), list(self.instance_tokens), frame)


@dataclass
class CameraImage:
    """One camera's image in a Frame.

    image: uint8[H, W, 3] RGB; None when the camera is absent in this frame or images were not loaded
    present: the camera contributed an image to this frame (its file exists and reads)
    intrinsics: float64[3, 3] pinhole matrix of the (undistorted) image, pixels
    T_ego_from_cam: float64[4, 4] camera -> ego frame at the frame's reference time; includes the
        ego motion between the camera's own timestamp and the reference time
    timestamp: the image's own capture time, us
    """

    channel: str
    image: Optional[np.ndarray]
    intrinsics: np.ndarray
    T_ego_from_cam: np.ndarray
    timestamp: int
    width: int
    height: int
    present: bool = True
    token: str = ""
    filename: str = ""


@dataclass
class SensorStatus:
    """Per-channel outcome of synchronization for one frame.

    present: the channel contributed data to this frame
    offset_us: timestamp of the chosen (newest) message minus the reference time, us; None if no
        message was chosen
    token: the chosen sample_data token ('' when none)
    num_messages: messages aggregated (sweeps) and ``num_missing`` of them whose file was absent
    reason: why the channel is absent ('' when present)
    """

    present: bool
    offset_us: Optional[int]
    token: str = ""
    num_messages: int = 0
    num_missing: int = 0
    reason: str = ""


@dataclass
class Frame:
    """One synchronized, motion-compensated multi-sensor snapshot, in the ego frame at ``timestamp``.

    timestamp: reference (LiDAR) time, us
    lidar_points: float32[N, 6] (x, y, z, intensity, ring, time_lag s), ego frame at timestamp
    radar_points: float32[M, 7] (x, y, z, rcs, vx, vy, time_lag s), ego frame at timestamp, m/s
    cameras: one CameraImage per camera channel of the rig (absent ones have image None)
    T_global_from_ego: float64[4, 4] ego pose at timestamp
    ego_velocity: float64[3] ego velocity at timestamp in the ego frame, m/s
    gt: ground-truth boxes in the ego frame (only for annotated keyframes), else None
    status: per channel SensorStatus (presence, time offsets, missing counts)
    """

    timestamp: int
    scene_token: str
    sample_token: str
    lidar_token: str
    lidar_points: np.ndarray
    radar_points: np.ndarray
    cameras: List[CameraImage]
    T_global_from_ego: np.ndarray
    ego_velocity: np.ndarray
    gt: Optional[Boxes3D]
    status: Dict[str, SensorStatus] = field(default_factory=dict)

    def present(self, modality: str) -> bool:
        """Whether any channel of 'lidar', 'camera' or 'radar' contributed data."""
        return any(s.present for ch, s in self.status.items() if modality_of(ch) == modality)


@dataclass
class Detections:
    """Model output for one frame, ego frame at the frame's reference time.

    boxes: Boxes3D with scores, labels and attributes
    """

    sample_token: str
    timestamp: int
    boxes: Boxes3D


# Image normalization of the camera backbone (ImageNet statistics, RGB in [0, 1]).
IMAGE_MEAN: tuple = (0.485, 0.456, 0.406)
IMAGE_STD: tuple = (0.229, 0.224, 0.225)

# Modality order of Batch.modality_mask and of the fusion's modality embeddings.
MODALITIES: tuple = ("lidar", "camera", "radar")


@dataclass
class Batch:
    """A collated batch: the one input of the models (``models/`` never sees a Frame).

    Tensors are torch tensors on one device; lists hold one tensor per sample.
    lidar_points: B x float32[N_i, 6] (x, y, z, intensity, ring, time_lag s), ego frame, metres
    radar_points: B x float32[M_i, 7] (x, y, z, rcs dBsm, vx, vy m/s, time_lag s), ego frame
    images: float32[B, N, 3, H, W] RGB normalized with IMAGE_MEAN / IMAGE_STD, network input size
    intrinsics: float32[B, N, 3, 3] pinhole matrix of the original image, pixels
    img_aug: float32[B, N, 3, 3] original-image pixel (u, v, 1) -> network-input pixel (resize, crop, flip)
    T_ego_from_cam: float32[B, N, 4, 4] camera -> ego frame at the reference time, metres
    camera_mask: bool[B, N] camera present in the sample
    modality_mask: bool[B, 3] (lidar, camera, radar) present in the sample (MODALITIES order)
    ego_velocity: float32[B, 3] ego velocity in the ego frame, m/s
    gt_boxes: B x float32[K_i, 9] (x, y, z, l, w, h, yaw, vx, vy), ego frame; None at inference
    gt_labels: B x int64[K_i] class ids; gt_attributes: B x int64[K_i] attribute ids or -1
    sample_tokens, timestamps: per sample; T_global_from_ego: float64[B, 4, 4]
    depth_targets: float32[B, N, fH, fW] nearest LiDAR depth (camera z, metres) per camera feature cell,
        0 = no point; a training / evaluation signal only, never an encoder input; None without cameras
    targets: the head's training targets of the batch (ops.center_targets.HeadTargets, built from
        gt_* in the loader workers); None at evaluation and inference
    """

    lidar_points: list
    radar_points: list
    images: "object"
    intrinsics: "object"
    img_aug: "object"
    T_ego_from_cam: "object"
    camera_mask: "object"
    modality_mask: "object"
    ego_velocity: "object"
    gt_boxes: Optional[list] = None
    gt_labels: Optional[list] = None
    gt_attributes: Optional[list] = None
    sample_tokens: List[str] = field(default_factory=list)
    timestamps: List[int] = field(default_factory=list)
    T_global_from_ego: Optional[np.ndarray] = None
    depth_targets: Optional[object] = None
    targets: Optional[object] = None

    @property
    def batch_size(self) -> int:
        return len(self.lidar_points)

    def to(self, device) -> "Batch":
        """The batch with every tensor on ``device`` (non_blocking from pinned memory)."""
        def mv(x):
            if x is None:
                return None
            if isinstance(x, list):
                return [t.to(device, non_blocking=True) for t in x]
            return x.to(device, non_blocking=True)

        return Batch(mv(self.lidar_points), mv(self.radar_points), mv(self.images), mv(self.intrinsics),
                     mv(self.img_aug), mv(self.T_ego_from_cam), mv(self.camera_mask), mv(self.modality_mask),
                     mv(self.ego_velocity), mv(self.gt_boxes), mv(self.gt_labels), mv(self.gt_attributes),
                     list(self.sample_tokens), list(self.timestamps), self.T_global_from_ego,
                     mv(self.depth_targets), None if self.targets is None else self.targets.to(device))
