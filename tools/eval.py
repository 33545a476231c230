#!/usr/bin/env python
"""Offline evaluation with the official nuScenes metrics.

    python tools/eval.py CONFIG --checkpoint CKPT --dataroot DIR --version VERSION --split SPLIT --out OUT
                         [--drop camera|lidar|radar|CHANNEL ...] [--robustness] [--batch-size N]
    python tools/eval.py CONFIG --oracle  --dataroot DIR ... --out OUT   # ground truth through the pipeline
    python tools/eval.py [CONFIG] --results FILE --dataroot DIR ... --out OUT   # an existing results file
    ... --tracking                   # also track the detections and evaluate the tracks (any of the three)
    ... --backend onnxruntime [--onnx FILE] [--compare-torch]   # the exported graph in ONNX Runtime
    ... --precision bf16             # the torch forward under bf16 autocast (fp16: GPU only), decode in fp32

Writes OUT/results_nusc.json (not with --results), OUT/metrics_summary.json, OUT/metrics_details.json,
OUT/plots/ (devkit) and OUT/report.md; with --robustness also OUT/robustness/<case>/ and OUT/robustness.json;
with --tracking also OUT/tracking/ (results_tracking.json, the devkit's tracking_nips_2019 metrics) and a
"Tracking" section in report.md. The oracle's tracker keeps missed tracks for the whole drive (see
perception/eval/tracking.py: ORACLE_MAX_AGE).
Shardable: torchrun --nproc-per-node N tools/eval.py ... (gloo on CPU, nccl on GPU); rank 0 writes.
Unreadable sensor files make that sensor absent in that frame and are listed (per channel: count, first
paths) on the console and in report.md's "Data problems"; --strict makes the first one an error instead.
Exit status: 0 done, 2 unusable arguments or inputs (one line naming the file or field).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perception.structures import ALL_CHANNELS  # noqa: E402

DROP_CHOICES = ("lidar", "camera", "radar") + ALL_CHANNELS


def _init_distributed():
    """Join the torchrun process group when launched by torchrun; returns True when it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("config", nargs="?", help="YAML config (defaults when left out; only with --results)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--checkpoint", help="model checkpoint to evaluate")
    mode.add_argument("--oracle", action="store_true",
                      help="evaluate the ground truth routed through the pipeline (self-check of conventions)")
    mode.add_argument("--results", metavar="FILE", help="evaluate an existing nuScenes results file, no model")
    ap.add_argument("--dataroot", required=True, help="nuScenes-format data root")
    ap.add_argument("--version", default="v1.0-trainval", help="table folder, e.g. v1.0-trainval or v1.0-mini")
    ap.add_argument("--split", default="val", help="split to evaluate (val, mini_val, ...)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--drop", nargs="+", action="extend", default=[], choices=DROP_CHOICES, metavar="SENSOR",
                    help="remove sensors at inference: lidar, camera, radar or channel names")
    ap.add_argument("--robustness", action="store_true",
                    help="also evaluate every sensor failure (each camera, each radar, all cameras, all radars, "
                         "lidar) and add the robustness table to the report")
    ap.add_argument("--batch-size", type=int, default=1, help="frames per detector call")
    ap.add_argument("--workers", type=int, default=None,
                    help="data loader worker processes per rank (default 2; 0: in the main process)")
    ap.add_argument("--cache-dir", default=None,
                    help="where the split's index is cached (default: train.cache_dir, else OUT/../cache)")
    ap.add_argument("--data-path", choices=("loader", "frames"), default="loader",
                    help="loader: DataLoader over the cached index, each frame read once for all --robustness "
                         "cases; frames: the reference path (frame by frame in the main process, every case "
                         "re-read); same results")
    # several pairs after one --set, as tools/train.py takes them; --set may also repeat
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--strict", action="store_true", help="an unreadable sensor file is an error, not an absent sensor")
    ap.add_argument("--no-plots", action="store_true", help="skip the devkit's PR and TP-error plots")
    ap.add_argument("--tracking", action="store_true",
                    help="run the tracker (config section 'tracking') over the detections of each scene in time "
                         "order and evaluate the tracks with the devkit's TrackingEval (tracking_nips_2019)")
    ap.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                    help="what runs the network: torch eager, or the ONNX export in ONNX Runtime (CPU, one frame "
                         "per run); both share voxelization, camera geometry and decode")
    ap.add_argument("--onnx", metavar="FILE", help="ONNX graph of the checkpoint for --backend onnxruntime "
                                                   "(default OUT/model.onnx, exported there when absent)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                    help="torch backend: fp32, or bf16 / fp16 autocast of the forward (bf16 on CPU or GPU, fp16 on "
                         "GPU only), maps decoded in float32 (perception/deploy/precision.py)")
    ap.add_argument("--compare-torch", action="store_true",
                    help="with --backend onnxruntime: also run torch on every frame and report the largest "
                         "head-map difference and the frames whose decoded classes differ")
    args = ap.parse_args(argv)
    # WARNING: the first unreadable file of each channel is logged when it happens (the rest are counted)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    if args.results and (args.drop or args.robustness):
        ap.error("--drop and --robustness need a model (--checkpoint) or --oracle, not --results")
    if args.robustness and args.drop:
        ap.error("--robustness runs every failure itself; leave out --drop")
    if (args.checkpoint or args.oracle) and not args.config:
        ap.error("CONFIG is required with --checkpoint and --oracle")
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        ap.error("--workers must be >= 0")
    if args.backend != "torch" and not args.checkpoint:
        ap.error("--backend onnxruntime needs --checkpoint")
    if (args.onnx or args.compare_torch) and args.backend == "torch":
        ap.error("--onnx and --compare-torch go with --backend onnxruntime")
    if args.precision != "fp32" and (args.backend != "torch" or not args.checkpoint):
        ap.error("--precision bf16/fp16 goes with a model (--checkpoint) on the torch backend")

    from perception.config import ConfigError, load_config
    from perception.data.nuscenes_source import DataRootError, NuScenesSource
    from perception.eval import evaluate as ev
    from perception.eval.export import ExportError
    from perception.eval.report import write_report
    from perception.data.io import SensorFileError
    from perception.engine.checkpoint import CheckpointError as TrainCheckpointError
    from perception.deploy.export import ExportError as OnnxExportError
    from perception.errors import one_line
    from perception.sync.calibration import CalibrationError
    from perception.sync.pose import PoseError

    from perception.deploy.backends import OnnxRuntimeDetector
    from perception.deploy.precision import PrecisionError

    distributed = _init_distributed()
    rank = ev.dist_rank_world()[0]
    detector = None
    try:
        cfg = load_config(args.config, args.set)
        if os.path.isdir(os.path.join(args.dataroot, args.version)):  # else the source names the bad root
            ev.check_split(args.dataroot, args.version, args.split)  # before loading tables or a model
        # radar read as training reads it (the index's plans carry the same flag)
        source = NuScenesSource.from_config(args.dataroot, args.version, cfg)
        ev.split_sample_tokens(source.nusc, args.split)  # a split with no samples here: fail before any model work
        out = os.path.abspath(args.out)
        render = not args.no_plots
        if args.results:
            summary = ev.evaluate_results(source.nusc, os.path.abspath(args.results), args.split, out,
                                          render_curves=render)
            results_path, meta, drop, rows = os.path.abspath(args.results), None, [], None
            problems = depth = None
            mode_text = "results file"
        else:
            if args.oracle:
                detector, mode_text = ev.OracleDetector(), "oracle (ground truth through the pipeline)"
            elif args.backend == "torch":
                detector, mode_text = ev.build_detector(cfg, args.checkpoint), "model"
                if args.precision != "fp32":
                    from perception.deploy.precision import check_precision

                    check_precision(args.precision, detector.device)
                    detector.model.precision = args.precision
                    mode_text = f"model, {args.precision} autocast"
            else:
                from perception.deploy.backends import build_backend_detector

                onnx_path = args.onnx or os.path.join(out, "model.onnx")
                detector = build_backend_detector(cfg, args.checkpoint, args.backend, onnx_path, args.compare_torch)
                mode_text = f"model, {args.backend} ({onnx_path})"
            from perception.eval.data import default_workers

            data = dict(data_path=args.data_path,
                        workers=default_workers() if args.workers is None else args.workers,
                        cache_dir=args.cache_dir or cfg.train.cache_dir or os.path.join(os.path.dirname(out), "cache"))
            rows = None
            if args.robustness:  # one pass over the data for the main run and every failure
                res = ev.run_robustness(detector, source, cfg, args.split, out, batch_size=args.batch_size,
                                        run_baseline=False, main=(out, [], render), strict=args.strict, **data)
                run, rows = res if res is not None else (None, None)
            else:
                run = ev.evaluate_detector(detector, source, cfg, args.split, out, drop=args.drop,
                                           batch_size=args.batch_size, render_curves=render, strict=args.strict,
                                           **data)
            if run is None:  # not rank 0
                return 0
            summary, results_path, meta, drop = run.summary, run.results_path, run.meta, run.drop
            problems, depth = run.problems, run.depth
        if rank != 0:
            return 0
        provenance = {
            "mode": mode_text,
            "config": cfg.source,
            "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None,
            "data root": os.path.abspath(args.dataroot),
            "version": args.version,
            "split": f"{args.split} ({len(ev.split_sample_tokens(source.nusc, args.split))} samples in this root)",
            "results": results_path,
            "sensors dropped": ", ".join(drop) or "none",
            "submission meta": ", ".join(k for k, v in (summary.get("meta") or meta or {}).items() if v) or "none",
        }
        tracking = None
        if args.tracking:
            from perception.eval import tracking as trk
            from perception.tracking import tracker_from_config

            tracker = tracker_from_config(cfg.tracking)
            if args.oracle:
                tracker = trk.oracle_tracker(tracker)
            tracking = trk.evaluate_tracking(source.nusc, results_path, args.split, os.path.join(out, trk.TRACKING_DIR),
                                             tracker, render_curves=render)
            provenance["tracker"] = (f"{tracker.matching} matching, gates and max_age per class from the config"
                                     + (f" (oracle: max_age {trk.ORACLE_MAX_AGE} frames)" if args.oracle else ""))
        report = write_report(out, summary, provenance, robustness=rows, problems=problems, depth=depth,
                              tracking=tracking)
    except (ev.EvalError, PrecisionError, ExportError, OnnxExportError, ConfigError, DataRootError, CalibrationError, PoseError, SensorFileError,
            TrainCheckpointError, OSError) as e:
        print(f"eval: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    for line in (problems.summary_lines() if problems is not None else []):
        print(f"eval: data problems: {line}", file=sys.stderr)
    if depth is not None:
        d = depth["all"]
        print(f"camera depth: AbsRel {d['abs_rel']:.4f}  RMSE {d['rmse']:.3f} m  delta<1.25 {d['delta1']:.4f}")
    if isinstance(detector, OnnxRuntimeDetector):
        print(f"eval: {detector.summary()}")
    print(f"mAP {summary['mean_ap']:.4f}  NDS {summary['nd_score']:.4f}  report: {report}"
          + (f"  ({problems.total()} unreadable file(s): see report)" if problems else ""))
    if tracking is not None:
        t = tracking.summary
        print(f"tracking: AMOTA {t['amota']:.4f}  AMOTP {t['amotp']:.4f}  MOTA {t['mota']:.4f}  IDS {t['ids']:.0f}  "
              f"recall {t['recall']:.4f}  tracker {tracking.tracker_ms:.2f} ms/sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
