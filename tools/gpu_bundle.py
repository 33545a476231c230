#!/usr/bin/env python
"""Pack what tools/gpu_check.py needs for a GPU machine that has no network and no ../shared.

    python tools/gpu_bundle.py [--out .] [--keyframes 12] [--no-wheels]

Writes two folders under --out (the repository root by default; add both to .git/info/exclude):

  .devdata/trainval-extract   a devkit-loadable copy of the real root: every table and map raster, the
                              last scene's first K keyframes (all channels; the inference and replay
                              parts use that scene) and the first 10 LIDAR_TOP keyframes in file order
                              (the kernels part stacks them). About 38 MB at K = 12.
  .whl                        Python 3.12 x86-64 wheels of the packages the project imports that a bare
                              CUDA image lacks (the devkit and its light dependencies), plus numba 0.68.1
                              and numpy 2.4.6: numba-cuda 0.30.4 registers np.row_stack, which numpy 2.5
                              removed, so it cannot compile a kernel beside numpy 2.5.

On the GPU machine (the project's checkout; `carry` both folders), first run this session:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD PERCEPTION_REAL_ROOT=$PWD/.devdata/trainval-extract \\
        python3 tools/gpu_check.py --mode gpu --out work/gpu_check

The image's own torch is used (no pins apply there). With network and ../shared, `make gpu-check` is
the one-line path instead.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys

from gpu_check import PROJECT, SHARED_REAL_ROOT as REAL_ROOT, VERSION  # tools/: the script's own folder
# The imports a bare CUDA image lacks (pure Python or abi3 wheels, except shapely and numba), and numpy.
WHEELS = ["nuscenes-devkit==1.2.0", "pyquaternion==0.9.9", "shapely==2.0.7", "descartes==1.1.0",
          "cachetools==5.5.2", "pycocotools==2.0.11", "mcap==1.6.0", "pymap3d==3.2.0", "fire==0.7.1",
          "termcolor==3.3.0", "parameterized==0.9.0", "motmetrics==1.4.0", "numba==0.68.1", "numpy==2.4.6"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def trim_real_root(dst: str, keyframes: int, lidar_files: int = 10) -> int:
    """Copy the real root's tables and maps and a few keyframes' files to dst; returns files copied."""
    from nuscenes.nuscenes import NuScenes

    if os.path.isdir(dst):
        shutil.rmtree(dst)
    for sub in (VERSION, "maps"):  # the devkit refuses a root whose map masks are missing
        shutil.copytree(os.path.join(REAL_ROOT, sub), os.path.join(dst, sub))
    nusc = NuScenes(VERSION, REAL_ROOT, verbose=False)
    files = set()
    token = nusc.scene[-1]["first_sample_token"]
    for _ in range(keyframes):
        sample = nusc.get("sample", token)
        files.update(nusc.get("sample_data", sd)["filename"] for sd in sample["data"].values())
        token = sample["next"]
        if not token:
            break
    lidar = sorted(glob.glob(os.path.join(REAL_ROOT, "samples", "LIDAR_TOP", "*.pcd.bin")))[:lidar_files]
    files.update(os.path.relpath(f, REAL_ROOT) for f in lidar)
    for f in sorted(files):
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copyfile(os.path.join(REAL_ROOT, f), os.path.join(dst, f))
    return len(files)


def download_wheels(dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *plat, "-d", dst, *WHEELS]
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=PROJECT)
    ap.add_argument("--keyframes", type=int, default=12, help="of the last scene (inference times 12 frames)")
    ap.add_argument("--no-wheels", action="store_true")
    a = ap.parse_args()
    n = trim_real_root(os.path.join(a.out, ".devdata", "trainval-extract"), a.keyframes)
    print(f"{n} sensor files copied to {os.path.join(a.out, '.devdata', 'trainval-extract')}")
    if not a.no_wheels:
        download_wheels(os.path.join(a.out, ".whl"))
        print(f"wheels in {os.path.join(a.out, '.whl')}: {len(glob.glob(os.path.join(a.out, '.whl', '*.whl')))}")


if __name__ == "__main__":
    main()
