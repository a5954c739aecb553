# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run ui serve test test-fast lint bench mutation clean

# uv installs what pip would (from the sources pip is configured with) ~3x faster; pip if not
$(STAMP): pyproject.toml tools/install_venv.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8 \
		|| echo "uv not installed: pip installs the project"
	$(BIN)/python tools/install_venv.py $(BIN)/python -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## run: create the environment, run the training flow, the nightly batch of score.as_of and the
## backtest stage on the local Prefect server (started or reused, left up for the UI), push
## data, models and the batch to the local DVC remote, print the answer
run: venv
	$(BIN)/dvc remote add --local --force --default localremote $(CURDIR)/.dvc-remote
	$(BIN)/python -m metarec.orchestration.local
	$(BIN)/dvc push --quiet
	$(BIN)/metarec summary

## serve: register and serve the nightly and weekly retraining deployments (Ctrl-C stops)
serve: venv
	$(BIN)/metarec serve

## ui: start the local Prefect server alone (127.0.0.1:4200, database in .prefect/); Ctrl-C stops
ui: venv
	$(BIN)/metarec ui

PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2

## test: create or reuse the environment and run the whole suite on both cores, with branch
## coverage (modules below 100%, lowest first)
test: venv
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/lint-imports --no-cache
	$(PYTEST) --cov --cov-report=term

## test-fast: the fast layer (no Prefect server, no end-to-end runs), for the edit loop
test-fast: venv
	$(PYTEST) -m "not slow"

## mutation: mutation testing of the core modules (mutmut; not in CI): a seeded sample of
## MUTATION_SAMPLE mutants per module (~30 min; 0 = all, several hours); kill rate per
## module in benchmarks/results/mutation.json
MUTATION_SAMPLE ?= 40
mutation: venv
	$(BIN)/python benchmarks/mutation.py --sample $(MUTATION_SAMPLE)

lint: venv
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/lint-imports --no-cache

bench: venv
	$(BIN)/python benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV)
