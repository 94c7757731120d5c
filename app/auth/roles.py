"""Where a user's campaign role comes from: the app's tables in production, the token in dev."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.auth.tokens import Identity
from app.errors import CloseCode, CloseConnection
from app.model import Role
from app.persistence.lookups import LookupBroken, LookupUnavailable
from app.persistence.roles import RoleSource

log = logging.getLogger("vtt.auth")


class RoleResolver(Protocol):
    """Where a user's campaign role comes from."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role, or CloseConnection 4403 (not a member) / 1013 (cannot tell now)."""
        ...


class DevClaimRoles:
    """Dev auth's roles: read from the token's own claims (never used in production)."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role the dev token carries, if it is for this campaign."""
        scoped = identity.claims.get(DEV_CAMPAIGN_CLAIM)
        if scoped is not None and scoped != campaign_id:
            raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
        role = identity.claims.get(DEV_ROLE_CLAIM)
        if role == "gm":
            return "gm"
        if role == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "token carries no campaign role")


class SqlRoles:
    """Campaign roles from the app's own tables: VTT_ROLE_SQL with bound parameters only."""

    def __init__(self, query: RoleSource) -> None:
        self.query = query

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """'gm' or 'player' from the first column of the first row; anything else is 4403."""
        try:
            value = await self.query.first_value(campaign_id, identity.user_id)
        except LookupUnavailable as failure:
            log.warning(
                "campaign role lookup failed: database unavailable", extra={"reason": failure.cause}
            )
            raise CloseConnection(CloseCode.TRY_AGAIN_LATER, "campaign roles unavailable") from None
        except LookupBroken as failure:
            # Neither the client nor a retry can fix this: the deployment's VTT_ROLE_SQL is.
            log.error(
                "campaign role query failed; check VTT_ROLE_SQL", extra={"reason": failure.cause}
            )
            raise CloseConnection(
                CloseCode.INTERNAL_ERROR, "campaign roles cannot be resolved"
            ) from None
        if value == "gm":
            return "gm"
        if value == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")


class MembershipCache:
    """Roles the database gave a moment ago, by (campaign, user): members only, never refusals.

    Entries live `ttl` seconds from the answer; past `size` entries the oldest answer goes.
    """

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Role]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Role | None:
        """The role answered for `key` within the last `ttl` seconds, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, role = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        return role

    def put(self, key: tuple[str, str], role: Role) -> None:
        """Remember a member's role from now on (no-op with a ttl or size of 0)."""
        if self.ttl <= 0 or self.size <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (self.clock() + self.ttl, role)
        while len(entries) > self.size:
            entries.popitem(last=False)

    def drop(self, key: tuple[str, str]) -> None:
        """Forget `key` (the database said it is no member, or said nothing)."""
        self._entries.pop(key, None)


class SharedRoles:
    """A RoleResolver (SqlRoles) behind single-flight lookups and a short membership cache.

    `role` (auth.refresh, chat's recipient checks) always asks the database, with a lookup of
    its own; `admitted` (the handshake) may answer from the cache, or join a lookup of the same
    campaign and user already under way. Whatever the newest lookup of a (campaign, user)
    answers decides its cache entry: a member's role is kept, a refusal drops it, an outage
    leaves it as it was. So a member removed from the campaign is refused at the next refresh
    of any of their connections and at every handshake after it, and at a handshake up to the
    cache's ttl after the last answer otherwise. Refusals are never cached: a user added to a
    campaign a moment after being refused is admitted at their next attempt.
    """

    def __init__(self, resolver: RoleResolver, cache: MembershipCache) -> None:
        self.resolver = resolver
        self.cache = cache
        # The newest lookup of each key under way: its outcome, once known, for the others.
        self._flights: dict[tuple[str, str], asyncio.Future[Role | CloseConnection]] = {}

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role from the database now (a lookup started by this call)."""
        return _outcome(await self._lead(campaign_id, identity))

    async def admitted(self, campaign_id: str, identity: Identity) -> Role:
        """The role for a handshake: cached, or shared with an identical lookup under way."""
        key = (campaign_id, identity.user_id)
        role = self.cache.get(key)
        if role is not None:
            return role
        while (flight := self._flights.get(key)) is not None:
            try:
                # Shielded: a waiter that gives up (its socket went) cancels only its wait.
                return _outcome(await asyncio.shield(flight))
            except _LeaderGone:
                # The caller that ran it gave up first: the first waiter to wake asks
                # anew, and the others join it.
                continue
        return _outcome(await self._lead(campaign_id, identity))

    async def _lead(self, campaign_id: str, identity: Identity) -> Role | CloseConnection:
        """Run a lookup in this caller's task, its outcome shared with whoever joins it."""
        key = (campaign_id, identity.user_id)
        flight: asyncio.Future[Role | CloseConnection] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        outcome: Role | CloseConnection
        try:
            outcome = await self.resolver.role(campaign_id, identity)
        except CloseConnection as refusal:
            outcome = refusal
        except BaseException as failure:
            self._land(key, flight)
            flight.set_exception(
                _LeaderGone() if isinstance(failure, asyncio.CancelledError) else failure
            )
            flight.exception()  # retrieved: nobody may be waiting
            raise
        if self._land(key, flight):
            # Only the newest lookup of a key decides: an older one may have read a membership
            # removed since.
            if isinstance(outcome, str):
                self.cache.put(key, outcome)
            elif outcome.code == CloseCode.FORBIDDEN:
                self.cache.drop(key)
        flight.set_result(outcome)
        return outcome

    def _land(self, key: tuple[str, str], flight: asyncio.Future[Role | CloseConnection]) -> bool:
        """Forget `flight` as the key's lookup under way; whether it was the newest."""
        newest = self._flights.get(key) is flight
        if newest:
            del self._flights[key]
        return newest


class _LeaderGone(Exception):
    """The caller whose task ran a shared lookup was cancelled before its answer."""


def _outcome(outcome: Role | CloseConnection) -> Role:
    """The role, or a refusal of its own for each waiter (a shared exception would gather
    every waiter's traceback)."""
    if isinstance(outcome, CloseConnection):
        raise CloseConnection(outcome.code, outcome.reason)
    return outcome
