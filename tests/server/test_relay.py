"""The relay to a campaign's owner, run in-process against a real clustered server.

The test plays the non-owner: an ASGI client (two queues) is piped by `relay()` to a real
server process that has the cluster secret, as the endpoint of another machine would pipe
its client. The owner's direct clients are ordinary WebSocket clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.auth.tokens import Identity
from app.coord.base import Owner
from app.coord.relay import MOVING, RELAY_HEADER, relay, sign_identity
from tests.support.cluster import StartCluster
from tests.support.harness import PRESENCE, Peer, token_payload
from tests.support.poll import poll
from tests.support.process import ServerProcess, free_port

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
MAX_SIZE = 16 * 1024 * 1024


class Counts:
    """A RelayMetrics that counts."""

    def __init__(self) -> None:
        self.opened = self.closed = self.failed = 0

    def relay_opened(self) -> None:
        self.opened += 1

    def relay_closed(self) -> None:
        self.closed += 1

    def relay_failed(self) -> None:
        self.failed += 1


class RelayedClient:
    """A client of the non-owner as its ASGI app sees it, piped by `relay()` to the owner."""

    def __init__(self) -> None:
        self.metrics = Counts()
        self.task: asyncio.Task[None] | None = None
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []

    @classmethod
    def start(
        cls,
        owner: Owner,
        headers: list[tuple[str, str]],
        query: Mapping[str, str],
        accepted: bool = False,
    ) -> RelayedClient:
        client = cls()
        metrics = client.metrics
        client.to_app.put_nowait({"type": "websocket.connect"})

        async def receive() -> dict[str, Any]:
            return await client.to_app.get()

        async def send(message: Mapping[str, Any]) -> None:
            await client.from_app.put(dict(message))

        async def run() -> None:
            assert (await receive())["type"] == "websocket.connect"
            await relay(receive, send, owner, headers, query, MAX_SIZE, metrics, accepted=accepted)

        client.task = asyncio.create_task(run())
        return client

    async def message(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            return await self.from_app.get()

    async def accepted(self) -> None:
        message = await self.message()
        assert message == {"type": "websocket.accept"}, message

    async def frame(self, skip: frozenset[str] = PRESENCE) -> dict[str, Any]:
        """The next frame the owner sent, decoded (presence skipped)."""
        while True:
            message = await self.message()
            assert message["type"] == "websocket.send", message
            frame: dict[str, Any] = json.loads(message["text"])
            self.frames.append(frame)
            if frame["type"] not in skip:
                return frame

    async def expect(self, kind: str) -> dict[str, Any]:
        frame = await self.frame()
        assert frame["type"] == kind, frame
        return frame

    async def closed(self) -> tuple[int, str]:
        """The close the relay sent the client (frames before it are kept), once it ended."""
        while True:
            message = await self.message()
            if message["type"] == "websocket.close":
                await self.ended()
                return message["code"], message.get("reason", "")
            assert message["type"] == "websocket.send", message
            self.frames.append(json.loads(message["text"]))

    def say(self, kind: str, payload: Any = None) -> None:
        frame: dict[str, Any] = {"type": kind}
        if payload is not None:
            frame["payload"] = payload
        self.to_app.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})

    def disconnect(self, code: int = 1001) -> None:
        self.to_app.put_nowait({"type": "websocket.disconnect", "code": code})

    async def ended(self) -> None:
        """The relay returned (no pump left running)."""
        assert self.task is not None
        async with asyncio.timeout(TIMEOUT):
            await self.task


def identity(user: str, role: str, campaign: str | None = None) -> Identity:
    claims: dict[str, Any] = {DEV_ROLE_CLAIM: role, "sub": user}
    if campaign is not None:
        claims[DEV_CAMPAIGN_CLAIM] = campaign
    return Identity(user, claims, time.time() + 3600)


def signed(secret: str, who: Identity, campaign: str) -> list[tuple[str, str]]:
    return [(RELAY_HEADER, sign_identity(secret, who, campaign, "b", time.time()))]


def owner_of(node: ServerProcess) -> Owner:
    return Owner("a", node.env["VTT_NODE_URL"])


async def clients(node: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        health = await client.get(f"http://127.0.0.1:{node.port}/health")
    count: int = health.json()["clients"]
    return count


@pytest.mark.postgres
async def test_a_relayed_client_plays_at_the_owner_with_its_role_and_leaves_cleanly(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=1)
    node = nodes.node("a")
    gm = await Peer.greeted(node.ws_url("c1", node.token("gm1", "gm")))
    await gm.request("token.add", token_payload("shown", x=1, y=1))
    await gm.request("token.add", token_payload("hidden", visible=False))

    player = RelayedClient.start(
        owner_of(node), signed(nodes.secret, identity("bob", "player"), "c1"), {"campaign": "c1"}
    )
    await player.accepted()
    sync = await player.expect("state.sync")
    # The owner resolved the role from the relayed claims: a player's view, hidden token out.
    assert set(sync["payload"]["tokens"]) == {"shown"}
    await player.expect("map.list")
    await player.expect("chat.history")
    assert player.metrics.opened == 1

    player.say("token.move", {"token_id": "shown", "x": 5, "y": 6})
    moved = await gm.until(lambda f: f["type"] == "token.move")
    assert moved["payload"] == {"token_id": "shown", "x": 5, "y": 6}
    assert moved["user_id"] == "bob"
    echoed = await player.expect("token.move")
    assert echoed["seq"] == moved["seq"]

    await gm.send("token.move", {"token_id": "shown", "x": 7, "y": 8})
    seen = await player.expect("token.move")
    assert (seen["user_id"], seen["payload"]["x"]) == ("gm1", 7)

    # A player may not do what only a GM may: the owner refuses, through the pipe.
    player.say("scene.darkness", {"darkness_level": 0.5})
    refused = await player.expect("error")
    assert refused["payload"]["code"] == "forbidden"

    assert await clients(node) == 2
    player.disconnect(1001)
    await player.ended()
    assert (player.metrics.opened, player.metrics.closed, player.metrics.failed) == (1, 1, 0)

    async def one_left() -> bool:
        return await clients(node) == 1

    await poll(one_left, TIMEOUT, "the relayed client to leave the owner", interval=0.05)
    await gm.close()


@pytest.mark.postgres
async def test_a_shutdown_of_the_relaying_machine_tells_the_relayed_client_to_reconnect(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=1)
    node = nodes.node("a")
    player = RelayedClient.start(
        owner_of(node), signed(nodes.secret, identity("bob", "player"), "c1"), {"campaign": "c1"}
    )
    await player.accepted()
    await player.expect("state.sync")
    assert await clients(node) == 1

    # What this machine's server hands the app when it shuts down, the socket still open.
    player.disconnect(1012)

    assert await player.closed() == (1012, "server restarting")

    async def none_left() -> bool:
        return await clients(node) == 0

    await poll(none_left, TIMEOUT, "the relayed client to leave the owner", interval=0.05)


@pytest.mark.postgres
async def test_the_owners_close_codes_reach_the_relayed_client(cluster: StartCluster) -> None:
    nodes = await cluster(size=1)
    node = nodes.node("a")
    owner = owner_of(node)

    # Signed with another secret: the owner refuses it 4401, and so the relayed client hears.
    forged = RelayedClient.start(
        owner, signed("x" * 32, identity("mallory", "gm"), "c1"), {"campaign": "c1"}
    )
    await forged.accepted()
    assert await forged.closed() == (4401, "relayed identity signature invalid")

    # Signed for another campaign than the one it asks for.
    elsewhere = RelayedClient.start(
        owner, signed(nodes.secret, identity("bob", "gm"), "c2"), {"campaign": "c1"}
    )
    await elsewhere.accepted()
    assert await elsewhere.closed() == (4401, "relayed identity is for another campaign")

    # Good signature, but the role check at the owner refuses: 4403.
    outsider = RelayedClient.start(
        owner,
        signed(nodes.secret, identity("eve", "player", campaign="c9"), "c1"),
        {"campaign": "c1"},
    )
    await outsider.accepted()
    assert await outsider.closed() == (4403, "not a member of this campaign")

    # No header at all, and no token (the relay never forwards one): 4401 missing token.
    bare = RelayedClient.start(owner, [], {"campaign": "c1"})
    await bare.accepted()
    assert await bare.closed() == (4401, "missing token")

    # Already accepted (a join found the campaign claimed meanwhile): no second accept.
    late = RelayedClient.start(
        owner,
        signed(nodes.secret, identity("bob", "player"), "c1"),
        {"campaign": "c1"},
        accepted=True,
    )
    assert (await late.frame())["type"] == "state.sync"
    late.disconnect(1000)
    await late.ended()

    # A client connecting directly with a forged header gets 4401, its good token aside.
    direct = await Peer.open(
        node.ws_url("c1", node.token("gm1", "gm")),
        additional_headers=[(RELAY_HEADER, "e30.00")],
    )
    assert await direct.closed() == (4401, "relayed identity signature invalid")
    # And a direct client with a token alone is served as ever.
    gm = await Peer.greeted(node.ws_url("c1", node.token("gm1", "gm")))
    await gm.close()
    await nodes.stop()
    assert "Traceback" not in node.output()


async def test_an_owner_that_cannot_be_reached_or_drops_the_pipe_is_1012() -> None:
    unreachable = RelayedClient.start(
        Owner("gone", f"ws://127.0.0.1:{free_port()}"), [], {"campaign": "c1"}
    )
    await unreachable.accepted()
    assert await unreachable.closed() == (1012, MOVING)
    assert (unreachable.metrics.opened, unreachable.metrics.failed) == (0, 1)

    async def drop(ws: ServerConnection) -> None:
        await ws.send('{"type":"hello"}')
        await ws.recv()
        ws.transport.abort()

    async with serve(drop, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        dropped = RelayedClient.start(Owner("x", f"ws://127.0.0.1:{port}"), [], {"campaign": "c"})
        await dropped.accepted()
        assert (await dropped.frame())["type"] == "hello"
        dropped.say("ping")
        assert await dropped.closed() == (1012, MOVING)
        assert (dropped.metrics.opened, dropped.metrics.closed) == (1, 1)


async def test_the_query_goes_upstream_without_a_token_and_closes_pass_through() -> None:
    seen: list[str] = []
    headers: list[str | None] = []

    async def close_with(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(ws.request.path)
        headers.append(ws.request.headers.get("origin"))
        await ws.close(1013, "store down")

    async with serve(close_with, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = RelayedClient.start(
            Owner("x", f"ws://127.0.0.1:{port}"),
            [("origin", "https://table.example")],
            {"campaign": "c1", "since": "4", "epoch": "e1"},
        )
        await client.accepted()
        assert await client.closed() == (1013, "store down")
    assert seen == ["/ws?campaign=c1&since=4&epoch=e1"]
    assert headers == ["https://table.example"]


async def test_without_a_secret_the_relay_header_is_ignored(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path)
    await node.start()
    try:
        header = signed("s" * 32, identity("mallory", "gm"), "c1")
        # No token: token auth applies, the header vouches for nobody.
        bare = await Peer.open(
            f"ws://127.0.0.1:{node.port}/ws?campaign=c1", additional_headers=header
        )
        assert await bare.closed() == (4401, "missing token")
        # With a token, the token's user joins.
        peer = await Peer.open(
            node.ws_url("c1", node.token("bob", "player")), additional_headers=header
        )
        sync = await peer.expect("state.sync")
        assert sync["payload"]["campaign_id"] == "c1"
        await peer.close()
    finally:
        await node.stop()
