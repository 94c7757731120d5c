"""Inbound flow control: a token bucket that also recognises sustained flooding."""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    """What to do with one inbound message."""

    ACCEPT = "accept"
    DROP = "drop"
    DROP_AND_TELL = "drop_and_tell"
    CLOSE = "close"


class TokenBucket:
    """`rate` messages a second sustained, `burst` at once; a flood lasting `flood_seconds` closes.

    A flood is a run of drops with no gap longer than one second between them. Drops are
    answered with at most one `rate_limited` error a second.
    """

    __slots__ = (
        "_flood_start",
        "_last_drop",
        "_last_told",
        "_stamp",
        "_tokens",
        "burst",
        "flood_seconds",
        "rate",
    )

    def __init__(self, rate: float, burst: int, flood_seconds: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.flood_seconds = flood_seconds
        self._tokens = float(burst)
        self._stamp = now
        self._flood_start: float | None = None
        self._last_drop = float("-inf")
        self._last_told = float("-inf")

    def take(self, now: float) -> Verdict:
        """Judge one message arriving at `now` (monotonic seconds)."""
        if self.try_take(now):
            return Verdict.ACCEPT
        if self._flood_start is None or now - self._last_drop > 1.0:
            self._flood_start = now
        self._last_drop = now
        if now - self._flood_start >= self.flood_seconds:
            return Verdict.CLOSE
        if now - self._last_told >= 1.0:
            self._last_told = now
            return Verdict.DROP_AND_TELL
        return Verdict.DROP

    def try_take(self, now: float) -> bool:
        """Take a token when one is available at `now`; a refusal here counts as no drop."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        if self._flood_start is not None and now - self._last_drop > 1.0:
            self._flood_start = None
        return True

    def refund(self) -> None:
        """Give back the token taken for a message the bucket does not meter after all."""
        self._tokens = min(self.burst, self._tokens + 1.0)

    def delay(self, now: float) -> float:
        """Seconds from `now` until a token is available (0 when one is)."""
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
