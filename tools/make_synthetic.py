"""Write a synthetic nuScenes-format data root (see perception.data.synthetic).

python tools/make_synthetic.py --out DIR --preset {default,full,tiny} --seed S [--train-scenes N] [--val-scenes M]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perception.data.synthetic import Failures, generate, preset  # noqa: E402
from perception.data.synthetic.generator import PRESETS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data root to write (NuScenes(dataroot=OUT, version='v1.0-trainval'))")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-scenes", type=int)
    p.add_argument("--val-scenes", type=int)
    p.add_argument("--duration", type=float, help="seconds per scene")
    p.add_argument("--workers", type=int, help="parallel processes (default: the preset's)")
    g = p.add_argument_group("failure injection")
    g.add_argument("--drop-rate", type=float, default=0.0, help="probability to lose a non-keyframe message")
    g.add_argument("--kill-camera", nargs=3, metavar=("CHANNEL", "START_S", "END_S"))
    g.add_argument("--lidar-blackout", nargs=2, type=float, metavar=("START_S", "END_S"))
    g.add_argument("--timestamp-jitter-us", type=int, default=0)
    g.add_argument("--corrupt-files", type=int, default=0)
    a = p.parse_args(argv)
    failures = Failures(drop_rate=a.drop_rate,
                        kill_camera=(a.kill_camera[0], float(a.kill_camera[1]), float(a.kill_camera[2])) if a.kill_camera else None,
                        lidar_blackout=tuple(a.lidar_blackout) if a.lidar_blackout else None,
                        timestamp_jitter_us=a.timestamp_jitter_us, corrupt_files=a.corrupt_files)
    cfg = preset(a.preset, train_scenes=a.train_scenes, val_scenes=a.val_scenes, duration_s=a.duration,
                 workers=a.workers, failures=failures)
    generate(a.out, cfg, seed=a.seed, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
