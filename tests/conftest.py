"""Shared fixtures: the asyncio backend, databases, a running server and a JWKS endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import RunningServer, serve, settings_for
from tests.support.jwks_server import JwksServer, signing_key

pytest_plugins = ["tests.support.database", "tests.support.redisproc", "tests.support.cluster"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Async tests run on asyncio, as the server does; a module-scoped server shares its loop.

    Each test still gets a fresh event loop unless a module-scoped async fixture keeps one open.
    """
    return "asyncio"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with default settings on SQLite, dev auth."""
    async with serve(settings_for(tmp_path)) as running:
        yield running


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    """A JWKS endpoint publishing one key, `k1`."""
    async with JwksServer([signing_key("k1")]) as server:
        yield server
