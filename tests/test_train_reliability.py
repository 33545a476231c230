"""Training that fails, is extended, or resumed in the wrong place: it always exits, promptly, with
one line naming what is wrong, and a kill inside a checkpoint write loses nothing.

- an exception mid-epoch with 2 persistent loader workers (which ignore SIGTERM) exits in seconds;
- --resume past a finished one-cycle plan: one line with the two ways forward; --extend re-plans;
- --resume with a checkpoint of another config: one line naming the checkpoint and the key;
- a full disk while writing a checkpoint: one line naming the checkpoint, the previous ones intact;
- SIGKILL inside the checkpoint write, then --resume: bitwise the uninterrupted run's weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from perception.engine import checkpoint as ckpt

from conftest import PROJECT
from test_engine import CONFIG, ENGINE, PY, _train_tool, records, root, run_train, states  # noqa: F401

# A script that runs tools/train.py with one function of the trainer replaced: the failure is
# injected into the real training process (with its real loader workers), not into a mock.
RUNNER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {project!r})
    sys.path.insert(0, os.path.join({project!r}, "tools"))
    import perception.engine.trainer as trainer
    import perception.engine.checkpoint as ckpt
    mode, mark = sys.argv[1], sys.argv[2]
    calls = {{"n": 0}}
    if mode == "raise":
        real = trainer.compute_losses

        def failing(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:  # mid-epoch: the workers are busy prefetching the next batches
                with open(mark, "w") as f:
                    f.write(repr(time.time()))
                raise RuntimeError("injected failure mid-epoch")
            return real(*a, **k)

        trainer.compute_losses = failing
    elif mode == "kill-in-write":
        import signal
        import torch
        real_save = torch.save

        def dying(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("step") == 3:  # the third checkpoint dies half-written
                f.write(b"PK\\x03\\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)

        torch.save = dying
    import train
    sys.exit(train.main(sys.argv[3:]))
""")


def _runner(tmp_path) -> str:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER.format(project=PROJECT))
    return str(path)


def _common(root, work, steps, *extra):
    return [CONFIG, "--dataroot", root, "--work-dir", work, "--max-steps", str(steps), "--no-progress",
            "--set", *ENGINE, *extra]


