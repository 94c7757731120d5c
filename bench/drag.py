"""Drag staleness (issue 13.3): one GM drags one token at 144 Hz for 15 s while 5 players watch.

`python -m bench.drag` (part of `make bench`): against `python -m app` on its default settings
(dev auth, SQLite), pinned to core 0, with the clients in this process on core 1. A watcher's
staleness for a position is the time from the GM sending it until the watcher has it or a
newer one; the drag's positions go far past the connection's rate (60 a second), so what
watchers see is the merged drag. Three runs on fresh servers; the table shows medians.
Results go to bench/results/drag.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench.processes import GENERATOR_CORE, SERVER_CORE, ServerProcess, core_busy
from bench.run import RESULTS, default_server, exclusive, log, wait_for_quiet
from bench.tokens import dev_book

HERTZ = 144.0
SECONDS = 15.0
WATCHERS = 5
TARGET_P99_MS = 50.0
# How long after the last send every watcher must have the final position.
LANDING_DEADLINE = 2.0


@dataclass
class Run:
    """One drag against one fresh server."""

    sent: int
    staleness_p50_ms: float
    staleness_p99_ms: float
    staleness_max_ms: float
    positions_seen_per_watcher: float
    landed: bool
    errors: list[str] = field(default_factory=list)
    server_cpu_share: float = 0.0
    other_cpu_on_server_core: float = 0.0
    client_loop_lag_max_ms: float = 0.0


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples`."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def greeted(url: str) -> ClientConnection:
    """Connect and read the greeting (state.sync, map.list, chat.history)."""
    ws = await connect(url, max_size=None, open_timeout=30)
    for _ in range(3):
        await asyncio.wait_for(ws.recv(), timeout=30)
    return ws


async def watch(ws: ClientConnection, final: int, seen: list[tuple[int, float]]) -> None:
    """Record (x, arrival) of every token.move until the final position arrives."""
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "token.move":
            x = int(frame["payload"]["x"])
            seen.append((x, time.monotonic()))
            if x == final:
                return


async def lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late this process's loop wakes from 5 ms sleeps: a late client skews staleness."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        samples.append(time.monotonic() - before - 0.005)


async def collect_errors(ws: ClientConnection, errors: list[str]) -> None:
    """Keep the codes of the errors the dragging GM receives."""
    async for raw in ws:
        frame = json.loads(raw)
        if frame["type"] == "error":
            errors.append(frame["payload"]["code"])


def staleness(sent_at: list[float], seen: list[tuple[int, float]]) -> list[float]:
    """For each position sent, how long until this watcher had it or a newer one."""
    samples: list[float] = []
    index = 0
    for step, sent in enumerate(sent_at):
        while index < len(seen) and seen[index][0] < step:
            index += 1
        if index == len(seen):
            break
        samples.append(max(0.0, seen[index][1] - sent))
    return samples


async def drag_once(url: str, tokens: list[str], server: ServerProcess) -> Run:
    """Join the GM and the watchers, add the token, drag it, and measure."""
    gm = await greeted(f"{url}&token={tokens[0]}")
    watchers = [await greeted(f"{url}&token={token}") for token in tokens[1:]]
    add = {"token_id": "t1", "name": "Dragged", "x": -1, "y": 0, "width": 1, "height": 1}
    await gm.send(json.dumps({"type": "token.add", "payload": {**add, "visible": True}}))
    for ws in [gm, *watchers]:
        while json.loads(await asyncio.wait_for(ws.recv(), timeout=30))["type"] != "token.add":
            pass
    steps = round(HERTZ * SECONDS)
    final = steps - 1
    seen: list[list[tuple[int, float]]] = [[] for _ in watchers]
    errors: list[str] = []
    tasks = [asyncio.create_task(watch(ws, final, s)) for ws, s in zip(watchers, seen, strict=True)]
    listener = asyncio.create_task(collect_errors(gm, errors))
    lags: list[float] = []
    stop = asyncio.Event()
    lagger = asyncio.create_task(lag(lags, stop))
    sent_at: list[float] = []
    cpu_before, core_before, started = server.cpu(), core_busy(SERVER_CORE), time.monotonic()
    for step in range(steps):
        delay = started + step / HERTZ - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.monotonic())
        await gm.send(
            json.dumps({"type": "token.move", "payload": {"token_id": "t1", "x": step, "y": 0}})
        )
    _, waiting = await asyncio.wait(tasks, timeout=LANDING_DEADLINE)
    elapsed = time.monotonic() - started
    cpu_share = (server.cpu() - cpu_before) / elapsed
    other_share = (core_busy(SERVER_CORE) - core_before) / elapsed - cpu_share
    stop.set()
    await lagger
    for task in [*waiting, listener]:
        task.cancel()
    await asyncio.gather(*waiting, listener, return_exceptions=True)
    for ws in [gm, *watchers]:
        await ws.close()
    samples = [sample for watched in seen for sample in staleness(sent_at, watched)]
    return Run(
        sent=steps,
        staleness_p50_ms=round(percentile(samples, 0.5) * 1000, 2),
        staleness_p99_ms=round(percentile(samples, 0.99) * 1000, 2),
        staleness_max_ms=round(max(samples) * 1000, 2),
        positions_seen_per_watcher=statistics.mean(len(watched) for watched in seen),
        landed=not waiting and all(watched[-1][0] == final for watched in seen),
        errors=errors,
        server_cpu_share=round(cpu_share, 3),
        other_cpu_on_server_core=round(max(0.0, other_share), 3),
        client_loop_lag_max_ms=round(max(lags) * 1000, 1),
    )


def run_all(repeats: int, work: Path, quiet_wait: float) -> list[Run]:
    """`repeats` drags, each against a fresh server on its default settings."""
    key_dir = work / "devkeys"
    book = dev_book(key_dir)
    tokens = [book.token(0, slot) for slot in range(WATCHERS + 1)]
    runs: list[Run] = []
    for repeat in range(repeats):
        wait_for_quiet(quiet_wait)
        with default_server(work, key_dir, f"vtt-{repeat}.db") as (server, url):
            run = uvloop.run(drag_once(url, tokens, server))
        log(
            f"drag {repeat + 1}/{repeats}: staleness p50 {run.staleness_p50_ms} ms, "
            f"p99 {run.staleness_p99_ms} ms, landed {run.landed}, errors {run.errors}; "
            f"client loop lag max {run.client_loop_lag_max_ms} ms, other processes on the "
            f"server's core {run.other_cpu_on_server_core:.2f}"
        )
        runs.append(run)
    return runs


def summary(runs: list[Run]) -> dict[str, Any]:
    """Medians across runs, and whether every run landed without an error."""
    return {
        "staleness_p50_ms": statistics.median(r.staleness_p50_ms for r in runs),
        "staleness_p99_ms": statistics.median(r.staleness_p99_ms for r in runs),
        "staleness_max_ms": statistics.median(r.staleness_max_ms for r in runs),
        "positions_seen_per_watcher": statistics.median(r.positions_seen_per_watcher for r in runs),
        "server_cpu_share": statistics.median(r.server_cpu_share for r in runs),
        "other_cpu_on_server_core_max": max(r.other_cpu_on_server_core for r in runs),
        "client_loop_lag_max_ms": max(r.client_loop_lag_max_ms for r in runs),
        "landed_every_run": all(r.landed for r in runs),
        "errors": sorted({code for r in runs for code in r.errors}),
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    figures = result["summary"]
    rows = [
        ("positions sent", f"{result['sent']:,} ({HERTZ:.0f} Hz for {SECONDS:.0f} s)"),
        ("staleness p50 (ms)", f"{figures['staleness_p50_ms']:.1f}"),
        (
            f"staleness p99 (ms, target < {TARGET_P99_MS:.0f})",
            f"{figures['staleness_p99_ms']:.1f}",
        ),
        ("staleness max (ms)", f"{figures['staleness_max_ms']:.1f}"),
        ("positions seen per watcher", f"{figures['positions_seen_per_watcher']:.0f}"),
        ("final position landed (every watcher, every run)", str(figures["landed_every_run"])),
        ("errors to the dragging GM", ", ".join(figures["errors"]) or "none"),
        ("server CPU (share of its core)", f"{figures['server_cpu_share']:.2f}"),
        (
            "other processes on the server's core (share, worst run)",
            f"{figures['other_cpu_on_server_core_max']:.2f}",
        ),
        ("client loop lag (ms, worst run)", f"{figures['client_loop_lag_max_ms']:.1f}"),
    ]
    lines = [
        f"## drag: 1 GM at {HERTZ:.0f} Hz, {WATCHERS} players watching "
        f"(medians of {result['repeats']} runs)",
        "",
        "| figure | ours |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the drag bench; exit 1 when a run did not land its final position."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "drag.json")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {GENERATOR_CORE})
    with exclusive(), tempfile.TemporaryDirectory(prefix="vtt-drag-") as work:
        runs = run_all(args.repeats, Path(work), args.quiet_wait)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.drag " + " ".join(sys.argv[1:] if argv is None else argv),
        "sent": runs[0].sent,
        "repeats": len(runs),
        "summary": summary(runs),
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(markdown(result))
    return 0 if result["summary"]["landed_every_run"] else 1


if __name__ == "__main__":
    sys.exit(main())
