"""Drag locks against a real server: one dragger per token, told to those who can see it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from app.connection import Connection
from tests.support.harness import Peer, RunningServer, serve, settings_for, token_payload
from tests.support.poll import poll

pytestmark = pytest.mark.anyio

LOCK_EVENTS = frozenset({"token.grabbed", "token.released"})


async def table(server: RunningServer) -> tuple[Peer, Peer, Peer]:
    """A GM and two players at c1, with a visible token t1 and a hidden h1 everyone saw added."""
    gm = await server.join("c1", "gm", "gm")
    bob = await server.join("c1", "bob")
    cat = await server.join("c1", "cat")
    await gm.request("token.add", token_payload("t1"))
    await gm.request("token.add", token_payload("h1", visible=False))
    for player in (bob, cat):
        await player.until(lambda f: f["type"] == "token.add")
    return gm, bob, cat


async def grab(peer: Peer, token_id: str) -> dict[str, Any]:
    """Grab `token_id`; the token.grabbed the grabber sees, or its error."""
    await peer.send("token.grab", {"token_id": token_id})
    return await peer.until(lambda f: f["type"] in {"token.grabbed", "error"})


def lock_events(peer: Peer) -> list[tuple[str, str, str]]:
    """(type, token id, user id) of every lock event the peer received."""
    return [
        (f["type"], f["payload"]["token_id"], f["user_id"])
        for f in peer.received
        if f["type"] in LOCK_EVENTS
    ]


async def test_a_grab_tells_everyone_who_sees_the_token_and_a_hidden_ones_only_the_gms(
    server: RunningServer,
) -> None:
    gm, bob, cat = await table(server)

    grabbed = await grab(bob, "t1")
    assert grabbed["payload"] == {"token_id": "t1", "user_id": "bob"}
    assert "seq" not in grabbed
    await grab(gm, "h1")
    for peer in (gm, bob, cat):
        await peer.roundtrip()

    assert lock_events(gm) == [("token.grabbed", "t1", "bob"), ("token.grabbed", "h1", "gm")]
    assert lock_events(cat) == [("token.grabbed", "t1", "bob")]
    assert not [raw for raw in cat.raw if "h1" in raw]


@pytest.mark.parametrize(
    ("policy", "token_id", "code"),
    [("open", "h1", "not_found"), ("open", "nope", "not_found"), ("owner", "t1", "forbidden")],
)
async def test_a_player_grabbing_what_they_may_not_gets_the_rules_answer(
    tmp_path: Path, policy: str, token_id: str, code: str
) -> None:
    async with serve(settings_for(tmp_path, token_policy=policy)) as server:
        gm, bob, _ = await table(server)

        refused = await grab(bob, token_id)

        assert refused["payload"]["code"] == code
        await gm.roundtrip()
        assert lock_events(gm) == []


async def test_another_users_changes_of_a_locked_token_are_refused_and_change_nothing(
    server: RunningServer,
) -> None:
    gm, bob, cat = await table(server)
    await grab(bob, "t1")

    for peer in (cat, gm):
        for kind, payload in (
            ("token.move", {"token_id": "t1", "x": 9, "y": 9}),
            ("token.update", {"token_id": "t1", "name": "Mine"}),
            ("token.remove", {"token_id": "t1"}),
        ):
            await peer.send(kind, payload)
            refused = await peer.until(lambda f: f["type"] == "error")
            assert refused["payload"]["code"] == "locked"
            assert "seq" not in refused
    await bob.request("token.move", {"token_id": "t1", "x": 2, "y": 3})

    token = server.services.manager.sessions["c1"].state.tokens["t1"]
    assert (token.x, token.y, token.name) == (2, 3, "Token t1")
    moved = await cat.until(lambda f: f["type"] == "token.move")
    assert moved["payload"] == {"token_id": "t1", "x": 2.0, "y": 3.0}


async def test_a_lock_ends_on_release_on_the_holders_disconnect_and_when_idle(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, lock_idle_timeout=0.3)) as server:
        gm, bob, cat = await table(server)
        await gm.request("token.add", token_payload("t2"))
        await gm.request("token.add", token_payload("t3"))
        await grab(bob, "t1")
        await grab(bob, "t2")
        await grab(cat, "t3")

        await bob.send("token.release", {"token_id": "t1"})
        released = await gm.until(lambda f: f["type"] == "token.released")
        assert (released["user_id"], released["payload"]) == ("bob", {"token_id": "t1"})
        await bob.close()
        gone = await gm.until(lambda f: f["type"] == "token.released")
        assert gone["payload"] == {"token_id": "t2"}
        started = time.monotonic()
        idle = await gm.until(lambda f: f["type"] == "token.released")
        assert (idle["user_id"], idle["payload"]) == ("cat", {"token_id": "t3"})
        assert time.monotonic() - started < 5
        assert not server.services.manager.sessions["c1"].ephemeral.locks
        await cat.request("token.move", {"token_id": "t1", "x": 1, "y": 1})


async def test_moves_keep_a_lock_alive_past_the_idle_timeout(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, lock_idle_timeout=0.3)) as server:
        gm, bob, _ = await table(server)
        await grab(bob, "t1")
        started = time.monotonic()

        step = 0
        while time.monotonic() - started < 0.9:
            step += 1
            await bob.request("token.move", {"token_id": "t1", "x": step, "y": 0})
            await asyncio.sleep(0.05)  # a pointer's pace, not a synchronisation
        await gm.roundtrip()

        assert lock_events(gm) == [("token.grabbed", "t1", "bob")]
        assert server.services.manager.sessions["c1"].ephemeral.locks.holder("t1") is not None


async def test_a_joiner_learns_the_locks_it_may_see_right_after_presence_sync(
    server: RunningServer,
) -> None:
    gm, bob, _ = await table(server)
    await grab(bob, "t1")
    await grab(gm, "h1")

    player = await server.join("c1", "dan", skip=frozenset())
    late_gm = await server.join("c1", "eve", "gm", skip=frozenset())

    assert [(await player.recv())["type"] for _ in range(3)] == [
        "presence.sync",
        "token.grabbed",
        "presence.join",
    ]
    assert lock_events(player) == [("token.grabbed", "t1", "bob")]
    kinds = [(await late_gm.recv())["type"] for _ in range(4)]
    assert kinds == ["presence.sync", "token.grabbed", "token.grabbed", "presence.join"]
    assert {token for _, token, _ in lock_events(late_gm)} == {"t1", "h1"}


async def test_revealing_a_token_under_a_gms_lock_tells_the_players_of_the_lock_after_it(
    server: RunningServer,
) -> None:
    gm, bob, cat = await table(server)
    await grab(gm, "h1")

    await gm.request("token.update", {"token_id": "h1", "visible": True})

    for player in (bob, cat):
        added = await player.until(lambda f: f["type"] in {"token.add", "token.grabbed"})
        assert (added["type"], added["payload"]["token_id"]) == ("token.add", "h1")
        grabbed = await player.expect("token.grabbed")
        assert grabbed["payload"] == {"token_id": "h1", "user_id": "gm"}
        assert "seq" not in grabbed
    await gm.roundtrip()
    assert lock_events(gm) == [("token.grabbed", "h1", "gm")]
    refused = await bob.request("token.move", {"token_id": "h1", "x": 1, "y": 1})
    assert refused["payload"]["code"] == "locked"


async def test_removing_a_locked_token_releases_it_before_the_removal(
    server: RunningServer,
) -> None:
    gm, _, cat = await table(server)
    await grab(gm, "t1")

    await gm.request("token.remove", {"token_id": "t1"})

    released = await cat.until(lambda f: f["type"] in {"token.released", "token.remove"})
    assert released["type"] == "token.released"
    await cat.expect("token.remove")


async def test_a_map_switch_releases_every_lock_before_the_new_state(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm", "gm")
    bob = await server.join("c1", "bob")
    for map_id in ("m2", "m1"):
        await gm.send(
            "map.set",
            {"map_id": map_id, "image_url": "/m.png", "grid_size": 64, "width": 9, "height": 9},
        )
        await gm.until(lambda f: f["type"] == "map.list")
    await gm.request("token.add", token_payload("t1"))
    await bob.until(lambda f: f["type"] == "token.add")
    await grab(bob, "t1")

    await gm.send("map.switch", {"map_id": "m2"})

    released = await bob.until(lambda f: f["type"] in {"token.released", "state.sync"})
    assert released["type"] == "token.released"
    await bob.until(lambda f: f["type"] == "state.sync")
    assert not server.services.manager.sessions["c1"].ephemeral.locks


async def test_merged_moves_of_a_token_someone_else_holds_are_refused_when_applied(
    tmp_path: Path,
) -> None:
    # A small bucket makes the player's fast drag merge; each merged position that gets its
    # turn is refused as locked, and none of them lands.
    settings = settings_for(tmp_path, rate_per_second=10.0, rate_burst=5)
    async with serve(settings) as server:
        gm, bob, _ = await table(server)
        await grab(gm, "t1")
        await bob.until(lambda f: f["type"] == "token.grabbed")

        for step in range(60):
            await bob.send("token.move", {"token_id": "t1", "x": step + 1, "y": 0})
        session = server.services.manager.sessions["c1"]
        connection = next(
            m for m in session.members if isinstance(m, Connection) and m.actor.user_id == "bob"
        )
        await poll(lambda: connection.merging == 0, 30, "the merged moves to be applied")
        await bob.roundtrip()

        codes = {f["payload"]["code"] for f in bob.received if f["type"] == "error"}
        assert codes == {"locked"}
        assert session.state.tokens["t1"].x == 0
        assert connection.closing is None
