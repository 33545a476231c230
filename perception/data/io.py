"""Readers for the nuScenes sensor files, with one-line errors that name the file.

- LiDAR ``.pcd.bin``: raw little-endian float32, 5 values per point (x, y, z, intensity, ring),
  LIDAR_TOP sensor frame, metres.
- Radar ``.pcd``: PCD v0.7 ``DATA binary``, the 18 nuScenes fields packed in 43 bytes per point. The
  record count is the header's ``POINTS``: real files carry zero padding after the records.
- Camera ``.jpg``: RGB uint8.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import numpy as np

log = logging.getLogger(__name__)

LIDAR_NUM_COLUMNS = 5
LIDAR_POINT_BYTES = 4 * LIDAR_NUM_COLUMNS

RADAR_FIELDS: Tuple[str, ...] = (
    "x", "y", "z", "dyn_prop", "id", "rcs", "vx", "vy", "vx_comp", "vy_comp", "is_quality_valid",
    "ambig_state", "x_rms", "y_rms", "invalid_state", "pdh0", "vx_rms", "vy_rms",
)
RADAR_COLUMN = {name: i for i, name in enumerate(RADAR_FIELDS)}
# The fields of a radar return that reach the model (position, RCS, compensated velocity): a return
# with a NaN or inf in any of them is dropped.
RADAR_MODEL_FIELDS: Tuple[str, ...] = ("x", "y", "z", "rcs", "vx_comp", "vy_comp")
# The devkit's default state filters (RadarPointCloud.from_file): valid clusters, all dynamic
# properties but 'stopped', unambiguous Doppler. Kept here as values so that reading never touches
# the devkit's class-level filter state.
DEVKIT_RADAR_FILTERS = {"invalid_state": (0,), "dyn_prop": tuple(range(7)), "ambig_state": (3,)}


class SensorFileError(RuntimeError):
    """A sensor file is absent, truncated or unreadable; the message names the file."""


def read_lidar(path: str, drop_nonfinite: bool = True) -> np.ndarray:
    """LiDAR sweep -> float32[N, 5] (x, y, z, intensity, ring), sensor frame, metres.

    A file whose size is not a multiple of 20 bytes is truncated or not a nuScenes sweep: error.
    Points with NaN or inf coordinates are dropped with a warning (``drop_nonfinite``) or raise.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        raise SensorFileError(f"{path}: LiDAR file not found") from None
    if size % LIDAR_POINT_BYTES:
        raise SensorFileError(f"{path}: LiDAR file size {size} bytes is not a multiple of "
                              f"{LIDAR_POINT_BYTES} (truncated?)")
    pts = np.fromfile(path, dtype="<f4").reshape(-1, LIDAR_NUM_COLUMNS)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        if not drop_nonfinite:
            raise SensorFileError(f"{path}: {int(bad.sum())} LiDAR points with NaN or inf values")
        log.warning("%s: dropped %d LiDAR points with NaN or inf values", path, int(bad.sum()))
        pts = pts[~bad]
    return pts


def _parse_pcd_header(path: str, blob: bytes) -> Tuple[Dict[str, List[str]], int]:
    """PCD header fields and the byte offset where the data starts."""
    header: Dict[str, List[str]] = {}
    pos = 0
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise SensorFileError(f"{path}: radar PCD header has no DATA line")
        line = blob[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.upper()] = vals
        if key.upper() == "DATA":
            return header, pos


def radar_pcd_layout(path: str, blob: bytes) -> Tuple[np.dtype, int, int]:
    """(record dtype, number of records from POINTS, data offset) of a radar PCD file; validates
    the header against the nuScenes layout and the file size against POINTS."""
    header, offset = _parse_pcd_header(path, blob)
    if header.get("DATA") != ["binary"]:
        raise SensorFileError(f"{path}: radar PCD DATA is {header.get('DATA')}, expected binary")
    fields = tuple(header.get("FIELDS", ()))
    if fields != RADAR_FIELDS:
        raise SensorFileError(f"{path}: radar PCD FIELDS {' '.join(fields)} are not the 18 nuScenes fields")
    try:
        sizes = [int(s) for s in header["SIZE"]]
        types = header["TYPE"]
        count = int(header["POINTS"][0])
    except (KeyError, ValueError, IndexError):
        raise SensorFileError(f"{path}: radar PCD header lacks a valid SIZE, TYPE or POINTS") from None
    kinds = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4",
             ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4"}
    try:
        dtype = np.dtype([(n, kinds[(t, s)]) for n, t, s in zip(fields, types, sizes)])
    except KeyError:
        raise SensorFileError(f"{path}: radar PCD has an unsupported SIZE/TYPE combination") from None
    needed = offset + count * dtype.itemsize
    if count < 0 or len(blob) < needed:
        raise SensorFileError(f"{path}: radar PCD header says POINTS {count} ({needed} bytes) but the "
                              f"file has {len(blob)} bytes (truncated?)")
    return dtype, count, offset


def read_radar(path: str, default_filters: bool = False) -> np.ndarray:
    """Radar sweep -> float32[N, 18] (the RADAR_FIELDS columns), radar frame (x forward, y left), m, m/s.

    default_filters: keep only the returns the devkit keeps by default (DEVKIT_RADAR_FILTERS);
    off by default so that every return reaches the model. Returns with a NaN or inf in any of
    RADAR_MODEL_FIELDS (position, RCS, compensated velocity) are dropped with a warning.
    """
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        raise SensorFileError(f"{path}: radar file not found") from None
    dtype, count, offset = radar_pcd_layout(path, blob)
    rec = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
    out = np.stack([rec[name].astype(np.float32) for name in RADAR_FIELDS], axis=1) if count else \
        np.zeros((0, len(RADAR_FIELDS)), np.float32)
    if default_filters and len(out):
        keep = np.ones(len(out), bool)
        for name, allowed in DEVKIT_RADAR_FILTERS.items():
            keep &= np.isin(out[:, RADAR_COLUMN[name]], allowed)
        out = out[keep]
    bad = ~np.isfinite(out[:, [RADAR_COLUMN[n] for n in RADAR_MODEL_FIELDS]]).all(axis=1)
    if bad.any():
        log.warning("%s: dropped %d radar returns with NaN or inf values", path, int(bad.sum()))
        out = out[~bad]
    return out


def read_image(path: str) -> np.ndarray:
    """Camera image -> uint8[H, W, 3] RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SensorFileError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SensorFileError(f"{path}: unreadable image ({e.__class__.__name__}: {e})") from None
