# SharpML developer entry points. Every target installs what it needs, so a fresh clone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SHARPML_DATA_DIR ?= $(CURDIR)/.data

.PHONY: demo test lint venv clean

## venv: the project's virtual environment with every extra installed (re-run when pyproject changes)
$(BIN)/sharpml: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/sharpml

## demo: the main job on the embedded default: render sample photos, run intake -> SfM -> preview splat
demo: venv
	$(BIN)/sharpml demo

## test: the whole test suite (what CI runs)
test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache
