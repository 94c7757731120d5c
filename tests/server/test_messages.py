"""Every message of PROTOCOL.md against a real server: who receives what, every refusal, every code.

Error codes: every code of PROTOCOL.md "Errors" is provoked here from a client except `internal`,
which the server defines but never sends (no code path produces it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from jose import jwt
from websockets.exceptions import ConnectionClosed

import tests.support.harness as harness
from app.auth import DevKeys
from app.config import Limits
from app.errors import ERROR_CODES
from tests.support.harness import (
    TIMEOUT,
    Peer,
    RunningServer,
    map_payload,
    serve,
    settings_for,
    token_payload,
)
from tests.support.mirror import Mirror

pytestmark = pytest.mark.anyio

ZONE = {"x": 0, "y": 0, "w": 100, "h": 50, "visible": True}
UNPROMPTED = frozenset({"pong", "state.saved"})


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the module, so one server can serve every test."""
    return "asyncio"


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A default server; each test uses campaigns of its own."""
    async with serve(settings_for(tmp_path_factory.mktemp("shared"))) as running:
        yield running


@pytest.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A server with tiny collection limits and an image URL prefix."""
    limits = Limits(
        max_tokens=2,
        max_fog_zones=2,
        max_maps=2,
        max_map_points=4,
        image_url_prefixes=("https://cdn.example/",),
    )
    async with serve(settings_for(tmp_path_factory.mktemp("limited"), limits=limits)) as running:
        yield running


# --- helpers -------------------------------------------------------------------------------------

_cursors: weakref.WeakKeyDictionary[Peer, int] = weakref.WeakKeyDictionary()


def new_campaign() -> str:
    """A campaign id no other test uses."""
    return f"c-{uuid.uuid4().hex[:12]}"


async def join(server: RunningServer, campaign: str, user: str, role: Any = "player") -> Peer:
    """Join and read the greeting; `news` starts after it."""
    peer = await server.join(campaign, user, role)
    _cursors[peer] = len(peer.received)
    return peer


async def table(server: RunningServer) -> tuple[Peer, Peer, str]:
    """A GM and a player at a fresh campaign."""
    campaign = new_campaign()
    gm = await join(server, campaign, "gm-ada", "gm")
    player = await join(server, campaign, "pl-bo")
    return gm, player, campaign


async def news(peer: Peer) -> list[dict[str, Any]]:
    """Every frame `peer` received since the last call; a roundtrip drains them.

    Pongs and `state.saved` (which the flush loop sends whenever it wrote) are left out.
    """
    await peer.roundtrip()
    start = _cursors.get(peer, 0)
    _cursors[peer] = len(peer.received)
    return [frame for frame in peer.received[start:] if frame["type"] not in UNPROMPTED]


async def prompted(peer: Peer) -> dict[str, Any]:
    """The next frame that is not a `state.saved` (which a flush may slip in at any time)."""
    return await peer.until(lambda frame: frame["type"] != "state.saved")


async def act(peer: Peer, kind: str, payload: Any = None, **envelope: Any) -> list[dict[str, Any]]:
    """Send one message; return what the sender received because of it."""
    await peer.send(kind, payload, **envelope)
    return await news(peer)


async def act_raw(peer: Peer, data: str | bytes) -> list[dict[str, Any]]:
    """Send one frame as is; return what the sender received because of it."""
    await peer.send_raw(data)
    return await news(peer)


async def snapshot(server: RunningServer, campaign: str, role: Any = "gm") -> dict[str, Any]:
    """The state.sync payload a fresh joiner of `role` receives."""
    peer = await server.join(campaign, f"observer-{uuid.uuid4().hex[:8]}", role)
    await peer.close()
    return peer.sync["payload"]


def types(frames: list[dict[str, Any]]) -> list[str]:
    """The frame types, in order."""
    return [frame["type"] for frame in frames]


def only_error(frames: list[dict[str, Any]], code: str) -> dict[str, Any]:
    """The single frame of `frames`, which must be an error with `code` and no seq."""
    assert types(frames) == ["error"], frames
    error = frames[0]
    assert error["payload"]["code"] == code, error
    assert isinstance(error["payload"]["message"], str)
    assert "seq" not in error
    return error


async def refusal(peer: Peer) -> int | None:
    """The close code of a handshake the server refused; fails when it sent anything first."""
    try:
        frame = await peer.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    pytest.fail(f"the server admitted the connection and sent {frame['type']}")


def ws_url(server: RunningServer, query: str) -> str:
    """A /ws URL with a raw query string."""
    return f"ws://127.0.0.1:{server.port}/ws?{query}"


# --- on connect ----------------------------------------------------------------------------------


