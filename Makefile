# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is the one pinned in pyproject.toml.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: demo test test-fast bench lint docs-figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/zoo compare linear_regression --dataset kidiq --preset smoke --out-dir reports/demo

# Each test runs on one torch thread (tests/helpers.py), so the suite runs in TEST_WORKERS
# processes (pytest-xdist), one per core of the 2-core CI machine; the tests of a file share a
# worker (a module's fixture runs once; the README's commands run in order).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(VENV)/.installed-test
	$(PYTEST)

# The fast lane: every test but those marked slow.
test-fast: $(VENV)/.installed-test
	$(PYTEST) -m "not slow"

# The NumPyro side-by-side section runs where the bench extra is installed
# ($(BIN)/pip install -e '.[bench]'), and says it is skipped where not.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_numpyro.py
	$(BIN)/python benchmarks/bench_linear_regression.py
	$(BIN)/python benchmarks/bench_gmm.py
	$(BIN)/python benchmarks/bench_vae.py
	$(BIN)/python benchmarks/bench_calibration.py

# Remakes docs/figures/ from the examples of the pages that show them.
docs-figures: $(VENV)/.installed-test
	$(BIN)/python docs/make_figures.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check zoo guides comparisons tests benchmarks
	$(BIN)/ruff format --check zoo guides comparisons tests benchmarks

clean:
	rm -rf $(VENV) reports .pytest_cache
