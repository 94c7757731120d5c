"""The database engine: which driver a DATABASE_URL gets, and how its connections behave."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
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

log = logging.getLogger("vtt.database")


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


# --- the driver pool: asyncpg directly, for the lookups on the join path ---------------------

# Connections of the driver pool; all are opened at startup, in the background.
DRIVER_POOL_SIZE = 10
# asyncpg's own default: prepared statements kept per connection, least recently used out.
STATEMENT_CACHE_SIZE = 100
# A driver connection unused this long is closed (asyncpg's default).
IDLE_CLOSE_AFTER = 300.0


class NoResultColumns(Exception):
    """The statement returns no columns (an UPDATE, say): it cannot answer a lookup."""


class ConnectionGone(Exception):
    """Pooled connections turned out dead during a lookup, twice in a row; `cause` says how."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class DriverPool:
    """The app's own asyncpg pool, for one-row lookups without SQLAlchemy's layers.

    With `statement_cache` (asyncpg's statement cache), each connection prepares a lookup's
    statement once, named, and every later lookup is one round trip (bind and execute).
    Without it, for a transaction pooler (Neon's pooled endpoint, PgBouncer in transaction
    mode), where a named statement may be missing on the server connection the pooler
    picks, every lookup prepares an unnamed statement first: two round trips. Connections
    are not reset when they return to the pool (a lookup changes nothing in a session), and
    every connection is opened at startup, in the background, its lookups' statements
    prepared: a database that is down at startup delays nothing.

    A lookup ends within `deadline` (connect_timeout + command_timeout, 15 s), whatever it
    waits for: a free connection, a new one (itself within connect_timeout), the query. That
    one timer is the lookup's only one: asyncpg's own acquire and command timeouts would add
    two more, which measured over a third of a lookup's CPU on uvloop. A lookup cut short
    terminates its connection.
    """

    def __init__(
        self,
        database_url: str,
        *,
        statement_cache: bool = True,
        size: int = DRIVER_POOL_SIZE,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
    ) -> None:
        url = async_url(database_url)
        if url.get_backend_name() != "postgresql":
            raise ValueError("the driver pool is for Postgres only")
        # The engine's own translation of the URL, so both connect to the same place alike.
        dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
        _, params = dialect.create_connect_args(url)  # type: ignore[no-untyped-call]
        self.connect_kwargs: dict[str, Any] = {
            **params,
            "statement_cache_size": STATEMENT_CACHE_SIZE if statement_cache else 0,
            # A new connection's own bound; everything else a lookup waits for is bounded by
            # its deadline alone (asyncpg's own timeouts would each add a timer to a lookup).
            "timeout": connect_timeout,
            "server_settings": {"application_name": "vtt-realtime"},
        }
        self.statement_cache = statement_cache
        self.size = size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        # A lookup (waiting for a connection, preparing, executing) ends within this.
        self.deadline = connect_timeout + command_timeout
        self._pool: Any = None
        self._warming: asyncio.Task[None] | None = None
        # Lookups to prepare while warming up: SQL and how many parameters it takes.
        self._lookups: list[tuple[str, int]] = []
        # Statements known to return columns.
        self._shaped: set[str] = set()

    def prepare_when_warming(self, sql: str, parameters: int) -> None:
        """Prepare `sql` on every connection opened at startup (its lookups come at once)."""
        self._lookups.append((sql, parameters))

    async def start(self) -> None:
        """Create the pool (no I/O) and open its connections in the background."""
        self._pool = await asyncpg.create_pool(
            min_size=0,
            max_size=self.size,
            reset=_keep_session,
            max_inactive_connection_lifetime=IDLE_CLOSE_AFTER,
            **self.connect_kwargs,
        )
        self._warming = asyncio.create_task(self._warm(), name="vtt-driver-pool-warm")

    async def _warm(self) -> None:
        """Open every connection, its lookups prepared; a failure only leaves that for later."""
        pool = self._pool
        everyone = asyncio.Event()
        arrived = 0
        failures: list[str] = []

        def arrive() -> None:
            nonlocal arrived
            arrived += 1
            if arrived == self.size:
                everyone.set()

        async def one() -> None:
            held = False
            try:
                async with asyncio.timeout(self.deadline), pool.acquire() as connection:
                    held = True
                    for sql, parameters in self._lookups:
                        # Run with empty ids, which match nothing, so the statement is in the
                        # connection's cache; a broken query is reported at its first lookup.
                        with (
                            _dropped_when_cut(connection),
                            contextlib.suppress(asyncpg.PostgresError, NoResultColumns),
                        ):
                            await self._run(connection, sql, [""] * parameters)
                    arrive()
                    # Held until every connection is open, so each acquire opens its own.
                    await everyone.wait()
            except Exception as error:
                failures.append(type(error).__name__)
            finally:
                if not held:
                    arrive()

        await asyncio.gather(*(one() for _ in range(self.size)))
        if failures:
            log.warning(
                "driver pool: %d of %d connections not opened at startup; opened when needed",
                len(failures),
                self.size,
                extra={"reason": failures[0]},
            )

    async def first_row(self, sql: str, args: Sequence[Any]) -> Any:
        """The first row of `sql` with positional `args` ($1, $2, ...), or None for no row.

        Raises NoResultColumns for a statement without result columns, ConnectionGone,
        TimeoutError after `deadline`, and asyncpg's own errors (and OSError) as they come.
        """
        if self._pool is None:
            raise asyncpg.InterfaceError("the driver pool is not started")
        async with asyncio.timeout(self.deadline):
            try:
                return await self._attempt(sql, args)
            except ConnectionGone:
                return await self._attempt(sql, args)

    async def _attempt(self, sql: str, args: Sequence[Any]) -> Any:
        async with self._pool.acquire() as connection:
            try:
                with _dropped_when_cut(connection):
                    return await self._run(connection, sql, args)
            except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError):
                # The server lost (or already has) a named statement asyncpg keeps: a
                # transaction pooler, or a DISCARD ALL. New connections start clean.
                await self._pool.expire_connections()
                raise
            except (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError) as gone:
                # The server ended the connection (a restart, an idle compute suspended: its
                # last words may leave asyncpg "in another operation" until the socket's end
                # is read), or asyncpg lost track of it. The server most likely ended all of
                # them: every connection is replaced, and the lookup, a read, runs once more.
                await self._pool.expire_connections()
                with contextlib.suppress(asyncpg.InterfaceError):  # already let go
                    connection.terminate()
                raise ConnectionGone(type(gone).__name__) from None

    async def _run(self, connection: Any, sql: str, args: Sequence[Any]) -> Any:
        if sql not in self._shaped:
            # Once per statement: fetchrow would read a statement without columns as no row.
            # Unnamed, so as to leave nothing behind on the server.
            described = await connection.prepare(sql, name="")
            if not described.get_attributes():
                raise NoResultColumns(sql)
            self._shaped.add(sql)
        return await connection.fetchrow(sql, *args)

    async def close(self, grace: float = 5.0) -> None:
        """Stop warming, close every connection (terminating them after `grace` seconds)."""
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), grace)
        except TimeoutError:
            self._pool.terminate()


@contextlib.contextmanager
def _dropped_when_cut(connection: Any) -> Iterator[None]:
    """Terminate `connection` when the work on it is cancelled (its deadline, its caller gone).

    A query may be under way: the connection goes at once rather than wait, as it returns to
    the pool, for the server to cancel that query, which a server that does not answer never
    does.
    """
    try:
        yield
    except asyncio.CancelledError:
        with contextlib.suppress(asyncpg.InterfaceError):  # already let go
            connection.terminate()
        raise


async def _keep_session(_connection: Any) -> None:
    """Return a connection to the pool as it is: lookups change nothing in a session.

    (asyncpg's default reset runs RESET ALL, UNLISTEN and more: a round trip per lookup.)
    """
