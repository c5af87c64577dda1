# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test`.
# Both create .venv when it is missing, install ddbench into it (pip; torch comes from the
# pinned wheels; --no-compile: byte-compiling every installed module took about 2 minutes of a
# fresh install here, while first imports compile only what they use), then run. The install step reruns only when pyproject.toml changes. `make test`
# also installs Chromium (apt) when no chromium or google-chrome is on PATH.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ddbench-installed
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
# pytest-xdist processes: the tests marked `ray` run one after the other on one of them (an
# xdist group, tests/conftest.py) while the other takes the rest (`make test TEST_WORKERS=1`
# runs everything one by one)
TEST_WORKERS ?= 2
# tests/test_report_html.py renders the HTML report in headless Chromium (Debian package, as root)
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

.PHONY: install browser quickstart test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q --no-compile -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import ddbench.cli, torch, ray, mlflow, polars"  # fail loudly if broken
	@touch $(STAMP)

browser:
	@command -v chromium || command -v chromium-browser || command -v google-chrome \
	  || $(APT_CHROMIUM) || (apt-get update -q && $(APT_CHROMIUM)) \
	  || { echo "make test needs Chromium: install chromium (or google-chrome)"; exit 1; }

quickstart: install
	$(BIN)/ddbench run suites/quickstart.yaml
	$(BIN)/ddbench report quickstart --format md,html

test: install browser
	$(BIN)/ruff check ddbench tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# the unit and contract tests: no Ray, no whole suites, no servers, no browser (markers in
# pyproject.toml)
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=5 \
	  -m "not ray and not slow and not server and not browser"

lint: install
	$(BIN)/ruff check ddbench tests benchmarks
	$(BIN)/ruff format --check ddbench tests benchmarks

clean:
	rm -rf runs reports/quickstart
