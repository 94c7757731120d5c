"""A client's outbox and writer, driven through a fake ASGI send that stalls like a slow socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from starlette.types import Message

from app.auth import Identity
from app.config import Settings
from app.connection import Client
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.model import Actor
from app.transport.adapter import DirectSocket, text_frame

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


class StallingSocket:
    """An ASGI `send` that records every message and blocks while its gate is shut."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, message: Message) -> None:
        """Record `message`, then wait until the socket can take it."""
        self.sent.append(message)
        await self.gate.wait()

    @property
    def texts(self) -> list[str]:
        """The text frames sent so far, in order."""
        return [m["text"] for m in self.sent if m["type"] == "websocket.send"]

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The text frames sent so far, decoded."""
        return [json.loads(text) for text in self.texts]

    @property
    def closes(self) -> list[Message]:
        """The close messages sent so far."""
        return [m for m in self.sent if m["type"] == "websocket.close"]


class UvicornStandIn:
    """Stands in for uvicorn's protocol and transport under a DirectSocket: records its writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_sent = False
        self.disconnected = False
        self.transport = self

    def write(self, data: bytes) -> None:
        """Take bytes as the transport would."""
        self.written.append(data)

    def is_closing(self) -> bool:
        """The transport is open."""
        return False

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The frames written, decoded (they are short: a two-byte header)."""
        return [json.loads(frame[2:]) for frame in self.written]


def direct_to(client: Client) -> UvicornStandIn:
    """Give `client` a DirectSocket onto a stand-in transport, and return the stand-in."""
    stand_in = UvicornStandIn()
    client.direct = DirectSocket(stand_in)
    return stand_in


async def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Yield to the loop until `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.001)


def new_client(socket: StallingSocket, **overrides: Any) -> Client:
    """A player's client sending through `socket`, with `overrides` to the default settings."""
    settings = replace(Settings(env="test"), **overrides)
    identity = Identity(user_id="u1", claims={}, expires_at=0.0)
    return Client(socket, Actor("u1", "player"), identity, "c1", settings, Metrics())


@asynccontextmanager
async def outbox(**overrides: Any) -> AsyncIterator[tuple[Client, StallingSocket]]:
    """A client on a stalling socket; its writer, if any, is stopped afterwards."""
    socket = StallingSocket()
    client = new_client(socket, **overrides)
    try:
        yield client, socket
    finally:
        async with asyncio.timeout(TIMEOUT):
            await client.stop()


async def stalled(client: Client, socket: StallingSocket) -> None:
    """Shut the socket and make the writer hold one frame in flight, so later frames queue."""
    socket.gate.clear()
    client.deliver(frame("hello", 0))
    await eventually(lambda: len(socket.sent) == 1)


def frame(kind: str, seq: int, token_id: str | None = None, **payload: Any) -> str:
    """An encoded server frame."""
    body: dict[str, Any] = dict(payload)
    if token_id is not None:
        body["token_id"] = token_id
    return json.dumps({"type": kind, "seq": seq, "payload": body})


def move(seq: int, token_id: str, x: float) -> str:
    """An encoded token.move."""
    return frame("token.move", seq, token_id, x=x, y=0)


def seqs(socket: StallingSocket) -> list[int]:
    """The seq of every frame sent after the first (the one that stalled the writer)."""
    return [f["seq"] for f in socket.frames[1:]]


async def drained(client: Client, socket: StallingSocket, count: int) -> None:
    """Open the socket and wait until `count` text frames went out."""
    socket.gate.set()
    await eventually(lambda: len(socket.texts) >= count)
    await eventually(lambda: not client.queued)


# --- conflation -------------------------------------------------------------------------------


async def test_frames_reach_an_idle_socket_in_the_order_they_were_delivered() -> None:
    async with outbox() as (client, socket):
        client.deliver(frame("token.add", 1, "t1"))
        client.deliver(move(2, "t1", 1), "t1", is_move=True)
        client.deliver(frame("fog.update", 3))

        await eventually(lambda: len(socket.texts) == 3)
        assert [f["seq"] for f in socket.frames] == [1, 2, 3]


async def test_a_queued_move_is_replaced_by_the_newer_move_of_the_same_token() -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        for seq in range(1, 101):
            client.deliver(move(seq, "t1", seq), "t1", is_move=True)

        assert client.queued == 1, "the newer move takes the queued one's place"
        await drained(client, socket, 2)
        assert socket.frames[1]["seq"] == 100
        assert socket.frames[1]["payload"]["x"] == 100


async def test_a_move_is_not_conflated_with_one_already_handed_to_the_socket() -> None:
    async with outbox() as (client, socket):
        socket.gate.clear()
        client.deliver(move(1, "t1", 1), "t1", is_move=True)
        await eventually(lambda: len(socket.sent) == 1)
        client.deliver(move(2, "t1", 2), "t1", is_move=True)

        await drained(client, socket, 2)
        assert [f["payload"]["x"] for f in socket.frames] == [1, 2]


