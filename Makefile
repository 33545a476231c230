# The two README commands. Both install what they need first (tools/install.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/nuscenes-real/trainval-extract
OUT ?= work/demo

.PHONY: install demo test bench

install:
	bash tools/install.sh

# The main job on the built-in data. Until the model, training and evaluation land it checks the
# real drives shipped beside the project and reports per-keyframe synchronization.
demo: install
	mkdir -p $(OUT)
	$(PY) tools/doctor.py --dataroot $(DATA) --version v1.0-trainval --keyframes-only --json $(OUT)/doctor.json || [ $$? -eq 1 ]
	@echo "demo: synchronization and health report in $(OUT)/doctor.json"

# pytest's exit status 5 (no tests collected) is a failure here, as any non-zero status.
test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) tools/benchmark.py data
