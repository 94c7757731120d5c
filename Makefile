# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install install-run install-bench run token test test-ts lint fmt migrate schema \
	bench bench-full bench-soak bench-cluster clean

help:
	@echo "make help        this list"
	@echo "make run         start the server on the embedded defaults (SQLite + dev auth)"
	@echo "make token       mint a dev token: make token ARGS='--user alice --gm --campaign demo'"
	@echo "make test        lint, then every test tier with branch coverage of app/, then the TypeScript client"
	@echo "make test-ts     the TypeScript client's tests alone (needs Node.js)"
	@echo "make lint        ruff, ruff format --check, mypy (strict on app/, tests/ and bench/), hadolint"
	@echo "make fmt         format and autofix with ruff"
	@echo "make migrate     alembic upgrade head against DATABASE_URL (or ./vtt.db)"
	@echo "make schema      regenerate schema/ and the TypeScript protocol types"
	@echo "make bench       quick benchmark, the drag and relay-path benches; make bench-full for everything"
	@echo "make bench-soak  soak our server (default 30 min): make bench-soak SOAK_MINUTES=3"
	@echo "make bench-cluster  several machines (Redis op log, failover, relay): ARGS=--full for all"
	@echo "make install     the development environment (server, tests, linters)"
	@echo "make install-run the server's own dependencies only (what make run needs)"
	@echo "make install-bench  the benchmark's extra packages"
	@echo "make clean       remove the environments and caches"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# One environment, filled by what each target needs: --inexact keeps what another target
# installed, so switching between them never reinstalls.
SYNC := $(UV) sync --frozen --python $(PYTHON) --quiet --inexact --no-default-groups

$(VENV)/.synced-run: $(UV) uv.lock pyproject.toml
	$(SYNC)
	@touch $@

$(VENV)/.synced-dev: $(UV) uv.lock pyproject.toml
	$(SYNC) --group dev
	@touch $@

$(VENV)/.synced-bench: $(UV) uv.lock pyproject.toml
	$(SYNC) --group dev --group bench
	@touch $@

install-run: $(VENV)/.synced-run

install: $(VENV)/.synced-dev

install-bench: $(VENV)/.synced-bench

run: install-run
	$(PY) -m app

token: install-run
	$(PY) -m app.dev.devtoken $(ARGS)

lint: install-bench
	$(VENV)/bin/ruff check app tests migrations bench tools
	$(VENV)/bin/ruff format --check app tests migrations bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests
	$(VENV)/bin/mypy bench
	$(VENV)/bin/hadolint Dockerfile

fmt: install
	$(VENV)/bin/ruff format app tests migrations bench tools
	$(VENV)/bin/ruff check --fix app tests migrations bench tools

# Branch coverage of app/, subprocesses included ([tool.coverage.*] in pyproject.toml); a plain
# `pytest` run measures nothing. The tests run in PYTEST_WORKERS processes (pytest-xdist), a
# file's tests in one of them: most of a test's time is spent waiting on servers and clients.
PYTEST_WORKERS ?= auto
test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile \
		--cov=app --cov-branch --cov-report=term:skip-covered $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-ts

# The TypeScript client's tests need Node.js: mandatory in CI, said plainly when skipped here.
# npm ci is skipped when node_modules already came from this package-lock.json.
test-ts: install
	@if [ ! -f clients/ts/package.json ]; then \
		echo "no clients/ts package yet"; \
	elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		cd clients/ts && node scripts/npm-ci.mjs && npm test; \
	elif [ "$$CI" = "true" ]; then \
		echo "Node.js is required in CI for the TypeScript client tests" >&2; exit 1; \
	else \
		echo "Node.js not found: the TypeScript client tests (clients/ts) were NOT run"; \
	fi

schema: install
	$(PY) -m tools.schema

bench: install-bench
	$(PY) -m bench.run --quick
	$(PY) -m bench.drag
	$(PY) -m bench.relaypath

bench-full: install-bench
	$(PY) -m bench.run --full
	$(PY) -m bench.drag
	$(PY) -m bench.relaypath

# Bounded: it stops after SOAK_MINUTES (ARGS adds bench.soak options, e.g. ARGS='--window 30').
SOAK_MINUTES ?= 30
bench-soak: install-bench
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) $(ARGS)

# Needs Postgres (VTT_BENCH_POSTGRES_URL) and redis-server; ARGS='--full' for N=100 and 300,
# TTL 2 and 10, three repeats of the op log runs.
bench-cluster: install-bench
	$(PY) -m bench.cluster $(or $(ARGS),--quick)

migrate: install-run
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
