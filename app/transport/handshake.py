"""A deadline on unfinished request headers, and a bound on how many may be unfinished at once.

uvicorn reads a request's headers for as long as the peer takes: a connection that sends half
an upgrade request and then nothing holds a descriptor and a slot forever. Every connection
here must finish the headers of each request (a WebSocket upgrade included) within the gate's
timeout, or it is dropped; while `bound` connections are still in their headers, a new one is
dropped at once instead of waiting. What happens after the headers (auth, the role lookup, the
WebSocket itself) has its own timeouts and is not cut by this deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("vtt.handshake")

# The lifespan state key under which the app leaves the gate for the HTTP protocol to find.
GATE_KEY = "vtt.handshake_gate"
# Under attack, at most one warning per this many seconds.
WARN_EVERY = 60.0


class HandshakeGate:
    """Counts the connections still sending request headers; shared by all of one server's.

    `on_timeout` and `on_refused` are told of each connection dropped for the deadline or for
    the bound (the metrics counters); warnings are logged at most once per WARN_EVERY.
    """

    __slots__ = ("_last_warning", "bound", "in_progress", "on_refused", "on_timeout", "timeout")

    def __init__(
        self,
        timeout: float,
        bound: int,
        on_timeout: Callable[[], None] = lambda: None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.timeout = timeout
        self.bound = bound
        self.on_timeout = on_timeout
        self.on_refused = on_refused
        self.in_progress = 0
        self._last_warning = -WARN_EVERY

    def admit(self, now: float) -> bool:
        """Count a connection that starts its headers; False (and counted) when over the bound."""
        if self.in_progress >= self.bound:
            self.on_refused()
            self._warn(now, f"{self.bound} connections are still sending request headers")
            return False
        self.in_progress += 1
        return True

    def release(self) -> None:
        """A counted connection finished its headers or went away."""
        self.in_progress -= 1

    def timed_out(self, now: float) -> None:
        """A counted connection missed the deadline (it is released separately)."""
        self.on_timeout()
        self._warn(now, f"request headers not finished within {self.timeout:g} s")

    def _warn(self, now: float, what: str) -> None:
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning(
                "dropping connections: %s (likely a slow-headers attack; one warning a minute)",
                what,
            )


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with each request's headers under the gate's deadline.

    The gate comes from the app's lifespan state; without one (no lifespan) nothing changes.
    A WebSocket upgrade leaves this protocol when its headers are complete, so the deadline
    covers it exactly up to the point where the app takes over.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._held: HandshakeGate | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the first request's deadline, or drop the connection when the gate is full."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """A keep-alive connection's next request gets a deadline of its own."""
        super().on_message_begin()
        if self._held is None and not self.transport.is_closing():
            self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in: the app takes over from here."""
        self._disarm()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        """Hand the connection to the WebSocket protocol, then drop the parser.

        A protocol with an `upgrade` method (the adapter's AdaptedProtocol) takes the connection
        as this protocol found it (its loop, the socket's addresses) and the request as httptools
        parsed it; any other gets both as uvicorn gives them: it looks the addresses up again,
        and the request comes serialized again.

        httptools' parser holds this protocol (its callbacks) and this protocol the parser: a
        reference cycle that only the cyclic collector frees, and one that lived through a young
        collection waits for a full one, which runs rarely (app/transport/serve.py).
        """
        kind: Any = self.ws_protocol_class
        if hasattr(kind, "upgrade"):
            # As uvicorn's handle_websocket_upgrade, but for the request's hand-over.
            self.connections.discard(self)
            protocol = kind(
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
                _loop=self.loop,
            )
            # This protocol asked the socket its addresses already (connection_made).
            protocol.taken_over(self.transport, self.server, self.client, self.scheme == "https")
            protocol.upgrade(self.scope["method"], self.url, self.headers)
            self.transport.set_protocol(protocol)
        else:
            super().handle_websocket_upgrade()
        del self.parser

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the gate's count if the headers never finished."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        gate = self.app_state.get(GATE_KEY)
        if not isinstance(gate, HandshakeGate):
            return
        if not gate.admit(time.monotonic()):
            self.transport.abort()
            return
        self._held = gate
        self._deadline = self.loop.call_later(gate.timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._held is not None:
            self._held.release()
            self._held = None

    def _expire(self) -> None:
        gate = self._held
        self._deadline = None
        self._disarm()
        if gate is not None:
            gate.timed_out(time.monotonic())
        # A peer that stopped mid-request reads nothing either: abort, don't wait to drain.
        self.transport.abort()
