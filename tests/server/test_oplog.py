"""The op log on a real Redis: appended before anyone sees an edit, fenced by the claim,
trimmed to what the store confirmed, grown while the store is away, replayed by a new owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from app.auth.roles import DevClaimRoles
from app.config import Cluster, Settings
from app.coord import keys
from app.coord.oplog import RedisOpLog, connect
from app.coord.redis import RedisCoordinator
from app.manager import SessionManager
from app.metrics import Metrics
from app.persistence.chat import MemoryChatStore
from app.persistence.store import MemoryStore
from tests.support.fakes import FakeMember, change
from tests.support.harness import token_payload
from tests.support.poll import poll
from tests.support.redisproc import RedisProcess, connected

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


def cluster_on(redis: RedisProcess, node: str) -> Cluster:
    return Cluster(
        redis_url=redis.url,
        node_id=node,
        node_url=f"ws://127.0.0.1:1/{node}",
        secret="s" * 16,
        lease_ttl=2.0,
    )


@asynccontextmanager
async def owner(
    redis: RedisProcess, store: MemoryStore, node: str
) -> AsyncIterator[SessionManager]:
    """A clustered manager on `store` whose flush loop is not started (tests flush)."""
    cluster = cluster_on(redis, node)
    settings = replace(Settings(env="test"), cluster=cluster)
    metrics = Metrics()
    coordinator = RedisCoordinator(cluster, metrics)
    manager = SessionManager(
        settings, store, metrics, MemoryChatStore(), DevClaimRoles(), coordinator
    )
    oplog = RedisOpLog(
        connect(redis.url, cluster.renew_interval),
        coordinator,
        1000,
        metrics,
        manager.fenced_out,
        manager.claim_lost,
    )
    manager.oplog = oplog
    async with asyncio.timeout(TIMEOUT):
        await coordinator.start(manager)
    oplog.start()
    try:
        yield manager
    finally:
        await oplog.close()
        await coordinator.close()


async def entry_ids(redis: aioredis.Redis) -> list[bytes]:
    entries = await redis.xrange(keys.log("c1"))
    assert entries is not None
    return [bytes(entry_id) for entry_id, _ in entries if isinstance(entry_id, bytes)]


def moves(member: FakeMember) -> list[int]:
    return [m["payload"]["x"] for m in member.received if m["type"] == "token.move"]


async def test_an_edit_is_in_the_log_before_anyone_sees_it_and_the_log_is_trimmed_on_flush(
    redis_server: RedisProcess,
) -> None:
    store = MemoryStore()
    async with owner(redis_server, store, "a") as manager, connected(redis_server) as redis:
        gm = FakeMember("gm", "gm")
        session, _ = await manager.join("c1", gm)
        session.submit_now(gm, change("token.add", token_payload("t1")))
        session.submit_now(gm, change("token.move", {"token_id": "t1", "x": 3, "y": 0}))

        assert moves(gm) == []
        await poll(lambda: moves(gm) == [3], TIMEOUT, "the move to be released")
        assert await entry_ids(redis) == [b"2-0"]

        async with asyncio.timeout(TIMEOUT):
            assert await manager.flush()
        assert await redis.xlen(keys.log("c1")) == 0


async def test_while_the_store_is_away_the_log_grows_and_is_trimmed_once_it_is_back(
    redis_server: RedisProcess,
) -> None:
    store = MemoryStore()
    async with owner(redis_server, store, "a") as manager, connected(redis_server) as redis:
        gm = FakeMember("gm", "gm")
        session, _ = await manager.join("c1", gm)
        session.submit_now(gm, change("token.add", token_payload("t1")))
        store.outage = True
        for x in range(1, 6):
            session.submit_now(gm, change("token.move", {"token_id": "t1", "x": x, "y": 0}))
            await poll(lambda: moves(gm)[-1:] == [x], TIMEOUT, "each move to be released")  # noqa: B023
            async with asyncio.timeout(TIMEOUT):
                assert not await manager.flush()

        # The add shared its entry with the first move; each later move waited for its own.
        assert await redis.xlen(keys.log("c1")) == 5
        assert await entry_ids(redis) == [b"2-0", b"3-0", b"4-0", b"5-0", b"6-0"]
        store.outage = False
        async with asyncio.timeout(TIMEOUT):
            assert await manager.flush()
        assert await redis.xlen(keys.log("c1")) == 0


async def test_close_ends_the_writer_when_an_append_swallows_the_cancel(
    redis_server: RedisProcess,
) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 returns the send's result
    # when a cancel lands as the send completes: this append does that on purpose.
    async with owner(redis_server, MemoryStore(), "a") as manager:
        oplog = manager.oplog
        assert oplog is not None
        real = oplog._append
        entered = asyncio.Event()

        async def swallowing(keys: list[str], args: list[str | bytes]) -> object:
            results = await real(keys=keys, args=args)
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return results
            raise AssertionError("the gate never opens")

        oplog._append = swallowing  # type: ignore[assignment]
        gm = FakeMember("gm", "gm")
        session, _ = await manager.join("c1", gm)
        session.submit_now(gm, change("token.add", token_payload("t1")))
        async with asyncio.timeout(TIMEOUT):
            await entered.wait()
            await oplog.close()


@pytest.mark.parametrize(
    ("lost", "code", "written"),
    [("to another machine", 1012, False), ("everything", 1013, True), ("the claim", 1013, True)],
)
async def test_an_append_the_claim_no_longer_allows_shows_nothing_and_ends_the_session(
    redis_server: RedisProcess, lost: str, code: int, written: bool
) -> None:
    # Another machine's claim: it replays the log, so the session is dropped unsaved (1012).
    # No claim at all (Redis restarted empty, or lost the key) before the lease's renew
    # noticed: no one else holds the campaign, so what the session applied is written (1013).
    store = MemoryStore()
    async with owner(redis_server, store, "a") as manager, connected(redis_server) as redis:
        gm = FakeMember("gm", "gm")
        session, _ = await manager.join("c1", gm)
        session.submit_now(gm, change("token.add", token_payload("t1")))
        await poll(lambda: "token.add" in gm.types, TIMEOUT, "the add")
        if lost == "to another machine":
            await redis.set(keys.claim("c1"), "b|other|9|ws://elsewhere")
        elif lost == "everything":
            await redis.flushall()
        else:
            await redis.delete(keys.claim("c1"))

        session.submit_now(gm, change("token.move", {"token_id": "t1", "x": 1, "y": 0}))

        await poll(lambda: gm.closed_with is not None, TIMEOUT, "the member to be closed")
        assert gm.closed_with is not None
        assert int(gm.closed_with.code) == code
        assert moves(gm) == []
        assert "c1" not in manager.sessions
        stored = await store.load("c1")
        assert (stored is not None and b'"t1"' in stored) is written


async def test_a_new_owner_replays_the_log_after_the_row_and_keeps_the_epoch(
    redis_server: RedisProcess,
) -> None:
    store = MemoryStore()
    async with owner(redis_server, store, "a") as first:
        gm = FakeMember("gm", "gm")
        session, _ = await first.join("c1", gm)
        session.submit_now(gm, change("token.add", token_payload("t1")))
        async with asyncio.timeout(TIMEOUT):
            await poll(lambda: "token.add" in gm.types, TIMEOUT, "the add")
            assert await first.flush()
        for x in (4, 8):
            session.submit_now(gm, change("token.move", {"token_id": "t1", "x": x, "y": 0}))
        await poll(lambda: moves(gm) == [4, 8], TIMEOUT, "the moves after the flush")
        epoch, tip = session.epoch, session.state.seq
        # What a SIGKILL leaves: the claim, the log, and a row one flush behind.
        await first.coordinator.abandon()  # type: ignore[attr-defined]

    async with owner(redis_server, store, "b") as second:
        witness = FakeMember("pl", "player")

        async def taken_over() -> bool:
            try:
                await second.acquire("c1")
            except Exception:
                return False
            return True

        await poll(taken_over, TIMEOUT, "the claim to lapse and the new owner to load")
        resumed_session, resumed = await second.join("c1", witness, since=1, epoch=epoch)

        assert resumed
        assert resumed_session.state.seq == tip
        assert resumed_session.state.tokens["t1"].x == 8
        assert moves(witness) == [4, 8]
        assert resumed_session.fence == 2
        assert store.fences["c1"] == 2
