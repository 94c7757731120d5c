"""Presence: who is at a campaign's table, counted by connections, with a grace on leaving.

A user arrives with their first connection and leaves when their last one has been gone for
the grace, so a reconnect inside it (a reload, a network blip, a deploy) shows nothing to the
others. Nothing here is stored or numbered; the session turns the answers into frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.model import Role


@dataclass(slots=True)
class Present:
    """One user at the table: their role, display name and open connections."""

    user_id: str
    role: Role
    username: str | None
    connections: int
    # Monotonic time after which a user with no connections has left; None while connected.
    leaves_at: float | None = None


class Presence:
    """The users at one table; every method takes the current monotonic time where it matters."""

    __slots__ = ("_users", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._users: dict[str, Present] = {}

    def members(self) -> list[Present]:
        """Everyone at the table, in arrival order (a user within the grace included)."""
        return list(self._users.values())

    def get(self, user_id: str) -> Present | None:
        """The user's presence, if they are at the table."""
        return self._users.get(user_id)

    def connect(self, user_id: str, role: Role, username: str | None) -> bool:
        """Count one more connection of `user_id`; True when the others should hear they came."""
        present = self._users.get(user_id)
        if present is None:
            self._users[user_id] = Present(user_id, role, username, 1)
            return True
        present.connections += 1
        present.leaves_at = None
        present.role = role
        if username is not None:
            present.username = username
        return False

    def disconnect(self, user_id: str, now: float) -> float | None:
        """Count one connection fewer; when it was the last, the time the user will have left."""
        present = self._users.get(user_id)
        if present is None or present.connections == 0:
            return None
        present.connections -= 1
        if present.connections:
            return None
        present.leaves_at = now + self.grace
        return present.leaves_at

    def depart(self, now: float) -> list[str]:
        """Remove everyone whose grace ran out by `now`; the users who left."""
        gone = [
            user_id
            for user_id, present in self._users.items()
            if present.leaves_at is not None and present.leaves_at <= now
        ]
        for user_id in gone:
            del self._users[user_id]
        return gone

    def next_departure(self) -> float | None:
        """When the soonest grace runs out, if anyone is within one."""
        times = [p.leaves_at for p in self._users.values() if p.leaves_at is not None]
        return min(times, default=None)
