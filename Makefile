# The two README commands. Both install what they need first (tools/install.sh is idempotent).
# `make demo` runs again in seconds: every result below is a file target that is kept.
VENV ?= .venv
PY := $(VENV)/bin/python
REAL ?= ../shared/data/nuscenes-real/trainval-extract
SYN ?= work/data/synthetic
OUT ?= work/demo
CONFIG ?= configs/fusion_tiny.yaml
DEMO_STEPS ?= 300
CKPT := $(OUT)/train/checkpoints/ckpt_$(shell printf %08d $(DEMO_STEPS)).pt
# the first scene of the devkit's val split that the synthetic root holds
VAL_SCENE = $$($(PY) -c "import json; from nuscenes.utils.splits import create_splits_scenes as c; v = set(c()['val']); print(next(s['name'] for s in json.load(open('$(SYN)/v1.0-trainval/scene.json')) if s['name'] in v))")

.PHONY: install demo test bench synthetic quality gpu-check

install:
	bash tools/install.sh

# Built-in synthetic drives (8 train + 2 val scenes of 20 s); the stamp is written after a complete run.
$(SYN)/.complete: | install
	$(PY) tools/make_synthetic.py --out $(SYN) --preset default --seed 0
	touch $@

synthetic: $(SYN)/.complete

$(CKPT): $(SYN)/.complete | install
	$(PY) tools/train.py $(CONFIG) --dataroot $(SYN) --version v1.0-trainval --work-dir $(OUT)/train \
	    --max-steps $(DEMO_STEPS) --resume

# report.md and the tracking metrics come from one run; the target is the tracking metrics, which only
# a run with --tracking writes, so a report from before the tracking evaluation existed is made again
$(OUT)/eval/tracking/metrics_summary.json: $(CKPT)
	$(PY) tools/eval.py $(CONFIG) --checkpoint $(CKPT) --dataroot $(SYN) --version v1.0-trainval --split val \
	    --out $(OUT)/eval --robustness --tracking

$(OUT)/replay.mp4: $(CKPT)
	$(PY) tools/replay.py --dataroot $(SYN) --version v1.0-trainval --scene $(VAL_SCENE) --config $(CONFIG) \
	    --checkpoint $(CKPT) --out $(OUT)/replay.mp4 --headless --reference keyframes --png-dir $(OUT)/replay_png \
	    --png-every 10

# The main job on the built-in data: generate the drives, check them, train the tiny fusion model,
# evaluate it with the official metrics, the sensor-failure table and the tracking metrics, replay a
# val drive with track IDs.
demo: install $(SYN)/.complete $(OUT)/eval/tracking/metrics_summary.json $(OUT)/replay.mp4
	$(PY) tools/doctor.py --dataroot $(SYN) --version v1.0-trainval -q --json $(OUT)/doctor_synthetic.json
	@echo
	@echo "demo results:"
	@echo "  synthetic drives        $(SYN)"
	@echo "  drive health report     $(OUT)/doctor_synthetic.json"
	@echo "  trained checkpoint      $(CKPT)  (logs: $(OUT)/train/log.jsonl, TensorBoard: $(OUT)/train/tb)"
	@echo "  metrics and robustness  $(OUT)/eval/report.md  (devkit: $(OUT)/eval/metrics_summary.json)"
	@echo "  tracking (AMOTA, ...)   $(OUT)/eval/report.md 'Tracking'  (devkit: $(OUT)/eval/tracking/metrics_summary.json)"
	@echo "  replay video            $(OUT)/replay.mp4  (frames: $(OUT)/replay_png, log: $(OUT)/replay.json)"

# pytest's exit status 5 (no tests collected) is a failure here, as any non-zero status.
test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) tools/benchmark.py data
	$(PY) tools/benchmark.py ops
	$(PY) tools/benchmark.py model
	$(PY) tools/benchmark.py train --config $(CONFIG)

quality: install
	$(PY) tools/benchmark.py quality

# One prepared GPU check (tools/gpu_check.py): kernels vs references, inference fp32/bf16, a short bf16
# training with resume and a torchrun worker, replay; JSON + Markdown in work/gpu_check. Without CUDA it
# runs its reduced CPU mode. On a fresh GPU machine: `timeout 480 make gpu-check` (install included).
# A GPU machine without network or ../shared: tools/gpu_bundle.py packs data and wheels (README "GPU check").
gpu-check: install
	$(PY) tools/gpu_check.py --out work/gpu_check
