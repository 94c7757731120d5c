"""Ephemeral signals' pacing: each signal's channel, a rate per sender and channel where a newer
signal replaces one still waiting, and the pointer-ping rate per user.

Pure: every method takes the current time. A lane is one sender's channel ("cursor alice"); a
recipient's outbox uses the same key, so a newer frame of a lane replaces one not yet written.
What these let through, app/ephemeral.py relays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

from app.protocol import MESSAGES, Signal
from app.ratelimit import TokenBucket, Verdict

# Every signal type's channel: a cursor.hide ends what a cursor.move showed, and so on.
CHANNELS: Final = {
    "pointer.ping": "ping",
    "cursor.move": "cursor",
    "cursor.hide": "cursor",
    "ruler.update": "ruler",
    "ruler.clear": "ruler",
}
# The paced channels, with the signal that stops showing each.
HIDES: Final = {"cursor": "cursor.hide", "ruler": "ruler.clear"}
SHOWS: Final = frozenset({"cursor.move", "ruler.update"})


def lane(channel: str, user_id: str) -> str:
    """The key of one sender's channel (channel names have no space, so keys never collide)."""
    return f"{channel} {user_id}"


def kind_of(signal: Signal) -> str:
    """A signal's message type."""
    return MESSAGES.of(signal).tag


class Offered(NamedTuple):
    """What the pacer did with a signal: let it through now, or keep it waiting."""

    now: bool
    # The signal that was waiting and is now dropped for this newer one, if any.
    replaced: Signal | None = None


@dataclass(slots=True)
class _Lane:
    # When the next signal is due at the rate (a "theoretical arrival time").
    next_at: float
    last: str
    waiting: Signal | None = None


class Pacer:
    """At most `rate` signals a second through each lane; one that comes sooner waits for its
    turn, and a newer one takes its place (latest wins), so the last one always goes out.

    The rate is kept on average, as a cell-rate meter keeps it: a signal may go up to one
    interval before its due time, and n + 1 signals are never let through in less than n - 1
    intervals, so no window of a second holds more than `rate` + 2. A sender at exactly the
    rate is never held back by the network's jitter: one signal late by up to an interval and
    the next on time both go at once. (With half an interval, one late signal put such a
    sender a little ahead of its due times for good: each later signal waited for a timer.)
    """

    __slots__ = ("_lanes", "interval", "tolerance")

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.tolerance = self.interval
        self._lanes: dict[str, _Lane] = {}

    def offer(self, key: str, signal: Signal, now: float) -> Offered:
        """Let `signal` through now, or keep it waiting until `due(key)`."""
        current = self._lanes.get(key)
        if current is None:
            self._lanes[key] = _Lane(now + self.interval, kind_of(signal))
            return Offered(now=True)
        if current.waiting is not None:
            replaced, current.waiting = current.waiting, signal
            return Offered(now=False, replaced=replaced)
        if now >= current.next_at - self.tolerance:
            self._through(current, signal, now)
            return Offered(now=True)
        current.waiting = signal
        return Offered(now=False)

    def due(self, key: str) -> float:
        """When the signal waiting in `key` may go (the lane must exist)."""
        return self._lanes[key].next_at - self.tolerance

    def take(self, key: str, now: float) -> Signal | None:
        """The signal waiting in `key`, let through now; None when nothing waits."""
        current = self._lanes.get(key)
        if current is None or current.waiting is None:
            return None
        signal, current.waiting = current.waiting, None
        self._through(current, signal, now)
        return signal

    def _through(self, current: _Lane, signal: Signal, now: float) -> None:
        current.next_at = max(now, current.next_at) + self.interval
        current.last = kind_of(signal)

    def showing(self, key: str) -> bool:
        """Whether the last signal through `key` shows something (a cursor, a ruler)."""
        current = self._lanes.get(key)
        return current is not None and current.last in SHOWS

    def hide(self, key: str, hide: str) -> bool:
        """Record that `hide` went out for `key` (its sender left); whether something showed.

        Whatever was waiting is dropped: it would show what is gone.
        """
        current = self._lanes.get(key)
        if current is None:
            return False
        shown = current.last in SHOWS
        current.last, current.waiting = hide, None
        return shown

    def forget(self, key: str) -> None:
        """Drop the lane (its sender has left the table)."""
        self._lanes.pop(key, None)


class PingLimits:
    """Pointer pings per user: `rate` a second, `burst` at once; drops are told once a second."""

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, user_id: str, now: float) -> Verdict:
        """Judge one ping of `user_id` at `now`: ACCEPT, DROP or DROP_AND_TELL (never CLOSE)."""
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst, math.inf, now)
        return bucket.take(now)

    def forget(self, user_id: str) -> None:
        """Drop the user's bucket (they have left the table)."""
        self._buckets.pop(user_id, None)
