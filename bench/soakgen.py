"""The soak generator (`bench.loadgen --mode soak`): a long, steady mixed load in 1-minute windows.

Every campaign has K clients on our server (the baseline cannot do chat, cursors or resumes):

- slot 0, the GM, adds token t1 once, then watches;
- slot 1 moves t1 at --move-rate Hz: x is the send time (us modulo 10 s), y the campaign's
  move counter, 1, 2, 3, ...;
- slot 2 sends chat.send every --chat-interval s, the text "soak <x> <n>" with n the
  campaign's chat counter, every fourth with a dice roll;
- slot 3 sends cursor.move at --cursor-rate Hz, y its own counter;
- every window, --reconnects clients per campaign among slots 0, 3, 4 and 5 (in turn, spread
  over the window) close normally, stay away --offline s and come back with
  `since=<last seq seen>&epoch=<epoch>`. The senders of numbered messages (slots 1 and 2)
  never leave: a move in flight as its sender closes may rightly be dropped, and would read
  as loss.

A seat (one slot of a campaign) keeps its counters across its connections, so loss and order
are checked across reconnects: every client must see moves 1, 2, 3, ... and chat messages
1, 2, 3, ... each exactly once and in order, live or replayed after a state.resume. A full
state.sync instead of a resume is a resync: the client takes t1's y from the state (and the
chat counter from chat.history) and the moves it skipped are counted as skipped by a resync,
not as lost. Cursors are ephemeral (coalesced, never replayed): only their order is checked,
and the share delivered is reported.

At each window boundary the generator emits `soak_window` with the window's figures (the
orchestrator samples the server's CPU and RSS on it); `soak_start` opens the first window.
With --soak-warmup, the first is a warm-up (window -1, `warmup: true`): the same load, whose
loss and errors count, but RSS and p99 are judged from the windows after it (the resume
buffer of each campaign, 1,000 events, takes about 100 s to fill). After the last window
the senders stop, reconnects finish, and the generator waits up to
DRAIN_TIMEOUT s for every client to have every move and chat message; what is still missing
then is lost, in the last window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.loadgen import (
    HANDSHAKE_TIMEOUT,
    LAG_INTERVAL,
    TOKEN_ID,
    X_MODULO_US,
    emit,
    generator_limited,
    log,
    now_us,
)
from bench.stats import Histogram, percentile

SLOT_GM, SLOT_MOVER, SLOT_CHAT, SLOT_CURSOR = 0, 1, 2, 3
RECONNECTABLE = (0, 3, 4, 5)
ROLL_EVERY = 4
DRAIN_TIMEOUT = 5.0
DRAIN_POLL = 0.05
CONNECT_CONCURRENCY = 100
MOVE_FRAME = b'{"type":"token.move","payload":{"token_id":"t1","x":%d,"y":%d}}'
CURSOR_FRAME = b'{"type":"cursor.move","payload":{"x":%d,"y":%d}}'
CHAT_FRAME = (
    b'{"type":"chat.send","payload":{"message_type":"text","content":"soak %d %d","gm_only":false}}'
)
CHAT_ROLL_FRAME = (
    b'{"type":"chat.send","payload":{"message_type":"roll","content":"soak %d %d",'
    b'"gm_only":false,"roll":"/r 1d20+5 attack"}}'
)


class Envelope(msgspec.Struct, gc=False):
    """The fields of a server frame the soak looks at."""

    type: str
    seq: int = -1
    payload: msgspec.Raw = msgspec.Raw(b"{}")


class XY(msgspec.Struct, gc=False):
    """Coordinates: the send time and a counter."""

    x: float = 0.0
    y: float = 0.0


class Text(msgspec.Struct, gc=False):
    """A chat message's content."""

    content: Any = None


class History(msgspec.Struct, gc=False):
    """chat.history."""

    messages: list[Text] = []


class State(msgspec.Struct, gc=False):
    """What a state.sync says about the moved token and the epoch."""

    epoch: str = ""
    tokens: dict[str, XY] = {}


