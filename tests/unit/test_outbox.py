"""A connection's outbox and writer, driven through a fake peer that stalls like a slow socket.

Every outbox test runs twice: with a FrameSocket (what uvicorn's sansio protocol publishes
through the adapter) and with the ASGI `send` alone (any other WebSocket implementation).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message

from app.auth import Identity
from app.config import Settings
from app.connection import SOON, Connection, Taker, text_of
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.model import Actor
from app.protocol import text_frame
from app.rules import new_state
from app.session import Outgoing, Session
from tests.support.fakes import campaign_chat

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


class FakePeer:
    """Both ways a connection writes: an ASGI `send` and a FrameSocket, stalled by one gate.

    `started` counts writes that began (an ASGI send called, or a wait for writability), so
    a test can see the writer holding a frame in flight.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0
        self.aborted = False
        self.writes = 0

    async def __call__(self, message: Message) -> None:
        """The ASGI send: wait until the socket can take `message`, then record it."""
        self.started += 1
        await self.gate.wait()
        self.messages.append(message)

    def writable(self) -> bool:
        """The FrameSocket is writable while the gate is open."""
        return self.gate.is_set() and not self.aborted

    async def wait_writable(self) -> None:
        """Wait for the gate."""
        self.started += 1
        await self.gate.wait()

    def write(self, data: bytes) -> None:
        """Take ready-made frames (one, or a batch's in one write), as the transport would."""
        assert self.writable(), "a frame was written to a socket that could not take it"
        self.writes += 1
        while data:
            length = data[1] & 0x7F
            start = 2 if length < 126 else 4 if length == 126 else 10
            if length >= 126:
                length = int.from_bytes(data[2:start], "big")
            frame, data = data[: start + length], data[start + length :]
            self.messages.append({"type": "websocket.send", "text": text_of(frame)})

    def try_write(self, data: bytes) -> bool:
        """Write when writable; whether it was."""
        if not self.writable():
            return False
        self.write(data)
        return True

    def abort(self) -> None:
        """Drop the connection."""
        self.aborted = True

    def take_messages(self, taker: Taker | None) -> None:
        """This peer sends no messages: there is nothing to offer."""

    def draining(self) -> bool:
        """No server shutdown reaches this socket."""
        return False

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The text frames that reached the peer, decoded, in order."""
        return [json.loads(m["text"]) for m in self.messages if m["type"] == "websocket.send"]

    @property
    def closes(self) -> list[Message]:
        """The close messages that reached the peer."""
        return [m for m in self.messages if m["type"] == "websocket.close"]


@pytest.fixture(params=["frame socket", "asgi send"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Whether the connection has a FrameSocket, or only the ASGI send."""
    return bool(request.param == "frame socket")


