"""Fixtures for tests against real databases: a fresh Postgres database per test, or SQLite.

Postgres comes from VTT_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
Each test gets its own database, created through the server's `postgres` database and
dropped afterwards. When the server is unreachable those tests skip, except with CI=true,
where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.persistence.database import DriverPool

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _dsn(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def _execute(url: URL, statement: str) -> None:
    connection = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        await connection.execute(statement, timeout=30)
    finally:
        await connection.close(timeout=5)


@pytest.fixture(scope="session")
def postgres_server() -> URL:
    """The URL of the test server's `postgres` database (skip, or fail in CI, when down)."""
    url = make_url(os.environ.get("VTT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    admin = url.set(database="postgres")
    try:
        asyncio.run(_execute(admin, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        message = f"PostgreSQL at {url.host}:{url.port or 5432} is unreachable: {error!r}"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: Postgres tests are mandatory)")
        pytest.skip(message)
    return admin


@pytest.fixture
def postgres_url(postgres_server: URL) -> Iterator[str]:
    """A libpq-style URL of a new, empty database, dropped after the test."""
    name = f"vtt_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_execute(postgres_server, f'CREATE DATABASE "{name}"'))
    try:
        yield _dsn(postgres_server.set(database=name))
    finally:
        asyncio.run(_execute(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DATABASE_URL for an empty database: a SQLite file, then a fresh Postgres database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vtt.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def small_driver_pool(url: str, timeouts: Mapping[str, object]) -> DriverPool:
    """A driver pool of two connections on `url`, not started, for a store to read through
    (`read_through` before `start`, as the server does); the engine's connect and command
    timeouts from `timeouts` where given."""
    connect, command = timeouts.get("connect_timeout", 5.0), timeouts.get("command_timeout", 10.0)
    assert isinstance(connect, float | int)
    assert isinstance(command, float | int)
    return DriverPool(url, size=2, connect_timeout=connect, command_timeout=command)


async def cancel_mid_statement(
    engine: AsyncEngine, path: Path, prefix: str, work: Coroutine[Any, Any, Any]
) -> None:
    """Run `work` on the SQLite file at `path` and cancel it while its statement starting with
    `prefix` runs in aiosqlite's thread: the write lock is held from outside until the
    statement has begun, and let go right after the cancel, so the statement then completes
    in the thread with its caller gone. Returns once `work` has ended."""
    began = asyncio.Event()
    loop = asyncio.get_running_loop()

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(prefix.upper()):
            loop.call_soon_threadsafe(began.set)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(work)
        async with asyncio.timeout(5.0):
            await began.wait()
        task.cancel()
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
        event.remove(engine.sync_engine, "before_cursor_execute", before)
    with contextlib.suppress(asyncio.CancelledError):
        await task
