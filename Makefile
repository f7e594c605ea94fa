# m2a: `make demo` and `make test` do all the set-up on a fresh clone (a .venv with torch and m2a[dev]),
# and skip it quickly once it is done. `make help` lists the targets.
#
#   make test TORCH_SPEC='torch==2.5.1'     another torch (e.g. a CUDA build); used only if .venv has none
#   make test PYTEST_ARGS='-m slow'         extra pytest arguments
#   ROS_DOMAIN_ID=12 make test              own DDS domain for parallel runs (default 47)

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PIP_FLAGS   ?= -qq --progress-bar off  # -qq: errors only (this machine's pip config warns about every package)
PYTEST_ARGS ?=

PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
RUFF        := $(VENV)/bin/ruff
DEV_STAMP   := $(VENV)/.m2a-dev.stamp
BENCH_STAMP := $(VENV)/.m2a-bench.stamp

# Keep DDS traffic on this machine (shared/design/ROS2_ON_PIP.md): tests, demo and benchmarks alike.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 47

.PHONY: help setup test lint format demo bench clean distclean

help:
	@echo "make demo       set up .venv if needed, then run m2a-demo into demo_out/"
	@echo "make test       set up .venv if needed, then ruff check, ruff format --check and pytest"
	@echo "make setup      only the set-up: .venv, $(TORCH_SPEC) (if no torch yet), pip install -e '.[dev]'"
	@echo "make lint       ruff check and ruff format --check"
	@echo "make format     ruff check --fix and ruff format"
	@echo "make bench      install the bench extra, then python bench/model_speed.py"
	@echo "make clean      remove build outputs and caches (keeps .venv); make distclean also removes .venv"

# --- set-up --------------------------------------------------------------------------------------------------
$(PY):
	@echo "==> creating $(VENV) with $$($(PYTHON) --version 2>&1)"
	@$(PYTHON) -m venv $(VENV) && $(PIP) install $(PIP_FLAGS) --upgrade pip || { rm -rf $(VENV); exit 1; }

# torch first, so that m2a's `torch>=2.1` is already met and pip never pulls another (multi-GB) build.
$(DEV_STAMP): pyproject.toml setup.py | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "==> torch $$($(PY) -c 'import torch; print(torch.__version__)') already in $(VENV)"; \
	else \
	    echo "==> installing $(TORCH_SPEC)"; \
	    $(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)"; \
	fi
	@echo "==> pip install -e '.[dev]' (m2a + training, export, pytest, ruff)"
	@$(PIP) install $(PIP_FLAGS) -e '.[dev]'
	@touch $@

$(BENCH_STAMP): $(DEV_STAMP)
	@echo "==> pip install -e '.[bench]'"
	@$(PIP) install $(PIP_FLAGS) -e '.[bench]'
	@touch $@

setup: $(DEV_STAMP)

# --- everyday targets ----------------------------------------------------------------------------------------
test: $(DEV_STAMP)
	@echo "==> ruff check"
	@$(RUFF) check .
	@echo "==> ruff format --check"
	@$(RUFF) format --check .
	@echo "==> pytest (ROS_DOMAIN_ID=$(ROS_DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE=$(ROS_AUTOMATIC_DISCOVERY_RANGE))"
	@$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	@$(RUFF) check .
	@$(RUFF) format --check .

format: $(DEV_STAMP)
	@$(RUFF) check --fix .
	@$(RUFF) format .

demo: $(DEV_STAMP)
	@echo "==> m2a-demo --out demo_out"
	@$(VENV)/bin/m2a-demo --out demo_out

bench: $(BENCH_STAMP)
	@$(PY) bench/model_speed.py

clean:
	rm -rf build install log demo_out .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
