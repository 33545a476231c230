"""tools/gpu_check.py in its CPU mode (what CI can run): every part runs and passes, a kernel that
disagrees with its reference fails the check, a part past its time limit is killed and recorded
without stopping the others, and the comparison helpers cannot pass on nothing.

Kept short for CI: the inference, train and replay parts run with --quick (micro model, 2 s drive);
the kernels part runs in the two injection runs, each of which must fail the injected kernel's
CUDA check and pass every other check (so the other kernel's checks pass in each run)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import require_real_root

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(PROJECT, "tools", "gpu_check.py")
sys.path.insert(0, os.path.join(PROJECT, "tools"))

import gpu_check as gc  # noqa: E402


def run_check(out, *args, env=None, timeout=900):
    e = dict(os.environ)
    e.pop(gc.INJECT_ENV, None)
    e.update(env or {})
    r = subprocess.run([sys.executable, SCRIPT, "--mode", "cpu", "--out", str(out), *args], cwd=PROJECT, env=e,
                       capture_output=True, text=True, timeout=timeout)
    path = os.path.join(out, "gpu_check.json")
    summary = json.load(open(path)) if os.path.isfile(path) else None
    return r, summary


def test_cpu_mode_runs_every_part(tmp_path):
    """Every part but the kernels (see test_a_kernel_disagreeing_with_its_reference_fails), on the
    trimmed real root that tools/gpu_bundle.py packs for a GPU machine without ../shared."""
    require_real_root()
    import gpu_bundle

    bundle = str(tmp_path / "bundle")
    gpu_bundle.trim_real_root(bundle, keyframes=2)
    parts = [p for p in gc.PARTS if p != "kernels"]
    assert len(parts) == len(gc.PARTS) - 1
    r, s = run_check(tmp_path / "out", "--quick", "--parts", *parts, env={"PERCEPTION_REAL_ROOT": bundle})
    assert s is not None, r.stdout[-3000:] + r.stderr[-3000:]
    failed = {n: [c for c in p["checks"] if not c["ok"]] or p.get("error") for n, p in s["parts"].items()
              if p["status"] != "passed"}
    assert r.returncode == 0 and s["status"] == "passed", (failed, r.stdout[-3000:])
    assert s["mode"] == "cpu" and s["quick"] is True and list(s["parts"]) == parts and s["real_root"] == bundle
    for name, part in s["parts"].items():
        assert part["checks"] and all(c["ok"] for c in part["checks"]), name
        assert part["process_wall_s"] <= part["limit_s"]
    t = s["parts"]["train"]["metrics"]
    assert t["quick"] is True
    assert t["resume"]["resumed_at_step"] == t["steps"] // 2 and t["torchrun"]["backend"] == "gloo"
    assert s["parts"]["inference"]["metrics"]["configs"]["tiny"]["agreement"]["boxes_compared"] > 0
    assert "where the time went" in r.stdout and "total" in r.stdout
    md = open(os.path.join(tmp_path, "out", "gpu_check.md")).read()
    assert md.startswith("# GPU check (cpu mode): passed") and "## Where the time went" in md


@pytest.mark.parametrize("kernel", ["hard_voxelize", "bev_pool"])
def test_a_kernel_disagreeing_with_its_reference_fails(tmp_path, kernel):
    """Also the kernels part's run of the CPU mode: every check but the injected kernel's passes."""
    require_real_root()
    r, s = run_check(tmp_path, "--parts", "kernels", env={gc.INJECT_ENV: kernel})
    assert r.returncode == 1 and s["status"] == "failed" and s["injected"] == kernel
    assert s["mode"] == "cpu" and list(s["parts"]) == ["kernels"]
    k = s["parts"]["kernels"]
    assert "error" not in k and k["process_wall_s"] <= k["limit_s"]  # it ran to the end, in time
    # the kernels really ran under the simulator, on both voxelization tables, and through the torch shim
    assert k["metrics"]["cudasim"] is True
    checks = k["checks"]
    names = " ".join(c["name"] for c in checks)
    for needed in ("hard_voxelize[pillars_dense] cuda", "hard_voxelize[grid3d_hash] cuda", "torch interop",
                   "dynamic_voxelize", "bev_pool cuda forward", "bev_pool cuda backward", "circle_nms",
                   "rotated_nms_bev"):
        assert needed in names, needed
    bad = [c["name"] for c in checks if not c["ok"]]
    assert bad and all(c["name"].startswith(kernel) for c in checks if not c["ok"]), bad
    # only the CUDA side was corrupted: the CPU kernels still agree with their references
    assert all(c["ok"] for c in checks if "numba CPU ==" in c["name"] and c["name"].startswith(kernel))


def test_a_part_past_its_limit_is_killed_and_recorded(tmp_path):
    os.makedirs(tmp_path / "logs")
    os.makedirs(tmp_path / "parts")
    r = gc._run_part_process("train", "cpu", str(tmp_path), 1, {})
    assert r["status"] == "failed" and "time limit 1 s" in r["error"] and r["process_wall_s"] < 30


def test_comparisons_cannot_pass_on_nothing():
    from perception.structures import Boxes3D, Detections

    a = np.arange(6, dtype=np.float32)
    b = a.copy()
    b[3] = np.nextafter(b[3], np.float32(10))  # one ulp
    assert gc.compare_exact([a], [a.copy()])["equal"]
    assert gc.compare_exact([b], [a])["mismatched_elements"] == 1
    assert not gc.compare_exact([a[:5]], [a])["equal"]
    assert gc.compare_close(b, a, 1e-5)["close"] and not gc.compare_close(b + 1e-3, a, 1e-5)["close"]

    def dets(xy, scores):
        n = len(scores)
        boxes = np.zeros((n, 9))
        boxes[:, :2] = xy
        boxes[:, 3:6] = 1.0
        return Detections("s", 0, Boxes3D(boxes, np.zeros(n, np.int64), np.full(n, -1), np.asarray(scores, np.float32),
                                          np.full(n, -1), np.full(n, -1), [""] * n, [""] * n, "ego"))

    empty = dets(np.zeros((0, 2)), [])
    assert not gc.compare_detections([empty], [empty])["agree"]  # nothing compared is no agreement
    x = dets([[1.0, 2.0], [5.0, 5.0]], [0.9, 0.5])
    assert gc.compare_detections([x], [dets([[1.0, 2.0005], [5.0, 5.0]], [0.9, 0.5])], threshold=0.1)["agree"]
    assert not gc.compare_detections([x], [dets([[1.0, 2.01], [5.0, 5.0]], [0.9, 0.5])], threshold=0.1)["agree"]
    assert not gc.compare_detections([x], [dets([[1.0, 2.0]], [0.9])], threshold=0.1)["agree"]
