PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test unit e2e bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"

test:
	$(BIN)/python -m pytest -q tests

unit:
	$(BIN)/python -m pytest -q tests/unit

e2e:
	$(BIN)/python -m pytest -q -m e2e tests/e2e

bench:
	$(BIN)/python benchmarks/bench_frontend.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
