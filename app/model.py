"""Values shared across layers: who acts (Role, Actor), what rules apply, what changed (Event)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from msgspec import Struct

from app.config import Limits, TokenPolicy
from app.protocol import ClientMessage, ServerPayload, Token

Role = Literal["gm", "player"]
# The rules take any client message and refuse what is no change to the table; which types
# are changes (the numbered ones) and which are GM-only is the message table's to say
# (app.protocol.MESSAGES), so this is not a second list of them.
StateChange = ClientMessage


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sent a message: the verified user and their campaign role."""

    user_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class Rules:
    """The configuration the rules depend on."""

    limits: Limits
    token_policy: TokenPolicy = "open"


class Event(Struct, frozen=True, gc=False):
    """One applied change, as broadcast to a full-sight (GM) audience.

    For token events, `visible_before`/`visible_after` say whether players could see the token
    before and after the change, and `token` is the whole token after it (read when the event
    is published, before anything else changes it).
    `type == "state.sync"` means every client needs a fresh view of the whole state; its
    payload is the whole state, which each audience sees through its own view.
    """

    type: str
    payload: ServerPayload
    user_id: str
    token_id: str | None = None
    visible_before: bool = False
    visible_after: bool = False
    token: Token | None = None
