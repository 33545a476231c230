#!/usr/bin/env python
"""Health check of a recorded drive (nuScenes format).

    python tools/doctor.py --dataroot DIR --version VERSION [--scene NAME] [--json OUT] [--keyframes-only]
    python tools/doctor.py --recording drive.mcap --rig rig.yaml [--json OUT]     (ROS 1/2 bag or MCAP)

Prints one line per problem and a per-channel summary, the share of LiDAR points within
sync.lidar_remove_close of the sensor, and a warning when ground-truth boxes leave the config's
grid.point_cloud_range in z (--config C: that config's grid; not a problem of the drive). Exit status: 0 nothing wrong, 1 problems
found (a malformed table and dangling tokens too), 2 unusable arguments (bad root, version,
scene or config).
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAX_LISTED = 20  # dangling-token lines printed; the rest as one count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataroot", help="nuScenes-format data root (or --recording)")
    ap.add_argument("--recording", help="a ROS 1 bag, ROS 2 bag or MCAP file, with --rig")
    ap.add_argument("--rig", help="rig file of the recording")
    ap.add_argument("--cache-dir", help="where a recording's sensor data are decoded to")
    ap.add_argument("--version", default="v1.0-trainval", help="table folder, e.g. v1.0-trainval or v1.0-mini")
    ap.add_argument("--scene", help="check only this scene (name or token)")
    ap.add_argument("--json", help="write the full report here (keyframe associations, channel stats, problems)")
    ap.add_argument("--config", help="YAML config (synchronizer settings); defaults otherwise")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--keyframes-only", action="store_true",
                    help="check only keyframe files (for keyframes-only copies of a drive)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")

    from perception.config import ConfigError, load_config
    from perception.data.doctor import run_doctor
    from perception.data.nuscenes_source import DataRootError

    if bool(args.dataroot) == bool(args.recording) or (args.recording and not args.rig):
        ap.error("give --dataroot, or --recording with --rig")
    from perception.sync.calibration import CalibrationError
    from perception.sync.gnss import GnssError
    from perception.sync.pose import PoseError

    try:
        cfg = load_config(args.config, args.set)
        if args.recording:
            from perception.data.recording import RecordingSource
            from perception.data.recording_doctor import run_recording_doctor

            report = run_recording_doctor(RecordingSource(args.recording, args.rig, args.cache_dir), cfg)
        else:
            report = run_doctor(args.dataroot, args.version, cfg, args.scene, args.keyframes_only)
    except (ConfigError, DataRootError, CalibrationError, PoseError, GnssError) as e:
        print(f"doctor: {e}", file=sys.stderr)
        return 2

    if not args.quiet:
        for name, sc in report["scenes"].items():
            print(f"== {name}: {sc['num_keyframes']} keyframes")
            print(f"   {'channel':18s} {'msgs':>5s} {'rate Hz':>8s} {'period ms':>9s} {'max gap ms':>10s} "
                  f"{'checked':>7s} {'missing':>7s} {'corrupt':>7s}")
            for ch, c in sc["channels"].items():
                fmt = lambda v: "-" if v is None else f"{v:.1f}"
                print(f"   {ch:18s} {c['count']:5d} {fmt(c['rate_hz']):>8s} {fmt(c['median_period_ms']):>9s} "
                      f"{fmt(c['max_interval_ms']):>10s} {c['files_checked']:7d} {c['missing_files']:7d} "
                      f"{c['corrupt_files']:7d}")
            for ch, c in sc["channels"].items():
                if c.get("points_read"):
                    print(f"   {ch}: {c['removed_close_fraction']:.1%} of {c['points_read']} points within "
                          f"{c['remove_close_m']:g} m of the sensor (dropped by sync.lidar_remove_close)")
    z = report.get("gt_z_range")
    if z and z["outside"]:
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(z["outside_by_class"].items(), key=lambda kv: -kv[1]))
        print(f"WARNING gt_z_range: {z['outside']} of {z['boxes']} ground-truth boxes leave grid.point_cloud_range "
              f"z [{z['z_range'][0]:g}, {z['z_range'][1]:g}] m of the config ({by_class}); boxes span "
              f"{z['lowest_bottom_m']:.2f} to {z['highest_top_m']:.2f} m in the ego frame")
    elif z and not args.quiet:
        print(f"   ground-truth boxes: all {z['boxes']} inside grid.point_cloud_range z "
              f"[{z['z_range'][0]:g}, {z['z_range'][1]:g}] m")
    shown: dict = {}
    for p in report["problems"]:
        # Dangling tokens come by the million from one broken table of full nuScenes: the first
        # MAX_LISTED, then one line with the count (the --json report holds them all).
        shown[p["kind"]] = shown.get(p["kind"], 0) + 1
        if p["kind"] != "dangling_token" or shown[p["kind"]] <= MAX_LISTED:
            print(f"PROBLEM {p['kind']}: {p['line']}")
    if shown.get("dangling_token", 0) > MAX_LISTED:
        print(f"PROBLEM dangling_token: {shown['dangling_token'] - MAX_LISTED} more dangling tokens "
              f"({shown['dangling_token']} in all{'; all in ' + args.json if args.json else ''})")
    if any(p["kind"] in ("malformed_table", "dangling_token") for p in report["problems"]):
        print("doctor: the tables are broken, so no scene was checked (the devkit cannot index this root)")
    if args.json:
        from perception.fileio import write_text_atomic

        write_text_atomic(json.dumps(report, indent=1, sort_keys=True), args.json)
    n = len(report["problems"])
    print(f"doctor: {n} problem{'s' if n != 1 else ''} in {len(report['scenes'])} scene(s)"
          + (f"; report in {args.json}" if args.json else ""))
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
