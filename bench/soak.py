"""Soak (issue 16.4): our server under a steady mixed load for a bounded time, in windows.

    make bench-soak                               # 30 minutes (SOAK_MINUTES=30)
    make bench-soak SOAK_MINUTES=3                # a short check
    .venv/bin/python -m bench.soak --minutes 3 --window 30

200 campaigns x 6 clients on our server, started exactly as bench.run starts it (production
auth against the local JWKS, a scratch Postgres): per campaign one mover at 10 Hz, one cursor
at 5 Hz, a chat message every 5 s (1 in 4 with a dice roll) and 2 reconnects a window with
resume (bench/soakgen.py has the details); each campaign starts with 1,000 stored chat
messages, so its in-memory chat log is full from the start.

The rates are a table's time average (a drag half the time, a cursor moving a quarter of
the time), about 17,000 deliveries a second in all: half of our server's core on the bench
machine, so the soak measures drift, not saturation. At 20 Hz moves and 20 Hz cursors
(`--move-rate 20 --cursor-rate 20`, 44,000 deliveries a second, more than the fixed
300-campaign load) the server's core saturates within the first window.

Per window: server RSS, latency of moves (and of chat and cursors), server CPU per delivered
message, deliveries by kind, errors, lost and reordered messages. The baseline relay cannot
chat, resume or pace cursors: ours only.

A 2-minute warm-up under the same load comes first (--warmup): its errors and losses count,
but RSS and p99 are judged from window 1 on, once each campaign's resume buffer (1,000
events, about 100 s at these rates) has filled. So `make bench-soak` takes 32 minutes and a
bit (the set-up: 1,200 connections, 200,000 chat rows).

Pass (report.soak_verdict): RSS growth under 5 % after the first 5 minutes (a shorter soak:
after its first sixth, at least one window), p99 of the last window under 2x the first's,
zero errors, zero lost, zero reordered. Writes bench/results/soak.json and soak.md; the
server's and the generator's logs go to bench/results/raw/. Exits 1 when the soak fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import report
from bench.processes import GENERATOR_CORE, SERVER_CORE, ServerProcess, core_busy, run_loadgen
from bench.run import (
    OURS,
    QUICK,
    RAW,
    REPO,
    RESULTS,
    Bench,
    exclusive,
    log,
    machine_info,
    prepare,
    wait_for_quiet,
)
from bench.tokens import campaign_id, user_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES") or 30),
        help="how long the soak runs (default 30, or SOAK_MINUTES)",
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument(
        "--warmup",
        type=float,
        default=120.0,
        help="seconds of the same load before window 1 (its errors and loss count; RSS and "
        "p99 are judged after it): each campaign's resume buffer fills in about 100 s",
    )
    parser.add_argument("--campaigns", type=int, default=200)
    parser.add_argument("--clients", type=int, default=6, help="clients per campaign (>= 4)")
    parser.add_argument("--move-rate", type=float, default=10.0, help="token.move Hz per campaign")
    parser.add_argument("--cursor-rate", type=float, default=5.0, help="cursor.move Hz")
    parser.add_argument(
        "--chat-interval", type=float, default=5.0, help="seconds between a campaign's chats"
    )
    parser.add_argument(
        "--reconnects", type=int, default=2, help="reconnects per campaign per window"
    )
    parser.add_argument("--offline", type=float, default=1.0, help="seconds a client is away")
    parser.add_argument(
        "--chat-backlog",
        type=int,
        default=1000,
        help="chat messages stored per campaign before the soak (default 1000, the server's "
        "VTT_CHAT_MEMORY_MESSAGES), so each campaign's in-memory chat log starts full",
    )
    parser.add_argument("--auth", choices=["dev", "jwks"], default="jwks")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "VTT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--log-level", default="warning", help="LOG_LEVEL for our server")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="directory for soak.json and soak.md"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the machine to be idle (< 20%% CPU) first",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.window <= 0 or args.clients < 4 or args.campaigns < 1:
        parser.error("--minutes and --window must be positive, --clients at least 4")
    return args


class Sampler:
    """Samples the server's CPU, RSS and the pinned cores at every window boundary."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.last: dict[str, float] = {}
        self.windows: list[dict[str, Any]] = []
        self.setup_errors: dict[str, int] = {}

    def sample(self) -> dict[str, float]:
        """The server's and the cores' counters now."""
        return {
            "t": time.perf_counter(),
            "cpu": self.server.cpu(),
            "rss": float(self.server.rss()),
            "core_server": core_busy(SERVER_CORE),
            "core_generator": core_busy(GENERATOR_CORE),
        }

    def on_event(self, event: dict[str, Any]) -> None:
        """soak_start opens the first window; every soak_window closes one and opens the next."""
        if event["event"] == "soak_start":
            self.setup_errors = dict(event.get("setup_errors") or {})
            self.last = self.sample()
            log(f"soak: {event['windows']} windows")
        elif event["event"] == "soak_window" and self.last:
            now = self.sample()
            self.windows.append(combine(event, self.last, now))
            self.last = now
            w = self.windows[-1]
            name = "warm-up" if w["warmup"] else f"window {w['window'] + 1}"
            log(
                f"soak {name}: RSS {w['server_rss_mb']:.1f} MB, "
                f"p99 {w['latency_ms']['p99']:.2f} ms, {w['cpu_per_msg_us']:.1f} us CPU/msg, "
                f"lost {w['lost']}, reordered {w['reordered']}, errors {w['errors']}"
            )


