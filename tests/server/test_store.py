"""The persistence layer on real SQLite and real Postgres: engines, loads, saves, outages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.ext.asyncio import AsyncEngine

from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import (
    BATCH_ROWS,
    WRITERS,
    MemoryStore,
    Saved,
    SqlStore,
    Store,
    StoreUnavailable,
    batches,
)
from app.persistence.tables import vtt_sessions
from tests.support.database import cancel_mid_statement, small_driver_pool
from tests.support.fence_audit import fence_audit, install_fence_audit
from tests.support.loops import run
from tests.support.poll import poll
from tests.support.tcpproxy import TcpProxy

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "go-vtt-sessions-state.json"
# The outage tests use short timeouts so that a black hole costs seconds, not minutes.
CONNECT_TIMEOUT = 1.5
COMMAND_TIMEOUT = 2.0
OUTAGE_BOUND = 8.0


def state(campaign_id: str, **extra: object) -> bytes:
    """A small state in the stored shape, as JSON bytes."""
    body: dict[str, object] = {
        "campaign_id": campaign_id,
        "grid_size": 64,
        "darkness_level": 0.4,
        "tokens": {
            "t1": {
                "token_id": "t1",
                "name": "Gobelin éclaireur 🗡",
                "x": 10.5,
                "y": -3,
                "width": 64,
                "height": 64,
                "visible": False,
            }
        },
        "fog_zones": [],
        "seq": 7,
        **extra,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def seq_and_fence(loaded: tuple[bytes | None, int]) -> tuple[int | None, int]:
    """What load_fenced returned, as the state's seq (None without a row) and the fence."""
    raw, fence = loaded
    return (None if raw is None else json.loads(raw)["seq"]), fence


async def write_under_fences(store: Store) -> dict[str, tuple[int | None, int]]:
    """Write c1 to c3 under lower, equal and higher fences; return each campaign's seq and fence."""
    first = await store.save_many(
        [("c1", state("c1", seq=1)), ("c2", state("c2", seq=1))], {"c1": 5, "c2": 5}
    )
    assert first == Saved(1, frozenset())
    # c1 under a lower fence, c2 under its own, c3 under none (0) on a new row.
    second = await store.save_many(
        [("c1", state("c1", seq=2)), ("c2", state("c2", seq=2)), ("c3", state("c3", seq=2))],
        {"c1": 4, "c2": 5},
    )
    assert second == Saved(1, frozenset({"c1"}))
    assert await store.save_many([("c1", state("c1", seq=3))], {"c1": 7}) == Saved(1, frozenset())
    return {cid: seq_and_fence(await store.load_fenced(cid)) for cid in ("c1", "c2", "c3", "c4")}


FENCED_WRITES = {"c1": (3, 7), "c2": (2, 5), "c3": (2, 0), "c4": (None, 0)}


async def raise_fences(store: Store) -> tuple[int | None, int]:
    """Raise c1's fence before and after its row exists, up and down; return its seq and fence."""
    assert await store.raise_fence("c1", 3) == 0
    assert await store.load_fenced("c1") == (None, 0), "raising a fence creates no row"
    await store.save_many([("c1", state("c1", seq=1))])
    assert [await store.raise_fence("c1", fence) for fence in (4, 2, 4)] == [4, 4, 4]
    refused = await store.save_many([("c1", state("c1", seq=2))], {"c1": 3})
    assert refused.refused == {"c1"}, "an old owner's write after the raise is refused"
    assert (await store.save_many([("c1", state("c1", seq=3))], {"c1": 4})).refused == set()
    return seq_and_fence(await store.load_fenced("c1"))


class Timeouts(TypedDict, total=False):
    """The timeouts create_engine takes."""

    connect_timeout: float
    command_timeout: float
    idle_ping_after: float


@asynccontextmanager
async def sql_store(
    url: str, *, reads: str = "engine", **timeouts: Unpack[Timeouts]
) -> AsyncIterator[tuple[SqlStore, AsyncEngine]]:
    """A migrated database's SqlStore and engine, closed afterwards; with `reads="driver"`
    (Postgres), its loads run on a driver pool of their own, as the server's do."""
    # Migrating from a worker thread while this loop runs is how the server does it too.
    await asyncio.to_thread(upgrade_to_head, url)
    engine = create_engine(url, **timeouts)
    store = SqlStore(engine)
    driver = None
    if reads == "driver":
        driver = small_driver_pool(url, timeouts)
        store.read_through(driver)
        await driver.start()
    try:
        yield store, engine
    finally:
        await store.close()
        if driver is not None:
            await driver.close(grace=1.0)


