# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## run: create the environment, run the whole pipeline on ML-100K, print what it recommends
run: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/metarec summary

## test: create or reuse the environment and run the test suite
test: venv
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check src tests flows benchmarks

bench: venv
	$(BIN)/python benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV)
