"""Load generator: many picows WebSocket clients in one uvloop process, so latencies share a clock.

It reads a plan (server URL, campaign ids and one token per client slot) written by
bench.run, runs one mode, and talks to the orchestrator in JSON lines on stdout:
`window_start` / `window_end` bracket each measurement window (the orchestrator samples
the server's CPU there), `ready` says idle connections are up (the orchestrator answers on
stdin), and `result` carries the figures. Diagnostics go to stderr.

Latency travels in the coordinates, because the server re-encodes payloads from validated
structs and would drop an invented field: x is the send time in microseconds modulo 10 s,
y is a per-campaign counter used to detect loss and reordering.

The `cursor` mode is the `fixed` mode with the mover sending cursor.move instead of
token.move: the same load through the ephemeral relay, which sends a cursor to everyone but
its sender (a token.move comes back to its sender too). The `chat` mode is the `fixed` mode
with the mover sending chat.send (plain text, or every Nth with a dice roll): the send time
and the counter travel in the text, "bench <x> <y>", and come back in chat.message to every
client, the sender included. With `--relay baseline` the server is the raw relay, which
broadcasts every frame as it came (its type unchanged) to everyone, the sender included.

The `connect` mode opens N connections with at most C handshakes in flight to a fresh server
and times until every one has its state.sync. The `soak` mode is bench/soakgen.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.stats import connect_figures, percentile

X_MODULO_US = 10_000_000
TOKEN_ID = "t1"
CONNECT_CONCURRENCY = 100
HANDSHAKE_TIMEOUT = 30.0
LAG_INTERVAL = 0.005
DRAIN_TIMEOUT = 2.0
# What the mover sends in each mode (its type and its frame, to be given x and y), and whether
# its own frame comes back to it.
MOVED = {
    "fixed": (
        "token.move",
        b'{"type":"token.move","payload":{"token_id":"t1","x":%d,"y":%d}}',
        True,
    ),
    "cursor": ("cursor.move", b'{"type":"cursor.move","payload":{"x":%d,"y":%d}}', False),
    "chat": (
        "chat.message",
        b'{"type":"chat.send","payload":{"message_type":"text","content":"bench %d %d",'
        b'"gm_only":false}}',
        True,
    ),
}
# The chat mode's message with a dice roll (every --roll-every'th message).
CHAT_ROLL_FRAME = (
    b'{"type":"chat.send","payload":{"message_type":"roll","content":"bench %d %d",'
    b'"gm_only":false,"roll":"/r 1d20+5 attack"}}'
)
# The type of the frame each mode sends: what the baseline relay sends back unchanged.
SENT_TYPE = {"fixed": "token.move", "cursor": "cursor.move", "chat": "chat.send"}


class Envelope(msgspec.Struct, gc=False):
    """The fields of a server frame the generator looks at."""

    type: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")


class MovePayload(msgspec.Struct, gc=False):
    """The coordinates of a token.move, which carry the send time and the counter."""

    x: float
    y: float


class ChatPayload(msgspec.Struct, gc=False):
    """The text of a chat.message (or of a chat.send the baseline relayed): "bench <x> <y>"."""

    content: str = ""


class ErrorPayload(msgspec.Struct, gc=False):
    """The code of an error frame."""

    code: str = "?"


_decode_envelope = msgspec.json.Decoder(Envelope).decode
_decode_move = msgspec.json.Decoder(MovePayload).decode
_decode_error = msgspec.json.Decoder(ErrorPayload).decode
_decode_chat = msgspec.json.Decoder(ChatPayload).decode


def chat_xy(payload: msgspec.Raw) -> tuple[int, int]:
    """The send time and counter a chat message carries in its text ("bench <x> <y>")."""
    _, x, y = _decode_chat(payload).content.split(" ", 2)
    return int(x), int(y)


def now_us() -> int:
    """Return the shared monotonic clock in microseconds."""
    return time.perf_counter_ns() // 1000


@dataclass
class Stats:
    """Counters shared by every client of the generator."""

    latencies_us: array[int] = field(default_factory=lambda: array("q"))
    errors: Counter[str] = field(default_factory=Counter)
    reordered: int = 0
    missed_sends: int = 0
    # Window deliveries, and the count at which the drain after a window is complete.
    delivered: int = 0
    drain_target: int = 1 << 62
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class Campaign:
    """One campaign of the plan: its clients, its mover's counter and its window bounds."""

    def __init__(self, index: int, campaign_id: str, tokens: list[str]) -> None:
        self.index = index
        self.id = campaign_id
        self.tokens = tokens
        self.clients: list[Client] = []
        self.next_y = 0
        self.window_first_y = 1 << 62
        self.window_end_y = 0
        self.token_ready: asyncio.Future[None] | None = None

    @property
    def gm(self) -> Client:
        """Return the campaign's GM client (slot 0)."""
        return self.clients[0]

    @property
    def mover(self) -> Client:
        """Return the client that moves the token: a player when there is one."""
        return self.clients[1] if len(self.clients) > 1 else self.clients[0]


