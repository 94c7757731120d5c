"""Frame bytes and the Inbox alone: frames as websockets would send them; the Inbox as a queue."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from app.protocol import text_frame
from app.transport.adapter import Inbox

TIMEOUT = 10.0


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
