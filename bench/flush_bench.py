"""Flush benchmark: one tick of the real flush loop over 10,000 dirty sessions, and encoder speed.

Creates a scratch database on the local Postgres (VTT_TEST_POSTGRES_URL's server, through
its `postgres` database) and migrates it. N real Sessions of ~20 tokens each (--members
members each: a GM, then players) live in a real SessionManager over a SqlStore. Before
every tick each GM moves a token through Session.submit, so every session is dirty; the
tick is SessionManager.flush, as the flush loop runs it: a snapshot of each session under
its lock (encoding its state), the batched upserts, then mark_saved, which hands every
member its state.saved frame. The first tick inserts, the timed ticks (median of --runs)
update every row. Round trips are counted with a SQLAlchemy before_cursor_execute
listener. The event-loop stall is the lateness of a LAG_INTERVAL timer on the same loop
(uvloop, with the server's collector thresholds), so it reads up to about a millisecond
short of a callback's true length; its floor on an idle loop is measured first. Then it
times msgspec against the json module encoding one large campaign (2,000 tokens, 5,000 fog
zones, 90,000 wall points). Prints a summary and writes the figures as JSON (default
bench/results/raw/flush.json).

    .venv/bin/python -m bench.flush_bench [--sessions 10000] [--members 2] [--runs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import asyncpg
import msgspec
import uvloop
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url

from app.auth.roles import DevClaimRoles
from app.chat import CampaignChat
from app.config import Settings
from app.errors import CloseConnection
from app.manager import SessionManager
from app.metrics import Metrics
from app.model import Actor, Role, StateChange
from app.persistence.chat import MemoryChatStore
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import WRITERS, SqlStore
from app.protocol import TokenMoveMsg, decode_client_message, decode_stored_state
from app.session import Outgoing, Session
from app.transport.serve import GC_THRESHOLDS

T = TypeVar("T")

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_OUT = Path(__file__).parent / "results" / "raw" / "flush.json"
LAG_INTERVAL = 0.001


class Token(msgspec.Struct, omit_defaults=True):
    """A token as stored (PROTOCOL.md "State")."""

    token_id: str
    name: str
    x: float
    y: float
    width: float
    height: float
    visible: bool
    character_id: str | None = None
    image_url: str | None = None
    owner_id: str | None = None


class FogZone(msgspec.Struct):
    """A rectangle of fog."""

    x: float
    y: float
    w: float
    h: float
    visible: bool


class Point(msgspec.Struct):
    """A dd2vtt point, in grid squares."""

    x: float
    y: float


class MapMetadata(msgspec.Struct):
    """The dd2vtt walls of a map."""

    walls: list[list[Point]]


class State(msgspec.Struct, omit_defaults=True):
    """A campaign's stored state."""

    campaign_id: str
    grid_size: int
    map_width: float
    map_height: float
    darkness_level: float
    tokens: dict[str, Token]
    fog_zones: list[FogZone]
    seq: int
    map_id: str | None = None
    map_url: str | None = None
    map_metadata: MapMetadata | None = None


