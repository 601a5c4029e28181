# `make demo` and `make test` work on a fresh clone: they set up .venv first when needed
# (Debian packages, pinned PyPI packages, the ROS 2 messages built into .venv, this package
# installed editable) and redo only the steps whose inputs changed. See README.md.
#
# Variables (on the command line or in an untracked local.mk):
#   PYTHON=python3.11      interpreter the venv is made from (the ROS 2 wheels need 3.11)
#   SKIP_TORCH=1           keep the torch already in .venv (e.g. a CUDA build installed first)
#   TORCH_SPEC='...'       pip arguments for torch instead of -r requirements/torch.txt
#   VENV_FLAGS=...         extra `python -m venv` flags, e.g. --system-site-packages
#   PYTEST_ARGS='...'      extra pytest arguments for `make test`, e.g. -k package
#   TRAIN_DIR=runs/reference  where `make train` puts its data, caches and models

-include local.mk

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= -r requirements/torch.txt
SKIP_TORCH ?=
PYTEST_ARGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# cmake/g++ build the messages, libusb is open3d's, the EGL/GL ones let MuJoCo render offscreen
SYSTEM_PACKAGES ?= cmake g++ make libusb-1.0-0 libegl1 libopengl0 libgl1-mesa-dri

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
MSG_BUILD := build/msgs
TORCH_CHOICE := $(if $(SKIP_TORCH),keep the installed torch,$(TORCH_SPEC))

# The ROS 2 wheels do not set these; a sourced ROS installation must not leak into the venv.
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export CMAKE_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export MUJOCO_GL := egl
unexport PYTHONPATH

.DEFAULT_GOAL := setup
.PHONY: setup test demo train lint clean distclean FORCE

setup: $(STAMP)-msgs $(STAMP)-editable

test: setup
	$(VENV)/bin/ruff check .
	$(VPY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/vla-pruned-ros demo

# The reference policy from scratch (docs/training.md, "From scratch in one recipe").
TRAIN_DIR ?= runs/reference
train: setup
	PATH=$(abspath $(VENV))/bin:$$PATH tools/train_reference.sh $(TRAIN_DIR)

lint: setup
	$(VENV)/bin/ruff check .

$(STAMP)-system: tools/system_packages.sh
	@mkdir -p $(VENV)
	tools/system_packages.sh $(PYTHON) $(SYSTEM_PACKAGES)
	@touch $@

$(VPY): | $(STAMP)-system
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "make: $(PYTHON) is not Python 3.11, which the ROS 2 wheels need: pass PYTHON=python3.11"; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# Rewritten only when the choice changes, so a new TORCH_SPEC or SKIP_TORCH re-runs pip.
$(STAMP)-torch-choice: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH_CHOICE)' | cmp -s - $@ || echo '$(TORCH_CHOICE)' > $@

$(STAMP)-pip: requirements/venv.txt requirements/torch.txt $(STAMP)-torch-choice | $(VPY)
	$(VPY) -m pip install --progress-bar off -r requirements/venv.txt \
	  $(if $(SKIP_TORCH),,$(TORCH_SPEC))
	@$(VPY) -c 'import torch; print("make: torch", torch.__version__)' || { \
	  echo "make: no usable torch in $(VENV): install one there or drop SKIP_TORCH"; exit 1; }
	$(VPY) tools/fix_rosidl_exports.py $(VENV)
	@touch $@

# Messages (and our __init__.py, launch/, config/) go into the venv; pip installs the code.
$(STAMP)-msgs: $(STAMP)-pip CMakeLists.txt package.xml $(wildcard msg/*.msg) \
		vla_pruned_ros/__init__.py $(shell find launch config -type f 2>/dev/null)
	cmake -S . -B $(MSG_BUILD) -DVLA_PRUNED_ROS_MSGS_ONLY=ON -DBUILD_TESTING=OFF \
	  -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) -DPython3_EXECUTABLE=$(abspath $(VPY))
	cmake --build $(MSG_BUILD) -j $(JOBS)
	cmake --install $(MSG_BUILD)
	@touch $@

$(STAMP)-editable: setup.py setup.cfg $(STAMP)-pip
	$(VPY) -m pip install --progress-bar off --no-deps --no-build-isolation \
	  --config-settings editable_mode=compat -e .
	@touch $@

clean:
	rm -rf build install log

distclean: clean
	rm -rf $(VENV)

FORCE:
