"""Typed configuration: YAML files in ``configs/`` loaded into dataclasses.

- Every section is a dataclass; an unknown or misspelled key is a ``ConfigError`` naming the
  dotted key and the file it came from.
- A file may start from another with ``_base_: other.yaml`` (path relative to the file); its keys
  are merged over the base's, section by section.
- ``--set a.b=c`` overrides (``apply_overrides``) parse the value as YAML (``5``, ``[1, 2]``,
  ``true``) and are checked like file keys.
- Derived values (the BEV grid size from the range and the voxel size) are properties, never keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the file."""


@dataclass
class GridConfig:
    """The one BEV grid every encoder writes to.

    point_cloud_range: (x_min, y_min, z_min, x_max, y_max, z_max), ego frame, metres
    voxel_size: (dx, dy, dz) metres; a pillar grid has dz = z_max - z_min

    z is in the EGO frame (origin on the ground under the rear axle), not the LiDAR's: mmdet3d's
    [-5, 3] is a LIDAR_TOP-frame range (the sensor sits 1.84 m above the ground). On the real scenes
    ground-truth boxes reach from -1.26 m (downhill) to 6.27 m (4.1 m container trailers, uphill
    trucks); [-3, 7] holds all of them with margin (tools/doctor.py --config C counts those outside).
    """

    point_cloud_range: List[float] = field(default_factory=lambda: [-51.2, -51.2, -3.0, 51.2, 51.2, 7.0])
    voxel_size: List[float] = field(default_factory=lambda: [0.2, 0.2, 10.0])

    def validate(self, where: str) -> None:
        if len(self.point_cloud_range) != 6:
            raise ConfigError(f"{where}: grid.point_cloud_range needs 6 numbers, got {self.point_cloud_range}")
        if len(self.voxel_size) != 3 or min(self.voxel_size) <= 0:
            raise ConfigError(f"{where}: grid.voxel_size needs 3 positive numbers, got {self.voxel_size}")
        for axis in range(3):
            extent = self.point_cloud_range[axis + 3] - self.point_cloud_range[axis]
            if extent <= 0:
                raise ConfigError(f"{where}: grid.point_cloud_range max <= min on axis {'xyz'[axis]}")
            n = extent / self.voxel_size[axis]
            if abs(n - round(n)) > 1e-4:
                raise ConfigError(f"{where}: grid.voxel_size[{axis}]={self.voxel_size[axis]} does not "
                                  f"divide the range extent {extent:g} on axis {'xyz'[axis]}")

    @property
    def grid_size(self) -> Tuple[int, int, int]:
        """(nx, ny, nz) cells, round((max - min) / voxel_size) as mmcv computes it."""
        r, v = self.point_cloud_range, self.voxel_size
        return tuple(int(round((r[i + 3] - r[i]) / v[i])) for i in range(3))

    @property
    def bev_shape(self) -> Tuple[int, int]:
        """(H, W) = (ny, nx) of the BEV feature maps."""
        nx, ny, _ = self.grid_size
        return ny, nx


