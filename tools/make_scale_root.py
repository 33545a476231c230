"""Write a nuScenes-sized data root cheaply: full-volume tables, sensor files hard-linked to a few small
templates (see perception.data.synthetic.scale). For rehearsing the data path at scale.

python tools/make_scale_root.py --out DIR [--train-samples 28130] [--val-samples 6019] [--files link|copy|none]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perception.data.synthetic.scale import (NUSCENES_TRAIN_SAMPLES, NUSCENES_VAL_SAMPLES,  # noqa: E402
                                             generate_scale_root)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data root to write (NuScenes(dataroot=OUT, version='v1.0-trainval'))")
    p.add_argument("--train-samples", type=int, default=NUSCENES_TRAIN_SAMPLES)
    p.add_argument("--val-samples", type=int, default=NUSCENES_VAL_SAMPLES)
    p.add_argument("--keyframes-per-scene", type=int, default=40)
    p.add_argument("--boxes-per-sample", type=float, default=34.0, help="annotations per keyframe, on average")
    p.add_argument("--files", default="link", choices=("link", "copy", "none"),
                   help="sensor files as hard links to templates, copies, or none (tables only)")
    p.add_argument("--lidar-points", type=int, default=2000, help="points of the LiDAR template")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    generate_scale_root(a.out, a.train_samples, a.val_samples, a.seed, a.keyframes_per_scene,
                        a.boxes_per_sample, a.files, a.lidar_points, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
