# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test`.
# Both create .venv when it is missing, install ddbench into it (pip; torch comes from the
# pinned wheels; --no-compile: byte-compiling every installed module took about 2 minutes of a
# fresh install here, while first imports compile only what they use), then run. The install
# step reruns only when pyproject.toml changes. `make test` also installs Chromium (apt) when
# no chromium or google-chrome is on PATH.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ddbench-installed
# Bytecode caches are written on first import, whatever the calling shell says: the install
# skips byte-compiling (--no-compile, above), and with PYTHONDONTWRITEBYTECODE=1 (set on the
# machines this was built on) every process (each Ray worker imports torch and Ray Train)
# compiled its imports from source again: 18 s of CPU instead of 9 for `import torch,
# ray.train.torch, mlflow`, and a fresh-clone `make test` took 31 min
unexport PYTHONDONTWRITEBYTECODE
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
# pytest-xdist processes for the tests not marked `ray` (`make test`, `make test-fast`); the
# conftest gives each its share of the cores as torch threads
TEST_WORKERS ?= 2
# where `make test` keeps the log of the tests not marked `ray` until both halves end
REST_LOG := $(VENV)/test-rest.log
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

# Two pytest runs side by side: the tests marked `ray` one after the other (each starts Ray,
# whose start-up wants both cores: two at once slowed both past their timeouts in CI), and the
# rest on two xdist workers of one torch thread each under `nice -n 19`. Ray runs its workers at
# nice 15, so the rest at nice 0 took their cores (a Ray test ran 2.7x slower beside them); at 19
# they fill the gaps Ray's start-ups leave and speed up when the Ray tests end. The second
# run's log is printed when both have ended.
test: install browser
	$(BIN)/ruff check ddbench tests benchmarks
	@nice -n 19 $(BIN)/python -m pytest -q -m "not ray" -n $(TEST_WORKERS) --durations=10 \
	  > $(REST_LOG) 2>&1 & \
	rest=$$!; \
	echo "the tests not marked ray run beside these (nice 19), log: $(REST_LOG)"; \
	$(BIN)/python -m pytest -q -m ray --durations=10; ray=$$?; \
	wait $$rest; others=$$?; \
	cat $(REST_LOG); \
	echo "ray tests: exit $$ray; the others: exit $$others"; \
	test $$ray -eq 0 -a $$others -eq 0

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
