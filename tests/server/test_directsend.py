"""The transport adapter: shared frames are valid, used when possible, never when they can't be."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from app.connection import Connection
from app.transport.adapter import Inbox, TransportSocket
from tests.support.harness import Peer, RunningServer, serve, settings_for, token_payload


def connections(server: RunningServer, campaign: str) -> list[Connection]:
    """The server's connections in `campaign`'s session."""
    session = server.services.manager.sessions[campaign]
    return [member for member in session.members if isinstance(member, Connection)]


@pytest.mark.anyio
async def test_broadcasts_to_idle_sockets_are_written_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    original_write, original_try = TransportSocket.write, TransportSocket.try_write

    def counting(self: TransportSocket, frame: bytes) -> None:
        writes.append(frame)
        original_write(self, frame)

    def counting_try(self: TransportSocket, frame: bytes) -> bool:
        written = original_try(self, frame)
        if written:
            writes.append(frame)
        return written

    monkeypatch.setattr(TransportSocket, "write", counting)
    monkeypatch.setattr(TransportSocket, "try_write", counting_try)
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm1", "gm")
        player = await server.join("c1", "p1")
        greetings = len(writes)
        await gm.request("token.add", token_payload("t1"))
        await player.expect("token.add")
        # Each join's state.sync, map.list, chat.history, presence.sync and presence.join went
        # straight out in one write; the player's presence.join to the GM waited for the GM's
        # next frame (Connection.deliver_soon) and went out with it.
        assert greetings == 2, "each greeting went straight out, in one write"
        assert writes[0].count(b'"type":"') == 5
        assert len(writes) == greetings + 2
        (together,) = [write for write in writes[greetings:] if b'"presence.join"' in write]
        (alone,) = [write for write in writes[greetings:] if write is not together]
        assert alone.endswith(player.raw[-1].encode())
        assert together.count(b'"type":"') == 2
        assert together.endswith(alone), "the same frame, after the presence.join it waited for"


@pytest.mark.anyio
@pytest.mark.parametrize(("impl", "deflate"), [("websockets-sansio", True), ("websockets", False)])
async def test_without_a_shareable_frame_the_asgi_path_delivers_everything(
    tmp_path: Path, impl: str, deflate: bool
) -> None:
    settings = replace(settings_for(tmp_path), ws_impl=impl, ws_per_message_deflate=deflate)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm1", "gm")
        player = await server.join("c1", "p1")
        assert [c.socket for c in connections(server, "c1")] == [None, None]
        await gm.request("token.add", token_payload("t1"))
        added = await player.expect("token.add")
        assert added["payload"]["token_id"] == "t1"
        big = token_payload("t2", name="n" * 150, image_url="https://cdn.example/" + "i" * 2000)
        await gm.request("token.add", big)
        assert (await player.expect("token.add"))["payload"] == {**big, "owner_id": "gm1"}


@pytest.mark.anyio
async def test_a_uvicorn_sansio_connection_gets_a_frame_socket(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        await server.join("c1", "gm1", "gm")
        assert [type(c.socket) for c in connections(server, "c1")] == [TransportSocket]


@pytest.mark.anyio
async def test_once_joined_no_object_in_the_server_holds_the_token_or_the_headers(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        token = server.token("gm1", "gm")
        agent = "vtt-test-agent-7c41e2"
        gm = await Peer.open(server.ws_url("c1", token), user_agent_header=agent)
        await gm.expect("state.sync")
        await gm.expect("map.list")
        gc.collect()
        # The client's own request holds both strings too; any other holder is the server's.
        mine = gm.ws.request
        assert mine is not None
        own = {id(mine), id(mine.headers), id(mine.headers._dict)}
        held = [
            repr(o)[:200]
            for o in gc.get_objects()
            if isinstance(o, Request | Headers | dict)
            and id(o) not in own
            and (token in repr(o) or agent in repr(o))
        ]
        await gm.close()
    assert held == []


@pytest.mark.anyio
async def test_the_server_protocol_queues_messages_in_an_inbox(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm1", "gm")
        protocols = [c for c in server.server.server_state.connections if hasattr(c, "queue")]
        assert protocols
        assert all(isinstance(p.queue, Inbox) for p in protocols)
        await gm.close()
