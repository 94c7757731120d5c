"""The transport cuts client frames itself once a connection is open (app/transport/adapter.py):
whatever way the bytes arrive, every message is applied once, in order, and every frame that
is not a complete final text frame still gets websockets' handling and its close codes.

Frames are written to the client's transport as raw bytes, so the test chooses how they are
split and grouped; short pauses between pieces give each its own TCP segment where the
kernel allows (the assertions hold however the pieces are grouped).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from app.transport.adapter import AdaptedProtocol as Adapted
from tests.support.harness import Peer, RunningServer, token_payload

pytestmark = pytest.mark.anyio

MASK = b"\x0f\xa5\x3c\x96"
TEXT, CONT, PING = 0x1, 0x0, 0x9


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame's bytes, masked as RFC 6455 requires of a client (unless told not)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    flag = 0x80 if masked else 0
    if size < 126:
        header = bytes([first, flag | size])
    elif size < 1 << 16:
        header = bytes([first, flag | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, flag | 127]) + size.to_bytes(8, "big")
    if not masked:
        return header + payload
    return header + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def move(x: int) -> bytes:
    """A token.move of t1 to (x, 0), as a frame."""
    message = {"type": "token.move", "payload": {"token_id": "t1", "x": x, "y": 0}}
    return frame(TEXT, json.dumps(message).encode())


async def write(ws: ClientConnection, *pieces: bytes) -> None:
    """Write each piece to the socket as is, one after the other."""
    transport: Any = ws.transport
    for piece in pieces:
        transport.write(piece)
        await asyncio.sleep(0.005)


async def dragger(shared: RunningServer, campaign: str) -> Peer:
    """A GM with token t1 on the table."""
    gm = await shared.join(campaign, "gm", "gm")
    await gm.request("token.add", token_payload("t1"))
    return gm


async def moves_seen(peer: Peer, count: int) -> list[float]:
    """The x of the next `count` token.move frames the peer receives."""
    seen = []
    for _ in range(count):
        message = await peer.expect("token.move")
        seen.append(message["payload"]["x"])
    return seen


async def test_a_frame_split_inside_its_header_its_mask_and_its_payload_is_applied_once(
    shared: RunningServer,
) -> None:
    gm = await dragger(shared, "cut-split")
    data = move(7)

    await write(gm.ws, data[:1], data[1:2], data[2:4], data[4:9], data[9:20], data[20:])

    assert await moves_seen(gm, 1) == [7]
    await gm.roundtrip()


async def test_frames_grouped_any_way_in_writes_are_applied_in_order(
    shared: RunningServer,
) -> None:
    gm = await dragger(shared, "cut-grouped")
    first, second, third, fourth = move(1), move(2), move(3), move(4)

    await write(gm.ws, first + second + third[:5], third[5:] + fourth)

    assert await moves_seen(gm, 4) == [1, 2, 3, 4]


async def test_a_fragmented_message_with_a_ping_between_its_fragments_is_applied(
    shared: RunningServer,
) -> None:
    gm = await dragger(shared, "cut-fragments")
    text = json.dumps({"type": "token.move", "payload": {"token_id": "t1", "x": 9, "y": 0}})
    body = text.encode()

    await write(
        gm.ws,
        frame(TEXT, body[:10], fin=False) + frame(PING, b"hi"),
        frame(CONT, body[10:]) + move(10),
    )

    assert await moves_seen(gm, 2) == [9, 10]


async def test_a_large_message_arriving_in_pieces_is_applied(shared: RunningServer) -> None:
    gm = await dragger(shared, "cut-large")
    # Unknown fields are ignored (lenient input), so padding makes a move of 60 KB.
    message = {"type": "token.move", "payload": {"token_id": "t1", "x": 5, "y": 0}}
    data = frame(TEXT, json.dumps({**message, "padding": "p" * 60_000}).encode())

    await write(gm.ws, *(data[i : i + 4096] for i in range(0, len(data), 4096)))

    assert await moves_seen(gm, 1) == [5]


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("unmasked", frame(TEXT, b'{"type":"ping"}', masked=False), 1002),
        ("invalid UTF-8", frame(TEXT, b'{"type":"\xff\xfe"}'), 1007),
        ("over the frame limit", bytes([0x81, 0xFF]) + (1 << 40).to_bytes(8, "big") + MASK, 1009),
        ("a continuation with no message", frame(CONT, b"{}"), 1002),
        ("a reserved bit", bytes([0xC1]) + frame(TEXT, b"{}")[1:], 1002),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_a_frame_off_the_hot_path_gets_websockets_close_code(
    shared: RunningServer, name: str, data: bytes, code: int
) -> None:
    peer = await shared.join(f"cut-bad-{code}-{len(data)}", "alice")

    await write(peer.ws, move(1) + data)

    assert (await peer.closed())[0] == code, name


async def test_an_open_connection_has_its_frames_cut_and_its_messages_taken_directly(
    shared: RunningServer,
) -> None:
    gm = await dragger(shared, "cut-on")
    await write(gm.ws, move(1))
    assert await moves_seen(gm, 1) == [1]

    protocols = [p for p in shared.server.server_state.connections if isinstance(p, Adapted)]
    assert protocols
    # Every open WebSocket of the server cuts its frames and offers messages to its taker.
    assert all(p._cutting and p.taker is not None for p in protocols)
