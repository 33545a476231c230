#!/usr/bin/env python
"""Train the fusion detector on any nuScenes-format root.

    python tools/train.py CONFIG --dataroot DIR --version VERSION --work-dir W [--max-steps N] [--resume]
                          [--set key=value ...]

One GPU or CPU: as above. Several GPUs on one machine:
    torchrun --nproc_per_node=G tools/train.py CONFIG ...
Several machines (run on each; see README):
    torchrun --nnodes=N --nproc_per_node=G --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=RUN tools/train.py CONFIG ...

Exit status: 0 done, 1 an unexpected error (a bug: its traceback is printed), 2 unusable arguments or data
(one-line message naming the file or field), 3 non-finite loss, 4 interrupted by SIGTERM (a checkpoint was
written: add --resume). Every error path stops the DataLoader workers first, so the process always ends.

Unreadable sensor files make that sensor absent in that frame; the run ends with a per-channel summary
(count and first paths, also in log.jsonl). --strict makes the first unreadable file an error instead.
--resume with more --max-steps than the saved run planned needs --extend (the schedule is re-planned
from the current step: a new warmup + anneal over the remaining steps).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (configs/fusion_tiny.yaml, configs/fusion_nuscenes.yaml)")
    p.add_argument("--dataroot", required=True, help="nuScenes-format root (holds VERSION/, samples/, sweeps/)")
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--work-dir", required=True, help="checkpoints, logs and TensorBoard go here")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps / train.epochs)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the work dir")
    p.add_argument("--extend", action="store_true",
                   help="with --resume and a larger --max-steps: re-plan the LR schedule over the added steps")
    p.add_argument("--strict", action="store_true", help="an unreadable sensor file is an error, not an absent sensor")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from perception.config import ConfigError, load_config
    from perception.data.io import SensorFileError
    from perception.data.nuscenes_source import DataRootError
    from perception.engine.checkpoint import CheckpointError
    from perception.engine.dataset import DataError
    from perception.engine.trainer import NonFiniteLossError, TrainingInterrupted, train
    from perception.errors import one_line
    from perception.sync.calibration import CalibrationError
    from perception.sync.pose import PoseError

    try:
        cfg = load_config(a.config, a.set)
        if a.max_steps is not None and a.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {a.max_steps}")
        if not os.path.isdir(a.dataroot):
            raise DataError(f"{a.dataroot}: data root not found")
        if not os.path.isdir(os.path.join(a.dataroot, a.version)):
            raise DataError(f"{os.path.join(a.dataroot, a.version)}: version folder not found")
        if a.extend and not a.resume:
            raise ConfigError("--extend continues a saved run: add --resume")
        train(cfg, a.dataroot, a.version, a.work_dir, max_steps=a.max_steps, resume=a.resume,
              progress=not a.no_progress, extend=a.extend, strict=a.strict)
    except (ConfigError, DataError, DataRootError, CheckpointError, CalibrationError, PoseError,
            SensorFileError) as e:
        print(f"train: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only work dir: the path and the reason
        print(f"train: error: {one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        print(f"train: {e}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