# A stored message about the size of a soak message (the live ones average ~250 bytes encoded,
# a quarter of them with a roll), so replacing one in the log by the other changes nothing.
PREFILL_SQL = """
INSERT INTO chat_messages (campaign_id, user_id, message_type, content, gm_only, created_at)
SELECT c.id, c.gm, 'text', to_jsonb('history ' || g || ' ' || repeat('x', 48)), false,
       now() - interval '1 day' + g * interval '1 second'
FROM unnest($1::text[], $2::text[]) AS c(id, gm) CROSS JOIN generate_series(1, $3::int) AS g
"""


def prefill_chat(database_url: str, campaigns: int, per_campaign: int) -> None:
    """Store `per_campaign` chat messages in each soak campaign (chat_messages must exist).

    A campaign's chat log holds its last VTT_CHAT_MEMORY_MESSAGES messages in memory; filling
    it from an empty table takes far longer than a soak at a message every few seconds, and
    its growth would read as a leak. Started full, it stays the same size.
    """

    async def fill() -> None:
        url = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        db = await asyncpg.connect(url, timeout=10)
        try:
            ids = [campaign_id(i) for i in range(campaigns)]
            gms = [user_id(i, 0) for i in range(campaigns)]
            await db.execute(PREFILL_SQL, ids, gms, per_campaign, timeout=300)
        finally:
            await db.close()

    asyncio.run(asyncio.wait_for(fill(), 330))


def combine(
    event: dict[str, Any], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    """A generator window joined with the server's counters over the same window."""
    elapsed = max(1e-6, after["t"] - before["t"])
    cpu = after["cpu"] - before["cpu"]
    delivered = max(1, int(event["delivered_total"]))
    gen_cpu = event["generator"]["cpu_s"]
    figures = {k: v for k, v in event.items() if k != "event"}
    return {
        **figures,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_share": round(cpu / elapsed, 3),
        "cpu_per_msg_us": round(cpu / delivered * 1e6, 2),
        "server_rss_mb": round(after["rss"] / 2**20, 1),
        "noise_server_core": round(
            max(0.0, after["core_server"] - before["core_server"] - cpu) / elapsed, 3
        ),
        "noise_generator_core": round(
            max(0.0, after["core_generator"] - before["core_generator"] - gen_cpu) / elapsed, 3
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak; write soak.json and soak.md; exit 1 when it fails or cannot run."""
    args = parse_args(argv)
    duration = args.minutes * 60
    windows = max(1, round(duration / args.window))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive(limit=1800))
        wait_for_quiet(args.quiet_wait)
        info = machine_info()
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vtt-soak-")))
        setup, books = prepare(args, stack, QUICK, work)
        for note in setup.notes:
            log(note)
        if OURS not in books:
            log("our server cannot be started here: no soak")
            return 1
        bench = Bench(QUICK, setup, books, work)
        with bench.running(OURS, log_name="soak-ours.log") as server:
            database = setup.ours_env.get("DATABASE_URL")
            if args.chat_backlog and database:
                # The server has migrated its database by now; no campaign is loaded yet.
                prefill_chat(database, args.campaigns, args.chat_backlog)
                log(f"soak: {args.chat_backlog} chat messages stored per campaign")
            elif args.chat_backlog:
                setup.notes.append("no Postgres: the chat logs start empty and grow")
            plan = bench.plan(OURS, server.port, args.campaigns, args.clients)
            sampler = Sampler(server)
            failure = None
            try:
                result = run_loadgen(
                    [
                        "--plan",
                        str(plan),
                        "--mode",
                        "soak",
                        "--campaigns",
                        str(args.campaigns),
                        "--clients",
                        str(args.clients),
                        "--duration",
                        str(windows * args.window),
                        "--soak-window",
                        str(args.window),
                        "--soak-warmup",
                        str(args.warmup),
                        "--move-rate",
                        str(args.move_rate),
                        "--cursor-rate",
                        str(args.cursor_rate),
                        "--chat-interval",
                        str(args.chat_interval),
                        "--reconnects",
                        str(args.reconnects),
                        "--offline",
                        str(args.offline),
                        "--deadline",
                        str(args.warmup + windows * args.window + 600),
                    ],
                    RAW / "soak-loadgen.log",
                    REPO,
                    sampler.on_event,
                    timeout=args.warmup + windows * args.window + 900,
                )
            except (RuntimeError, TimeoutError, OSError) as exc:
                # The windows so far are kept; the verdict fails on the missing ones.
                failure = f"{type(exc).__name__}: {exc}"
                result = {}
                log(f"soak cut short: {failure}")
    setup_errors = dict(result.get("setup_errors") or sampler.setup_errors)
    verdict = report.soak_verdict(sampler.windows, args.window, setup_errors, windows)
    results = {
        "machine": info,
        "command": "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {"auth": setup.auth, "database": setup.database, "notes": setup.notes},
        "load": {
            "campaigns": args.campaigns,
            "clients": args.clients,
            "move_rate": args.move_rate,
            "cursor_rate": args.cursor_rate,
            "chat_interval": args.chat_interval,
            "reconnects": args.reconnects,
            "offline": args.offline,
            "chat_backlog": args.chat_backlog,
            "window_s": args.window,
            "warmup_s": args.warmup,
        },
        "duration_s": windows * args.window,
        "wall_s": round(time.perf_counter() - started, 1),
        "setup_errors": setup_errors,
        "failure": failure,
        "verdict": verdict,
        "windows": sampler.windows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.soak_markdown(results)
    (args.out / "soak.md").write_text(markdown)
    log(f"results written to {args.out}/soak.json and soak.md")
    sys.stdout.write(markdown)
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
