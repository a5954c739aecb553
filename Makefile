# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run ui test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## run: create the environment, run the training flow and one nightly batch (AS_OF) on the
## local Prefect server (started or reused, left up for the UI), print what it recommends
AS_OF ?= 1998-03-15
run: venv
	$(BIN)/dvc remote add --local --force --default localremote $(CURDIR)/.dvc-remote
	$(BIN)/python -m metarec.orchestration.local --as-of $(AS_OF)
	$(BIN)/dvc push --quiet
	$(BIN)/metarec summary

## ui: start the local Prefect server alone (127.0.0.1:4200, database in .prefect/); Ctrl-C stops
ui: venv
	$(BIN)/metarec ui

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
