"""RedisCoordinator: the node lease, fenced campaign claims, the local deadline (SCALE-OUT §2.1).

The node lease `vtt:node:<node>` holds this process's incarnation, a random id minted per
acquisition, with a TTL. It is taken with `SET NX PX`, renewed every `renew_interval` by a
compare-and-PEXPIRE, and never recreated under the same incarnation: a lease that is lost
(its key gone or another's, or the local deadline passed) tells the listener, which stops
every write, and a new incarnation is acquired. Claims name the incarnation, so the claims
of a lost one are dead by construction.

The local deadline is `send time of the last good renew + ttl - deadline_margin`. A command
arrives after it is sent, so Redis cannot expire the lease before this deadline; past it
this machine stops writing (`writable()` is False), whether or not Redis answers. A timer
armed at the deadline makes that so even while a renew hangs.

The client does not retry and times out after one renew interval; it is created here and
may be shared (`redis`), with `decode_responses=False`: replies are bytes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.config import Cluster
from app.coord import keys
from app.coord.base import Claim, LeaseListener, Owned, Owner, unavailable

log = logging.getLogger("vtt.coord")

# What a Redis call may raise when the server is away, slow or gone mid-reply.
REDIS_FAILURES = (RedisError, OSError, TimeoutError)

# The prefix every node lease shares: keys.node(x) == NODE_PREFIX + x.
NODE_PREFIX = keys.node("")

# KEYS[1] node lease; ARGV[1] incarnation, ARGV[2] ttl in ms. 1: renewed; 0: not ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] a key; ARGV[1] the value it must hold to be deleted. 1: deleted; 0: left alone.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# How a claim's `node|incarnation|fence|url` (keys.claim_value) splits, in Lua.
_PARSE = "string.match(current, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')"

# KEYS[1] claim, KEYS[2] fence, KEYS[3] own node lease, KEYS[4] epoch;
# ARGV[1] node, ARGV[2] incarnation, ARGV[3] url, ARGV[4] floor.
# {0}: our lease is not held. {1, node, url}: another live owner. {2, claim, epoch}: ours.
CLAIM = f"""
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return {{0}}
end
local floor = tonumber(ARGV[4])
local current = redis.call('GET', KEYS[1])
if current then
  local node, incarnation, fence, url = {_PARSE}
  if node == ARGV[1] and incarnation == ARGV[2] then
    if (tonumber(fence) or 0) > floor then
      return {{2, current, redis.call('GET', KEYS[4])}}
    end
  elseif node and redis.call('GET', '{NODE_PREFIX}' .. node) == incarnation then
    return {{1, node, url}}
  end
end
local f = redis.call('INCR', KEYS[2])
if f <= floor then
  f = floor + 1
  redis.call('SET', KEYS[2], f)
end
local value = ARGV[1] .. '|' .. ARGV[2] .. '|' .. f .. '|' .. ARGV[3]
redis.call('SET', KEYS[1], value)
return {{2, value, redis.call('GET', KEYS[4])}}
"""

# KEYS[1] claim; ARGV[1] node, ARGV[2] incarnation.
# {node, url}: another live owner; nil: nobody alive, or this incarnation.
OWNER = f"""
local current = redis.call('GET', KEYS[1])
if not current then
  return nil
end
local node, incarnation, fence, url = {_PARSE}
if not node or (node == ARGV[1] and incarnation == ARGV[2]) then
  return nil
end
if redis.call('GET', '{NODE_PREFIX}' .. node) == incarnation then
  return {{node, url}}
