"""The driver pool's handling of connections the server ended, on a fake asyncpg pool.

A real server ends connections at its own moment (tests/server/test_roles.py terminates the
pool's backends); here each connection fails exactly as told, so both outcomes are certain:
a lookup on a dead connection runs once more on a fresh one, and two in a row mean 1013.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from app.auth.roles import SqlRoles
from app.auth.tokens import Identity
from app.config import DEFAULT_ROLE_SQL
from app.errors import CloseCode
from app.persistence.database import DriverPool
from app.persistence.roles import DriverRoleQuery
from tests.support.harness import TIMEOUT, refused

pytestmark = pytest.mark.anyio

GONE = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
CONFUSED = asyncpg.InternalClientError(
    "cannot switch to state 12; another operation (2) is in progress"
)


class Described:
    def get_attributes(self) -> tuple[str, ...]:
        return ("role",)


class FakeConnection:
    """Answers 'gm', or raises `failure` once."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.terminated = False

    async def prepare(self, sql: str, *, name: str) -> Described:
        return Described()

    async def fetchrow(self, sql: str, *args: Any) -> tuple[str]:
        if self.failure is not None:
            raise self.failure
        return ("gm",)

    def terminate(self) -> None:
        self.terminated = True


class FakePool:
    """Hands out its connections in order."""

    def __init__(self, *connections: FakeConnection) -> None:
        self.connections = list(connections)
        self.expired = 0

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConnection]:
        yield self.connections.pop(0)

    async def expire_connections(self) -> None:
        self.expired += 1


def roles_on(pool: FakePool) -> SqlRoles:
    driver = DriverPool("postgresql://vtt@127.0.0.1:5432/app")
    driver._pool = pool
    return SqlRoles(DriverRoleQuery(driver, DEFAULT_ROLE_SQL))


def user() -> Identity:
    return Identity("u", {"sub": "u"}, 0.0)


@pytest.mark.parametrize("failure", [GONE, CONFUSED], ids=["closed", "in another operation"])
async def test_a_lookup_on_a_connection_the_server_ended_runs_again_on_a_fresh_one(
    failure: Exception,
) -> None:
    dead = FakeConnection(failure)
    pool = FakePool(dead, FakeConnection())

    assert await asyncio.wait_for(roles_on(pool).role("c1", user()), TIMEOUT) == "gm"
    assert dead.terminated
    assert pool.expired == 1, "the server most likely ended them all: all are replaced"


async def test_two_dead_connections_in_a_row_are_1013() -> None:
    pool = FakePool(FakeConnection(GONE), FakeConnection(GONE))

    failure = await refused(roles_on(pool).role("c1", user()))

    assert (failure.code, failure.reason) == (
        CloseCode.TRY_AGAIN_LATER,
        "campaign roles unavailable",
    )
    assert pool.expired == 2


async def test_a_pool_not_started_is_1013_and_closing_it_is_harmless() -> None:
    driver = DriverPool("postgresql://vtt@127.0.0.1:5432/app")

    failure = await refused(SqlRoles(DriverRoleQuery(driver, DEFAULT_ROLE_SQL)).role("c1", user()))
    await asyncio.wait_for(driver.close(), TIMEOUT)

    assert failure.code == CloseCode.TRY_AGAIN_LATER


@pytest.mark.parametrize("url", ["sqlite:///vtt.db", ""])
def test_the_driver_pool_is_for_postgres_only(url: str) -> None:
    with pytest.raises(ValueError, match="Postgres only"):
        DriverPool(url)


def failing(failure: BaseException) -> FakePool:
    class Failing(FakeConnection):
        async def fetchrow(self, sql: str, *args: Any) -> tuple[str]:
            raise failure

    return FakePool(Failing())


def postgres_error(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls("from the server")


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        # SQLSTATE class 22: the ids cannot even be compared, so not a member.
        (postgres_error(asyncpg.InvalidTextRepresentationError), CloseCode.FORBIDDEN),
        (postgres_error(asyncpg.DataError), CloseCode.FORBIDDEN),
        # The database cannot answer now: connection, resources, shutdown, a deadlock.
        (postgres_error(asyncpg.TooManyConnectionsError), CloseCode.TRY_AGAIN_LATER),
        (postgres_error(asyncpg.AdminShutdownError), CloseCode.TRY_AGAIN_LATER),
        (postgres_error(asyncpg.CannotConnectNowError), CloseCode.TRY_AGAIN_LATER),
        (postgres_error(asyncpg.DeadlockDetectedError), CloseCode.TRY_AGAIN_LATER),
        (ConnectionResetError(), CloseCode.TRY_AGAIN_LATER),
        (TimeoutError(), CloseCode.TRY_AGAIN_LATER),
        (asyncpg.InterfaceError("pool is closing"), CloseCode.TRY_AGAIN_LATER),
        # Only the deployment can fix these.
        (postgres_error(asyncpg.UndefinedTableError), CloseCode.INTERNAL_ERROR),
        (postgres_error(asyncpg.InsufficientPrivilegeError), CloseCode.INTERNAL_ERROR),
        (postgres_error(asyncpg.InvalidPasswordError), CloseCode.INTERNAL_ERROR),
        (asyncpg.PostgresError("no SQLSTATE at all"), CloseCode.INTERNAL_ERROR),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
async def test_each_failure_is_classified_by_its_sqlstate_as_through_the_engine(
    failure: BaseException, code: CloseCode
) -> None:
    refusal = await refused(roles_on(failing(failure)).role("c1", user()))

    assert refusal.code == code


@pytest.mark.parametrize(
    "failure",
    [asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError],
)
async def test_a_named_statement_the_server_lost_replaces_every_connection_and_names_the_setting(
    failure: type[asyncpg.PostgresError], caplog: pytest.LogCaptureFixture
) -> None:
    pool = failing(postgres_error(failure))

    with caplog.at_level("ERROR", logger="vtt.auth"):
        refusal = await refused(roles_on(pool).role("c1", user()))

    assert refusal.code == CloseCode.INTERNAL_ERROR
    assert pool.expired == 1
    (record,) = caplog.records
    assert "set VTT_DB_STATEMENT_CACHE=false" in record.__dict__["reason"]


async def test_a_lookup_past_its_deadline_is_1013_and_its_connection_is_terminated() -> None:
    class Hanging(FakeConnection):
        async def fetchrow(self, sql: str, *args: Any) -> tuple[str]:
            await asyncio.Event().wait()  # a server that never answers
            raise AssertionError("unreachable")

    hanging = Hanging()
    driver = DriverPool(
        "postgresql://vtt@127.0.0.1:5432/app", connect_timeout=0.05, command_timeout=0.05
    )
    driver._pool = FakePool(hanging)

    failure = await refused(SqlRoles(DriverRoleQuery(driver, DEFAULT_ROLE_SQL)).role("c1", user()))

    assert failure.code == CloseCode.TRY_AGAIN_LATER
    assert hanging.terminated, "not handed back with a query perhaps under way"
