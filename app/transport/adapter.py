"""uvicorn's websockets-sansio protocol, adapted: the one module that knows its internals.

`python -m app` hands `AdaptedProtocol` to uvicorn as `Config(ws=...)`. What it changes, each
by overriding a method (tests/unit/test_transport_contract.py records the source of every
uvicorn and websockets method this relies on, and fails naming the one an upgrade changed):

- messages wait in an Inbox, and reading pauses only once READ_AHEAD of them wait;
- when its frames are shareable (no per-message compression), the app finds a FrameSocket
  in `scope["extensions"][SOCKET_EXTENSION]`, to write ready-made frames straight to the
  transport; any other WebSocket implementation publishes none and keeps the ASGI path;
- the handshake's request and response are released once the connection is accepted;
- an unanswered keepalive ping drops the socket even when its send buffer is full;
- a connection whose shutdown raises is dropped, so uvicorn's shutdown (and after it the
  lifespan's final flush) goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from app.connection import SOCKET_EXTENSION, FrameSocket

log = logging.getLogger("vtt.transport")

# Messages a connection may have waiting for the app before its socket stops being read.
READ_AHEAD = 16


class TransportSocket:
    """One connection's transport as the app may use it: the FrameSocket seam."""

    __slots__ = ("_transport", "_writable")

    def __init__(self, transport: asyncio.Transport, writable: asyncio.Event) -> None:
        self._transport = transport
        self._writable = writable

    def writable(self) -> bool:
        """Whether a frame written now goes out at once, in order, on an open connection."""
        # uvicorn closes the transport on every way a connection ends (a close from the peer,
        # a ping timeout, a lost connection, shutdown); our own close stops delivery first.
        return self._writable.is_set() and not self._transport.is_closing()

    async def wait_writable(self) -> None:
        """Wait until the send buffer drained below its low-water mark, or the socket ended."""
        await self._writable.wait()

    def write(self, frame: bytes) -> None:
        """Hand one frame to the transport."""
        self._transport.write(frame)

    def abort(self) -> None:
        """Drop the connection now, whatever its send buffer still holds."""
        self._transport.abort()


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
        self.queue = Inbox()  # type: ignore[assignment]

    async def run_asgi(self) -> None:
        """Run the app as uvicorn does, its socket published and the request released first.

        uvicorn built the scope from the request and accepted its extensions already. The
        request's headers alone are kilobytes, and its path holds the token; websockets'
        parser keeps the request object itself for the life of the connection, so it is
        emptied as well as dropped.
        """
        if not self.conn.extensions:
            socket: FrameSocket = TransportSocket(self.transport, self.writable)
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[SOCKET_EXTENSION] = socket
        request = self.request
        request.path = ""
        request.headers.clear()
        self.request = None  # type: ignore[assignment]
        await super().run_asgi()

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does; once accepted, drop the handshake response it kept."""
        await super().send(message)
        if message["type"] == "websocket.accept":
            self.response = None  # type: ignore[assignment]

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

    def keepalive_timeout(self) -> None:
        """Handle a ping timeout as uvicorn does, then drop the socket at once.

        uvicorn answers with `transport.close()`, which waits for the buffer to drain: a peer
        that stopped reading never lets it, so the app would never hear of the disconnect.
        """
        super().keepalive_timeout()
        self.transport.abort()

    def shutdown(self) -> None:
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
