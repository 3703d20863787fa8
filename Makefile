# Save, Load, Resume: the two commands are `make lab` and `make test`.
# Both create .venv on first use and reinstall only when a requirements file changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A pip constraints file for every install, e.g. constraints/oldest.txt (`make test-oldest` sets it).
CONSTRAINTS ?=
PIP_INSTALL := $(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# `make test-oldest`: the oldest supported Python, and the environment it builds.
PYTHON_OLDEST ?= python3.10
VENV_OLDEST   := .venv-oldest
# Extra arguments for JupyterLab, e.g. `make lab LAB_ARGS="--no-browser --port 8899"`.
LAB_ARGS ?=
# Jupyter refuses to start as root (containers, some VMs) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k state_dict"`.
PYTEST_ARGS ?=
# Notebook runs use one worker per core (2 in CI), each notebook on one worker.
WORKERS ?= auto

.PHONY: help install install-test lab test test-oldest gpu-check notebooks clean

help:
	@echo "make lab        install (first time only) and start JupyterLab on notebooks/"
	@echo "make test       install (first time only) and run every test and notebook"
	@echo "make test-oldest  the same in .venv-oldest: Python 3.10 and the oldest supported versions"
	@echo "                  (constraints/oldest.txt); PYTHON_OLDEST=/path/to/python3.10 if not on PATH"
	@echo "make gpu-check  on a machine with a CUDA GPU: every notebook's GPU path and the GPU"
	@echo "                benchmarks; writes data/gpu_reference/*.json"
	@echo "make notebooks  regenerate notebooks/ (and the README syllabus) from solutions/"
	@echo "make clean      remove runs/ (what notebooks wrote); keeps .venv"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Learner installation: requirements.txt plus the course helpers (editable).
$(VENV)/.installed-lab: requirements.txt pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -r requirements.txt -e .
	@touch $@

# Test installation: the learner's plus requirements-dev.txt.
$(VENV)/.installed-test: $(VENV)/.installed-lab requirements-dev.txt $(CONSTRAINTS)
	$(PIP_INSTALL) -r requirements-dev.txt
	@touch $@

install: $(VENV)/.installed-lab
install-test: $(VENV)/.installed-test

lab: install
	@echo "Starting JupyterLab on notebooks/; open the http://127.0.0.1:... URL it prints below."
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ALLOW_ROOT) $(LAB_ARGS)

# One thread per process: the notebooks run on parallel workers, and two multi-threaded
# PyTorch processes on two cores slow each other down many times over.
test: install-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests solutions notebooks \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=120 \
		-n $(WORKERS) --dist loadscope --durations=0 $(PYTEST_ARGS)

# The same tests in a second environment: the oldest Python, torch and torchvision the course
# supports, pinned by constraints/oldest.txt (CI runs both: .ci/run).
test-oldest:
	@command -v $(PYTHON_OLDEST) >/dev/null 2>&1 || { echo "make test-oldest needs Python 3.10, and '$(PYTHON_OLDEST)' was not found. Install Python 3.10 (e.g. pyenv install 3.10), then run: make test-oldest PYTHON_OLDEST=/path/to/python3.10"; exit 1; }
	@$(PYTHON_OLDEST) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 10) else "make test-oldest needs Python 3.10; $(PYTHON_OLDEST) is " + sys.version.split()[0] + ". Set PYTHON_OLDEST=/path/to/python3.10")'
	$(MAKE) test VENV=$(VENV_OLDEST) PYTHON=$(PYTHON_OLDEST) CONSTRAINTS=constraints/oldest.txt

# On a machine with a CUDA GPU: every notebook's GPU path and the GPU benchmark scripts, within
# 10 minutes; writes data/gpu_reference/*.json. Refuses (exit status 2) without a GPU.
gpu-check: install-test
	$(BIN)/python scripts/gpu_check.py

notebooks: install
	$(BIN)/python -m helpers.generate

clean:
	rm -rf runs
