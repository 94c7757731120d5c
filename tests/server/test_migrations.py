"""Migrations through app.migrate on real SQLite and real Postgres, and at server startup."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.errors import CloseCode
from app.persistence.migrate import upgrade_to_head
from tests.support.harness import TIMEOUT, Peer, serve, settings_for
from tests.support.loops import run
from tests.support.sql import HEAD, OURS, alembic, execute, inspect_database


def test_upgrade_creates_vtt_sessions_as_the_protocol_shows(database_url: str) -> None:
    upgrade_to_head(database_url)
    found = run(inspect_database(database_url))
    assert found["tables"] == OURS
    assert found["versions"] == [HEAD]
    assert found["primary_key"]["constrained_columns"] == ["campaign_id"]
    assert found["drift"] == []
    columns = found["columns"]
    assert set(columns) == {"campaign_id", "state", "updated_at", "fence"}
    assert all(nullable is False for _, nullable, _ in columns.values())
    assert columns["fence"] == ("BIGINT", False, "0")
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


def test_the_fence_migration_gives_existing_rows_fence_0_and_downgrades_keeping_them(
    database_url: str, tmp_path: Path
) -> None:
    result = alembic("upgrade", "0002", cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    # A row as the Go service (or this one before issue 17) wrote it.
    run(execute(database_url, "INSERT INTO vtt_sessions (campaign_id, state) VALUES ('c1', '{}')"))
    upgrade_to_head(database_url)
    assert run(execute(database_url, "SELECT campaign_id, fence FROM vtt_sessions")) == [("c1", 0)]
    run(execute(database_url, "UPDATE vtt_sessions SET fence = 9"))
    result = alembic("downgrade", "0002", cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    found = run(inspect_database(database_url))
    assert found["versions"] == ["0002"]
    assert set(found["columns"]) == {"campaign_id", "state", "updated_at"}
    assert run(execute(database_url, "SELECT campaign_id FROM vtt_sessions")) == [("c1",)]
    upgrade_to_head(database_url)
    found = run(inspect_database(database_url))
    assert found["versions"] == [HEAD]
    assert found["drift"] == []
    assert run(execute(database_url, "SELECT campaign_id, fence FROM vtt_sessions")) == [("c1", 0)]


def test_upgrade_to_head_works_from_a_thread_while_an_event_loop_runs(database_url: str) -> None:
    async def scenario() -> None:
        await asyncio.to_thread(upgrade_to_head, database_url)

    run(scenario())
    assert run(inspect_database(database_url))["versions"] == [HEAD]


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
