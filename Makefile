# SmartLab: the two commands of the README, and a few for developers.
# Everything installs into .venv from pyproject.toml (torch pinned to the CPU build on disk).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-adaptive demo-distributed test bench bench-memory bench-adaptive bench-transport bench-compute lint docs install redis postgres clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make demo: start the embedded Tiled server, scan with live analysis, print the results
demo: $(STAMP)
	$(BIN)/smartlab demo

## make demo-adaptive: the adaptive experiments, in-loop and through the queueserver
demo-adaptive: $(STAMP) redis
	$(BIN)/smartlab demo adaptive

## make demo-distributed: the live pipeline through Redis to two workers, Tiled on PostgreSQL
demo-distributed: $(STAMP) redis postgres
	$(BIN)/smartlab demo --distributed

## make redis: Debian's redis-server, which the queueserver's RE Manager needs (skipped when
## redis-server is on PATH; apt-get as root, else through sudo). If it cannot be installed, the
## queueserver tests and demo say so and why; the rest of the suite does not need it.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	  echo "installing redis-server (Debian package) for the queueserver ..."; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends redis-server \
	    >/dev/null || echo "make redis: could not install redis-server; the queueserver tests will fail with the reason"; }

## make postgres: Debian's PostgreSQL, whose binaries the tests of Tiled on PostgreSQL start a
## server from (skipped when initdb is on PATH or in /usr/lib/postgresql/*/bin, where Debian puts
## it; apt-get as root, else through sudo). The package may start a cluster of its own on port
## 5432: the tests never use it, so it is stopped. If it cannot be installed, those tests say so.
postgres:
	@{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi; \
	  echo "installing postgresql (Debian package) for the tests of Tiled on PostgreSQL ..."; \
	  if $$sudo apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends postgresql \
	      >/dev/null; then \
	    pg_lsclusters -h 2>/dev/null | while read -r version name _; do \
	      $$sudo pg_ctlcluster "$$version" "$$name" stop >/dev/null 2>&1 || true; done; \
	  else echo "make postgres: could not install postgresql; the PostgreSQL tests will fail with the reason"; fi; }

## make test: the test suite, on 2 processes (each test file in one of them, so a file's servers
## start once); pytest exits 5 when it collects nothing: that alone is no failure. A test is
## ended after 300 s (pyproject.toml) and the whole suite after TEST_LIMIT, with a message, so
## a hang shows as a failure that names itself rather than as CI running out of time.
TEST_LIMIT ?= 40m
test: $(STAMP) redis postgres
	@timeout --signal=INT --kill-after=60 $(TEST_LIMIT) $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; \
	if [ $$status -eq 124 ] || [ $$status -eq 137 ]; then \
	  echo "make test: the suite ran past $(TEST_LIMIT) and was stopped"; fi; exit $$status

## make bench: RunEngine slowdown, simulators, throughput, latency, scaling, memory, then the
## summary table -> docs/benchmarks.md (under 10 minutes on 2 CPU cores)
bench: $(STAMP)
	@mkdir -p benchmarks/results && rm -f benchmarks/results/*.json && date +%s > benchmarks/results/started
	$(BIN)/python benchmarks/re_overhead.py --repeats 4 --image-repeats 2
	$(BIN)/python benchmarks/generators.py --others 500
	$(BIN)/python benchmarks/throughput.py --repeats 3
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/memory.py --events 2000
	$(BIN)/python benchmarks/file_backed.py --frames 1000
	$(BIN)/python benchmarks/raw_staleness.py
	$(BIN)/python benchmarks/summary.py

## make bench-memory: the memory benchmark over 100,000 events (about 18 minutes on 2 cores)
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py --events 100000

## make bench-adaptive: adaptive plans vs uniform scans of the same resolution (about 90 s)
bench-adaptive: $(STAMP)
	$(BIN)/python benchmarks/adaptive.py

## make bench-transport: the broker publisher's RunEngine cost, 1 vs 2 workers (about 2 min)
bench-transport: $(STAMP) redis
	$(BIN)/python benchmarks/transport.py

## make bench-compute: spinwave_cnn on the Dask compute engine, 1 vs 2 workers (about 2 min)
bench-compute: $(STAMP)
	$(BIN)/python benchmarks/compute.py

## make docs: the documentation site in site/ (warnings are errors)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build site *.egg-info
