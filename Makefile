# Set-up and test entry points. `make setup` is idempotent; CI runs `.ci/run` (= setup + test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# moshi 0.2.13 declares torch<2.10 but runs unchanged on newer torch (tested in CI by the suite):
# install torch first, then moshi without its pins, then its light runtime deps via our package.
TORCH  ?= torch==2.13.0
export NO_TORCH_COMPILE := 1

.PHONY: setup test gpu-proof run clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q --no-deps moshi==0.2.13
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -c "import torch, moshi, ttt; print('torch', torch.__version__, '| moshi', moshi.__version__, '| ttt', ttt.__version__)"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# GPU proof (CUDA graphs, needs a CUDA device); see gpu/README.md.
gpu-proof: setup
	$(BIN)/python gpu/cuda_graph_proof.py gpu/results/latest.json

# The main job on the embedded default: the TTT self-check, then every example cell (teacher-forced
# with its TTT-off twin, generate, transcribe) into a fresh results/runs/<time>/ directory.
RUN_DIR ?= results/runs/$(shell date +%Y%m%d-%H%M%S)
EXAMPLES := teacher_forced_tiny teacher_forced_tiny_off generate_tiny transcribe_tiny
run: setup
	$(BIN)/python -m ttt selfcheck
	@for c in $(EXAMPLES); do \
	  $(BIN)/python -m ttt run-cell --config examples/cells/$$c.yaml --out $(RUN_DIR)/$$c || exit 1; \
	done
	@echo "cells written to $(RUN_DIR)"

clean:
	rm -rf $(VENV) results .pytest_cache
