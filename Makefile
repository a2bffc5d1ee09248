# Set-up and test entry points. `make setup` is idempotent; CI runs `.ci/run` (= setup + test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# moshi 0.2.13 declares torch<2.10 but runs unchanged on newer torch (tested in CI by the suite):
# install torch first, then moshi without its pins, then its light runtime deps via our package.
TORCH  ?= torch==2.13.0
export NO_TORCH_COMPILE := 1

.PHONY: setup speech-deps test lint test-slurm gpu-proof run examples clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q --no-deps moshi==0.2.13
	$(BIN)/pip install -q -e ".[test,workflow]"
	$(BIN)/python -c "import torch, moshi, ttt; print('torch', torch.__version__, '| moshi', moshi.__version__, '| ttt', ttt.__version__)"
	ln -sfn profiles/slurm slurm   # `snakemake --profile slurm` looks for ./slurm, not profiles/slurm
	touch $@

# Debian packages of the speech synthesiser (docs/speech-data.md), as root; tests/test_speech.py
# installs the same when missing.
SPEECH_DEBS := festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k dict-devil wordnet-base
speech-deps:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SPEECH_DEBS)

# Includes the SLURM suite, which starts a real single-node cluster (tests/slurm_lab.sh) when run
# as root on Debian and skips with the reason otherwise.
test: setup
	$(BIN)/python -m pytest -q -rs

# The workflow's lint and formatting alone (`make test` runs both, tests/test_workflow_lint.py);
# `snakefmt workflow` rewrites the files as the check wants them.
lint: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow

test-slurm: setup
	$(BIN)/python -m pytest -q -rs -m slurm tests/test_slurm.py

# GPU proof (CUDA graphs, needs a CUDA device); see gpu/README.md.
gpu-proof: setup
	$(BIN)/python gpu/cuda_graph_proof.py gpu/results/latest.json

# The main job: the whole matrix on the embedded default (tiny random Moshi, CPU, no downloads),
# through the same Snakemake DAG and submitit drivers a cluster uses. Results in results/.
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local

# Every example cell once, into a fresh directory (no Snakemake).
EXAMPLES := teacher_forced_tiny teacher_forced_tiny_off generate_tiny transcribe_tiny
examples: setup
	@d=results/runs/$$(date +%Y%m%d-%H%M%S); for c in $(EXAMPLES); do \
	  $(BIN)/python -m ttt run-cell --config examples/cells/$$c.yaml --out $$d/$$c || exit 1; \
	done; echo "cells written to $$d"

clean:
	rm -rf $(VENV) results .pytest_cache .snakemake slurm
