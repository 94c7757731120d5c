"""Sequencing against a real server: one seq per broadcast, no gaps, in order for every client."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
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
from tests.support.table import (
    ZONE,
    act,
    act_raw,
    join,
    news,
    only_error,
    snapshot,
    table,
    types,
)

pytestmark = pytest.mark.anyio


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
    peer.history = await peer.expect("chat.history")
    return peer


async def test_a_slow_client_still_receives_broadcasts_in_seq_order(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_per_second=10_000, rate_burst=10_000)
    async with serve(settings) as server:
        gm = await join(server, "c-slow", "gm-ada", "gm")
        slow = await open_slow_peer(server, "c-slow", "pl-slow")
        await act(gm, "token.add", token_payload("t1"))
        await act(gm, "token.add", token_payload("t2"))
        session = server.services.manager.sessions["c-slow"]
        slow_members: list[Any] = [m for m in session.members if m.actor.user_id == "pl-slow"]
        (client,) = slow_members
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