class Client(WSListener):
    """One WebSocket connection: records state.sync, latencies, errors and closes."""

    def __init__(self, campaign: Campaign, stats: Stats, watched: str, chat: bool = False) -> None:
        self.campaign = campaign
        self.stats = stats
        # The frame type whose coordinates (or, for chat, text) carry the send time and counter.
        self.watched = watched
        self.chat = chat
        self.transport: WSTransport | None = None
        self.synced: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.connect_started_us = 0
        self.last_y = -1
        self.window_count = 0
        self.closing = False
        self.alive = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Keep the transport for sending."""
        self.transport = transport
        self.alive = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Decode one frame and account for it."""
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        received_us = now_us()
        envelope = _decode_envelope(frame.get_payload_as_bytes())
        kind = envelope.type
        if kind == self.watched:
            if self.chat:
                x, y = chat_xy(envelope.payload)
            else:
                move = _decode_move(envelope.payload)
                x, y = int(move.x), int(move.y)
            if y <= self.last_y:
                self.stats.reordered += 1
            else:
                self.last_y = y
            if y >= self.campaign.window_first_y:
                self.window_count += 1
                stats = self.stats
                stats.latencies_us.append((received_us - x) % X_MODULO_US)
                stats.delivered += 1
                if stats.delivered >= stats.drain_target:
                    stats.drained.set()
        elif kind == "state.sync":
            if not self.synced.done():
                self.synced.set_result(received_us / 1e6)
        elif kind == "token.add":
            ready = self.campaign.token_ready
            if self is self.campaign.mover and ready is not None and not ready.done():
                ready.set_result(None)
        elif kind == "error":
            self.stats.errors["error:" + _decode_error(envelope.payload).code] += 1

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Count a close the generator did not ask for as an error."""
        self.alive = False
        if self.closing:
            return
        received = transport.close_handshake.recv if transport.close_handshake else None
        code = received.code.value if received is not None else 1006
        self.stats.errors[f"closed:{code}"] += 1
        if not self.synced.done():
            self.synced.set_exception(ConnectionError(f"closed {code} before state.sync"))

    def send(self, data: bytes) -> None:
        """Send one text frame if the connection is up."""
        if self.transport is not None and self.alive:
            self.transport.send(WSMsgType.TEXT, data)

    def close(self) -> None:
        """Close normally; the resulting disconnect is not an error."""
        self.closing = True
        if self.transport is not None and self.alive:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


class Generator:
    """All campaigns and clients of one run, on one event loop."""

    def __init__(
        self,
        url: str,
        plan: list[dict[str, Any]],
        clients_per_campaign: int,
        mode: str,
        relay: str = "ours",
        roll_every: int = 0,
    ) -> None:
        self.url = url
        self.k = clients_per_campaign
        self.moved, self.move_frame, self.echoed = MOVED.get(mode, MOVED["fixed"])
        self.chat = mode == "chat"
        self.roll_every = roll_every if self.chat else 0
        if relay == "baseline":
            # The raw relay sends every frame back as it came, to everyone, its sender included.
            self.moved, self.echoed = SENT_TYPE.get(mode, "token.move"), True
        self.stats = Stats()
        self.campaigns = [
            Campaign(i, entry["id"], entry["tokens"][:clients_per_campaign])
            for i, entry in enumerate(plan)
        ]
        self.loop = asyncio.get_running_loop()
        self.lag_samples: list[float] = []
        self.lag_running = False
        self.mover_handles: list[asyncio.TimerHandle] = []
        self.movers_running = False

    # Connecting

    async def connect_client(self, campaign: Campaign, slot: int) -> Client:
        """Open one connection and wait for its state.sync; failures are counted, not raised."""
        client = Client(campaign, self.stats, self.moved, self.chat)
        client.connect_started_us = now_us()
        url = f"{self.url}?campaign={campaign.id}&token={campaign.tokens[slot]}"
        try:
            await ws_connect(
                lambda: client,
                url,
                websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
                read_buffer_init_size=4096,
            )
            await asyncio.wait_for(client.synced, HANDSHAKE_TIMEOUT)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.stats.errors[f"connect:{type(exc).__name__}"] += 1
            client.closing = True
        except Exception as exc:  # picows raises WSHandshakeError for HTTP refusals
            self.stats.errors[f"connect:{type(exc).__name__}"] += 1
            client.closing = True
        return client

    async def connect_campaigns(self, campaigns: list[Campaign], concurrency: int) -> None:
        """Connect every slot of the given campaigns, at most `concurrency` handshakes at once."""
        gate = asyncio.Semaphore(concurrency)

        async def one(campaign: Campaign, slot: int) -> Client:
            async with gate:
                return await self.connect_client(campaign, slot)

        for campaign in campaigns:
            results = [one(campaign, slot) for slot in range(self.k)]
            campaign.clients = list(await asyncio.gather(*results))

    async def add_tokens(self, campaigns: list[Campaign]) -> None:
        """Have each GM add the moved token and wait until its mover has seen it."""
        for campaign in campaigns:
            campaign.token_ready = self.loop.create_future()
            add = {
                "type": "token.add",
                "payload": {
                    "token_id": TOKEN_ID,
                    "name": "bench",
                    "x": 0,
                    "y": 0,
                    "width": 1,
                    "height": 1,
                    "visible": True,
                },
            }
            campaign.gm.send(json.dumps(add).encode())
        pending = [c.token_ready for c in campaigns if c.token_ready is not None]
        _done, not_done = await asyncio.wait(pending, timeout=HANDSHAKE_TIMEOUT)
        if not_done:
            self.stats.errors["token_add_timeout"] += len(not_done)

    async def reconnect_dead(self, campaigns: list[Campaign]) -> None:
        """Replace connections the server closed, so one overloaded step spares the next."""
        for campaign in campaigns:
            for slot, client in enumerate(campaign.clients):
                if not client.alive:
                    campaign.clients[slot] = await self.connect_client(campaign, slot)

    def close_all(self) -> None:
        """Close every connection normally."""
        for campaign in self.campaigns:
            for client in campaign.clients:
                client.close()

    # Moving

    def start_movers(self, campaigns: list[Campaign], rate: float) -> None:
        """Start one mover per campaign at `rate` Hz, phases spread evenly over one period."""
        period = 1.0 / rate
        t0 = self.loop.time() + 0.01
        self.movers_running = True
        self.mover_handles = []
        for i, campaign in enumerate(campaigns):
            first = t0 + period * i / len(campaigns)
            self.mover_handles.append(
                self.loop.call_at(first, self._mover_tick, campaign, first, period, i)
            )

    def _mover_tick(self, campaign: Campaign, due: float, period: float, slot: int) -> None:
        if not self.movers_running:
            return
        y = campaign.next_y
        campaign.next_y = y + 1
        x = (time.perf_counter_ns() // 1000) % X_MODULO_US
        if self.roll_every and y % self.roll_every == 0:
            campaign.mover.send(CHAT_ROLL_FRAME % (x, y))
        else:
            campaign.mover.send(self.move_frame % (x, y))
        due += period
        now = self.loop.time()
        if due < now:
            skipped = int((now - due) / period) + 1
            self.stats.missed_sends += skipped
            due += skipped * period
        self.mover_handles[slot] = self.loop.call_at(
            due, self._mover_tick, campaign, due, period, slot
        )

    def stop_movers(self) -> None:
        """Stop every mover."""
        self.movers_running = False
        for handle in self.mover_handles:
            handle.cancel()

    # Event-loop lag

    def start_lag_monitor(self) -> None:
        """Sample how late a periodic timer fires: the generator's own saturation signal."""
        self.lag_running = True
        self.lag_samples = []
        self.loop.call_later(LAG_INTERVAL, self._lag_tick, self.loop.time() + LAG_INTERVAL)

    def _lag_tick(self, due: float) -> None:
        if not self.lag_running:
            return
        now = self.loop.time()
        self.lag_samples.append(max(0.0, now - due))
        self.loop.call_at(now + LAG_INTERVAL, self._lag_tick, now + LAG_INTERVAL)

    # Measuring

    async def measure(
        self,
        active: list[Campaign],
        rate: float,
        warmup: float,
        window: float,
        label: dict[str, Any],
    ) -> dict[str, Any]:
        """Run movers for warmup + window, drain, and return the window's figures."""
        for campaign in self.campaigns:
            campaign.window_first_y = 1 << 62
            for client in campaign.clients:
                client.window_count = 0
        self.stats.delivered = 0
        self.stats.drain_target = 1 << 62
        self.stats.drained.clear()
        # Frames make no reference cycles: a collector pause would only be billed as latency.
        gc.collect()
        gc.freeze()
        gc.disable()
        self.start_movers(active, rate)
        await asyncio.sleep(warmup)
        self.stats.latencies_us = array("q")
        errors_before = Counter(self.stats.errors)
        reordered_before = self.stats.reordered
        missed_before = self.stats.missed_sends
        for campaign in active:
            campaign.window_first_y = campaign.next_y
        self.start_lag_monitor()
        emit({"event": "window_start", **label})
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await asyncio.sleep(window)
        self.stop_movers()
        sent_window = time.perf_counter() - t0
        for campaign in active:
            campaign.window_end_y = campaign.next_y
        expected = sum(
            (c.window_end_y - c.window_first_y)
            * sum(1 for cl in c.clients if cl.alive and self.receives(c, cl))
            for c in active
        )
        self.stats.drain_target = expected
        if self.stats.delivered < expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stats.drained.wait(), DRAIN_TIMEOUT)
        drained = time.perf_counter() - t0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        self.lag_running = False
        gc.enable()
        emit({"event": "window_end", **label})
        delivered = self._delivered(active)
        sent = sum(c.window_end_y - c.window_first_y for c in active)
        offered = sum(
            (c.window_end_y - c.window_first_y) * sum(self.receives(c, cl) for cl in c.clients)
            for c in active
        )
        lat = sorted(self.stats.latencies_us)
        lags = sorted(self.lag_samples)
        gen_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        errors = self.stats.errors - errors_before
        return {
            **label,
            "campaigns": len(active),
            "clients": len(active) * self.k,
            "window_s": round(sent_window, 3),
            "moves_sent": sent,
            "delivered": delivered,
            "delivered_per_s": round(delivered / sent_window, 1),
            "lost": max(0, offered - delivered),
            "reordered": self.stats.reordered - reordered_before,
            "errors": dict(errors),
            "latency_ms": {
                "p50": percentile(lat, 0.50) / 1000,
                "p95": percentile(lat, 0.95) / 1000,
                "p99": percentile(lat, 0.99) / 1000,
                "max": (lat[-1] / 1000) if lat else 0.0,
            },
            "generator": {
                "cpu_s": round(gen_cpu, 3),
                "cpu_share": round(gen_cpu / drained, 3),
                "loop_lag_ms_p99": round(percentile(lags, 0.99) * 1000, 3),
                "loop_lag_ms_max": round((lags[-1] if lags else 0.0) * 1000, 3),
                "missed_sends": self.stats.missed_sends - missed_before,
            },
        }

    def receives(self, campaign: Campaign, client: Client) -> bool:
        """Whether `client` gets the mover's frames (the mover itself only when they echo)."""
        return self.echoed or client is not campaign.mover

    @staticmethod
    def _delivered(active: list[Campaign]) -> int:
        return sum(cl.window_count for c in active for cl in c.clients)