# async_url and create_engine


def test_the_sqlite_engine_runs_in_wal_mode(tmp_path: Path) -> None:
    async def scenario() -> str:
        engine = create_engine(None, str(tmp_path / "vtt.db"))
        try:
            async with engine.connect() as connection:
                mode: str = await connection.scalar(text("PRAGMA journal_mode"))
                return mode
        finally:
            await engine.dispose()

    assert run(scenario()) == "wal"


@pytest.mark.postgres
@pytest.mark.parametrize("statement_cache", [False, True])
def test_the_postgres_engine_names_its_prepared_statements_only_with_the_statement_cache(
    postgres_url: str, statement_cache: bool
) -> None:
    # A transaction-mode pooler (Neon) breaks named prepared statements: without the cache
    # none may exist; with it, each statement is prepared once and run again from the cache.
    async def scenario() -> list[str]:
        engine = create_engine(postgres_url, statement_cache=statement_cache)
        try:
            async with engine.connect() as connection:
                for value in range(3):
                    await connection.execute(text("SELECT CAST(:v AS integer)"), {"v": value})
                await connection.execute(text("SELECT 1"))
                named = await connection.execute(
                    text("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
                )
                return [row[0] for row in named]
        finally:
            await engine.dispose()

    named = run(scenario())
    if statement_cache:
        # Each statement prepared once (the first of three runs), the others from the cache.
        assert named.count("SELECT CAST($1 AS integer)") == 1
        assert named.count("SELECT 1") == 1
    else:
        assert named == []


# batches


# SqlStore on both databases


def test_a_lower_fence_is_refused_and_an_equal_or_higher_one_wins(database_url: str) -> None:
    async def scenario() -> dict[str, tuple[int | None, int]]:
        async with sql_store(database_url) as (store, _):
            return await write_under_fences(store)

    assert run(scenario()) == FENCED_WRITES


def test_raising_a_fence_never_lowers_it_nor_creates_a_row(database_url: str) -> None:
    async def scenario() -> tuple[int | None, int]:
        async with sql_store(database_url) as (store, _):
            return await raise_fences(store)

    assert run(scenario()) == (3, 4)


@pytest.mark.parametrize("writers", [1, 3])
def test_refusals_in_every_batch_and_writer_are_all_reported(
    database_url: str, writers: int
) -> None:
    ids = [f"c{i:04d}" for i in range(2 * BATCH_ROWS + 1)]
    # One campaign moved on in each of the three batches.
    moved = {ids[7], ids[BATCH_ROWS + 100], ids[-1]}

    async def scenario() -> tuple[Saved, dict[str, tuple[int | None, int]]]:
        async with sql_store(database_url) as (_, engine):
            store = SqlStore(engine, writers=writers)
            await store.save_many([(cid, state(cid, seq=1)) for cid in ids], dict.fromkeys(ids, 1))
            for cid in moved:
                assert await store.raise_fence(cid, 2) == 2
            saved = await store.save_many(
                [(cid, state(cid, seq=2)) for cid in ids], dict.fromkeys(ids, 1)
            )
            return saved, {cid: seq_and_fence(await store.load_fenced(cid)) for cid in ids}

    saved, loaded = run(scenario())
    assert saved == Saved(3, frozenset(moved))
    assert loaded == {cid: (1, 2) if cid in moved else (2, 1) for cid in ids}


@pytest.mark.postgres
def test_the_fence_audit_records_every_write_and_raise_but_no_refused_write(
    postgres_url: str,
) -> None:
    async def scenario() -> list[tuple[str, int, int]]:
        async with sql_store(postgres_url) as (store, _):
            await install_fence_audit(postgres_url)
            await store.save_many([("c1", state("c1", seq=1))], {"c1": 2})
            await store.raise_fence("c1", 5)
            await store.raise_fence("c1", 4)
            await store.save_many([("c1", state("c1", seq=2))], {"c1": 3})
            await store.save_many([("c1", state("c1", seq=3)), ("c2", state("c2"))], {"c1": 5})
            return await fence_audit(postgres_url)

    assert run(scenario()) == [("c1", 2, 1), ("c1", 5, 1), ("c1", 5, 3), ("c2", 0, 7)]


@pytest.mark.postgres
def test_loads_on_the_driver_pool_read_what_the_engine_reads(postgres_url: str) -> None:
    Loads = dict[str, tuple[bytes | None, tuple[bytes | None, int]]]

    async def scenario() -> tuple[Loads, Loads]:
        async with sql_store(postgres_url) as (store, _):
            assert await write_under_fences(store) == FENCED_WRITES
            await store.save_many([("é-🎲", state("é-🎲", note="ünïcødé 🎲"))])
            ids = ("c1", "c2", "c3", "c4", "é-🎲")
            through_engine = {
                cid: (await store.load(cid), await store.load_fenced(cid)) for cid in ids
            }
        async with sql_store(postgres_url, reads="driver") as (store, _):
            through_driver = {
                cid: (await store.load(cid), await store.load_fenced(cid)) for cid in ids
            }
        return through_engine, through_driver

    through_engine, through_driver = run(scenario())
    assert through_driver == through_engine
    assert through_driver["c4"] == (None, (None, 0))


def test_loading_a_campaign_without_a_row_returns_none(database_url: str) -> None:
    async def scenario() -> bytes | None:
        async with sql_store(database_url) as (store, _):
            return await store.load("nobody-here")

    assert run(scenario()) is None


def test_saved_state_loads_back_as_the_same_json_bytes(database_url: str) -> None:
    saved = {campaign_id: state(campaign_id) for campaign_id in ("c1", "c-2", "c_3")}

    async def scenario() -> dict[str, bytes | None]:
        async with sql_store(database_url) as (store, _):
            assert await store.save_many(list(saved.items())) == Saved(1, frozenset())
            return {campaign_id: await store.load(campaign_id) for campaign_id in saved}

    loaded = run(scenario())
    for campaign_id, raw in loaded.items():
        assert isinstance(raw, bytes)
        # Postgres's jsonb re-spaces and re-orders keys; the JSON value is what is kept.
        assert json.loads(raw) == json.loads(saved[campaign_id])


def test_saving_1200_rows_takes_three_round_trips(database_url: str) -> None:
    rows = [(f"campaign-{i:04d}", state(f"campaign-{i:04d}")) for i in range(1200)]

    async def scenario() -> tuple[Saved, list[str], int]:
        async with sql_store(database_url) as (store, engine):
            await store.ping()
            statements: list[str] = []

            @event.listens_for(engine.sync_engine, "before_cursor_execute")
            def count(*args: Any) -> None:
                statements.append(args[2])

            reported = await store.save_many(rows)
            event.remove(engine.sync_engine, "before_cursor_execute", count)
            async with engine.connect() as connection:
                stored = await connection.scalar(text("SELECT count(*) FROM vtt_sessions"))
            return reported, statements, stored

    reported, statements, stored = run(scenario())
    assert len(statements) == 3
    assert all(sql.lstrip().startswith("INSERT INTO vtt_sessions") for sql in statements)
    assert reported == Saved(3, frozenset())
    assert stored == 1200


def test_states_past_a_batchs_byte_cap_go_in_several_statements_and_all_arrive(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [(f"c{i}", state(f"c{i}", seq=i)) for i in range(7)]
    # Two of these states to a batch: binding a statement must stay small on the event loop.
    monkeypatch.setattr("app.persistence.store.BATCH_BYTES", 2 * len(rows[0][1]) + 10)
    expected = len(list(batches(rows)))
    assert expected == 4

    async def scenario() -> tuple[Saved, int, list[Any]]:
        async with sql_store(database_url) as (store, engine):
            await store.ping()
            statements: list[str] = []

            @event.listens_for(engine.sync_engine, "before_cursor_execute")
            def count(*args: Any) -> None:
                statements.append(args[2])

            reported = await store.save_many(rows)
            event.remove(engine.sync_engine, "before_cursor_execute", count)
            async with engine.connect() as connection:
                stored = await connection.execute(
                    select(vtt_sessions.c.campaign_id).order_by(vtt_sessions.c.campaign_id)
                )
                return reported, len(statements), [row[0] for row in stored]

    reported, counted, stored = run(scenario())
    assert (reported, counted) == (Saved(expected, frozenset()), expected)
    assert stored == sorted(campaign_id for campaign_id, _ in rows)


def test_an_upsert_overwrites_the_state_and_bumps_updated_at(database_url: str) -> None:
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)

    async def scenario() -> tuple[bytes | None, datetime]:
        async with sql_store(database_url) as (store, engine):
            await store.save_many([("c1", state("c1", seq=1))])
            async with engine.begin() as connection:
                await connection.execute(update(vtt_sessions).values(updated_at=long_ago))
            await store.save_many([("c1", state("c1", seq=2))])
            async with engine.connect() as connection:
                updated_at = await connection.scalar(select(vtt_sessions.c.updated_at))
            assert isinstance(updated_at, datetime)
            return await store.load("c1"), updated_at

    loaded, updated_at = run(scenario())
    assert loaded is not None
    assert json.loads(loaded)["seq"] == 2
    # SQLite returns the timestamp without a zone; it is UTC (CURRENT_TIMESTAMP).
    assert updated_at.replace(tzinfo=UTC) > datetime(2020, 1, 1, tzinfo=UTC)


def test_a_save_cancelled_mid_statement_ends_all_the_same_and_leaves_sqlite_writable(
    tmp_path: Path,
) -> None:
    # As a flush cancelled at shutdown: the upsert (... RETURNING) already under way in
    # aiosqlite's thread, abandoned, would keep the write lock for the final flush to hit.
    path = tmp_path / "vtt.db"

    async def scenario() -> tuple[int | None, int | None]:
        async with sql_store(f"sqlite:///{path}", connect_timeout=2.0) as (store, engine):
            saving = store.save_many([("c1", state("c1", seq=1))])
            await cancel_mid_statement(engine, path, "INSERT INTO vtt_sessions", saving)
            async with asyncio.timeout(5.0):
                await store.save_many([("c2", state("c2", seq=2))])
                first, second = await store.load("c1"), await store.load("c2")
            assert first is not None
            assert second is not None
            return json.loads(first).get("seq"), json.loads(second).get("seq")

    assert run(scenario()) == (1, 2)


def test_saving_nothing_takes_no_round_trip(database_url: str) -> None:
    async def scenario() -> Saved:
        async with sql_store(database_url) as (store, _):
            return await store.save_many([])

    assert run(scenario()) == Saved(0, frozenset())


@pytest.mark.postgres
def test_a_row_the_go_service_wrote_loads_as_its_json(postgres_url: str) -> None:
    fixture = FIXTURE.read_text()

    async def scenario() -> bytes | None:
        async with sql_store(postgres_url) as (store, engine):
            async with engine.begin() as connection:
                await connection.execute(
                    text("INSERT INTO vtt_sessions (campaign_id, state) VALUES ('go', :s)"),
                    {"s": fixture},
                )
            assert (await store.load_fenced("go"))[1] == 0
            return await store.load("go")

    loaded = run(scenario())
    assert loaded is not None
    assert json.loads(loaded) == json.loads(fixture)
    assert json.loads(loaded)["fog_zones"] is None


@pytest.mark.postgres
def test_invalid_json_fails_the_save_without_echoing_the_state(postgres_url: str) -> None:
    async def scenario() -> StoreUnavailable:
        async with sql_store(postgres_url) as (store, _):
            with pytest.raises(StoreUnavailable) as caught:
                await store.save_many([("c1", b'{"secret": "Orc ambush", oops}')])
            return caught.value

    failure = run(scenario())
    assert failure.__cause__ is not None
    assert "\n" not in str(failure)
    # State is user content: it stays out of error text and so out of logs.
    assert "Orc ambush" not in str(failure)
    assert "Orc ambush" not in str(failure.__cause__)


# Outages (Postgres through a proxy the test controls)


@asynccontextmanager
async def proxied_store(
    postgres_url: str, reads: str = "engine"
) -> AsyncIterator[tuple[SqlStore, TcpProxy]]:
    """A SqlStore whose Postgres link goes through a TcpProxy."""
    direct = make_url(postgres_url)
    async with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        through = direct.set(host="127.0.0.1", port=proxy.port)
        url = through.render_as_string(hide_password=False)
        async with sql_store(
            url, reads=reads, connect_timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
        ) as (store, _):
            yield store, proxy


async def assert_every_call_fails_fast(store: SqlStore) -> None:
    """Every call raises StoreUnavailable, with a cause, within the bound."""
    calls = {
        "load": lambda: store.load("c1"),
        "load_fenced": lambda: store.load_fenced("c1"),
        "save_many": lambda: store.save_many([("c1", state("c1", seq=99))], {"c1": 1}),
        "raise_fence": lambda: store.raise_fence("c1", 1),
        "ping": store.ping,
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await asyncio.wait_for(call(), OUTAGE_BOUND + 5)
        elapsed = time.monotonic() - started
        assert elapsed < OUTAGE_BOUND, f"{name} took {elapsed:.1f}s to fail"
        assert caught.value.__cause__ is not None


async def wait_until_reachable(store: SqlStore, deadline: float = 10.0) -> None:
    """Poll ping until the database answers again."""

    async def reachable() -> bool:
        try:
            await store.ping()
        except StoreUnavailable:
            return False
        return True

    await poll(reachable, deadline, "the database to answer again", interval=0.05)


@pytest.mark.postgres
@pytest.mark.parametrize("reads", ["engine", "driver"])
def test_a_cut_link_fails_every_call_quickly_and_restore_brings_it_back(
    postgres_url: str, reads: str
) -> None:
    async def scenario() -> bytes | None:
        async with proxied_store(postgres_url, reads) as (store, proxy):
            await store.save_many([("c1", state("c1", seq=1))])
            proxy.cut()
            await assert_every_call_fails_fast(store)
            proxy.restore()
            await wait_until_reachable(store)
            assert await store.save_many([("c1", state("c1", seq=2))]) == Saved(1, frozenset())
            return await store.load("c1")

    loaded = run(scenario())
    assert loaded is not None
    assert json.loads(loaded)["seq"] == 2


@pytest.mark.postgres
@pytest.mark.parametrize(("idle_after", "survives"), [(0.0, True), (3600.0, False)])
def test_a_pooled_connection_idle_past_the_threshold_is_pinged_and_replaced_when_dead(
    postgres_url: str, idle_after: float, survives: bool
) -> None:
    async def scenario() -> None:
        direct = make_url(postgres_url)
        async with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
            url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
            async with sql_store(url, idle_ping_after=idle_after) as (store, _):
                await store.save_many([("c1", state("c1", seq=1))])
                proxy.cut()
                proxy.restore()
                # Every pooled connection is dead now, unknown to the pool.
                if survives:
                    assert await store.load("c1") is not None
                else:
                    with pytest.raises(StoreUnavailable):
                        await store.load("c1")
                    assert await store.load("c1") is not None

    run(scenario())


@pytest.mark.postgres
def test_a_silent_link_fails_every_call_within_the_timeouts(postgres_url: str) -> None:
    # A black hole, not a reset: only the connect and command timeouts can end the wait.
    async def scenario() -> bytes | None:
        async with proxied_store(postgres_url) as (store, proxy):
            await store.save_many([("c1", state("c1", seq=1))])
            proxy.stall()
            await assert_every_call_fails_fast(store)
            proxy.restore()
            await wait_until_reachable(store)
            await store.save_many([("c1", state("c1", seq=3))])
            return await store.load("c1")

    loaded = run(scenario())
    assert loaded is not None
    assert json.loads(loaded)["seq"] == 3


@pytest.mark.postgres
def test_a_store_created_during_an_outage_works_once_the_database_is_back(
    postgres_url: str,
) -> None:
    async def scenario() -> bytes | None:
        async with proxied_store(postgres_url) as (store, proxy):
            await store.close()
            proxy.cut()
            with pytest.raises(StoreUnavailable):
                await store.load("c1")
            proxy.restore()
            await wait_until_reachable(store)
            return await store.load("c1")

    assert run(scenario()) is None


@pytest.mark.postgres
def test_warming_up_opens_every_writers_connection_and_compiles_the_upsert(
    postgres_url: str,
) -> None:
    # One batch per writer: the save runs them all at once, each on a connection of its own.
    rows = [(f"c{i:04d}", state(f"c{i:04d}")) for i in range(WRITERS * BATCH_ROWS)]

    async def scenario() -> tuple[int, list[Any]]:
        async with sql_store(postgres_url) as (store, engine):
            await asyncio.wait_for(store.warm(), OUTAGE_BOUND)
            opened = 0
            cached: list[Any] = []

            def connected(*_: Any) -> None:
                nonlocal opened
                opened += 1

            def executed(*args: Any) -> None:
                cached.append(args[4].cache_hit)

            event.listen(engine.sync_engine, "connect", connected)
            event.listen(engine.sync_engine, "before_cursor_execute", executed)
            assert await store.save_many(rows) == Saved(WRITERS, frozenset())
            return opened, cached

    opened, cached = run(scenario())
    assert opened == 0, "every writer found its connection open"
    assert cached == [CacheStats.CACHE_HIT] * WRITERS, "the upsert was compiled already"


@pytest.mark.postgres
def test_a_warm_up_without_a_database_logs_and_returns(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with proxied_store(postgres_url) as (store, proxy):
            proxy.cut()
            with caplog.at_level("WARNING", logger="vtt.store"):
                await asyncio.wait_for(store.warm(), OUTAGE_BOUND)

    run(scenario())
    (record,) = [r for r in caplog.records if r.name == "vtt.store"]
    assert record.getMessage().startswith("store warm-up failed")
    assert record.__dict__["reason"]


@pytest.mark.postgres
@pytest.mark.parametrize("writers", [1, 3])
def test_any_number_of_writers_saves_every_row_once(postgres_url: str, writers: int) -> None:
    rows = [(f"c{i:04d}", state(f"c{i:04d}", seq=i)) for i in range(2 * BATCH_ROWS + 1)]

    async def scenario() -> tuple[Saved, list[Any]]:
        async with sql_store(postgres_url) as (_, engine):
            store = SqlStore(engine, writers=writers)
            trips = await store.save_many(rows)
            async with engine.connect() as connection:
                stored = await connection.execute(
                    text("SELECT campaign_id, (state->>'seq')::int FROM vtt_sessions ORDER BY 1")
                )
                return trips, list(stored)

    trips, stored = run(scenario())
    assert trips == Saved(3, frozenset())
    assert stored == [(f"c{i:04d}", i) for i in range(2 * BATCH_ROWS + 1)]


def test_a_store_without_writers_is_refused(tmp_path: Path) -> None:
    engine = create_engine(None, str(tmp_path / "vtt.db"))
    with pytest.raises(ValueError, match="writer"):
        SqlStore(engine, writers=0)


# MemoryStore


def test_the_memory_store_keeps_what_it_saves() -> None:
    async def scenario() -> tuple[Saved, bytes | None, bytes | None]:
        store = MemoryStore()
        trips = await store.save_many([(f"c{i}", b"{}") for i in range(501)])
        await store.ping()
        return trips, await store.load("c500"), await store.load("missing")

    assert run(scenario()) == (Saved(2, frozenset()), b"{}", None)


def test_the_memory_store_refuses_lower_fences_as_the_databases_do() -> None:
    assert run(write_under_fences(MemoryStore())) == FENCED_WRITES


def test_the_memory_store_raises_fences_as_the_databases_do() -> None:
    assert run(raise_fences(MemoryStore())) == (3, 4)


def test_the_memory_store_fails_every_call_during_an_outage() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        store.outage = True
        with pytest.raises(StoreUnavailable):
            await store.load("c1")
        with pytest.raises(StoreUnavailable):
            await store.save_many([("c1", b"{}")])
        with pytest.raises(StoreUnavailable):
            await store.load_fenced("c1")
        with pytest.raises(StoreUnavailable):
            await store.raise_fence("c1", 1)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        store.outage = False
        assert await store.load("c1") is None

    run(scenario())


def test_the_memory_store_gate_holds_a_save_in_flight() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        store.gate.clear()
        save = asyncio.create_task(store.save_many([("c1", b"{}")]))
        finished, _ = await asyncio.wait({save}, timeout=0.2)
        assert not finished
        assert await store.load("c1") is None
        store.gate.set()
        assert await asyncio.wait_for(save, 5) == Saved(1, frozenset())
        assert store.saves == 1
        assert await store.load("c1") == b"{}"

    run(scenario())


def test_an_outage_that_starts_mid_save_fails_the_save() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        store.gate.clear()
        save = asyncio.create_task(store.save_many([("c1", b"{}")]))
        finished, _ = await asyncio.wait({save}, timeout=0.2)
        assert not finished
        store.outage = True
        store.gate.set()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(save, 5)
        store.outage = False
        assert await store.load("c1") is None

    run(scenario())