class Resume(msgspec.Struct, gc=False):
    """state.resume."""

    epoch: str = ""


class ErrorPayload(msgspec.Struct, gc=False):
    """The code of an error frame."""

    code: str = "?"


_envelope = msgspec.json.Decoder(Envelope).decode
_xy = msgspec.json.Decoder(XY).decode
_text = msgspec.json.Decoder(Text).decode
_history = msgspec.json.Decoder(History).decode
_state = msgspec.json.Decoder(State).decode
_resume = msgspec.json.Decoder(Resume).decode
_error = msgspec.json.Decoder(ErrorPayload).decode


def chat_counter(content: Any) -> tuple[int, int] | None:
    """(send time, counter) from a soak chat text "soak <x> <n>", or None for another text."""
    if not isinstance(content, str) or not content.startswith("soak "):
        return None
    try:
        _, x, n = content.split(" ", 2)
        return int(x), int(n)
    except ValueError:
        return None


@dataclass
class Tally:
    """One window's counters, shared by every client."""

    moves_sent: int = 0
    cursors_sent: int = 0
    chats_sent: int = 0
    moves: int = 0
    moves_replayed: int = 0
    cursors: int = 0
    chats: int = 0
    chats_replayed: int = 0
    other: Counter[str] = field(default_factory=Counter)
    move_latency: Histogram = field(default_factory=Histogram)
    chat_latency: Histogram = field(default_factory=Histogram)
    cursor_latency: Histogram = field(default_factory=Histogram)
    lost: Counter[str] = field(default_factory=Counter)
    reordered: Counter[str] = field(default_factory=Counter)
    skipped_by_resync: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    resumed: int = 0
    resynced: int = 0
    missed_sends: int = 0
    cursor_receivers: int = 0

    def delivered(self) -> dict[str, int]:
        """Frames received in the window, by kind (replays apart)."""
        return {
            "token.move": self.moves,
            "token.move (replayed)": self.moves_replayed,
            "cursor.move": self.cursors,
            "chat.message": self.chats,
            "chat.message (replayed)": self.chats_replayed,
            "other": sum(self.other.values()),
        }


class SoakCampaign:
    """One campaign: its seats and the counters of what its senders sent."""

    def __init__(self, index: int, campaign_id: str, tokens: list[str]) -> None:
        self.index = index
        self.id = campaign_id
        self.seats = [Seat(self, slot, token) for slot, token in enumerate(tokens)]
        self.last_move = 0
        self.last_chat = 0
        self.last_cursor = 0
        self.token_ready: asyncio.Future[None] | None = None


class Seat:
    """One slot of a campaign: the same user across its connections, and what it has seen."""

    __slots__ = (
        "campaign",
        "conn",
        "epoch",
        "last_chat",
        "last_cursor",
        "last_move",
        "reconnecting",
        "seq",
        "slot",
        "token",
    )

    def __init__(self, campaign: SoakCampaign, slot: int, token: str) -> None:
        self.campaign = campaign
        self.slot = slot
        self.token = token
        self.conn: SoakClient | None = None
        self.last_move = 0
        self.last_chat = 0
        self.last_cursor = 0
        self.seq = 0
        self.epoch = ""
        self.reconnecting = False

    @property
    def alive(self) -> bool:
        """Whether the seat has an open connection."""
        return self.conn is not None and self.conn.alive