def emit(event: dict[str, Any]) -> None:
    """Write one JSON line for the orchestrator."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """Write a diagnostic line to stderr."""
    sys.stderr.write(f"[loadgen] {message}\n")
    sys.stderr.flush()


def generator_limited(result: dict[str, Any]) -> bool:
    """Say whether the generator, not the server, was near its limit in a window."""
    gen = result["generator"]
    return bool(gen["cpu_share"] > 0.85 or gen["loop_lag_ms_p99"] > 10 or gen["missed_sends"] > 0)


def step_passes(result: dict[str, Any], p99_limit_ms: float) -> bool:
    """A ramp step passes with p99 within the limit, no errors and nothing lost."""
    return bool(
        result["latency_ms"]["p99"] <= p99_limit_ms
        and not result["errors"]
        and result["lost"] == 0
        and result["delivered"] > 0
    )


async def run_fixed(gen: Generator, args: argparse.Namespace) -> None:
    """Fixed load: connect R campaigns, add the token, measure one window (of moves, or of
    cursors or chat messages in the cursor and chat modes)."""
    active = gen.campaigns[: args.campaigns]
    await gen.connect_campaigns(active, CONNECT_CONCURRENCY)
    await gen.add_tokens(active)
    result = await gen.measure(active, args.rate, args.warmup, args.window, {"mode": args.mode})
    result["generator_limited"] = generator_limited(result)
    gen.close_all()
    emit({"event": "result", **result})


async def run_ramp(gen: Generator, args: argparse.Namespace) -> None:
    """Capacity ramp: grow by `step` campaigns until a step fails, then bisect to `resolution`."""
    connected = 0
    steps: list[dict[str, Any]] = []

    async def attempt(count: int) -> bool:
        nonlocal connected
        if count > connected:
            fresh = gen.campaigns[connected:count]
            await gen.connect_campaigns(fresh, CONNECT_CONCURRENCY)
            await gen.add_tokens(fresh)
            connected = count
        active = gen.campaigns[:count]
        await gen.reconnect_dead(active)
        result = await gen.measure(
            active, args.rate, args.warmup, args.window, {"mode": "ramp", "step": len(steps)}
        )
        result["passed"] = step_passes(result, args.p99_limit_ms)
        result["generator_limited"] = generator_limited(result)
        steps.append(result)
        emit({"event": "step", **result})
        log(
            f"ramp {count} campaigns: p99 {result['latency_ms']['p99']:.1f} ms, "
            f"errors {result['errors']}, lost {result['lost']}, passed {result['passed']}"
        )
        await asyncio.sleep(args.settle)
        return bool(result["passed"])

    best = 0
    failed_at = 0
    count = args.start
    while count <= min(args.max, len(gen.campaigns)):
        if not await attempt(count):
            failed_at = count
            break
        best = count
        count += args.step
    if failed_at:
        low, high = best, failed_at
        while high - low > args.resolution:
            middle = (low + high) // 2
            if await attempt(middle):
                low = middle
            else:
                high = middle
        best = low
    gen.close_all()
    emit(
        {
            "event": "result",
            "mode": "ramp",
            "capacity": best,
            "first_failure": failed_at or None,
            "limit_reached": not failed_at,
            "steps": steps,
        }
    )


async def run_idle(gen: Generator, args: argparse.Namespace) -> None:
    """Idle connections: connect up to each count, report ready, wait for the go-ahead."""
    reader = asyncio.StreamReader()
    await gen.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connected_campaigns = 0
    for count in args.counts:
        needed = -(-count // gen.k)
        await gen.connect_campaigns(gen.campaigns[connected_campaigns:needed], CONNECT_CONCURRENCY)
        connected_campaigns = needed
        alive = sum(cl.alive for c in gen.campaigns[:needed] for cl in c.clients)
        emit(
            {
                "event": "ready",
                "target": count,
                "connected": alive,
                "errors": dict(gen.stats.errors),
            }
        )
        line = await asyncio.wait_for(reader.readline(), args.hold_timeout)
        if not line:
            break
    gen.close_all()
    emit({"event": "result", "mode": "idle", "errors": dict(gen.stats.errors)})


async def run_storm(gen: Generator, args: argparse.Namespace) -> None:
    """Join storm: open every connection at once and time until all have state.sync."""
    active = gen.campaigns[: args.campaigns]
    t0 = now_us()
    tasks = [gen.connect_client(c, slot) for c in active for slot in range(gen.k)]
    clients = await asyncio.gather(*tasks)
    synced = [
        (cl.synced.result() * 1e6 - t0) / 1000
        for cl in clients
        if cl.synced.done() and not cl.synced.cancelled() and cl.synced.exception() is None
    ]
    synced.sort()
    for campaign in active:
        campaign.clients = [cl for cl in clients if cl.campaign is campaign]
    gen.close_all()
    emit(
        {
            "event": "result",
            "mode": "storm",
            "clients": len(clients),
            "synced": len(synced),
            "all_synced_ms": round(synced[-1], 1) if len(synced) == len(clients) else None,
            "p50_ms": round(percentile(synced, 0.5), 1),
            "p99_ms": round(percentile(synced, 0.99), 1),
            "errors": dict(gen.stats.errors),
        }
    )


async def run_connect(gen: Generator, args: argparse.Namespace) -> None:
    """Connect rate: open every connection, at most --concurrency handshakes in flight, and
    time until all have their state.sync."""
    active = gen.campaigns[: args.campaigns]
    gate = asyncio.Semaphore(args.concurrency)

    async def one(campaign: Campaign, slot: int) -> Client:
        async with gate:
            return await gen.connect_client(campaign, slot)

    gc.collect()
    gc.freeze()
    gc.disable()
    gen.start_lag_monitor()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = now_us()
    clients = await asyncio.gather(*(one(c, slot) for c in active for slot in range(gen.k)))
    elapsed = (now_us() - t0) / 1e6
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    gen.lag_running = False
    gc.enable()
    synced: list[int | None] = [
        int(cl.synced.result() * 1e6)
        if cl.synced.done() and not cl.synced.cancelled() and cl.synced.exception() is None
        else None
        for cl in clients
    ]
    for campaign in active:
        campaign.clients = [cl for cl in clients if cl.campaign is campaign]
    gen.close_all()
    lags = sorted(gen.lag_samples)
    gen_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    result = {
        "event": "result",
        "mode": "connect",
        "concurrency": args.concurrency,
        **connect_figures(t0, [cl.connect_started_us for cl in clients], synced),
        "errors": dict(gen.stats.errors),
        "generator": {
            "cpu_s": round(gen_cpu, 3),
            "cpu_share": round(gen_cpu / max(elapsed, 1e-6), 3),
            "loop_lag_ms_p99": round(percentile(lags, 0.99) * 1000, 3),
            "loop_lag_ms_max": round((lags[-1] if lags else 0.0) * 1000, 3),
            "missed_sends": 0,
        },
    }
    result["generator_limited"] = generator_limited(result)
    emit(result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="JSON file written by bench.run")
    parser.add_argument(
        "--mode",
        choices=["fixed", "cursor", "chat", "ramp", "idle", "storm", "connect", "soak"],
        default="fixed",
    )
    parser.add_argument(
        "--relay",
        choices=["ours", "baseline"],
        default="ours",
        help="baseline: the server relays every frame unchanged to everyone, sender included",
    )
    parser.add_argument(
        "--roll-every", type=int, default=0, help="chat: every Nth message carries a dice roll"
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="connect: handshakes in flight at most"
    )
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--clients", type=int, default=6, help="clients per campaign, GM first")
    parser.add_argument("--rate", type=float, default=20.0, help="moves per second per campaign")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--start", type=int, default=100, help="ramp: first step")
    parser.add_argument("--step", type=int, default=100, help="ramp: growth per step")
    parser.add_argument("--max", type=int, default=1200, help="ramp: largest step")
    parser.add_argument("--resolution", type=int, default=25, help="ramp: bisection stops here")
    parser.add_argument("--settle", type=float, default=1.0, help="ramp: pause between steps")
    parser.add_argument("--p99-limit-ms", type=float, default=50.0)
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[2000])
    parser.add_argument("--hold-timeout", type=float, default=120.0)
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after this long")
    soak = parser.add_argument_group("soak (bench/soakgen.py)")
    soak.add_argument("--duration", type=float, default=1800.0, help="soak: seconds in all")
    soak.add_argument("--soak-window", type=float, default=60.0, help="soak: seconds per window")
    soak.add_argument(
        "--soak-warmup", type=float, default=0.0, help="soak: seconds of load before window 1"
    )
    soak.add_argument("--move-rate", type=float, default=10.0, help="soak: token.move Hz")
    soak.add_argument("--cursor-rate", type=float, default=5.0, help="soak: cursor.move Hz")
    soak.add_argument(
        "--chat-interval", type=float, default=5.0, help="soak: seconds between a campaign's chats"
    )
    soak.add_argument(
        "--reconnects", type=int, default=2, help="soak: reconnects per campaign per window"
    )
    soak.add_argument(
        "--offline", type=float, default=1.0, help="soak: seconds a reconnecting client is away"
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, plan: dict[str, Any]) -> None:
    """Run the chosen mode on the plan within the deadline."""
    if args.mode == "soak":
        from bench.soakgen import run_soak

        await asyncio.wait_for(run_soak(plan, args), args.deadline)
        return
    gen = Generator(
        plan["url"], plan["campaigns"], args.clients, args.mode, args.relay, args.roll_every
    )
    modes: dict[str, Callable[[Generator, argparse.Namespace], Any]] = {
        "fixed": run_fixed,
        "cursor": run_fixed,
        "chat": run_fixed,
        "ramp": run_ramp,
        "idle": run_idle,
        "storm": run_storm,
        "connect": run_connect,
    }
    try:
        await asyncio.wait_for(modes[args.mode](gen, args), args.deadline)
    finally:
        gen.close_all()
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    arguments = parse_args()
    with open(arguments.plan) as f:
        uvloop.run(main(arguments, json.load(f)))
