"""Pre-framed fan-out: one WebSocket frame per audience, written straight to each socket.

A server's frames are unmasked, so the bytes of one text frame are the same for every
recipient. uvicorn's ASGI path would frame each message again for each client and wake each
client's writer task; when a socket is idle and writable this module writes the shared frame
to its transport instead. Only this module knows uvicorn's websockets-sansio protocol object;
any other WebSocket implementation, or per-message compression (whose frames differ per
socket), keeps the plain ASGI path.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn._types import ASGIReceiveEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

RAW_SEND = "vtt.raw_send"
# Messages a connection may have waiting for the app before its socket stops being read.
READ_AHEAD = 16


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame carrying `payload` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class DirectSocket:
    """One uvicorn WebSocket connection's transport: write ready-made frames, or drop it."""

    __slots__ = ("_protocol", "shares_frames")

    def __init__(self, protocol: Any, shares_frames: bool = True) -> None:
        self._protocol = protocol
        # False under per-message compression: then each socket's frames differ.
        self.shares_frames = shares_frames

    @classmethod
    def of(cls, scope: Scope) -> DirectSocket | None:
        """The socket of an accepted connection, or None when it is not uvicorn's sansio one."""
        send = scope.get("extensions", {}).get(RAW_SEND)
        protocol = getattr(send, "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        _drop_on_keepalive_timeout(protocol)
        # The handshake's request and response (their headers alone are kilobytes, and the
        # request's path holds the token) are only read while accepting; a connection that
        # lasts hours need not keep them. websockets' parser keeps the request object itself
        # for the life of the connection, so it is emptied as well as dropped.
        request = protocol.request
        if request is not None:
            request.path = ""
            request.headers.clear()
        protocol.request = protocol.response = None  # type: ignore[assignment]
        return cls(protocol, shares_frames=not protocol.conn.extensions)

    def writable(self) -> bool:
        """Whether a frame written now goes out at once, in order, on an open connection."""
        # uvicorn closes the transport on every way a connection ends (a close from the peer,
        # a ping timeout, a lost connection, shutdown); our own close stops delivery first.
        protocol = self._protocol
        return bool(protocol.writable.is_set() and not protocol.transport.is_closing())

    def write(self, frame: bytes) -> None:
        """Hand one frame to the transport."""
        self._protocol.transport.write(frame)

    def abort(self) -> None:
        """Drop the connection now, whatever its send buffer still holds."""
        self._protocol.transport.abort()


def _drop_on_keepalive_timeout(protocol: WebSocketsSansIOProtocol) -> None:
    """Make an unanswered keepalive ping drop the peer even when its send buffer is full.

    uvicorn answers a ping timeout with `transport.close()`, which waits for the buffer to
    drain: a peer that stopped reading never lets it, so the app would never hear of the
    disconnect. Aborting after uvicorn's own handling ends the connection at once.
    """
    handle_timeout = protocol.keepalive_timeout

    def keepalive_timeout() -> None:
        handle_timeout()
        protocol.transport.abort()

    protocol.keepalive_timeout = keepalive_timeout  # type: ignore[method-assign]


class Inbox:
    """The messages uvicorn's protocol hands the app, in order: what it uses of asyncio.Queue.

    An asyncio.Queue holds three deques and an Event, about 3 KB for every connection, most
    of it for waiters and producers this protocol never has (one reader, no bound). This
    holds a list and, only while the app waits for a message, one future.
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

    def qsize(self) -> int:
        """How many messages wait."""
        return len(self._items)


class ReadAheadProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sansio WebSocket protocol, reading ahead a few messages before it pauses.

    uvicorn pauses the socket after every message it hands to the app and resumes it once
    the app took it: two event-loop registrations per message. Pausing only when
    READ_AHEAD messages wait keeps TCP back-pressure on a client the app cannot keep up
    with, at a fraction of the cost. Its messages wait in an Inbox rather than an
    asyncio.Queue. `python -m app` runs uvicorn with this class.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = Inbox()  # type: ignore[assignment]

    def send_receive_event_to_app(self) -> None:
        """Queue a complete message for the app; pause reading only when the app lags."""
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                # As uvicorn does: a text frame must be UTF-8 (RFC 6455), else close 1007.
                self.logger.info("invalid UTF-8 in a text frame; closing with 1007")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            self.queue.put_nowait({"type": "websocket.receive", "text": text})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused and self.queue.qsize() >= READ_AHEAD:
            self.read_paused = True
            self.transport.pause_reading()


class RawSendMiddleware:
    """Records the server's own `send` of a WebSocket scope, before any wrapper hides it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Put `send` in the scope's extensions for WebSocket scopes."""
        if scope["type"] == "websocket":
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions[RAW_SEND] = send
        await self.app(scope, receive, send)
