PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned versions (scripts/lock.sh); `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: install test unit e2e bench clean lock docs docs-serve

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

# The docs site (docs/, mkdocs.yml) into site/, strictly: a broken link, a missing page or a failing generated
# reference is an error. docs-serve rebuilds on every save at http://127.0.0.1:8000.
docs:
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

docs-serve:
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs serve --strict

bench:
	$(BIN)/python benchmarks/bench_frontend.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache
