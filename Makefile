# `make demo` and `make test` work on a fresh machine with Python 3.11: they build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean constraints

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements-dev.txt -e .
	$(BIN)/pip check
	touch $(STAMP)

# After changing requirements*.txt: install them unconstrained in a fresh .venv, then freeze.
constraints:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -e .
	$(BIN)/pip check
	head -4 constraints.txt > constraints.new
	$(BIN)/pip freeze --exclude-editable >> constraints.new
	mv constraints.new constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py
	$(BIN)/python bench/client_rate.py

clean:
	rm -rf $(VENV) staging backfill.duckdb build *.egg-info
