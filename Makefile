# Save, Load, Resume: the two commands are `make lab` and `make test`.
# Both create .venv on first use and reinstall only when a requirements file changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Extra arguments for JupyterLab, e.g. `make lab LAB_ARGS="--no-browser --port 8899"`.
LAB_ARGS ?=
# Jupyter refuses to start as root (containers, some VMs) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k state_dict"`.
PYTEST_ARGS ?=
# Notebook runs use one worker per core (2 in CI), each notebook on one worker.
WORKERS ?= auto

.PHONY: help install install-test lab test notebooks clean

help:
	@echo "make lab        install (first time only) and start JupyterLab on notebooks/"
	@echo "make test       install (first time only) and run every test and notebook"
	@echo "make notebooks  regenerate notebooks/ (and the README syllabus) from solutions/"
	@echo "make clean      remove runs/ (what notebooks wrote); keeps .venv"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Learner installation: requirements.txt plus the course helpers (editable).
$(VENV)/.installed-lab: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt -e .
	@touch $@

# Test installation: the learner's plus requirements-dev.txt.
$(VENV)/.installed-test: $(VENV)/.installed-lab requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
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

notebooks: install
	$(BIN)/python -m helpers.generate

clean:
	rm -rf runs