async def test_moves_of_different_tokens_are_each_kept_with_their_latest_position() -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        for seq in range(1, 31):
            token_id = f"t{seq % 3}"
            client.deliver(move(seq, token_id, seq), token_id, is_move=True)

        await drained(client, socket, 4)
        latest = {f["payload"]["token_id"]: f["payload"]["x"] for f in socket.frames[1:]}
        assert latest == {"t0": 30, "t1": 28, "t2": 29}
        assert len(socket.frames) == 4


@pytest.mark.parametrize("kind", ["token.add", "token.update", "token.remove"])
async def test_a_move_never_jumps_over_another_event_about_the_same_token(kind: str) -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.deliver(move(1, "t1", 1), "t1", is_move=True)
        client.deliver(frame(kind, 2, "t1"), "t1")
        client.deliver(move(3, "t1", 3), "t1", is_move=True)

        await drained(client, socket, 4)
        assert seqs(socket) == [1, 2, 3]


@pytest.mark.parametrize("kind", ["fog.update", "map.set", "map.list", "scene.darkness", "pong"])
async def test_a_move_never_jumps_over_an_event_that_is_not_about_a_token(kind: str) -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.deliver(move(1, "t1", 1), "t1", is_move=True)
        client.deliver(frame(kind, 2))
        client.deliver(move(3, "t1", 3), "t1", is_move=True)

        await drained(client, socket, 4)
        assert seqs(socket) == [1, 2, 3]


async def test_a_move_after_a_non_token_event_still_conflates_with_later_moves() -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.deliver(move(1, "t1", 1), "t1", is_move=True)
        client.deliver(frame("fog.update", 2))
        for seq in range(3, 10):
            client.deliver(move(seq, "t1", seq), "t1", is_move=True)

        await drained(client, socket, 4)
        assert seqs(socket) == [1, 2, 9]


async def test_conflation_across_another_tokens_move_never_sends_seqs_out_of_order() -> None:
    # Sequencing promises that seqs only increase within one connection, and a resuming client
    # reconnects with the last seq it saw: a move that jumped ahead would hide the events behind it.
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.deliver(move(10, "t1", 1), "t1", is_move=True)
        client.deliver(move(11, "t2", 1), "t2", is_move=True)
        client.deliver(move(12, "t1", 2), "t1", is_move=True)

        await drained(client, socket, 3)
        sent = seqs(socket)
        assert 10 not in sent, "the superseded move is not sent"
        assert 11 in sent
        assert 12 in sent
        assert sent == sorted(sent), f"seqs went backwards: {sent}"


# --- bounds -----------------------------------------------------------------------------------


async def test_a_client_over_the_message_bound_is_closed_with_1013_and_its_queue_dropped() -> None:
    async with outbox(outbox_max_messages=5) as (client, socket):
        await stalled(client, socket)
        for seq in range(1, 7):
            client.deliver(frame("token.add", seq, f"t{seq}"), f"t{seq}")

        assert client.closing is not None
        assert client.closing.code == CloseCode.TRY_AGAIN_LATER
        assert not client.queued
        socket.gate.set()
        await eventually(lambda: bool(socket.closes))
        assert socket.closes == [
            {"type": "websocket.close", "code": 1013, "reason": client.closing.reason}
        ]
        assert len(socket.texts) == 1, "nothing that was queued is sent after the close"


async def test_a_client_at_the_message_bound_is_not_closed() -> None:
    async with outbox(outbox_max_messages=5) as (client, socket):
        await stalled(client, socket)
        for seq in range(1, 6):
            client.deliver(frame("token.add", seq, f"t{seq}"), f"t{seq}")

        assert client.closing is None
        await drained(client, socket, 6)
        assert seqs(socket) == [1, 2, 3, 4, 5]


async def test_a_client_over_the_byte_bound_is_closed_with_1013_and_its_queue_dropped() -> None:
    async with outbox(outbox_max_bytes=10_000) as (client, socket):
        await stalled(client, socket)
        big = "x" * 4_000
        client.deliver(frame("map.set", 1, image_url=big))
        client.deliver(frame("map.set", 2, image_url=big))
        assert client.closing is None
        client.deliver(frame("map.set", 3, image_url=big))

        assert client.closing is not None
        assert client.closing.code == CloseCode.TRY_AGAIN_LATER
        socket.gate.set()
        await eventually(lambda: bool(socket.closes))
        assert socket.closes[0]["code"] == 1013
        assert len(socket.texts) == 1


async def test_conflated_moves_count_once_against_the_bounds() -> None:
    async with outbox(outbox_max_messages=3, outbox_max_bytes=2_000) as (client, socket):
        await stalled(client, socket)
        for seq in range(1, 10_001):
            client.deliver(move(seq, "t1", seq * 1.5), "t1", is_move=True)
            client.deliver(move(seq, "t2", seq), "t2", is_move=True)

        assert client.closing is None
        await drained(client, socket, 3)
        assert sorted(seqs(socket)) == [10_000, 10_000]


