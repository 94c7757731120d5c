"""Alembic's environment: migrate DATABASE_URL's database (or the SQLite file) asynchronously.

The URL goes through app.database, so a Neon-style `postgres://...?sslmode=require` URL
works here exactly as it does in the server. app.migrate passes its URL in
`config.attributes` instead of the environment.
"""

import asyncio
import os
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from app.config import read_dotenv
from app.persistence.database import async_url, create_engine
from app.persistence.tables import include_name, metadata

VERSION_TABLE = "vtt_alembic_version"
# Two machines starting at once take turns on this Postgres advisory lock ("vtt").
MIGRATION_LOCK_KEY = 0x767474

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def environment() -> dict[str, str]:
    """The process environment over `.env`, as the server reads its settings."""
    return {**read_dotenv(Path(".env")), **os.environ}


def database_url() -> str | None:
    """The URL to migrate: the caller's, else DATABASE_URL."""
    if "database_url" in config.attributes:
        url: str | None = config.attributes["database_url"]
        return url
    return environment().get("DATABASE_URL") or None


def sqlite_path() -> str:
    """The SQLite file used when there is no database URL."""
    path: str = (
        config.attributes.get("sqlite_path") or environment().get("VTT_SQLITE_PATH") or "vtt.db"
    )
    return path


def run_migrations_offline(url: URL) -> None:
    """Print the migration SQL for the URL's dialect instead of running it."""
    context.configure(
        url=url,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the pending migrations on one connection, in one transaction."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


async def run_migrations_online() -> None:
    """Connect through the app's engine settings and migrate."""
    engine = create_engine(database_url(), sqlite_path())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline(async_url(database_url(), sqlite_path()))
else:
    asyncio.run(run_migrations_online())
