"""Who sees what: the one function every sending path asks what a recipient may receive."""

from __future__ import annotations

from msgspec import UNSET
from msgspec.structs import replace

from app.model import Event, Role
from app.protocol import CampaignState, ServerPayload, TokenRef

TOKEN_EVENTS = frozenset({"token.add", "token.move", "token.update", "token.remove"})


def view(
    event: Event, state: CampaignState, role: Role, user_id: str
) -> tuple[str, ServerPayload] | None:
    """What a recipient of `role` receives for `event` as (type, payload), or None for nothing.

    `state` is the state right after the event. Hidden tokens exist for GMs only: players get
    no event about a hidden token, a `token.remove` when one is hidden and a `token.add` with
    the whole token when one is revealed. `user_id` is part of the decision's inputs so that a
    per-user rule has one place to live; no rule reads it yet.
    """
    del user_id
    if event.type == "state.sync":
        return "state.sync", state_view(state, role)
    if role == "gm" or event.type not in TOKEN_EVENTS:
        return event.type, event.payload
    if event.visible_after:
        if event.visible_before or event.type == "token.add":
            return event.type, event.payload
        if event.token is not None:
            return "token.add", event.token
    if event.visible_before:
        return "token.remove", TokenRef(token_id=event.token_id or "")
    return None


def state_view(state: CampaignState, role: Role) -> CampaignState:
    """The whole state as a recipient of `role` may see it (for state.sync)."""
    if role == "gm":
        library = state.saved_maps if state.saved_maps is not UNSET else {}
        return replace(state, saved_maps=library)
    tokens = {tid: token for tid, token in state.tokens.items() if token.visible}
    return replace(state, tokens=tokens, saved_maps=UNSET)