async def test_frames_delivered_after_the_close_are_ignored() -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
        client.deliver(frame("fog.update", 1))

        socket.gate.set()
        await eventually(lambda: bool(socket.closes))
        assert len(socket.texts) == 1


# --- the close frame --------------------------------------------------------------------------


async def test_the_writer_sends_the_close_frame_and_stops() -> None:
    socket = StallingSocket()
    identity = Identity(user_id="u1", claims={}, expires_at=0.0)
    client = Client(socket, Actor("u1", "gm"), identity, "c1", Settings(env="test"), Metrics())
    client.deliver(frame("token.add", 1, "t1"), "t1")
    await eventually(lambda: len(socket.texts) == 1)

    client.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
    writer = client.writer
    assert writer is not None

    async with asyncio.timeout(TIMEOUT):
        await writer
    assert client.writer is None
    assert socket.closes == [
        {"type": "websocket.close", "code": 1008, "reason": "sustained flooding"}
    ]


async def test_the_close_frame_follows_the_frame_in_flight_once_the_socket_drains() -> None:
    async with outbox() as (client, socket):
        await stalled(client, socket)
        client.deliver(frame("fog.update", 1))
        client.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

        assert socket.closes == []
        socket.gate.set()
        await eventually(lambda: bool(socket.closes))
        assert [m["type"] for m in socket.sent] == ["websocket.send", "websocket.close"]
        assert socket.closes[0]["code"] == 1013


async def test_a_writer_whose_socket_went_away_ends_quietly() -> None:
    async def gone(message: Message) -> None:
        raise OSError("connection reset")

    identity = Identity(user_id="u1", claims={}, expires_at=0.0)
    client = Client(gone, Actor("u1", "gm"), identity, "c1", Settings(env="test"), Metrics())
    client.deliver(frame("token.add", 1, "t1"), "t1")
    writer = client.writer
    assert writer is not None

    async with asyncio.timeout(TIMEOUT):
        await writer
    assert client.writer is None


# --- frames written straight to an idle socket ------------------------------------------------


def framed(text: str) -> bytes:
    """`text` as the ready-made WebSocket frame the session shares between recipients."""
    return text_frame(text.encode())


async def test_a_frame_for_an_idle_writable_socket_is_written_at_once() -> None:
    async with outbox() as (client, socket):
        direct = direct_to(client)
        text = move(1, "t1", 1)

        client.deliver(text, "t1", is_move=True, frame=framed(text))

        assert direct.written == [framed(text)]
        assert not client.queued
        assert socket.sent == []


async def test_a_frame_never_overtakes_the_frame_the_writer_has_in_flight() -> None:
    async with outbox() as (client, socket):
        direct = direct_to(client)
        await stalled(client, socket)
        text = frame("token.add", 1, "t1")

        client.deliver(text, "t1", frame=framed(text))

        assert direct.written == []
        await drained(client, socket, 2)
        assert seqs(socket) == [1]


async def test_a_frame_never_overtakes_what_was_queued_before_the_writer_started() -> None:
    # A join queues state.sync before the writer task exists; an event published right after
    # must still arrive after it.
    socket = StallingSocket()
    client = new_client(socket)
    direct = direct_to(client)
    client.deliver(frame("state.sync", 4))
    client.deliver(frame("map.list", 4))
    event = move(5, "t1", 1)
    client.deliver(event, "t1", is_move=True, frame=framed(event))

    assert direct.written == []
    try:
        await eventually(lambda: len(socket.texts) == 3)
        assert [f["type"] for f in socket.frames] == ["state.sync", "map.list", "token.move"]
        await eventually(lambda: client.writer is None)
    finally:
        async with asyncio.timeout(TIMEOUT):
            await client.stop()


async def test_a_frame_for_a_socket_that_cannot_take_it_is_queued_for_the_writer() -> None:
    async with outbox() as (client, socket):
        direct = direct_to(client)
        direct.writable.clear()
        text = frame("fog.update", 1)

        client.deliver(text, frame=framed(text))

        await eventually(lambda: len(socket.texts) == 1)
        assert direct.written == []
        assert socket.texts == [text]


async def test_frames_go_straight_to_the_socket_again_once_the_writer_has_caught_up() -> None:
    async with outbox() as (client, socket):
        direct = direct_to(client)
        await stalled(client, socket)
        queued = frame("token.add", 1, "t1")
        client.deliver(queued, "t1", frame=framed(queued))
        await drained(client, socket, 2)
        await eventually(lambda: client.writer is None)
        later = move(2, "t1", 5)

        client.deliver(later, "t1", is_move=True, frame=framed(later))

        assert [f["seq"] for f in direct.frames] == [2]


async def test_a_closing_client_gets_nothing_written_straight_to_its_socket() -> None:
    async with outbox() as (client, socket):
        direct = direct_to(client)
        client.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
        text = frame("fog.update", 1)

        client.deliver(text, frame=framed(text))

        assert direct.written == []
        await eventually(lambda: bool(socket.closes))
