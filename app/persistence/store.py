"""Where campaign state lives between sessions: load one campaign, save many in batches.

Store (Protocol)        what the session manager calls
  SqlStore              SQLAlchemy Core over asyncpg (Postgres) or aiosqlite (SQLite)
  MemoryStore           an in-process dict for unit tests, with a switchable outage
Saved                   what save_many did: statements run, campaigns refused by their fence
StoreUnavailable        any failure to load, save or ping; the original error is chained

Fences (issue 17): each row holds the fence of the owner that last wrote it. A write under a
lower fence than the row's is refused, so an owner that lost a campaign without knowing it
cannot overwrite its successor's state; a new owner raises the row's fence as it claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, NamedTuple, Protocol

from sqlalchemy import ARRAY, BigInteger, Text, bindparam, cast, func, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from app.persistence.database import READ_FAILURES, DriverPool, to_the_end, writes_finished
from app.persistence.tables import vtt_sessions

BATCH_ROWS: Final = 500
# Postgres parses every state into jsonb, one core per connection: a large flush goes
# over this many connections at once (SQLite has one writer, so it gets one).
WRITERS: Final = 4
# A batch also stops growing at this many bytes of state. Binding a statement's parameters
# and handing them to the socket run on the event loop at several milliseconds a megabyte,
# so a batch of this size keeps each of those steps near a millisecond (a single state
# larger than this still goes alone, in one batch).
BATCH_BYTES: Final = 256 * 1024
# Rows are deduplicated and sorted this many at a time, yielding to the event loop between.
ORDER_SLICE: Final = 2000
# How long the start-up warm-up may take before it is given up (the first flush then opens
# what is missing itself).
WARM_SECONDS: Final = 30.0
# How long closing waits for writes whose callers went (under the shutdown step's 5 s).
WRITES_GRACE: Final = 4.0

log = logging.getLogger("vtt.store")


class StoreUnavailable(Exception):
    """The database did not load, save or answer; the caller refuses the join (1013) or retries."""


class Saved(NamedTuple):
    """The outcome of save_many."""

    # Round trips used: one statement per batch.
    statements: int
    # The campaigns whose row holds a higher fence than the one written: not written.
    refused: frozenset[str]


class Store(Protocol):
    """Durable campaign state: raw JSON bytes and the writer's fence per campaign id."""

    async def load(self, campaign_id: str) -> bytes | None:
        """Return the stored state's JSON text, or None when the campaign has no row."""
        ...

    async def load_fenced(self, campaign_id: str) -> tuple[bytes | None, int]:
        """Return the stored state's JSON text (None without a row) and its fence (0 then)."""
        ...

    async def save_many(
        self, rows: Sequence[tuple[str, bytes]], fences: Mapping[str, int] | None = None
    ) -> Saved:
        """Upsert (campaign_id, state JSON) rows in batches, each under its fence (0 if absent).

        A row holding a higher fence is left as it is, and its campaign is in `refused`.
        """
        ...

    async def raise_fence(self, campaign_id: str, fence: int) -> int:
        """Raise the row's fence to `fence` unless it is higher; return it (0 without a row)."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers and holds the sessions table."""
        ...

    async def close(self) -> None:
        """Release the store's connections."""
        ...


