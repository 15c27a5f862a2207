# GenRecon tasks. `make demo` runs the pipeline on the built-in synthetic rooms; `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 (CPU) is installed first so nothing pulls a CUDA build.
# Conda/GPU users: activate the environment from environment.yml and pass VENV= (empty) to use it as is.

PYTHON ?= python3
VENV ?= .venv
ifeq ($(strip $(VENV)),)
BIN :=
STAMP := .make/installed
else
BIN := $(VENV)/bin/
STAMP := $(VENV)/.installed
endif
PY := $(BIN)python
DEMO_DIR ?= logs/demo

.PHONY: install test test-full demo prepare-demo train-demo infer-demo clean-demo lint

$(STAMP): pyproject.toml
ifneq ($(strip $(VENV)),)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
endif
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

# The default suite: slow and GPU tests are excluded by the markers in pyproject.toml.
# pytest exits 5 when it collected nothing, which fails this target too.
test: $(STAMP)
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest -q --durations=15

test-full: $(STAMP)
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest -q -m "not gpu" --durations=25

# The main job on the built-in synthetic data, tiny sizes (CPU, a few minutes).
demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR) data/synthetic_tiny
