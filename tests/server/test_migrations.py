"""Alembic migrations on real SQLite and real Postgres, through the CLI and app.migrate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from app.errors import CloseCode
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.tables import include_name, metadata
from tests.support.harness import TIMEOUT, Peer, serve, settings_for

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
# The newest revision, and the tables it leaves (chat_messages is created when absent).
HEAD = "0002"
OURS = {"vtt_sessions", "vtt_alembic_version", "chat_messages", "vtt_chat_rolls"}
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "go-vtt-sessions-state.json"
# The table exactly as the Go service's README creates it.
GO_SERVICE_DDL = """
CREATE TABLE vtt_sessions (
  campaign_id  TEXT PRIMARY KEY,
  state        JSONB        NOT NULL DEFAULT '{}',
  updated_at   TIMESTAMPTZ  NOT NULL DEFAULT now()
);
"""


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test scenario on a fresh event loop, failing it after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def alembic(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    """Run the alembic CLI of this project as `make migrate` does."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def neon_style(postgres_url: str) -> str:
    """The same database spelled as Neon hands URLs out: postgres://, libpq parameters."""
    url = make_url(postgres_url).set(
        drivername="postgres", query={"sslmode": "disable", "channel_binding": "disable"}
    )
    return url.render_as_string(hide_password=False)


async def inspect_database(database_url: str) -> dict[str, Any]:
    """What the schema looks like: tables, columns, key, versions, and drift from tables.py."""

    def look(connection: Connection) -> dict[str, Any]:
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        found: dict[str, Any] = {"tables": tables}
        if "vtt_sessions" in tables:
            found["columns"] = {
                column["name"]: (str(column["type"]), column["nullable"], column["default"])
                for column in inspector.get_columns("vtt_sessions")
            }
            found["primary_key"] = inspector.get_pk_constraint("vtt_sessions")
            context = MigrationContext.configure(
                connection,
                opts={"version_table": "vtt_alembic_version", "include_name": include_name},
            )
            found["drift"] = compare_metadata(context, metadata)
        if "vtt_alembic_version" in tables:
            found["versions"] = [
                row[0] for row in connection.execute(text("SELECT * FROM vtt_alembic_version"))
            ]
        return found

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(look)
    finally:
        await engine.dispose()