async def test_a_client_joining_a_fresh_campaign_gets_its_empty_state_then_the_map_list(
    shared: RunningServer,
) -> None:
    campaign = new_campaign()
    gm = await shared.join(campaign, "gm-ada", "gm")
    player = await shared.join(campaign, "pl-bo")
    sync, listing = gm.received[0], gm.received[1]
    assert sync["type"] == "state.sync"
    assert (sync["campaign_id"], sync["user_id"], sync["seq"]) == (campaign, "gm-ada", 0)
    epoch = sync["payload"].pop("epoch")
    assert isinstance(epoch, str)
    assert epoch
    assert sync["payload"] == {
        "campaign_id": campaign,
        "grid_size": 64,
        "map_width": 0,
        "map_height": 0,
        "darkness_level": 0,
        "tokens": {},
        "fog_zones": [],
        "saved_maps": {},
        "seq": 0,
    }
    assert listing["type"] == "map.list"
    assert listing["payload"] == {"maps": []}
    assert "saved_maps" not in player.sync["payload"]
    assert player.sync["payload"]["epoch"] == epoch


# --- happy paths: what each client receives ------------------------------------------------------


async def test_token_add_reaches_every_client_stamped_with_the_sender_as_owner(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    mine = await act(player, "token.add", token_payload("t1", character_id="ch-1"))
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.add"]
        frame = frames[0]
        assert (frame["campaign_id"], frame["user_id"], frame["seq"]) == (campaign, "pl-bo", 1)
        assert frame["payload"] == {
            **token_payload("t1", character_id="ch-1"),
            "owner_id": "pl-bo",
        }


async def test_token_move_reaches_every_client_including_the_sender(shared: RunningServer) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    mine = await act(player, "token.move", {"token_id": "t1", "x": 12.5, "y": -3})
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.move"]
        assert frames[0]["payload"] == {"token_id": "t1", "x": 12.5, "y": -3}
        assert (frames[0]["user_id"], frames[0]["seq"]) == ("pl-bo", 2)


async def test_token_update_reaches_every_client_with_only_the_fields_given(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    update = {"token_id": "t1", "name": "Aria", "image_url": "/tokens/aria.png", "width": 2}
    mine = await act(player, "token.update", update)
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.update"]
        assert frames[0]["payload"] == update
    token = (await snapshot(shared, campaign))["tokens"]["t1"]
    assert token == {**token_payload("t1"), **update, "owner_id": "gm-ada"}


async def test_token_remove_reaches_every_client(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    mine = await act(player, "token.remove", {"token_id": "t1"})
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.remove"]
        assert frames[0]["payload"] == {"token_id": "t1"}
    assert (await snapshot(shared, campaign))["tokens"] == {}


async def test_a_hidden_token_exists_for_the_gm_only(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    steps = [
        ("token.add", token_payload("h1", visible=False)),
        ("token.move", {"token_id": "h1", "x": 4, "y": 4}),
        ("token.update", {"token_id": "h1", "name": "Lurker"}),
    ]
    for kind, payload in steps:
        assert types(await act(gm, kind, payload)) == [kind]
    assert await news(player) == []
    assert "h1" not in (await snapshot(shared, campaign, "player"))["tokens"]
    assert "h1" in (await snapshot(shared, campaign, "gm"))["tokens"]
    assert types(await act(gm, "token.remove", {"token_id": "h1"})) == ["token.remove"]
    assert await news(player) == []


async def test_hiding_a_token_removes_it_for_players_and_revealing_adds_it_whole(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1", image_url="/a.png"))
    await news(player)
    hidden = await act(gm, "token.update", {"token_id": "t1", "visible": False})
    assert types(hidden) == ["token.update"]
    seen = await news(player)
    assert types(seen) == ["token.remove"]
    assert seen[0]["payload"] == {"token_id": "t1"}
    assert seen[0]["seq"] == hidden[0]["seq"]
    await act(gm, "token.move", {"token_id": "t1", "x": 9, "y": 9})
    assert await news(player) == []
    await act(gm, "token.update", {"token_id": "t1", "visible": True})
    seen = await news(player)
    assert types(seen) == ["token.add"]
    assert seen[0]["payload"] == {
        **token_payload("t1", image_url="/a.png", x=9, y=9),
        "owner_id": "gm-ada",
    }


async def test_re_adding_a_visible_token_as_hidden_removes_it_for_players(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    assert types(await act(gm, "token.add", token_payload("t1", visible=False))) == ["token.add"]
    assert types(await news(player)) == ["token.remove"]


async def test_fog_update_reaches_every_client(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    zones = [ZONE, {**ZONE, "x": 100, "visible": False}]
    mine = await act(gm, "fog.update", {"zones": zones})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["fog.update"]
        assert frames[0]["payload"] == {"zones": zones}
    assert (await snapshot(shared, campaign, "player"))["fog_zones"] == zones


async def test_map_set_of_a_new_map_sends_everyone_map_set_with_its_stored_name_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    metadata = {"walls": [[{"x": 0, "y": 0}, {"x": 3, "y": 0}]]}
    mine = await act(gm, "map.set", map_payload("m1", map_metadata=metadata))
    theirs = await news(player)
    listing = {
        "maps": [{"map_id": "m1", "name": "Map 1", "image_url": map_payload("m1")["image_url"]}],
        "active_map_id": "m1",
    }
    for frames in (mine, theirs):
        assert types(frames) == ["map.set", "map.list"]
        assert frames[0]["payload"] == {
            **map_payload("m1", map_metadata=metadata),
            "name": "Map 1",
        }
        assert frames[1]["payload"] == listing
        assert [frame["seq"] for frame in frames] == [1, 2]
    state = await snapshot(shared, campaign, "player")
    assert (state["map_id"], state["map_url"], state["map_metadata"]) == (
        "m1",
        map_payload("m1")["image_url"],
        metadata,
    )


async def test_map_set_of_a_library_map_sends_everyone_a_fresh_state_sync_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await act(gm, "token.add", token_payload("h1", visible=False))
    await act(gm, "map.set", map_payload("m2"))
    await news(player)
    mine = await act(gm, "map.set", map_payload("m1", grid_size=32, name="Tavern"))
    theirs = await news(player)
    assert types(mine) == types(theirs) == ["state.sync", "map.list"]
    gm_state, player_state = mine[0]["payload"], theirs[0]["payload"]
    assert set(gm_state["tokens"]) == {"t1", "h1"}
    assert set(player_state["tokens"]) == {"t1"}
    assert "saved_maps" in gm_state
    assert "saved_maps" not in player_state
    assert (player_state["map_id"], player_state["grid_size"]) == ("m1", 32)
    assert mine[0]["seq"] == theirs[0]["seq"] == player_state["seq"]
    assert [m["name"] for m in theirs[1]["payload"]["maps"]] == ["Tavern", "Map 2"]


async def test_map_switch_sends_everyone_a_fresh_state_sync_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await act(gm, "token.add", token_payload("h1", visible=False))
    await act(gm, "fog.update", {"zones": [ZONE]})
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t2"))
    await news(player)
    mine = await act(gm, "map.switch", {"map_id": "m1"})
    theirs = await news(player)
    assert types(mine) == types(theirs) == ["state.sync", "map.list"]
    gm_state, player_state = mine[0]["payload"], theirs[0]["payload"]
    assert set(gm_state["tokens"]) == {"t1", "h1"}
    assert set(player_state["tokens"]) == {"t1"}
    assert player_state["fog_zones"] == [ZONE]
    assert "saved_maps" not in player_state
    assert set(gm_state["saved_maps"]) == {"m1", "m2"}
    assert list(gm_state["saved_maps"]["m2"]["tokens"]) == ["t2"]
    assert theirs[1]["payload"]["active_map_id"] == "m1"
    assert await snapshot(shared, campaign, "gm") == {**gm_state, "seq": gm_state["seq"] + 1}


async def test_map_rename_sends_everyone_the_map_list(shared: RunningServer) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await news(player)
    mine = await act(gm, "map.rename", {"map_id": "m1", "new_name": "The Crypt"})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["map.list"]
        assert frames[0]["payload"]["maps"][0]["name"] == "The Crypt"


async def test_map_delete_sends_everyone_the_map_list(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "map.set", map_payload("m2"))
    await news(player)
    mine = await act(gm, "map.delete", {"map_id": "m1"})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["map.list"]
        assert [m["map_id"] for m in frames[0]["payload"]["maps"]] == ["m2"]
    assert set((await snapshot(shared, campaign))["saved_maps"]) == {"m2"}


@pytest.mark.parametrize(("sent", "applied"), [(0.4, 0.4), (3, 1), (-2, 0)])
async def test_scene_darkness_reaches_everyone_clamped_to_zero_to_one(
    shared: RunningServer, sent: float, applied: float
) -> None:
    gm, player, campaign = await table(shared)
    mine = await act(gm, "scene.darkness", {"darkness_level": sent})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["scene.darkness"]
        assert frames[0]["payload"] == {"darkness_level": applied}
    assert (await snapshot(shared, campaign, "player"))["darkness_level"] == applied


async def test_ping_is_answered_with_a_pong_to_the_sender_only_and_without_seq(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await player.send("ping")
    pong = await prompted(player)
    assert pong == {
        "type": "pong",
        "campaign_id": campaign,
        "user_id": "pl-bo",
        "payload": {},
    }
    assert await news(gm) == []


async def test_auth_refresh_with_a_fresh_token_for_the_same_user_keeps_the_connection(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    assert await act(player, "auth.refresh", {"token": shared.token("pl-bo")}) == []
    await act(gm, "token.add", token_payload("t1"))
    assert types(await news(player)) == ["token.add"]


async def test_auth_refresh_with_another_users_token_closes_4401(shared: RunningServer) -> None:
    _, player, _ = await table(shared)
    await player.send("auth.refresh", {"token": shared.token("someone-else")})
    code, _ = await player.closed()
    assert code == 4401


async def test_the_mirrors_of_a_gm_and_a_player_equal_fresh_state_syncs_after_every_message_type(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    metadata = {"lights": [{"position": {"x": 1, "y": 1}, "range": 4}]}
    script: list[tuple[Peer, str, dict[str, Any]]] = [
        (gm, "map.set", map_payload("m1", name="Tavern", map_metadata=metadata)),
        (gm, "token.add", token_payload("t1")),
        (gm, "token.add", token_payload("h1", visible=False)),
        (player, "token.add", token_payload("p1", character_id="ch-9")),
        (player, "token.move", {"token_id": "p1", "x": 5, "y": 6}),
        (player, "token.update", {"token_id": "t1", "name": "Barkeep"}),
        (gm, "token.update", {"token_id": "h1", "visible": True}),
        (gm, "token.update", {"token_id": "t1", "visible": False}),
        (gm, "token.move", {"token_id": "t1", "x": 1, "y": 1}),
        (gm, "fog.update", {"zones": [ZONE]}),
        (gm, "scene.darkness", {"darkness_level": 7}),
        (gm, "map.set", map_payload("m2")),
        (player, "token.add", token_payload("p2")),
        (gm, "map.rename", {"map_id": "m1", "new_name": "Old Tavern"}),
        (gm, "map.set", map_payload("m3", name="Crypt")),
        (gm, "map.switch", {"map_id": "m1"}),
        (player, "token.remove", {"token_id": "p1"}),
        (gm, "map.set", map_payload("m1", width=99)),
        (gm, "map.delete", {"map_id": "m2"}),
        (gm, "token.remove", {"token_id": "h1"}),
    ]
    for peer, kind, payload in script:
        frames = await act(peer, kind, payload)
        assert "error" not in types(frames), (kind, frames)
    await news(player)
    for peer, role in ((gm, "gm"), (player, "player")):
        mirror = Mirror.of(peer.received)
        assert mirror.state == await snapshot(shared, campaign, role)
        assert mirror.maps is not None
        assert mirror.maps["active_map_id"] == "m1"
        assert [m["name"] for m in mirror.maps["maps"]] == ["Old Tavern", "Crypt"]


# --- GM-only refusals ----------------------------------------------------------------------------

GM_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("fog.update", {"zones": [ZONE]}),
    ("map.set", map_payload("m-new")),
    ("map.set", map_payload("m1", name="hijacked")),
    ("map.switch", {"map_id": "m1"}),
    ("map.rename", {"map_id": "m1", "new_name": "hijacked"}),
    ("map.delete", {"map_id": "m1"}),
    ("scene.darkness", {"darkness_level": 1}),
    ("token.update", {"token_id": "t1", "visible": False}),
    ("token.update", {"token_id": "t1", "name": "also refused", "visible": True}),
    ("token.add", token_payload("t-hidden", visible=False)),
]


@pytest.mark.parametrize(
    ("kind", "payload"), GM_ONLY, ids=[f"{k}-{i}" for i, (k, _) in enumerate(GM_ONLY)]
)
async def test_a_player_sending_a_gm_only_message_is_forbidden_and_nothing_changes(
    shared: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    before = await snapshot(shared, campaign)
    only_error(await act(player, kind, payload), "forbidden")
    assert await news(gm) == []
    assert await snapshot(shared, campaign) == before


# --- refusals: every error code a client can provoke ---------------------------------------------

BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("truncated JSON", '{"type": "token.move", "payload": {"token_id": "t1"', "invalid_json"),
    ("not JSON", "hello", "invalid_json"),
    (
        "a NaN literal",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": NaN, "y": 0}}',
        "invalid_json",
    ),
    (
        "an Infinity literal",
        '{"type": "scene.darkness", "payload": {"darkness_level": Infinity}}',
        "invalid_json",
    ),
    ("a binary frame that is not JSON", b"\x00\x01\xfe\xff", "invalid_json"),
    (
        "a refused value then truncated JSON",
        '{"type": "token.move", "payload": {"token_id": 5',
        "invalid_json",
    ),
    ("a binary frame of broken UTF-8 inside JSON", b'{"type": "ping\xc3"}', "invalid_json"),
    ("a JSON array", '[{"type": "ping"}]', "invalid_message"),
    ("a JSON string", '"ping"', "invalid_message"),
    ("an object without type", '{"payload": {}}', "invalid_message"),
    ("a numeric type", '{"type": 7, "payload": {}}', "invalid_message"),
    ("an unknown type", '{"type": "token.teleport", "payload": {}}', "unknown_type"),
    ("a server-only type", '{"type": "state.sync", "payload": {}}', "unknown_type"),
    (
        "a string coordinate",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": "1", "y": 0}}',
        "invalid_payload",
    ),
    (
        "a numeric visible",
        '{"type": "token.update", "payload": {"token_id": "t1", "visible": 0}}',
        "invalid_payload",
    ),
    (
        "1e999",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": 1e999, "y": 0}}',
        "invalid_payload",
    ),
    (
        "a coordinate beyond ten million",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": 10000001, "y": 0}}',
        "invalid_payload",
    ),
    (
        "a zero size",
        '{"type": "token.update", "payload": {"token_id": "t1", "width": 0}}',
        "invalid_payload",
    ),
    ("a missing field", '{"type": "token.move", "payload": {"token_id": "t1"}}', "invalid_payload"),
    ("no payload", '{"type": "map.switch"}', "invalid_payload"),
    ("a payload array", '{"type": "token.remove", "payload": ["t1"]}', "invalid_payload"),
    (
        "a javascript image_url",
        '{"type": "token.update", "payload": {"token_id": "t1", "image_url": "javascript:x"}}',
        "invalid_payload",
    ),
    (
        "a protocol-relative image_url",
        '{"type": "token.update", "payload": {"token_id": "t1", "image_url": "//evil/x.png"}}',
        "invalid_payload",
    ),
    (
        "a 129-character token id",
        json.dumps({"type": "token.remove", "payload": {"token_id": "t" * 129}}),
        "invalid_payload",
    ),
    (
        "a 201-character name",
        json.dumps({"type": "token.update", "payload": {"token_id": "t1", "name": "n" * 201}}),
        "invalid_payload",
    ),
    ("an unknown token", '{"type": "token.remove", "payload": {"token_id": "t9"}}', "not_found"),
    ("an unknown map", '{"type": "map.switch", "payload": {"map_id": "m9"}}', "not_found"),
    (
        "deleting the active map",
        '{"type": "map.delete", "payload": {"map_id": "m1"}}',
        "invalid_request",
    ),
]


# A player sending these is refused as forbidden before the map is even looked up.
GM_ONLY_FRAMES = frozenset({"an unknown map", "deleting the active map"})


@pytest.mark.parametrize(("sender", "role"), [("gm-ada", "gm"), ("pl-bo", "player")])
@pytest.mark.parametrize(("name", "data", "code"), BAD_FRAMES, ids=[n for n, _, _ in BAD_FRAMES])
async def test_a_bad_frame_gets_one_error_keeps_the_socket_usable_and_changes_nothing(
    shared: RunningServer, name: str, data: str | bytes, code: str, sender: str, role: str
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    peer, other = (gm, player) if role == "gm" else (player, gm)
    gm_only = name in GM_ONLY_FRAMES
    expected = "forbidden" if role == "player" and gm_only else code
    before = await snapshot(shared, campaign)
    error = only_error(await act_raw(peer, data), expected)
    assert (error["user_id"], error["campaign_id"]) == (sender, campaign)
    assert await news(other) == []
    assert await snapshot(shared, campaign) == before
    moved = await act(peer, "token.move", {"token_id": "t1", "x": 1, "y": 1})
    assert types(moved) == ["token.move"]


async def test_limits_refuse_with_limit_exceeded_and_change_nothing(limited: RunningServer) -> None:
    gm, player, campaign = await table(limited)
    point = {"x": 0, "y": 0}
    await act(gm, "map.set", map_payload("m1", map_metadata={"walls": [[point] * 4]}))
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t1"))
    await act(player, "token.add", token_payload("t2"))
    await act(gm, "fog.update", {"zones": [ZONE, ZONE]})
    await news(player)
    before = await snapshot(limited, campaign)
    refusals: list[tuple[Peer, str, dict[str, Any]]] = [
        (player, "token.add", token_payload("t3")),
        (gm, "token.add", token_payload("t3", visible=False)),
        (gm, "fog.update", {"zones": [ZONE, ZONE, ZONE]}),
        (gm, "map.set", map_payload("m3")),
        (gm, "map.set", map_payload("m2", map_metadata={"walls": [[point] * 5]})),
    ]
    for peer, kind, payload in refusals:
        only_error(await act(peer, kind, payload), "limit_exceeded")
    assert await snapshot(limited, campaign) == before
    assert types(await act(gm, "token.add", token_payload("t1", name="replaced"))) == ["token.add"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("token.add", token_payload("t2", image_url="https://elsewhere.example/x.png")),
        ("token.update", {"token_id": "t1", "image_url": "/relative.png"}),
        ("map.set", map_payload("m2", image_url="https://cdn.example.evil/x.png")),
    ],
)
async def test_an_image_url_outside_the_configured_prefixes_is_invalid_payload(
    limited: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, _, campaign = await table(limited)
    await act(gm, "token.add", token_payload("t1", image_url="https://cdn.example/t1.png"))
    before = await snapshot(limited, campaign)
    only_error(await act(gm, kind, payload), "invalid_payload")
    assert await snapshot(limited, campaign) == before


async def test_a_client_over_its_message_rate_gets_rate_limited_and_the_message_is_dropped(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, rate_per_second=0.1, rate_burst=3)) as server:
        gm = await server.join("c-rate", "gm-ada", "gm")
        for index in range(4):
            await gm.send("token.add", token_payload(f"t{index}"))
        for index in range(3):
            added = await prompted(gm)
            assert (added["type"], added["payload"]["token_id"]) == ("token.add", f"t{index}")
        only_error([await prompted(gm)], "rate_limited")
        assert sorted((await snapshot(server, "c-rate"))["tokens"]) == ["t0", "t1", "t2"]


# --- oversize frames -----------------------------------------------------------------------------


def padded(size: int) -> str:
    """A valid token.add frame of exactly `size` bytes, padded by an invented field."""
    base = {"type": "token.add", "payload": token_payload("big"), "pad": ""}
    return json.dumps({**base, "pad": "x" * (size - len(json.dumps(base)))})


async def assert_oversize_closes_1009(server: RunningServer, data: str | bytes) -> None:
    campaign = new_campaign()
    watcher = await join(server, campaign, "watcher", "gm")
    sender = await join(server, campaign, "sender", "gm")
    before = await snapshot(server, campaign)
    await sender.send_raw(data)
    code, _ = await sender.closed()
    assert code == 1009
    assert await news(watcher) == []
    assert await snapshot(server, campaign) == before


async def test_a_frame_over_a_configured_4096_byte_limit_closes_1009(tmp_path: Path) -> None:
    limits = Limits(max_frame_bytes=4096)
    async with serve(settings_for(tmp_path, limits=limits)) as server:
        await assert_oversize_closes_1009(server, padded(4097))
        await assert_oversize_closes_1009(server, "é" * 2049)
        await assert_oversize_closes_1009(server, padded(4097).encode())


async def test_a_frame_of_exactly_the_configured_limit_is_accepted(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, limits=Limits(max_frame_bytes=4096))) as server:
        gm = await join(server, new_campaign(), "gm-ada", "gm")
        frames = await act_raw(gm, padded(4096))
        assert types(frames) == ["token.add"]
        assert "pad" not in gm.raw[-2]


async def test_a_600_kib_frame_closes_1009_under_the_default_512_kib_limit(
    shared: RunningServer,
) -> None:
    await assert_oversize_closes_1009(shared, padded(600 * 1024))


async def test_the_frame_limit_holds_when_uvicorn_itself_allows_16_mib_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain_options = harness.uvicorn_options

    def as_plain_uvicorn_launches(settings: Any) -> dict[str, Any]:
        options = plain_options(settings)
        del options["ws_max_size"]
        return options

    monkeypatch.setattr(harness, "uvicorn_options", as_plain_uvicorn_launches)
    async with serve(settings_for(tmp_path)) as server:
        await assert_oversize_closes_1009(server, padded(600 * 1024))
        await assert_oversize_closes_1009(server, padded(600 * 1024).encode())
        await assert_oversize_closes_1009(server, "é" * (300 * 1024))


# --- envelope: stamping, invented fields, seq ----------------------------------------------------


async def test_the_server_stamps_user_id_and_campaign_id_whatever_the_client_claims(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    elsewhere = await join(shared, new_campaign(), "gm-ada", "gm")
    forged = {"user_id": "gm-ada", "campaign_id": "c-elsewhere"}
    mine = await act(player, "token.add", token_payload("t1", owner_id="gm-ada"), **forged)
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert (frames[0]["user_id"], frames[0]["campaign_id"]) == ("pl-bo", campaign)
        assert frames[0]["payload"]["owner_id"] == "pl-bo"
    assert await news(elsewhere) == []
    await player.send("ping", **forged)
    assert (await prompted(player))["user_id"] == "pl-bo"
    only_error(await act(player, "scene.darkness", {"darkness_level": 1}, **forged), "forbidden")


INVENTED: list[tuple[str, dict[str, Any]]] = [
    ("token.add", {**token_payload("t2"), "x_invented": "MARK"}),
    ("token.move", {"token_id": "t1", "x": 1, "y": 2, "x_invented": "MARK"}),
    ("token.update", {"token_id": "t1", "name": "n", "x_invented": "MARK", "owner": "MARK"}),
    ("token.remove", {"token_id": "t1", "x_invented": "MARK"}),
    ("fog.update", {"zones": [{**ZONE, "x_invented": "MARK"}], "x_invented": "MARK"}),
    (
        "map.set",
        map_payload(
            "m2",
            x_invented="MARK",
            map_metadata={
                "x_invented": "MARK",
                "walls": [[{"x": 0, "y": 0, "x_invented": "MARK"}]],
                "lights": [{"range": 2, "x_invented": "MARK"}],
                "environment": {"baked_lighting": True, "x_invented": "MARK"},
            },
        ),
    ),
    ("map.switch", {"map_id": "m1", "x_invented": "MARK"}),
    ("map.rename", {"map_id": "m1", "new_name": "n", "x_invented": "MARK"}),
    ("map.delete", {"map_id": "m0", "x_invented": "MARK"}),
    ("scene.darkness", {"darkness_level": 0.5, "x_invented": "MARK"}),
]


@pytest.mark.parametrize(("kind", "payload"), INVENTED, ids=[k for k, _ in INVENTED])
async def test_fields_a_client_invents_are_never_relayed_nor_stored(
    shared: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m0"))
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    frames = await act(gm, kind, payload, x_envelope="MARK")
    assert frames, kind
    assert "error" not in types(frames)
    await news(player)
    for peer in (gm, player):
        assert not [raw for raw in peer.raw if "MARK" in raw or "x_invented" in raw]
    stored = json.dumps(await snapshot(shared, campaign))
    assert "MARK" not in stored
    assert "x_invented" not in stored


async def test_seq_rises_by_one_per_broadcast_and_state_sync_carries_seq_and_epoch(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    epoch = gm.sync["payload"]["epoch"]
    script: list[tuple[Peer, str, dict[str, Any]]] = [
        (gm, "token.add", token_payload("t1")),
        (player, "token.move", {"token_id": "t1", "x": 1, "y": 1}),
        (gm, "map.set", map_payload("m1")),
        (gm, "token.add", token_payload("t2")),
        (gm, "map.set", map_payload("m2")),
        (gm, "map.switch", {"map_id": "m1"}),
        (gm, "map.rename", {"map_id": "m2", "new_name": "Two"}),
        (gm, "map.delete", {"map_id": "m2"}),
        (player, "token.update", {"token_id": "t2", "name": "x"}),
        (gm, "fog.update", {"zones": []}),
        (gm, "scene.darkness", {"darkness_level": 0.1}),
        (player, "token.remove", {"token_id": "t2"}),
    ]
    for peer, kind, payload in script:
        assert "error" not in types(await act(peer, kind, payload)), kind
    await news(gm)
    await news(player)
    for peer in (gm, player):
        numbered = [frame for frame in peer.received[2:] if "seq" in frame]
        assert [frame["seq"] for frame in numbered] == list(range(1, len(numbered) + 1))
        for frame in numbered:
            if frame["type"] == "state.sync":
                assert frame["payload"]["seq"] == frame["seq"]
                assert frame["payload"]["epoch"] == epoch
    last = max(frame.get("seq", 0) for frame in gm.received)
    assert last == 15
    fresh = await shared.join(campaign, "late", "player")
    assert fresh.sync["seq"] == fresh.sync["payload"]["seq"] == last
    assert fresh.sync["payload"]["epoch"] == epoch
    assert "seq" not in fresh.received[1]


async def test_refusals_pongs_and_errors_take_no_seq(shared: RunningServer) -> None:
    gm, player, _ = await table(shared)
    first = await act(gm, "token.add", token_payload("t1"))
    await news(player)
    only_error(await act(player, "scene.darkness", {"darkness_level": 1}), "forbidden")
    only_error(await act_raw(gm, "{"), "invalid_json")
    only_error(await act(gm, "token.remove", {"token_id": "nope"}), "not_found")
    second = await act(gm, "token.remove", {"token_id": "t1"})
    assert [first[0]["seq"], second[0]["seq"]] == [1, 2]
    assert all("seq" not in frame for frame in gm.received if frame["type"] in {"pong", "error"})


async def test_a_burst_of_moves_reaches_every_client_in_seq_order_with_no_gap(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await act(gm, "token.add", token_payload("t2"))
    await news(player)
    burst = [
        json.dumps({"type": "token.move", "payload": {"token_id": f"t{1 + i % 2}", "x": i, "y": 0}})
        for i in range(60)
    ]
    for data in burst:
        await gm.send_raw(data)
    for peer in (gm, player):
        moves = [frame for frame in await news(peer) if frame["type"] == "token.move"]
        assert [frame["seq"] for frame in moves] == list(range(3, 63))


async def open_slow_peer(server: RunningServer, campaign: str, user: str) -> Peer:
    """A player whose socket takes frames slowly: a tiny receive buffer, a one-frame queue."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
    peer = await Peer.open(server.ws_url(campaign, server.token(user)), sock=sock, max_queue=1)
    peer.sync = await peer.expect("state.sync")
    await peer.expect("map.list")
    return peer


async def test_a_slow_client_still_receives_broadcasts_in_seq_order(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_per_second=10_000, rate_burst=10_000)
    async with serve(settings) as server:
        gm = await join(server, "c-slow", "gm-ada", "gm")
        slow = await open_slow_peer(server, "c-slow", "pl-slow")
        await act(gm, "token.add", token_payload("t1"))
        await act(gm, "token.add", token_payload("t2"))
        session = server.services.manager.sessions["c-slow"]
        (client,) = [m for m in session.members if m.actor.user_id == "pl-slow"]
        fog = {"zones": [{**ZONE, "x": index} for index in range(3000)]}
        # Large frames fill the slow socket until the server must queue for it; whether it
        # does is visible only inside the server, hence the look at the client's outbox.
        async with asyncio.timeout(TIMEOUT * 3):
            while not client.queued:
                await act(gm, "fog.update", fog)
        for index, token_id in enumerate(["t1", "t2", "t1", "t2", "t1"]):
            await gm.send("token.move", {"token_id": token_id, "x": index, "y": 0})
        await news(gm)
        await slow.roundtrip()
        assert Mirror.of(slow.received).state == await snapshot(server, "c-slow", "player")
        seqs = [frame["seq"] for frame in slow.received[1:] if "seq" in frame]
        assert seqs == sorted(set(seqs)), f"seqs out of order: {seqs[-8:]}"


# --- handshake -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "campaign=",
        "campaign=" + "c" * 129,
        "campaign=" + quote("a b"),
        "campaign=a.b",
        "campaign=" + quote("a/b"),
        "campaign=" + quote("ü"),
        "campaign=" + quote("c1\n"),
        "campaign_id=c1",
    ],
    ids=["none", "empty", "129 chars", "space", "dot", "slash", "non-ascii", "newline", "misnamed"],
)
async def test_a_missing_or_malformed_campaign_closes_4400_before_anything_is_sent(
    shared: RunningServer, query: str
) -> None:
    token = shared.token("pl-bo")
    peer = await Peer.open(ws_url(shared, f"{query}&token={token}"))
    assert await refusal(peer) == 4400


async def test_a_campaign_of_128_allowed_characters_is_accepted(shared: RunningServer) -> None:
    campaign = ("Az09_-" * 22)[:128]
    peer = await shared.join(campaign, "pl-bo")
    assert peer.sync["campaign_id"] == campaign


def foreign_token(shared: RunningServer, tmp_path: Path, **claims: Any) -> str:
    """A token signed by another key pair that claims the server's key id."""
    other = DevKeys(tmp_path / "other-keys")
    other.kid = shared.keys.kid
    return other.mint("pl-bo", "player", extra=claims)


def hs256_token(shared: RunningServer) -> str:
    """A token signed with HMAC instead of RS256."""
    now = int(time.time())
    claims = {"sub": "pl-bo", "exp": now + 600, "iat": now, "role": "player"}
    return str(jwt.encode(claims, "secret", algorithm="HS256", headers={"kid": shared.keys.kid}))


@pytest.mark.parametrize(
    "make",
    [
        lambda s, p: "",
        lambda s, p: "garbage",
        lambda s, p: "a.b.c",
        lambda s, p: s.token("pl-bo", ttl=-100),
        lambda s, p: s.token("pl-bo", extra={"nbf": int(time.time()) + 3600}),
        lambda s, p: s.token("pl-bo", extra={"iss": "https://someone-else.example"}),
        lambda s, p: foreign_token(s, p),
        lambda s, p: hs256_token(s),
        lambda s, p: s.token("pl-bo")[:-8] + "AAAAAAAA",
    ],
    ids=[
        "missing",
        "garbage",
        "unreadable",
        "expired",
        "not yet valid",
        "wrong issuer",
        "another key",
        "HS256",
        "tampered signature",
    ],
)
async def test_a_missing_garbage_or_invalid_token_closes_4401_before_anything_is_sent(
    shared: RunningServer, tmp_path: Path, make: Any
) -> None:
    token = make(shared, tmp_path)
    query = f"campaign={new_campaign()}" + (f"&token={token}" if token else "")
    peer = await Peer.open(ws_url(shared, query))
    assert await refusal(peer) == 4401


async def test_a_token_in_an_authorization_bearer_header_is_accepted(
    shared: RunningServer,
) -> None:
    headers = {"Authorization": f"Bearer {shared.token('pl-bo')}"}
    peer = await Peer.open(ws_url(shared, f"campaign={new_campaign()}"), additional_headers=headers)
    assert (await peer.expect("state.sync"))["user_id"] == "pl-bo"


async def test_a_garbage_authorization_bearer_header_closes_4401(shared: RunningServer) -> None:
    headers = {"Authorization": "Bearer not-a-jwt"}
    peer = await Peer.open(ws_url(shared, f"campaign={new_campaign()}"), additional_headers=headers)
    assert (await peer.closed())[0] == 4401


# --- /health -------------------------------------------------------------------------------------


async def test_health_reports_counts_of_sessions_and_clients_and_never_an_id(
    server: RunningServer,
) -> None:
    await server.join("c-health-one", "user-alpha", "gm")
    await server.join("c-health-one", "user-beta")
    await server.join("c-health-two", "user-gamma")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{server.http}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "sessions": 2, "clients": 3}
    for secret in ("c-health", "user-"):
        assert secret not in response.text


# --- every code ----------------------------------------------------------------------------------


async def test_every_error_code_but_internal_is_reachable_from_a_client(tmp_path: Path) -> None:
    limits = Limits(max_tokens=1)
    settings = settings_for(tmp_path, limits=limits, rate_per_second=0.1, rate_burst=14)
    async with serve(settings) as server:
        gm = await server.join("c-codes", "gm-ada", "gm")
        player = await server.join("c-codes", "pl-bo")
        await gm.send("map.set", map_payload("m1"))
        await gm.send("token.add", token_payload("t1"))
        provocations: list[tuple[Peer, str | bytes]] = [
            (gm, "{"),
            (gm, "[]"),
            (gm, '{"type": "nope"}'),
            (gm, '{"type": "token.move", "payload": {}}'),
            (player, '{"type": "scene.darkness", "payload": {"darkness_level": 1}}'),
            (gm, '{"type": "token.remove", "payload": {"token_id": "t9"}}'),
            (gm, '{"type": "map.delete", "payload": {"map_id": "m1"}}'),
            (gm, json.dumps({"type": "token.add", "payload": token_payload("t2")})),
        ]
        for peer, data in provocations:
            await peer.send_raw(data)
        # The GM has sent 9 messages; 6 pings more go past its burst of 14.
        for _ in range(6):
            await gm.send("ping")
        await gm.until(lambda f: f["type"] == "error" and f["payload"]["code"] == "rate_limited")
        await player.until(lambda f: f["type"] == "error")
        seen = {f["payload"]["code"] for f in gm.received + player.received if f["type"] == "error"}
        assert seen == set(ERROR_CODES) - {"internal"}
