"""The audience function alone: what each role receives for each kind of event."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from app import rules
from app.audience import state_view, view
from app.config import Limits
from app.model import Actor, Event, Rules, StateChange
from app.protocol import (
    CampaignState,
    FogUpdate,
    FogUpdateMsg,
    FogZone,
    MapSet,
    MapSetMsg,
    SavedMap,
    Token,
    TokenAddMsg,
    TokenMove,
    TokenMoveMsg,
    TokenRef,
    TokenRemoveMsg,
    TokenUpdate,
    TokenUpdateMsg,
)

GM = Actor("gm-user", "gm")
PLAYER = Actor("player-user", "player")
RULES = Rules(limits=Limits())


def token(token_id: str, visible: bool = True, **fields: Any) -> Token:
    """A token with small defaults."""
    base: dict[str, Any] = {"name": f"Token {token_id}", "x": 1, "y": 2, "width": 1, "height": 1}
    return Token(token_id=token_id, visible=visible, **(base | fields))


def state_with(*tokens: Token) -> CampaignState:
    """A fresh campaign state holding `tokens` on its active map."""
    state = rules.new_state("c1")
    for each in tokens:
        rules.apply(state, TokenAddMsg(payload=each), GM, RULES)
    return state


def stored_map() -> SavedMap:
    """A library map holding one hidden token."""
    url = "https://cdn.example/old.webp"
    return SavedMap("Old", url, 64, 10, 10, tokens={"stored": token("stored", visible=False)})


def apply_one(state: CampaignState, message: StateChange, actor: Actor = GM) -> Event:
    """Apply `message` and return its single event."""
    events = rules.apply(state, message, actor, RULES)
    assert len(events) == 1
    return events[0]


def as_json(value: Any) -> Any:
    """A wire value as the JSON a client would decode."""
    return msgspec.json.decode(msgspec.json.encode(value))


def test_a_players_state_view_has_no_hidden_tokens_and_no_saved_maps_key() -> None:
    state = state_with(token("shown"), token("ambush", visible=False))
    state.saved_maps = {"m0": stored_map()}
    seen = as_json(state_view(state, "player"))
    assert set(seen["tokens"]) == {"shown"}
    assert "saved_maps" not in seen
    assert "ambush" not in msgspec.json.encode(state_view(state, "player")).decode()


def test_a_gms_state_view_has_every_token_and_the_whole_library() -> None:
    state = state_with(token("shown"), token("ambush", visible=False))
    state.saved_maps = {"m0": stored_map()}
    seen = as_json(state_view(state, "gm"))
    assert set(seen["tokens"]) == {"shown", "ambush"}
    assert set(seen["saved_maps"]["m0"]["tokens"]) == {"stored"}


def test_a_gms_state_view_sends_an_empty_library_as_an_object_never_absent() -> None:
    state = CampaignState(campaign_id="c1")
    assert as_json(state_view(state, "gm"))["saved_maps"] == {}


def test_a_players_state_view_leaves_the_gms_state_untouched() -> None:
    state = state_with(token("shown"), token("ambush", visible=False))
    state.saved_maps = {}
    state_view(state, "player")
    assert set(state.tokens) == {"shown", "ambush"}
    assert state.saved_maps == {}


def test_a_state_sync_event_is_the_state_view_of_each_role() -> None:
    state = state_with(token("shown"), token("ambush", visible=False))
    event = Event("state.sync", state, "gm-user")
    for role in ("gm", "player"):
        seen = view(event, state, role, "anyone")
        assert seen is not None
        assert seen[0] == "state.sync"
        assert as_json(seen[1]) == as_json(state_view(state, role))


def test_a_move_of_a_visible_token_is_the_same_payload_object_for_both_roles() -> None:
    state = state_with(token("shown"))
    event = apply_one(state, TokenMoveMsg(payload=TokenMove("shown", 5, 6)), PLAYER)
    gm_seen = view(event, state, "gm", GM.user_id)
    player_seen = view(event, state, "player", PLAYER.user_id)
    assert gm_seen is not None
    assert player_seen is not None
    assert gm_seen[0] == player_seen[0] == "token.move"
    assert player_seen[1] is gm_seen[1]


def test_players_get_nothing_about_a_hidden_tokens_add_move_update_and_remove() -> None:
    state = state_with()
    messages: list[StateChange] = [
        TokenAddMsg(payload=token("ambush", visible=False)),
        TokenMoveMsg(payload=TokenMove("ambush", 3, 4)),
        TokenUpdateMsg(payload=TokenUpdate("ambush", name="Still hidden")),
        TokenRemoveMsg(payload=TokenRef("ambush")),
    ]
    for message in messages:
        event = apply_one(state, message)
        assert view(event, state, "player", PLAYER.user_id) is None
        gm_seen = view(event, state, "gm", GM.user_id)
        assert gm_seen is not None
        assert gm_seen[0] == event.type


def test_hiding_a_token_tells_players_only_to_remove_it() -> None:
    state = state_with(token("shown"))
    event = apply_one(
        state, TokenUpdateMsg(payload=TokenUpdate("shown", visible=False, name="Secret name"))
    )
    seen = view(event, state, "player", PLAYER.user_id)
    assert seen is not None
    assert seen[0] == "token.remove"
    assert as_json(seen[1]) == {"token_id": "shown"}


def test_revealing_a_token_gives_players_the_whole_token() -> None:
    state = state_with(token("ambush", visible=False, image_url="https://cdn.example/a.png"))
    event = apply_one(state, TokenUpdateMsg(payload=TokenUpdate("ambush", visible=True)))
    seen = view(event, state, "player", PLAYER.user_id)
    assert seen is not None
    assert seen[0] == "token.add"
    assert as_json(seen[1]) == as_json(state.tokens["ambush"])
    assert as_json(seen[1])["owner_id"] == GM.user_id


def test_a_gm_replacing_a_visible_token_with_a_hidden_one_tells_players_to_remove_it() -> None:
    state = state_with(token("t1"))
    event = apply_one(state, TokenAddMsg(payload=token("t1", visible=False)))
    seen = view(event, state, "player", PLAYER.user_id)
    assert seen is not None
    assert (seen[0], as_json(seen[1])) == ("token.remove", {"token_id": "t1"})


def test_a_gm_replacing_a_hidden_token_with_a_visible_one_gives_players_a_token_add() -> None:
    state = state_with(token("t1", visible=False))
    event = apply_one(state, TokenAddMsg(payload=token("t1", name="Now shown")))
    seen = view(event, state, "player", PLAYER.user_id)
    assert seen is not None
    assert seen[0] == "token.add"
    assert as_json(seen[1])["name"] == "Now shown"


def test_removing_a_visible_token_is_a_token_remove_for_players() -> None:
    state = state_with(token("t1"))
    event = apply_one(state, TokenRemoveMsg(payload=TokenRef("t1")))
    seen = view(event, state, "player", PLAYER.user_id)
    assert seen is not None
    assert (seen[0], as_json(seen[1])) == ("token.remove", {"token_id": "t1"})


def test_fog_is_the_same_payload_object_for_both_roles() -> None:
    state = state_with()
    zones = [FogZone(x=0, y=0, w=10, h=10, visible=False)]
    event = apply_one(state, FogUpdateMsg(payload=FogUpdate(zones=zones)))
    gm_seen = view(event, state, "gm", GM.user_id)
    player_seen = view(event, state, "player", PLAYER.user_id)
    assert gm_seen is not None
    assert player_seen is not None
    assert player_seen == gm_seen
    assert player_seen[1] is gm_seen[1]


def test_map_set_and_map_list_go_to_both_roles_and_the_list_carries_no_tokens() -> None:
    state = state_with(token("ambush", visible=False), token("shown"))
    state.map_id, state.map_url = "m1", "https://cdn.example/m1.webp"
    message = MapSetMsg(payload=MapSet("m2", "https://cdn.example/m2.webp", 64, 100, 100))
    events = rules.apply(state, message, GM, RULES)
    assert [e.type for e in events] == ["map.set", "map.list"]
    for event in events:
        gm_seen = view(event, state, "gm", GM.user_id)
        player_seen = view(event, state, "player", PLAYER.user_id)
        assert player_seen == gm_seen
    listed = as_json(events[1].payload)
    assert set(listed) == {"maps", "active_map_id"}
    for entry in listed["maps"]:
        assert set(entry) == {"map_id", "name", "image_url"}
    assert "ambush" not in msgspec.json.encode(events[1].payload).decode()


def test_the_recipients_user_id_does_not_change_what_a_role_sees() -> None:
    state = state_with(token("shown", owner_id="x"), token("ambush", visible=False))
    events = [
        apply_one(state, TokenMoveMsg(payload=TokenMove("shown", 1, 1))),
        apply_one(state, TokenMoveMsg(payload=TokenMove("ambush", 1, 1))),
        Event("state.sync", state, GM.user_id),
    ]
    for event in events:
        for role in ("gm", "player"):
            seen = {
                repr(as_json(v[1])) if (v := view(event, state, role, uid)) else None
                for uid in ("gm-user", "player-user", "someone")
            }
            assert len(seen) == 1


def test_a_player_view_of_a_state_without_a_library_has_no_saved_maps() -> None:
    state = CampaignState(campaign_id="c1", saved_maps=UNSET)
    assert "saved_maps" not in as_json(state_view(state, "player"))
