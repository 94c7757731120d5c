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


# Each signal envelope's message type, and the envelopes that show something.
KINDS: Final[dict[type[Signal], str]] = {
    row.envelope: row.tag
    for row in MESSAGES.rows
    if row.ephemeral and row.envelope is not None and issubclass(row.envelope, Signal)
}
_SHOWING: Final = frozenset(envelope for envelope, kind in KINDS.items() if kind in SHOWS)


def kind_of(signal: Signal) -> str:
    """A signal's message type."""
    return KINDS[type(signal)]


class Offered(NamedTuple):
    """What the pacer did with a signal: let it through now, or keep it waiting."""

    now: bool
    # The signal that was waiting and is now dropped for this newer one, if any.
    replaced: Signal | None = None


# The two answers without a replaced signal, made once: an offer is on every signal's path.
THROUGH: Final = Offered(now=True)
WAITS: Final = Offered(now=False)


@dataclass(slots=True)
class _Lane:
    # When the next signal is due at the rate (a "theoretical arrival time").
    next_at: float
    # Whether the last signal through shows something (a cursor, a ruler).
    shows: bool
    waiting: Signal | None = None


class Pacer:
    """At most `rate` signals a second through each lane; one that comes sooner waits for its
    turn, and a newer one takes its place (latest wins), so the last one always goes out.

    The rate is kept on average, as a cell-rate meter keeps it: a signal may go up to
    `TOLERANCE` intervals before its due time. n + 1 signals are never let through in less than
    n - 1.9 intervals, so no window of a second holds more than `rate` + 2 (as with one
    interval's tolerance, the least that lets a late signal and the next on-time one go at once).
    A sender at exactly the rate is never held back by jitter or a pause of the server shorter
    than the tolerance: a frame read late together with the next one puts such a sender ahead
    of its due times for good (the meter remembers it), and with one interval's tolerance every
    later frame of a lane that once bunched after a 50 ms pause waited for a timer.
    """

    __slots__ = ("_lanes", "interval", "tolerance")

    # In intervals: below 2, so a second still holds at most `rate` + 2 signals.
    TOLERANCE: Final = 1.9

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.tolerance = self.interval * self.TOLERANCE
        self._lanes: dict[str, _Lane] = {}

    def offer(self, key: str, signal: Signal, now: float) -> Offered:
        """Let `signal` through now, or keep it waiting until `due(key)`."""
        current = self._lanes.get(key)
        if current is None:
            self._lanes[key] = _Lane(now + self.interval, type(signal) in _SHOWING)
            return THROUGH
        if current.waiting is not None:
            replaced, current.waiting = current.waiting, signal
            return Offered(now=False, replaced=replaced)
        next_at = current.next_at
        if now >= next_at - self.tolerance:
            current.next_at = (now if now > next_at else next_at) + self.interval
            current.shows = type(signal) in _SHOWING
            return THROUGH
        current.waiting = signal
        return WAITS

    def due(self, key: str) -> float:
        """When the signal waiting in `key` may go (the lane must exist)."""
        return self._lanes[key].next_at - self.tolerance

    def take(self, key: str, now: float) -> Signal | None:
        """The signal waiting in `key`, let through now; None when nothing waits."""
        current = self._lanes.get(key)
        if current is None or current.waiting is None:
            return None
        signal, current.waiting = current.waiting, None
        current.next_at = max(now, current.next_at) + self.interval
        current.shows = type(signal) in _SHOWING
        return signal

    def showing(self, key: str) -> bool:
        """Whether the last signal through `key` shows something (a cursor, a ruler)."""
        current = self._lanes.get(key)
        return current is not None and current.shows

    def hide(self, key: str) -> bool:
        """Record that the lane's hide went out (its sender left); whether something showed.

        Whatever was waiting is dropped: it would show what is gone.
        """
        current = self._lanes.get(key)
        if current is None:
            return False
        shown = current.shows
        current.shows, current.waiting = False, None
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