def batches(rows: Sequence[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """Split rows into upsert batches: one row per campaign (the last wins), in id order."""
    latest = dict(rows)
    return cut((campaign_id, latest[campaign_id]) for campaign_id in sorted(latest))


async def in_id_order(rows: Sequence[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """`batches`' rows before cutting, prepared ORDER_SLICE rows per turn of the event loop.

    Sorted runs are merged lazily, a batch at a time, as the writers take them.
    """
    latest: dict[str, bytes] = {}
    for start in range(0, len(rows), ORDER_SLICE):
        if start:
            await asyncio.sleep(0)
        latest.update(rows[start : start + ORDER_SLICE])
    ids = list(latest)
    runs: list[list[str]] = []
    for start in range(0, len(ids), ORDER_SLICE):
        await asyncio.sleep(0)
        runs.append(sorted(ids[start : start + ORDER_SLICE]))
    return ((campaign_id, latest[campaign_id]) for campaign_id in heapq.merge(*runs))


def cut(ordered: Iterable[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """Cut rows, in the order given, into batches of at most BATCH_ROWS rows and BATCH_BYTES."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for campaign_id, state in ordered:
        if batch and (len(batch) == BATCH_ROWS or size + len(state) > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((campaign_id, state))
        size += len(state)
    if batch:
        yield batch


@contextmanager
def _store_failures() -> Iterator[None]:
    """Translate database and network errors into StoreUnavailable, keeping the cause."""
    try:
        yield
    except (SQLAlchemyError, OSError) as error:
        raise StoreUnavailable(_describe(error)) from error


def _describe(error: Exception) -> str:
    """Name a failure on one short line: the driver's error, not SQLAlchemy's statement dump."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


class SqlStore:
    """A Store in the vtt_sessions table, through a shared SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, writers: int = WRITERS) -> None:
        if writers < 1:
            raise ValueError("a store needs at least one writer")
        self._engine = engine
        # A read is one SELECT: in autocommit, without the BEGIN and ROLLBACK round trips.
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._postgres = engine.dialect.name == "postgresql"
        self._writers = writers if self._postgres else 1
        state = vtt_sessions.c.state
        # The JSON goes back to the caller as text, unparsed: state::text on Postgres, and
        # SQLite's JSON column is text already (the coercion skips SQLAlchemy's json.loads).
        state_text = cast(state, Text) if self._postgres else type_coerce(state, Text)
        this = vtt_sessions.c.campaign_id == bindparam("id")
        self._load = select(state_text).where(this)
        self._load_fenced = select(state_text, vtt_sessions.c.fence).where(this)
        self._fence = select(vtt_sessions.c.fence).where(this)
        self._raise_fence = (
            update(vtt_sessions)
            .where(this, vtt_sessions.c.fence < bindparam("fence"))
            .values(fence=bindparam("fence"))
            .returning(vtt_sessions.c.fence)
        )
        self._upsert = _postgres_upsert() if self._postgres else _sqlite_upsert()
        self._warming: asyncio.Task[None] | None = None
        # Where loads run when not through the engine (`read_through`), and their SQL.
        self._driver: DriverPool | None = None
        self._load_sql = ""
        self._load_fenced_sql = ""

    def read_through(self, driver: DriverPool) -> None:
        """Run loads on `driver` (the app's asyncpg pool, Postgres), not through the engine.

        A campaign's first join loads its state: through SQLAlchemy's async layers that cost
        0.8-1.8 ms of CPU here, on the pool about 0.13 ms. The SQL is the engine's own,
        compiled once; a failure is StoreUnavailable, as through the engine.
        """
        dialect = self._engine.dialect
        self._driver = driver
        self._load_sql = str(self._load.compile(dialect=dialect))
        self._load_fenced_sql = str(self._load_fenced.compile(dialect=dialect))

    def start(self) -> None:
        """Begin warming up in the background (Postgres): see `warm`."""
        if self._postgres and self._warming is None:
            self._warming = asyncio.create_task(self.warm(), name="vtt-store-warm")

    async def warm(self) -> None:
        """Open every writer's connection and run the upsert on each with no rows, so that the
        first flush neither compiles the statement nor opens connections (steps of several
        milliseconds on the event loop). Never raises: a database down now is met by the
        flush, as always.
        """
        barrier = asyncio.Barrier(self._writers)
        nothing: dict[str, list[str] | list[int]] = {"ids": [], "states": [], "fences": []}

        async def one() -> None:
            try:
                async with self._engine.begin() as connection:
                    await connection.execute(self._upsert, nothing)
                    # Held until every writer has its own connection.
                    await barrier.wait()
            except BaseException:
                await barrier.abort()
                raise

        try:
            async with asyncio.timeout(WARM_SECONDS):
                outcomes = await asyncio.gather(
                    *(one() for _ in range(self._writers)), return_exceptions=True
                )
        except TimeoutError:
            outcomes = [TimeoutError()]
        # A broken barrier is only the echo of another writer's failure.
        failures = [
            outcome
            for outcome in outcomes
            if isinstance(outcome, Exception)
            and not isinstance(outcome, asyncio.BrokenBarrierError)
        ]
        if failures:
            log.warning(
                "store warm-up failed; the first flush opens its connections itself",
                extra={"reason": _describe(failures[0])},
            )

    async def load(self, campaign_id: str) -> bytes | None:
        """Return the stored state's JSON text, or None when the campaign has no row."""
        if self._driver is not None:
            row = await self._driver_row(self._load_sql, campaign_id)
            return None if row is None else bytes(row[0], "utf-8")
        with _store_failures():
            async with self._reader.connect() as connection:
                state: str | None = await connection.scalar(self._load, {"id": campaign_id})
        return None if state is None else state.encode()

    async def load_fenced(self, campaign_id: str) -> tuple[bytes | None, int]:
        """Return the stored state's JSON text and its fence: (None, 0) without a row."""
        if self._driver is not None:
            row = await self._driver_row(self._load_fenced_sql, campaign_id)
            return (None, 0) if row is None else (bytes(row[0], "utf-8"), int(row[1]))
        with _store_failures():
            async with self._reader.connect() as connection:
                result = await connection.execute(self._load_fenced, {"id": campaign_id})
                row = result.one_or_none()
        if row is None:
            return None, 0
        state: str = row[0]
        fence: int = row[1]
        return state.encode(), fence

    async def _driver_row(self, sql: str, campaign_id: str) -> Any:
        assert self._driver is not None
        try:
            return await self._driver.first_row(sql, [campaign_id])
        except READ_FAILURES as error:
            raise StoreUnavailable(_describe(error)) from error

    async def save_many(
        self, rows: Sequence[tuple[str, bytes]], fences: Mapping[str, int] | None = None
    ) -> Saved:
        """Upsert rows, one statement per batch, over a few connections; say what was refused.

        Each connection writes its share of the batches in one transaction, taking them one
        by one in id order (a fixed order means two writers lock rows in the same order and
        cannot deadlock). A row is written only where the stored fence is at most the one
        given (0 when `fences` has none for it); the upsert returns the ids it wrote, and
        the batch's other ids are refused. On failure some shares may be committed and
        others not: every row is to be saved again.
        """
        pending = cut(await in_id_order(rows))
        given = fences or {}
        taken = 0
        refused: set[str] = set()

        async def write(first: list[tuple[str, bytes]]) -> None:
            nonlocal taken
            async with self._engine.begin() as connection:
                batch: list[tuple[str, bytes]] | None = first
                while batch is not None:
                    result = await connection.execute(self._upsert, self._parameters(batch, given))
                    written = set(result.scalars())
                    refused.update(cid for cid, _ in batch if cid not in written)
                    batch = next(pending, None)
                    taken += batch is not None

        writers = []
        for batch in itertools.islice(pending, self._writers):
            # A flush cancelled at shutdown lets the statements under way end (to_the_end).
            writers.append(to_the_end(write(batch)))
            taken += 1
        outcomes = await asyncio.gather(*writers, return_exceptions=True)
        with _store_failures():
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return Saved(taken, frozenset(refused))

    async def raise_fence(self, campaign_id: str, fence: int) -> int:
        """Raise the row's fence to `fence` unless it is as high already; return the fence.

        No row is created: without one the answer is 0, and the owner's first save
        writes the row under its fence.
        """
        return await to_the_end(self._raise(campaign_id, fence))

    async def _raise(self, campaign_id: str, fence: int) -> int:
        parameters = {"id": campaign_id, "fence": fence}
        with _store_failures():
            async with self._engine.begin() as connection:
                raised: int | None = await connection.scalar(self._raise_fence, parameters)
                if raised is not None:
                    return raised
                kept: int | None = await connection.scalar(self._fence, parameters)
        return 0 if kept is None else kept

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers and vtt_sessions exists."""
        with _store_failures():
            async with self._engine.connect() as connection:
                # No rows are read: the query fails only without a database or the table.
                await connection.scalar(select(vtt_sessions.c.campaign_id).limit(0))

    async def close(self) -> None:
        """Stop warming up, close the engine's pooled connections (the engine stays usable,
        reconnecting)."""
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.wait({self._warming})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITES_GRACE):
                await writes_finished()
        await self._engine.dispose()

    def _parameters(
        self, batch: list[tuple[str, bytes]], fences: Mapping[str, int]
    ) -> dict[str, list[str] | list[int]] | list[dict[str, str | int]]:
        """Bind a batch: three arrays for Postgres's unnest, or one row each for SQLite."""
        if self._postgres:
            return {
                "ids": [campaign_id for campaign_id, _ in batch],
                "states": [state.decode() for _, state in batch],
                "fences": [fences.get(campaign_id, 0) for campaign_id, _ in batch],
            }
        return [
            {"id": campaign_id, "state": state.decode(), "fence": fences.get(campaign_id, 0)}
            for campaign_id, state in batch
        ]


def _postgres_upsert() -> Executable:
    """One INSERT ... SELECT FROM unnest(ids, states, fences) ON CONFLICT DO UPDATE per batch."""
    batch = (
        func.unnest(
            bindparam("ids", type_=ARRAY(Text)),
            bindparam("states", type_=ARRAY(Text)),
            bindparam("fences", type_=ARRAY(BigInteger)),
        )
        .table_valued("campaign_id", "state", "fence")
        .render_derived(name="batch")
    )
    # The JSON text becomes jsonb in the server: nothing is parsed or re-encoded here.
    rows = select(
        batch.c.campaign_id, cast(batch.c.state, postgresql.JSONB), batch.c.fence, func.now()
    )
    insert = postgresql.insert(vtt_sessions).from_select(
        ["campaign_id", "state", "fence", "updated_at"], rows
    )
    return _fenced(insert)


def _sqlite_upsert() -> Executable:
    """An INSERT ... ON CONFLICT DO UPDATE run once per batch with executemany.

    SQLAlchemy runs it as one INSERT of many VALUES rows ("insertmanyvalues"), which is
    how an executemany returns rows on SQLite: the ids written, as on Postgres.
    """
    insert = sqlite.insert(vtt_sessions).values(
        campaign_id=bindparam("id"),
        state=bindparam("state", type_=Text),
        fence=bindparam("fence", type_=BigInteger),
        updated_at=func.now(),
    )
    return _fenced(insert)


def _fenced(insert: postgresql.Insert | sqlite.Insert) -> Executable:
    """Either dialect's upsert: the row is replaced only under a fence at least its own.

    It returns the ids it wrote; a batch's other ids were refused by their row's fence.
    """
    return insert.on_conflict_do_update(
        index_elements=[vtt_sessions.c.campaign_id],
        set_={
            "state": insert.excluded.state,
            "fence": insert.excluded.fence,
            "updated_at": func.now(),
        },
        where=vtt_sessions.c.fence <= insert.excluded.fence,
    ).returning(vtt_sessions.c.campaign_id)


class MemoryStore:
    """A Store in a dict, for unit tests; set `outage` to make every call fail."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}
        # The fence each row was last written under (absent means 0).
        self.fences: dict[str, int] = {}
        self.outage = False
        self.saves = 0
        # Cleared by a test to hold save_many mid-write; set again to let it finish.
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self, campaign_id: str) -> bytes | None:
        """Return the stored bytes, or None when the campaign has none."""
        self._check()
        return self.rows.get(campaign_id)

    async def load_fenced(self, campaign_id: str) -> tuple[bytes | None, int]:
        """Return the stored bytes and their fence: (None, 0) when the campaign has none."""
        self._check()
        if campaign_id not in self.rows:
            return None, 0
        return self.rows[campaign_id], self.fences.get(campaign_id, 0)

    async def save_many(
        self, rows: Sequence[tuple[str, bytes]], fences: Mapping[str, int] | None = None
    ) -> Saved:
        """Store the rows once the gate is open, refusing as SqlStore does; count its trips."""
        self._check()
        await self.gate.wait()
        self._check()
        given = fences or {}
        refused: set[str] = set()
        cut_rows = list(batches(rows))
        for batch in cut_rows:
            for campaign_id, state in batch:
                fence = given.get(campaign_id, 0)
                if campaign_id in self.rows and self.fences.get(campaign_id, 0) > fence:
                    refused.add(campaign_id)
                else:
                    self.rows[campaign_id] = state
                    self.fences[campaign_id] = fence
        self.saves += 1
        return Saved(len(cut_rows), frozenset(refused))

    async def raise_fence(self, campaign_id: str, fence: int) -> int:
        """Raise a stored row's fence to `fence` unless it is as high; return it (0 without)."""
        self._check()
        if campaign_id not in self.rows:
            return 0
        self.fences[campaign_id] = max(self.fences.get(campaign_id, 0), fence)
        return self.fences[campaign_id]

    async def ping(self) -> None:
        """Raise StoreUnavailable during a simulated outage."""
        self._check()

    async def close(self) -> None:
        """Nothing to release."""

    def _check(self) -> None:
        if self.outage:
            raise StoreUnavailable("simulated outage")
