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
    """

    point_cloud_range: List[float] = field(default_factory=lambda: [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0])
    voxel_size: List[float] = field(default_factory=lambda: [0.2, 0.2, 8.0])

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

    def validate(self, where: str) -> None:
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
class Config:
    """The whole configuration; ``source`` is the file it was loaded from."""

    name: str = "default"
    grid: GridConfig = field(default_factory=GridConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    data: DataConfig = field(default_factory=DataConfig)
    source: str = "<defaults>"

    def validate(self) -> "Config":
        for section in (self.grid, self.sync, self.data):
            section.validate(self.source)
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check and convert one YAML value to the annotated type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, where)
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: Any, values: Dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key '{dotted}'{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted, where)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: str, seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    return _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), raw)


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """['a.b=3', 'c=[1, 2]'] -> nested dict with YAML-parsed values."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw = _read_yaml(path) if path else {}
    where = os.path.abspath(path) if path else "<defaults>"
    cfg = _build(Config, raw, "", where)
    cfg.source = where
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg.validate()


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    merged = _merge(cfg.to_dict(), parse_overrides(overrides))
    out = _build(Config, merged, "", f"{cfg.source} (--set)")
    out.source = cfg.source
    return out.validate()
