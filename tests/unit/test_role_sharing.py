"""Single-flight role lookups and the membership cache (SharedRoles), with a counting resolver.

Admissions may share a lookup under way or answer from the cache; a refresh (`role`) always
asks anew; the newest lookup of a (campaign, user) decides its cache entry; refusals are never
cached. The database's part is in tests/server/test_roles.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from app.auth.roles import MembershipCache, SharedRoles
from app.auth.tokens import Identity
from app.errors import CloseCode, CloseConnection
from app.model import Role
from tests.support.harness import refused

pytestmark = pytest.mark.anyio

T = TypeVar("T")
STEP = 5.0
NOT_A_MEMBER = CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
UNAVAILABLE = CloseConnection(CloseCode.TRY_AGAIN_LATER, "campaign roles unavailable")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, STEP)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """A resolver whose answers the test sets, counting queries; `hold` makes them wait."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Role | Exception] = {}
        self.queries: list[tuple[str, str]] = []
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        key = (campaign_id, identity.user_id)
        self.queries.append(key)
        # What the database holds when the query runs, not when it answers.
        answer = self.answers.get(key, NOT_A_MEMBER)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(answer, CloseConnection):
            raise CloseConnection(answer.code, answer.reason)
        if isinstance(answer, Exception):
            raise answer
        return answer


def user(user_id: str) -> Identity:
    return Identity(user_id, {"sub": user_id}, 0.0)


def shared(ttl: float = 5.0, size: int = 100) -> tuple[SharedRoles, Lookups, Clock]:
    lookups, clock = Lookups(), Clock()
    return SharedRoles(lookups, MembershipCache(ttl, size, clock)), lookups, clock


async def started(lookups: Lookups) -> None:
    await within(lookups.started.wait())
    lookups.started.clear()


async def test_concurrent_identical_admissions_share_one_lookup() -> None:
    roles, lookups, _ = shared(ttl=0)
    lookups.answers[("c1", "alice")] = "player"
    gate = lookups.hold()

    waiting = [asyncio.create_task(roles.admitted("c1", user("alice"))) for _ in range(50)]
    await started(lookups)
    gate.set()

    assert await within(asyncio.gather(*waiting)) == ["player"] * 50
    assert lookups.queries == [("c1", "alice")]


async def test_admissions_of_other_users_or_campaigns_are_lookups_of_their_own() -> None:
    roles, lookups, _ = shared(ttl=0)
    lookups.answers.update({("c1", "alice"): "gm", ("c1", "bob"): "player"})
    lookups.hold().set()

    answers = await within(
        asyncio.gather(
            roles.admitted("c1", user("alice")),
            roles.admitted("c1", user("bob")),
            roles.admitted("c2", user("alice")),
            return_exceptions=True,
        )
    )

    assert list(answers[:2]) == ["gm", "player"]
    assert isinstance(answers[2], CloseConnection)
    assert answers[2].code == CloseCode.FORBIDDEN
    assert sorted(lookups.queries) == [("c1", "alice"), ("c1", "bob"), ("c2", "alice")]


async def test_a_shared_refusal_reaches_every_waiter_as_a_refusal_of_its_own() -> None:
    roles, lookups, _ = shared()
    lookups.answers[("c1", "alice")] = UNAVAILABLE
    gate = lookups.hold()

    waiting = [asyncio.create_task(refused(roles.admitted("c1", user("alice")))) for _ in range(3)]
    await started(lookups)
    gate.set()
    failures = await within(asyncio.gather(*waiting))

    assert [(f.code, f.reason) for f in failures] == [
        (CloseCode.TRY_AGAIN_LATER, "campaign roles unavailable")
    ] * 3
    assert len({id(f) for f in failures}) == 3
    assert len(lookups.queries) == 1