@dataclass
class SyncConfig:
    """Time synchronization and sweep aggregation.

    lidar_sweeps: LiDAR sweeps per frame, the reference one included
    radar_sweeps: sweeps per radar channel per frame
    lidar_window_us / radar_window_us: older messages than this before the reference are not used
    camera_match: 'trigger' (model the camera trigger by the LiDAR beam, see synchronizer) or
        'nearest' (plain nearest timestamp)
    lidar_period_us: duration of one LiDAR rotation (20 Hz in nuScenes)
    lidar_cut_azimuth_deg: azimuth in the LiDAR sensor frame (x right, y forward; degrees, counter-
        clockwise from +x) where a rotation ends, i.e. where the beam is at the sweep's timestamp
    lidar_spin: 'cw' or 'ccw' seen from above
    camera_tolerance_us: a camera image further than this from its expected trigger time is absent
    radar_tolerance_us: a radar message further than this from the reference time is absent
    max_pose_extrapolation_us: asking the pose stream for a time this far outside its span is an
        error (beyond it nothing is extrapolated)
    load_images: read camera JPEGs (False: geometry only, image None and present stays True)
    radar_default_filters: apply the devkit's default radar state filters (off: keep every return)
    lidar_remove_close: LiDAR points closer than this to the sensor (horizontal x-y distance in the
        LiDAR's own frame, metres) are dropped from every sweep, keyframe and past ones, before motion
        compensation: they are the car's own body and roof (real nuScenes: ~31% of a sweep, median
        0.22 m), which compensation would smear into a ghost trail behind the car. mmdet3d and
        CenterPoint's ``remove_close`` at 1 m. 0 keeps every point. Radar is not affected.
    """

    lidar_sweeps: int = 10
    radar_sweeps: int = 6
    lidar_window_us: int = 550_000
    radar_window_us: int = 550_000
    camera_match: str = "trigger"
    lidar_period_us: int = 50_000
    lidar_cut_azimuth_deg: float = 174.0
    lidar_spin: str = "cw"
    camera_tolerance_us: int = 25_000
    radar_tolerance_us: int = 60_000
    max_pose_extrapolation_us: int = 100_000
    load_images: bool = True
    radar_default_filters: bool = False
    lidar_remove_close: float = 1.0

    def validate(self, where: str) -> None:
        if not self.lidar_remove_close >= 0:
            raise ConfigError(f"{where}: sync.lidar_remove_close must be >= 0 metres (0: keep every point), "
                              f"got {self.lidar_remove_close}")
        if self.lidar_sweeps < 1 or self.radar_sweeps < 0:
            raise ConfigError(f"{where}: sync.lidar_sweeps must be >= 1 and sync.radar_sweeps >= 0")
        if self.camera_match not in ("trigger", "nearest"):
            raise ConfigError(f"{where}: sync.camera_match must be 'trigger' or 'nearest', "
                              f"got {self.camera_match!r}")
        if self.lidar_spin not in ("cw", "ccw"):
            raise ConfigError(f"{where}: sync.lidar_spin must be 'cw' or 'ccw', got {self.lidar_spin!r}")
        for name in ("lidar_window_us", "radar_window_us", "lidar_period_us", "camera_tolerance_us",
                     "radar_tolerance_us", "max_pose_extrapolation_us"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: sync.{name} must be >= 0")


@dataclass
class DataConfig:
    """Which channels a frame is built from (a channel left out is treated as absent)."""

    cameras: List[str] = field(default_factory=lambda: ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
                                                         "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"])
    radars: List[str] = field(default_factory=lambda: ["RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT",
                                                        "RADAR_BACK_LEFT", "RADAR_BACK_RIGHT"])
    use_lidar: bool = True

    def validate(self, where: str) -> None:
        from .structures import CAMERA_CHANNELS, RADAR_CHANNELS
        for ch in self.cameras:
            if ch not in CAMERA_CHANNELS:
                raise ConfigError(f"{where}: data.cameras has unknown channel {ch!r}")
        for ch in self.radars:
            if ch not in RADAR_CHANNELS:
                raise ConfigError(f"{where}: data.radars has unknown channel {ch!r}")


@dataclass
class LidarEncoderConfig:
    """PointPillars: pillar feature net on the config's grid, SECOND-style backbone + FPN neck.

    max_points_per_voxel / max_voxels: hard voxelization caps (training, inference)
    pfn_channels: widths of the pillar feature net layers
    backbone_layers / backbone_strides / backbone_channels: blocks per stage, stride of each stage's
        first conv, channels per stage
    neck_channels: channels of each upsampled stage before concatenation (the output has their sum
        projected to model.bev_channels at model.bev_stride)
    """

    max_points_per_voxel: int = 32
    max_voxels_train: int = 30000
    max_voxels_test: int = 40000
    pfn_channels: List[int] = field(default_factory=lambda: [64])
    backbone_layers: List[int] = field(default_factory=lambda: [3, 5, 5])
    backbone_strides: List[int] = field(default_factory=lambda: [2, 2, 2])
    backbone_channels: List[int] = field(default_factory=lambda: [64, 128, 256])
    neck_channels: List[int] = field(default_factory=lambda: [128, 128, 128])


