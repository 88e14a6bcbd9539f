PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned versions (scripts/lock.sh); `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test unit e2e bench clean lock

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIN) --upgrade pip
	$(BIN)/python -m pip install $(PIN) -e ".[dev]"

lock:
	scripts/lock.sh $(PYTHON)

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
