"""uvicorn's websockets-sansio protocol, adapted: the one module that knows its internals.

`python -m app` hands `AdaptedProtocol` to uvicorn as `Config(ws=...)`. What it changes, each
by overriding a method (tests/unit/test_transport_contract.py records the source of every
uvicorn and websockets method this relies on, and fails naming the one an upgrade changed):

- once the connection is open, its bytes are cut into whole frames here: a complete, final,
  masked text frame (the hot path: one per client message) is unmasked and handed on without
  websockets' parser; every other frame (control frames, fragments, compressed, binary, one
  split across reads, anything malformed) goes to websockets whole, so its parser only ever
  sees whole frames and stays at a frame boundary between them;
- a complete message goes first to the app's taker, if the app registered one and its reader
  is waiting with nothing queued: a message it takes is handled within this callback, with no
  queue hand-off and no task wake-up; else it waits in an Inbox, and reading pauses only once
  READ_AHEAD messages wait;
- when its frames are shareable (no per-message compression), the app finds a FrameSocket
  in `scope["extensions"][SOCKET_EXTENSION]`, to write ready-made frames straight to the
  transport; any other WebSocket implementation publishes none and keeps the ASGI path;
- the connection comes with the addresses the HTTP protocol found (`taken_over`), and the
  upgrade request as httptools parsed it (HeaderDeadlineProtocol): one that
  websockets would accept as it stands (GET, `Upgrade: websocket`, `Connection` naming
  upgrade, one valid key, version 13, no body, no subprotocol or extension to negotiate) opens
  here, its scope built from the parsed headers and its 101 written directly, without
  serializing it for websockets to parse a second time; any other goes to websockets as
  uvicorn sends it, which answers it as it always did;
- the 101 of a request opened here is held for the rest of the loop's turn that accepted it:
  the frames the app writes in that turn (a join's greeting) go out with it in one write, and
  any other write (a close, a pong) releases it first;
- the handshake's request and response are released once the connection is accepted;
- an unanswered keepalive ping drops the socket even when its send buffer is full;
- on a server shutdown, a connection whose app writes through the FrameSocket is told
  (`websocket.disconnect` 1012) and stays open for the app to send what it still owes and
  close with 1012 itself; one the app has not closed within SHUTDOWN_GRACE is closed as
  uvicorn closes it;
- a connection whose shutdown raises is dropped, so uvicorn's shutdown (and after it the
  lifespan's final flush) goes on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
from collections.abc import Generator
from typing import Any
from urllib.parse import unquote

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent, WebSocketAcceptEvent
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import OPEN, Protocol
from websockets.utils import accept_key

from app.connection import SOCKET_EXTENSION, FrameSocket, Taker

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships the C speedups for this platform
    from websockets.utils import apply_mask

log = logging.getLogger("vtt.transport")

# Messages a connection may have waiting for the app before its socket stops being read.
READ_AHEAD = 16
# How long a server shutdown waits for the app to close a connection (1012) itself.
SHUTDOWN_GRACE = 3.0


# What websockets' request parser refuses (websockets.http11): a header value or name with
# other bytes than these, more headers, a longer line (its CRLF included).
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_MOST_HEADERS = 128
_LONGEST_LINE = 8192
# Headers that send a request the long way: a body, or a subprotocol to negotiate. Offered
# extensions (every browser offers permessage-deflate) are ignored unless the server has
# some, as websockets ignores them; with some, every request goes the long way.
_NEGOTIATED = frozenset({b"content-length", b"transfer-encoding", b"sec-websocket-protocol"})
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)

# The first byte of a final text frame with no reserved bit set (no compression).
_FINAL_TEXT = 0x81
_MASKED = 0x80


class TransportSocket:
    """One connection's transport as the app may use it: the FrameSocket seam."""

    __slots__ = ("_protocol", "_transport", "_writable")

    def __init__(self, protocol: AdaptedProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._writable = protocol.writable

    def writable(self) -> bool:
        """Whether a frame written now goes out at once, in order, on an open connection."""
        # uvicorn closes the transport on every way a connection ends (a close from the peer,
        # a ping timeout, a lost connection, shutdown); our own close stops delivery first.
        return not self._protocol.write_paused and not self._transport.is_closing()

    async def wait_writable(self) -> None:
        """Wait until the send buffer drained below its low-water mark, or the socket ended."""
        await self._writable.wait()

    def write(self, frame: bytes) -> None:
        """Hand one frame to the transport (after the 101, if it is still held)."""
        protocol = self._protocol
        if protocol.switching is not None:
            frame = protocol.release_switching() + frame
        self._transport.write(frame)

    def try_write(self, frame: bytes) -> bool:
        """Write `frame` when it goes out at once, in order, on an open connection (`writable`)."""
        protocol = self._protocol
        transport = self._transport
        if protocol.write_paused or transport.is_closing():
            return False
        if protocol.switching is not None:
            frame = protocol.release_switching() + frame
        transport.write(frame)
        return True

    def abort(self) -> None:
        """Drop the connection now, whatever its send buffer still holds."""
        self._transport.abort()

    def take_messages(self, taker: Taker | None) -> None:
        """Offer each complete text message to `taker` while the app's reader waits idle."""
        self._protocol.taker = taker

    def draining(self) -> bool:
        """Whether the server is shutting down and waits for the app to close (1012)."""
        return self._protocol.drain_timer is not None


class Inbox:
    """The messages uvicorn's protocol hands the app, in order: what it uses of asyncio.Queue.

    An asyncio.Queue holds three deques and an Event for every connection, most of it for
    waiters and producers this protocol never has (one reader, no bound). This holds a list
    and, only while the app waits for a message, one future (docs/BENCHMARKS.md: idle memory).
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[ASGIReceiveEvent] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        """Append a message and wake the app if it is waiting."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> ASGIReceiveEvent:
        """The oldest message, waiting for one when there is none."""
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        """Whether no message waits."""
        return not self._items

    def idle(self) -> bool:
        """Whether the app waits for a message and none is queued: it would take the next now."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._items

    def qsize(self) -> int:
        """How many messages wait."""
        return len(self._items)


class AdaptedProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sansio WebSocket protocol with the changes the module docstring lists."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.inbox = Inbox()
        self.queue = self.inbox  # type: ignore[assignment]
        # `writable` as a plain flag, for the hot path (set when the send buffer is full).
        self.write_paused = False
        # Who takes complete text messages before the Inbox (the app's Connection), if anyone.
        self.taker: Taker | None = None
        # Set while a server shutdown waits for the app to close this connection.
        self.drain_timer: asyncio.TimerHandle | None = None
        # Cutting frames here: on once the connection opened at a frame boundary. `_held` is
        # the start of a frame header split across reads; `_owed` the bytes of a frame that
        # websockets is being fed piecewise, which go to it as they come.
        self._cutting = False
        self._held = b""
        self._owed = 0
        limits = [n for n in (self.conn.max_message_size, self.conn.max_fragment_size) if n]
        # The largest frame taken here; a bigger one goes to websockets, which refuses it.
        self._largest = min(limits, default=math.inf)
        # Sec-WebSocket-Accept of a request opened here (`upgrade`), until its 101 is sent.
        self._accept_header: bytes | None = None
        # The 101 of a request opened here, held until the end of the loop's turn that
        # accepted it or the first write, whichever comes first (`_switch`).
        self.switching: bytes | None = None

    def taken_over(
        self,
        transport: asyncio.Transport,
        server: tuple[str, int | None] | None,
        client: tuple[str, int] | None,
        tls: bool,
    ) -> None:
        """`connection_made` for a connection the HTTP protocol hands over, with the socket's
        addresses it found: uvicorn's own asks the socket for them again (two system calls)."""
        self.connections.add(self)
        self.transport = transport
        self.server = server
        self.client = client
        self.scheme = "wss" if tls else "ws"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{client[0]}:{client[1]} - " if (client := self.client) else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sWebSocket connection made", prefix)

    def upgrade(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Take the upgrade request httptools parsed (lowercase header names): open it here when
        websockets would accept it as it stands, else hand it to websockets as uvicorn does.

        Opened here, it is what uvicorn's handle_connect makes of it, from the parsed headers:
        the scope, the app's task; websockets' parser starts at the frame stage, and `send`
        writes the 101 itself.
        """
        accept = None if self.conn.available_extensions else _accept_header(method, target, headers)
        if accept is None:
            self.data_received(_serialized(method, target, headers))
            return
        conn = self.conn
        conn.parser.close()
        conn.parser = Protocol.parse(conn)
        next(conn.parser)
        self._accept_header = accept
        self.handshake_initiated = True
        raw_path, _, query_string = target.partition(b"?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path.decode("ascii")),
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def run_asgi(self) -> None:
        """Run the app as uvicorn does, its socket published and the request released first.

        uvicorn built the scope from the request and accepted its extensions already. The
        request's headers alone are kilobytes, and its path holds the token; websockets'
        parser keeps the request object itself for the life of the connection, so it is
        emptied as well as dropped.
        """
        if not self.conn.extensions:
            socket: FrameSocket = TransportSocket(self)
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[SOCKET_EXTENSION] = socket
        if self._accept_header is None:
            request = self.request
            request.path = ""
            request.headers.clear()
            self.request = None  # type: ignore[assignment]
        await super().run_asgi()

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does; once accepted, drop the handshake response it kept.

        Cutting frames starts here when websockets' parser waits at a frame boundary (it does
        unless the client sent frames before it had the response).
        """
        if self.switching is not None:
            self._write_switching()
        if (
            message["type"] == "websocket.accept"
            and self._accept_header is not None
            and not self.handshake_complete
            and self.initial_response is None
        ):
            await self._switch(message)
        else:
            await super().send(message)
        if message["type"] == "websocket.accept":
            self.response = None  # type: ignore[assignment]
            conn = self.conn
            self._cutting = (
                conn.state is OPEN and not conn.reader.buffer and _waits_for_a_frame(conn.parser)
            )

    async def _switch(self, message: WebSocketAcceptEvent) -> None:
        """Accept a request opened here as uvicorn's `send` accepts: the 101 with uvicorn's
        default headers, the app's headers and subprotocol, keepalive started."""
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        assert self._accept_header is not None
        lines = [_SWITCHING, self._accept_header, b"\r\n"]
        for name, value in (*self.default_headers, *message.get("headers", [])):
            lines += [name.lower(), b": ", value, b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines += [b"Sec-WebSocket-Protocol: ", subprotocol.encode(), b"\r\n"]
        lines.append(b"\r\n")
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.conn.state = OPEN
            # Held for the rest of this turn: what the app writes in it (a join's greeting)
            # goes out with the 101 in one write. Every write after it releases it first.
            self.switching = b"".join(lines)
            self.loop.call_soon(self._write_switching)
            self.start_keepalive()

    def release_switching(self) -> bytes:
        """The held 101 (see `_switch`), to be written before anything else; no longer held."""
        switching = self.switching
        assert switching is not None
        self.switching = None
        return switching

    def _write_switching(self) -> None:
        if self.switching is not None:
            switching = self.release_switching()
            if not self.transport.is_closing():
                self.transport.write(switching)

    def data_received(self, data: bytes) -> None:
        """Cut what arrived into frames once open (see the module docstring); else as uvicorn."""
        if self.switching is not None:
            # What websockets answers (a pong, a close) goes after the 101.
            self._write_switching()
        if self._held:
            data, self._held = self._held + data, b""
        size = len(data)
        pos = 0
        while pos < size:
            if not self._cutting:
                super().data_received(data[pos:])
                return
            owed = self._owed
            if owed:
                end = min(size, pos + owed)
                self._owed = owed - (end - pos)
                self._feed(data[pos:end])
                pos = end
                continue
            header = _frame_header(data, pos)
            if header is None:
                self._held = data[pos:]
                return
            start, length = header
            end = start + length
            if (
                data[pos] == _FINAL_TEXT
                and data[pos + 1] & _MASKED
                and end <= size
                and length <= self._largest
                and self.conn.current_size is None
            ):
                payload = apply_mask(data[start:end], data[start - 4 : start])
                pos = end
                self._message(payload)
                continue
            # Not the hot path's frame, or not all here: websockets takes it, whole or as it
            # comes (one too big for the limit, it refuses from the header alone).
            end = min(size, end)
            self._owed = start + length - end
            self._feed(data[pos:end])
            pos = end

    def _feed(self, data: bytes) -> None:
        """Hand bytes of whole frames (or of the one being fed) to websockets, as uvicorn does."""
        super().data_received(data)
        if self.conn.state is not OPEN:
            # Closing or failed: websockets reads the rest, whatever it is.
            self._cutting = False

    def _message(self, payload: bytes) -> None:
        """A complete text message cut here: as send_receive_event_to_app would have it."""
        if self.close_sent:
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self._invalid_utf8()
            return
        self._deliver_text(text)

    def _invalid_utf8(self) -> None:
        # As uvicorn does: a text frame must be UTF-8 (RFC 6455), else close 1007.
        self.logger.info("invalid UTF-8 in a text frame; closing with 1007")
        self._cutting = False
        self.conn.send_close(1007)
        self.handle_parser_exception()

    def _deliver_text(self, text: str) -> None:
        taker = self.taker
        if taker is not None and self.inbox.idle() and taker(text):
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        self._read_ahead()

    def _read_ahead(self) -> None:
        if not self.read_paused and self.queue.qsize() >= READ_AHEAD:
            self.read_paused = True
            self.transport.pause_reading()

    def send_receive_event_to_app(self) -> None:
        """Queue a complete message for the app; pause reading only when the app lags.

        uvicorn pauses the socket after every message and resumes it once the app took it:
        two event-loop registrations per message. Pausing only when READ_AHEAD messages
        wait keeps TCP back-pressure on a client the app cannot keep up with, at a fraction
        of the cost.
        """
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            self._message(data)
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
            self._read_ahead()

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn does; then websockets' parser is closed, freeing its protocol at once.

        The parser is a generator suspended inside the protocol that holds it, a reference
        cycle only the cyclic collector frees: uvicorn never feeds websockets the end of the
        stream, so the parser never returns. A connection lives long enough to reach the oldest
        generation, which is collected rarely (app/transport/serve.py), so every closed
        connection kept its protocol, reader buffer and close frame for many minutes: about
        1.6 KB per reconnect in the soak (docs/BENCHMARKS.md).
        """
        super().connection_lost(exc)
        self.conn.parser.close()
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None

    def pause_writing(self) -> None:
        """As uvicorn does (`writable` cleared), and the flag set."""
        super().pause_writing()
        self.write_paused = True

    def resume_writing(self) -> None:
        """As uvicorn does (`writable` set), and the flag cleared."""
        super().resume_writing()
        self.write_paused = False

    def keepalive_timeout(self) -> None:
        """Handle a ping timeout as uvicorn does, then drop the socket at once.

        uvicorn answers with `transport.close()`, which waits for the buffer to drain: a peer
        that stopped reading never lets it, so the app would never hear of the disconnect.
        """
        super().keepalive_timeout()
        self.transport.abort()

    def shutdown(self) -> None:
        """Tell the app the server is shutting down, and close once it did or SHUTDOWN_GRACE
        passed; a connection the app does not write to directly is closed as uvicorn does.

        uvicorn sends the close frame at once and closes the socket: what the app applied
        but had not sent yet (a merged move it applies on the disconnect, a broadcast waiting
        for the op log) never reached the client, whose resume point was then behind the
        stored state. The app sees the same `websocket.disconnect` 1012 while the socket is
        still open (`TransportSocket.draining`), sends what it owes, then closes with 1012.
        """
        if self.switching is not None:
            self._write_switching()
        if (
            not self.handshake_complete
            or self.conn.extensions
            or self.close_sent
            or self.transport.is_closing()
            or self.drain_timer is not None
        ):
            self._shutdown_now()
            return
        self.stop_keepalive()
        self.taker = None
        self.drain_timer = self.loop.call_later(SHUTDOWN_GRACE, self._drain_expired)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1012})

    def _drain_expired(self) -> None:
        self.drain_timer = None
        self._shutdown_now()

    def _shutdown_now(self) -> None:
        """Shut down as uvicorn does; a connection that fails to is dropped instead.

        uvicorn shuts connections down one by one and only then runs the lifespan shutdown,
        where the final flush lives. One connection raising here (a handshake whose request
        line was too long makes uvicorn's sansio protocol fail an assertion) would end the
        server's shutdown before the flush.
        """
        try:
            super().shutdown()
        except Exception:
            log.exception("a connection failed to shut down; dropping it")
            self.transport.abort()


def _accept_header(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """Sec-WebSocket-Accept for a request websockets would accept as it stands, with nothing
    to negotiate; None for any other (websockets then judges it)."""
    if (
        method != "GET"
        or len(headers) > _MOST_HEADERS
        or len(method) + len(target) + 11 > _LONGEST_LINE
        or not target.isascii()
    ):
        return None
    names = [name for name, _ in headers]
    if (
        not all(names)
        or b"".join(names).translate(None, _TOKEN_BYTES)
        or b"".join([value for _, value in headers]).translate(None, _VALUE_BYTES)
    ):
        return None
    connection = False
    upgrade = key = version = None
    origins = 0
    for name, value in headers:
        if len(name) + len(value) + 4 > _LONGEST_LINE or name in _NEGOTIATED:
            return None
        if name == b"connection":
            options = [option.strip() for option in value.split(b",")]
            if not all(options) or b"".join(options).translate(None, _TOKEN_BYTES):
                return None
            connection = connection or any(option.lower() == b"upgrade" for option in options)
        elif name == b"upgrade":
            if upgrade is not None:
                return None
            upgrade = value
        elif name == b"sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == b"sec-websocket-version":
            if version is not None:
                return None
            version = value
        elif name == b"origin":
            origins += 1
    if (
        not connection
        or upgrade is None
        or upgrade.lower() != b"websocket"
        or version != b"13"
        or key is None
        or origins > 1
    ):
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return accept_key(key.decode("ascii")).encode("ascii")


def _serialized(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request as uvicorn's handle_websocket_upgrade writes it for websockets to parse."""
    output = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        output += [name, b": ", value, b"\r\n"]
    output.append(b"\r\n")
    return b"".join(output)


def _frame_header(data: bytes, pos: int) -> tuple[int, int] | None:
    """Where the payload of the frame at `pos` starts and how long it is; None when the header
    is not all here. A masked frame's 4 mask bytes are part of the header."""
    available = len(data) - pos
    if available < 2:
        return None
    second = data[pos + 1]
    length = second & 0x7F
    start = pos + 2
    if length == 126:
        if available < 4:
            return None
        length = int.from_bytes(data[start : start + 2], "big")
        start += 2
    elif length == 127:
        if available < 10:
            return None
        length = int.from_bytes(data[start : start + 8], "big")
        start += 8
    if second & _MASKED:
        start += 4
    if start > len(data):
        return None
    return start, length


def _waits_for_a_frame(parser: Generator[None]) -> bool:
    """Whether websockets' parser is suspended between frames (waiting for a frame's first
    byte), not inside one: the generator it is suspended in is the reader's `at_eof`."""
    inner: Any = parser
    while inner.gi_yieldfrom is not None:
        inner = inner.gi_yieldfrom
    return bool(inner.gi_code.co_name == "at_eof")
