"""Who may change which token: owner stamps, the open and owner policies, GM-only owner_id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Peer, RunningServer, serve, settings_for, token_payload
from tests.support.table import frames_before_pong

pytestmark = pytest.mark.anyio

MOVE = ("token.move", {"x": 7, "y": 8})
UPDATE = ("token.update", {"name": "Renamed"})
REMOVE: tuple[str, dict[str, Any]] = ("token.remove", {})
REPLACE = ("token.add", {"name": "Replaced", "x": 0, "y": 0, "width": 1, "height": 1})
ACTIONS = [MOVE, UPDATE, REMOVE, REPLACE]
ACTION_IDS = ["move", "update", "remove", "replace"]


@pytest.fixture
async def owner_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with VTT_TOKEN_POLICY=owner."""
    async with serve(settings_for(tmp_path, token_policy="owner")) as running:
        yield running


def action(kind: str, fields: dict[str, Any], token_id: str) -> tuple[str, dict[str, Any]]:
    """The message doing `kind` with `fields` to `token_id`."""
    payload = {"token_id": token_id, **fields}
    if kind == "token.add":
        payload["visible"] = True
    return kind, payload


async def ask(peer: Peer, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Send a message and return the answer: its own broadcast echo, or an error."""
    me = peer.sync["user_id"]
    await peer.send(kind, payload)
    return await peer.until(
        lambda f: f["type"] == "error" or (f["type"] == kind and f.get("user_id") == me)
    )


async def tokens_now(server: RunningServer, campaign: str) -> dict[str, Any]:
    """The campaign's tokens as a newly joined GM sees them."""
    peer = await server.join(campaign, "gm-observer", "gm")
    tokens: dict[str, Any] = peer.sync["payload"]["tokens"]
    await peer.close()
    return tokens


async def table_of(server: RunningServer) -> tuple[Peer, Peer, Peer]:
    """A GM and two players in campaign c1."""
    gm = await server.join("c1", "gm-ann", "gm")
    bob = await server.join("c1", "pl-bob")
    cat = await server.join("c1", "pl-cat")
    return gm, bob, cat


# --- owner stamps -----------------------------------------------------------------------------


async def test_token_add_stamps_the_adders_user_id_as_owner(server: RunningServer) -> None:
    gm, bob, cat = await table_of(server)
    by_gm = await ask(gm, "token.add", token_payload("tok-gm"))
    by_bob = await ask(bob, "token.add", token_payload("tok-bob"))
    assert by_gm["payload"]["owner_id"] == "gm-ann"
    assert by_bob["payload"]["owner_id"] == "pl-bob"
    seen = [f for f in await frames_before_pong(cat) if f["type"] == "token.add"]
    assert [f["payload"]["owner_id"] for f in seen] == ["gm-ann", "pl-bob"]
    stored = await tokens_now(server, "c1")
    assert {tid: t["owner_id"] for tid, t in stored.items()} == {
        "tok-gm": "gm-ann",
        "tok-bob": "pl-bob",
    }


async def test_an_owner_id_sent_with_token_add_is_replaced_by_the_senders(
    server: RunningServer,
) -> None:
    _, bob, _ = await table_of(server)
    added = await ask(bob, "token.add", token_payload("tok-bob", owner_id="pl-cat"))
    assert added["payload"]["owner_id"] == "pl-bob"
    assert (await tokens_now(server, "c1"))["tok-bob"]["owner_id"] == "pl-bob"


async def test_replacing_a_token_restamps_it_with_the_replacers_user_id(
    server: RunningServer,
) -> None:
    _, bob, cat = await table_of(server)
    await ask(bob, "token.add", token_payload("tok-bob"))
    replaced = await ask(cat, "token.add", token_payload("tok-bob", name="Cat's now"))
    assert replaced["payload"]["owner_id"] == "pl-cat"


# --- owner policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "fields"), ACTIONS, ids=ACTION_IDS)
async def test_under_the_owner_policy_a_player_may_not_touch_anothers_token(
    owner_server: RunningServer, kind: str, fields: dict[str, Any]
) -> None:
    gm, bob, cat = await table_of(owner_server)
    await ask(gm, "token.add", token_payload("tok-gm"))
    await ask(bob, "token.add", token_payload("tok-bob"))
    for peer in (gm, bob, cat):
        await frames_before_pong(peer)
    before = await tokens_now(owner_server, "c1")
    for token_id in ("tok-gm", "tok-bob"):
        refused = await ask(cat, *action(kind, fields, token_id))
        assert refused["type"] == "error"
        assert refused["payload"]["code"] == "forbidden"
    assert await frames_before_pong(gm) == []
    assert await frames_before_pong(bob) == []
    assert await tokens_now(owner_server, "c1") == before
    later = await ask(gm, "token.move", {"token_id": "tok-gm", "x": 1, "y": 1})
    assert later["seq"] == 3


@pytest.mark.parametrize(("kind", "fields"), ACTIONS, ids=ACTION_IDS)
async def test_under_the_owner_policy_a_player_may_touch_their_own_token(
    owner_server: RunningServer, kind: str, fields: dict[str, Any]
) -> None:
    gm, bob, _ = await table_of(owner_server)
    await ask(bob, "token.add", token_payload("tok-bob"))
    done = await ask(bob, *action(kind, fields, "tok-bob"))
    assert done["type"] == kind
    assert (await gm.until(lambda f: f.get("seq") == done["seq"]))["type"] == kind


@pytest.mark.parametrize(("kind", "fields"), ACTIONS, ids=ACTION_IDS)
async def test_under_the_owner_policy_the_gm_may_touch_any_token(
    owner_server: RunningServer, kind: str, fields: dict[str, Any]
) -> None:
    gm, bob, _ = await table_of(owner_server)
    await ask(bob, "token.add", token_payload("tok-bob"))
    done = await ask(gm, *action(kind, fields, "tok-bob"))
    assert done["type"] == kind
    assert (await bob.until(lambda f: f.get("seq") == done["seq"]))["type"] == kind


async def test_the_gm_hands_a_token_to_a_player_who_may_then_move_it(
    owner_server: RunningServer,
) -> None:
    gm, bob, cat = await table_of(owner_server)
    await ask(gm, "token.add", token_payload("tok-horse"))
    refused = await ask(bob, "token.move", {"token_id": "tok-horse", "x": 1, "y": 1})
    assert refused["payload"]["code"] == "forbidden"
    handed = await ask(gm, "token.update", {"token_id": "tok-horse", "owner_id": "pl-bob"})
    assert handed["payload"] == {"token_id": "tok-horse", "owner_id": "pl-bob"}
    seen = await cat.until(lambda f: f["type"] == "token.update")
    assert seen["payload"] == handed["payload"]
    moved = await ask(bob, "token.move", {"token_id": "tok-horse", "x": 2, "y": 3})
    assert moved["type"] == "token.move"
    assert (await tokens_now(owner_server, "c1"))["tok-horse"]["owner_id"] == "pl-bob"
    refused = await ask(cat, "token.move", {"token_id": "tok-horse", "x": 4, "y": 4})
    assert refused["payload"]["code"] == "forbidden"


async def test_the_gm_takes_a_token_back_from_a_player(owner_server: RunningServer) -> None:
    gm, bob, _ = await table_of(owner_server)
    await ask(bob, "token.add", token_payload("tok-bob"))
    await ask(gm, "token.update", {"token_id": "tok-bob", "owner_id": "gm-ann"})
    refused = await ask(bob, "token.move", {"token_id": "tok-bob", "x": 1, "y": 1})
    assert refused["payload"]["code"] == "forbidden"


@pytest.mark.parametrize("policy", ["open", "owner"])
async def test_a_player_sending_owner_id_in_token_update_is_forbidden_and_changes_nothing(
    tmp_path: Path, policy: str
) -> None:
    async with serve(settings_for(tmp_path, token_policy=policy)) as server:
        gm, bob, cat = await table_of(server)
        await ask(bob, "token.add", token_payload("tok-bob"))
        await ask(gm, "token.add", token_payload("tok-gm"))
        await frames_before_pong(cat)
        for token_id in ("tok-bob", "tok-gm"):
            update = {"token_id": token_id, "owner_id": "pl-cat", "name": "Mine"}
            refused = await ask(bob, "token.update", update)
            assert refused["payload"]["code"] == "forbidden"
        assert await frames_before_pong(cat) == []
        tokens = await tokens_now(server, "c1")
        assert tokens["tok-bob"]["owner_id"] == "pl-bob"
        assert tokens["tok-bob"]["name"] == "Token tok-bob"
        assert tokens["tok-gm"]["owner_id"] == "gm-ann"


async def test_a_player_revealing_or_hiding_a_token_is_forbidden_and_changes_nothing(
    server: RunningServer,
) -> None:
    gm, bob, _ = await table_of(server)
    await ask(bob, "token.add", token_payload("tok-bob"))
    refused = await ask(bob, "token.update", {"token_id": "tok-bob", "visible": False})
    assert refused["payload"]["code"] == "forbidden"
    refused = await ask(bob, "token.add", token_payload("tok-new", visible=False))
    assert refused["payload"]["code"] == "forbidden"
    assert [f["type"] for f in await frames_before_pong(gm)] == ["token.add"]
    assert set(await tokens_now(server, "c1")) == {"tok-bob"}


# --- open policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "fields"), ACTIONS, ids=ACTION_IDS)
async def test_under_the_open_policy_a_player_may_touch_anyones_visible_token(
    server: RunningServer, kind: str, fields: dict[str, Any]
) -> None:
    gm, bob, cat = await table_of(server)
    await ask(gm, "token.add", token_payload("tok-gm"))
    await ask(bob, "token.add", token_payload("tok-bob"))
    for token_id in ("tok-gm", "tok-bob"):
        done = await ask(cat, *action(kind, fields, token_id))
        assert done["type"] == kind

        def echoes(frame: dict[str, Any], seq: int = done["seq"]) -> bool:
            return frame.get("seq") == seq

        assert (await gm.until(echoes))["type"] == kind
