#!/usr/bin/env python
"""Convert a nuScenes-format scene into a ROS recording, and write the rig file that reads it back.

    python tools/to_mcap.py --dataroot ROOT [--version V] --scene NAME --out drive.mcap [--rig drive.rig.yaml]

--out ends in .mcap (one MCAP file, ROS 2 types), .bag (ROS 1 bag) or .db3 / a folder (ROS 2 sqlite3
bag). Replay or check it with tools/replay.py / tools/doctor.py --recording OUT --rig RIG.
Exit status: 0 done, 2 unusable arguments or inputs.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataroot", required=True, help="nuScenes-format data root")
    ap.add_argument("--version", default="v1.0-trainval")
    ap.add_argument("--scene", required=True, help="scene name or token")
    ap.add_argument("--out", required=True, help="drive.mcap | drive.bag | drive.db3")
    ap.add_argument("--rig", help="rig file to write (default: OUT without suffix + .rig.yaml)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from perception.data.nuscenes_source import DataRootError, NuScenesSource
    from perception.data.to_recording import convert_scene
    from perception.errors import one_line
    from perception.sync.calibration import CalibrationError

    try:
        source = NuScenesSource(a.dataroot, a.version)
        info = convert_scene(source, a.scene, a.out, a.rig)
    except (DataRootError, CalibrationError, ValueError, OSError) as e:
        print(f"to_mcap: {one_line(e)}", file=sys.stderr)
        return 2
    n = sum(info["counts"].values())
    size = os.path.getsize(a.out) if os.path.isfile(a.out) else 0
    print(f"to_mcap: {a.scene} -> {a.out} ({n} messages, {size / 2**20:.1f} MiB; map {info['location']}, "
          f"origin {info['origin'][0]:.6f}, {info['origin'][1]:.6f}); rig file {info['rig']}")
    for topic, c in sorted(info["counts"].items()):
        print(f"   {topic:32s} {c:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