async def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Yield to the loop until `check()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await asyncio.sleep(0.001)


def new_connection(
    peer: FakePeer, direct: bool, role: str = "player", **overrides: Any
) -> Connection:
    """A connection writing to `peer`, with `overrides` to the default settings."""
    settings = replace(Settings(env="test"), **overrides)
    identity = Identity(user_id="u1", claims={}, expires_at=0.0)
    actor = Actor("u1", "gm" if role == "gm" else "player")
    return Connection(peer, peer if direct else None, actor, identity, "c1", settings, Metrics())


@asynccontextmanager
async def outbox(direct: bool, **overrides: Any) -> AsyncIterator[tuple[Connection, FakePeer]]:
    """A connection on a fake peer; its writer, if any, is stopped afterwards."""
    peer = FakePeer()
    connection = new_connection(peer, direct, **overrides)
    try:
        yield connection, peer
    finally:
        async with asyncio.timeout(TIMEOUT):
            await connection.stop()


async def stalled(connection: Connection, peer: FakePeer) -> None:
    """Shut the gate and make the writer hold one frame in flight, so later frames queue."""
    peer.gate.clear()
    connection.deliver(frame("hello", 0))
    await eventually(lambda: peer.started == 1)


def frame(kind: str, seq: int, token_id: str | None = None, **payload: Any) -> Outgoing:
    """A server message as the session hands it over."""
    body: dict[str, Any] = dict(payload)
    if token_id is not None:
        body["token_id"] = token_id
    data = json.dumps({"type": kind, "seq": seq, "payload": body}).encode()
    return Outgoing(text_frame(data), kind, token_id, kind == "token.move")


def move(seq: int, token_id: str, x: float) -> Outgoing:
    """A token.move."""
    return frame("token.move", seq, token_id, x=x, y=0)


def seqs(peer: FakePeer) -> list[int]:
    """The seq of every frame sent after the first (the one that stalled the writer)."""
    return [f["seq"] for f in peer.frames[1:]]


async def drained(connection: Connection, peer: FakePeer, count: int) -> None:
    """Open the gate and wait until `count` text frames went out."""
    peer.gate.set()
    await eventually(lambda: len(peer.frames) >= count)
    await eventually(lambda: not connection.queued)


@given(st.binary(max_size=70_000).map(lambda raw: raw.decode("utf-8", "replace").encode()))
def test_the_text_of_a_frame_is_the_payload_it_was_built_from(payload: bytes) -> None:
    assert text_of(text_frame(payload)) == payload.decode()


# --- conflation -------------------------------------------------------------------------------


async def test_frames_reach_an_idle_socket_in_the_order_they_were_delivered(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        connection.deliver(frame("token.add", 1, "t1"))
        connection.deliver(move(2, "t1", 1))
        connection.deliver(frame("fog.update", 3))

        await eventually(lambda: len(peer.frames) == 3)
        assert [f["seq"] for f in peer.frames] == [1, 2, 3]


async def test_a_queued_move_is_replaced_by_the_newer_move_of_the_same_token(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        for seq in range(1, 101):
            connection.deliver(move(seq, "t1", seq))

        assert connection.queued == 1, "the newer move takes the queued one's place"
        await drained(connection, peer, 2)
        assert peer.frames[1]["seq"] == 100
        assert peer.frames[1]["payload"]["x"] == 100


async def test_a_move_is_not_conflated_with_one_already_handed_to_the_socket(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        peer.gate.clear()
        connection.deliver(move(1, "t1", 1))
        await eventually(lambda: peer.started == 1)
        connection.deliver(move(2, "t1", 2))

        await drained(connection, peer, 2)
        assert [f["payload"]["x"] for f in peer.frames] == [1, 2]


async def test_moves_of_different_tokens_are_each_kept_with_their_latest_position(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        for seq in range(1, 31):
            connection.deliver(move(seq, f"t{seq % 3}", seq))

        await drained(connection, peer, 4)
        latest = {f["payload"]["token_id"]: f["payload"]["x"] for f in peer.frames[1:]}
        assert latest == {"t0": 30, "t1": 28, "t2": 29}
        assert len(peer.frames) == 4


@pytest.mark.parametrize("kind", ["token.add", "token.update", "token.remove"])
async def test_a_move_never_jumps_over_another_event_about_the_same_token(
    kind: str, direct: bool
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(move(1, "t1", 1))
        connection.deliver(frame(kind, 2, "t1"))
        connection.deliver(move(3, "t1", 3))

        await drained(connection, peer, 4)
        assert seqs(peer) == [1, 2, 3]


@pytest.mark.parametrize("kind", ["fog.update", "map.set", "map.list", "scene.darkness", "pong"])
async def test_a_move_never_jumps_over_an_event_that_is_not_about_a_token(
    kind: str, direct: bool
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(move(1, "t1", 1))
        connection.deliver(frame(kind, 2))
        connection.deliver(move(3, "t1", 3))

        await drained(connection, peer, 4)
        assert seqs(peer) == [1, 2, 3]


async def test_a_move_after_a_non_token_event_still_conflates_with_later_moves(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(move(1, "t1", 1))
        connection.deliver(frame("fog.update", 2))
        for seq in range(3, 10):
            connection.deliver(move(seq, "t1", seq))

        await drained(connection, peer, 4)
        assert seqs(peer) == [1, 2, 9]


async def test_conflation_across_another_tokens_move_never_sends_seqs_out_of_order(
    direct: bool,
) -> None:
    # Sequencing promises that seqs only increase within one connection, and a resuming client
    # reconnects with the last seq it saw: a move that jumped ahead would hide the events behind it.
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(move(10, "t1", 1))
        connection.deliver(move(11, "t2", 1))
        connection.deliver(move(12, "t1", 2))

        await drained(connection, peer, 3)
        sent = seqs(peer)
        assert 10 not in sent, "the superseded move is not sent"
        assert 11 in sent
        assert 12 in sent
        assert sent == sorted(sent), f"seqs went backwards: {sent}"


# --- bounds -----------------------------------------------------------------------------------


async def test_a_client_over_the_message_bound_is_closed_with_1013_and_its_queue_dropped(
    direct: bool,
) -> None:
    async with outbox(direct, outbox_max_messages=5) as (connection, peer):
        await stalled(connection, peer)
        for seq in range(1, 7):
            connection.deliver(frame("token.add", seq, f"t{seq}"))

        assert connection.closing is not None
        assert connection.closing.code == CloseCode.TRY_AGAIN_LATER
        assert not connection.queued
        peer.gate.set()
        await eventually(lambda: bool(peer.closes))
        assert peer.closes == [
            {"type": "websocket.close", "code": 1013, "reason": connection.closing.reason}
        ]
        assert len(peer.frames) == 1, "nothing that was queued is sent after the close"


async def test_a_client_at_the_message_bound_is_not_closed(direct: bool) -> None:
    async with outbox(direct, outbox_max_messages=5) as (connection, peer):
        await stalled(connection, peer)
        for seq in range(1, 6):
            connection.deliver(frame("token.add", seq, f"t{seq}"))

        assert connection.closing is None
        await drained(connection, peer, 6)
        assert seqs(peer) == [1, 2, 3, 4, 5]


async def test_a_client_over_the_byte_bound_is_closed_with_1013_and_its_queue_dropped(
    direct: bool,
) -> None:
    async with outbox(direct, outbox_max_bytes=10_000) as (connection, peer):
        await stalled(connection, peer)
        big = "x" * 4_000
        connection.deliver(frame("map.set", 1, image_url=big))
        connection.deliver(frame("map.set", 2, image_url=big))
        assert connection.closing is None
        connection.deliver(frame("map.set", 3, image_url=big))

        assert connection.closing is not None
        assert connection.closing.code == CloseCode.TRY_AGAIN_LATER
        peer.gate.set()
        await eventually(lambda: bool(peer.closes))
        assert peer.closes[0]["code"] == 1013
        assert len(peer.frames) == 1


async def test_conflated_moves_count_once_against_the_bounds(direct: bool) -> None:
    async with outbox(direct, outbox_max_messages=3, outbox_max_bytes=2_000) as (connection, peer):
        await stalled(connection, peer)
        for seq in range(1, 10_001):
            connection.deliver(move(seq, "t1", seq * 1.5))
            connection.deliver(move(seq, "t2", seq))

        assert connection.closing is None
        await drained(connection, peer, 3)
        assert sorted(seqs(peer)) == [10_000, 10_000]


async def test_frames_delivered_after_the_close_are_ignored(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
        connection.deliver(frame("fog.update", 1))

        peer.gate.set()
        await eventually(lambda: bool(peer.closes))
        assert len(peer.frames) == 1


# --- the close frame --------------------------------------------------------------------------


async def test_the_writer_sends_the_close_frame_and_stops(direct: bool) -> None:
    peer = FakePeer()
    connection = new_connection(peer, direct, role="gm")
    connection.deliver(frame("token.add", 1, "t1"))
    await eventually(lambda: len(peer.frames) == 1)

    connection.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
    writer = connection.writer
    assert writer is not None

    async with asyncio.timeout(TIMEOUT):
        await writer
    assert connection.writer is None
    assert peer.closes == [
        {"type": "websocket.close", "code": 1008, "reason": "sustained flooding"}
    ]


async def test_the_close_frame_follows_the_frame_in_flight_once_the_socket_drains(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(frame("fog.update", 1))
        connection.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

        assert peer.closes == []
        peer.gate.set()
        await eventually(lambda: bool(peer.closes))
        assert [m["type"] for m in peer.messages] == ["websocket.send", "websocket.close"]
        assert peer.closes[0]["code"] == 1013


async def test_a_writer_whose_asgi_socket_went_away_ends_quietly() -> None:
    async def gone(message: Message) -> None:
        raise OSError("connection reset")

    identity = Identity(user_id="u1", claims={}, expires_at=0.0)
    settings = Settings(env="test")
    connection = Connection(gone, None, Actor("u1", "gm"), identity, "c1", settings, Metrics())
    connection.deliver(frame("token.add", 1, "t1"))
    writer = connection.writer
    assert writer is not None

    async with asyncio.timeout(TIMEOUT):
        await writer
    assert connection.writer is None


async def test_a_writer_whose_frame_socket_ended_while_it_waited_ends_quietly() -> None:
    async with outbox(direct=True) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(frame("fog.update", 1))
        writer = connection.writer
        assert writer is not None

        peer.abort()
        peer.gate.set()

        async with asyncio.timeout(TIMEOUT):
            await writer
        assert peer.frames == []


# --- frames written straight to an idle socket ------------------------------------------------


async def test_a_frame_for_an_idle_writable_socket_is_written_at_once() -> None:
    async with outbox(direct=True) as (connection, peer):
        connection.deliver(move(1, "t1", 1))

        assert [f["seq"] for f in peer.frames] == [1], "written before any task could run"
        assert connection.writer is None
        assert peer.started == 0


async def test_frames_delivered_in_a_batch_go_out_in_one_write_in_order() -> None:
    async with outbox(direct=True) as (connection, peer):
        with connection.batch():
            connection.deliver(frame("state.sync", 1))
            connection.deliver(move(2, "t1", 1))
            connection.deliver(frame("presence.sync", 3))
            assert peer.writes == 0, "held until the batch ends"

        assert peer.writes == 1
        assert [f["type"] for f in peer.frames] == ["state.sync", "token.move", "presence.sync"]
        connection.deliver(frame("token.add", 4, "t2"))
        assert peer.writes == 2, "after the batch, frames go straight out again"


async def test_a_join_greets_in_one_write() -> None:
    async with outbox(direct=True) as (connection, peer):
        settings = Settings(env="test")
        session = Session(new_state("c1"), settings, Metrics(), campaign_chat("c1", settings))

        await session.join(connection)

        assert peer.writes == 1
        kinds = [f["type"] for f in peer.frames]
        assert kinds == ["state.sync", "map.list", "chat.history", "presence.sync", "presence.join"]


async def test_a_batch_closed_inside_writes_nothing() -> None:
    async with outbox(direct=True) as (connection, peer):
        with connection.batch():
            connection.deliver(frame("state.sync", 1))
            connection.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

        await eventually(lambda: connection.writer is None)
        assert peer.frames == []


async def test_a_batch_while_the_writer_drains_queues_behind_it() -> None:
    async with outbox(direct=True) as (connection, peer):
        await stalled(connection, peer)
        with connection.batch():
            connection.deliver(frame("token.add", 1, "t1"))
        peer.gate.set()

        await drained(connection, peer, 2)
        assert [f["type"] for f in peer.frames] == ["hello", "token.add"]


async def test_a_frame_never_overtakes_the_frame_the_writer_has_in_flight() -> None:
    async with outbox(direct=True) as (connection, peer):
        await stalled(connection, peer)
        peer.gate.set()
        connection.deliver(frame("token.add", 1, "t1"))

        assert peer.frames == [], "the writer's frame goes first"
        await drained(connection, peer, 2)
        assert [f["type"] for f in peer.frames] == ["hello", "token.add"]


async def test_a_frame_never_overtakes_what_was_queued_before_the_writer_ran() -> None:
    async with outbox(direct=True) as (connection, peer):
        peer.gate.clear()
        connection.deliver(frame("state.sync", 4))
        peer.gate.set()
        connection.deliver(move(5, "t1", 1))

        assert peer.frames == []
        await eventually(lambda: len(peer.frames) == 2)
        assert [f["type"] for f in peer.frames] == ["state.sync", "token.move"]


async def test_a_frame_for_a_socket_that_cannot_take_it_waits_for_the_writer() -> None:
    async with outbox(direct=True) as (connection, peer):
        peer.gate.clear()
        connection.deliver(frame("fog.update", 1))

        await eventually(lambda: peer.started == 1)
        assert peer.frames == []
        peer.gate.set()
        await eventually(lambda: len(peer.frames) == 1)


async def test_frames_go_straight_to_the_socket_again_once_the_writer_has_caught_up() -> None:
    async with outbox(direct=True) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(frame("token.add", 1, "t1"))
        await drained(connection, peer, 2)
        await eventually(lambda: connection.writer is None)

        connection.deliver(move(2, "t1", 5))

        assert [f["seq"] for f in peer.frames] == [0, 1, 2]
        assert connection.writer is None


async def test_a_closing_client_gets_nothing_written_straight_to_its_socket() -> None:
    async with outbox(direct=True) as (connection, peer):
        connection.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))

        connection.deliver(frame("fog.update", 1))

        assert peer.frames == []
        await eventually(lambda: bool(peer.closes))


# --- messages that may wait (deliver_soon) -------------------------------------------------------


async def test_messages_that_may_wait_go_out_with_the_next_one_in_one_write(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        connection.deliver_soon(frame("presence.join", 0, user="a"))
        connection.deliver_soon(frame("presence.join", 0, user="b"))
        if direct:
            assert peer.frames == [], "held for the next frame"
        connection.deliver(move(1, "t1", 5))

        await eventually(lambda: len(peer.frames) == 3)
        assert [f["type"] for f in peer.frames] == ["presence.join", "presence.join", "token.move"]
        assert peer.writes == (1 if direct else 0)


async def test_a_message_that_may_wait_goes_out_alone_once_soon_has_passed(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        asked = time.monotonic()
        connection.deliver_soon(frame("presence.join", 0, user="a"))

        await eventually(lambda: len(peer.frames) == 1)
        if direct:
            assert time.monotonic() - asked >= SOON * 0.9, "it waited for company"
        assert peer.frames[0]["payload"] == {"user": "a"}


async def test_messages_that_may_wait_keep_their_place_behind_a_stalled_writer(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(frame("fog.update", 1))
        connection.deliver_soon(frame("presence.join", 2))
        connection.deliver(frame("fog.update", 3))

        await drained(connection, peer, 4)
        assert seqs(peer) == [1, 2, 3]


async def test_messages_held_when_the_socket_stops_taking_frames_go_first_through_the_writer(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        connection.deliver_soon(frame("presence.join", 1))
        peer.gate.clear()
        connection.deliver(frame("fog.update", 2))
        connection.deliver(frame("fog.update", 3))

        await drained(connection, peer, 3)
        assert [f["seq"] for f in peer.frames] == [1, 2, 3]


async def test_a_close_drops_what_waits(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        connection.deliver_soon(frame("presence.join", 1))
        connection.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))

        await eventually(lambda: bool(peer.closes))
        assert peer.frames == []


async def test_the_end_of_a_connection_drops_what_waits_and_its_timer() -> None:
    async with outbox(True) as (connection, peer):
        connection.deliver_soon(frame("presence.join", 1))
        await connection.stop()

        assert connection._soon_timer is None
        assert peer.frames == []


# --- ephemeral signals ------------------------------------------------------------------------


def signal(kind: str, sender: str, x: float) -> Outgoing:
    """An ephemeral frame of `sender`'s lane for `kind` (cursor.move and cursor.hide share one)."""
    channel = kind.split(".")[0]
    data = json.dumps({"type": kind, "user_id": sender, "payload": {"x": x}}).encode()
    return Outgoing(text_frame(data), kind, signal=f"{channel} {sender}")


def signals_of(peer: FakePeer) -> list[tuple[str, str, float]]:
    """(type, sender, x) of every ephemeral frame that reached the peer."""
    return [
        (f["type"], f["user_id"], f["payload"].get("x", 0.0)) for f in peer.frames if "user_id" in f
    ]


async def test_a_queued_signal_is_replaced_by_the_newer_one_of_its_lane_across_other_frames(
    direct: bool,
) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(signal("cursor.move", "bob", 1))
        connection.deliver(frame("fog.update", 1))
        connection.deliver(signal("cursor.move", "cat", 1))
        connection.deliver(signal("cursor.move", "bob", 2))
        connection.deliver(signal("cursor.hide", "bob", 3))

        assert connection.queued == 3
        await drained(connection, peer, 4)
        assert [f["type"] for f in peer.frames[1:]] == ["fog.update", "cursor.move", "cursor.hide"]
        assert signals_of(peer) == [("cursor.move", "cat", 1), ("cursor.hide", "bob", 3)]
        dropped = connection.metrics.counts.dropped
        assert dropped["cursor.move", "coalesced"] == 2


async def test_signals_never_end_the_conflation_of_moves(direct: bool) -> None:
    async with outbox(direct) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(move(1, "t1", 1))
        connection.deliver(signal("cursor.move", "bob", 1))
        connection.deliver(move(2, "t1", 2))

        assert connection.queued == 2
        await drained(connection, peer, 3)
        assert [f["type"] for f in peer.frames[1:]] == ["cursor.move", "token.move"]


async def test_over_the_bound_the_queued_signals_are_dropped_before_anyone_is_closed(
    direct: bool,
) -> None:
    async with outbox(direct, outbox_max_messages=4) as (connection, peer):
        await stalled(connection, peer)
        for sender in ("bob", "cat", "dan"):
            connection.deliver(signal("cursor.move", sender, 1))
        connection.deliver(frame("token.add", 1, "t1"))
        connection.deliver(frame("token.add", 2, "t2"))

        assert connection.closing is None
        assert connection.queued == 2, "the three signals made room for what must arrive"
        dropped = connection.metrics.counts.dropped
        assert dropped["cursor.move", "backlog"] == 3
        await drained(connection, peer, 3)
        assert seqs(peer) == [1, 2]


async def test_a_client_over_the_bound_without_signals_to_drop_is_still_closed(
    direct: bool,
) -> None:
    async with outbox(direct, outbox_max_messages=2) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(signal("ruler.update", "bob", 1))
        for seq in range(1, 4):
            connection.deliver(frame("token.add", seq, f"t{seq}"))

        assert connection.closing is not None
        assert connection.closing.code == CloseCode.TRY_AGAIN_LATER


async def test_a_signal_that_would_overflow_a_full_queue_is_dropped_not_the_client(
    direct: bool,
) -> None:
    async with outbox(direct, outbox_max_messages=2) as (connection, peer):
        await stalled(connection, peer)
        connection.deliver(frame("token.add", 1, "t1"))
        connection.deliver(frame("token.add", 2, "t2"))
        connection.deliver(signal("pointer.ping", "bob", 1))

        assert connection.closing is None
        await drained(connection, peer, 3)
        assert seqs(peer) == [1, 2]


@settings(max_examples=40, deadline=None)
@given(
    deliveries=st.lists(
        st.tuples(
            st.sampled_from(["cursor.move", "cursor.hide", "ruler.update", "pointer.ping"]),
            st.sampled_from(["bob", "cat", "dan"]),
        ),
        max_size=200,
    )
)
async def test_a_socket_that_is_not_writable_queues_at_most_one_frame_per_lane(
    deliveries: list[tuple[str, str]],
) -> None:
    async with outbox(direct=True) as (connection, peer):
        await stalled(connection, peer)
        latest: dict[tuple[str, str], float] = {}
        for x, (kind, sender) in enumerate(deliveries):
            connection.deliver(signal(kind, sender, x))
            latest[kind.split(".")[0], sender] = x
            assert connection.queued <= len(latest)

        await drained(connection, peer, 1 + len(latest))
        written = {
            (f["type"].split(".")[0], f["user_id"]): f["payload"]["x"] for f in peer.frames[1:]
        }
        assert written == latest, "each lane's latest frame, once"
        assert len(peer.frames) == 1 + len(latest)
