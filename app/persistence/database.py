"""The database engine: which driver a DATABASE_URL gets, and how its connections behave."""

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

# libpq sslmode values; asyncpg takes the same words through its `ssl` argument.
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
# The libpq parameters asyncpg also accepts as connect() keywords; every other libpq
# parameter (channel_binding, options, application_name, ...) would make asyncpg raise.
_ASYNCPG_PARAMS = frozenset({"target_session_attrs", "krbsrvname", "gsslib"})
# A pooled Postgres connection idle this long is pinged before it is used again.
IDLE_PING_AFTER = 10.0
RETURNED_AT = "vtt_returned_at"


def async_url(database_url: str | None, sqlite_path: str = "vtt.db") -> URL:
    """Return the async-driver URL for a libpq-style or SQLite URL (None: the SQLite file)."""
    if not database_url:
        return URL.create("sqlite+aiosqlite", database=sqlite_path)
    url = make_url(database_url)
    if url.drivername in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+asyncpg", query=_asyncpg_query(url))
    if url.drivername == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if url.drivername in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        return url
    raise ValueError(f"unsupported database URL scheme {url.drivername!r}")


def _asyncpg_query(url: URL) -> dict[str, str | tuple[str, ...]]:
    """Translate a libpq URL's query parameters into the ones asyncpg accepts."""
    query: dict[str, str | tuple[str, ...]] = {
        key: value for key, value in url.query.items() if key in _ASYNCPG_PARAMS
    }
    sslmode = url.query.get("sslmode")
    if isinstance(sslmode, tuple):
        sslmode = sslmode[-1]
    if sslmode is not None:
        if sslmode not in _SSL_MODES:
            raise ValueError(f"unsupported sslmode {sslmode!r}")
        query["ssl"] = sslmode
    return query


def create_engine(
    database_url: str | None,
    sqlite_path: str = "vtt.db",
    *,
    connect_timeout: float = 5.0,
    command_timeout: float = 10.0,
    idle_ping_after: float = IDLE_PING_AFTER,
) -> AsyncEngine:
    """Build the process's one async engine (asyncpg for Postgres, aiosqlite for SQLite)."""
    url = async_url(database_url, sqlite_path)
    if url.get_backend_name() == "postgresql":
        engine = create_async_engine(
            url,
            # Parameters are campaign state and user ids: keep them out of errors and logs.
            hide_parameters=True,
            pool_size=10,
            max_overflow=10,
            pool_timeout=connect_timeout,
            pool_recycle=600,
            connect_args={
                # Neon's pooler runs PgBouncer in transaction mode, where a named prepared
                # statement may land on another server connection: use unnamed ones only.
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                # Bounded waits, so an outage surfaces as an error in seconds, not a hang.
                "timeout": connect_timeout,
                "command_timeout": command_timeout,
                "server_settings": {"application_name": "vtt-realtime"},
            },
        )
        _ping_when_idle(engine, idle_ping_after)
        return engine
    engine = create_async_engine(
        url, hide_parameters=True, connect_args={"timeout": connect_timeout}
    )
    event.listen(engine.sync_engine, "connect", _configure_sqlite)
    return engine


def _ping_when_idle(engine: AsyncEngine, idle_after: float) -> None:
    """Check a pooled connection before use only when it sat idle for `idle_after` seconds.

    A connection idle for a while may have been dropped (Neon suspends idle computes); one
    used a moment ago almost never was, and pinging it on every checkout (pool_pre_ping) would
    add a round trip to every role lookup of a join storm. A failed ping makes the pool
    discard the connection and take another; any later failure surfaces as a store or role
    error, which the callers already treat as an outage.
    """

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        returned = record.info.get(RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_after:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError("idle connection failed its ping") from error

    def checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[RETURNED_AT] = time.monotonic()

    event.listen(engine.sync_engine.pool, "checkout", checkout)
    event.listen(engine.sync_engine.pool, "checkin", checkin)


def _configure_sqlite(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """Put each new SQLite connection in WAL mode, so a flush never blocks a load."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
