"""The database as tests reach it past the server: state rows, statements, the schema."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import SqlStore
from app.persistence.tables import include_name, metadata

# The newest revision, and the tables it leaves (chat_messages is created when absent).
HEAD = "0003"
OURS = {"vtt_sessions", "vtt_alembic_version", "chat_messages", "vtt_chat_rolls"}
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "go-vtt-sessions-state.json"


async def stored_state(database_url: str | None, sqlite_path: str, campaign: str) -> Any:
    """The state row of `campaign` as the database holds it, decoded (None when absent)."""
    engine = create_engine(database_url, sqlite_path)
    try:
        data = await SqlStore(engine).load(campaign)
    finally:
        await engine.dispose()
    return None if data is None else json.loads(data)


async def put_row(database_url: str | None, sqlite_path: str, campaign: str, data: bytes) -> None:
    """Write a state row directly, as another service (or an earlier version) would have."""
    await asyncio.to_thread(upgrade_to_head, database_url, sqlite_path)
    engine = create_engine(database_url, sqlite_path)
    try:
        await SqlStore(engine).save_many([(campaign, data)])
    finally:
        await engine.dispose()


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


# --- the Go service's chat, as the Next.js app's database holds it ------------------------------

# A campaign and a character of the Go rows (that database's ids are UUIDs).
GO_CAMPAIGN = "5f0c4e8e-2f7a-4d5e-9a43-1c1d2e3f4a5b"
GO_CHARACTER = "0b7e3c1a-9d2f-4e6b-8a1c-2d3e4f5a6b7c"
# chat_messages as the Next.js app made it for the Go service (GO-SERVICE.md 2.2), with users.
GO_POSTGRES_DDL = (
    "CREATE TABLE users (id text PRIMARY KEY, username text)",
    """CREATE TABLE chat_messages (
      id           UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
      campaign_id  UUID        NOT NULL,
      user_id      TEXT        NOT NULL,
      character_id UUID        NULL,
      recipient_id TEXT        NULL,
      message_type TEXT        NOT NULL,
      content      JSONB       NOT NULL,
      gm_only      BOOLEAN     NOT NULL,
      created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
)
# The Go service's save query, as it wrote every row.
GO_INSERT = (
    "INSERT INTO chat_messages (campaign_id,user_id,character_id,recipient_id,message_type,"
    "content,gm_only,created_at) VALUES (CAST(:campaign AS uuid), :user, "
    "CAST(NULLIF(:character, '') AS uuid), NULLIF(:recipient, ''), :type, CAST(:content AS jsonb),"
    " :gm_only, :at)"
)


def at(hour: int, minute: int) -> datetime:
    """A moment of the evening the Go rows were written."""
    return datetime(2025, 3, 1, hour, minute, tzinfo=UTC)


GO_ROWS: list[dict[str, Any]] = [
    {"user": "user_gm", "character": "", "recipient": "", "type": "text", "gm_only": False,
     "content": '{"text": "Welcome, travellers", "style": {"bold": true}}', "at": at(20, 0)},
    {"user": "user_ana", "character": GO_CHARACTER, "recipient": "", "type": "roll",
     "gm_only": False, "content": '{"formula": "1d20+3", "result": 17}', "at": at(20, 1)},
    {"user": "user_ana", "character": "", "recipient": "user_gm", "type": "text", "gm_only": False,
     "content": '"psst"', "at": at(20, 2)},
    {"user": "user_gm", "character": "", "recipient": "", "type": "text", "gm_only": True,
     "content": '{"text": "the door is trapped"}', "at": at(20, 3)},
]  # fmt: skip
