"""The transport adapter: shared frames are valid, used when possible, never when they can't be."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.streams import StreamReader

from app.connection import Connection
from app.protocol import text_frame
from app.transport.adapter import Inbox, TransportSocket
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for, token_payload


def parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_a_text_frame_of_any_size_parses_back_to_its_payload(size: int) -> None:
    payload = (b"x" * size)[:size]
    frame = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_text_frame_is_the_bytes_websockets_would_send(size: int) -> None:
    payload = b"y" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def connections(server: RunningServer, campaign: str) -> list[Connection]:
    """The server's connections in `campaign`'s session."""
    session = server.services.manager.sessions[campaign]
    return [member for member in session.members if isinstance(member, Connection)]


@pytest.mark.anyio
async def test_broadcasts_to_idle_sockets_are_written_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    original = TransportSocket.write

    def counting(self: TransportSocket, frame: bytes) -> None:
        writes.append(frame)
        original(self, frame)

    monkeypatch.setattr(TransportSocket, "write", counting)
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm1", "gm")
        player = await server.join("c1", "p1")
        greetings = len(writes)
        await gm.request("token.add", token_payload("t1"))
        await player.expect("token.add")
        assert greetings == 6, "each join's state.sync, map.list, chat.history went straight out"
        assert len(writes) == greetings + 2
        assert writes[-2] is writes[-1], "one frame object shared by both recipients"
        assert writes[-1].endswith(player.raw[-1].encode())


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
async def test_the_inbox_hands_messages_over_in_order_and_wakes_a_waiting_reader() -> None:
    inbox = Inbox()
    assert inbox.empty()
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.receive", "text": "1"})
    assert inbox.qsize() == 2
    assert await inbox.get() == {"type": "websocket.connect"}
    assert await inbox.get() == {"type": "websocket.receive", "text": "1"}
    assert inbox.empty()

    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done(), "nothing to read yet"
    inbox.put_nowait({"type": "websocket.receive", "text": "2"})
    async with asyncio.timeout(TIMEOUT):
        assert await reader == {"type": "websocket.receive", "text": "2"}


@pytest.mark.anyio
async def test_a_cancelled_read_leaves_the_inbox_usable() -> None:
    inbox = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    async with asyncio.timeout(TIMEOUT):
        assert await inbox.get() == {"type": "websocket.disconnect", "code": 1000}


@pytest.mark.anyio
async def test_the_server_protocol_queues_messages_in_an_inbox(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm1", "gm")
        protocols = [c for c in server.server.server_state.connections if hasattr(c, "queue")]
        assert protocols
        assert all(isinstance(p.queue, Inbox) for p in protocols)
        await gm.close()
