#!/usr/bin/env python
"""Export the detector to ONNX (standard operators only) and check it against torch in ONNX Runtime.

    python tools/export.py CONFIG --checkpoint CKPT --out model.onnx [--dataroot DIR --version V]
                           [--scene NAME] [--frame K] [--set KEY=VALUE ...] [--no-check]

The graph runs from the network's inputs after the data path (pillar tensors with a dynamic count,
images, camera geometry, radar pillars, presence masks: perception/deploy/graph.py) to the head's maps;
decode stays in the shared post-processing. Opset 20, batch size 1, dynamic axes: the LiDAR and radar
pillar counts. It is traced on one real keyframe (default: the shared real scenes) and, unless
--no-check, run in ONNX Runtime on that frame with every sensor, without the LiDAR and without two
cameras: the largest |ONNX Runtime - torch| over the head maps and whether the decoded detections agree
are printed. Exit status: 0 done, 2 unusable arguments or inputs, 1 the check failed (diff > 1e-4).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REAL_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                          "data", "nuscenes-real", "trainval-extract"))
TOLERANCE = 1e-4


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("config", help="YAML config of the checkpoint")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--dataroot", default=REAL_ROOT, help="nuScenes-format root of the tracing frame")
    ap.add_argument("--version", default="v1.0-trainval")
    ap.add_argument("--scene", help="scene of the tracing frame (default: the root's last)")
    ap.add_argument("--frame", type=int, default=0, help="keyframe index in that scene")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    args = ap.parse_args(argv)

    import torch

    from perception.config import ConfigError, load_config
    from perception.data.nuscenes_source import DataRootError, NuScenesSource
    from perception.deploy.check import compare_backends
    from perception.deploy.export import ExportError, export_onnx
    from perception.engine.checkpoint import CheckpointError
    from perception.errors import one_line
    from perception.eval.evaluate import EvalError, build_detector

    torch.set_grad_enabled(False)
    try:
        cfg = load_config(args.config, args.set)
        source = NuScenesSource.from_config(args.dataroot, args.version, cfg)
        scene = args.scene or source.scene_names()[-1]
        from perception.sync.synchronizer import FrameBuilder

        fb = FrameBuilder(source, scene, cfg)
        if not 0 <= args.frame < len(fb.keyframe_references):
            ap.error(f"--frame must be in [0, {len(fb.keyframe_references)}) for {scene}")
        frame = fb.build(fb.keyframe_references[args.frame])
        model = build_detector(cfg, args.checkpoint).model.cpu().eval()
        from perception.data.batch import collate, frame_to_sample

        batch = collate([frame_to_sample(frame, cfg)])
        rep = export_onnx(model, batch, args.out)
    except (ConfigError, DataRootError, EvalError, CheckpointError, ExportError, OSError) as e:
        print(f"export: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {rep.path} ({rep.bytes / 1e6:.1f} MB), opset {rep.opset}, {len(rep.inputs)} inputs, "
          f"{len(rep.outputs)} outputs; ONNX checker passed; operators: {' '.join(rep.op_types)}")
    if args.no_check:
        return 0
    ok = True
    for case in compare_backends(model, frame, cfg, rep.path):
        ok &= case.max_abs_diff <= TOLERANCE and case.same_detections
        print(f"  {case.name:22s} max |onnxruntime - torch| {case.max_abs_diff:.2e} over the head maps; "
              f"detections {case.detections_torch} torch / {case.detections_ort} onnxruntime, "
              f"{'same classes, boxes within 1e-4' if case.same_detections else 'DIFFERENT'}; "
              f"torch {case.torch_ms:.0f} ms, onnxruntime {case.ort_ms:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
