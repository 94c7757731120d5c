"""The database engine: which driver a DATABASE_URL gets, and how its connections behave."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

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

T = TypeVar("T")
# Writes whose callers were cancelled while they ran, kept until they end (`to_the_end`).
_unfinished: set[asyncio.Future[Any]] = set()


async def to_the_end(write: Coroutine[Any, Any, T]) -> T:
    """Await `write`, which runs to its end even when the caller is cancelled meanwhile.

    A statement abandoned half-way on SQLite goes on in aiosqlite's thread and stops on the
    row nobody reads; the connection closed around it keeps the database's write lock until
    a full garbage collection, and every other write waits out its busy timeout and fails
    ("database is locked"). A write whose caller went leaves what it would have left had it
    completed just before the cancel; its outcome is dropped.
    """
    task = asyncio.ensure_future(write)
    _unfinished.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def _finished(task: asyncio.Future[Any]) -> None:
    _unfinished.discard(task)
    if not task.cancelled():
        # Retrieved here: a caller that went has nobody to tell.
        task.exception()


async def writes_finished() -> None:
    """Wait for the writes whose callers went (before a dispose); a timeout leaves them be."""
    if _unfinished:
        await asyncio.wait(set(_unfinished))


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
    statement_cache: bool = False,
) -> AsyncEngine:
    """Build the process's one async engine (asyncpg for Postgres, aiosqlite for SQLite).

    With `statement_cache` (Postgres not behind a transaction pooler: the `statement_cache`
    setting), each connection prepares a statement once, named, and runs it again in one
    round trip; without it, every statement is prepared anew, unnamed: two round trips.
    """
    url = async_url(database_url, sqlite_path)
    if url.get_backend_name() == "postgresql":
        cache_size = STATEMENT_CACHE_SIZE if statement_cache else 0
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
                # statement may land on another server connection: there, unnamed ones only.
                "statement_cache_size": cache_size,
                "prepared_statement_cache_size": cache_size,
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


# What a read on the driver pool raises when the database did not answer it, or refused it:
# a store turns each into StoreUnavailable, as the engine's errors are.
READ_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ConnectionGone,
)


class LookupConnections:
    """At most `size` asyncpg connections for one-row lookups, lent one lookup at a time.

    asyncpg's own pool costs about 100 us of CPU a lookup on top of the query's 65 (a task
    per release, timers re-armed on each acquire and release, a proxy object per loan): more
    than the round trip itself, on every join of a storm. This one lends the connection idle
    the shortest time, opens one when none is idle and fewer than `size` are open, and else
    queues the borrower. A connection that comes back closed, or opened before
    `expire_connections`, is let go; one idle `idle_close_after` seconds is closed.
    """

    def __init__(
        self, connect_kwargs: dict[str, Any], size: int, idle_close_after: float = IDLE_CLOSE_AFTER
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.connect_kwargs = connect_kwargs
        self.size = size
        self.idle_close_after = idle_close_after
        # Idle connections with when each came back, the most recent last.
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        # Every open connection (idle or lent) with the generation it was opened in.
        self._born: dict[asyncpg.Connection, int] = {}
        self._lent: set[asyncpg.Connection] = set()
        self._opening = 0
        self._generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closing = False
        self._returned = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def acquire(self, timeout: float | None = None) -> _Loan:
        """`async with pool.acquire() as connection:` (within `timeout`, if given)."""
        return _Loan(self, timeout)

    async def take(self) -> asyncpg.Connection:
        """An idle connection, a new one, or the next one given back."""
        while True:
            if self._closing:
                raise asyncpg.InterfaceError("pool is closing")
            idle = self._idle
            while idle:
                connection = idle.pop()[0]
                if self._usable(connection):
                    self._lent.add(connection)
                    return connection
                self._let_go(connection)
            if self._opening + len(self._born) < self.size:
                return await self._open()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the turn it was given goes to the next borrower
                else:
                    self._waiters.remove(waiter)
                raise

    def give_back(self, connection: asyncpg.Connection) -> None:
        """Take a lent connection back (closed or expired ones are let go)."""
        self._lent.discard(connection)
        if self._usable(connection) and not self._closing:
            self._idle.append((connection, time.monotonic()))
            self._arm_sweeper()
        else:
            self._let_go(connection)
        self._returned.set()
        self._wake()

    async def expire_connections(self) -> None:
        """Let every open connection go: idle ones now, lent ones as they come back."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            self._let_go(connection)

    async def close(self) -> None:
        """Close idle connections, then wait for every lent one to come back and close it."""
        self._closing = True
        self._wake_all()
        self._stop_sweeping()
        await self.expire_connections()
        while self._lent:
            self._returned.clear()
            await self._returned.wait()
        if self._closers:
            await asyncio.wait(self._closers)

    def terminate(self) -> None:
        """Drop every connection at once, lent or not."""
        self._closing = True
        self._wake_all()
        for connection in self._born:
            connection.terminate()
        self._idle.clear()
        self._born.clear()
        self._lent.clear()
        for closer in self._closers:
            closer.cancel()
        self._stop_sweeping()

    async def _open(self) -> asyncpg.Connection:
        self._opening += 1
        try:
            connection = await asyncpg.connect(**self.connect_kwargs)
        except BaseException:
            self._wake()  # a queued borrower may try in its place
            raise
        finally:
            self._opening -= 1
        if self._closing:
            connection.terminate()
            raise asyncpg.InterfaceError("pool is closing")
        self._born[connection] = self._generation
        self._lent.add(connection)
        return connection

    def _usable(self, connection: asyncpg.Connection) -> bool:
        return self._born.get(connection) == self._generation and not connection.is_closed()

    def _let_go(self, connection: asyncpg.Connection) -> None:
        """Forget `connection`, closing it in the background unless it is closed already."""
        self._born.pop(connection, None)
        if connection.is_closed():
            return
        closer = asyncio.get_running_loop().create_task(self._close_one(connection))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    @staticmethod
    async def _close_one(connection: asyncpg.Connection) -> None:
        try:
            await connection.close(timeout=5.0)
        except Exception:
            connection.terminate()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            self._wake()

    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self.idle_close_after / 4, self._sweep)

    def _stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        """Close the connections idle `idle_close_after` seconds (the oldest are first)."""
        self._sweeper = None
        cutoff = time.monotonic() - self.idle_close_after
        stale = 0
        while stale < len(self._idle) and self._idle[stale][1] <= cutoff:
            stale += 1
        old, self._idle = self._idle[:stale], self._idle[stale:]
        for connection, _ in old:
            self._let_go(connection)
        if self._idle:
            self._arm_sweeper()


