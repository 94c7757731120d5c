"""One admitted WebSocket from join to leave: its reader, its writer and outbox, its deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from starlette.types import Message, Receive, Send

from app.auth import Auth, Identity
from app.config import Settings
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.model import Actor
from app.protocol import (
    MESSAGES,
    AuthRefreshMsg,
    ChatSend,
    ChatSendMsg,
    ClientMessage,
    DecodeFailure,
    PingMsg,
    Signal,
    TokenGrabMsg,
    TokenMoveMsg,
    TokenReleaseMsg,
    decode_client_message,
)
from app.ratelimit import TokenBucket, Verdict
from app.services import Services
from app.session import Outgoing, Session

log = logging.getLogger("vtt.connection")

# Where a WebSocket server that can take ready-made frames puts its FrameSocket in the scope.
SOCKET_EXTENSION = "vtt.socket"
# How long a slow client's close may wait for its socket to drain before the socket is dropped.
CLOSE_DEADLINE = 5.0
# How long a server shutdown waits for what a connection is owed to go out before its 1012
# (the transport closes the socket itself a little later: app/transport/adapter.py).
SHUTDOWN_SETTLE = 2.0
# How long a message that may wait (`deliver_soon`: another member's presence) waits for the
# next one to the same client, to go out with it in one write.
SOON = 0.02

# Inbound moves beyond the rate are merged per token instead of refused. Only a frame this
# small is decoded to see whether it is one (no valid move is bigger), so merging never
# decodes much; a connection whose moves were merged this recently is dragging, and its other
# messages then wait for the bucket instead of being refused; and merged moves are read no
# faster than a rate far above any pointer's, so that TCP pushes back on a sender of moves
# flat out as it does on other flooders.
MOVE = str(TokenMoveMsg.__struct_config__.tag)
MOVE_FRAME_MAX = 2048
DRAG_QUIET = 1.0
_MOVE_TEXT = f'"{MOVE}"'
_MOVE_BYTES = _MOVE_TEXT.encode()
# Ephemeral signals (pings, cursors, rulers) never take from the bucket: the session paces
# them per sender. A frame this small is decoded to see whether it is one (a ruler of 64
# points is ~3 KiB). Merged moves and signals together are read at most this fast.
SIGNAL_FRAME_MAX = 8192
UNMETERED_PER_SECOND = 1000.0
_SIGNAL_TEXTS = tuple(f'"{row.tag}"' for row in MESSAGES.rows if row.ephemeral)
_SIGNAL_BYTES = tuple(text.encode() for text in _SIGNAL_TEXTS)


# What a FrameSocket offers complete text messages to: True when it took the message.
Taker = Callable[[str], bool]


class FrameSocket(Protocol):
    """A socket that takes ready-made frames: what the transport adapter publishes.

    It also offers the app each complete text message before queueing it for `receive`,
    while the app's reader waits for one with nothing queued (`take_messages`).
    """

    def writable(self) -> bool:
        """Whether a frame written now goes out at once, in order, on an open connection."""
        ...

    async def wait_writable(self) -> None:
        """Wait until the socket can take more, or has ended."""
        ...

    def write(self, frame: bytes) -> None:
        """Hand one frame to the socket."""
        ...

    def try_write(self, frame: bytes) -> bool:
        """Write `frame` if the socket is writable now; whether it was."""
        ...

    def abort(self) -> None:
        """Drop the connection now, whatever is still buffered."""
        ...

    def take_messages(self, taker: Taker | None) -> None:
        """Offer complete text messages to `taker` first (None: stop offering)."""
        ...

    def draining(self) -> bool:
        """Whether the server is shutting down: a `websocket.disconnect` 1012 came while the
        socket stays open for the app to send what it owes and close (1012) itself."""
        ...


class _Entry:
    """One queued message; a queued move or signal is replaced when a newer one of its token
    or lane arrives."""

    __slots__ = ("outgoing",)

    def __init__(self, outgoing: Outgoing) -> None:
        self.outgoing = outgoing


class Outbox:
    """Messages waiting for the socket, in order, with the queued move of each token and the
    queued signal of each lane (so a lane never has more than one frame waiting)."""

    __slots__ = ("_entries", "_moves", "_next_key", "_signals", "bytes")

    def __init__(self) -> None:
        # A running key keeps the order; `_moves` maps a token to its queued move's key,
        # `_signals` a lane to its queued signal's key.
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self._moves: dict[str, int] = {}
        self._signals: dict[str, int] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, outgoing: Outgoing) -> Outgoing | None:
        """Queue `outgoing` last, or in place of the queued message it supersedes (returned)."""
        signal = outgoing.signal
        if signal is not None:
            # A signal is about no token: it ends no move's conflation, and a newer one of its
            # lane replaces it whatever lies between (it carries no seq).
            key = self._signals.get(signal)
            if key is not None:
                return self._replace(key, outgoing)
            self._signals[signal] = self._append(outgoing)
            return None
        token_id = outgoing.token_id
        if outgoing.conflates and token_id is not None:
            key = self._moves.get(token_id)
            if key is not None:
                # The newer move replaces the queued one and goes last, so seqs stay in order;
                # nothing after the old one concerns this token (any other event about it, or
                # any non-token event, ends the token's conflation).
                return self._replace(key, outgoing)
        elif token_id is None:
            if self._moves:
                self._moves.clear()
        else:
            self._moves.pop(token_id, None)
        key = self._append(outgoing)
        if outgoing.conflates and token_id is not None:
            self._moves[token_id] = key
        return None

    def _append(self, outgoing: Outgoing) -> int:
        key = self._next_key
        self._next_key += 1
        self._entries[key] = _Entry(outgoing)
        self.bytes += len(outgoing.frame)
        return key

    def _replace(self, key: int, outgoing: Outgoing) -> Outgoing:
        queued = self._entries[key]
        replaced = queued.outgoing
        self.bytes += len(outgoing.frame) - len(replaced.frame)
        queued.outgoing = outgoing
        self._entries.move_to_end(key)
        return replaced

    def pop(self) -> Outgoing | None:
        """The oldest message, taken out (no newer move or signal replaces it from here on)."""
        if not self._entries:
            return None
        key, entry = self._entries.popitem(last=False)
        outgoing = entry.outgoing
        self.bytes -= len(outgoing.frame)
        signal = outgoing.signal
        if signal is not None:
            if self._signals.get(signal) == key:
                del self._signals[signal]
            return outgoing
        token_id = outgoing.token_id
        if token_id is not None and self._moves.get(token_id) == key:
            del self._moves[token_id]
        return outgoing

    def drop_signals(self) -> list[Outgoing]:
        """Take every queued signal out, to make room for what must arrive; the dropped."""
        dropped = []
        for key in self._signals.values():
            outgoing = self._entries.pop(key).outgoing
            self.bytes -= len(outgoing.frame)
            dropped.append(outgoing)
        self._signals.clear()
        return dropped

    def clear(self) -> None:
        """Drop everything queued."""
        self._entries.clear()
        self._moves.clear()
        self._signals.clear()
        self.bytes = 0


class Connection:
    """One client from admission to leave: a session member backed by one socket.

    Delivering never waits on the socket: a frame goes straight to an idle writable socket,
    else it queues in the bounded outbox, drained in order by a writer task that exists only
    while there is something to send. The reader (the task running `run`) applies the
    client's messages; when it ends, the connection leaves its session and the writer stops.
    Its chat.sends go to a task of their own, one after the other, so that a chat message
    waiting for the database never holds up the connection's other messages.
    """

    __slots__ = (
        "_batch",
        "_bucket",
        "_chats",
        "_chatter",
        "_dragging_until",
        "_expiry",
        "_outbox",
        "_pending",
        "_reader",
        "_send",
        "_soon",
        "_soon_timer",
        "_unmetered_pace",
        "abandoned",
        "actor",
        "campaign_id",
        "closing",
        "identity",
        "metrics",
        "settings",
        "socket",
        "username",
        "writer",
    )

    def __init__(
        self,
        send: Send,
        socket: FrameSocket | None,
        actor: Actor,
        identity: Identity,
        campaign_id: str,
        settings: Settings,
        metrics: Metrics,
        username: str | None = None,
    ) -> None:
        self._send = send
        # None when the server cannot take ready-made frames: then everything goes through
        # the ASGI `send`.
        self.socket = socket
        self.actor = actor
        self.identity = identity
        self.username = username
        self.campaign_id = campaign_id
        self.settings = settings
        self.metrics = metrics
        self._outbox = Outbox()
        self.writer: asyncio.Task[None] | None = None
        # Frames held for one write while a batch is open (see `batch`).
        self._batch: list[bytes] | None = None
        # Messages that wait (at most SOON) to go out with the next one (`deliver_soon`).
        self._soon: list[Outgoing] = []
        self._soon_timer: asyncio.TimerHandle | None = None
        # Closing: set once; the writer sends the close frame after what it is sending now.
        # A socket that cannot take even that within CLOSE_DEADLINE is abandoned: the reader
        # and the writer are cancelled and the socket dropped.
        self.closing: CloseConnection | None = None
        self.abandoned = False
        # The reader: the task running `run`, its flow control, its token's deadline.
        self._reader: asyncio.Task[None] | None = None
        self._bucket = TokenBucket(
            settings.rate_per_second,
            settings.rate_burst,
            settings.flood_close_seconds,
            time.monotonic(),
        )
        self._expiry: asyncio.TimerHandle | None = None
        # Merged moves: each token's latest position waiting for the bucket, in the order the
        # tokens first waited; until when the connection counts as dragging; the read pace of
        # what the bucket does not meter (merged moves and signals).
        self._pending: dict[str, TokenMoveMsg] = {}
        self._dragging_until = 0.0
        self._unmetered_pace: TokenBucket | None = None
        # chat.sends waiting for their turn (at most the chat burst), and the task taking them.
        # A list: an empty deque is 760 bytes on every idle connection, and a burst is short.
        self._chats: list[ChatSend] = []
        self._chatter: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """How many messages wait in the outbox."""
        return len(self._outbox)

    @property
    def merging(self) -> int:
        """How many tokens have a merged move waiting for the bucket."""
        return len(self._pending)

    # --- writing ------------------------------------------------------------------------------

    def deliver(self, outgoing: Outgoing) -> None:
        """Send `outgoing` now when the socket is idle, else queue it for the writer."""
        if self.closing is not None:
            return
        if self._soon:
            self._release_soon(outgoing)
            return
        self._deliver(outgoing)

    def deliver_soon(self, outgoing: Outgoing) -> None:
        """Deliver `outgoing` within SOON, in one write with what follows it meanwhile.

        For what no client waits on to the millisecond (another member's presence): in a join
        storm a member hears of several arrivals, one write for all of them instead of one
        each. The order is kept: whatever is delivered next goes after it, in the same write.
        """
        if self.closing is not None:
            return
        if self.writer is not None or self.socket is None or self._batch is not None:
            self.deliver(outgoing)
            return
        self._soon.append(outgoing)
        if self._soon_timer is None:
            self._soon_timer = asyncio.get_running_loop().call_later(SOON, self._release_soon)

    def _release_soon(self, then: Outgoing | None = None) -> None:
        """Deliver what waits (and `then` after it): in one write when the socket is idle."""
        waiting = self._soon
        self._soon = []
        if self._soon_timer is not None:
            self._soon_timer.cancel()
            self._soon_timer = None
        if then is not None:
            waiting.append(then)
        if self.closing is not None:
            return
        socket = self.socket
        if (
            self.writer is None
            and self._batch is None
            and socket is not None
            and socket.try_write(b"".join([outgoing.frame for outgoing in waiting]))
        ):
            return
        for outgoing in waiting:
            self._deliver(outgoing)

    def _drop_soon(self) -> None:
        self._soon = []
        if self._soon_timer is not None:
            self._soon_timer.cancel()
            self._soon_timer = None

    def _deliver(self, outgoing: Outgoing) -> None:
        socket = self.socket
        if self.writer is None and socket is not None:
            batch = self._batch
            if batch is None:
                if socket.try_write(outgoing.frame):
                    return
            elif socket.writable():
                batch.append(outgoing.frame)
                return
        outbox = self._outbox
        replaced = outbox.put(outgoing)
        if replaced is not None and replaced.signal is not None:
            self.metrics.dropped(replaced.kind, "coalesced")
        if self._over_bound():
            # Signals go first: they are the only frames a client can do without.
            for dropped in outbox.drop_signals():
                self.metrics.dropped(dropped.kind, "backlog")
            if self._over_bound():
                self.metrics.slow_client_closes.inc()
                self.close(CloseConnection(CloseCode.TRY_AGAIN_LATER, "slow consumer"))
                return
        self._start_writer()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Have what is delivered inside go out in one write (a join's greeting).

        Only when the socket is idle now; the caller delivers without waiting inside, so the
        socket stays idle and nothing else is written meanwhile. A close inside drops it all.
        """
        if self._soon:
            self._release_soon()
        socket = self.socket
        if self._batch is not None or self.writer is not None or socket is None:
            yield
            return
        frames: list[bytes] = []
        self._batch = frames
        try:
            yield
        finally:
            self._batch = None
            if frames and self.closing is None and socket.writable():
                socket.write(b"".join(frames))

    def _over_bound(self) -> bool:
        outbox = self._outbox
        return (
            len(outbox) > self.settings.outbox_max_messages
            or outbox.bytes > self.settings.outbox_max_bytes
        )

    def close(self, reason: CloseConnection) -> None:
        """Close soon with `reason`: queued frames are dropped, the writer sends the close."""
        if self.closing is not None:
            return
        self.closing = reason
        self._outbox.clear()
        self._drop_soon()
        self._start_writer()
        asyncio.get_running_loop().call_later(CLOSE_DEADLINE, self._abandon)

    def _start_writer(self) -> None:
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Drain the outbox onto the socket, then end; send the close frame when closing."""
        outbox = self._outbox
        socket = self.socket
        send = self._send
        try:
            while True:
                closing = self.closing
                if closing is not None:
                    code, reason = int(closing.code), closing.reason
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                outgoing = outbox.pop()
                if outgoing is None:
                    return
                if socket is None:
                    await send({"type": "websocket.send", "text": text_of(outgoing.frame)})
                    continue
                if not socket.writable():
                    await socket.wait_writable()
                    if not socket.writable():
                        return
                socket.write(outgoing.frame)
        except OSError:
            return
        finally:
            self.writer = None

    def _abandon(self) -> None:
        pending = [t for t in (self._reader, self.writer) if t is not None and not t.done()]
        if pending:
            self.abandoned = True
            for task in pending:
                task.cancel()
            if self.socket is not None:
                self.socket.abort()

    async def stop(self) -> None:
        """Cancel the writer (the reader has ended) unless it is sending the close."""
        self._drop_soon()
        writer = self.writer
        if writer is not None and self.closing is None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    # --- reading ------------------------------------------------------------------------------

    async def run(self, receive: Receive, session: Session, services: Services) -> None:
        """Read until the peer disconnects (or the connection is abandoned), then leave."""
        self._reader = asyncio.current_task()
        self._arm_expiry()
        socket = self.socket
        if socket is not None:
            socket.take_messages(functools.partial(self._take, session))
        try:
            await self._read(receive, session, services.auth)
        except asyncio.CancelledError:
            if not self.abandoned:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            if socket is not None:
                socket.take_messages(None)
            if self._expiry is not None:
                self._expiry.cancel()
            self._reader = None
            await self._stop_chat()
            await session.leave(self)
            services.manager.released(session)
            await self.stop()

    async def _read(self, receive: Receive, session: Session, auth: Auth) -> None:
        max_bytes = self.settings.limits.max_frame_bytes
        bucket = self._bucket
        pending = self._pending
        while True:
            if pending and self.closing is None:
                message = await self._receive_until_due(receive)
                if message is None:
                    await self._apply_due(session, auth, time.monotonic())
                    continue
            else:
                message = await receive()
            if message["type"] != "websocket.receive":
                await self._apply_pending(session, auth)
                if self.socket is not None and self.socket.draining():
                    await self._close_for_restart(session, auth)
                return
            if self.closing is not None:
                continue
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if _too_big(data, max_bytes):
                self.close(CloseConnection(CloseCode.TOO_BIG, "frame too large"))
                continue
            now = time.monotonic()
            if pending:
                await self._apply_due(session, auth, now)
            if not pending and bucket.try_take(now):
                await self._handle(data, session, auth)
            else:
                await self._over_rate(data, session, auth, now)

    async def _over_rate(self, data: str | bytes, session: Session, auth: Auth, now: float) -> None:
        """A message the bucket cannot take now: merged (a move), kept waiting, or refused."""
        move = _move_in(data)
        if move is not None:
            self.metrics.message_in(MOVE)
            if self._merge(move, now):
                await self._pace_unmetered(now)
                return
        else:
            signal = _signal_in(data)
            if signal is not None:
                self.metrics.message_in(MESSAGES.of(signal).tag)
                await self._relay(signal, session)
                return
        if self._pending or now < self._dragging_until:
            if await self._wait_turn(session, auth):
                await self._handle(move or data, session, auth)
            return
        self._limited(self._bucket.take(now), session)
        # Reading no faster than the rate lets TCP push back on a flooder, instead of this
        # loop parsing and dropping its frames ahead of everyone else.
        await asyncio.sleep(1.0 / self.settings.rate_per_second)

    def _merge(self, move: TokenMoveMsg, now: float) -> bool:
        """Keep `move` as its token's pending position; False when too many tokens pend."""
        pending = self._pending
        token_id = move.payload.token_id
        if token_id not in pending and len(pending) >= self.settings.limits.max_tokens:
            return False
        # A token keeps its place among the pending: moves of different tokens commute.
        pending[token_id] = move
        self._dragging_until = now + DRAG_QUIET
        return True

    async def _pace_unmetered(self, now: float) -> None:
        """Read merged moves and signals no faster than UNMETERED_PER_SECOND."""
        if not self._unmetered_now(now):
            pace = self._unmetered_pace
            assert pace is not None
            await asyncio.sleep(pace.delay(now))

    def _unmetered_now(self, now: float) -> bool:
        """Take one from the read pace of merged moves and signals; False when it is spent."""
        pace = self._unmetered_pace
        if pace is None:
            burst = int(UNMETERED_PER_SECOND // 10)
            pace = self._unmetered_pace = TokenBucket(UNMETERED_PER_SECOND, burst, math.inf, now)
        return pace.try_take(now)

    async def _relay(self, signal: Signal, session: Session) -> None:
        """Hand a signal to the session, which paces it per sender; then pace the reading."""
        await session.submit_live(self, signal)
        await self._pace_unmetered(time.monotonic())

    async def _receive_until_due(self, receive: Receive) -> Message | None:
        """The next message, or None once the bucket can take the oldest pending move."""
        delay = self._bucket.delay(time.monotonic())
        if delay <= 0.0:
            return None
        try:
            async with asyncio.timeout(delay):
                return await receive()
        except TimeoutError:
            return None

    async def _apply_due(self, session: Session, auth: Auth, now: float) -> None:
        """Apply pending moves, oldest first, as far as the bucket allows at `now`."""
        pending = self._pending
        while pending and self.closing is None and self._bucket.try_take(now):
            await self._handle(pending.pop(next(iter(pending))), session, auth)

    async def _apply_pending(self, session: Session, auth: Auth) -> None:
        """Apply every pending move now: the peer or the server is going, and the last
        positions must land."""
        pending = self._pending
        while pending and self.closing is None:
            await self._handle(pending.pop(next(iter(pending))), session, auth)

    async def _close_for_restart(self, session: Session, auth: Auth) -> None:
        """The server is shutting down: send what the session applied, then close with 1012.

        Every member's merged moves are applied first (each would apply its own on the way
        out, perhaps after this one closed), and broadcasts still waiting for the journal go
        out, so that the client's resume point is the state the server stores.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_SETTLE):
                for member in list(session.members):
                    if isinstance(member, Connection):
                        await member._apply_pending(session, auth)
                await session.sent_through(session.state.seq)
                while (writer := self.writer) is not None:
                    await asyncio.wait((writer,))
        self.close(CloseConnection(CloseCode.SERVICE_RESTART, "server restarting"))
        writer = self.writer
        if writer is not None:
            await asyncio.wait((writer,), timeout=SHUTDOWN_SETTLE)

    async def _wait_turn(self, session: Session, auth: Auth) -> bool:
        """Wait until the pending moves are applied and the bucket takes one message more.

        False when the connection started closing meanwhile.
        """
        bucket = self._bucket
        while True:
            now = time.monotonic()
            await self._apply_due(session, auth, now)
            if self.closing is not None:
                return False
            if not self._pending and bucket.try_take(now):
                return True
            await asyncio.sleep(bucket.delay(now))

    def _limited(self, verdict: Verdict, session: Session) -> None:
        if verdict is Verdict.CLOSE:
            log.warning(
                "closing a flooding connection",
                extra={"campaign_id": self.campaign_id, "user_id": self.actor.user_id},
            )
            self.close(CloseConnection(CloseCode.POLICY_VIOLATION, "sustained flooding"))
        elif verdict is Verdict.DROP_AND_TELL:
            session.reply_error(self, "rate_limited", "too many messages; slow down")

    async def _handle(
        self, data: str | bytes | ClientMessage, session: Session, auth: Auth
    ) -> None:
        """Decode (unless done already) and apply one message; a bug costs only this message."""
        started = time.perf_counter()
        try:
            if isinstance(data, str | bytes):
                message = self._decoded(data, session)
                if message is None:
                    return
            else:
                message = data
            match message:
                case Signal():
                    # The bucket's token for it goes back: signals are paced by the session.
                    self._bucket.refund()
                    await self._relay(message, session)
                case AuthRefreshMsg(payload=refresh):
                    await self._refresh(refresh.token, auth)
                case _:
                    async with session.lock:
                        self._apply_now(message, session, started)
        except Exception:
            self._failed(session)

    def _take(self, session: Session, text: str) -> bool:
        """Handle a message at once, in the socket's callback: the reader's work, not waiting.

        The socket offers a complete text message while the reader waits with nothing queued.
        This takes it when the reader would handle it without waiting: the connection not
        closing, no merged move pending, the session's lock free, and a message that needs no
        waiting: a signal within the read pace (signals never spend the bucket), or anything
        else but an auth.refresh that the bucket takes. False leaves the message to the
        reader, which then does what it would have.
        """
        if self.closing is not None or self._pending or session.lock.locked():
            return False
        if _too_big(text, self.settings.limits.max_frame_bytes):
            return False
        now = time.monotonic()
        started = time.perf_counter()
        try:
            try:
                message = decode_client_message(text)
            except DecodeFailure as failure:
                if not self._bucket.try_take(now):
                    return False
                self.metrics.message_in("unknown")
                session.reply_error(self, failure.code, failure.message)
                return True
            if isinstance(message, Signal):
                if not self._unmetered_now(now):
                    return False
                self.metrics.message_in(MESSAGES.tag_of[type(message)])
                session.live_now(self, message)
            elif isinstance(message, AuthRefreshMsg) or not self._bucket.try_take(now):
                return False
            else:
                self.metrics.message_in(MESSAGES.tag_of[type(message)])
                self._apply_now(message, session, started)
        except Exception:
            self._failed(session)
        return True

    def _decoded(self, data: str | bytes, session: Session) -> ClientMessage | None:
        """`data` decoded and counted; None when it is not a message (the client is told)."""
        try:
            message = decode_client_message(data)
        except DecodeFailure as failure:
            self.metrics.message_in("unknown")
            session.reply_error(self, failure.code, failure.message)
            return None
        self.metrics.message_in(MESSAGES.tag_of[type(message)])
        return message

    def _apply_now(self, message: ClientMessage, session: Session, started: float) -> None:
        """Apply a message that needs no waiting; the session's lock is held or free."""
        match message:
            case TokenGrabMsg() | TokenReleaseMsg():
                session.live_now(self, message)
            case PingMsg():
                session.pong(self)
            case ChatSendMsg(payload=chat):
                self._chat(chat, session)
            case _:
                session.submit_now(self, message)
                self.metrics.counts.observe_broadcast(time.perf_counter() - started)

    def _failed(self, session: Session) -> None:
        log.exception(
            "message handling failed",
            extra={"campaign_id": self.campaign_id, "user_id": self.actor.user_id},
        )
        session.reply_error(self, "internal", "internal error; not applied")

    def _chat(self, payload: ChatSend, session: Session) -> None:
        """Queue a chat.send for the chat task, or refuse it when a burst already waits."""
        if len(self._chats) >= self.settings.chat.rate_burst:
            session.reply_error(self, "rate_limited", "too many chat messages waiting; slow down")
            return
        self._chats.append(payload)
        if self._chatter is None:
            self._chatter = asyncio.get_running_loop().create_task(self._send_chats(session))

    async def _send_chats(self, session: Session) -> None:
        """Send the queued chat.sends in order; a bug costs only its message."""
        try:
            while self._chats:
                try:
                    await session.send_chat(self, self._chats.pop(0))
                except Exception:
                    log.exception(
                        "chat handling failed",
                        extra={"campaign_id": self.campaign_id, "user_id": self.actor.user_id},
                    )
                    session.reply_error(self, "internal", "internal error; not sent")
        finally:
            self._chatter = None

    async def _stop_chat(self) -> None:
        """The peer has gone: drop the chat.sends not begun, cancel the one under way."""
        self._chats.clear()
        chatter = self._chatter
        if chatter is not None:
            chatter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chatter

    async def _refresh(self, token: str, auth: Auth) -> None:
        try:
            identity = await auth.refresh(token, self.actor, self.campaign_id)
        except CloseConnection as exc:
            context = {"campaign_id": self.campaign_id, "user_id": self.actor.user_id}
            log.info(
                "token refresh refused",
                extra={**context, "code": int(exc.code), "reason": exc.reason},
            )
            if exc.code != CloseCode.TRY_AGAIN_LATER:
                self.close(exc)
            # A store or key-set outage says nothing about this user: keep the connection on
            # its current token (the grace timer still applies) and let the next refresh retry.
            return
        self.identity = identity
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """With refresh required, close the connection when its token's grace runs out."""
        if not self.settings.token_refresh_required:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        deadline = self.identity.expires_at + self.settings.token_grace
        delay = max(0.0, deadline - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self.close(CloseConnection(CloseCode.UNAUTHORIZED, "token expired; refresh it"))


def _move_in(data: str | bytes) -> TokenMoveMsg | None:
    """`data` decoded, when it is a token.move small enough to merge."""
    if len(data) > MOVE_FRAME_MAX:
        return None
    if not (_MOVE_TEXT in data if isinstance(data, str) else _MOVE_BYTES in data):
        return None
    try:
        message = decode_client_message(data)
    except DecodeFailure:
        return None
    return message if isinstance(message, TokenMoveMsg) else None


def _signal_in(data: str | bytes) -> Signal | None:
    """`data` decoded, when it is a signal small enough to look at."""
    if len(data) > SIGNAL_FRAME_MAX:
        return None
    if isinstance(data, str):
        tagged = any(text in data for text in _SIGNAL_TEXTS)
    else:
        tagged = any(text in data for text in _SIGNAL_BYTES)
    if not tagged:
        return None
    try:
        message = decode_client_message(data)
    except DecodeFailure:
        return None
    return message if isinstance(message, Signal) else None


def text_of(frame: bytes) -> str:
    """The text a server text frame carries (its payload after the 2, 4 or 10 header bytes)."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return str(memoryview(frame)[start:], "utf-8")


def _too_big(data: str | bytes, limit: int) -> bool:
    """Whether a frame exceeds `limit` bytes (a str's UTF-8 size is at most 4 bytes a char)."""
    size = len(data)
    if size > limit:
        return True
    if isinstance(data, str) and size * 4 > limit:
        return len(data.encode()) > limit
    return False
