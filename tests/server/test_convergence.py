"""Mirrors converge: every message type, many clients at once, racing joins, atomic joins."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

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
from tests.support.table import ZONE, act, new_campaign, news, snapshot, table, types

pytestmark = pytest.mark.anyio

CLIENTS = 20


@pytest.fixture(scope="module")
async def fast(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A server whose rate limit never gets in the way of a test's bursts."""
    settings = settings_for(
        tmp_path_factory.mktemp("fast"), rate_per_second=100_000, rate_burst=100_000
    )
    async with serve(settings) as running:
        yield running


async def seat(server: RunningServer, campaign: str) -> list[Peer]:
    """A GM and CLIENTS - 1 players at `campaign`, joined concurrently."""
    gm = await server.join(campaign, "gm", "gm")
    players = await asyncio.gather(
        *(server.join(campaign, f"player-{index}") for index in range(CLIENTS - 1))
    )
    return [gm, *players]


async def assert_mirrors_converge(server: RunningServer, campaign: str, peers: list[Peer]) -> None:
    """Each peer's mirror of everything it received equals a fresh joiner's state of its role.

    Call it once every message was sent: a second roundtrip of every peer, after every peer's
    first one, guarantees each has read every broadcast made before it.
    """
    await asyncio.gather(*(peer.roundtrip() for peer in peers))
    await asyncio.gather(*(peer.roundtrip() for peer in peers))
    fresh = {role: await snapshot(server, campaign, role) for role in ("gm", "player")}
    for index, peer in enumerate(peers):
        role = "gm" if index == 0 else "player"
        mirror = Mirror.of(peer.received)
        assert mirror.tokens == fresh[role]["tokens"], f"peer {index} ({role}) diverged"
        assert mirror.state == fresh[role], f"peer {index} ({role}) diverged"


async def test_twenty_clients_moving_tokens_concurrently_converge(fast: RunningServer) -> None:
    campaign = new_campaign()
    peers = await seat(fast, campaign)
    token_ids = [f"t{index}" for index in range(8)]
    for token_id in token_ids:
        await peers[0].request("token.add", token_payload(token_id))

    async def play(peer: Peer, rng: random.Random) -> None:
        for _ in range(40):
            move = {
                "token_id": rng.choice(token_ids),
                "x": rng.randint(-5000, 5000),
                "y": rng.uniform(-5000, 5000),
            }
            await peer.send("token.move", move)
        await peer.roundtrip()

    await asyncio.gather(*(play(peer, random.Random(index)) for index, peer in enumerate(peers)))
    await assert_mirrors_converge(fast, campaign, peers)
    assert not [f for peer in peers for f in peer.received if f["type"] == "error"]


async def test_twenty_clients_mixing_every_token_and_scene_message_converge_per_role(
    fast: RunningServer,
) -> None:
    campaign = new_campaign()
    peers = await seat(fast, campaign)
    gm = peers[0]
    await gm.send("map.set", map_payload("m1"))
    token_ids = [f"t{index}" for index in range(12)]

    def player_message(rng: random.Random) -> tuple[str, dict[str, Any]]:
        token_id = rng.choice(token_ids)
        return rng.choice(
            [
                ("token.add", token_payload(token_id, x=rng.randint(0, 99))),
                ("token.move", {"token_id": token_id, "x": rng.randint(0, 99), "y": 1}),
                ("token.move", {"token_id": token_id, "x": rng.randint(0, 99), "y": 2}),
                ("token.update", {"token_id": token_id, "name": f"n{rng.randint(0, 9)}"}),
                ("token.update", {"token_id": token_id, "width": rng.randint(1, 3)}),
                ("token.remove", {"token_id": token_id}),
            ]
        )

    def gm_message(rng: random.Random) -> tuple[str, dict[str, Any]]:
        token_id = rng.choice(token_ids)
        zones = [{"x": rng.randint(0, 9), "y": 0, "w": 5, "h": 5, "visible": rng.random() < 0.5}]
        return rng.choice(
            [
                player_message(rng),
                ("token.add", token_payload(token_id, visible=False)),
                ("token.update", {"token_id": token_id, "visible": False}),
                ("token.update", {"token_id": token_id, "visible": True}),
                ("token.update", {"token_id": token_id, "visible": True, "name": "shown"}),
                ("fog.update", {"zones": zones}),
                ("scene.darkness", {"darkness_level": rng.random()}),
                ("map.set", map_payload(rng.choice(["m1", "m2"]))),
            ]
        )

    async def play(index: int, peer: Peer) -> None:
        rng = random.Random(1000 + index)
        for _ in range(30):
            kind, payload = gm_message(rng) if index == 0 else player_message(rng)
            await peer.send(kind, payload)
        await peer.roundtrip()

    await asyncio.gather(*(play(index, peer) for index, peer in enumerate(peers)))
    await assert_mirrors_converge(fast, campaign, peers)


@pytest.mark.parametrize("joiners", [2, 10])
async def test_joins_racing_for_a_new_campaign_create_one_session(
    fast: RunningServer, joiners: int
) -> None:
    campaign = new_campaign()
    peers = await asyncio.gather(
        *(fast.join(campaign, f"racer-{index}") for index in range(joiners))
    )
    sessions = fast.services.manager.sessions
    assert len(sessions[campaign].members) == joiners
    assert len({peer.sync["payload"]["epoch"] for peer in peers}) == 1
    await peers[0].send("token.add", token_payload("t1"))
    for peer in peers:
        assert (await peer.expect("token.add"))["payload"]["token_id"] == "t1"


async def test_a_client_joining_during_a_stream_of_moves_gets_each_later_event_exactly_once(
    fast: RunningServer,
) -> None:
    campaign = new_campaign()
    gm = await fast.join(campaign, "gm", "gm")
    # Every move goes to a token no queued frame names, so no move can stand in for another.
    token_ids = [f"t{index}" for index in range(600)]
    for token_id in token_ids:
        await gm.send("token.add", token_payload(token_id))
    await gm.roundtrip()
    start_seq = len(token_ids)
    batch_done = asyncio.Event()
    joined = asyncio.Event()

    async def stream() -> None:
        sent = batches_after_joins = 0
        while batches_after_joins < 5:
            for _ in range(10):
                move = {"token_id": token_ids[sent % len(token_ids)], "x": sent, "y": 0}
                await gm.send("token.move", move)
                sent += 1
            await gm.roundtrip()
            batch_done.set()
            batches_after_joins += joined.is_set()

    streamer = asyncio.create_task(stream())
    joiners: list[Peer] = []
    async with asyncio.timeout(TIMEOUT * 3):
        for index in range(6):
            for _ in range(2):
                batch_done.clear()
                await batch_done.wait()
            joiners.append(await fast.join(campaign, f"late-{index}"))
        joined.set()
        await streamer
    final = (await snapshot(fast, campaign, "gm"))["seq"]
    for joiner in joiners:
        await joiner.roundtrip()
        synced = joiner.sync["seq"]
        assert start_seq < synced < final, "the join did not happen during the stream"
        seqs = [frame["seq"] for frame in joiner.received[1:] if "seq" in frame]
        assert seqs == list(range(synced + 1, final + 1))
        assert Mirror.of(joiner.received).state == await snapshot(fast, campaign, "player")


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
