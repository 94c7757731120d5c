"""Campaign roles from SQL on a real SQLite file: the default query, bind checks, bad values."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.auth.roles import SqlRoles
from app.auth.tokens import Identity
from app.config import DEFAULT_ROLE_SQL, ConfigError
from app.errors import CloseCode
from app.persistence.database import create_engine
from app.persistence.roles import RoleQuery
from tests.support.harness import refused
from tests.support.process import free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'gm' FROM campaigns WHERE id = :campaign_id",
        "SELECT 'gm' WHERE :user_id = :user_id",
        "SELECT role FROM members WHERE campaign = :campaign_id AND user = :user_id AND :extra",
        "SELECT role FROM members WHERE campaign = :campaign_id::uuid AND user = :user_id",
        "SELECT 'gm'",
    ],
)
async def test_role_sql_must_bind_exactly_campaign_id_and_user_id(tmp_path: Path, sql: str) -> None:
    engine = create_engine(None, str(tmp_path / "roles.db"))
    try:
        with pytest.raises(ConfigError, match=":campaign_id and :user_id"):
            SqlRoles(RoleQuery(engine, sql))
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_roles(tmp_path: Path) -> AsyncIterator[SqlRoles]:
    path = tmp_path / "roles.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)")
        db.execute("INSERT INTO campaigns VALUES ('c1', 'user_gm')")
    engine = create_engine(None, str(path))
    yield SqlRoles(RoleQuery(engine, DEFAULT_ROLE_SQL))
    await engine.dispose()


def identity(user_id: str, **claims: Any) -> Identity:
    return Identity(user_id, {"sub": user_id, **claims}, time.time() + 60)


async def test_the_default_role_sql_makes_the_campaigns_gm_its_gm_and_anyone_else_a_player(
    sqlite_roles: SqlRoles,
) -> None:
    assert await sqlite_roles.role("c1", identity("user_gm")) == "gm"
    assert await sqlite_roles.role("c1", identity("user_other")) == "player"


async def test_a_campaign_that_does_not_exist_is_4403(sqlite_roles: SqlRoles) -> None:
    failure = await refused(sqlite_roles.role("nope", identity("user_gm")))

    assert failure.code == CloseCode.FORBIDDEN


async def test_the_role_claim_of_a_token_is_ignored_by_sql_roles(sqlite_roles: SqlRoles) -> None:
    assert await sqlite_roles.role("c1", identity("user_x", vtt_role="gm")) == "player"


@pytest.mark.parametrize("value", ["'GM'", "'owner'", "''", "' gm'", "NULL", "1"])
async def test_any_role_value_but_gm_or_player_is_4403(tmp_path: Path, value: str) -> None:
    engine = create_engine(None, str(tmp_path / "roles.db"))
    sql = f"SELECT {value} WHERE :campaign_id = :campaign_id AND :user_id = :user_id"
    roles = SqlRoles(RoleQuery(engine, sql))
    try:
        failure = await refused(roles.role("c1", identity("u")))
    finally:
        await engine.dispose()

    assert failure.code == CloseCode.FORBIDDEN


async def test_a_role_query_that_returns_no_rows_at_all_is_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "roles.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)")
    engine = create_engine(None, str(path))
    sql = "UPDATE campaigns SET gm_id = :user_id WHERE id = :campaign_id"
    roles = SqlRoles(RoleQuery(engine, sql))
    try:
        with caplog.at_level("ERROR", logger="vtt.auth"):
            failure = await refused(roles.role("c1", identity("u")))
    finally:
        await engine.dispose()

    assert (failure.code, failure.reason) == (
        CloseCode.INTERNAL_ERROR,
        "campaign roles cannot be resolved",
    )
    (record,) = [r for r in caplog.records if r.getMessage().startswith("campaign role query")]
    assert record.__dict__["reason"] == "ResourceClosedError"


async def test_a_role_database_that_refuses_connections_gives_1013() -> None:
    engine = create_engine(f"postgresql://vtt@127.0.0.1:{free_port()}/app", connect_timeout=2.0)
    roles = SqlRoles(RoleQuery(engine, DEFAULT_ROLE_SQL))
    try:
        failure = await refused(roles.role("c1", identity("u")))
    finally:
        await engine.dispose()

    assert (failure.code, failure.reason) == (
        CloseCode.TRY_AGAIN_LATER,
        "campaign roles unavailable",
    )
