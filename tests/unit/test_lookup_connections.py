"""LookupConnections, the driver pool's own connections, over a fake asyncpg.connect."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from app.persistence.database import LookupConnections
from tests.support.harness import TIMEOUT
from tests.support.poll import poll

pytestmark = pytest.mark.anyio


class FakeConnection:
    """What the pool uses of an asyncpg connection."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.terminated = False

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = self.terminated = True

    async def close(self, timeout: float) -> None:
        self.closed = True


class Server:
    """A fake asyncpg.connect: counts connections; fails while `down`, waits while gated."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.attempts = 0
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def connect(self, **_: Any) -> FakeConnection:
        self.attempts += 1
        await self.gate.wait()
        if self.down:
            raise ConnectionRefusedError("down")
        connection = FakeConnection(len(self.opened))
        self.opened.append(connection)
        return connection

    def open_now(self) -> list[FakeConnection]:
        return [c for c in self.opened if not c.closed]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Server:
    fake = Server()
    monkeypatch.setattr(asyncpg, "connect", fake.connect)
    return fake


async def take(pool: LookupConnections) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await pool.take()


async def test_the_most_recently_returned_connection_is_lent_again(server: Server) -> None:
    pool = LookupConnections({}, size=3)
    first, second = await take(pool), await take(pool)
    pool.give_back(first)
    pool.give_back(second)

    assert await take(pool) is second
    assert await take(pool) is first
    assert len(server.opened) == 2


async def test_past_its_size_a_borrower_waits_for_the_next_connection_given_back(
    server: Server,
) -> None:
    pool = LookupConnections({}, size=2)
    held = [await take(pool), await take(pool)]
    waiting = asyncio.create_task(take(pool))
    await asyncio.sleep(0)
    assert not waiting.done()

    pool.give_back(held[1])

    assert await asyncio.wait_for(waiting, TIMEOUT) is held[1]
    assert len(server.opened) == 2


async def test_a_connection_back_closed_is_let_go_and_replaced_by_a_new_one(
    server: Server,
) -> None:
    pool = LookupConnections({}, size=1)
    dead = await take(pool)
    waiting = asyncio.create_task(take(pool))
    dead.terminate()

    pool.give_back(dead)

    fresh = await asyncio.wait_for(waiting, TIMEOUT)
    assert fresh is not dead
    assert server.open_now() == [fresh]


async def test_expiring_closes_idle_connections_now_and_lent_ones_as_they_come_back(
    server: Server,
) -> None:
    pool = LookupConnections({}, size=2)
    idle, lent = await take(pool), await take(pool)
    pool.give_back(idle)

    await pool.expire_connections()
    await poll(lambda: idle.closed, TIMEOUT, "the idle connection to close")
    assert not lent.closed
    pool.give_back(lent)
    await poll(lambda: lent.closed, TIMEOUT, "the lent connection to close on its return")

    fresh = await take(pool)
    assert fresh not in (idle, lent)
    assert server.open_now() == [fresh]


async def test_a_connection_idle_past_the_limit_is_closed(server: Server) -> None:
    pool = LookupConnections({}, size=2, idle_close_after=0.05)
    used, kept = await take(pool), await take(pool)
    pool.give_back(used)

    await poll(lambda: used.closed, TIMEOUT, "the idle connection to be closed")

    assert not kept.closed
    pool.give_back(kept)
    assert await take(pool) is kept


async def test_a_cancelled_borrower_handed_a_turn_passes_it_on(server: Server) -> None:
    pool = LookupConnections({}, size=1)
    held = await take(pool)
    first = asyncio.create_task(take(pool))
    second = asyncio.create_task(take(pool))
    await asyncio.sleep(0)

    pool.give_back(held)  # wakes `first`...
    first.cancel()  # ...which goes before it runs

    assert await asyncio.wait_for(second, TIMEOUT) is held
    assert first.cancelled()


async def test_a_failed_connect_is_raised_and_a_waiting_borrower_tries_in_its_place(
    server: Server,
) -> None:
    pool = LookupConnections({}, size=1)
    server.down = True
    server.gate.clear()
    opening = asyncio.create_task(take(pool))
    waiting = asyncio.create_task(take(pool))
    await asyncio.sleep(0)
    server.gate.set()

    for borrower in (opening, waiting):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(borrower, TIMEOUT)
    assert server.attempts == 2
    server.down = False
    assert await take(pool) is server.opened[0]


async def test_closing_closes_idle_connections_and_waits_for_lent_ones(server: Server) -> None:
    pool = LookupConnections({}, size=2)
    idle, lent = await take(pool), await take(pool)
    pool.give_back(idle)
    closing = asyncio.create_task(pool.close())
    await poll(lambda: idle.closed, TIMEOUT, "the idle connection to close")
    assert not closing.done()

    pool.give_back(lent)
    await asyncio.wait_for(closing, TIMEOUT)

    assert lent.closed
    assert pool._sweeper is None, "no idle sweep left pending"
    with pytest.raises(asyncpg.InterfaceError, match="pool is closing"):
        await take(pool)


async def test_closing_refuses_a_queued_borrower(server: Server) -> None:
    pool = LookupConnections({}, size=1)
    lent = await take(pool)
    waiting = asyncio.create_task(take(pool))
    await asyncio.sleep(0)
    closing = asyncio.create_task(pool.close())

    with pytest.raises(asyncpg.InterfaceError, match="pool is closing"):
        await asyncio.wait_for(waiting, TIMEOUT)
    pool.give_back(lent)
    await asyncio.wait_for(closing, TIMEOUT)
    assert lent.closed


async def test_terminating_drops_every_connection_lent_or_idle(server: Server) -> None:
    pool = LookupConnections({}, size=2)
    idle, lent = await take(pool), await take(pool)
    pool.give_back(idle)

    pool.terminate()

    assert idle.terminated
    assert lent.terminated
    pool.give_back(lent)
    assert server.open_now() == []
