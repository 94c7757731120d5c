"""A table's unstored side: presence, drag locks and ephemeral signals, as frames and timers.

The session owns one and calls it under its lock: when a member has joined or left, when a
change has applied, and for the messages that change nothing stored (grabs, releases, pings,
cursors, rulers). Nothing here is stored, numbered or kept for a resume. One timer per session
serves the soonest presence departure and lock expiry; a paced signal waiting for its turn has
a timer of its own. Timers do their work in a task that takes the session's lock.

What the contract leaves open is decided in docs/PROTOCOL.md ("Presence", "Ephemeral
signals", "Drag locks"); in short:
- everyone, the joiner included, gets `presence.join` when a user's first connection arrives,
  right after the joiner's own greeting;
- a signal goes to every member but the sender's own connections; pings are limited per
  user, cursors and rulers paced per sender and channel (latest wins);
- while a GM holds the lock of a hidden token, none of that GM's signals reach players, who
  get `cursor.hide` / `ruler.clear` when it starts (if that GM's cursor or ruler showed);
- a user's cursor and ruler are hidden for the others when their last connection goes;
- a lock ends when its token is removed (only its holder can remove it) and when the active
  map changes (map.set, map.switch); `token.released` goes to those who could see the token,
  before the change's own events. A token is never hidden under a player's lock: the GM's
  update is refused as `locked` like anyone's, until the GM takes the lock.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from msgspec import UNSET

from app import errors
from app.config import Settings
from app.locks import DragLocks, Grab, Holder
from app.metrics import Metrics
from app.model import Actor, Event, Role, Rules
from app.presence import Presence
from app.protocol import (
    CampaignState,
    Empty,
    PointerPingMsg,
    PresenceJoin,
    PresenceLeave,
    PresenceMember,
    PresenceSync,
    Signal,
    Spot,
    TokenGrabMsg,
    TokenHold,
    TokenRef,
    TokenReleaseMsg,
)
from app.ratelimit import Verdict
from app.rules import addressable_token
from app.signals import CHANNELS, HIDES, KINDS, THROUGH, Pacer, PingLimits, kind_of, lane

if TYPE_CHECKING:
    from app.session import Member, Outgoing

# What the session lends: a frame encoder (kind, user_id, payload, signal lane).
FrameOf = Callable[[str, str, Any, "str | None"], "Outgoing"]
LiveMessage = TokenGrabMsg | TokenReleaseMsg | Signal
# The signals the pacer meters (all but pings), by envelope: their message type.
PACED_KINDS: dict[type[LiveMessage], str] = {
    envelope: kind for envelope, kind in KINDS.items() if CHANNELS[kind] in HIDES
}
# The events after which no lock survives: the active map changed.
MAP_CHANGES = frozenset({"state.sync", "map.set"})


class Ephemeral:
    """Presence, drag locks and ephemeral signals of one session."""

    def __init__(
        self,
        state: CampaignState,
        members: dict[Member, None],
        audiences: dict[Role, dict[Member, None]],
        frame: FrameOf,
        lock: asyncio.Lock,
        rules: Rules,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        # What the session lends: its state, members, encoder and lock.
        self._state = state
        self._members = members
        self._audiences = audiences
        self._frame = frame
        self._lock = lock
        self._rules = rules
        self._metrics = metrics
        # The tables.
        self.presence = Presence(settings.presence_grace)
        self.locks = DragLocks(settings.lock_idle_timeout)
        self._pacer = Pacer(settings.cursor_rate)
        self._pings = PingLimits(settings.pointer_ping_rate, settings.pointer_ping_burst)
        # GMs holding the lock of a hidden token: their signals reach no player.
        self._veiled: set[str] = set()
        # Timers: the one for departures and expiries (and when it fires), each waiting lane's.
        self._clock: asyncio.TimerHandle | None = None
        self._clock_at = 0.0
        self._waits: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- joining and leaving --------------------------------------------------------------------

    def arrive(self, member: Member) -> None:
        """Greet a member that has its state (or its missed events); announce a newcomer."""
        actor = member.actor
        first = self.presence.connect(actor.user_id, actor.role, member.username)
        roster = [
            PresenceMember(
                user_id=present.user_id,
                role=present.role,
                username=UNSET if present.username is None else present.username,
                connections=present.connections,
            )
            for present in self.presence.members()
        ]
        self._one(member, "presence.sync", actor.user_id, PresenceSync(members=roster))
        tokens = self._state.tokens
        for token_id, holder in self.locks.held().items():
            token = tokens.get(token_id)
            if actor.role == "gm" or (token is not None and token.visible):
                hold = TokenHold(token_id=token_id, user_id=holder.user_id)
                self._one(member, "token.grabbed", holder.user_id, hold)
        if first:
            username = UNSET if member.username is None else member.username
            joined = PresenceJoin(user_id=actor.user_id, role=actor.role, username=username)
            frame = self._frame("presence.join", actor.user_id, joined, None)
            # The newcomer gets it in its greeting; the others within connection.SOON, in one
            # write with whatever else reaches them meanwhile (a join storm's other arrivals).
            for present in self._members:
                if present is member:
                    present.deliver(frame)
                else:
                    present.deliver_soon(frame)
            self._metrics.message_out("presence.join", len(self._members))

    def leave(self, member: Member) -> None:
        """A member has left: its locks end; when it was its user's last, the grace starts."""
        user_id = member.actor.user_id
        for token_id in self.locks.drop_connection(member):
            self._released(token_id, user_id, self._visible(token_id))
        if self.presence.disconnect(user_id, self._now()) is not None:
            for channel, hide in HIDES.items():
                key = lane(channel, user_id)
                self._stop_waiting(key)
                if self._pacer.hide(key):
                    self._send(user_id, hide, Empty(), key)
            self._arm()
        self._reveil()

    def close(self) -> None:
        """Stop every timer: the session is being evicted."""
        self._closed = True
        if self._clock is not None:
            self._clock.cancel()
        for handle in self._waits.values():
            handle.cancel()
        self._waits.clear()

    # --- messages that change nothing stored ---------------------------------------------------

    def receive(self, member: Member, message: LiveMessage) -> None:
        """Handle a grab, a release or a signal; raises Refusal for an `error` reply."""
        # Cursors and rulers first, without a match: they are most of what comes here.
        kind = PACED_KINDS.get(type(message))
        if kind is not None:
            self._paced(member.actor.user_id, cast(Signal, message), kind)
            return
        match message:
            case TokenGrabMsg(payload=ref):
                self._grab(member, ref.token_id)
            case TokenReleaseMsg(payload=ref):
                user_id = member.actor.user_id
                if self.locks.release(ref.token_id, user_id):
                    self._released(ref.token_id, user_id, self._visible(ref.token_id))
                    self._reveil()
            case PointerPingMsg(payload=spot):
                self._ping(member.actor.user_id, spot)

    def _grab(self, member: Member, token_id: str) -> None:
        actor = member.actor
        token = addressable_token(self._state, token_id, actor, self._rules)
        holder = Holder(actor.user_id, actor.role, member)
        if self.locks.grab(token_id, holder, self._now()) is Grab.REFUSED:
            self._metrics.lock_refusals.inc()
            raise errors.locked(f"token {token_id!r} is being dragged by another user")
        hold = TokenHold(token_id=token_id, user_id=actor.user_id)
        self._announce(token.visible, self._frame("token.grabbed", actor.user_id, hold, None))
        self._reveil()
        self._arm()

    def _ping(self, user_id: str, spot: Spot) -> None:
        verdict = self._pings.take(user_id, self._now())
        if verdict is Verdict.ACCEPT:
            self._send(user_id, "pointer.ping", spot, lane("ping", user_id))
            return
        self._metrics.dropped("pointer.ping", "rate")
        if verdict is Verdict.DROP_AND_TELL:
            raise errors.rate_limited("too many pointer pings; slow down")

    def _paced(self, user_id: str, signal: Signal, kind: str) -> None:
        key = lane(CHANNELS[kind], user_id)
        offered = self._pacer.offer(key, signal, self._now())
        if offered is THROUGH:
            self._send(user_id, kind, signal.payload, key)
        elif offered.replaced is not None:
            self._metrics.dropped(kind_of(offered.replaced), "coalesced")
        else:
            work = functools.partial(self._let_through, key, user_id)
            self._waits[key] = self._call_at(self._pacer.due(key), work)

    def _let_through(self, key: str, user_id: str) -> None:
        """A waiting signal's turn has come."""
        self._waits.pop(key, None)
        signal = self._pacer.take(key, self._now())
        if signal is not None:
            self._send(user_id, kind_of(signal), signal.payload, key)

    def _stop_waiting(self, key: str) -> None:
        handle = self._waits.pop(key, None)
        if handle is not None:
            handle.cancel()

    # --- changes to the table -------------------------------------------------------------------

    def may_change(self, token_id: str, user_id: str) -> bool:
        """Whether `user_id` may change `token_id` now (nobody else holds its lock)."""
        if self.locks.may_change(token_id, user_id):
            return True
        self._metrics.lock_refusals.inc()
        return False

    def visibility(self) -> dict[str, bool]:
        """Whether players see each locked token, taken before a change applies."""
        if not self.locks:
            return {}
        tokens = self._state.tokens
        return {tid: tid in tokens and tokens[tid].visible for tid in self.locks.held()}

    def changed(self, events: list[Event], actor: Actor, before: dict[str, bool]) -> None:
        """After a change applied, before its events go out: end or renew the locks it touches.

        `before` is `visibility()` from before the change, for whoever could see a token the
        change took away.
        """
        if not self.locks:
            return
        for event in events:
            token_id = event.token_id or ""
            if event.type in MAP_CHANGES:
                for held_id, held_by in self.locks.held().items():
                    self._released(held_id, held_by.user_id, before.get(held_id, False))
                self.locks.clear()
            elif event.type == "token.move":
                self.locks.renew(token_id, actor.user_id, self._now())
            elif event.type == "token.remove":
                holder = self.locks.holder(token_id)
                if holder is not None:
                    self.locks.forget(token_id)
                    self._released(token_id, holder.user_id, event.visible_before)
        self._reveil()

    def revealed(self, before: dict[str, bool]) -> None:
        """After a change's events went out: players learn of the lock on each token it showed.

        `before` is `visibility()` from before the change. Only a GM can hold a hidden token's
        lock, so this tells players what the GMs knew since the grab.
        """
        if not before:
            return
        tokens = self._state.tokens
        for token_id, holder in self.locks.held().items():
            if not before.get(token_id, True) and token_id in tokens and tokens[token_id].visible:
                hold = TokenHold(token_id=token_id, user_id=holder.user_id)
                frame = self._frame("token.grabbed", holder.user_id, hold, None)
                self._to(self._audiences["player"], frame)

    def _released(self, token_id: str, user_id: str, visible: bool) -> None:
        ref = TokenRef(token_id=token_id)
        self._announce(visible, self._frame("token.released", user_id, ref, None))

    def _visible(self, token_id: str) -> bool:
        token = self._state.tokens.get(token_id)
        return token is not None and token.visible

    def _reveil(self) -> None:
        """Keep players from the signals of a GM dragging a hidden token, and tell them once."""
        tokens = self._state.tokens
        veiled = {
            holder.user_id
            for token_id, holder in self.locks.held().items()
            if holder.role == "gm" and not (token_id in tokens and tokens[token_id].visible)
        }
        # What waited while the veil was on belongs to it: it goes now, to the GMs alone.
        for user_id in self._veiled - veiled:
            for channel in HIDES:
                key = lane(channel, user_id)
                if key in self._waits:
                    self._stop_waiting(key)
                    self._let_through(key, user_id)
        players = self._audiences["player"]
        for user_id in veiled - self._veiled:
            for channel, hide in HIDES.items():
                key = lane(channel, user_id)
                if self._pacer.showing(key):
                    frame = self._frame(hide, user_id, Empty(), key)
                    for player in players:
                        player.deliver(frame)
                    self._metrics.relayed(hide, len(players))
        self._veiled = veiled

    # --- timers ---------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Have the clock fire at the soonest departure or expiry (later ones re-arm it)."""
        times = (self.presence.next_departure(), self.locks.next_expiry())
        due = [t for t in times if t is not None]
        if not due:
            return
        soonest = min(due)
        if self._clock is not None:
            if self._clock_at <= soonest:
                return
            self._clock.cancel()
        work = functools.partial(self._tick, soonest)
        self._clock = self._call_at(soonest, work)
        self._clock_at = soonest

    def _tick(self, due: float) -> None:
        """Departures and expiries that are due: presence.leave, token.released."""
        self._clock = None
        # A timer may fire a hair early; it stands for `due` at least.
        now = max(self._now(), due)
        for user_id in self.presence.depart(now):
            gone = PresenceLeave(user_id=user_id)
            self._to(self._members, self._frame("presence.leave", user_id, gone, None))
            self._pings.forget(user_id)
            for channel in HIDES:
                self._pacer.forget(lane(channel, user_id))
        held = self.locks.held()
        for token_id in self.locks.expire(now):
            self._released(token_id, held[token_id].user_id, self._visible(token_id))
        self._reveil()
        self._arm()

    def _soon(self, work: Callable[[], None]) -> None:
        """Do `work` under the session's lock: now when it is free (nothing here waits, so no
        one can take it meanwhile), else in a task of its own that waits for it."""
        if not self._lock.locked():
            if not self._closed:
                work()
            return
        task = self._running_loop().create_task(self._locked(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _locked(self, work: Callable[[], None]) -> None:
        async with self._lock:
            if not self._closed:
                work()

    def _call_at(self, when: float, work: Callable[[], None]) -> asyncio.TimerHandle:
        """Have `work` done under the lock at `when` (on the `_now` clock) or a hair later."""
        delay = max(0.0, when - self._now())
        return self._running_loop().call_later(delay, self._soon, work)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Kept once known: asking for the running loop costs a system call (the check that
        # the process has not forked), and a paced signal's timer asks twice.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # Times are monotonic seconds, not the loop's clock, for the same reason.
    _now = staticmethod(time.monotonic)

    # --- sending --------------------------------------------------------------------------------

    def _send(self, user_id: str, kind: str, payload: Any, key: str) -> None:
        """Relay a signal of `user_id` to every other user (GMs only while they are veiled)."""
        frame = self._frame(kind, user_id, payload, key)
        audience = self._audiences["gm"] if user_id in self._veiled else self._members
        sent = 0
        for member in audience:
            if member.actor.user_id != user_id:
                member.deliver(frame)
                sent += 1
        self._metrics.relayed(kind, sent)

    def _announce(self, visible: bool, frame: Outgoing) -> None:
        """A lock event, to those who can see its token."""
        self._to(self._members if visible else self._audiences["gm"], frame)

    def _to(self, audience: dict[Member, None], frame: Outgoing) -> None:
        for member in audience:
            member.deliver(frame)
        self._metrics.message_out(frame.kind, len(audience))

    def _one(self, member: Member, kind: str, user_id: str, payload: Any) -> None:
        member.deliver(self._frame(kind, user_id, payload, None))
        self._metrics.message_out(kind)
