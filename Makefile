# Quick start:  make demo   (sets up .venv, trains on built-in data, prints the R@K table)
#               make test   (sets up .venv, runs the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile --no-cache-dir -c requirements/constraints.txt torch
	$(BIN)/pip install -q --no-compile --no-cache-dir -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vsekit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_gpo.py

clean:
	rm -rf $(VENV) runs benchmarks/results
