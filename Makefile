# Two commands on a fresh machine with Python >= 3.11 and make: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned: on this project's machines pip takes 2.13.0's CPU build from local disk; an
# unpinned torch pulls a multi-GB CUDA build. Elsewhere, for the CPU build from PyTorch's index:
#   make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
CORES ?= 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slurm gpu-study lint report clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The default study (config/config.yaml, `study: default`): every output in results/default/.
run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all
	@echo "make run: the default study's outputs are in results/default/ (summary.md, report.html)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

SLURM_STAMP := $(VENV)/.installed-slurm

$(SLURM_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev,slurm]"
	touch $(SLURM_STAMP)

# A real one-node SLURM cluster on this machine (needs root and Debian's apt; docs/slurm.md).
test-slurm: $(SLURM_STAMP)
	PYTHON=$(abspath $(BIN))/python bash tests/slurm/run.sh

# Tables and figures of the GPU study from its committed H100/H200 cells (docs/results.md).
gpu-study: $(STAMP)
	SNAKEMAKE=$(abspath $(BIN))/snakemake bash benchmarks/gpu_study.sh gpu-study gpu-large-batch

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all
	$(BIN)/snakemake --report report.html

# Every study's folder (results/<study>/), the shared caches (results/.cache) and Snakemake's state.
clean:
	rm -rf results logs .snakemake report.html