class _Loan:
    """One borrowing of a LookupConnections connection, as an async context manager."""

    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, pool: LookupConnections, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        if self._timeout is None:
            self._connection = await self._pool.take()
        else:
            async with asyncio.timeout(self._timeout):
                self._connection = await self._pool.take()
        return self._connection

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.give_back(connection)


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
        self._pool = LookupConnections(self.connect_kwargs, self.size)
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
        return await self._within_deadline(sql, args, False)

    async def all_rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """Every row of `sql` with positional `args`; raises as `first_row` does (a statement
        without result columns gives no rows)."""
        rows: list[Any] = await self._within_deadline(sql, args, True)
        return rows

    async def parameter_types(self, sql: str) -> list[tuple[str, str, str]]:
        """The schema, name and kind ('scalar', 'array', ...) of each of `sql`'s parameters,
        in $ order, as the server infers them; raises as `first_row` does."""
        if self._pool is None:
            raise asyncpg.InterfaceError("the driver pool is not started")
        async with asyncio.timeout(self.deadline), self._pool.acquire() as connection:
            with _dropped_when_cut(connection):
                described = await connection.prepare(sql, name="")
        return [(kind.schema, kind.name, kind.kind) for kind in described.get_parameters()]

    async def _within_deadline(self, sql: str, args: Sequence[Any], every: bool) -> Any:
        if self._pool is None:
            raise asyncpg.InterfaceError("the driver pool is not started")
        async with asyncio.timeout(self.deadline):
            try:
                return await self._attempt(sql, args, every)
            except ConnectionGone:
                return await self._attempt(sql, args, every)

    async def _attempt(self, sql: str, args: Sequence[Any], every: bool) -> Any:
        async with self._pool.acquire() as connection:
            try:
                with _dropped_when_cut(connection):
                    if every:
                        return await connection.fetch(sql, *args)
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
        connection.terminate()
        raise
