# Quick start:  make demo   (sets up .venv, trains on built-in data, prints the R@K table)
#               make test   (sets up .venv, runs the test suite)
#               make docs   (sets up .venv, builds the documentation site into site/)
# make test-scalar runs the learning tests (pytest -m learning) once more on torch's scalar CPU kernels, so that a
# threshold that holds on one CPU's kernels only fails on any machine (.ci/run runs it after make test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-scalar docs bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile --no-cache-dir -c requirements/constraints.txt torch
	$(BIN)/pip install -q --no-compile --no-cache-dir -c requirements/constraints.txt -e '.[dev]'
	@# byte-compile once, on every core (pip would do it on one): each later process then starts about a second
	@# sooner (torch) to four seconds sooner (transformers), even where PYTHONDONTWRITEBYTECODE is set; a few
	@# test files that packages ship for newer Pythons do not compile, harmlessly (they are never imported)
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vsekit demo

# --dist loadgroup: tests/test_docs.py groups each page's code blocks, which run in order, on one worker
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

test-scalar: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -q -n auto -m learning -p no:cacheprovider

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_gpo.py

clean:
	rm -rf $(VENV) runs benchmarks/results site
