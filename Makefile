# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv with the package and what it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# test processes (pytest-xdist, one per core of the CI machine)
TEST_JOBS ?= 2

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lcdask demo --out demo-run

test: $(STAMP)
	-scripts/install-system-deps.sh  # astrometry.net and its Tycho-2 index files: blind-solving tests
	-scripts/install-browser.sh  # Debian chromium for the report test in a real browser
	-scripts/slurm-up.sh  # a one-node Slurm (slurm-wlm, munge) for the --cluster slurm test
	$(BIN)/ruff check lcdask tests benchmarks
	$(BIN)/ruff format --check lcdask tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check --fix lcdask tests benchmarks
	$(BIN)/ruff format lcdask tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

clean:
	rm -rf $(VENV) demo-run
