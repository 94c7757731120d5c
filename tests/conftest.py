"""Shared fixtures: the asyncio backend for async tests, databases, and a running server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import RunningServer, serve, settings_for

pytest_plugins = ["tests.support.database"]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, as the server does."""
    return "asyncio"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with default settings on SQLite, dev auth."""
    async with serve(settings_for(tmp_path)) as running:
        yield running