@dataclass
class CameraEncoderConfig:
    """Lift-splat camera encoder.

    image_size: (H, W) network input size in pixels after resize/crop
    backbone: 'resnet18' | 'resnet34' | 'resnet50' (torchvision-compatible keys)
    backbone_width: channels of the first stage (64 for torchvision's; smaller for tiny CPU models,
        then ImageNet weights do not apply)
    pretrained: path to a local torchvision ResNet state dict ('' = random init); nothing downloads
    feature_stride: stride of the image features that are lifted (8 or 16)
    depth_bins: (min, max, step) metres of the depth distribution's bins
    channels: context channels per lifted point
    camera_aware: condition the depth net on each camera's intrinsics, image augmentation and
        mounting (BEVDepth's camera-aware depth net); false = BEVFusion's plain 1x1 depth conv
    depth_loss_weight: weight of the LiDAR-supervised depth loss (cross-entropy over the depth bins on
        feature cells a LiDAR point falls in; BEVDepth uses 3.0); 0 = no depth supervision. The
        LiDAR is a training signal only, never an input of the camera encoder.
    aux_head_weight: weight of an auxiliary detection loss on the camera's own BEV map (a second
        CenterHead trained on the same targets, localization terms only: heatmap, offset, height,
        size, yaw), so the camera branch is taught to find objects even when the LiDAR already
        answers the fused head; training only (the auxiliary head never runs at inference); 0 = none.
        Only samples that have a camera image take the loss.
    aux_detach_depth: the auxiliary head reads a second lift of the same image features whose depth
        distribution is detached, so its gradient trains the context features and the backbone but not
        the depth (which then learns from the depth loss and the fused head only); training only, one
        more splat and BEV-encoder pass per step; false = one shared lift.
    """

    image_size: List[int] = field(default_factory=lambda: [256, 704])
    backbone: str = "resnet18"
    backbone_width: int = 64
    pretrained: str = ""
    feature_stride: int = 16
    depth_bins: List[float] = field(default_factory=lambda: [1.0, 60.0, 1.0])
    channels: int = 80
    camera_aware: bool = True
    depth_loss_weight: float = 3.0
    aux_head_weight: float = 0.0
    aux_detach_depth: bool = False

    def validate(self, where: str) -> None:
        # checked before unpacking below: a short list would otherwise end in a bare unpacking error
        if len(self.depth_bins) != 3:
            raise ConfigError(f"{where}: model.camera.depth_bins needs 3 numbers (min, max, step), "
                              f"got {self.depth_bins}")
        if len(self.image_size) != 2:
            raise ConfigError(f"{where}: model.camera.image_size needs 2 numbers (H, W), got {self.image_size}")
        if self.backbone not in ("resnet18", "resnet34", "resnet50"):
            raise ConfigError(f"{where}: model.camera.backbone must be resnet18, resnet34 or resnet50, "
                              f"got {self.backbone!r}")
        if self.feature_stride not in (8, 16):
            raise ConfigError(f"{where}: model.camera.feature_stride must be 8 or 16")
        if not (self.depth_loss_weight >= 0):
            raise ConfigError(f"{where}: model.camera.depth_loss_weight must be >= 0, got {self.depth_loss_weight}")
        if not (self.aux_head_weight >= 0):
            raise ConfigError(f"{where}: model.camera.aux_head_weight must be >= 0, got {self.aux_head_weight}")
        lo, hi, step = self.depth_bins
        if not (0 < lo < hi and step > 0):
            raise ConfigError(f"{where}: model.camera.depth_bins must be (min > 0, max > min, step > 0)")
        for n in self.image_size:
            if n % 32:
                raise ConfigError(f"{where}: model.camera.image_size entries must be multiples of 32, "
                                  f"got {self.image_size}")

    @property
    def num_depth_bins(self) -> int:
        lo, hi, step = self.depth_bins
        return int(round((hi - lo) / step))


@dataclass
class RadarEncoderConfig:
    """Radar pillars on the fused BEV grid (cells of grid.voxel_size * model.bev_stride)."""

    max_points_per_voxel: int = 16
    max_voxels: int = 4000
    pfn_channels: List[int] = field(default_factory=lambda: [32])
    conv_channels: int = 64


@dataclass
class FusionConfig:
    """Local-window cross-attention fusion.

    window: k, each BEV query attends to the k x k neighbourhood of every present modality
    heads: attention heads; ffn_ratio: hidden width of the feed-forward / channels
    dropout_lidar / dropout_camera / dropout_radar: per-sample probability, in training, that a
        modality is hidden from the fusion (never all present ones at once)
    implementation: "reference" (stacked window copies) or "fast" (strided window views, 1x1 convs as matmuls); the same
        parameters and math (equal within 1e-5), so a checkpoint runs with either
    """

    window: int = 3
    heads: int = 4
    ffn_ratio: int = 2
    layers: int = 1
    dropout_lidar: float = 0.0
    dropout_camera: float = 0.0
    dropout_radar: float = 0.0
    implementation: str = "reference"


