# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test`.
# Both create .venv when it is missing, install ddbench into it (pip; torch comes from the
# pinned wheels), then run. The install step reruns only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ddbench-installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install quickstart test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import ddbench.cli, torch, ray, mlflow, polars"  # fail loudly if broken
	@touch $(STAMP)

quickstart: install
	$(BIN)/ddbench run suites/quickstart.yaml
	$(BIN)/ddbench report quickstart

test: install
	$(BIN)/ruff check ddbench tests benchmarks
	$(BIN)/python -m pytest -q --durations=15

lint: install
	$(BIN)/ruff check ddbench tests benchmarks
	$(BIN)/ruff format --check ddbench tests benchmarks

clean:
	rm -rf runs reports/quickstart
