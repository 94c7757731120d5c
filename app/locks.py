"""Drag locks: at most one dragger per token, granted by the server for a short while.

A lock is held by one connection of one user. The holder's moves renew it; it ends when the
holder releases it, when that connection goes away, or when it has not been renewed for the
idle timeout. A GM may take a lock from a player; nobody else may take a held lock. While a
token is locked, only its holder's user may change it. This module keeps the table of locks
and its rules; the session decides who hears of each change (see app/audience.py).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from app.model import Role


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock: a user, their role, and the connection that grabbed it."""

    user_id: str
    role: Role
    connection: Hashable


class Grab(Enum):
    """What a grab did."""

    GRANTED = "granted"
    RENEWED = "renewed"
    TAKEN_OVER = "taken_over"
    REFUSED = "refused"


@dataclass(slots=True)
class _Lock:
    holder: Holder
    expires: float


class DragLocks:
    """The drag locks of one campaign; every method takes the current monotonic time."""

    __slots__ = ("_locks", "idle_timeout")

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._locks: dict[str, _Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def holder(self, token_id: str) -> Holder | None:
        """Who holds `token_id`'s lock, if anyone."""
        lock = self._locks.get(token_id)
        return None if lock is None else lock.holder

    def held(self) -> dict[str, Holder]:
        """Every lock held now, by token id."""
        return {token_id: lock.holder for token_id, lock in self._locks.items()}

    def grab(self, token_id: str, holder: Holder, now: float) -> Grab:
        """Grant, renew or take over `token_id`'s lock for `holder`, or refuse it."""
        lock = self._locks.get(token_id)
        expires = now + self.idle_timeout
        if lock is None:
            self._locks[token_id] = _Lock(holder, expires)
            return Grab.GRANTED
        current = lock.holder
        if current.user_id == holder.user_id:
            # The same user from another tab takes the lock over quietly: one user, one dragger.
            lock.holder, lock.expires = holder, expires
            return Grab.RENEWED if current == holder else Grab.TAKEN_OVER
        if holder.role == "gm" and current.role != "gm":
            lock.holder, lock.expires = holder, expires
            return Grab.TAKEN_OVER
        return Grab.REFUSED

    def may_change(self, token_id: str, user_id: str) -> bool:
        """Whether `user_id` may move, update or remove `token_id` now."""
        lock = self._locks.get(token_id)
        return lock is None or lock.holder.user_id == user_id

    def renew(self, token_id: str, user_id: str, now: float) -> None:
        """The holder moved the token: its lock lasts another idle timeout."""
        lock = self._locks.get(token_id)
        if lock is not None and lock.holder.user_id == user_id:
            lock.expires = now + self.idle_timeout

    def release(self, token_id: str, user_id: str) -> bool:
        """End `user_id`'s lock on `token_id`; False when they did not hold it."""
        lock = self._locks.get(token_id)
        if lock is None or lock.holder.user_id != user_id:
            return False
        del self._locks[token_id]
        return True

    def forget(self, token_id: str) -> bool:
        """End `token_id`'s lock whoever holds it (the token is gone); False when unlocked."""
        return self._locks.pop(token_id, None) is not None

    def drop_connection(self, connection: Hashable) -> list[str]:
        """End every lock `connection` holds (it went away); the tokens they were on."""
        gone = [tid for tid, lock in self._locks.items() if lock.holder.connection == connection]
        for token_id in gone:
            del self._locks[token_id]
        return gone

    def expire(self, now: float) -> list[str]:
        """End every lock not renewed within the idle timeout; the tokens they were on."""
        gone = [tid for tid, lock in self._locks.items() if lock.expires <= now]
        for token_id in gone:
            del self._locks[token_id]
        return gone

    def next_expiry(self) -> float | None:
        """When the soonest lock runs out, if any is held."""
        return min((lock.expires for lock in self._locks.values()), default=None)

    def clear(self) -> list[str]:
        """End every lock (the map changed); the tokens they were on."""
        gone = list(self._locks)
        self._locks.clear()
        return gone