@dataclass
class HeadConfig:
    """CenterPoint-style head.

    tasks: class groups sharing a heatmap head (all 10 classes must appear once)
    loss weights: heatmap (focal) and each regression term (L1)
    min_radius / gaussian_overlap: heatmap target Gaussians (CenterPoint's radius rule)
    max_objects: regression targets per sample; top_k: peaks kept per sample in decoding
    score_threshold, nms_radius: decoding; nms_radius is per class (metres, circle NMS on centres)
    """

    tasks: List[List[str]] = field(default_factory=lambda: [
        ["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"],
        ["motorcycle", "bicycle"], ["pedestrian", "traffic_cone"]])
    channels: int = 64
    weight_heatmap: float = 1.0
    weight_offset: float = 1.0
    weight_height: float = 1.0
    weight_size: float = 1.0
    weight_yaw: float = 1.0
    weight_velocity: float = 0.2
    weight_attribute: float = 0.2
    min_radius: int = 2
    gaussian_overlap: float = 0.1
    max_objects: int = 500
    top_k: int = 500
    score_threshold: float = 0.1
    # metres, CLASSES order; the square roots of CenterPoint's nuScenes values (which it compares
    # with squared distances), except pedestrians and cones: with their 1 x 1 peaks (below) the cells
    # next to a peak are candidates too, and CenterPoint's 0.42 m let those duplicates through (they
    # fill the task's quota and take matches from better-centred boxes). 0.6 m still keeps two
    # pedestrians in neighbouring 0.8 m cells. Measured on two fusion_tiny checkpoints (README
    # "Detector recipe"): pedestrian AP 0.418 -> 0.444 and 0.401 -> 0.439. Previous: 0.42, 0.42.
    nms_radius: List[float] = field(default_factory=lambda: [2.0, 3.46, 3.16, 3.16, 3.46, 0.6, 0.92, 0.92, 0.6, 1.0])
    # Peak filter of the decoding, per class (CLASSES order): a peak must be the maximum of its k x k
    # cells. At 0.8 m cells a 3 x 3 filter cannot decode two pedestrians or cones in neighbouring
    # cells, so those take 1 (no suppression; the circle NMS still merges duplicates), as TransFusion
    # exempts them. All 3: the recipe before issue 15.
    peak_kernel: List[int] = field(default_factory=lambda: [3, 3, 3, 3, 3, 1, 3, 3, 1, 3])
    # Attributes are chosen among the class's own family (vehicle.*, pedestrian.*, cycle.*); false
    # is the recipe before issue 15 (argmax over all 8, an out-of-family winner dropped).
    attributes_in_family: bool = True
    # A front/back bin per box (PointPillars' direction classifier, binary cross-entropy with
    # weight_direction; SECOND uses 0.2): decoding turns the regressed yaw by 180 degrees where it
    # disagrees with the bin. false: yaw from the (sin, cos) regression alone.
    direction_classifier: bool = False
    weight_direction: float = 0.2
    # Decoding: a box of a moving class (vehicles, cycles, pedestrians) whose predicted speed is at
    # least this (m/s) gets, of the two headings on its regressed axis, the one along its velocity.
    # 0: off (the heading from the yaw regression and the direction bin alone).
    heading_min_speed: float = 0.0
    # Decoding: after NMS each task (heatmap head) keeps at most this many boxes, the best first, before
    # the sample's max_objects (CenterPoint's post_max_size 83 per task: 6 x 83 <= the devkit's 500).
    # Without it one class's flat low-score heatmap (pedestrians decoded with 1 x 1 peaks) fills all
    # 500 slots and pushes every other class's boxes out. 0: no quota (the recipe before it).
    max_per_task: int = 83


@dataclass
class DecoderConfig:
    """BEV decoder between the fusion and the head: SECOND stages + FPN neck back to the fused grid
    (BEVFusion's decoder). It widens the context after the fusion, whose window is a few cells, so
    that a camera feature lifted a few metres off can still be realigned with the LiDAR's.

    layers / strides / channels / neck_channels: as model.lidar's backbone, one entry per stage;
    empty lists: no decoder (the head reads the fused map, the recipe before issue 15)
    """

    layers: List[int] = field(default_factory=list)
    strides: List[int] = field(default_factory=list)
    channels: List[int] = field(default_factory=list)
    neck_channels: List[int] = field(default_factory=list)


