"""The coordinators without Redis: LocalCoordinator, and RedisCoordinator's lease arithmetic."""

from __future__ import annotations

import asyncio

import pytest

from app.config import Cluster
from app.coord import keys
from app.coord.base import Claim, Coordinator, LocalCoordinator
from app.coord.redis import CLAIM, NODE_PREFIX, OWNER, Lease, RedisCoordinator, fence_of
from app.errors import CloseCode, CloseConnection

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
# Nothing listens on port 1: a coordinator that asked Redis would fail differently.
CLUSTER = Cluster(
    redis_url="redis://127.0.0.1:1/0",
    node_id="n1",
    node_url="ws://n1.test",
    secret="s",
    lease_ttl=10.0,
)


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Refusals:
    def __init__(self) -> None:
        self.refused = 0
        self.other = 0

    def lease_renewed(self) -> None:
        self.other += 1

    def lease_lost(self) -> None:
        self.other += 1

    def claimed(self) -> None:
        self.other += 1

    def claim_refused(self) -> None:
        self.refused += 1


def test_the_deadline_is_the_send_time_plus_ttl_less_the_margin() -> None:
    lease = Lease(ttl=10.0, margin=2.0)
    assert not lease.held()
    assert not lease.writable(0.0)
    assert lease.deadline == 0.0

    lease.taken("inc1", sent=100.0)
    assert lease.held()
    assert lease.deadline == 108.0
    assert lease.writable(107.999)
    assert not lease.writable(108.0)

    lease.renewed(sent=103.0)
    assert lease.deadline == 111.0
    # A renew sent earlier than the last good one (a late reply) never moves it back.
    lease.renewed(sent=101.0)
    assert lease.deadline == 111.0

    lease.dropped()
    assert (lease.incarnation, lease.deadline) == ("", 0.0)
    assert not lease.writable(100.0)


def test_the_cluster_settings_give_the_intervals() -> None:
    assert CLUSTER.renew_interval == 2.0
    assert CLUSTER.deadline_margin == 2.0


def test_a_claim_value_holds_its_fence() -> None:
    assert fence_of(keys.claim_value("n1", "abc", 42, "ws://h:1/x|y")) == 42


def test_the_scripts_build_node_keys_with_the_lease_prefix() -> None:
    assert keys.node("x") == NODE_PREFIX + "x"
    assert f"'{NODE_PREFIX}' .. node" in CLAIM
    assert f"'{NODE_PREFIX}' .. node" in OWNER


async def test_an_unstarted_coordinator_refuses_claims_without_asking_redis() -> None:
    metrics = Refusals()
    clock = Clock()
    coord = RedisCoordinator(CLUSTER, metrics, clock)
    try:
        assert coord.clustered
        assert coord.node_id == "n1"
        assert coord.node_key == "vtt:node:n1"
        assert (coord.incarnation, coord.deadline) == ("", 0.0)
        assert not coord.writable()
        assert await coord.problem() == "lease not held: not started"
        with pytest.raises(CloseConnection) as refused:
            async with asyncio.timeout(TIMEOUT):
                await coord.claim("c1")
        assert refused.value.code == CloseCode.TRY_AGAIN_LATER
        assert "lease is not held" in refused.value.reason
        assert metrics.refused == 1
        # A release that cannot reach Redis does not raise.
        async with asyncio.timeout(TIMEOUT):
            await coord.release("c1", Claim(1, "n1|x|1|ws://n1.test"))
        with pytest.raises(CloseConnection):
            async with asyncio.timeout(TIMEOUT):
                await coord.owner("c1")
    finally:
        async with asyncio.timeout(TIMEOUT):
            await coord.close()
            await coord.close()
    assert await coord.problem() == "lease not held: closed"
    assert metrics.other == 0


async def test_writable_follows_the_injected_clock() -> None:
    clock = Clock()
    coord = RedisCoordinator(CLUSTER, clock=clock)
    try:
        coord._lease.taken("inc", sent=clock.now)
        assert coord.deadline == 108.0
        assert coord.writable()
        assert await coord.problem() is None
        clock.now = 108.0
        assert not coord.writable()
        assert await coord.problem() == "lease not held: local deadline passed (redis unreachable)"
    finally:
        async with asyncio.timeout(TIMEOUT):
            await coord.close()


async def test_start_does_not_raise_when_redis_is_away() -> None:
    cluster = Cluster(
        redis_url="redis://127.0.0.1:1/0",
        node_id="n1",
        node_url="ws://n1.test",
        secret="s",
        lease_ttl=0.2,
    )
    coord = RedisCoordinator(cluster)

    class Listener:
        lost = 0

        async def lease_lost(self) -> None:
            self.lost += 1

    listener = Listener()
    try:
        async with asyncio.timeout(TIMEOUT):
            await coord.start(listener)
        assert not coord.writable()
        assert listener.lost == 0
        assert await coord.problem() == "lease not held: redis unreachable"
    finally:
        async with asyncio.timeout(TIMEOUT):
            await coord.close()


async def test_the_local_coordinator_owns_everything_at_fence_zero() -> None:
    local: Coordinator = LocalCoordinator()

    class Listener:
        async def lease_lost(self) -> None:
            raise AssertionError("a local machine never loses a lease")

    await local.start(Listener())
    assert not local.clustered
    assert local.node_id == "local"
    assert local.writable()
    assert await local.owner("c1") is None
    claim = await local.claim("c1", floor=7)
    assert claim == Claim(0)
    assert (claim.token, claim.epoch) == ("", None)
    await local.release("c1", claim)
    assert await local.problem() is None
    await local.close()
    assert local.writable()


async def test_a_redis_coordinator_is_a_coordinator() -> None:
    coord: Coordinator = RedisCoordinator(CLUSTER)
    assert coord.clustered
    async with asyncio.timeout(TIMEOUT):
        await coord.close()
