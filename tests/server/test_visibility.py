"""Players see only what they may, on every path that sends state, against a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import Limits
from app.protocol import Frame, encode_frame
from tests.support.harness import (
    Peer,
    RunningServer,
    map_payload,
    serve,
    settings_for,
    token_payload,
    without,
)
from tests.support.table import frames_before_pong

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "go-vtt-sessions-state.json"
# Token ids are unique and never substrings of anything else a frame carries, so that a
# search of the raw text for one finds that token and nothing else.
AMBUSH = "tok-ambush-q7x"
LURKER = "tok-lurker-z9m"
GUARD = "tok-guard-k2v"
TORCH = "tok-torch-w4p"
NOBODY = "tok-nobody-b3n"


def mentions(peer: Peer, text: str) -> list[str]:
    """Every raw frame the peer received that contains `text`."""
    return [raw for raw in peer.raw if text in raw]


async def table_of(server: RunningServer, campaign: str) -> tuple[Peer, Peer, Peer]:
    """A GM and two players joined to `campaign`."""
    gm = await server.join(campaign, "gm-ann", "gm")
    first = await server.join(campaign, "pl-bob")
    second = await server.join(campaign, "pl-cat")
    return gm, first, second


# --- state.sync on connect --------------------------------------------------------------------


async def test_a_joining_player_gets_no_hidden_tokens_and_no_saved_maps_key(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm-ann", "gm")
    await gm.request("map.set", map_payload("map-one"))
    await gm.request("token.add", token_payload(AMBUSH, visible=False))
    await gm.request("map.set", map_payload("map-two"))
    await gm.request("token.add", token_payload(LURKER, visible=False))
    await gm.request("token.add", token_payload(GUARD))
    player = await server.join("c1", "pl-bob")
    payload = player.sync["payload"]
    assert set(payload["tokens"]) == {GUARD}
    assert "saved_maps" not in payload
    assert mentions(player, AMBUSH) == []
    assert mentions(player, LURKER) == []


async def test_a_joining_gm_gets_every_token_and_the_whole_library(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm-ann", "gm")
    await gm.request("map.set", map_payload("map-one"))
    await gm.request("token.add", token_payload(AMBUSH, visible=False))
    await gm.request("map.set", map_payload("map-two"))
    await gm.request("token.add", token_payload(LURKER, visible=False))
    await gm.request("token.add", token_payload(GUARD))
    other_gm = await server.join("c1", "gm-dan", "gm")
    payload = other_gm.sync["payload"]
    assert set(payload["tokens"]) == {LURKER, GUARD}
    assert set(payload["saved_maps"]["map-one"]["tokens"]) == {AMBUSH}


async def test_a_player_joining_a_stored_go_state_sees_neither_hidden_nor_stored_tokens(
    server: RunningServer,
) -> None:
    await server.services.store.save_many([("c-fixture", FIXTURE.read_bytes())])
    player = await server.join("c-fixture", "pl-bob")
    payload = player.sync["payload"]
    assert set(payload["tokens"]) == {"tok-barkeep"}
    assert "saved_maps" not in payload
    for stored in ("tok-ghoul", "tok-hero"):
        assert mentions(player, stored) == []
    gm = await server.join("c-fixture", "gm-ann", "gm")
    assert set(gm.sync["payload"]["saved_maps"]["map-crypt"]["tokens"]) == {
        "tok-ghoul",
        "tok-hero",
    }


async def test_switching_to_a_stored_go_map_shows_players_its_visible_tokens_only(
    server: RunningServer,
) -> None:
    await server.services.store.save_many([("c-fixture", FIXTURE.read_bytes())])
    gm = await server.join("c-fixture", "gm-ann", "gm")
    player = await server.join("c-fixture", "pl-bob")
    await gm.send("map.switch", {"map_id": "map-crypt"})
    assert set((await gm.expect("state.sync"))["payload"]["tokens"]) == {"tok-ghoul", "tok-hero"}
    synced = await player.expect("state.sync")
    assert set(synced["payload"]["tokens"]) == {"tok-hero"}
    assert "saved_maps" not in synced["payload"]
    await player.expect("map.list")
    assert mentions(player, "tok-ghoul") == []


# --- state.sync after map.switch and after map.set of a known map ------------------------------


async def build_two_maps(gm: Peer) -> None:
    """map-one holds AMBUSH (hidden) and GUARD; map-two, active, holds LURKER (hidden), TORCH."""
    await gm.request("map.set", map_payload("map-one"))
    await gm.request("token.add", token_payload(AMBUSH, visible=False))
    await gm.request("token.add", token_payload(GUARD))
    await gm.request("map.set", map_payload("map-two"))
    await gm.request("token.add", token_payload(LURKER, visible=False))
    await gm.request("token.add", token_payload(TORCH))


async def test_after_a_map_switch_players_get_a_state_sync_without_the_maps_hidden_tokens(
    server: RunningServer,
) -> None:
    gm, first, second = await table_of(server, "c1")
    await build_two_maps(gm)
    await gm.send("map.switch", {"map_id": "map-one"})
    gm_sync = await gm.expect("state.sync")
    assert set(gm_sync["payload"]["tokens"]) == {AMBUSH, GUARD}
    assert set(gm_sync["payload"]["saved_maps"]["map-two"]["tokens"]) == {LURKER, TORCH}
    for player in (first, second):
        synced = await player.until(lambda f: f["type"] == "state.sync")
        assert set(synced["payload"]["tokens"]) == {GUARD}
        assert "saved_maps" not in synced["payload"]
        await player.expect("map.list")
        assert mentions(player, AMBUSH) == []
        assert mentions(player, LURKER) == []


async def test_after_a_map_set_of_a_known_map_players_get_a_state_sync_without_hidden_tokens(
    server: RunningServer,
) -> None:
    gm, first, second = await table_of(server, "c1")
    await build_two_maps(gm)
    await gm.send("map.set", map_payload("map-one", image_url="https://cdn.example/redrawn.webp"))
    gm_sync = await gm.expect("state.sync")
    assert set(gm_sync["payload"]["tokens"]) == {AMBUSH, GUARD}
    assert gm_sync["payload"]["map_url"] == "https://cdn.example/redrawn.webp"
    for player in (first, second):
        synced = await player.until(lambda f: f["type"] == "state.sync")
        assert set(synced["payload"]["tokens"]) == {GUARD}
        assert "saved_maps" not in synced["payload"]
        assert synced["payload"]["map_url"] == "https://cdn.example/redrawn.webp"
        await player.expect("map.list")
        assert mentions(player, AMBUSH) == []
        assert mentions(player, LURKER) == []


async def test_a_map_set_of_the_active_map_resyncs_players_without_its_hidden_tokens(
    server: RunningServer,
) -> None:
    gm, player, _ = await table_of(server, "c1")
    await build_two_maps(gm)
    await gm.send("map.set", map_payload("map-two", grid_size=32))
    assert set((await gm.expect("state.sync"))["payload"]["tokens"]) == {LURKER, TORCH}
    synced = await player.until(lambda f: f["type"] == "state.sync")
    assert set(synced["payload"]["tokens"]) == {TORCH}
    assert mentions(player, LURKER) == []


# --- live token events ------------------------------------------------------------------------


async def test_players_receive_nothing_about_a_hidden_tokens_add_move_update_and_remove(
    server: RunningServer,
) -> None:
    gm, first, second = await table_of(server, "c1")
    steps: list[tuple[str, dict[str, Any]]] = [
        ("token.add", token_payload(AMBUSH, visible=False)),
        ("token.move", {"token_id": AMBUSH, "x": 5, "y": 6}),
        ("token.update", {"token_id": AMBUSH, "name": "Bandit chief", "width": 2}),
        ("token.remove", {"token_id": AMBUSH}),
    ]
    for kind, payload in steps:
        echoed = await gm.request(kind, payload)
        assert echoed["type"] == kind
        for player in (first, second):
            assert await frames_before_pong(player) == []
    assert mentions(first, AMBUSH) == []
    assert mentions(second, AMBUSH) == []


async def test_players_see_a_visible_tokens_events_as_the_gm_does(
    server: RunningServer,
) -> None:
    gm, first, _ = await table_of(server, "c1")
    steps: list[tuple[str, dict[str, Any]]] = [
        ("token.add", token_payload(GUARD)),
        ("token.move", {"token_id": GUARD, "x": 5, "y": 6}),
        ("token.update", {"token_id": GUARD, "name": "Guard captain"}),
        ("token.remove", {"token_id": GUARD}),
    ]
    for kind, payload in steps:
        echoed = await gm.request(kind, payload)
        assert await frames_before_pong(first) == [echoed]


async def test_hiding_a_token_sends_players_only_a_token_remove_with_its_id(
    server: RunningServer,
) -> None:
    gm, first, second = await table_of(server, "c1")
    await gm.request("token.add", token_payload(GUARD))
    for player in (first, second):
        await player.expect("token.add")
    hidden = await gm.request(
        "token.update", {"token_id": GUARD, "visible": False, "name": "Secret name"}
    )
    assert hidden["payload"] == {"token_id": GUARD, "visible": False, "name": "Secret name"}
    for player in (first, second):
        received = await frames_before_pong(player)
        assert [(f["type"], f["payload"], f["seq"]) for f in received] == [
            ("token.remove", {"token_id": GUARD}, hidden["seq"])
        ]
        assert mentions(player, "Secret name") == []


async def test_a_gm_re_adding_a_visible_token_as_hidden_sends_players_a_token_remove(
    server: RunningServer,
) -> None:
    gm, player, _ = await table_of(server, "c1")
    await gm.request("token.add", token_payload(GUARD))
    await player.expect("token.add")
    await gm.request("token.add", token_payload(GUARD, visible=False, name="Secret name"))
    received = await frames_before_pong(player)
    assert [(f["type"], f["payload"]) for f in received] == [("token.remove", {"token_id": GUARD})]
    assert mentions(player, "Secret name") == []


async def test_revealing_a_token_sends_players_a_token_add_with_the_whole_token(
    server: RunningServer,
) -> None:
    gm, first, second = await table_of(server, "c1")
    hidden = token_payload(
        AMBUSH,
        visible=False,
        x=30,
        y=40,
        width=2,
        height=3,
        character_id="char-7",
        image_url="https://cdn.example/tokens/bandit.png",
    )
    await gm.request("token.add", hidden)
    await gm.request("token.move", {"token_id": AMBUSH, "x": 31, "y": 41})
    revealed = await gm.request("token.update", {"token_id": AMBUSH, "visible": True})
    expected = without(hidden, "x", "y") | {"x": 31, "y": 41, "visible": True}
    expected |= {"owner_id": "gm-ann"}
    for player in (first, second):
        received = await frames_before_pong(player)
        assert [(f["type"], f["seq"]) for f in received] == [("token.add", revealed["seq"])]
        assert received[0]["payload"] == expected


async def test_a_gm_re_adding_a_hidden_token_as_visible_sends_players_a_token_add(
    server: RunningServer,
) -> None:
    gm, player, _ = await table_of(server, "c1")
    await gm.request("token.add", token_payload(AMBUSH, visible=False))
    added = await gm.request("token.add", token_payload(AMBUSH, name="Bandit"))
    received = await frames_before_pong(player)
    assert received == [added]


# --- map.list ---------------------------------------------------------------------------------


async def test_players_get_every_map_list_and_none_carries_tokens(
    server: RunningServer,
) -> None:
    gm, player, _ = await table_of(server, "c1")
    await build_two_maps(gm)
    for kind, payload in [
        ("map.rename", {"map_id": "map-one", "new_name": "Cellar"}),
        ("map.switch", {"map_id": "map-one"}),
        ("map.delete", {"map_id": "map-two"}),
    ]:
        await gm.send(kind, payload)
        await gm.until(lambda f: f["type"] == "map.list")
    await player.roundtrip()
    listed = [f for f in player.received if f["type"] == "map.list"]
    gm_listed = [f for f in gm.received if f["type"] == "map.list"]
    assert [f["payload"] for f in listed] == [f["payload"] for f in gm_listed]
    assert len(listed) == 6
    for frame in listed:
        assert set(frame["payload"]) <= {"maps", "active_map_id"}
        for entry in frame["payload"]["maps"]:
            assert set(entry) == {"map_id", "name", "image_url"}
    for token_id in (AMBUSH, LURKER):
        assert [raw for raw in mentions(player, token_id) if '"map.list"' in raw] == []


# --- resume -----------------------------------------------------------------------------------


async def test_a_players_resume_replay_carries_none_of_a_hidden_tokens_events(
    server: RunningServer,
) -> None:
    gm, live, leaving = await table_of(server, "c1")
    since = leaving.sync["seq"]
    epoch = leaving.sync["payload"]["epoch"]
    await leaving.close()
    steps: list[tuple[str, dict[str, Any]]] = [
        ("token.add", token_payload(LURKER, visible=False)),
        ("token.add", token_payload(GUARD)),
        ("token.move", {"token_id": GUARD, "x": 1, "y": 1}),
        ("token.move", {"token_id": LURKER, "x": 2, "y": 2}),
        ("token.update", {"token_id": GUARD, "name": "Guard captain"}),
        ("token.update", {"token_id": LURKER, "name": "Lurker chief"}),
        ("token.move", {"token_id": GUARD, "x": 3, "y": 3}),
        ("token.add", token_payload(AMBUSH, visible=False)),
        ("token.update", {"token_id": GUARD, "visible": False}),
        ("token.remove", {"token_id": LURKER}),
        ("token.update", {"token_id": AMBUSH, "visible": True}),
        ("fog.update", {"zones": [{"x": 0, "y": 0, "w": 5, "h": 5, "visible": False}]}),
    ]
    for kind, payload in steps:
        await gm.request(kind, payload)
    live_frames = await frames_before_pong(live)
    url = server.ws_url("c1", server.token("pl-cat"), since=since, epoch=epoch)
    back = await Peer.open(url)
    marker = await back.expect("state.resume")
    assert marker["payload"]["from_seq"] == since + 1
    replay = await frames_before_pong(back)
    assert replay == live_frames
    assert [f["type"] for f in replay] == [
        "token.add",
        "token.move",
        "token.update",
        "token.move",
        "token.remove",
        "token.add",
        "fog.update",
    ]
    assert mentions(back, LURKER) == []


async def test_a_gms_resume_replay_carries_the_hidden_tokens_events(
    server: RunningServer,
) -> None:
    gm, _, _ = await table_of(server, "c1")
    leaving = await server.join("c1", "gm-dan", "gm")
    since = leaving.sync["seq"]
    epoch = leaving.sync["payload"]["epoch"]
    await leaving.close()
    await gm.request("token.add", token_payload(LURKER, visible=False))
    await gm.request("token.move", {"token_id": LURKER, "x": 2, "y": 2})
    url = server.ws_url("c1", server.token("gm-dan", "gm"), since=since, epoch=epoch)
    back = await Peer.open(url)
    await back.expect("state.resume")
    replay = await frames_before_pong(back)
    assert [(f["type"], f["payload"]["token_id"]) for f in replay] == [
        ("token.add", LURKER),
        ("token.move", LURKER),
    ]


# --- addressing a hidden token ----------------------------------------------------------------


def normalised(frame: dict[str, Any], token_id: str) -> dict[str, Any]:
    """An error reply with the token id the sender named replaced by a placeholder."""
    payload = frame["payload"]
    return {"code": payload["code"], "message": payload["message"].replace(token_id, "<id>")}


@pytest.mark.parametrize("policy", ["open", "owner"])
@pytest.mark.parametrize(
    "request_for",
    [
        lambda tid: ("token.move", {"token_id": tid, "x": 1, "y": 1}),
        lambda tid: ("token.update", {"token_id": tid, "name": "Mine now"}),
        lambda tid: ("token.update", {"token_id": tid, "visible": True}),
        lambda tid: ("token.update", {"token_id": tid, "owner_id": "pl-bob"}),
        lambda tid: ("token.remove", {"token_id": tid}),
    ],
    ids=["move", "update", "reveal", "take-ownership", "remove"],
)
async def test_a_player_addressing_a_hidden_token_gets_not_found_as_for_a_missing_one(
    tmp_path: Path,
    policy: str,
    request_for: Callable[[str], tuple[str, dict[str, Any]]],
) -> None:
    async with serve(settings_for(tmp_path, token_policy=policy)) as server:
        gm, player, other = await table_of(server, "c1")
        await gm.request("token.add", token_payload(AMBUSH, visible=False))
        answers = []
        for token_id in (AMBUSH, NOBODY):
            kind, payload = request_for(token_id)
            answer = await player.request(kind, payload)
            assert answer["type"] == "error"
            assert answer["payload"]["code"] == "not_found"
            assert set(answer) == {"type", "campaign_id", "user_id", "payload"}
            answers.append(normalised(answer, token_id))
        assert answers[0] == answers[1]
        assert await frames_before_pong(other) == []
        assert [f["type"] for f in await frames_before_pong(gm)] == []


# --- encode once per audience -----------------------------------------------------------------


async def test_each_broadcast_is_encoded_once_per_audience_never_per_client(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    gms = [await server.join("c1", f"gm-{n}", "gm") for n in range(3)]
    players = [await server.join("c1", f"pl-{n}") for n in range(10)]
    everyone = gms + players
    await gms[0].request("map.set", map_payload("map-one"))
    await gms[0].request("map.set", map_payload("map-two"))
    await gms[0].request("token.add", token_payload(GUARD))
    await gms[0].request("token.add", token_payload(AMBUSH, visible=False))
    for peer in everyone:
        await peer.roundtrip()
    encoded: list[Frame] = []

    def counting(frame: Frame) -> bytes:
        encoded.append(frame)
        return encode_frame(frame)

    monkeypatch.setattr("app.session.encode_frame", counting)

    async def broadcast(kind: str, payload: dict[str, Any], answer: str) -> int:
        encoded.clear()
        await gms[0].send(kind, payload)
        echoed = await gms[0].until(lambda f: f["type"] in {answer, "error"})
        assert echoed["type"] == answer
        for peer in everyone:
            await peer.roundtrip()
        return sum(1 for frame in encoded if frame.seq == echoed["seq"])

    move = {"token_id": GUARD, "x": 9, "y": 9}
    assert await broadcast("token.move", move, "token.move") == 1
    hidden_move = {"token_id": AMBUSH, "x": 9, "y": 9}
    assert await broadcast("token.move", hidden_move, "token.move") == 1
    hide = {"token_id": GUARD, "visible": False}
    assert await broadcast("token.update", hide, "token.update") == 2
    fog = {"zones": [{"x": 0, "y": 0, "w": 1, "h": 1, "visible": True}]}
    assert await broadcast("fog.update", fog, "fog.update") == 1
    assert await broadcast("map.switch", {"map_id": "map-one"}, "state.sync") == 2


# --- image URL prefixes -----------------------------------------------------------------------

PREFIXED = Limits(image_url_prefixes=("https://cdn.example/",))
OUTSIDE = [
    "https://evil.example/track.png",
    "https://cdn.example.evil.test/x.png",
    "http://cdn.example/x.png",
    "/relative/x.png",
]


@pytest.mark.parametrize("url", OUTSIDE)
async def test_an_image_url_outside_the_prefixes_is_invalid_payload_everywhere(
    tmp_path: Path, url: str
) -> None:
    async with serve(settings_for(tmp_path, limits=PREFIXED)) as server:
        gm, player, other = await table_of(server, "c1")
        await gm.request("token.add", token_payload(GUARD))
        await player.expect("token.add")
        await other.expect("token.add")
        for sender in (gm, player):
            refused = await sender.request("token.add", token_payload(TORCH, image_url=url))
            assert refused["payload"]["code"] == "invalid_payload"
            update = {"token_id": GUARD, "image_url": url}
            refused = await sender.request("token.update", update)
            assert refused["payload"]["code"] == "invalid_payload"
        refused = await gm.request("map.set", map_payload("map-one", image_url=url))
        assert refused["payload"]["code"] == "invalid_payload"
        assert await frames_before_pong(other) == []
        assert mentions(other, url) == []
        check = await server.join("c1", "gm-dan", "gm")
        assert set(check.sync["payload"]["tokens"]) == {GUARD}
        assert "image_url" not in check.sync["payload"]["tokens"][GUARD]
        assert "map_id" not in check.sync["payload"]


async def test_an_image_url_inside_the_prefixes_is_accepted_everywhere(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, limits=PREFIXED)) as server:
        gm, player, _ = await table_of(server, "c1")
        url = "https://cdn.example/tokens/ok.png"
        added = await player.request("token.add", token_payload(GUARD, image_url=url))
        assert added["payload"]["image_url"] == url
        updated = await player.request("token.update", {"token_id": GUARD, "image_url": url})
        assert updated["type"] == "token.update"
        added = await gm.request("token.add", token_payload(TORCH, image_url=url))
        assert added["type"] == "token.add"
        map_set = await gm.request("map.set", map_payload("map-one"))
        assert map_set["payload"]["image_url"] == "https://cdn.example/maps/map-one.webp"
        plain = await gm.request("token.add", token_payload(AMBUSH))
        assert plain["type"] == "token.add"


async def test_without_prefixes_any_valid_image_url_is_accepted(server: RunningServer) -> None:
    gm = await server.join("c1", "gm-ann", "gm")
    added = await gm.request(
        "token.add", token_payload(GUARD, image_url="https://elsewhere.example/x.png")
    )
    assert added["type"] == "token.add"
