# Two commands on a fresh clone (each does its own set-up):
#   make run    the main job
#   make test   the test suite (lint, then pytest on 2 workers)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gradsync-installed

.PHONY: run doctor test test-fast test-huge lint bench setup clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gradsync needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

run: $(STAMP)
	$(BIN)/gradsync train --nodes 2 --schedule priority --steps 100 --out runs/latest --overwrite

doctor: $(STAMP)
	$(BIN)/gradsync doctor

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup --durations=40 -m "not huge" tests examples

test-fast: lint
	$(BIN)/pytest -n 2 --dist loadgroup -m "not slow and not huge" tests

test-huge: lint
	$(BIN)/pytest -m huge tests

clean-cache:
	rm -rf $${GRADSYNC_CACHE:-$$HOME/.cache/gradsync}/verilator
