# m2a: `make demo` and `make test` do all the set-up on a fresh clone (a .venv with torch and m2a[dev]),
# and skip it quickly once it is done. `make help` lists the targets.
#
#   make test TORCH_SPEC='torch==2.5.1'     another torch (e.g. a CUDA build); used only if .venv has none
#   make test PYTEST_ARGS='-m slow'         extra pytest arguments
#   ROS_DOMAIN_ID=12 make test              own DDS domain for parallel runs (default 47)
#
# ROS 2 without a ROS install (shared/design/ROS2_ON_PIP.md): `make ros` (a prerequisite of test and demo) installs
# rclpy, the standard messages and the rosidl tool chain from PyPI wheels into .venv, then builds our messages
# (msg/ -> m2a.msg) with CMake in build/ros and installs them into .venv itself (the wheels' prefix), so
# `from m2a.msg import AnomalySegmentation` works in .venv's Python with no environment set-up. On a vehicle:
# `colcon build` instead.

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
ROS_STAMP   := $(VENV)/.m2a-ros-wheels.stamp
MSGS_STAMP  := $(VENV)/.m2a-ros-msgs.stamp
ROS_BUILD   := build/ros
VENV_ABS     = $(abspath $(VENV))
MSG_FILES   := $(wildcard msg/*.msg)
CMAKE_GEN   := $(if $(shell command -v ninja 2>/dev/null),-G Ninja,)

# Keep DDS traffic on this machine (shared/design/ROS2_ON_PIP.md): tests, demo and benchmarks alike.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 47
# ROS_ENV: where ROS finds our messages. Not strictly needed for .venv's Python (the wheels' start-up hook adds
# .venv/lib to LD_LIBRARY_PATH, and m2a.msg is in its site-packages), but explicit for anything else it starts.
ROS_ENV = AMENT_PREFIX_PATH=$(VENV_ABS)$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH} \
          LD_LIBRARY_PATH=$(VENV_ABS)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}

.PHONY: help setup ros test lint format demo bench clean distclean

help:
	@echo "make demo       set up .venv if needed, then run m2a-demo into demo_out/"
	@echo "make test       set up .venv if needed, then ruff check, ruff format --check and pytest"
	@echo "make setup      only the set-up: .venv, $(TORCH_SPEC) (if no torch yet), pip install -e '.[dev]'"
	@echo "make ros        setup + ROS 2 wheels (rclpy, rosidl) in .venv + our messages (msg/) built into .venv"
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

# ROS 2 wheels (the `ros` and `ros-build` extras), then the include-path fix their CMake files need here.
$(ROS_STAMP): $(DEV_STAMP) tools/fix_ros_cmake_paths.py
	@echo "==> pip install -e '.[ros,ros-build]' (rclpy, standard messages, rosidl tool chain: PyPI wheels)"
	@$(PIP) install $(PIP_FLAGS) -e '.[ros,ros-build]'
	@$(PY) tools/fix_ros_cmake_paths.py $(VENV)
	@touch $@

# Our messages, built with the wheels' CMake packages and installed into .venv (its lib/, share/ and
# site-packages/m2a). Only the messages and the launcher: pip -e already has the Python packages.
# CMake installs the generated package's egg-info as `m2a`, the name of pip's distribution too; it is removed
# so that pip never mistakes it for (and uninstalls) the m2a it installed.
$(MSGS_STAMP): $(ROS_STAMP) $(MSG_FILES) CMakeLists.txt package.xml $(wildcard scripts/* config/* launch/*)
	@command -v cmake >/dev/null || { echo "make ros: cmake not found (apt-get install cmake g++)"; exit 1; }
	@echo "==> building m2a messages ($(MSG_FILES)) in $(ROS_BUILD), installing into $(VENV)"
	@mkdir -p $(ROS_BUILD) && export AMENT_PREFIX_PATH=$(VENV_ABS) CMAKE_PREFIX_PATH=$(VENV_ABS); \
	  cmake -S . -B $(ROS_BUILD) $(CMAKE_GEN) -DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python \
	    -DM2A_INSTALL_PYTHON_PACKAGES=OFF -DBUILD_TESTING=OFF >$(ROS_BUILD)/make.log 2>&1 \
	  && cmake --build $(ROS_BUILD) -j2 >>$(ROS_BUILD)/make.log 2>&1 \
	  && cmake --install $(ROS_BUILD) >>$(ROS_BUILD)/make.log 2>&1 \
	  || { tail -40 $(ROS_BUILD)/make.log; echo "make ros: message build failed, full log in $(ROS_BUILD)/make.log"; exit 1; }
	@rm -rf $(VENV)/lib/python3*/site-packages/m2a-*.egg-info
	@AMENT_PREFIX_PATH=$(VENV_ABS) $(PY) -c "from m2a.msg import AnomalySegmentation, AnomalyInstance" \
	  || { echo "make ros: m2a.msg built but not importable"; exit 1; }
	@touch $@

setup: $(DEV_STAMP)

ros: $(MSGS_STAMP)

# --- everyday targets ----------------------------------------------------------------------------------------
test: $(MSGS_STAMP)
	@echo "==> ruff check"
	@$(RUFF) check .
	@echo "==> ruff format --check"
	@$(RUFF) format --check .
	@echo "==> pytest (ROS_DOMAIN_ID=$(ROS_DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE=$(ROS_AUTOMATIC_DISCOVERY_RANGE))"
	@# M2A_REQUIRE_ROS=1: ROS tests fail instead of skipping when rclpy or m2a.msg cannot be imported.
	@$(ROS_ENV) M2A_REQUIRE_ROS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	@$(RUFF) check .
	@$(RUFF) format --check .

format: $(DEV_STAMP)
	@$(RUFF) check --fix .
	@$(RUFF) format .

demo: $(MSGS_STAMP)
	@echo "==> m2a-demo --out demo_out"
	@$(ROS_ENV) $(VENV)/bin/m2a-demo --out demo_out

bench: $(BENCH_STAMP)
	@$(PY) bench/model_speed.py

clean:
	rm -rf build install log demo_out .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