async def test_a_waiter_that_gives_up_leaves_the_shared_lookup_to_the_others() -> None:
    roles, lookups, _ = shared()
    lookups.answers[("c1", "alice")] = "player"
    gate = lookups.hold()

    first = asyncio.create_task(roles.admitted("c1", user("alice")))
    second = asyncio.create_task(roles.admitted("c1", user("alice")))
    third = asyncio.create_task(roles.admitted("c1", user("alice")))
    # Tasks run in the order they were created: all wait on the lookup once it has begun.
    await started(lookups)
    second.cancel()
    gate.set()

    assert await within(first) == "player"
    assert await within(third) == "player"
    assert second.cancelled()
    assert len(lookups.queries) == 1


async def test_when_the_caller_running_the_lookup_gives_up_the_others_ask_once_more() -> None:
    roles, lookups, _ = shared()
    lookups.answers[("c1", "alice")] = "player"
    gate = lookups.hold()

    first = asyncio.create_task(roles.admitted("c1", user("alice")))
    others = [asyncio.create_task(roles.admitted("c1", user("alice"))) for _ in range(3)]
    await started(lookups)
    first.cancel()
    await started(lookups)  # one lookup of the others', which the rest join
    gate.set()

    assert await within(asyncio.gather(*others)) == ["player"] * 3
    assert first.cancelled()
    assert len(lookups.queries) == 2


async def test_a_member_is_admitted_from_the_cache_until_the_ttl_has_passed() -> None:
    roles, lookups, clock = shared(ttl=5.0)
    lookups.answers[("c1", "alice")] = "gm"

    assert await within(roles.admitted("c1", user("alice"))) == "gm"
    clock.now += 4.9
    assert await within(roles.admitted("c1", user("alice"))) == "gm"
    assert len(lookups.queries) == 1

    clock.now += 0.1
    assert await within(roles.admitted("c1", user("alice"))) == "gm"
    assert len(lookups.queries) == 2


async def test_not_a_member_is_never_cached() -> None:
    # A user added to a campaign a moment after a refusal is admitted at the next attempt.
    roles, lookups, _ = shared(ttl=60.0)

    failure = await refused(roles.admitted("c1", user("alice")))
    assert failure.code == CloseCode.FORBIDDEN
    lookups.answers[("c1", "alice")] = "player"

    assert await within(roles.admitted("c1", user("alice"))) == "player"
    assert len(lookups.queries) == 2


async def test_a_refresh_always_asks_the_database_and_a_refusal_drops_the_cached_membership() -> (
    None
):
    roles, lookups, _ = shared(ttl=60.0)
    lookups.answers[("c1", "alice")] = "player"
    assert await within(roles.admitted("c1", user("alice"))) == "player"
    assert await within(roles.role("c1", user("alice"))) == "player"
    assert len(lookups.queries) == 2

    del lookups.answers[("c1", "alice")]  # removed from the campaign
    assert (await refused(roles.role("c1", user("alice")))).code == CloseCode.FORBIDDEN

    assert (await refused(roles.admitted("c1", user("alice")))).code == CloseCode.FORBIDDEN
    assert len(lookups.queries) == 4


async def test_a_refresh_that_finds_another_role_updates_the_cache() -> None:
    roles, lookups, _ = shared(ttl=60.0)
    lookups.answers[("c1", "alice")] = "gm"
    assert await within(roles.admitted("c1", user("alice"))) == "gm"

    lookups.answers[("c1", "alice")] = "player"
    assert await within(roles.role("c1", user("alice"))) == "player"

    assert await within(roles.admitted("c1", user("alice"))) == "player"
    assert len(lookups.queries) == 2


async def test_an_outage_leaves_the_cache_as_it_was() -> None:
    roles, lookups, _ = shared(ttl=60.0)
    lookups.answers[("c1", "alice")] = "player"
    assert await within(roles.admitted("c1", user("alice"))) == "player"

    lookups.answers[("c1", "alice")] = UNAVAILABLE
    failure = await refused(roles.role("c1", user("alice")))
    assert failure.code == CloseCode.TRY_AGAIN_LATER

    assert await within(roles.admitted("c1", user("alice"))) == "player"
    assert len(lookups.queries) == 2