@dataclass
class ModelConfig:
    """The detector: which modalities it uses, the fused BEV resolution, and each part.

    bev_stride: the fused BEV grid is grid.bev_shape / bev_stride; every encoder outputs it
    bev_channels: channels of every encoder's output and of the fused map
    """

    use_lidar: bool = True
    use_camera: bool = True
    use_radar: bool = True
    bev_stride: int = 4
    bev_channels: int = 128
    lidar: LidarEncoderConfig = field(default_factory=LidarEncoderConfig)
    camera: CameraEncoderConfig = field(default_factory=CameraEncoderConfig)
    radar: RadarEncoderConfig = field(default_factory=RadarEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def validate(self, where: str) -> None:
        if not (self.use_lidar or self.use_camera or self.use_radar):
            raise ConfigError(f"{where}: model uses no modality (use_lidar, use_camera, use_radar all false)")
        if self.bev_stride < 1 or self.bev_channels < 1:
            raise ConfigError(f"{where}: model.bev_stride and model.bev_channels must be >= 1")
        # The backbone zips these per stage: lists of different lengths would silently build fewer stages.
        stages = {name: len(getattr(self.lidar, name)) for name in
                  ("backbone_layers", "backbone_strides", "backbone_channels", "neck_channels")}
        if len(set(stages.values())) != 1:
            raise ConfigError(f"{where}: model.lidar.backbone_layers, backbone_strides, backbone_channels and "
                              f"neck_channels need one entry per stage each, got lengths "
                              f"{', '.join(f'{k}={v}' for k, v in stages.items())}")
        self.camera.validate(where)
        if self.fusion.implementation not in ("reference", "fast"):
            raise ConfigError(f"{where}: model.fusion.implementation must be reference or fast, "
                              f"got {self.fusion.implementation!r}")
        from .structures import CLASSES
        flat = [c for group in self.head.tasks for c in group]
        if sorted(flat) != sorted(CLASSES):
            raise ConfigError(f"{where}: model.head.tasks must list each of the 10 classes once, got {flat}")
        if len(self.head.nms_radius) != len(CLASSES):
            raise ConfigError(f"{where}: model.head.nms_radius needs one radius per class ({len(CLASSES)})")
        pk = self.head.peak_kernel
        if len(pk) != len(CLASSES) or any(k < 1 or k % 2 == 0 for k in pk):
            raise ConfigError(f"{where}: model.head.peak_kernel needs one odd kernel >= 1 per class "
                              f"({len(CLASSES)}, CLASSES order), got {pk}")
        for name in ("heading_min_speed", "weight_direction"):
            v = getattr(self.head, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{where}: model.head.{name} must be a finite number >= 0, got {v}")
        if not (isinstance(self.head.max_per_task, int) and self.head.max_per_task >= 0):
            raise ConfigError(f"{where}: model.head.max_per_task must be an integer >= 0 (0: no quota), "
                              f"got {self.head.max_per_task!r}")
        d = self.decoder
        lens = {name: len(getattr(d, name)) for name in ("layers", "strides", "channels", "neck_channels")}
        if len(set(lens.values())) != 1:
            raise ConfigError(f"{where}: model.decoder.layers, strides, channels and neck_channels need one entry "
                              f"per stage each, got lengths {', '.join(f'{k}={v}' for k, v in lens.items())}")
        if any(s < 1 or s & (s - 1) for s in d.strides) or any(n < 0 for n in d.layers) or \
                any(c < 1 for c in d.channels + d.neck_channels):
            raise ConfigError(f"{where}: model.decoder strides must be powers of 2, layers >= 0 and channels >= 1, "
                              f"got strides {d.strides}, layers {d.layers}")


@dataclass
class AugmentConfig:
    """Training augmentation (perception.engine.augment), drawn per sample from (seed, epoch, index).

    Global (one 4 x 4 transform G per sample, applied to LiDAR and radar points, radar and box
    velocities, boxes, the ego velocity and every camera's T_ego_from_cam, so images stay untouched):
    rot_range: (min, max) rotation about the ego z axis, radians
    scale_range: (min, max) uniform scale of the world; velocities scale with it (a world scaled by s
        moving in the same time moves s times as fast)
    flip_prob: probability of each of the two mirror flips (y -> -y, x -> -x), drawn independently
    translate_std: standard deviation of a global translation per axis (x, y, z), metres
    Per camera (the image augmentation matrix, original pixel -> network pixel):
    image_scale_jitter: (min, max) factor on the resize that fits the image width to the network input
    image_crop_jitter: (min, max) of the vertical crop position (0 bottom, 1 top of the margin). Test
        time always crops at the bottom (0), so training draws near it: [0, 0] is BEVFusion's
        (bot_pct_lim [0, 0]); a wider range trains on horizons the test never shows
    image_flip_prob: probability of a horizontal flip of each image, drawn per camera with the 3D labels
        untouched: a flipped side-on car shows its front where its back is, so the flip teaches the
        cameras that a car's look says nothing about its heading (the previous recipe)
    image_flip_with_mirror: flip every image exactly when G mirrors the world (one of flip_x, flip_y):
        a mirrored camera that also mirrors its image is a real (right-handed) camera looking at the
        mirrored scene, so what each camera shows agrees with the mirrored boxes' headings. Without it
        a mirror G leaves the images as they were and the cameras see un-mirrored cars labelled with
        mirrored headings half the time. Needs image_flip_prob 0 (an independent flip undoes it)
    """

    enabled: bool = True
    rot_range: List[float] = field(default_factory=lambda: [-0.3927, 0.3927])
    scale_range: List[float] = field(default_factory=lambda: [0.95, 1.05])
    flip_prob: float = 0.5
    translate_std: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    image_scale_jitter: List[float] = field(default_factory=lambda: [0.94, 1.11])
    image_crop_jitter: List[float] = field(default_factory=lambda: [0.0, 0.0])
    image_flip_prob: float = 0.5
    image_flip_with_mirror: bool = False

    def validate(self, where: str) -> None:
        for name in ("rot_range", "scale_range", "image_scale_jitter", "image_crop_jitter"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"{where}: train.augment.{name} must be (min, max) with min <= max, got {lo_hi}")
        if self.scale_range[0] <= 0 or self.image_scale_jitter[0] <= 0:
            raise ConfigError(f"{where}: train.augment.scale_range and image_scale_jitter must be > 0")
        if not (0.0 <= self.image_crop_jitter[0] and self.image_crop_jitter[1] <= 1.0):
            raise ConfigError(f"{where}: train.augment.image_crop_jitter must lie in [0, 1]")
        for name in ("flip_prob", "image_flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}: train.augment.{name} must be a probability in [0, 1]")
        if self.image_flip_with_mirror and self.image_flip_prob > 0:
            raise ConfigError(f"{where}: train.augment.image_flip_with_mirror flips the images with the world's "
                              f"mirror; image_flip_prob must be 0 with it (got {self.image_flip_prob}), an "
                              f"independent flip would undo that agreement")
        if len(self.translate_std) != 3 or min(self.translate_std) < 0:
            raise ConfigError(f"{where}: train.augment.translate_std needs 3 numbers >= 0")


@dataclass
class TrainConfig:
    """The training engine (perception.engine.trainer).

    split / val_split: devkit split names (nuscenes.utils.splits.create_splits_scenes())
    batch_size: samples per process and step (the global batch is batch_size x processes)
    num_workers: DataLoader worker processes per training process (0: load in the main process)
    epochs / max_steps: length of the run; max_steps > 0 overrides epochs (optimizer steps)
    optimizer: 'adamw' or 'sgd' (momentum 0.9); lr: peak learning rate; weight_decay: decoupled
        (AdamW) or L2 (SGD), applied to weights only, not to norms and biases
    schedule: 'onecycle' (pct_start of the run warming up), 'cosine' (linear warmup over
        warmup_steps, then cosine to lr * min_lr_ratio) or 'constant'
    grad_clip: max global gradient norm (0: off)
    amp: 'none', 'bf16' (CPU or GPU autocast) or 'fp16' (GPU only, with a GradScaler)
    seed: model init, sampler order, augmentation and every other random draw derive from it
    deterministic: deterministic algorithms and kernels (bitwise reproducible runs on CPU)
    checkpoint_every / keep_last: checkpoint every N optimizer steps (and at the end); keep the K newest
    log_every: JSON-lines and TensorBoard records every N steps
    loss_reduction: 'sample' (the mean of per-sample losses: the gradient does not depend on how the
        global batch is split over processes) or 'batch' (the model's loss over each process's batch)
    find_unused_parameters: DDP option; needed when a step may leave a parameter out of the graph
    sync_bn: under DDP, batch norm statistics over the global batch (SyncBatchNorm on GPU, an
        all-reduce batch norm on CPU)
    cache_dir: where the per-sample index is cached ('' : ``cache/`` beside the work dir)
    cbgs: class-balanced grouping and sampling (CenterPoint / BEVFusion's CBGS): each epoch repeats
        the samples holding each class so that every class present gets an equal share of the
        (sample, class) pairs; drawn from (seed, epoch), so resumable like the plain order
        (``engine.dataset.ClassBalancedSampler``). An epoch grows to about the number of
        (sample, class) pairs: several times the samples on nuScenes, so ``epochs`` buys that much more
    camera_lr_scale: the camera branch's peak learning rate (its encoder and its auxiliary head) as a
        multiple of ``lr``; every other parameter trains at ``lr`` (1: one rate for the whole model)
    """

    split: str = "train"
    val_split: str = "val"
    batch_size: int = 2
    num_workers: int = 2
    epochs: int = 20
    max_steps: int = 0
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    schedule: str = "onecycle"
    pct_start: float = 0.3
    warmup_steps: int = 0
    min_lr_ratio: float = 1e-3
    grad_clip: float = 35.0
    amp: str = "none"
    seed: int = 0
    deterministic: bool = False
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    loss_reduction: str = "sample"
    find_unused_parameters: bool = True
    sync_bn: bool = True
    cache_dir: str = ""
    cbgs: bool = False
    camera_lr_scale: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, where: str) -> None:
        choices = {"optimizer": ("adamw", "sgd"), "schedule": ("onecycle", "cosine", "constant"),
                   "amp": ("none", "bf16", "fp16"), "loss_reduction": ("sample", "batch")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}: train.{name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("batch_size", "epochs", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: train.{name} must be >= 1")
        for name in ("num_workers", "max_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: train.{name} must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"{where}: train.lr must be > 0, train.weight_decay and train.grad_clip >= 0")
        if not 0.0 < self.pct_start < 1.0:
            raise ConfigError(f"{where}: train.pct_start must be in (0, 1)")
        if not self.camera_lr_scale > 0:
            raise ConfigError(f"{where}: train.camera_lr_scale must be > 0, got {self.camera_lr_scale}")
        self.augment.validate(where)


@dataclass
class TrackClassConfig:
    """Tracker settings of one tracking class.

    gate_m: largest centre distance (metres, BEV, global frame) between a detection moved back by its
        velocity and a track's predicted centre for the two to be matched (CenterPoint's per-class
        NUSCENE_CLS_VELOCITY_ERROR)
    max_age: a track that goes this many consecutive frames unmatched is deleted; with fewer misses it
        is kept (not reported) and can be matched again with its ID (CenterPoint: 3)
    birth_score: an unmatched detection starts a new track from this score up (CenterPoint starts one
        from every detection the detector outputs: 0)
    """

    gate_m: float = 4.0
    max_age: int = 3
    birth_score: float = 0.0

    def validate(self, where: str, key: str) -> None:
        if not self.gate_m > 0:
            raise ConfigError(f"{where}: {key}.gate_m must be > 0, got {self.gate_m}")
        if self.max_age < 1:
            raise ConfigError(f"{where}: {key}.max_age must be >= 1, got {self.max_age}")
        if not 0.0 <= self.birth_score <= 1.0:
            raise ConfigError(f"{where}: {key}.birth_score must lie in [0, 1], got {self.birth_score}")


# One class per tracking class so that a YAML section that sets only some keys
# ('pedestrian: {max_age: 5}') keeps that class's own defaults for the others (a section is built
# from its dataclass's defaults, not merged over the parent's). Gates: CenterPoint's nuScenes values.
@dataclass
class CarTrackConfig(TrackClassConfig):
    gate_m: float = 4.0


@dataclass
class TruckTrackConfig(TrackClassConfig):
    gate_m: float = 4.0


@dataclass
class BusTrackConfig(TrackClassConfig):
    gate_m: float = 5.5


@dataclass
class TrailerTrackConfig(TrackClassConfig):
    gate_m: float = 3.0


@dataclass
class PedestrianTrackConfig(TrackClassConfig):
    gate_m: float = 1.0


@dataclass
class MotorcycleTrackConfig(TrackClassConfig):
    gate_m: float = 13.0


@dataclass
class BicycleTrackConfig(TrackClassConfig):
    gate_m: float = 3.0


@dataclass
class TrackingConfig:
    """The online tracker (perception.tracking): one section per nuScenes tracking class, with
    CenterPoint's nuScenes values as defaults (``TrackClassConfig``).

    matching: 'greedy' (closest pairs first) or 'hungarian' (scipy's linear_sum_assignment on the
        gated distances)
    """

    matching: str = "greedy"
    car: CarTrackConfig = field(default_factory=CarTrackConfig)
    truck: TruckTrackConfig = field(default_factory=TruckTrackConfig)
    bus: BusTrackConfig = field(default_factory=BusTrackConfig)
    trailer: TrailerTrackConfig = field(default_factory=TrailerTrackConfig)
    pedestrian: PedestrianTrackConfig = field(default_factory=PedestrianTrackConfig)
    motorcycle: MotorcycleTrackConfig = field(default_factory=MotorcycleTrackConfig)
    bicycle: BicycleTrackConfig = field(default_factory=BicycleTrackConfig)

    def validate(self, where: str) -> None:
        if self.matching not in ("greedy", "hungarian"):
            raise ConfigError(f"{where}: tracking.matching must be 'greedy' or 'hungarian', got {self.matching!r}")
        for name in self.class_names():
            getattr(self, name).validate(where, f"tracking.{name}")

    @staticmethod
    def class_names() -> Tuple[str, ...]:
        """The nuScenes tracking classes (the devkit's tracking_nips_2019 names), in CLASSES order."""
        return ("car", "truck", "bus", "trailer", "pedestrian", "motorcycle", "bicycle")


@dataclass
class Config:
    """The whole configuration; ``source`` is the file it was loaded from."""

    name: str = "default"
    grid: GridConfig = field(default_factory=GridConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: str = "<defaults>"

    def validate(self) -> "Config":
        for section in (self.grid, self.sync, self.data, self.model, self.train, self.tracking):
            section.validate(self.source)
        nx, ny, _ = self.grid.grid_size
        if nx % self.model.bev_stride or ny % self.model.bev_stride:
            raise ConfigError(f"{self.source}: model.bev_stride {self.model.bev_stride} does not divide the grid "
                              f"({nx} x {ny} cells)")
        H, W = self.bev_shape
        f = math.prod(self.model.decoder.strides)
        if H % f or W % f:
            raise ConfigError(f"{self.source}: model.decoder strides (product {f}) do not divide the fused BEV grid "
                              f"({H} x {W} cells)")
        return self

    @property
    def bev_shape(self) -> Tuple[int, int]:
        """(H, W) of the fused BEV feature maps: the grid's BEV shape / model.bev_stride."""
        H, W = self.grid.bev_shape
        return H // self.model.bev_stride, W // self.model.bev_stride

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _kind(tp: Any) -> str:
    """How a message names a value's type ('a number', 'a list', ...)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _kind(args[0]) if args else "a value"
    if origin in (list, List, Sequence, tuple):
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a value")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check and convert one YAML value to the annotated type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            got = "nothing" if value is None else f"{type(value).__name__} {value!r}"
            raise ConfigError(f"{where}: '{key}' is a section (a mapping of keys), got {got}")
        return _build(tp, value, key, where)
    if isinstance(value, dict):
        # sub-keys under a plain value (YAML 'lr: {x: 1}' or --set train.lr.x=1)
        raise ConfigError(f"{where}: '{key}' is {_kind(tp)}, not a section")
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key, where)
    if origin in (list, List, Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; a number is what anyone writing it meant
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        # .nan / .inf are YAML floats, but NaN passes every range check below (nan <= 0 is False)
        # and no setting here means anything by infinity
        if not math.isfinite(value):
            raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:  # `key:` / `--set key=`: the empty string (e.g. no pretrained weights)
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: Any, values: Dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in values.items():
        key_text = str(key)  # YAML keys may be numbers ('1: 2'); they are still just unknown keys
        dotted = f"{prefix}.{key_text}" if prefix else key_text
        if key not in names:
            close = difflib.get_close_matches(key_text, sorted(names), n=1, cutoff=0.6)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{dotted}'{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted, where)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last silently,
    so the first of two 'lr:' lines would be ignored without a word)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; the base constructor names that error
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml(path: str, seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.load(f, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = raw.pop("_base_", None)
    # Keys and types are checked per file, before merging, so an error names the file that holds
    # the key (a typo in a _base_ file is reported there, not in the file that inherits it).
    _build(Config, raw, "", path)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: _base_ must be a file name (relative to this file), got {base!r}")
    return _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), raw)


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """['a.b=3', 'c=[1, 2]'] -> nested dict with YAML-parsed values.

    Each pair is checked on its own against the config's keys and types first, so an error names
    the pair ('--set train.lr.x=1: 'train.lr' is a number, not a section'), and two pairs can never
    collide while nesting (a value under a plain value is refused before it is nested).
    """
    out: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {pair!r}: empty key or key part in {key.strip()!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        nested: Dict[str, Any] = {parts[-1].strip(): value}
        for p in reversed(parts[:-1]):
            nested = {p.strip(): nested}
        _build(Config, nested, "", f"--set {pair.strip()}")
        out = _merge(out, nested)
    return out


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw = _read_yaml(path) if path else {}
    where = os.path.abspath(path) if path else "<defaults>"
    cfg = _build(Config, raw, "", where)
    cfg.source = where
    if overrides:
        return apply_overrides(cfg, overrides)
    return cfg.validate()


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    merged = _merge(cfg.to_dict(), parse_overrides(overrides))
    out = _build(Config, merged, "", f"{cfg.source} (--set)")
    # A value that fails the cross-field checks may come from the file or from an override:
    # the message names both.
    out.source = f"{cfg.source} with --set {' '.join(o.strip() for o in overrides)}"
    try:
        out.validate()
    finally:
        out.source = cfg.source
    return out