class SoakClient(WSListener):
    """One connection of a seat; checks every numbered frame against the seat's counters."""

    def __init__(self, gen: SoakGenerator, seat: Seat, resuming: bool) -> None:
        self.gen = gen
        self.seat = seat
        self.resuming = resuming
        self.replaying = False
        self.transport: WSTransport | None = None
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = False
        self.closing = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Keep the transport for sending."""
        self.transport = transport
        self.alive = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Decode one frame and check it against the seat's counters."""
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        received = now_us()
        envelope = _envelope(frame.get_payload_as_bytes())
        kind = envelope.type
        seat = self.seat
        tally = self.gen.tally
        if envelope.seq > seat.seq and kind != "state.resume":
            seat.seq = envelope.seq
        if kind == "token.move":
            move = _xy(envelope.payload)
            y = int(move.y)
            last = seat.last_move
            if y == last + 1:
                seat.last_move = y
            elif y <= last:
                tally.reordered["token.move"] += 1
            else:
                tally.lost["token.move"] += y - last - 1
                seat.last_move = y
            if self.replaying:
                tally.moves_replayed += 1
            else:
                tally.moves += 1
                tally.move_latency.add((received - int(move.x)) % X_MODULO_US)
        elif kind == "cursor.move":
            cursor = _xy(envelope.payload)
            y = int(cursor.y)
            if y <= seat.last_cursor:
                tally.reordered["cursor.move"] += 1
            else:
                seat.last_cursor = y
            tally.cursors += 1
            tally.cursor_latency.add((received - int(cursor.x)) % X_MODULO_US)
        elif kind == "chat.message":
            sent = chat_counter(_text(envelope.payload).content)
            if sent is None:
                tally.other[kind] += 1
                return
            x, n = sent
            last = seat.last_chat
            if n == last + 1:
                seat.last_chat = n
            elif n <= last:
                tally.reordered["chat.message"] += 1
            else:
                tally.lost["chat.message"] += n - last - 1
                seat.last_chat = n
            if self.replaying:
                tally.chats_replayed += 1
            else:
                tally.chats += 1
                tally.chat_latency.add((received - x) % X_MODULO_US)
        else:
            tally.other[kind] += 1
            self._control(kind, envelope.payload, tally)

    def _control(self, kind: str, payload: msgspec.Raw, tally: Tally) -> None:
        """The frames that are neither moves, cursors nor chat messages."""
        seat = self.seat
        if kind == "state.sync":
            state = _state(payload)
            seat.epoch = state.epoch
            token = state.tokens.get(TOKEN_ID)
            if token is not None and int(token.y) > seat.last_move:
                if self.resuming:
                    tally.skipped_by_resync["token.move"] += int(token.y) - seat.last_move
                seat.last_move = int(token.y)
            if self.resuming:
                tally.resynced += 1
            if not self.joined.done():
                self.joined.set_result(None)
        elif kind == "chat.history":
            counters = [chat_counter(m.content) for m in _history(payload).messages]
            highest = max((c[1] for c in counters if c is not None), default=0)
            if highest > seat.last_chat:
                if self.resuming:
                    tally.skipped_by_resync["chat.message"] += highest - seat.last_chat
                seat.last_chat = highest
        elif kind == "state.resume":
            seat.epoch = _resume(payload).epoch
            self.replaying = True
            tally.resumed += 1
            if not self.joined.done():
                self.joined.set_result(None)
        elif kind == "presence.sync":
            self.replaying = False
        elif kind == "token.add":
            ready = seat.campaign.token_ready
            if seat.slot == SLOT_MOVER and ready is not None and not ready.done():
                ready.set_result(None)
        elif kind == "error":
            tally.errors["error:" + _error(payload).code] += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Count a close the generator did not ask for as an error."""
        self.alive = False
        if self.closing:
            return
        received = transport.close_handshake.recv if transport.close_handshake else None
        code = received.code.value if received is not None else 1006
        self.gen.tally.errors[f"closed:{code}"] += 1
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed {code} before joining"))

    def send(self, data: bytes) -> bool:
        """Send one text frame if the connection is up; whether it was sent."""
        if self.transport is not None and self.alive:
            self.transport.send(WSMsgType.TEXT, data)
            return True
        return False

    def close(self) -> None:
        """Close normally; the resulting disconnect is not an error."""
        self.closing = True
        if self.transport is not None and self.alive:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


class SoakGenerator:
    """Every campaign of the soak on one event loop, and the window bookkeeping."""

    def __init__(self, plan: dict[str, Any], args: argparse.Namespace) -> None:
        self.url = plan["url"]
        self.args = args
        self.campaigns = [
            SoakCampaign(i, entry["id"], entry["tokens"][: args.clients])
            for i, entry in enumerate(plan["campaigns"][: args.campaigns])
        ]
        self.loop = asyncio.get_running_loop()
        self.tally = Tally()
        self.running = False
        self.reconnect_tasks: set[asyncio.Task[None]] = set()
        self.lag_samples: list[float] = []
        self.reconnectable = tuple(s for s in RECONNECTABLE if s < args.clients)

    # Connections

    async def connect(self, seat: Seat, resume: bool) -> bool:
        """Open a connection for `seat` (resuming from what it saw) and wait until it joined."""
        client = SoakClient(self, seat, resume)
        url = f"{self.url}?campaign={seat.campaign.id}&token={seat.token}"
        if resume and seat.epoch:
            url += f"&since={seat.seq}&epoch={seat.epoch}"
        seat.conn = client
        try:
            await ws_connect(
                lambda: client,
                url,
                websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
                read_buffer_init_size=4096,
            )
            await asyncio.wait_for(client.joined, HANDSHAKE_TIMEOUT)
        except Exception as exc:  # picows raises WSHandshakeError for HTTP refusals
            what = "reconnect" if resume else "connect"
            self.tally.errors[f"{what}:{type(exc).__name__}"] += 1
            client.closing = True
            client.close()
            return False
        return True

    async def connect_all(self) -> None:
        """Connect every seat, CONNECT_CONCURRENCY handshakes at a time."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(seat: Seat) -> None:
            async with gate:
                await self.connect(seat, resume=False)

        await asyncio.gather(*(one(s) for c in self.campaigns for s in c.seats))

    async def add_tokens(self) -> None:
        """Have each GM add t1 and wait until its mover has seen it."""
        for campaign in self.campaigns:
            campaign.token_ready = self.loop.create_future()
            add = {
                "type": "token.add",
                "payload": {
                    "token_id": TOKEN_ID,
                    "name": "soak",
                    "x": 0,
                    "y": 0,
                    "width": 1,
                    "height": 1,
                    "visible": True,
                },
            }
            gm = campaign.seats[SLOT_GM].conn
            if gm is not None:
                gm.send(json.dumps(add).encode())
        pending = [c.token_ready for c in self.campaigns if c.token_ready is not None]
        _done, not_done = await asyncio.wait(pending, timeout=HANDSHAKE_TIMEOUT)
        if not_done:
            self.tally.errors["token_add_timeout"] += len(not_done)

    def close_all(self) -> None:
        """Close every connection normally."""
        for campaign in self.campaigns:
            for seat in campaign.seats:
                if seat.conn is not None:
                    seat.conn.close()

    # Senders

    def start_senders(self) -> None:
        """Start the movers, cursor senders and chat senders, phases spread over each period."""
        self.running = True
        count = len(self.campaigns)
        t0 = self.loop.time() + 0.01
        args = self.args
        senders = [(SLOT_MOVER, args.move_rate, self._move, 0.0)]
        if args.clients > SLOT_CURSOR and args.cursor_rate > 0:
            senders.append((SLOT_CURSOR, args.cursor_rate, self._cursor, 0.5))
        if args.clients > SLOT_CHAT and args.chat_interval > 0:
            senders.append((SLOT_CHAT, 1.0 / args.chat_interval, self._chat, 0.25))
        for slot, rate, send, shift in senders:
            period = 1.0 / rate
            for i, campaign in enumerate(self.campaigns):
                first = t0 + period * ((i / count + shift) % 1.0)
                self.loop.call_at(first, self._tick, send, campaign.seats[slot], first, period)

    def _tick(self, send: Any, seat: Seat, due: float, period: float) -> None:
        if not self.running:
            return
        send(seat)
        due += period
        now = self.loop.time()
        if due < now:
            skipped = int((now - due) / period) + 1
            self.tally.missed_sends += skipped
            due += skipped * period
        self.loop.call_at(due, self._tick, send, seat, due, period)

    @staticmethod
    def _x() -> int:
        return (time.perf_counter_ns() // 1000) % X_MODULO_US

    def _move(self, seat: Seat) -> None:
        campaign = seat.campaign
        if seat.conn is not None and seat.conn.send(
            MOVE_FRAME % (self._x(), campaign.last_move + 1)
        ):
            campaign.last_move += 1
            self.tally.moves_sent += 1

    def _cursor(self, seat: Seat) -> None:
        campaign = seat.campaign
        if seat.conn is not None and seat.conn.send(
            CURSOR_FRAME % (self._x(), campaign.last_cursor + 1)
        ):
            campaign.last_cursor += 1
            self.tally.cursors_sent += 1
            self.tally.cursor_receivers += sum(
                1 for s in campaign.seats if s is not seat and s.alive
            )

    def _chat(self, seat: Seat) -> None:
        campaign = seat.campaign
        n = campaign.last_chat + 1
        frame = CHAT_ROLL_FRAME if n % ROLL_EVERY == 0 else CHAT_FRAME
        if seat.conn is not None and seat.conn.send(frame % (self._x(), n)):
            campaign.last_chat = n
            self.tally.chats_sent += 1

    # Reconnects

    def schedule_reconnects(self, window: int, start: float, span: float) -> None:
        """Spread this window's reconnects (R per campaign, slots in turn) over its `span` s."""
        per = self.args.reconnects
        if not per or not self.reconnectable:
            return
        count = len(self.campaigns)
        total = count * per
        for i, campaign in enumerate(self.campaigns):
            for r in range(per):
                slot = self.reconnectable[(window * per + r) % len(self.reconnectable)]
                at = start + span * (r * count + i + 0.5) / total
                self.loop.call_at(at, self._reconnect_soon, campaign.seats[slot])

    def _reconnect_soon(self, seat: Seat) -> None:
        if not self.running or seat.reconnecting or not seat.alive:
            return
        task = self.loop.create_task(self._reconnect(seat))
        self.reconnect_tasks.add(task)
        task.add_done_callback(self.reconnect_tasks.discard)

    async def _reconnect(self, seat: Seat) -> None:
        seat.reconnecting = True
        try:
            if seat.conn is not None:
                seat.conn.close()
            await asyncio.sleep(self.args.offline)
            self.tally.reconnects += 1
            await self.connect(seat, resume=True)
        finally:
            seat.reconnecting = False

    # Event-loop lag

    def _lag_tick(self, due: float) -> None:
        now = self.loop.time()
        self.lag_samples.append(max(0.0, now - due))
        if self.running:
            self.loop.call_at(now + LAG_INTERVAL, self._lag_tick, now + LAG_INTERVAL)

    # Windows

    def caught_up(self) -> bool:
        """Whether every connected seat has every move and chat message sent."""
        return all(
            s.last_move >= c.last_move and s.last_chat >= c.last_chat
            for c in self.campaigns
            for s in c.seats
            if s.alive
        )

    def count_tail_loss(self) -> None:
        """After the drain: what a connected seat still lacks is lost."""
        for campaign in self.campaigns:
            for seat in campaign.seats:
                if not seat.alive:
                    continue
                self.tally.lost["token.move"] += max(0, campaign.last_move - seat.last_move)
                self.tally.lost["chat.message"] += max(0, campaign.last_chat - seat.last_chat)

    def close_window(self, index: int, elapsed: float, cpu_s: float) -> dict[str, Any]:
        """The figures of the window that just ended; the next window starts from zero."""
        tally, self.tally = self.tally, Tally()
        lags, self.lag_samples = sorted(self.lag_samples), []
        delivered = tally.delivered()
        total = sum(delivered.values())
        figures: dict[str, Any] = {
            "window": index,
            "warmup": index < 0,
            "window_s": round(elapsed, 3),
            "connected": sum(s.alive for c in self.campaigns for s in c.seats),
            "sent": {
                "token.move": tally.moves_sent,
                "cursor.move": tally.cursors_sent,
                "chat.send": tally.chats_sent,
            },
            "delivered": delivered,
            "delivered_other": dict(tally.other),
            "delivered_total": total,
            "delivered_per_s": round(total / elapsed, 1) if elapsed else 0.0,
            "latency_ms": tally.move_latency.figures(),
            "chat_latency_ms": tally.chat_latency.figures(),
            "cursor_latency_ms": tally.cursor_latency.figures(),
            "cursor_delivered_share": round(tally.cursors / tally.cursor_receivers, 4)
            if tally.cursor_receivers
            else None,
            "lost": dict(tally.lost),
            "reordered": dict(tally.reordered),
            "skipped_by_resync": dict(tally.skipped_by_resync),
            "reconnects": tally.reconnects,
            "resumed": tally.resumed,
            "resynced": tally.resynced,
            "errors": dict(tally.errors),
            "generator": {
                "cpu_s": round(cpu_s, 3),
                "cpu_share": round(cpu_s / elapsed, 3) if elapsed else 0.0,
                "loop_lag_ms_p99": round(percentile(lags, 0.99) * 1000, 3),
                "loop_lag_ms_max": round((lags[-1] if lags else 0.0) * 1000, 3),
                "missed_sends": tally.missed_sends,
            },
        }
        figures["generator_limited"] = generator_limited(figures)
        return figures


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_soak(plan: dict[str, Any], args: argparse.Namespace) -> None:
    """Connect, add the tokens, run the windows, drain, and emit the result."""
    gen = SoakGenerator(plan, args)
    windows = max(1, round(args.duration / args.soak_window))
    results: list[dict[str, Any]] = []
    setup_errors: dict[str, int] = {}
    try:
        await gen.connect_all()
        await gen.add_tokens()
        # What the set-up received or failed is not billed to the first window.
        setup_errors = dict(gen.tally.errors)
        gen.tally = Tally()
        if setup_errors:
            log(f"soak set-up errors: {setup_errors}")
        # Frames make no reference cycles; the little the reconnects leave is collected at
        # window boundaries, so no collector pause lands inside a window.
        gc.collect()
        gc.freeze()
        gc.disable()
        gen.start_senders()
        gen.loop.call_later(LAG_INTERVAL, gen._lag_tick, gen.loop.time() + LAG_INTERVAL)
        start = gen.loop.time()
        emit({"event": "soak_start", "windows": windows, "setup_errors": setup_errors})
        # A warm-up first (window -1): the load runs, loss and errors count, but RSS and p99
        # are judged from the windows after it, once the resume buffers have filled.
        spans = [(-1, args.soak_warmup)] if args.soak_warmup > 0 else []
        spans += [(index, args.soak_window) for index in range(windows)]
        opened, cpu0, end = start, _cpu(), start
        for position, (index, span) in enumerate(spans):
            gen.schedule_reconnects(index, opened, span)
            end += span
            await asyncio.sleep(max(0.0, end - gen.loop.time()))
            if position == len(spans) - 1:
                gen.running = False
                if gen.reconnect_tasks:
                    await asyncio.wait(set(gen.reconnect_tasks), timeout=HANDSHAKE_TIMEOUT)
                for _ in range(round(DRAIN_TIMEOUT / DRAIN_POLL)):
                    if gen.caught_up():
                        break
                    await asyncio.sleep(DRAIN_POLL)
                gen.count_tail_loss()
            now, cpu = gen.loop.time(), _cpu()
            figures = gen.close_window(index, now - opened, cpu - cpu0)
            emit({"event": "soak_window", **figures})
            results.append(figures)
            log(
                f"soak {'warm-up' if index < 0 else f'window {index + 1}/{windows}'}: "
                f"p99 {figures['latency_ms']['p99']:.1f} ms, "
                f"{figures['delivered_per_s']:.0f} frames/s, lost {figures['lost']}, "
                f"errors {figures['errors']}"
            )
            gc.collect()
            opened, cpu0 = gen.loop.time(), _cpu()
    finally:
        gen.running = False
        gc.enable()
        gen.close_all()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.2)
    emit({"event": "result", "mode": "soak", "windows": results, "setup_errors": setup_errors})
