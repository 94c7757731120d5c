"""RedisCoordinator on a private Redis: the node lease, fenced claims, deaths, pauses, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from app.config import Cluster
from app.coord import keys
from app.coord.base import Claim, Owned, Owner
from app.coord.redis import RedisCoordinator
from app.errors import CloseCode, CloseConnection
from tests.support.poll import poll
from tests.support.redisproc import RedisProcess, connected

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
TTL = 1.0


class Listener:
    """Counts lease_lost calls; raises from each when `fail` is set."""

    def __init__(self, fail: bool = False) -> None:
        self.lost = 0
        self.fail = fail

    async def lease_lost(self) -> None:
        self.lost += 1
        if self.fail:
            raise RuntimeError("listener failed")


class Counts:
    """A CoordMetrics that counts."""

    def __init__(self) -> None:
        self.renewed = 0
        self.lost = 0
        self.claims = 0
        self.refusals = 0

    def lease_renewed(self) -> None:
        self.renewed += 1

    def lease_lost(self) -> None:
        self.lost += 1

    def claimed(self) -> None:
        self.claims += 1

    def claim_refused(self) -> None:
        self.refusals += 1


def cluster_of(redis: RedisProcess, node: str, ttl: float = TTL) -> Cluster:
    return Cluster(
        redis_url=redis.url,
        node_id=node,
        node_url=f"ws://{node}.test:8080",
        secret="secret",
        lease_ttl=ttl,
    )


class Node:
    """A started coordinator with its listener and metrics."""

    def __init__(
        self,
        redis: RedisProcess,
        node: str,
        ttl: float = TTL,
        fail: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = Counts()
        self.listener = Listener(fail)
        self.coord = RedisCoordinator(cluster_of(redis, node, ttl), self.metrics, clock)

    async def start(self) -> None:
        async with asyncio.timeout(self.coord._cluster.lease_ttl + 2.0):
            await self.coord.start(self.listener)


@asynccontextmanager
async def node_of(
    redis: RedisProcess,
    name: str,
    ttl: float = TTL,
    fail: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Node]:
    """A started Node, closed after."""
    node = Node(redis, name, ttl, fail, clock)
    try:
        await node.start()
        yield node
    finally:
        async with asyncio.timeout(TIMEOUT):
            await node.coord.close()


async def claim(node: Node, campaign: str, floor: int = 0) -> Claim:
    async with asyncio.timeout(TIMEOUT):
        return await node.coord.claim(campaign, floor)


async def owned_by(node: Node, campaign: str) -> Owner:
    with pytest.raises(Owned) as caught:
        await claim(node, campaign)
    return caught.value.owner


async def owner(node: Node, campaign: str) -> Owner | None:
    async with asyncio.timeout(TIMEOUT):
        return await node.coord.owner(campaign)


async def claimable(node: Node, campaign: str) -> bool:
    try:
        await claim(node, campaign)
    except Owned:
        return False
    return True


async def test_a_claim_is_fenced_owned_idempotent_and_released(redis_server: RedisProcess) -> None:
    async with node_of(redis_server, "a") as a, node_of(redis_server, "b") as b:
        assert a.coord.writable()
        assert b.coord.writable()
        assert await a.coord.problem() is None
        assert a.coord.incarnation
        assert a.coord.incarnation != b.coord.incarnation

        first = await claim(a, "c1")
        assert first.fence == 1
        assert first.token == keys.claim_value("a", a.coord.incarnation, 1, "ws://a.test:8080")
        assert first.epoch is None
        assert await owned_by(b, "c1") == Owner("a", "ws://a.test:8080")
        assert await owner(b, "c1") == Owner("a", "ws://a.test:8080")
        assert await owner(a, "c1") is None
        assert await owner(a, "nobody") is None

        assert await claim(a, "c1") == first

        await a.coord.release("c1", first)
        assert await owner(b, "c1") is None
        async with connected(redis_server) as client:
            await client.set(keys.epoch("c1"), "e-1")
        second = await claim(b, "c1")
        assert (second.fence, second.epoch) == (2, "e-1")
        assert await owner(a, "c1") == Owner("b", "ws://b.test:8080")

        # A stale release (a's old claim) leaves b's claim alone.
        await a.coord.release("c1", first)
        assert await owned_by(a, "c1") == Owner("b", "ws://b.test:8080")
        assert (a.metrics.claims, a.metrics.refusals) == (2, 1)
        assert (b.metrics.claims, b.metrics.refusals) == (1, 1)


async def test_a_floor_raises_the_fence_even_of_our_own_claim(redis_server: RedisProcess) -> None:
    async with node_of(redis_server, "a") as a:
        assert (await claim(a, "c1", floor=10)).fence == 11
        assert (await claim(a, "c1", floor=5)).fence == 11
        assert (await claim(a, "c1", floor=11)).fence == 12
        again = await claim(a, "c1")
        assert again.fence == 12
        await a.coord.release("c1", again)
        assert (await claim(a, "c1")).fence == 13


async def test_close_hands_every_claim_over_at_once(redis_server: RedisProcess) -> None:
    async with node_of(redis_server, "b") as b:
        a = Node(redis_server, "a")
        await a.start()
        await claim(a, "c1")
        assert await owned_by(b, "c1") == Owner("a", "ws://a.test:8080")
        async with asyncio.timeout(TIMEOUT):
            await a.coord.close()
            await a.coord.close()
        assert not a.coord.writable()
        assert await a.coord.problem() == "lease not held: closed"
        assert (await claim(b, "c1")).fence == 2
        assert a.listener.lost == 0
        async with connected(redis_server) as client:
            assert await client.exists(keys.node("a")) == 0


async def test_a_crashed_owner_is_claimable_once_its_lease_lapses(
    redis_server: RedisProcess,
) -> None:
    async with node_of(redis_server, "b") as b:
        a = Node(redis_server, "a")
        await a.start()
        assert (await claim(a, "c1")).fence == 1
        async with asyncio.timeout(TIMEOUT):
            await a.coord.abandon()
        crashed = time.monotonic()
        assert await owned_by(b, "c1") == Owner("a", "ws://a.test:8080")
        await poll(lambda: claimable(b, "c1"), TTL + 0.5, "b to claim what a held")
        assert time.monotonic() - crashed <= TTL + 0.5
        assert (await claim(b, "c1")).fence == 2


async def test_an_empty_restart_loses_every_lease_once_and_fences_start_over(
    redis_server: RedisProcess,
) -> None:
    async with (
        node_of(redis_server, "a") as a,
        node_of(redis_server, "b", fail=True) as b,
    ):
        await claim(a, "c1")
        await claim(b, "c2")
        before = a.coord.incarnation, b.coord.incarnation
        await redis_server.restart(empty=True)
        await poll(
            lambda: a.listener.lost == 1 and b.listener.lost == 1, TTL + 1.0, "both leases lost"
        )
        await poll(
            lambda: a.coord.writable() and b.coord.writable(), TTL + 1.0, "both leases re-taken"
        )
        assert a.coord.incarnation not in ("", before[0])
        assert b.coord.incarnation not in ("", before[1])
        assert (await claim(a, "c1")).fence == 1
        assert (await claim(b, "c2", floor=7)).fence == 8
        assert await owned_by(b, "c1") == Owner("a", "ws://a.test:8080")
        assert (a.listener.lost, b.listener.lost) == (1, 1)
        assert (a.metrics.lost, b.metrics.lost) == (1, 1)


async def test_close_ends_the_lease_loop_when_a_renew_swallows_the_cancel(
    redis_server: RedisProcess,
) -> None:
    # redis-py sends through asyncio.wait_for, which on Python 3.11 returns the send's result
    # when a cancel lands as the send completes: this renew does that on purpose.
    node = Node(redis_server, "a")
    await node.start()
    real = node.coord._renew
    entered = asyncio.Event()

    async def swallowing(keys: list[str], args: list[str | bytes]) -> object:
        renewed = await real(keys=keys, args=args)
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return renewed
        raise AssertionError("the gate never opens")

    node.coord._renew = swallowing  # type: ignore[assignment]
    async with asyncio.timeout(TIMEOUT):
        await entered.wait()
        await node.coord.close()
    async with connected(redis_server) as client:
        assert await client.exists(keys.node("a")) == 0


async def test_a_pause_past_the_deadline_loses_the_lease_and_a_new_one_follows(
    redis_server: RedisProcess,
) -> None:
    # With ttl 2 a renew hangs for up to 0.4 s (the socket timeout) and the loop sleeps 0.4 s
    # between renews, so only the timer armed at the deadline tells the listener within 0.15 s.
    ttl = 2.0
    async with node_of(redis_server, "a", ttl=ttl) as a:
        await claim(a, "c1")
        before = a.coord.incarnation
        await poll(lambda: a.metrics.renewed >= 1, ttl, "a first renew")
        redis_server.pause()
        try:
            await poll(lambda: not a.coord.writable(), ttl, "a to stop being writable")
            await poll(
                lambda: a.listener.lost == 1, 0.15, "the deadline timer to tell the listener"
            )
            problem = await a.coord.problem()
            assert problem is not None
            assert problem.startswith("lease not held")
            started = time.monotonic()
            with pytest.raises(CloseConnection) as refused:
                await claim(a, "c1")
            assert refused.value.code == CloseCode.TRY_AGAIN_LATER
            assert time.monotonic() - started < 0.1, "a claim past the deadline asks no Redis"
        finally:
            redis_server.resume()
        await poll(a.coord.writable, ttl + 1.0, "a new lease")
        assert a.coord.incarnation not in ("", before)
        assert a.listener.lost == 1
        # The old incarnation's claim is dead: claiming again takes a new fence.
        assert (await claim(a, "c1")).fence == 2


async def test_a_short_pause_keeps_the_lease(redis_server: RedisProcess) -> None:
    async with node_of(redis_server, "a", ttl=2.0) as a:
        before = a.coord.incarnation
        await poll(lambda: a.metrics.renewed >= 1, 1.0, "a first renew")
        redis_server.pause()
        try:
            await asyncio.sleep(0.3)  # the pause itself: shorter than ttl - margin (1.6 s)
        finally:
            redis_server.resume()
        renewed = a.metrics.renewed
        await poll(lambda: a.metrics.renewed >= renewed + 2, 2.0, "two renews after the pause")
        assert a.coord.writable()
        assert a.coord.incarnation == before
        assert a.listener.lost == 0


async def test_the_deadline_is_checked_on_the_injected_clock(redis_server: RedisProcess) -> None:
    skew = [0.0]
    async with node_of(redis_server, "a", clock=lambda: time.monotonic() + skew[0]) as a:
        deadline = a.coord.deadline
        assert 0 < deadline - time.monotonic() <= TTL - a.coord._cluster.deadline_margin
        skew[0] = TTL
        assert not a.coord.writable()
        with pytest.raises(CloseConnection):
            await claim(a, "c1")
        await poll(lambda: a.listener.lost == 1, TTL, "the renew loop to see the deadline")
        await poll(a.coord.writable, TTL + 1.0, "a new lease on the skewed clock")
        assert a.coord.deadline > deadline + TTL / 2


async def test_the_same_node_twice_waits_for_the_first_lease(redis_server: RedisProcess) -> None:
    async with node_of(redis_server, "a") as first:
        await claim(first, "c1")
        second = Node(redis_server, "a")
        started = time.monotonic()
        try:
            await second.start()
            assert TTL + 0.9 <= time.monotonic() - started <= TTL + 1.5
            assert not second.coord.writable()
            assert await second.coord.problem() == (
                "lease not held: waiting for the previous incarnation of node a to lapse"
            )
            with pytest.raises(CloseConnection):
                await claim(second, "c1")
            async with asyncio.timeout(TIMEOUT):
                await first.coord.abandon()
            await poll(second.coord.writable, TTL + 0.5, "the second to take the lapsed lease")
            assert (await claim(second, "c1")).fence == 2
        finally:
            async with asyncio.timeout(TIMEOUT):
                await second.coord.close()


async def test_the_same_node_again_starts_at_once_after_a_close(
    redis_server: RedisProcess,
) -> None:
    first = Node(redis_server, "a")
    await first.start()
    async with asyncio.timeout(TIMEOUT):
        await first.coord.close()
    started = time.monotonic()
    async with node_of(redis_server, "a") as second:
        assert second.coord.writable()
        assert time.monotonic() - started < 0.5


async def test_redis_away_at_start_is_retried_in_the_background(
    redis_server: RedisProcess,
) -> None:
    redis_server.kill()
    async with node_of(redis_server, "a", ttl=0.5) as a:
        assert not a.coord.writable()
        assert await a.coord.problem() == "lease not held: redis unreachable"
        with pytest.raises(CloseConnection):
            await claim(a, "c1")
        await redis_server.restart()
        await poll(a.coord.writable, 2.0, "the lease once Redis is back")
        assert (await claim(a, "c1")).fence == 1
        assert a.listener.lost == 0
