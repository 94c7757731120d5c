"""How DriverRoleQuery sends lookups: IN_FLIGHT queries at most, what waits goes together.

A fake driver pool holds each query until the test lets it answer, so what is in flight and
what waits is certain; tests/server/test_roles.py runs the batched form on Postgres.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from app.persistence.database import DriverPool
from app.persistence.lookups import IN_FLIGHT, LookupUnavailable
from app.persistence.roles import DriverRoleQuery
from tests.support.harness import TIMEOUT

pytestmark = pytest.mark.anyio

# $1 is the campaign, $2 the user.
SQL = "SELECT role FROM members WHERE campaign_id = :campaign_id AND user_id = :user_id"


class HeldPool(DriverPool):
    """Answers every lookup 'player', each query only once the test releases it."""

    def __init__(self) -> None:
        super().__init__("postgresql://vtt@127.0.0.1:5432/app")
        self.queries: list[tuple[str, ...]] = []
        self.held: list[asyncio.Event] = []
        self.asked = asyncio.Condition()

    async def _held(self, users: Sequence[str]) -> None:
        release = asyncio.Event()
        async with self.asked:
            self.queries.append(tuple(users))
            self.held.append(release)
            self.asked.notify_all()
        await release.wait()

    async def first_row(self, sql: str, args: Sequence[Any]) -> Any:
        await self._held([args[1]])
        return ("player",)

    async def all_rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        users = args[1]
        await self._held(users)
        return [(n, "player") for n in range(1, len(users) + 1)]

    async def parameter_types(self, sql: str) -> list[tuple[str, str, str]]:
        return [("pg_catalog", "text", "scalar")] * 2

    async def sent(self, count: int) -> None:
        """Wait until `count` queries were sent."""
        async with self.asked:
            await asyncio.wait_for(self.asked.wait_for(lambda: len(self.queries) >= count), TIMEOUT)


def ask(query: DriverRoleQuery, *users: str) -> list[asyncio.Task[Any]]:
    return [asyncio.create_task(query.first_value("c1", user)) for user in users]


async def test_lookups_asked_while_the_queries_in_flight_are_answered_go_together() -> None:
    pool = HeldPool()
    query = DriverRoleQuery(pool, SQL)
    first: list[asyncio.Task[Any]] = []
    # Asked in one loop turn, they would go together: each is asked in a turn of its own.
    for n in range(IN_FLIGHT):
        first += ask(query, f"alone{n}")
        await pool.sent(n + 1)
    assert pool.queries == [(f"alone{n}",) for n in range(IN_FLIGHT)]

    later = ask(query, "a", "b", "c")
    # One turn for the three to be asked: they wait, nothing more is sent.
    await asyncio.sleep(0)
    assert len(query.lookups._waiting) == 3
    assert len(pool.queries) == IN_FLIGHT
    pool.held[0].set()
    await pool.sent(IN_FLIGHT + 1)

    assert pool.queries[-1] == ("a", "b", "c")
    for release in pool.held:
        release.set()
    answers = await asyncio.wait_for(asyncio.gather(*first, *later), TIMEOUT)
    assert answers == ["player"] * (IN_FLIGHT + 3)


async def test_a_lookup_whose_caller_gave_up_is_not_asked() -> None:
    pool = HeldPool()
    query = DriverRoleQuery(pool, SQL)
    busy = ask(query, "x")
    await pool.sent(1)
    busy += ask(query, "y")
    await pool.sent(2)
    kept, gone = ask(query, "kept", "gone")
    # One turn for the two to be asked (they wait), then one gives up.
    await asyncio.sleep(0)
    assert len(query.lookups._waiting) == 2
    gone.cancel()
    pool.held[0].set()
    await pool.sent(3)

    assert pool.queries[-1] == ("kept",)
    for release in pool.held:
        release.set()
    assert await asyncio.wait_for(kept, TIMEOUT) == "player"
    await asyncio.wait_for(asyncio.gather(*busy), TIMEOUT)


async def test_callers_of_a_batch_cut_short_hear_of_an_outage() -> None:
    pool = HeldPool()
    query = DriverRoleQuery(pool, SQL)
    waiting = ask(query, "a", "b")
    await pool.sent(1)
    (batch,) = query.lookups._tasks

    batch.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), TIMEOUT)

    assert [type(outcome) for outcome in outcomes] == [LookupUnavailable] * 2
