#!/usr/bin/env python
"""Replay a recorded drive through the streaming synchronizer and the model, with visualization.

    python tools/replay.py --dataroot DIR --version VERSION --scene NAME [--config C --checkpoint CKPT]
                           [--out OUT.mp4] [--headless] [--realtime | --speed X] [--drop-sensor CHANNEL ...]
                           [--max-frames N] [--reference available|keyframes|all] [--png-dir DIR]
                           [--backend torch|onnxruntime [--onnx FILE]]

Without --checkpoint it is a data viewer (sensors and ground truth). With one, the online tracker (the
config's 'tracking' section) runs on the detections as they stream: track IDs and short trails in the
cameras, the BEV panel and the 3D view, and the tracks in OUT.json (--no-track turns it off). With a display and without
--headless: an interactive open3d window (space: pause/play, N: step, +/-: speed, Q/Esc: quit) beside
the dashboard. With --headless or no display: offscreen rendering into OUT.mp4 (mp4v), OUT.json
(one record per frame: detections, tracks, sensor status, stage timings) and optional PNGs.
References: every LiDAR message whose file exists (default; the keyframes on roots without sweep
files), --reference keyframes, or --reference all. Exit status: 0 done, 2 unusable arguments or inputs.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perception.structures import ALL_CHANNELS  # noqa: E402

DROP_CHOICES = ("lidar", "camera", "radar") + ALL_CHANNELS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--dataroot", help="nuScenes-format data root (or --recording)")
    ap.add_argument("--recording", help="a ROS 1 bag, ROS 2 bag or MCAP file (with --rig) instead of --dataroot")
    ap.add_argument("--rig", help="rig file of the recording (topics -> channels; perception/data/recording.py)")
    ap.add_argument("--cache-dir", help="where a recording's sensor data are decoded to (default: under the temp dir)")
    ap.add_argument("--foxglove", metavar="OUT.mcap", help="also write an MCAP with Foxglove schemas (boxes, clouds, images, /tf)")
    ap.add_argument("--version", default="v1.0-trainval", help="table folder, e.g. v1.0-trainval")
    ap.add_argument("--scene", help="scene name (scene-0916) or token (a recording: its one scene)")
    ap.add_argument("--config", help="YAML config (sync settings; the model's when --checkpoint is given)")
    ap.add_argument("--checkpoint", help="model checkpoint; without it: sensors and ground truth only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out", help="video file OUT.mp4 (OUT.json beside it); default replay_<scene>.mp4 when headless")
    ap.add_argument("--png-dir", help="also write every --png-every-th frame as PNG here")
    ap.add_argument("--png-every", type=int, default=1)
    ap.add_argument("--headless", action="store_true", help="no window, even with a display")
    pace = ap.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="pace playback by the recorded clock")
    pace.add_argument("--speed", type=float, help="pace playback at X times the recorded clock")
    ap.add_argument("--drop-sensor", nargs="+", action="extend", default=[], choices=DROP_CHOICES,
                    metavar="CHANNEL", help="simulate failed sensors: channel names or lidar/camera/radar")
    ap.add_argument("--max-frames", type=int, help="stop after N frames")
    ap.add_argument("--reference", default="available", choices=("available", "keyframes", "all"),
                    help="which LiDAR messages make frames (default: those whose file exists)")
    ap.add_argument("--renderer", default="auto", choices=("auto", "open3d", "software"), help="3D panel renderer")
    ap.add_argument("--color-by", default="height", choices=("height", "intensity"), help="LiDAR point colours")
    ap.add_argument("--strict", action="store_true", help="an unreadable sensor file is an error, not an absent sensor")
    ap.add_argument("--min-score", type=float, default=0.25, help="draw predictions from this score up (all are logged)")
    ap.add_argument("--video-fps", type=float, help="video frame rate (default: the recorded reference rate)")
    ap.add_argument("--no-track", action="store_true", help="do not run the tracker on the detections")
    ap.add_argument("--trail", type=int, default=10, metavar="N", help="past centres drawn per track (default 10)")
    ap.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                    help="what runs the network: torch eager or the ONNX export in ONNX Runtime (CPU)")
    ap.add_argument("--onnx", metavar="FILE", help="ONNX graph of the checkpoint for --backend onnxruntime "
                                                   "(default: the video's name with .onnx, exported there when absent)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from perception.config import ConfigError, load_config
    from perception.data.nuscenes_source import DataRootError, NuScenesSource
    from perception.replay import Player, ReplayOptions
    from perception.replay.player import has_display
    from perception.data.io import SensorFileError
    from perception.errors import one_line
    from perception.sync.calibration import CalibrationError
    from perception.sync.gnss import GnssError
    from perception.sync.pose import PoseError

    if a.speed is not None and a.speed <= 0:
        ap.error("--speed must be > 0")
    if a.max_frames is not None and a.max_frames < 1:
        ap.error("--max-frames must be >= 1")
    if a.trail < 1:
        ap.error("--trail must be >= 1")
    if a.checkpoint and not a.config:
        ap.error("--checkpoint needs --config (the model's architecture)")
    if a.backend != "torch" and not a.checkpoint:
        ap.error("--backend onnxruntime needs --checkpoint")
    if bool(a.dataroot) == bool(a.recording):
        ap.error("give one of --dataroot (with --scene) or --recording (with --rig)")
    if a.dataroot and not a.scene:
        ap.error("--dataroot needs --scene")
    if a.recording and not a.rig:
        ap.error("--recording needs --rig (the rig file: which topic is which channel)")
    headless = a.headless or not has_display()
    out = a.out or (f"replay_{a.scene}.mp4" if headless else None)
    try:
        cfg = load_config(a.config, a.set)
        if a.recording:
            from perception.data.recording import RecordingSource

            source = RecordingSource(a.recording, a.rig, a.cache_dir,
                                     radar_default_filters=cfg.sync.radar_default_filters)
            a.scene = a.scene or source.name
            if not a.out:
                out = f"replay_{a.scene}.mp4" if headless else None
        else:
            source = NuScenesSource.from_config(a.dataroot, a.version, cfg)
        source.scene(a.scene)
        detector = None
        if a.checkpoint:
            from perception.deploy.backends import build_backend_detector
            from perception.deploy.export import ExportError
            from perception.eval.evaluate import EvalError

            onnx_path = a.onnx or os.path.splitext(out or f"replay_{a.scene}")[0] + ".onnx"
            try:
                detector = build_backend_detector(cfg, a.checkpoint, a.backend, onnx_path)
            except (EvalError, ExportError) as e:
                print(f"replay: {e}", file=sys.stderr)
                return 2
    except (ConfigError, DataRootError, CalibrationError, PoseError, GnssError) as e:
        print(f"replay: {one_line(e)}", file=sys.stderr)
        return 2
    opts = ReplayOptions(reference=a.reference, speed=1.0 if a.realtime else a.speed, drop=a.drop_sensor,
                         max_frames=a.max_frames, out_video=out,
                         out_json=os.path.splitext(out)[0] + ".json" if out else None,
                         png_dir=a.png_dir, png_every=a.png_every, headless=headless, renderer=a.renderer,
                         color_by=a.color_by, video_fps=a.video_fps,
                         min_score=a.min_score, track=not a.no_track, trail_length=a.trail,
                         out_foxglove=a.foxglove)
    try:
        player = Player(source, a.scene, cfg, detector, opts)
        player.builder.missing.strict = a.strict
        s = player.run()
    except (ConfigError, DataRootError, CalibrationError, PoseError, SensorFileError, OSError) as e:
        print(f"replay: {one_line(e)}", file=sys.stderr)
        return 2
    if hasattr(detector, "summary"):
        print(detector.summary())
    stages = " ".join(f"{k} {v:.1f}" for k, v in s.mean_ms.items() if v > 0)
    print(f"replay {a.scene}: {s.frames} frames in {s.wall_s:.1f} s = {s.fps:.2f} fps; 3D: {s.renderer}")
    print(f"mean ms per frame: {stages}")
    print(f"memory: RSS {s.rss_mb_first:.0f} MiB after the first frame, {s.rss_mb_last:.0f} MiB after the last; "
          f"largest sync buffer {max(s.max_buffered.values())} messages")
    if s.video:
        print(f"video: {s.video} {s.video_size[0]}x{s.video_size[1]}" if s.video_size else f"video: {s.video} (empty)")
    if s.json:
        print(f"log: {s.json}")
    if a.foxglove:
        print(f"foxglove: {a.foxglove} (open it in Foxglove Studio: File > Open local file)")
    for line in (s.problems.summary_lines() if s.problems else []):
        print(f"data problems: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