async def execute(database_url: str, *statements: str, **parameters: object) -> list[Any]:
    """Run statements in one transaction and return the last one's rows."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = await connection.execute(text(statement), parameters)
                rows = list(result) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


def test_upgrade_creates_vtt_sessions_as_the_protocol_shows(database_url: str) -> None:
    upgrade_to_head(database_url)
    found = run(inspect_database(database_url))
    assert found["tables"] == OURS
    assert found["versions"] == [HEAD]
    assert found["primary_key"]["constrained_columns"] == ["campaign_id"]
    assert found["drift"] == []
    columns = found["columns"]
    assert set(columns) == {"campaign_id", "state", "updated_at"}
    assert all(nullable is False for _, nullable, _ in columns.values())
    if make_url(database_url).get_backend_name() == "postgresql":
        assert found["primary_key"]["name"] == "vtt_sessions_pkey"
        assert columns["campaign_id"][0] == "TEXT"
        assert columns["state"][0] == "JSONB"
        assert columns["state"][2] == "'{}'::jsonb"
        assert columns["updated_at"][0] == "TIMESTAMP"
        assert columns["updated_at"][2] == "now()"
    else:
        assert columns["state"][0] == "JSON"
        assert columns["state"][2] == "'{}'"


def test_upgrading_twice_changes_nothing_the_second_time(database_url: str) -> None:
    upgrade_to_head(database_url)
    run(execute(database_url, "INSERT INTO vtt_sessions (campaign_id, state) VALUES ('c1', '{}')"))
    upgrade_to_head(database_url)
    assert run(execute(database_url, "SELECT campaign_id FROM vtt_sessions")) == [("c1",)]
    assert run(inspect_database(database_url))["versions"] == [HEAD]


def test_upgrade_to_head_works_from_a_thread_while_an_event_loop_runs(database_url: str) -> None:
    async def scenario() -> None:
        await asyncio.to_thread(upgrade_to_head, database_url)

    run(scenario())
    assert run(inspect_database(database_url))["versions"] == [HEAD]


def test_downgrade_to_base_then_upgrade_again_rebuilds_the_table(
    database_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(database_url)
    down = alembic("downgrade", "base", cwd=tmp_path, database_url=database_url)
    assert down.returncode == 0, down.stderr
    # chat_messages may hold the Next.js app's rows: no downgrade drops it.
    assert run(inspect_database(database_url))["tables"] == {"vtt_alembic_version", "chat_messages"}
    upgrade_to_head(database_url)
    assert run(inspect_database(database_url))["versions"] == [HEAD]


def test_the_cli_without_database_url_migrates_vtt_db_in_the_working_directory(
    tmp_path: Path,
) -> None:
    result = alembic("upgrade", "head", cwd=tmp_path, database_url=None)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vtt.db").exists()
    found = run(inspect_database(f"sqlite:///{tmp_path / 'vtt.db'}"))
    assert found["versions"] == [HEAD]


@pytest.mark.postgres
def test_the_cli_migrates_a_neon_style_postgres_url(postgres_url: str, tmp_path: Path) -> None:
    result = alembic("upgrade", "head", cwd=tmp_path, database_url=neon_style(postgres_url))
    assert result.returncode == 0, result.stderr
    assert run(inspect_database(postgres_url))["versions"] == [HEAD]
    assert not (tmp_path / "vtt.db").exists()


@pytest.mark.postgres
def test_upgrade_adopts_the_go_service_table_and_leaves_its_row_untouched(
    postgres_url: str, tmp_path: Path
) -> None:
    fixture = FIXTURE.read_text()
    run(
        execute(
            postgres_url,
            GO_SERVICE_DDL,
            "CREATE TABLE campaigns (id uuid PRIMARY KEY, gm_id text NOT NULL)",
            "INSERT INTO vtt_sessions (campaign_id, state, updated_at)"
            " VALUES ('c-fixture', CAST(:state AS jsonb), '2025-03-01T20:15:00Z')",
            state=fixture,
        )
    )
    row = "SELECT xmin::text, state::text, updated_at FROM vtt_sessions"
    before = run(execute(postgres_url, row))

    result = alembic("upgrade", "head", cwd=tmp_path, database_url=neon_style(postgres_url))

    assert result.returncode == 0, result.stderr
    after = run(execute(postgres_url, row))
    # Same xmin: the row was not even rewritten, let alone changed.
    assert after == before
    assert json.loads(after[0][1]) == json.loads(fixture)
    found = run(inspect_database(postgres_url))
    assert found["versions"] == [HEAD]
    assert found["drift"] == []
    assert found["tables"] == OURS | {"campaigns"}


@pytest.mark.postgres
def test_two_servers_migrating_at_once_both_succeed(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": neon_style(postgres_url)}
    command = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(process.wait(timeout=60), process.communicate()[1]) for process in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert run(inspect_database(postgres_url))["versions"] == [HEAD]


def test_a_server_with_auto_migrate_on_creates_the_tables_at_startup(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario() -> dict[str, Any]:
        async with serve(settings_for(tmp_path, database_url=database_url)) as server:
            found = await inspect_database(database_url)
            gm = await server.join("c1", "gm1", "gm")
            await gm.close()
        return found

    found = run(scenario())
    assert found["tables"] == OURS
    assert found["versions"] == [HEAD]


def test_a_server_with_auto_migrate_off_creates_no_tables_and_refuses_joins_until_migrated(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[tuple[int | None, str], set[str], list[int]]:
        settings = settings_for(tmp_path, database_url=database_url, auto_migrate=False)
        async with serve(settings) as server, httpx.AsyncClient(timeout=TIMEOUT) as http:
            readiness = [(await http.get(f"{server.http}/ready")).status_code]
            refused = await Peer.open(server.ws_url("c1", server.token("gm1", "gm")))
            closed = await refused.closed()
            tables: set[str] = (await inspect_database(database_url))["tables"]
            # The release command migrates; the running server then serves without a restart.
            await asyncio.to_thread(upgrade_to_head, database_url)
            readiness.append((await http.get(f"{server.http}/ready")).status_code)
            gm = await server.join("c1", "gm1", "gm")
            await gm.close()
        return closed, tables, readiness

    with caplog.at_level("WARNING", logger="vtt.manager"):
        closed, tables, readiness = run(scenario())

    assert closed == (CloseCode.TRY_AGAIN_LATER, "state could not be loaded")
    assert tables == set()
    assert readiness == [503, 200], "not ready until the sessions table exists"
    failures = [r for r in caplog.records if r.getMessage() == "state load failed"]
    assert len(failures) == 1
    assert "vtt_sessions" in failures[0].__dict__["reason"]


def test_offline_mode_prints_the_adopting_create_table(tmp_path: Path) -> None:
    result = alembic(
        "upgrade", "head", "--sql", cwd=tmp_path, database_url="postgres://u@h/db?sslmode=require"
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE IF NOT EXISTS vtt_sessions" in result.stdout
    assert "JSONB DEFAULT '{}' NOT NULL" in result.stdout
    assert "CREATE TABLE vtt_alembic_version" in result.stdout