def campaign(campaign_id: str, tokens: int, fog_zones: int, wall_points: int, seq: int) -> State:
    """A campaign state with the given amount of content, deterministic for a given id."""
    return State(
        campaign_id=campaign_id,
        map_id="map-keep",
        map_url="https://cdn.example/maps/keep-of-the-silent-stars.webp",
        grid_size=64,
        map_width=4096,
        map_height=3072,
        darkness_level=0.35,
        tokens={
            f"tok-{i:04d}": Token(
                token_id=f"tok-{i:04d}",
                name=f"Goblin skirmisher {i}",
                x=64.0 * (i % 60) + 0.5,
                y=64.0 * (i // 60),
                width=64,
                height=64,
                visible=i % 7 != 0,
                character_id=f"0b6f4c1e-8a7d-4a53-9d9e-{i:012d}" if i % 4 == 0 else None,
                image_url=f"https://cdn.example/tokens/goblin-{i % 12}.webp",
                owner_id="user_2abcDEFghiJKLmnoPQRstuVWxyz",
            )
            for i in range(tokens)
        },
        fog_zones=[
            FogZone(x=50.0 * (i % 80), y=50.0 * (i // 80), w=50, h=50, visible=i % 3 == 0)
            for i in range(fog_zones)
        ],
        map_metadata=MapMetadata(
            walls=[
                [Point(x=(w * 10 + p) * 0.25, y=(w % 97) * 0.5 + p * 0.125) for p in range(10)]
                for w in range(wall_points // 10)
            ]
        )
        if wall_points
        else None,
        seq=seq,
    )


def median_seconds(action: Callable[[], object], runs: int) -> float:
    """The median wall time of `runs` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def admin(server: URL, statement: str) -> None:
    """Run one statement on the server's `postgres` database."""
    connection = await asyncpg.connect(server.render_as_string(hide_password=False), timeout=10)
    try:
        await connection.execute(statement, timeout=60)
    finally:
        await connection.close(timeout=10)


class BenchMember:
    """A session member that keeps what it is handed, as a connection's outbox would."""

    def __init__(self, user_id: str, role: Role) -> None:
        self.actor = Actor(user_id=user_id, role=role)
        self.username: str | None = None
        self.frames: list[Outgoing] = []

    def deliver(self, outgoing: Outgoing) -> None:
        """Keep the frame."""
        self.frames.append(outgoing)

    def deliver_soon(self, outgoing: Outgoing) -> None:
        """Keep the frame (what may wait here waits for nothing)."""
        self.frames.append(outgoing)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to gather: the frames are kept as they come."""
        return contextlib.nullcontext()

    def close(self, reason: CloseConnection) -> None:
        """Nothing to disconnect: the bench's rows are never taken over."""


class Lag(NamedTuple):
    """How late one wake-up of the probe came: on the wall clock, and in the loop's own CPU."""

    wall: float
    cpu: float


async def loop_lag(stop: asyncio.Event, lags: list[Lag]) -> None:
    """Record how late the event loop wakes a LAG_INTERVAL sleeper, every time.

    On a shared machine the wall-clock lateness also counts the time the process was not
    running at all (the Postgres backends of the write share the two cores with it); the
    CPU figure is the most of that lateness the loop can have spent running callbacks: the
    CPU time its thread used meanwhile, if less.
    """
    while not stop.is_set():
        wall, cpu = time.perf_counter(), time.thread_time()
        await asyncio.sleep(LAG_INTERVAL)
        late = time.perf_counter() - wall - LAG_INTERVAL
        lags.append(Lag(late, min(late, time.thread_time() - cpu)))


async def probed(action: Callable[[], Awaitable[T]]) -> tuple[T, float, list[Lag]]:
    """Run `action` with the lag probe beside it: its result, wall time and the lateness seen."""
    stop = asyncio.Event()
    lags: list[Lag] = []
    watcher = asyncio.create_task(loop_lag(stop, lags))
    await asyncio.sleep(LAG_INTERVAL * 2)
    started = time.perf_counter()
    result = await action()
    elapsed = time.perf_counter() - started
    stop.set()
    await watcher
    return result, elapsed, lags


async def idle_floor() -> float:
    """The probe's worst wall-clock lateness on an idle loop over half a second, in seconds."""
    _, _, lags = await probed(lambda: asyncio.sleep(0.5))
    return max(lag.wall for lag in lags)


async def live_sessions(
    manager: SessionManager, rows: list[tuple[str, bytes]], members: int
) -> list[tuple[Session, list[BenchMember]]]:
    """Load every stored state into a real Session of `manager` and join its members."""
    settings, metrics = manager.settings, manager.metrics
    live = []
    for campaign_id, data in rows:
        chat = CampaignChat(campaign_id, settings.chat, MemoryChatStore(), DevClaimRoles())
        session = Session(decode_stored_state(data, campaign_id), settings, metrics, chat)
        manager.sessions[campaign_id] = session
        joined = [
            BenchMember(
                f"user_{campaign_id}_{'gm' if i == 0 else f'p{i}'}", "gm" if i == 0 else "player"
            )
            for i in range(members)
        ]
        for member in joined:
            await session.join(member)
        live.append((session, joined))
    return live


def move(x: int) -> StateChange:
    """A GM's token.move of the first token to `x`, decoded as the server decodes it."""
    message = decode_client_message(
        json.dumps({"type": "token.move", "payload": {"token_id": "tok-0000", "x": x, "y": 1}})
    )
    assert isinstance(message, TokenMoveMsg)
    return message


async def flush_ticks(
    url: str, sessions: int, tokens: int, members: int, runs: int
) -> dict[str, Any]:
    """Run the manager's flush over `sessions` dirty sessions `runs` + 1 times, timing each."""
    await asyncio.to_thread(upgrade_to_head, url)
    encode = msgspec.json.Encoder().encode
    ids = [f"campaign-{i:05d}" for i in range(sessions)]
    started = time.perf_counter()
    rows = [(cid, encode(campaign(cid, tokens, 8, 0, seq=1))) for cid in ids]
    build_and_encode = time.perf_counter() - started
    states = [state for _, state in rows]
    started = time.perf_counter()
    for state in states:
        msgspec.json.decode(state, type=State)
    decode = time.perf_counter() - started

    engine = create_engine(url)
    store = SqlStore(engine)
    settings = Settings(env="production", flush_interval=3600)
    manager = SessionManager(settings, store, Metrics(), MemoryChatStore(), DevClaimRoles())
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    try:
        await store.ping()
        # What the server's start-up does in the background (Services.build: store.start()).
        await store.warm()
        live = await live_sessions(manager, rows, members)
        # What building the sessions left behind is not the tick's to collect.
        gc.collect()
        floor = await idle_floor()
        ticks: list[dict[str, Any]] = []
        for tick in range(runs + 1):
            for session, joined in live:
                await session.submit(joined[0], move(tick))
                for member in joined:
                    member.frames.clear()
            statements.clear()
            ok, elapsed, lags = await probed(manager.flush)
            if not ok or any(session.dirty for session, _ in live):
                raise RuntimeError("the flush failed or left sessions dirty")
            acknowledged = sum(
                1
                for _, joined in live
                for member in joined
                for out in member.frames
                if out.kind == "state.saved"
            )
            if acknowledged != sessions * members:
                raise RuntimeError(
                    f"{acknowledged} state.saved frames for {sessions * members} members"
                )
            ticks.append(
                {
                    "kind": "insert" if tick == 0 else "update",
                    "seconds": elapsed,
                    "round_trips_counted": len(statements),
                    "max_loop_lag_ms": max(lag.wall for lag in lags) * 1000,
                    "max_loop_lag_cpu_ms": max(lag.cpu for lag in lags) * 1000,
                    "lags_over_5ms": sum(1 for lag in lags if lag.wall > 0.005),
                    "cpu_lags_over_5ms": sum(1 for lag in lags if lag.cpu > 0.005),
                }
            )
        async with engine.connect() as connection:
            version = await connection.scalar(text("SHOW server_version"))
            last = await connection.scalar(
                text(
                    "SELECT state->'tokens'->'tok-0000'->>'x' FROM vtt_sessions"
                    " WHERE campaign_id = :id"
                ),
                {"id": ids[-1]},
            )
            stored = await connection.scalar(text("SELECT count(*) FROM vtt_sessions"))
        if stored != sessions or float(last) != runs:
            raise RuntimeError(f"{stored} rows stored, the last one's token at x={last}")
    finally:
        await store.close()
    updates = [tick for tick in ticks if tick["kind"] == "update"]
    return {
        "sessions": sessions,
        "members_per_session": members,
        "writers": WRITERS,
        "tokens_per_session": tokens,
        "state_bytes_mean": statistics.mean(len(state) for state in states),
        "state_bytes_total": sum(len(state) for state in states),
        "build_and_encode_all_seconds": build_and_encode,
        "decode_all_seconds": decode,
        "tick_seconds_median": statistics.median(tick["seconds"] for tick in updates),
        "round_trips_per_tick": max(tick["round_trips_counted"] for tick in updates),
        "loop_stall_ms_median": statistics.median(tick["max_loop_lag_ms"] for tick in updates),
        "loop_stall_cpu_ms_median": statistics.median(
            tick["max_loop_lag_cpu_ms"] for tick in updates
        ),
        "max_loop_lag_ms": max(tick["max_loop_lag_ms"] for tick in ticks),
        "max_loop_lag_cpu_ms": max(tick["max_loop_lag_cpu_ms"] for tick in ticks),
        "idle_probe_floor_ms": floor * 1000,
        "postgres_version": version,
        "ticks": ticks,
    }


def encoders(runs: int) -> dict[str, Any]:
    """Time msgspec and json encoding one large campaign (the issue's worst case)."""
    large = campaign("campaign-large", tokens=2000, fog_zones=5000, wall_points=90_000, seq=1)
    encoder = msgspec.json.Encoder()
    builtins = msgspec.to_builtins(large)
    assert json.loads(encoder.encode(large)) == builtins
    size = len(encoder.encode(large))
    # The dd2vtt walls change only with the map: kept as already-encoded JSON, a flush
    # would copy them instead of formatting 180,000 floats again.
    walls_raw = msgspec.structs.replace(
        large, map_metadata=msgspec.Raw(encoder.encode(large.map_metadata))
    )
    assert encoder.encode(walls_raw) == encoder.encode(large)
    return {
        "tokens": len(large.tokens),
        "fog_zones": len(large.fog_zones),
        "wall_points": sum(len(wall) for wall in large.map_metadata.walls)
        if large.map_metadata
        else 0,
        "json_bytes": size,
        "msgspec_struct_ms": median_seconds(lambda: encoder.encode(large), runs) * 1000,
        "msgspec_dicts_ms": median_seconds(lambda: encoder.encode(builtins), runs) * 1000,
        "msgspec_walls_preencoded_ms": median_seconds(lambda: encoder.encode(walls_raw), runs)
        * 1000,
        "json_dumps_dicts_ms": median_seconds(
            lambda: json.dumps(builtins, separators=(",", ":")), runs
        )
        * 1000,
        "json_dumps_default_ms": median_seconds(lambda: json.dumps(builtins), runs) * 1000,
        "msgspec_decode_ms": median_seconds(
            lambda: msgspec.json.decode(encoder.encode(large), type=State), runs
        )
        * 1000,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--members", type=int, default=2, help="members per session (a GM first)")
    parser.add_argument("--runs", type=int, default=5, help="timed ticks (median reported)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("VTT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL,
        help="any database URL on the server to use; a scratch database is created beside it",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run both measurements in a scratch database that is dropped afterwards."""
    server = make_url(args.postgres).set(database="postgres")
    scratch = f"vtt_bench_{uuid.uuid4().hex[:10]}"
    await admin(server, f'CREATE DATABASE "{scratch}"')
    try:
        url = server.set(database=scratch).render_as_string(hide_password=False)
        flush = await flush_ticks(url, args.sessions, args.tokens, args.members, args.runs)
    finally:
        await admin(server, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "flush": flush,
        "large_campaign_encode": encoders(args.runs),
    }


if __name__ == "__main__":
    arguments = parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    results = uvloop.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    flush, large = results["flush"], results["large_campaign_encode"]
    print(
        f"flush: {flush['sessions']} sessions x {flush['tokens_per_session']} tokens"
        f" x {flush['members_per_session']} members"
        f" ({flush['state_bytes_mean']:.0f} B each, {flush['state_bytes_total'] / 1e6:.1f} MB)"
        f" -> tick {flush['tick_seconds_median'] * 1000:.0f} ms (median of {arguments.runs}),"
        f" {flush['round_trips_per_tick']} round trips,"
        f" longest event-loop stall {flush['loop_stall_ms_median']:.1f} ms wall,"
        f" {flush['loop_stall_cpu_ms_median']:.1f} ms CPU (medians); worst tick"
        f" (the insert included) {flush['max_loop_lag_ms']:.1f} ms wall,"
        f" {flush['max_loop_lag_cpu_ms']:.1f} ms CPU;"
        f" idle floor {flush['idle_probe_floor_ms']:.1f} ms"
    )
    print(
        f"large campaign ({large['tokens']} tokens, {large['fog_zones']} fog zones,"
        f" {large['wall_points']} wall points, {large['json_bytes'] / 1e6:.2f} MB):"
        f" msgspec {large['msgspec_struct_ms']:.1f} ms (structs),"
        f" {large['msgspec_dicts_ms']:.1f} ms (dicts),"
        f" {large['msgspec_walls_preencoded_ms']:.1f} ms (walls kept pre-encoded);"
        f" json.dumps {large['json_dumps_dicts_ms']:.1f} ms (compact),"
        f" {large['json_dumps_default_ms']:.1f} ms (default)"
    )
    print(f"written to {arguments.out}", file=sys.stderr)
