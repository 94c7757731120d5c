"""Two clients in one campaign see each other's changes, against a real server."""

from __future__ import annotations

import pytest

from tests.support.harness import RunningServer, token_payload

pytestmark = pytest.mark.anyio


async def test_two_clients_see_each_others_token_moves(server: RunningServer) -> None:
    gm = await server.join("c1", "alice", "gm")
    player = await server.join("c1", "bob")
    added = await gm.request("token.add", token_payload("t1", x=1, y=2))
    assert added["seq"] == 1
    assert (await player.expect("token.add"))["payload"]["token_id"] == "t1"
    await player.send("token.move", {"token_id": "t1", "x": 5, "y": 6})
    for peer in (gm, player):
        moved = await peer.expect("token.move")
        assert moved["payload"] == {"token_id": "t1", "x": 5, "y": 6}
        assert moved["user_id"] == "bob"
        assert moved["seq"] == 2
