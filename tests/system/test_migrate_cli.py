"""The alembic CLI, as `make migrate` and the release command run it, on SQLite and Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.persistence.migrate import upgrade_to_head
from tests.support.loops import run
from tests.support.sql import (
    FIXTURE,
    HEAD,
    OURS,
    ROOT,
    alembic,
    execute,
    inspect_database,
    neon_style,
)

# The table exactly as the Go service's README creates it.
GO_SERVICE_DDL = """
CREATE TABLE vtt_sessions (
  campaign_id  TEXT PRIMARY KEY,
  state        JSONB        NOT NULL DEFAULT '{}',
  updated_at   TIMESTAMPTZ  NOT NULL DEFAULT now()
);
"""


def test_downgrade_to_base_then_upgrade_again_rebuilds_the_table(
    database_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(database_url)
    down = alembic("downgrade", "base", cwd=tmp_path, database_url=database_url)
    assert down.returncode == 0, down.stderr
    # chat_messages may hold the Next.js app's rows: no downgrade drops it.
    tables = run(inspect_database(database_url))["tables"]
    assert tables == {"vtt_alembic_version", "chat_messages"}
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


def test_offline_mode_prints_the_adopting_create_table(tmp_path: Path) -> None:
    result = alembic(
        "upgrade", "head", "--sql", cwd=tmp_path, database_url="postgres://u@h/db?sslmode=require"
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE IF NOT EXISTS vtt_sessions" in result.stdout
    assert "JSONB DEFAULT '{}' NOT NULL" in result.stdout
    assert "CREATE TABLE vtt_alembic_version" in result.stdout