end
return nil
"""


class CoordMetrics(Protocol):
    """What the coordinator counts (the integrator backs these with Prometheus counters)."""

    def lease_renewed(self) -> None:
        """A renew succeeded."""
        ...

    def lease_lost(self) -> None:
        """A held lease was lost (its key gone or another's, or the local deadline passed)."""
        ...

    def claimed(self) -> None:
        """A claim succeeded (a new one, or ours again)."""
        ...

    def claim_refused(self) -> None:
        """A claim failed: another owner, the lease not held, or Redis away."""
        ...


@dataclass(slots=True)
class Lease:
    """The lease as this process holds it: its incarnation ("" when none) and local deadline.

    The deadline is `sent + ttl - margin` for the send time of the last good acquisition or
    renew (a clock reading taken before the command was sent), 0 when none is held.
    """

    ttl: float
    margin: float
    incarnation: str = ""
    deadline: float = 0.0

    def taken(self, incarnation: str, sent: float) -> None:
        """The lease was taken (or renewed) by a command sent at `sent`."""
        self.incarnation = incarnation
        self.deadline = sent + self.ttl - self.margin

    def renewed(self, sent: float) -> None:
        """A renew sent at `sent` succeeded; the deadline never moves back."""
        self.deadline = max(self.deadline, sent + self.ttl - self.margin)

    def dropped(self) -> None:
        """No lease is held any more."""
        self.incarnation = ""
        self.deadline = 0.0

    def held(self) -> bool:
        """Whether an incarnation is held (its deadline may have passed)."""
        return bool(self.incarnation)

    def writable(self, now: float) -> bool:
        """Whether a write may start at `now`: a lease held and its deadline ahead."""
        return self.held() and now < self.deadline


def _text(value: object) -> str:
    """A reply (bytes with decode_responses=False) as text."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def fence_of(token: str) -> int:
    """The fence in a claim's value `node|incarnation|fence|url`."""
    return int(token.split("|", 3)[2])


class RedisCoordinator:
    """The Coordinator of a machine in a cluster coordinated through Redis."""

    def __init__(
        self,
        cluster: Cluster,
        metrics: CoordMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cluster = cluster
        self._metrics = metrics
        self._clock = clock
        self._ttl_ms = max(1, round(cluster.lease_ttl * 1000))
        self._interval = cluster.renew_interval
        self._lease = Lease(cluster.lease_ttl, cluster.deadline_margin)
        self.node_key = keys.node(cluster.node_id)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            cluster.redis_url,
            socket_timeout=self._interval,
            socket_connect_timeout=self._interval,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._renew = self.redis.register_script(RENEW)
        self._compare_and_delete = self.redis.register_script(COMPARE_AND_DELETE)
        self._claim = self.redis.register_script(CLAIM)
        self._owner = self.redis.register_script(OWNER)
        self._listener: LeaseListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._acquired = asyncio.Event()
        self._listeners: set[asyncio.Task[None]] = set()
        self._reason = "lease not held: not started"
        self._closed = False

    # --- the Coordinator ----------------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        """Always: campaigns are claimed through Redis."""
        return True

    @property
    def node_id(self) -> str:
        """This machine's id (`VTT_NODE_ID` / `FLY_MACHINE_ID`)."""
        return self._cluster.node_id

    @property
    def incarnation(self) -> str:
        """The incarnation whose lease is held; "" when none is."""
        return self._lease.incarnation

    @property
    def deadline(self) -> float:
        """The local deadline (on `clock`); 0 when no lease is held."""
        return self._lease.deadline

    def writable(self) -> bool:
        """Whether the lease is held and its local deadline is ahead."""
        return self._lease.writable(self._clock())

    async def start(self, listener: LeaseListener) -> None:
        """Start taking and renewing the lease; return once held, or after at most ttl + 1 s.

        When the lease is not held by then (Redis away, a predecessor's lease not lapsed)
        the background task keeps trying; `problem()` says why. Never raises.
        """
        assert self._task is None, "start() was called twice"
        self._listener = listener
        self._task = asyncio.create_task(self._run(), name=f"coord-lease-{self.node_id}")
        waiter = asyncio.create_task(self._acquired.wait())
        try:
            await asyncio.wait(
                {waiter, self._task},
                timeout=self._cluster.lease_ttl + 1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if not self._lease.held():
            log.warning(
                "cluster lease not held yet; still trying",
                extra={"node_id": self.node_id, "reason": self._reason},
            )

    async def close(self) -> None:
        """Stop renewing, give the lease up (if still ours) and close the client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._stop_renewing()
        incarnation = self._lease.incarnation
        self._lease.dropped()
        self._reason = "lease not held: closed"
        if incarnation:
            await self._delete_lease(incarnation)
        if self._listeners:
            await asyncio.wait(self._listeners, timeout=self._cluster.lease_ttl)
        await self.redis.aclose()

    async def owner(self, campaign_id: str) -> Owner | None:
        """Another machine whose claim on the campaign is alive; None: here or nobody."""
        try:
            reply = await self._owner(
                keys=[keys.claim(campaign_id)],
                args=[self.node_id, self._lease.incarnation],
            )
        except REDIS_FAILURES as exc:
            log.warning(
                "owner lookup failed",
                extra={"campaign_id": campaign_id, "reason": repr(exc)},
            )
            raise unavailable() from exc
        if not reply:
            return None
        node, url = reply
        return Owner(_text(node), _text(url))

    async def claim(self, campaign_id: str, floor: int = 0) -> Claim:
        """Claim the campaign under this incarnation with a fence above `floor`.

        Ours already (this incarnation) with a fence above `floor`: the same claim again.
        Raises Owned when another machine's claim is alive, CloseConnection 1013 when the
        lease is not held (or its deadline passed) or Redis cannot be reached.
        """
        incarnation = self._lease.incarnation
        if not self.writable():
            self._refused()
            raise unavailable("this machine's cluster lease is not held; retry")
        try:
            reply = await self._claim(
                keys=[
                    keys.claim(campaign_id),
                    keys.fence(campaign_id),
                    self.node_key,
                    keys.epoch(campaign_id),
                ],
                args=[self.node_id, incarnation, self._cluster.node_url, floor],
            )
        except REDIS_FAILURES as exc:
            self._refused()
            log.warning(
                "claim failed",
                extra={"campaign_id": campaign_id, "reason": repr(exc)},
            )
            raise unavailable() from exc
        status = int(reply[0])
        if status == 0 or self._lease.incarnation != incarnation:
            # Not held in Redis, or lost while the script ran: a claim of a dead incarnation.
            self._refused()
            raise unavailable("this machine's cluster lease is not held; retry")
        if status == 1:
            self._refused()
            raise Owned(Owner(_text(reply[1]), _text(reply[2])))
        token = _text(reply[1])
        epoch = None if len(reply) < 3 or reply[2] is None else _text(reply[2])
        if self._metrics is not None:
            self._metrics.claimed()
        return Claim(fence=fence_of(token), token=token, epoch=epoch)

    async def release(self, campaign_id: str, claim: Claim) -> None:
        """Delete the claim if it is still `claim` (never raises)."""
        if not claim.token:
            return
        try:
            await self._compare_and_delete(keys=[keys.claim(campaign_id)], args=[claim.token])
        except REDIS_FAILURES as exc:
            log.warning(
                "claim release failed",
                extra={"campaign_id": campaign_id, "fence": claim.fence, "reason": repr(exc)},
            )

    async def problem(self) -> str | None:
        """None when writable; else why not."""
        if self.writable():
            return None
        if self._lease.held():
            return "lease not held: local deadline passed (redis unreachable)"
        return self._reason

    # --- for tests ----------------------------------------------------------------------------

    async def abandon(self) -> None:
        """What a SIGKILL leaves: stop renewing and close the client, keeping every key."""
        self._closed = True
        await self._stop_renewing()
        self._lease.dropped()
        self._reason = "lease not held: abandoned"
        await self.redis.aclose()

    # --- the lease loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        """Acquire, renew until lost, tell the listener; again with a new incarnation."""
        previous = ""
        while not self._closed:
            try:
                await self._acquire(previous)
                previous = self._lease.incarnation
                reason = await self._keep(previous)
                self._lose(previous, reason)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the lease loop for good
                log.exception("cluster lease loop failed", extra={"node_id": self.node_id})
                if self._lease.held():
                    self._lose(self._lease.incarnation, "lease loop failed")
                await asyncio.sleep(self._interval)

    async def _acquire(self, previous: str) -> None:
        """Take the lease under a new incarnation, retrying every renew interval until held.

        A lost incarnation's key, when still there (a hung renew that landed late), is
        deleted first so that the new one need not wait for it to lapse.
        """
        incarnation = secrets.token_hex(8)
        while True:
            try:
                if previous:
                    await self._compare_and_delete(keys=[self.node_key], args=[previous])
                    previous = ""
                sent = self._clock()
                taken = await self.redis.set(self.node_key, incarnation, nx=True, px=self._ttl_ms)
                if not taken:
                    # Ours already when an earlier SET landed but its reply was lost.
                    sent = self._clock()
                    taken = await self._renew(
                        keys=[self.node_key], args=[incarnation, self._ttl_ms]
                    )
                self._stop_if_closed()
            except REDIS_FAILURES as exc:
                self._set_reason("lease not held: redis unreachable", repr(exc))
            else:
                if taken:
                    self._lease.taken(incarnation, sent)
                    self._arm_deadline()
                    self._reason = ""
                    self._acquired.set()
                    log.info(
                        "cluster lease taken",
                        extra={"node_id": self.node_id, "incarnation": incarnation},
                    )
                    return
                self._set_reason(
                    "lease not held: waiting for the previous incarnation of node "
                    f"{self.node_id} to lapse",
                    None,
                )
            await asyncio.sleep(self._interval)

    async def _keep(self, incarnation: str) -> str:
        """Renew every renew interval while `incarnation` holds; return why it stopped."""
        while True:
            await asyncio.sleep(self._interval)
            if self._lease.incarnation != incarnation:
                return "local deadline passed"
            if not self._lease.writable(self._clock()):
                return "local deadline passed"
            sent = self._clock()
            try:
                renewed = await self._renew(keys=[self.node_key], args=[incarnation, self._ttl_ms])
                self._stop_if_closed()
            except REDIS_FAILURES as exc:
                log.warning(
                    "cluster lease renew failed",
                    extra={"node_id": self.node_id, "reason": repr(exc)},
                )
                continue
            if self._lease.incarnation != incarnation:
                return "local deadline passed"
            if not renewed:
                return "lease key gone or taken"
            self._lease.renewed(sent)
            self._arm_deadline()
            if self._metrics is not None:
                self._metrics.lease_renewed()

    def _stop_if_closed(self) -> None:
        """Re-raise a cancellation a command swallowed: closed means the loop ends.

        redis-py sends through `asyncio.wait_for`, which on Python 3.11 returns the send's
        result and drops a cancel that lands as the send completes; without this check
        the loop would renew on and `close` would wait for it forever.
        """
        if self._closed:
            raise asyncio.CancelledError

    def _arm_deadline(self) -> None:
        """(Re)arm the timer that drops the lease at its local deadline."""
        if self._timer is not None:
            self._timer.cancel()
        incarnation = self._lease.incarnation
        delay = max(0.0, self._lease.deadline - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline, incarnation)

    def _on_deadline(self, incarnation: str) -> None:
        """The timer: drop the lease if its deadline has passed (else wait for the rest)."""
        self._timer = None
        if self._lease.incarnation != incarnation:
            return
        if self._lease.writable(self._clock()):
            self._arm_deadline()
            return
        self._lose(incarnation, "local deadline passed")

    def _lose(self, incarnation: str, reason: str) -> None:
        """Drop `incarnation` (once) and tell the listener in a task of its own."""
        if not incarnation or self._lease.incarnation != incarnation:
            return
        self._lease.dropped()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reason = f"lease not held: lost ({reason})"
        log.warning(
            "cluster lease lost",
            extra={"node_id": self.node_id, "incarnation": incarnation, "reason": reason},
        )
        if self._metrics is not None:
            self._metrics.lease_lost()
        if self._listener is not None:
            task = asyncio.create_task(self._tell(self._listener), name="coord-lease-lost")
            self._listeners.add(task)
            task.add_done_callback(self._listeners.discard)

    async def _tell(self, listener: LeaseListener) -> None:
        """Run the listener, logging what it raises."""
        try:
            await listener.lease_lost()
        except Exception:
            log.exception("lease_lost listener failed", extra={"node_id": self.node_id})

    def _set_reason(self, reason: str, detail: str | None) -> None:
        """Note why the lease is not held, logging when that changes."""
        if reason != self._reason:
            log.warning(reason, extra={"node_id": self.node_id, "reason": detail or reason})
        self._reason = reason

    def _refused(self) -> None:
        if self._metrics is not None:
            self._metrics.claim_refused()

    async def _stop_renewing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _delete_lease(self, incarnation: str) -> None:
        """Compare-and-delete the node lease (so others may claim at once); never raises."""
        try:
            await self._compare_and_delete(keys=[self.node_key], args=[incarnation])
        except REDIS_FAILURES as exc:
            log.warning(
                "cluster lease release failed",
                extra={"node_id": self.node_id, "reason": repr(exc)},
            )
