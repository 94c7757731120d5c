# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install run test test-py lint fmt migrate schema bench bench-full token clean

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
	$(VENV)/bin/ruff check app tests migrations
	$(VENV)/bin/ruff format --check app tests migrations
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format app tests migrations
	$(VENV)/bin/ruff check --fix app tests migrations

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

migrate: install
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
