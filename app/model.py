"""Values shared across layers: who acts (Role, Actor), what rules apply, what changed (Event)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from msgspec import Struct

from app.config import Limits, TokenPolicy
from app.protocol import (
    FogUpdateMsg,
    MapDeleteMsg,
    MapRenameMsg,
    MapSetMsg,
    MapSwitchMsg,
    SceneDarknessMsg,
    Token,
    TokenAddMsg,
    TokenMoveMsg,
    TokenRemoveMsg,
    TokenUpdateMsg,
)

Role = Literal["gm", "player"]
StateChange = (
    TokenAddMsg
    | TokenMoveMsg
    | TokenRemoveMsg
    | TokenUpdateMsg
    | FogUpdateMsg
    | MapSetMsg
    | MapSwitchMsg
    | MapRenameMsg
    | MapDeleteMsg
    | SceneDarknessMsg
)


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
    `type == "state.sync"` means every client needs a fresh view of the whole state.
    """

    type: str
    payload: Any
    user_id: str
    token_id: str | None = None
    visible_before: bool = False
    visible_after: bool = False
    token: Token | None = None
