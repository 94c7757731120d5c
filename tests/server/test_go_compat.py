"""What a Go-era client relies on, against a real server: the fields the Go service always sent
are always sent, and the lenient input its frontend sends is read as the Go service read it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.harness import (
    Peer,
    RunningServer,
    map_payload,
    serve,
    settings_for,
    token_payload,
)

pytestmark = pytest.mark.anyio

# docs/PROTOCOL.md "Fields always present": message type -> payload fields in every such frame.
# chat.message's payload and each chat.history entry, as Go's ChatMessagePayload always sent.
CHAT_MESSAGE = {
    "id",
    "campaign_id",
    "user_id",
    "message_type",
    "content",
    "gm_only",
    "created_at",
}
ALWAYS: dict[str, set[str]] = {
    "state.sync": {
        "campaign_id",
        "grid_size",
        "map_width",
        "map_height",
        "darkness_level",
        "tokens",
        "fog_zones",
        "seq",
        "epoch",
    },
    "map.list": {"maps", "active_map_id"},
    "token.add": {"token_id", "name", "x", "y", "width", "height", "visible", "owner_id"},
    "token.move": {"token_id", "x", "y"},
    "token.remove": {"token_id"},
    "token.update": {"token_id"},
    "fog.update": {"zones"},
    "map.set": {"map_id", "image_url", "grid_size", "width", "height", "name"},
    "scene.darkness": {"darkness_level"},
    "pong": set(),
    "error": {"code", "message"},
    "state.saved": {"seq"},
    "chat.history": {"messages"},
    "chat.message": CHAT_MESSAGE,
}
TOKEN = {"token_id", "name", "x", "y", "width", "height", "visible"}
ZONE = {"x", "y", "w", "h", "visible"}
SAVED_MAP = {"name", "image_url", "grid_size", "width", "height", "tokens", "fog_zones"}
MAP_ENTRY = {"map_id", "name", "image_url"}
PORTAL = {"position", "bounds", "rotation", "closed", "freestanding"}
LIGHT = {"position", "range", "intensity", "color", "shadows"}
ENVIRONMENT = {"baked_lighting", "ambient_light"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the module, so one server can serve every test."""
    return "asyncio"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A default server that flushes often (so state.saved frames come); one campaign a test."""
    settings = settings_for(tmp_path_factory.mktemp("go-compat"), flush_interval=0.05)
    async with serve(settings) as running:
        yield running


async def table(server: RunningServer) -> tuple[Peer, Peer]:
    """A GM and a player at a fresh campaign."""
    campaign = f"c-{uuid.uuid4().hex[:12]}"
    return await server.join(campaign, "gm-ada", "gm"), await server.join(campaign, "pl-bo")


async def echo(sender: Peer, others: list[Peer], kind: str, payload: Any) -> list[dict[str, Any]]:
    """Send one message; the frame of `kind` the sender and each of `others` received for it."""
    frames = [await sender.request(kind, payload)]
    for other in others:
        frames.append(await other.until(lambda f: f["type"] in {kind, "error"}))
    return frames


# --- fields always present ----------------------------------------------------------------------


async def test_a_fresh_campaigns_map_list_carries_an_empty_active_map_id(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    for peer in (gm, player):
        listing = next(f for f in peer.received if f["type"] == "map.list")
        assert listing["payload"] == {"maps": [], "active_map_id": ""}
    await gm.close()
    await player.close()


async def test_the_map_list_names_the_active_map_once_one_is_set(server: RunningServer) -> None:
    gm, player = await table(server)
    await gm.request("map.set", map_payload("m1"))
    for peer in (gm, player):
        listing = await peer.until(lambda f: f["type"] == "map.list")
        assert listing["payload"]["active_map_id"] == "m1"
    await gm.close()
    await player.close()


async def test_every_frame_carries_every_field_the_go_service_always_sent(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    metadata = {"walls": [[{"x": 0, "y": 0}]], "portals": [{}], "lights": [{"range": 2}]}
    await gm.request("map.set", map_payload("m1", map_metadata=metadata))
    await gm.request("token.add", token_payload("t1"))
    await gm.request("token.move", {"token_id": "t1", "x": 5, "y": 5})
    await gm.request("token.update", {"token_id": "t1", "name": "Renamed"})
    await gm.request("fog.update", {"zones": [{"x": 0, "y": 0, "w": 9, "h": 9, "visible": True}]})
    await gm.request("scene.darkness", {"darkness_level": 0.25})
    await gm.request("map.set", map_payload("m2"))
    await gm.request("token.add", token_payload("t2"))
    await gm.request("token.remove", {"token_id": "t2"})
    await gm.request("map.rename", {"map_id": "nope", "new_name": "x"})
    await gm.send("chat.send", {"message_type": "text", "content": {"text": "hi"}})
    await player.until(lambda f: f["type"] == "chat.message")
    await gm.send("map.switch", {"map_id": "m1"})
    await gm.until(lambda f: f["type"] == "state.sync")
    await gm.until(lambda f: f["type"] == "state.saved")
    for peer in (gm, player):
        await peer.roundtrip()
    seen: set[str] = set()
    for frame in gm.received + player.received:
        seen.add(frame["type"])
        assert {"type", "campaign_id", "user_id", "payload"} <= set(frame), frame
        payload = frame["payload"]
        assert ALWAYS[frame["type"]] <= set(payload), frame
        for token in _tokens(frame):
            assert set(token) >= TOKEN, frame
        for zone in payload.get("fog_zones", payload.get("zones", [])):
            assert set(zone) == ZONE, frame
        for entry in payload.get("maps", []):
            assert set(entry) == MAP_ENTRY, frame
        for message in payload.get("messages", []):
            assert set(message) >= CHAT_MESSAGE, frame
        for saved in payload.get("saved_maps", {}).values():
            assert set(saved) >= SAVED_MAP, frame
            _check_metadata(saved.get("map_metadata"))
        _check_metadata(payload.get("map_metadata"))
    assert seen == set(ALWAYS)
    switched = [f for f in gm.received if f["type"] == "state.sync"][-1]["payload"]
    assert switched["map_metadata"]["portals"][0]["bounds"] == [{"x": 0, "y": 0}] * 2
    await gm.close()
    await player.close()


def _tokens(frame: dict[str, Any]) -> list[dict[str, Any]]:
    payload = frame["payload"]
    if frame["type"] == "token.add":
        return [payload]
    tokens = list(payload.get("tokens", {}).values())
    for saved in payload.get("saved_maps", {}).values():
        tokens += saved["tokens"].values()
    return tokens


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is None:
        return
    assert set(metadata["environment"]) == ENVIRONMENT, metadata
    for portal in metadata.get("portals", []):
        assert set(portal) == PORTAL, metadata
    for light in metadata.get("lights", []):
        assert set(light) == LIGHT, metadata


# --- lenient input --------------------------------------------------------------------------------


async def test_a_go_era_token_add_with_blank_optionals_and_zero_size_is_added_without_them(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    sent = token_payload("t1", image_url="", character_id=None, width=0, height=0)
    for frame in await echo(player, [gm], "token.add", sent):
        assert frame["type"] == "token.add", frame
        assert frame["payload"] == {
            **token_payload("t1", width=0, height=0),
            "owner_id": "pl-bo",
        }
    joined = await server.join(gm.sync["payload"]["campaign_id"], "gm-cy", "gm")
    assert "image_url" not in joined.sync["payload"]["tokens"]["t1"]
    for peer in (gm, player, joined):
        await peer.close()


async def test_a_token_update_with_null_and_empty_fields_changes_only_the_fields_given(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    await gm.request("token.add", token_payload("t1", image_url="/t1.png"))
    await player.until(lambda f: f["type"] == "token.add")
    update = {"token_id": "t1", "name": None, "image_url": "", "visible": None, "width": 2}
    for frame in await echo(player, [gm], "token.update", update):
        assert frame["type"] == "token.update", frame
        assert frame["payload"] == {"token_id": "t1", "width": 2}
    joined = await server.join(gm.sync["payload"]["campaign_id"], "gm-cy", "gm")
    token = joined.sync["payload"]["tokens"]["t1"]
    assert (token["name"], token["image_url"], token["width"]) == ("Token t1", "/t1.png", 2)
    for peer in (gm, player, joined):
        await peer.close()


async def test_a_map_set_with_an_empty_name_and_null_metadata_gets_the_default_name(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    sent = map_payload("m1", name="", map_metadata=None)
    for frame in await echo(gm, [player], "map.set", sent):
        assert frame["type"] == "map.set", frame
        assert frame["payload"] == {**map_payload("m1"), "name": "Map 1"}
    listing = await player.until(lambda f: f["type"] == "map.list")
    assert listing["payload"]["maps"][0]["name"] == "Map 1"
    await gm.close()
    await player.close()


async def test_a_token_add_without_visible_is_invalid_payload_and_adds_nothing(
    server: RunningServer,
) -> None:
    gm, player = await table(server)
    sent = token_payload("t1")
    del sent["visible"]
    error = await player.request("token.add", sent)
    assert error["payload"]["code"] == "invalid_payload"
    await gm.roundtrip()
    assert not [f for f in gm.received if f["type"] == "token.add"]
    await gm.close()
    await player.close()
