"""One WebSocket: a bounded outbox drained by its own writer task, and the read loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from starlette.types import Receive, Send

from app.auth import Identity
from app.config import Settings
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.model import Actor
from app.protocol import AuthRefreshMsg, DecodeFailure, PingMsg, decode_client_message
from app.ratelimit import TokenBucket, Verdict
from app.services import Services
from app.session import Session
from app.transport.adapter import DirectSocket

log = logging.getLogger("vtt.connection")

# How long a slow client's close may wait for its socket to drain before the socket is dropped.
CLOSE_DEADLINE = 5.0


class _Entry:
    """One queued frame; a queued move is rewritten when a newer move of its token arrives."""

    __slots__ = ("move_of", "text")

    def __init__(self, text: str, move_of: str | None) -> None:
        self.text = text
        self.move_of = move_of


class Client:
    """A session member backed by one socket; delivering never waits on the socket.

    Frames go straight to an idle socket. Otherwise they queue in the outbox, drained by a
    writer task that exists only while there is something to send, in order.
    """

    __slots__ = (
        "_bytes",
        "_moves",
        "_next_key",
        "_outbox",
        "_send",
        "abandoned",
        "actor",
        "campaign_id",
        "closing",
        "direct",
        "identity",
        "metrics",
        "reader",
        "settings",
        "writer",
    )

    def __init__(
        self,
        send: Send,
        actor: Actor,
        identity: Identity,
        campaign_id: str,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._send = send
        self.metrics = metrics
        self.actor = actor
        self.identity = identity
        self.campaign_id = campaign_id
        self.settings = settings
        # Outbox: frames in seq order by a running key, the key of each token's queued move,
        # and the bytes held; the writer drains it.
        self._outbox: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self._moves: dict[str, int] = {}
        self._bytes = 0
        self.writer: asyncio.Task[None] | None = None
        self.direct: DirectSocket | None = None
        # Closing: set once; the writer sends the close frame after what it is sending now.
        # A socket that cannot take even that within CLOSE_DEADLINE is abandoned: the reader
        # and the writer are cancelled and the socket dropped.
        self.closing: CloseConnection | None = None
        self.abandoned = False
        self.reader: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """How many frames wait in the outbox."""
        return len(self._outbox)

    def deliver(
        self,
        text: str,
        token_id: str | None = None,
        is_move: bool = False,
        frame: bytes | None = None,
    ) -> None:
        """Send `text` now when the socket is idle, else queue it (conflating queued moves).

        `frame` is `text` as a ready-made WebSocket frame, shared by every recipient.
        """
        if self.closing is not None:
            return
        direct = self.direct
        if (
            frame is not None
            and self.writer is None
            and direct is not None
            and direct.shares_frames
            and direct.writable()
        ):
            direct.write(frame)
            return
        if is_move and token_id is not None:
            key = self._moves.get(token_id)
            if key is not None:
                # Conflation: the newer move replaces the queued one and goes last, so seqs
                # stay in order; nothing after the old one concerns this token (any other
                # event about it, or any non-token event, ends the token's conflation).
                queued = self._outbox[key]
                self._bytes += len(text) - len(queued.text)
                queued.text = text
                self._outbox.move_to_end(key)
                return
        elif token_id is None:
            if self._moves:
                self._moves.clear()
        else:
            self._moves.pop(token_id, None)
        key = self._next_key
        self._next_key += 1
        self._outbox[key] = _Entry(text, token_id if is_move else None)
        if is_move and token_id is not None:
            self._moves[token_id] = key
        self._bytes += len(text)
        if (
            len(self._outbox) > self.settings.outbox_max_messages
            or self._bytes > self.settings.outbox_max_bytes
        ):
            self.metrics.slow_client_closes.inc()
            self.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))
            return
        self._start_writer()

    def close(self, reason: CloseConnection) -> None:
        """Close soon with `reason`: queued frames are dropped, the writer sends the close."""
        if self.closing is not None:
            return
        self.closing = reason
        self._outbox.clear()
        self._moves.clear()
        self._bytes = 0
        self._start_writer()
        asyncio.get_running_loop().call_later(CLOSE_DEADLINE, self._abandon)

    async def stop(self) -> None:
        """Stop writing (the reader has ended): cancel the writer unless it is closing."""
        writer = self.writer
        if writer is not None and self.closing is None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _start_writer(self) -> None:
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    def _abandon(self) -> None:
        pending = [t for t in (self.reader, self.writer) if t is not None and not t.done()]
        if pending:
            self.abandoned = True
            for task in pending:
                task.cancel()
            if self.direct is not None:
                self.direct.abort()

    async def _write(self) -> None:
        """Drain the outbox onto the socket, then end; send the close frame when closing."""
        outbox = self._outbox
        send = self._send
        try:
            while True:
                closing = self.closing
                if closing is not None:
                    code, reason = int(closing.code), closing.reason
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                if not outbox:
                    return
                key, entry = outbox.popitem(last=False)
                self._bytes -= len(entry.text)
                if entry.move_of is not None and self._moves.get(entry.move_of) == key:
                    del self._moves[entry.move_of]
                await send({"type": "websocket.send", "text": entry.text})
        except OSError:
            return
        finally:
            self.writer = None


class Reader:
    """The read loop of one client: limits, decoding, dispatch to the session."""

    __slots__ = (
        "_expiry",
        "auth",
        "bucket",
        "client",
        "metrics",
        "session",
        "settings",
    )

    def __init__(self, client: Client, session: Session, services: Services) -> None:
        self.client = client
        self.session = session
        self.auth = services.auth
        self.settings = settings = services.settings
        self.metrics = services.metrics
        now = time.monotonic()
        self.bucket = TokenBucket(
            settings.rate_per_second, settings.rate_burst, settings.flood_close_seconds, now
        )
        self._expiry: asyncio.TimerHandle | None = None
        self._arm_expiry()

    async def run(self, receive: Receive) -> None:
        """Read until the peer disconnects."""
        client = self.client
        max_bytes = self.settings.limits.max_frame_bytes
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                if client.closing is not None:
                    continue
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if _too_big(data, max_bytes):
                    client.close(CloseConnection(CloseCode.TOO_BIG, "frame too large"))
                    continue
                verdict = self.bucket.take(time.monotonic())
                if verdict is not Verdict.ACCEPT:
                    self._limited(verdict)
                    # Reading no faster than the rate lets TCP push back on a flooder, instead
                    # of this loop parsing and dropping its frames ahead of everyone else.
                    await asyncio.sleep(1.0 / self.settings.rate_per_second)
                    continue
                try:
                    await self._handle(data)
                except Exception:
                    # A bug must cost one message, never the session or the connection.
                    log.exception(
                        "message handling failed",
                        extra={"campaign_id": client.campaign_id, "user_id": client.actor.user_id},
                    )
                    self.session.reply_error(client, "internal", "internal error; not applied")
        finally:
            if self._expiry is not None:
                self._expiry.cancel()

    def _limited(self, verdict: Verdict) -> None:
        if verdict is Verdict.CLOSE:
            log.warning(
                "closing a flooding connection",
                extra={
                    "campaign_id": self.client.campaign_id,
                    "user_id": self.client.actor.user_id,
                },
            )
            self.client.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
        elif verdict is Verdict.DROP_AND_TELL:
            self.session.reply_error(self.client, "rate_limited", "too many messages; slow down")

    async def _handle(self, data: str | bytes) -> None:
        started = time.perf_counter()
        try:
            message = decode_client_message(data)
        except DecodeFailure as failure:
            self.metrics.message_in("unknown")
            self.session.reply_error(self.client, failure.code, failure.message)
            return
        self.metrics.message_in(str(message.__struct_config__.tag))
        match message:
            case PingMsg():
                self.session.pong(self.client)
            case AuthRefreshMsg(payload=refresh):
                await self._refresh(refresh.token)
            case _:
                await self.session.submit(self.client, message)
                self.metrics.counts.observe_broadcast(time.perf_counter() - started)

    async def _refresh(self, token: str) -> None:
        client = self.client
        try:
            identity = await self.auth.refresh(token, client.actor, client.campaign_id)
        except CloseConnection as exc:
            context = {"campaign_id": client.campaign_id, "user_id": client.actor.user_id}
            log.info(
                "token refresh refused",
                extra={**context, "code": int(exc.code), "reason": exc.reason},
            )
            if exc.code != CloseCode.TRY_AGAIN_LATER:
                client.close(exc)
            # A store or key-set outage says nothing about this user: keep the connection on
            # its current token (the grace timer still applies) and let the next refresh retry.
            return
        client.identity = identity
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """With refresh required, close the connection when its token's grace runs out."""
        if not self.settings.token_refresh_required:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        deadline = self.client.identity.expires_at + self.settings.token_grace
        delay = max(0.0, deadline - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self.client.close(CloseConnection(CloseCode.UNAUTHORIZED, "token expired; refresh it"))


def _too_big(data: str | bytes, limit: int) -> bool:
    """Whether a frame exceeds `limit` bytes (a str's UTF-8 size is at most 4 bytes a char)."""
    size = len(data)
    if size > limit:
        return True
    if isinstance(data, str) and size * 4 > limit:
        return len(data.encode()) > limit
    return False
