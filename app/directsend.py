"""Pre-framed fan-out: one WebSocket frame per audience, written straight to each socket.

A server's frames are unmasked, so the bytes of one text frame are the same for every
recipient. uvicorn's ASGI path would frame each message again for each client and wake each
client's writer task; when a socket is idle and writable this module writes the shared frame
to its transport instead. Only this module knows uvicorn's websockets-sansio protocol object;
any other WebSocket implementation, or per-message compression (whose frames differ per
socket), keeps the plain ASGI path.
"""

from __future__ import annotations

import struct
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

RAW_SEND = "vtt.raw_send"


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
        # The handshake's request and response (their headers alone are kilobytes) are only
        # read while accepting; a connection that lasts hours need not keep them.
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
