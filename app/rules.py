"""The rules of the table: apply one client message to a campaign state, producing events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import UNSET
from msgspec.structs import replace

from app import errors
from app.model import Actor, Event, Rules, StateChange
from app.protocol import (
    MESSAGES,
    CampaignState,
    FogUpdate,
    FogUpdateMsg,
    MapDeleteMsg,
    MapEntry,
    MapList,
    MapRenameMsg,
    MapSet,
    MapSetMsg,
    MapSwitchMsg,
    SavedMap,
    SceneDarkness,
    SceneDarknessMsg,
    ServerPayload,
    Token,
    TokenAddMsg,
    TokenMoveMsg,
    TokenRemoveMsg,
    TokenUpdate,
    TokenUpdateMsg,
)

# Whether a user may change a token now: False while another user holds its drag lock.
LockCheck = Callable[[str, str], bool]


def _unlocked(token_id: str, user_id: str) -> bool:
    del token_id, user_id
    return True


def new_state(campaign_id: str) -> CampaignState:
    """The state of a campaign nobody has used yet."""
    return CampaignState(campaign_id=campaign_id, saved_maps={})


def apply(
    state: CampaignState,
    message: StateChange,
    actor: Actor,
    rules: Rules,
    may_change: LockCheck = _unlocked,
    oversized: bool = False,
) -> list[Event]:
    """Apply `message` to `state` in place and return the events to broadcast.

    Raises Refusal (and leaves `state` untouched) when the message may not apply. A token
    another user holds the drag lock of (`may_change` says) is refused as `locked`, after the
    checks that it exists for the sender and that the sender may touch it. `oversized` (the
    change could take the stored state past max_state_bytes) is refused once the sender is
    known to be allowed to send it at all.
    """
    kind = MESSAGES.of(message)
    if kind.gm_only and actor.role != "gm":
        raise errors.forbidden(f"only the GM may send {kind.tag}")
    if oversized:
        raise errors.limit_exceeded(
            f"the campaign's stored state is at most {rules.limits.max_state_bytes} bytes; "
            "remove something first"
        )
    match message:
        case TokenAddMsg(payload=token):
            return [_token_add(state, token, actor, rules, may_change)]
        case TokenMoveMsg(payload=move):
            current = _changeable_token(state, move.token_id, actor, rules, may_change)
            current.x, current.y = move.x, move.y
            return [_token_event("token.move", move, actor, current, current.visible)]
        case TokenRemoveMsg(payload=ref):
            current = _changeable_token(state, ref.token_id, actor, rules, may_change)
            del state.tokens[ref.token_id]
            event = Event(
                "token.remove", ref, actor.user_id, ref.token_id, visible_before=current.visible
            )
            return [event]
        case TokenUpdateMsg(payload=update):
            return [_token_update(state, update, actor, rules, may_change)]
        case FogUpdateMsg(payload=fog):
            if len(fog.zones) > rules.limits.max_fog_zones:
                raise errors.limit_exceeded(
                    f"at most {rules.limits.max_fog_zones} fog zones, got {len(fog.zones)}"
                )
            state.fog_zones = fog.zones
            return [Event("fog.update", FogUpdate(zones=fog.zones), actor.user_id)]
        case MapSetMsg(payload=map_set):
            return _map_set(state, map_set, actor, rules)
        case MapSwitchMsg(payload=ref):
            library = _library(state)
            if ref.map_id not in library:
                raise errors.not_found(f"no map {ref.map_id!r} in the library")
            _store_active_map(state, library)
            _activate(state, library, ref.map_id)
            return [Event("state.sync", state, actor.user_id), _map_list_event(state, actor)]
        case MapRenameMsg(payload=rename):
            library = _library(state)
            entry = library.get(rename.map_id)
            if entry is None:
                raise errors.not_found(f"no map {rename.map_id!r} in the library")
            entry.name = rename.new_name
            return [_map_list_event(state, actor)]
        case MapDeleteMsg(payload=ref):
            library = _library(state)
            if ref.map_id == state.map_id:
                raise errors.invalid_request("the active map cannot be deleted; switch first")
            if ref.map_id not in library:
                raise errors.not_found(f"no map {ref.map_id!r} in the library")
            del library[ref.map_id]
            return [_map_list_event(state, actor)]
        case SceneDarknessMsg(payload=darkness):
            level = min(1.0, max(0.0, darkness.darkness_level))
            state.darkness_level = level
            return [Event("scene.darkness", SceneDarkness(darkness_level=level), actor.user_id)]
        case _:
            raise errors.invalid_request(f"{kind.tag} is no change to the table")


def map_list(state: CampaignState) -> MapList:
    """The map library as map.list shows it."""
    library = state.saved_maps if state.saved_maps is not UNSET else {}
    maps = [MapEntry(map_id, m.name, m.image_url) for map_id, m in library.items()]
    active = state.map_id if state.map_id is not UNSET else ""
    return MapList(maps=maps, active_map_id=active)


def _may_touch(token: Token, actor: Actor, rules: Rules) -> bool:
    return actor.role == "gm" or rules.token_policy == "open" or token.owner_id == actor.user_id


def addressable_token(state: CampaignState, token_id: str, actor: Actor, rules: Rules) -> Token:
    """The token `actor` addresses: not_found when it is unknown or hidden from them,
    forbidden when they may not touch it."""
    token = state.tokens.get(token_id)
    if token is None or (actor.role != "gm" and not token.visible):
        raise errors.not_found(f"no token {token_id!r}")
    if not _may_touch(token, actor, rules):
        raise errors.forbidden(f"token {token_id!r} belongs to another user")
    return token


def _changeable_token(
    state: CampaignState, token_id: str, actor: Actor, rules: Rules, may_change: LockCheck
) -> Token:
    token = addressable_token(state, token_id, actor, rules)
    _check_lock(token_id, actor, may_change)
    return token


def _check_lock(token_id: str, actor: Actor, may_change: LockCheck) -> None:
    if not may_change(token_id, actor.user_id):
        raise errors.locked(f"token {token_id!r} is being dragged by another user")


def _token_event(
    kind: str, payload: ServerPayload, actor: Actor, token: Token, before: bool
) -> Event:
    # Events are encoded the moment they are published, so the live token needs no copy.
    return Event(
        kind,
        payload,
        actor.user_id,
        token.token_id,
        visible_before=before,
        visible_after=token.visible,
        token=token,
    )


def _token_add(
    state: CampaignState, token: Token, actor: Actor, rules: Rules, may_change: LockCheck
) -> Event:
    existing = state.tokens.get(token.token_id)
    if actor.role != "gm":
        if not token.visible:
            raise errors.forbidden("only the GM may add hidden tokens")
        if existing is not None and not existing.visible:
            raise errors.forbidden(f"token id {token.token_id!r} is taken")
        if existing is not None and not _may_touch(existing, actor, rules):
            raise errors.forbidden(f"token {token.token_id!r} belongs to another user")
    if existing is None and len(state.tokens) >= rules.limits.max_tokens:
        raise errors.limit_exceeded(f"at most {rules.limits.max_tokens} tokens per map")
    if existing is not None:
        # Replacing a token changes it as an update would.
        _check_lock(token.token_id, actor, may_change)
    _check_image(token.image_url, rules)
    token.owner_id = actor.user_id
    state.tokens[token.token_id] = token
    before = existing.visible if existing is not None else False
    return _token_event("token.add", token, actor, token, before)


def _token_update(
    state: CampaignState, update: TokenUpdate, actor: Actor, rules: Rules, may_change: LockCheck
) -> Event:
    current = _changeable_token(state, update.token_id, actor, rules, may_change)
    if actor.role != "gm":
        if update.visible is not UNSET:
            raise errors.forbidden("only the GM may change a token's visibility")
        if update.owner_id is not UNSET:
            raise errors.forbidden("only the GM may change a token's owner")
    _check_image(update.image_url, rules)
    before = current.visible
    for field in ("name", "image_url", "width", "height", "visible", "owner_id"):
        value = getattr(update, field)
        if value is not UNSET:
            setattr(current, field, value)
    return _token_event("token.update", update, actor, current, before)


def _check_image(url: str | Any, rules: Rules) -> None:
    prefixes = rules.limits.image_url_prefixes
    if prefixes and isinstance(url, str) and not url.startswith(prefixes):
        raise errors.invalid_payload("image_url is outside the allowed image URL prefixes")


def _library(state: CampaignState) -> dict[str, SavedMap]:
    if state.saved_maps is UNSET:
        state.saved_maps = {}
    return state.saved_maps


def _map_list_event(state: CampaignState, actor: Actor) -> Event:
    return Event("map.list", map_list(state), actor.user_id)


def _store_active_map(state: CampaignState, library: dict[str, SavedMap]) -> None:
    """Put the active map, with its tokens and fog, into the library."""
    if state.map_id is UNSET or state.map_url is UNSET:
        return
    entry = library.get(state.map_id)
    name = entry.name if entry is not None else f"Map {len(library) + 1}"
    library[state.map_id] = SavedMap(
        name=name,
        image_url=state.map_url,
        grid_size=state.grid_size,
        width=state.map_width or 1,
        height=state.map_height or 1,
        tokens=state.tokens,
        fog_zones=state.fog_zones,
        map_metadata=state.map_metadata,
    )


def _activate(state: CampaignState, library: dict[str, SavedMap], map_id: str) -> None:
    """Make a library map the active one; its library entry keeps only the map itself."""
    entry = library[map_id]
    state.map_id = map_id
    state.map_url = entry.image_url
    state.grid_size = entry.grid_size
    state.map_width = entry.width
    state.map_height = entry.height
    state.map_metadata = entry.map_metadata
    state.tokens = entry.tokens
    state.fog_zones = entry.fog_zones
    entry.tokens = {}
    entry.fog_zones = []


def _map_set(state: CampaignState, map_set: MapSet, actor: Actor, rules: Rules) -> list[Event]:
    _check_image(map_set.image_url, rules)
    metadata = map_set.map_metadata
    if metadata is not UNSET and metadata.point_count() > rules.limits.max_map_points:
        raise errors.limit_exceeded(f"at most {rules.limits.max_map_points} dd2vtt points per map")
    library = _library(state)
    map_id = map_set.map_id
    is_new = map_id not in library and map_id != state.map_id
    if is_new:
        stores_active = state.map_id is not UNSET and state.map_id not in library
        if len(library) + stores_active >= rules.limits.max_maps:
            raise errors.limit_exceeded(f"at most {rules.limits.max_maps} maps in the library")
    if map_id != state.map_id:
        _store_active_map(state, library)
    entry = library.get(map_id)
    if entry is None:
        name = map_set.name if map_set.name is not UNSET else f"Map {len(library) + 1}"
        entry = SavedMap(name, map_set.image_url, map_set.grid_size, map_set.width, map_set.height)
        library[map_id] = entry
    if map_set.name is not UNSET:
        entry.name = map_set.name
    entry.image_url = map_set.image_url
    entry.grid_size = map_set.grid_size
    entry.width = map_set.width
    entry.height = map_set.height
    if metadata is not UNSET:
        entry.map_metadata = metadata
    if map_id == state.map_id:
        state.map_url = entry.image_url
        state.grid_size = entry.grid_size
        state.map_width = entry.width
        state.map_height = entry.height
        state.map_metadata = entry.map_metadata
    else:
        _activate(state, library, map_id)
    if not is_new:
        return [Event("state.sync", state, actor.user_id), _map_list_event(state, actor)]
    stored = replace(map_set, name=entry.name)
    return [Event("map.set", stored, actor.user_id), _map_list_event(state, actor)]
