"""Presence against a real server: who is at the table, counted by connections, with a grace.

Peers here see presence frames (the harness's peers pass over them by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Peer, RunningServer, serve, settings_for, token_payload
from tests.support.poll import poll

pytestmark = pytest.mark.anyio

ALL: frozenset[str] = frozenset()
GRACE = 0.3


def members(frame: dict[str, Any]) -> dict[str, int]:
    """A presence.sync's members as user id -> connections."""
    return {m["user_id"]: m["connections"] for m in frame["payload"]["members"]}


def presence_of(peer: Peer) -> list[tuple[str, str]]:
    """(type, user id) of every presence.join and presence.leave the peer received."""
    return [
        (f["type"], f["payload"]["user_id"])
        for f in peer.received
        if f["type"] in {"presence.join", "presence.leave"}
    ]


async def test_a_joiner_gets_the_roster_after_its_greeting_and_everyone_hears_it_came(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm", "gm", skip=ALL)
        player = await server.join("c1", "bob", skip=ALL)

        sync = await player.expect("presence.sync")
        assert "seq" not in sync
        assert sync["payload"]["members"] == [
            {"user_id": "gm", "role": "gm", "connections": 1},
            {"user_id": "bob", "role": "player", "connections": 1},
        ]
        mine = await player.expect("presence.join")
        assert mine["payload"] == {"user_id": "bob", "role": "player"}
        await gm.until(lambda f: f["type"] == "presence.join" and f["user_id"] == "bob")
        assert presence_of(gm) == [("presence.join", "gm"), ("presence.join", "bob")]


async def test_many_tabs_of_one_user_are_one_member_with_their_count(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm", "gm", skip=ALL)
        tabs = [await server.join("c1", "bob", skip=ALL) for _ in range(3)]
        await gm.roundtrip()

        assert members(await tabs[-1].expect("presence.sync")) == {"gm": 1, "bob": 3}
        assert presence_of(gm) == [("presence.join", "gm"), ("presence.join", "bob")]
        for tab in tabs:
            await tab.close()


async def test_a_user_leaves_once_their_last_tab_has_been_closed_for_the_grace(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, presence_grace=GRACE)) as server:
        gm = await server.join("c1", "gm", "gm", skip=ALL)
        tabs = [await server.join("c1", "bob", skip=ALL) for _ in range(2)]
        await tabs[0].close()
        await tabs[1].close()
        session = server.services.manager.sessions["c1"]
        await poll(lambda: len(session.members) == 1, 10, "bob's tabs to leave")

        cat = await server.join("c1", "cat", skip=ALL)
        sync = await cat.expect("presence.sync")
        assert members(sync) == {"gm": 1, "bob": 0, "cat": 1}, "bob within the grace"

        left = await gm.until(lambda f: f["type"] == "presence.leave")
        assert (left["user_id"], left["payload"], "seq" in left) == (
            "bob",
            {"user_id": "bob"},
            False,
        )
        await cat.until(lambda f: f["type"] == "presence.leave")
        assert [kind for kind, _ in presence_of(gm)].count("presence.leave") == 1


async def test_a_reconnect_inside_the_grace_shows_the_others_nothing(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, presence_grace=GRACE)) as server:
        gm = await server.join("c1", "gm", "gm", skip=ALL)
        bob = await server.join("c1", "bob", skip=ALL)
        await gm.until(lambda f: f["type"] == "presence.join" and f["user_id"] == "bob")
        session = server.services.manager.sessions["c1"]
        await bob.close()
        await poll(lambda: len(session.members) == 1, 10, "bob to leave")

        back = await server.join("c1", "bob", skip=ALL)
        sync = await back.expect("presence.sync")
        assert members(sync) == {"gm": 1, "bob": 1}
        presence = session.ephemeral.presence
        await poll(lambda: presence.next_departure() is None, 10, "the grace to pass")
        await gm.roundtrip()
        await back.roundtrip()

        assert presence_of(gm) == [("presence.join", "gm"), ("presence.join", "bob")]
        assert presence_of(back) == []


async def test_a_resume_gets_presence_sync_after_the_replay_and_the_locks_after_that(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm", "gm")
        bob = await server.join("c1", "bob")
        await gm.request("token.add", token_payload("t1"))
        await bob.expect("token.add")
        since = bob.received[-1]["seq"]
        epoch = bob.sync["payload"]["epoch"]
        await bob.close()
        await gm.request("token.move", {"token_id": "t1", "x": 4, "y": 4})
        await gm.send("token.grab", {"token_id": "t1"})
        await gm.until(lambda f: f["type"] == "token.grabbed")

        url = server.ws_url("c1", server.token("bob"), since=since, epoch=epoch)
        back = await Peer.open(url)
        back.skip = ALL
        kinds = [(await back.recv())["type"] for _ in range(4)]

        assert kinds == ["state.resume", "token.move", "presence.sync", "token.grabbed"]
        assert all("seq" not in f for f in back.received[2:])


async def test_presence_names_a_member_whose_username_is_known(server: RunningServer) -> None:
    # Usernames come from VTT_USERNAME_SQL at join (the chat's lookup); none here: omitted.
    peer = await server.join("c1", "gm", "gm", skip=ALL)
    sync = await peer.expect("presence.sync")
    assert "username" not in sync["payload"]["members"][0]
    assert "null" not in peer.raw[-1]
