# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test test-ts lint fmt migrate schema bench bench-full token clean

help:
	@echo "make run     start the server on the embedded defaults (SQLite + dev auth)"
	@echo "make test    lint, then run the whole test suite"
	@echo "make lint    ruff + mypy (strict on app/)"
	@echo "make migrate alembic upgrade head against DATABASE_URL (or ./vtt.db)"
	@echo "make bench   quick benchmark; make bench-full for everything"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@touch $@

install: $(VENV)/.synced

run: install
	$(PY) -m app.serve

token: install
	$(PY) -m app.devtoken $(ARGS)

lint: install
	$(VENV)/bin/ruff check app tests migrations bench
	$(VENV)/bin/ruff format --check app tests migrations bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

fmt: install
	$(VENV)/bin/ruff format app tests migrations bench
	$(VENV)/bin/ruff check --fix app tests migrations bench

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-ts

# The TypeScript client's tests need Node.js: mandatory in CI, said plainly when skipped here.
test-ts: install
	@if [ ! -f clients/ts/package.json ]; then \
		echo "no clients/ts package yet"; \
	elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		cd clients/ts && npm ci --no-audit --no-fund --loglevel=error && npm test; \
	elif [ "$$CI" = "true" ]; then \
		echo "Node.js is required in CI for the TypeScript client tests" >&2; exit 1; \
	else \
		echo "Node.js not found: the TypeScript client tests (clients/ts) were NOT run"; \
	fi

schema: install
	$(PY) -m app.schema

bench: install
	$(PY) -m bench.run --quick

bench-full: install
	$(PY) -m bench.run --full

migrate: install
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