async def test_a_refresh_never_joins_a_lookup_that_began_before_it() -> None:
    # The admission's query may have read the membership just before it was removed.
    roles, lookups, _ = shared(ttl=60.0)
    lookups.answers[("c1", "alice")] = "player"
    gate = lookups.hold()
    admission = asyncio.create_task(roles.admitted("c1", user("alice")))
    await started(lookups)

    del lookups.answers[("c1", "alice")]
    refresh = asyncio.create_task(refused(roles.role("c1", user("alice"))))
    later = asyncio.create_task(refused(roles.admitted("c1", user("alice"))))
    await started(lookups)  # the refresh's lookup, which `later` has joined (created after it)
    gate.set()

    assert await within(admission) == "player"
    assert (await within(refresh)).code == CloseCode.FORBIDDEN
    assert (await within(later)).code == CloseCode.FORBIDDEN, "joined the newest lookup"
    assert len(lookups.queries) == 2
    # The older lookup answered last, but the newest one decided: nothing is cached.
    assert (await refused(roles.admitted("c1", user("alice")))).code == CloseCode.FORBIDDEN
    assert len(lookups.queries) == 3


async def test_an_older_lookup_that_answers_after_a_newer_one_does_not_write_the_cache() -> None:
    roles, lookups, _ = shared(ttl=60.0)
    lookups.answers[("c1", "alice")] = "gm"
    first_gate = lookups.hold()
    old = asyncio.create_task(roles.admitted("c1", user("alice")))
    await started(lookups)

    lookups.answers[("c1", "alice")] = "player"
    lookups.gate = None
    assert await within(roles.role("c1", user("alice"))) == "player"
    first_gate.set()
    assert await within(old) == "gm"

    assert await within(roles.admitted("c1", user("alice"))) == "player"
    assert len(lookups.queries) == 2


async def test_the_cache_holds_at_most_its_size_dropping_the_oldest_answer() -> None:
    roles, lookups, _ = shared(ttl=60.0, size=3)
    for name in ("a", "b", "c", "d"):
        lookups.answers[("c1", name)] = "player"
        await within(roles.admitted("c1", user(name)))

    assert len(roles.cache) == 3
    await within(roles.admitted("c1", user("a")))  # dropped: asked again
    assert lookups.queries.count(("c1", "a")) == 2
    await within(roles.admitted("c1", user("d")))  # kept
    assert lookups.queries.count(("c1", "d")) == 1


@pytest.mark.parametrize(("ttl", "size"), [(0.0, 100), (5.0, 0)])
async def test_a_ttl_or_size_of_zero_turns_the_cache_off(ttl: float, size: int) -> None:
    roles, lookups, _ = shared(ttl=ttl, size=size)
    lookups.answers[("c1", "alice")] = "gm"

    for _ in range(2):
        assert await within(roles.admitted("c1", user("alice"))) == "gm"

    assert len(lookups.queries) == 2
    assert len(roles.cache) == 0


async def test_an_unexpected_failure_reaches_every_waiter_and_the_next_admission_asks_again() -> (
    None
):
    roles, lookups, _ = shared()
    lookups.answers[("c1", "alice")] = RuntimeError("a bug")
    gate = lookups.hold()
    waiting = [asyncio.create_task(roles.admitted("c1", user("alice"))) for _ in range(2)]
    await started(lookups)
    gate.set()

    for waiter in waiting:
        with pytest.raises(RuntimeError, match="a bug"):
            await within(waiter)
    lookups.answers[("c1", "alice")] = "gm"
    assert await within(roles.admitted("c1", user("alice"))) == "gm"
    assert len(lookups.queries) == 2


def test_an_expired_entry_is_forgotten_when_read() -> None:
    clock = Clock()
    cache = MembershipCache(1.0, 10, clock)
    cache.put(("c1", "alice"), "gm")
    clock.now += 1.0

    assert cache.get(("c1", "alice")) is None
    assert len(cache) == 0
