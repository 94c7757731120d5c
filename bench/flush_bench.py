"""Flush benchmark: one tick writing 10,000 dirty sessions to Postgres, and encoder speed.

Creates a scratch database on the local Postgres (VTT_TEST_POSTGRES_URL's server, through
its `postgres` database), migrates it, and writes N sessions of ~20 tokens each with
SqlStore.save_many, as the flush loop does every tick: the first tick inserts, the timed
ticks (median of --runs) update every row. Round trips are counted with a SQLAlchemy
before_cursor_execute listener, not taken from save_many's answer; the worst event-loop
stall during a tick is measured too. Then it times msgspec against the json module
encoding one large campaign (2,000 tokens, 5,000 fog zones, 90,000 wall points). Prints a
summary and writes the figures as JSON (default bench/results/raw/flush.json).

    .venv/bin/python -m bench.flush_bench [--sessions 10000] [--runs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url

from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import WRITERS, SqlStore

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_OUT = Path(__file__).parent / "results" / "raw" / "flush.json"
LAG_INTERVAL = 0.005


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


async def loop_lag(stop: asyncio.Event, worst: list[float]) -> None:
    """Record how late the event loop wakes a LAG_INTERVAL sleeper (the worst stall)."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL)
        worst[0] = max(worst[0], time.perf_counter() - started - LAG_INTERVAL)


async def flush_ticks(url: str, sessions: int, tokens: int, runs: int) -> dict[str, Any]:
    """Write `sessions` states once (insert), then `runs` more times (update), timing each."""
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
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        statements.append(args[2])

    try:
        await store.ping()
        ticks = []
        for tick in range(runs + 1):
            statements.clear()
            stop, worst = asyncio.Event(), [0.0]
            watcher = asyncio.create_task(loop_lag(stop, worst))
            started = time.perf_counter()
            reported = await store.save_many(rows)
            elapsed = time.perf_counter() - started
            stop.set()
            await watcher
            ticks.append(
                {
                    "kind": "insert" if tick == 0 else "update",
                    "seconds": elapsed,
                    "round_trips_counted": len(statements),
                    "round_trips_reported": reported,
                    "max_loop_lag_ms": worst[0] * 1000,
                }
            )
        async with engine.connect() as connection:
            version = await connection.scalar(text("SHOW server_version"))
    finally:
        await store.close()
    updates = [tick for tick in ticks if tick["kind"] == "update"]
    return {
        "sessions": sessions,
        "writers": WRITERS,
        "tokens_per_session": tokens,
        "state_bytes_mean": statistics.mean(len(state) for state in states),
        "state_bytes_total": sum(len(state) for state in states),
        "build_and_encode_all_seconds": build_and_encode,
        "decode_all_seconds": decode,
        "tick_seconds_median": statistics.median(tick["seconds"] for tick in updates),
        "round_trips_per_tick": max(tick["round_trips_counted"] for tick in updates),
        "max_loop_lag_ms": max(tick["max_loop_lag_ms"] for tick in ticks),
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
        flush = await flush_ticks(url, args.sessions, args.tokens, args.runs)
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
    results = asyncio.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    flush, large = results["flush"], results["large_campaign_encode"]
    print(
        f"flush: {flush['sessions']} sessions x {flush['tokens_per_session']} tokens"
        f" ({flush['state_bytes_mean']:.0f} B each, {flush['state_bytes_total'] / 1e6:.1f} MB)"
        f" -> tick {flush['tick_seconds_median'] * 1000:.0f} ms (median of {arguments.runs}),"
        f" {flush['round_trips_per_tick']} round trips,"
        f" worst event-loop stall {flush['max_loop_lag_ms']:.1f} ms"
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
