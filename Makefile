# The two README commands. Both install what they need first (tools/install.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
REAL ?= ../shared/data/nuscenes-real/trainval-extract
SYN ?= work/data/synthetic
OUT ?= work/demo

.PHONY: install demo test bench synthetic

install:
	bash tools/install.sh

# Built-in synthetic drives; generated once (the stamp is written only after a complete run).
$(SYN)/.complete:
	$(PY) tools/make_synthetic.py --out $(SYN) --preset default --seed 0
	touch $@

synthetic: install $(SYN)/.complete

# The main job on the built-in data: the steps that exist so far, each printing where its result is.
demo: install $(SYN)/.complete
	mkdir -p $(OUT)
	$(PY) tools/doctor.py --dataroot $(SYN) --version v1.0-trainval -q --json $(OUT)/doctor_synthetic.json
	$(PY) tools/doctor.py --dataroot $(REAL) --version v1.0-trainval -q --keyframes-only --json $(OUT)/doctor_real.json
	$(PY) tools/eval.py --oracle --dataroot $(SYN) --version v1.0-trainval --split val --out $(OUT)/oracle_synthetic
	@echo "demo results: $(OUT)/doctor_synthetic.json, $(OUT)/doctor_real.json, $(OUT)/oracle_synthetic/report.md"

# pytest's exit status 5 (no tests collected) is a failure here, as any non-zero status.
test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) tools/benchmark.py data
	$(PY) tools/benchmark.py ops
	$(PY) tools/benchmark.py model
