"""app.rules.apply against PROTOCOL.md "Messages": every rule, every refusal leaves state alone."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from app.config import Limits
from app.errors import Refusal
from app.model import Actor, Event, Rules
from app.protocol import MESSAGES, CampaignState, decode_client_message
from app.rules import apply, map_list, new_state
from tests.support.harness import map_payload, token_payload

GM = Actor(user_id="gm-ada", role="gm")
PLAYER = Actor(user_id="player-bo", role="player")
OTHER = Actor(user_id="player-cy", role="player")
RULES = Rules(limits=Limits())


def message(kind: str, payload: dict[str, Any]) -> Any:
    """A client message decoded exactly as the server decodes it."""
    return decode_client_message(json.dumps({"type": kind, "payload": payload}))


def run(
    state: CampaignState,
    kind: str,
    payload: dict[str, Any],
    actor: Actor = GM,
    rules: Rules = RULES,
) -> list[Event]:
    """Apply one message."""
    return apply(state, message(kind, payload), actor, rules)


def builtins(state: CampaignState) -> Any:
    """The state as plain data, to compare before and after."""
    return msgspec.to_builtins(state)


def refused(
    state: CampaignState,
    kind: str,
    payload: dict[str, Any],
    actor: Actor = GM,
    rules: Rules = RULES,
) -> str:
    """Apply a message that must be refused; check the state is untouched; return the code."""
    before = builtins(state)
    with pytest.raises(Refusal) as caught:
        run(state, kind, payload, actor, rules)
    assert builtins(state) == before
    return caught.value.code


def plain(value: Any) -> Any:
    """An event payload as the JSON a client receives."""
    return msgspec.to_builtins(value)


def kinds(events: list[Event]) -> list[str]:
    """The event types, in order."""
    return [event.type for event in events]


def with_tokens(*tokens: dict[str, Any], actor: Actor = GM) -> CampaignState:
    """A fresh state with `tokens` added by `actor`."""
    state = new_state("c1")
    for token in tokens:
        run(state, "token.add", token, actor)
    return state


def with_maps(*map_ids: str) -> CampaignState:
    """A fresh state where the GM set `map_ids` in order (the last one is active)."""
    state = new_state("c1")
    for map_id in map_ids:
        run(state, "map.set", map_payload(map_id))
    return state


# --- token.add -----------------------------------------------------------------------------------


def test_token_add_stores_the_token_stamped_with_the_adders_user_id() -> None:
    state = new_state("c1")
    events = run(state, "token.add", token_payload("t1", x=3, y=4), PLAYER)
    assert kinds(events) == ["token.add"]
    expected = {**token_payload("t1", x=3, y=4), "owner_id": PLAYER.user_id}
    assert plain(state.tokens["t1"]) == expected
    assert plain(events[0].payload) == expected
    assert events[0].user_id == PLAYER.user_id


def test_token_add_ignores_an_owner_id_sent_by_the_client() -> None:
    state = new_state("c1")
    run(state, "token.add", token_payload("t1", owner_id="gm-ada"), PLAYER)
    assert state.tokens["t1"].owner_id == PLAYER.user_id


def test_token_add_of_an_existing_token_id_replaces_the_whole_token() -> None:
    first = token_payload("t1", character_id="ch1", image_url="/a.png", x=1)
    state = with_tokens(first)
    events = run(state, "token.add", token_payload("t1", name="Second", x=9), OTHER)
    assert kinds(events) == ["token.add"]
    assert plain(state.tokens["t1"]) == {
        **token_payload("t1", name="Second", x=9),
        "owner_id": OTHER.user_id,
    }


def test_a_player_may_not_add_a_hidden_token() -> None:
    state = new_state("c1")
    assert refused(state, "token.add", token_payload("t1", visible=False), PLAYER) == "forbidden"


def test_a_gm_may_add_a_hidden_token() -> None:
    state = new_state("c1")
    run(state, "token.add", token_payload("t1", visible=False))
    assert state.tokens["t1"].visible is False


def test_a_player_may_not_replace_a_hidden_token() -> None:
    state = with_tokens(token_payload("t1", visible=False))
    code = refused(state, "token.add", token_payload("t1"), PLAYER)
    assert code in {"forbidden", "not_found"}


def test_token_add_past_the_token_limit_is_limit_exceeded() -> None:
    rules = Rules(limits=Limits(max_tokens=2))
    state = new_state("c1")
    run(state, "token.add", token_payload("t1"), rules=rules)
    run(state, "token.add", token_payload("t2"), rules=rules)
    assert refused(state, "token.add", token_payload("t3"), rules=rules) == "limit_exceeded"


def test_replacing_a_token_at_the_token_limit_is_allowed() -> None:
    rules = Rules(limits=Limits(max_tokens=1))
    state = new_state("c1")
    run(state, "token.add", token_payload("t1"), rules=rules)
    run(state, "token.add", token_payload("t1", name="again"), rules=rules)
    assert state.tokens["t1"].name == "again"


def test_the_token_limit_counts_the_active_map_only() -> None:
    rules = Rules(limits=Limits(max_tokens=1))
    state = new_state("c1")
    run(state, "map.set", map_payload("m1"), rules=rules)
    run(state, "token.add", token_payload("t1"), rules=rules)
    run(state, "map.set", map_payload("m2"), rules=rules)
    run(state, "token.add", token_payload("t2"), rules=rules)
    assert list(state.tokens) == ["t2"]


# --- token.move / token.remove -------------------------------------------------------------------


def test_token_move_sets_x_and_y_and_broadcasts_exactly_the_move() -> None:
    state = with_tokens(token_payload("t1"))
    events = run(state, "token.move", {"token_id": "t1", "x": -5.5, "y": 7}, PLAYER)
    assert (state.tokens["t1"].x, state.tokens["t1"].y) == (-5.5, 7)
    assert kinds(events) == ["token.move"]
    assert plain(events[0].payload) == {"token_id": "t1", "x": -5.5, "y": 7}


@pytest.mark.parametrize("actor", [GM, PLAYER], ids=["gm", "player"])
@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("token.move", {"token_id": "ghost", "x": 1, "y": 1}),
        ("token.remove", {"token_id": "ghost"}),
        ("token.update", {"token_id": "ghost", "name": "x"}),
    ],
)
def test_addressing_an_unknown_token_is_not_found(
    kind: str, payload: dict[str, Any], actor: Actor
) -> None:
    state = with_tokens(token_payload("t1"))
    assert refused(state, kind, payload, actor) == "not_found"


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("token.move", {"token_id": "hidden", "x": 1, "y": 1}),
        ("token.remove", {"token_id": "hidden"}),
        ("token.update", {"token_id": "hidden", "name": "x"}),
        ("token.update", {"token_id": "hidden", "visible": True}),
    ],
)
def test_a_player_addressing_a_hidden_token_gets_not_found_as_if_it_did_not_exist(
    kind: str, payload: dict[str, Any]
) -> None:
    state = with_tokens(token_payload("hidden", visible=False))
    assert refused(state, kind, payload, PLAYER) == "not_found"


def test_a_gm_may_move_update_and_remove_a_hidden_token() -> None:
    state = with_tokens(token_payload("hidden", visible=False))
    run(state, "token.move", {"token_id": "hidden", "x": 2, "y": 3})
    run(state, "token.update", {"token_id": "hidden", "name": "Lurker"})
    assert (state.tokens["hidden"].x, state.tokens["hidden"].name) == (2, "Lurker")
    run(state, "token.remove", {"token_id": "hidden"})
    assert state.tokens == {}


def test_token_remove_deletes_the_token_and_broadcasts_its_id() -> None:
    state = with_tokens(token_payload("t1"), token_payload("t2"))
    events = run(state, "token.remove", {"token_id": "t1"}, PLAYER)
    assert list(state.tokens) == ["t2"]
    assert kinds(events) == ["token.remove"]
    assert plain(events[0].payload) == {"token_id": "t1"}


# --- token.update --------------------------------------------------------------------------------


def test_token_update_changes_only_the_fields_given() -> None:
    state = with_tokens(token_payload("t1", image_url="/a.png", character_id="ch1"))
    events = run(state, "token.update", {"token_id": "t1", "name": "New", "width": 2}, PLAYER)
    assert plain(state.tokens["t1"]) == {
        **token_payload("t1", image_url="/a.png", character_id="ch1"),
        "name": "New",
        "width": 2,
        "owner_id": GM.user_id,
    }
    assert plain(events[0].payload) == {"token_id": "t1", "name": "New", "width": 2}


def test_a_players_token_update_carrying_visible_is_refused_whole() -> None:
    state = with_tokens(token_payload("t1"))
    update = {"token_id": "t1", "name": "Renamed", "visible": True}
    assert refused(state, "token.update", update, PLAYER) == "forbidden"
    assert state.tokens["t1"].name == "Token t1"


def test_a_gm_may_hide_and_reveal_a_token_with_token_update() -> None:
    state = with_tokens(token_payload("t1"))
    hide = run(state, "token.update", {"token_id": "t1", "visible": False})
    assert state.tokens["t1"].visible is False
    assert (hide[0].visible_before, hide[0].visible_after) == (True, False)
    reveal = run(state, "token.update", {"token_id": "t1", "visible": True})
    assert (reveal[0].visible_before, reveal[0].visible_after) == (False, True)
    assert plain(reveal[0].token) == plain(state.tokens["t1"])


# --- fog.update ----------------------------------------------------------------------------------

ZONE = {"x": 0, "y": 0, "w": 10, "h": 10, "visible": True}


def test_fog_update_replaces_all_zones() -> None:
    state = new_state("c1")
    run(state, "fog.update", {"zones": [ZONE, ZONE]})
    events = run(state, "fog.update", {"zones": [{**ZONE, "visible": False}]})
    assert plain(state.fog_zones) == [{**ZONE, "visible": False}]
    assert kinds(events) == ["fog.update"]
    assert plain(events[0].payload) == {"zones": [{**ZONE, "visible": False}]}


def test_fog_update_with_no_zones_clears_the_fog() -> None:
    state = new_state("c1")
    run(state, "fog.update", {"zones": [ZONE]})
    run(state, "fog.update", {"zones": []})
    assert state.fog_zones == []


def test_fog_zones_up_to_the_limit_are_accepted_and_one_more_is_limit_exceeded() -> None:
    rules = Rules(limits=Limits(max_fog_zones=3))
    state = new_state("c1")
    run(state, "fog.update", {"zones": [ZONE] * 3}, rules=rules)
    assert refused(state, "fog.update", {"zones": [ZONE] * 4}, rules=rules) == "limit_exceeded"
    assert len(state.fog_zones) == 3


# --- GM-only messages ----------------------------------------------------------------------------

GM_ONLY = [
    ("fog.update", {"zones": [ZONE]}),
    ("map.set", map_payload("m-new")),
    ("map.set", map_payload("m1", name="hijacked")),
    ("map.switch", {"map_id": "m1"}),
    ("map.rename", {"map_id": "m1", "new_name": "x"}),
    ("map.delete", {"map_id": "m1"}),
    ("scene.darkness", {"darkness_level": 0.5}),
]


def test_the_gm_only_messages_are_exactly_those_the_message_table_marks() -> None:
    marked = {tag for tag, row in MESSAGES.client.items() if row.gm_only}
    assert {kind for kind, _ in GM_ONLY} == marked


@pytest.mark.parametrize(("kind", "payload"), GM_ONLY, ids=[k for k, _ in GM_ONLY])
def test_a_player_sending_a_gm_only_message_is_forbidden(
    kind: str, payload: dict[str, Any]
) -> None:
    state = with_maps("m1", "m2")
    assert refused(state, kind, payload, PLAYER) == "forbidden"


# --- map.set -------------------------------------------------------------------------------------


def test_the_first_map_set_makes_the_map_active_and_stores_it_as_map_1() -> None:
    state = new_state("c1")
    events = run(state, "map.set", map_payload("m1", grid_size=70))
    assert (state.map_id, state.map_url, state.grid_size) == (
        "m1",
        map_payload("m1")["image_url"],
        70,
    )
    assert (state.map_width, state.map_height) == (1280, 960)
    assert kinds(events) == ["map.set", "map.list"]
    assert plain(events[0].payload) == {**map_payload("m1", grid_size=70), "name": "Map 1"}
    assert plain(events[1].payload) == {
        "maps": [{"map_id": "m1", "name": "Map 1", "image_url": map_payload("m1")["image_url"]}],
        "active_map_id": "m1",
    }


def test_map_set_of_a_new_map_stores_the_active_map_with_its_tokens_and_fog() -> None:
    state = with_maps("m1")
    run(state, "token.add", token_payload("t1"))
    run(state, "fog.update", {"zones": [ZONE]})
    events = run(state, "map.set", map_payload("m2", name="Crypt"))
    assert kinds(events) == ["map.set", "map.list"]
    assert plain(events[0].payload)["name"] == "Crypt"
    assert state.map_id == "m2"
    assert state.tokens == {}
    assert state.fog_zones == []
    assert state.saved_maps is not msgspec.UNSET
    stored = state.saved_maps["m1"]
    assert list(stored.tokens) == ["t1"]
    assert plain(stored.fog_zones) == [ZONE]
    assert stored.name == "Map 1"
    assert state.saved_maps["m2"].name == "Crypt"


def test_map_set_names_new_maps_map_n_by_default() -> None:
    state = with_maps("m1", "m2", "m3")
    assert [entry.name for entry in map_list(state).maps] == ["Map 1", "Map 2", "Map 3"]


def test_map_set_carries_dd2vtt_metadata_into_the_state_and_the_broadcast() -> None:
    metadata = {
        "walls": [[{"x": 0, "y": 0}, {"x": 5, "y": 0}]],
        "portals": [
            {
                "position": {"x": 1, "y": 0},
                "bounds": [{"x": 0.5, "y": 0}, {"x": 1.5, "y": 0}],
                "rotation": 0,
                "closed": True,
                "freestanding": False,
            }
        ],
        "lights": [
            {
                "position": {"x": 2, "y": 2},
                "range": 6,
                "intensity": 0.8,
                "color": "ffeedd",
                "shadows": True,
            }
        ],
        "environment": {"baked_lighting": True, "ambient_light": "ffffffff"},
    }
    state = new_state("c1")
    events = run(state, "map.set", map_payload("m1", map_metadata=metadata))
    assert plain(state.map_metadata) == metadata
    assert plain(events[0].payload)["map_metadata"] == metadata


def test_map_set_of_a_map_in_the_library_reactivates_it_with_its_tokens_and_fog_kept() -> None:
    state = with_maps("m1")
    run(state, "token.add", token_payload("t1"))
    run(state, "fog.update", {"zones": [ZONE]})
    run(state, "map.set", map_payload("m2"))
    events = run(state, "map.set", map_payload("m1", image_url="/new.png", grid_size=32, width=50))
    assert kinds(events) == ["state.sync", "map.list"]
    assert (state.map_id, state.map_url, state.grid_size, state.map_width) == (
        "m1",
        "/new.png",
        32,
        50,
    )
    assert list(state.tokens) == ["t1"]
    assert plain(state.fog_zones) == [ZONE]
    assert state.saved_maps is not msgspec.UNSET
    assert state.saved_maps["m1"].name == "Map 1"
    assert state.saved_maps["m1"].image_url == "/new.png"


def test_map_set_of_a_library_map_renames_it_only_when_a_name_is_given() -> None:
    state = with_maps("m1", "m2")
    run(state, "map.set", map_payload("m1", name="Tavern"))
    run(state, "map.set", map_payload("m2"))
    assert [entry.name for entry in map_list(state).maps] == ["Tavern", "Map 2"]


def test_map_set_of_the_active_map_updates_it_in_place_keeping_tokens_and_fog() -> None:
    state = with_maps("m1")
    run(state, "token.add", token_payload("t1"))
    run(state, "fog.update", {"zones": [ZONE]})
    events = run(state, "map.set", map_payload("m1", height=10, name="Renamed"))
    assert kinds(events) == ["state.sync", "map.list"]
    assert (state.map_id, state.map_height) == ("m1", 10)
    assert list(state.tokens) == ["t1"]
    assert plain(state.fog_zones) == [ZONE]
    assert [entry.name for entry in map_list(state).maps] == ["Renamed"]


def test_map_set_past_the_library_limit_is_limit_exceeded() -> None:
    rules = Rules(limits=Limits(max_maps=2))
    state = new_state("c1")
    run(state, "map.set", map_payload("m1"), rules=rules)
    run(state, "map.set", map_payload("m2"), rules=rules)
    assert refused(state, "map.set", map_payload("m3"), rules=rules) == "limit_exceeded"


def test_map_set_of_a_library_map_is_allowed_when_the_library_is_full() -> None:
    rules = Rules(limits=Limits(max_maps=2))
    state = new_state("c1")
    run(state, "map.set", map_payload("m1"), rules=rules)
    run(state, "map.set", map_payload("m2"), rules=rules)
    run(state, "map.set", map_payload("m1", name="again"), rules=rules)
    assert state.map_id == "m1"


def test_map_set_with_more_dd2vtt_points_than_the_limit_is_limit_exceeded() -> None:
    rules = Rules(limits=Limits(max_map_points=4))
    point = {"x": 0, "y": 0}
    state = new_state("c1")
    fits = {"walls": [[point, point]], "object_walls": [[point]], "lights": [{"position": point}]}
    run(state, "map.set", map_payload("m1", map_metadata=fits), rules=rules)
    too_many = {**fits, "portals": [{"position": point}]}
    code = refused(state, "map.set", map_payload("m2", map_metadata=too_many), rules=rules)
    assert code == "limit_exceeded"
    code = refused(state, "map.set", map_payload("m1", map_metadata=too_many), rules=rules)
    assert code == "limit_exceeded"


def test_every_dd2vtt_point_counts_toward_the_limit() -> None:
    rules = Rules(limits=Limits(max_map_points=7))
    point = {"x": 0, "y": 0}
    metadata = {
        "walls": [[point, point]],
        "object_walls": [[point]],
        "portals": [{"position": point, "bounds": [point, point]}],
        "lights": [{"position": point}],
    }
    state = new_state("c1")
    run(state, "map.set", map_payload("m1", map_metadata=metadata), rules=rules)
    metadata["walls"] = [[point, point, point]]
    code = refused(state, "map.set", map_payload("m2", map_metadata=metadata), rules=rules)
    assert code == "limit_exceeded"


# --- map.switch ----------------------------------------------------------------------------------


def test_map_switch_stores_the_active_map_and_loads_the_chosen_one_with_its_tokens() -> None:
    state = with_maps("m1")
    run(state, "token.add", token_payload("on-m1"))
    run(state, "map.set", map_payload("m2"))
    run(state, "token.add", token_payload("on-m2"))
    run(state, "fog.update", {"zones": [ZONE]})
    events = run(state, "map.switch", {"map_id": "m1"})
    assert kinds(events) == ["state.sync", "map.list"]
    assert state.map_id == "m1"
    assert list(state.tokens) == ["on-m1"]
    assert state.fog_zones == []
    run(state, "map.switch", {"map_id": "m2"})
    assert list(state.tokens) == ["on-m2"]
    assert plain(state.fog_zones) == [ZONE]


def test_map_switch_brings_back_the_maps_image_grid_size_and_metadata() -> None:
    metadata = {
        "walls": [[{"x": 1, "y": 1}]],
        "environment": {"baked_lighting": True, "ambient_light": ""},
    }
    state = new_state("c1")
    run(state, "map.set", map_payload("m1", grid_size=70, width=700, map_metadata=metadata))
    run(state, "map.set", map_payload("m2"))
    assert state.map_metadata is msgspec.UNSET
    run(state, "map.switch", {"map_id": "m1"})
    assert (state.map_url, state.grid_size, state.map_width) == (
        map_payload("m1")["image_url"],
        70,
        700,
    )
    assert plain(state.map_metadata) == metadata


def test_map_switch_to_the_active_map_keeps_its_tokens_and_fog() -> None:
    state = with_maps("m1")
    run(state, "token.add", token_payload("t1"))
    run(state, "fog.update", {"zones": [ZONE]})
    events = run(state, "map.switch", {"map_id": "m1"})
    assert kinds(events) == ["state.sync", "map.list"]
    assert list(state.tokens) == ["t1"]
    assert plain(state.fog_zones) == [ZONE]


def test_map_switch_to_a_map_not_in_the_library_is_not_found() -> None:
    state = with_maps("m1")
    assert refused(state, "map.switch", {"map_id": "nowhere"}) == "not_found"


def test_map_switch_keeps_the_darkness_level() -> None:
    state = with_maps("m1", "m2")
    run(state, "scene.darkness", {"darkness_level": 0.4})
    run(state, "map.switch", {"map_id": "m1"})
    assert state.darkness_level == 0.4


# --- map.rename / map.delete ---------------------------------------------------------------------


def test_map_rename_renames_a_library_map_and_broadcasts_the_map_list() -> None:
    state = with_maps("m1", "m2")
    events = run(state, "map.rename", {"map_id": "m1", "new_name": "Tavern"})
    assert kinds(events) == ["map.list"]
    assert [entry["name"] for entry in plain(events[0].payload)["maps"]] == ["Tavern", "Map 2"]


def test_map_rename_of_the_active_map_is_allowed() -> None:
    state = with_maps("m1")
    run(state, "map.rename", {"map_id": "m1", "new_name": "Here"})
    assert [entry.name for entry in map_list(state).maps] == ["Here"]


def test_map_rename_of_an_unknown_map_is_not_found() -> None:
    state = with_maps("m1")
    assert refused(state, "map.rename", {"map_id": "nowhere", "new_name": "x"}) == "not_found"


def test_map_delete_removes_a_library_map_and_broadcasts_the_map_list() -> None:
    state = with_maps("m1", "m2")
    events = run(state, "map.delete", {"map_id": "m1"})
    assert kinds(events) == ["map.list"]
    assert plain(events[0].payload) == {
        "maps": [{"map_id": "m2", "name": "Map 2", "image_url": map_payload("m2")["image_url"]}],
        "active_map_id": "m2",
    }


def test_map_delete_of_the_active_map_is_invalid_request() -> None:
    state = with_maps("m1", "m2")
    assert refused(state, "map.delete", {"map_id": "m2"}) == "invalid_request"


def test_map_delete_of_an_unknown_map_is_not_found() -> None:
    state = with_maps("m1")
    assert refused(state, "map.delete", {"map_id": "nowhere"}) == "not_found"


def test_a_deleted_map_can_no_longer_be_switched_to() -> None:
    state = with_maps("m1", "m2")
    run(state, "map.delete", {"map_id": "m1"})
    assert refused(state, "map.switch", {"map_id": "m1"}) == "not_found"


# --- scene.darkness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [(0, 0), (0.25, 0.25), (1, 1), (-0.5, 0), (1.5, 1), (-1e300, 0), (1e300, 1)],
)
def test_scene_darkness_is_clamped_to_zero_to_one(sent: float, stored: float) -> None:
    state = new_state("c1")
    events = run(state, "scene.darkness", {"darkness_level": sent})
    assert state.darkness_level == stored
    assert plain(events[0].payload) == {"darkness_level": stored}


# --- image URL prefixes --------------------------------------------------------------------------

PREFIXED = Rules(limits=Limits(image_url_prefixes=("https://cdn.example/",)))


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("token.add", token_payload("t2", image_url="https://evil.example/x.png")),
        ("token.update", {"token_id": "t1", "image_url": "/local.png"}),
        ("map.set", map_payload("m2", image_url="https://cdn.example.evil/x.png")),
    ],
)
def test_an_image_url_outside_the_configured_prefixes_is_invalid_payload(
    kind: str, payload: dict[str, Any]
) -> None:
    state = with_tokens(token_payload("t1"))
    assert refused(state, kind, payload, rules=PREFIXED) == "invalid_payload"


def test_an_image_url_inside_the_configured_prefixes_is_accepted() -> None:
    state = new_state("c1")
    run(
        state,
        "token.add",
        token_payload("t1", image_url="https://cdn.example/a.png"),
        rules=PREFIXED,
    )
    run(state, "map.set", map_payload("m1"), rules=PREFIXED)
    assert state.map_id == "m1"


# --- the owner token policy (an extension: tokens may be moved only by their owner or a GM) ------

OWNER = Rules(limits=Limits(), token_policy="owner")


def test_under_the_owner_policy_a_player_may_not_touch_another_users_token() -> None:
    state = with_tokens(token_payload("t1"), actor=PLAYER)
    changes: list[tuple[str, dict[str, Any]]] = [
        ("token.move", {"token_id": "t1", "x": 1, "y": 1}),
        ("token.update", {"token_id": "t1", "name": "mine"}),
        ("token.remove", {"token_id": "t1"}),
        ("token.add", token_payload("t1")),
    ]
    for kind, payload in changes:
        assert refused(state, kind, payload, OTHER, OWNER) == "forbidden"
    run(state, "token.move", {"token_id": "t1", "x": 1, "y": 1}, PLAYER, OWNER)
    run(state, "token.move", {"token_id": "t1", "x": 2, "y": 2}, GM, OWNER)
    assert state.tokens["t1"].x == 2


# --- the message table's changes and the rules --------------------------------------------------

# One applicable example of every client message PROTOCOL.md lists as a change to the table.
CHANGES: dict[str, dict[str, Any]] = {
    "token.add": token_payload("t2"),
    "token.move": {"token_id": "t1", "x": 1, "y": 2},
    "token.remove": {"token_id": "t1"},
    "token.update": {"token_id": "t1", "name": "Renamed"},
    "fog.update": {"zones": [ZONE]},
    "map.set": map_payload("m3"),
    "map.switch": {"map_id": "m1"},
    "map.rename": {"map_id": "m1", "new_name": "Renamed"},
    "map.delete": {"map_id": "m1"},
    "scene.darkness": {"darkness_level": 0.5},
}


def test_the_changes_are_exactly_the_numbered_client_messages_of_the_message_table() -> None:
    assert set(CHANGES) == {tag for tag, row in MESSAGES.client.items() if row.numbered}


@pytest.mark.parametrize(("kind", "payload"), CHANGES.items(), ids=list(CHANGES))
def test_the_rules_apply_every_change_and_number_each_event_they_return(
    kind: str, payload: dict[str, Any]
) -> None:
    state = with_maps("m1", "m2")
    run(state, "token.add", token_payload("t1"))
    events = run(state, kind, payload)
    assert events
    assert all(MESSAGES.server[event.type].numbered for event in events)


@pytest.mark.parametrize(
    ("kind", "payload"), [("ping", None), ("auth.refresh", {"token": "a.b.c"})]
)
def test_the_rules_refuse_a_client_message_that_is_no_change(kind: str, payload: Any) -> None:
    state = with_maps("m1")
    data = json.dumps({"type": kind} if payload is None else {"type": kind, "payload": payload})
    before = builtins(state)
    with pytest.raises(Refusal) as caught:
        apply(state, decode_client_message(data), GM, RULES)
    assert caught.value.code == "invalid_request"
    assert builtins(state) == before