def test_exception_mid_epoch_with_loader_workers_exits_within_seconds(root, tmp_path):
    mark = str(tmp_path / "raised_at")
    args = _common(root, str(tmp_path / "work"), 6, "train.batch_size=1", "train.num_workers=2")
    p = subprocess.Popen([PY, _runner(tmp_path), "raise", mark] + args, cwd=PROJECT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # the hang this test exists for: clean up, then fail
        os.killpg(p.pid, 9)
        p.communicate()
        pytest.fail("training did not exit after an exception in the loop (loader workers kept it alive)")
    ended = time.time()
    assert os.path.exists(mark), err[-2000:]
    raised = float(open(mark).read())
    assert p.returncode not in (0, None), err[-2000:]
    assert "injected failure mid-epoch" in err
    assert ended - raised < 30, f"exited {ended - raised:.1f} s after the exception"


def test_resume_past_a_finished_schedule_refuses_then_extend_replans(root, tmp_path, capsys):
    work = str(tmp_path / "work")
    base = ["train.batch_size=1", "train.num_workers=0", "train.schedule=onecycle"]
    train = _train_tool().main
    assert train(_common(root, work, 2, *base)) == 0
    capsys.readouterr()
    # More steps than the one-cycle plan: refused in one line that names the checkpoint and both ways on.
    rc = train(_common(root, work, 4, *base) + ["--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    msg = [line for line in err if line.startswith("train: error:")]
    assert rc == 2 and len(msg) == 1, err
    assert "ckpt_00000002.pt" in msg[0] and "--extend" in msg[0] and "--work-dir" in msg[0]
    assert "Traceback" not in "\n".join(err)
    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(work, "checkpoints"))] == [1, 2]
    # --extend re-plans steps 2..4: a new warmup (the LR rises again) and anneal, saved with the plan.
    assert train(_common(root, work, 4, *base) + ["--resume", "--extend"]) == 0
    st = states(os.path.join(work, "checkpoints", "ckpt_00000004.pt"))
    assert st["step"] == 4 and st["total_steps"] == 4 and st["schedule_start"] == 2
    # Resuming the extended run to its end is a no-op that succeeds; --extend alone needs --resume.
    assert train(_common(root, work, 4, *base) + ["--resume"]) == 0
    capsys.readouterr()
    assert train(_common(root, str(tmp_path / "other"), 4, *base) + ["--extend"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_extended_one_cycle_starts_its_own_warmup(root, tmp_path):
    """The re-planned schedule is torch's one-cycle over the added steps (the config's peak, pct_start
    0.3, div_factor 10, final_div_factor 1e3), from the saved weights."""
    work = str(tmp_path / "work")
    base = ["train.batch_size=1", "train.num_workers=0", "train.schedule=onecycle", "train.lr=0.002"]
    train = _train_tool().main
    assert train(_common(root, work, 2, *base)) == 0
    assert train(_common(root, work, 5, *base) + ["--resume", "--extend"]) == 0
    lrs = {r["step"]: r["lr"] for r in records(work) if "lr" in r}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    plan = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.002, total_steps=3, pct_start=0.3,
                                               anneal_strategy="cos", cycle_momentum=False, div_factor=10.0,
                                               final_div_factor=1e3)
    expected = []
    for _ in range(3):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        plan.step()
    assert [lrs[s] for s in (3, 4, 5)] == pytest.approx(expected)
    assert lrs[3] > 10 * lrs[2]  # the old plan had annealed to its floor; the new one starts high again


def test_resume_with_a_checkpoint_of_another_config_names_it_and_the_key(root, tmp_path, capsys):
    work = str(tmp_path / "work")
    train = _train_tool().main
    assert train(_common(root, work, 1, "train.batch_size=1", "train.num_workers=0")) == 0
    capsys.readouterr()
    rc = train(_common(root, work, 2, "train.batch_size=1", "train.num_workers=0", "model.head.channels=24")
               + ["--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    msg = [line for line in err if line.startswith("train: error:")]
    assert rc == 2 and len(msg) == 1, err
    assert "ckpt_00000001.pt" in msg[0] and "head." in msg[0] and "shape" in msg[0]
    assert "Traceback" not in "\n".join(err)


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(root, tmp_path, capsys,
                                                                                 monkeypatch):
    work = str(tmp_path / "work")
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 2:
            f.write(b"PK\x03\x04")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    rc = _train_tool().main(_common(root, work, 3, "train.batch_size=1", "train.num_workers=0"))
    err = capsys.readouterr().err.strip().splitlines()
    msg = [line for line in err if line.startswith("train: error:")]
    assert rc == 2 and len(msg) == 1, err
    assert "ckpt_00000002.pt" in msg[0] and "No space left on device" in msg[0]
    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(work, "checkpoints"))] == [1]
    assert not [n for n in os.listdir(os.path.join(work, "checkpoints")) if n.endswith(".tmp")]
    assert ckpt.latest_checkpoint(os.path.join(work, "checkpoints"))[1]["step"] == 1


def test_sigkill_inside_a_checkpoint_write_then_resume_is_bitwise_the_uninterrupted_run(root, tmp_path):
    steps = 4
    extra = ["train.batch_size=2", "train.num_workers=1", "train.deterministic=true",
             "model.fusion.dropout_camera=0.5"]
    ref = str(tmp_path / "ref")
    run_train(_common(root, ref, steps, *extra))
    work = str(tmp_path / "killed")
    p = subprocess.run([PY, _runner(tmp_path), "kill-in-write", "-"] + _common(root, work, steps, *extra),
                       cwd=PROJECT, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert p.returncode == -9, p.stderr[-2000:]
    names = os.listdir(os.path.join(work, "checkpoints"))
    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(work, "checkpoints"))] == [1, 2]
    assert any(n.startswith(".ckpt_00000003.pt.") for n in names)  # the torn temporary file, never a final name
    run_train(_common(root, work, steps, *extra) + ["--resume"])
    starts = [r for r in records(work) if r.get("event") == "start"]
    assert starts[-1]["resumed_from"].endswith("ckpt_00000002.pt")
    a = states(os.path.join(ref, "checkpoints", f"ckpt_{steps:08d}.pt"))
    b = states(os.path.join(work, "checkpoints", f"ckpt_{steps:08d}.pt"))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    end = [r for r in records(work) if r.get("event") == "end"][-1]
    assert end["unreadable_files"] == {} and json.dumps(end)
