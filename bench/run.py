"""Benchmark orchestrator: our server beside the raw-websockets baseline, A B A B, medians.

`python -m bench.run --quick` (a few minutes) or `--full` (everything). Servers run pinned to
core 0, the load generator to core 1. Results go to bench/results/latest.json and latest.md.

The `cursor` mode runs each fixed load again with cursor.move instead of token.move (issue
15.2: the ephemeral relay costs no more per delivered frame than a move), right after that
repeat's fixed runs, on both servers: the baseline relays cursor.move like any frame (to its
sender too; ours does not echo a cursor). The `chat` mode has one sender per campaign sending
chat.send and every client receiving it (ours stores each message in Postgres first; the
baseline only relays). The `connect` mode opens 2,000 connections, 200 handshakes in flight,
to a fresh server: connections per second until all have state.sync (issue 16.2). The soak
is bench/soak.py (`make bench-soak`), not part of these profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import functools
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from bench import report
from bench.processes import (
    GENERATOR_CORE,
    SERVER_CORE,
    ServerProcess,
    core_busy,
    pinned,
    run_loadgen,
)
from bench.scratchdb import ScratchDatabase, reachable
from bench.tokens import JwksServer, SigningKey, TokenBook, campaign_id, dev_book, jwks_book

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RAW = RESULTS / "raw"
OURS, BASELINE = "ours", "baseline"
# Our server's default per-user chat rate (VTT_CHAT_RATE_PER_SECOND).
CHAT_RATE_DEFAULT = 2.0


@dataclass(frozen=True)
class FixedLoad:
    """R campaigns of K clients, one mover each at F Hz."""

    label: str
    campaigns: int
    clients: int = 6
    rate: float = 20.0


@dataclass(frozen=True)
class ChatLoad:
    """R campaigns of K clients, one chat sender each at F messages a second."""

    label: str
    campaigns: int
    clients: int = 6
    # At most our server's default per-user chat rate (2 a second), so it runs as deployed.
    rate: float = 2.0
    # Every Nth message carries a dice roll (0: none).
    roll_every: int = 0


@dataclass(frozen=True)
class Ramp:
    """Capacity ramp: steps of campaigns, bisected down to `resolution` after the first failure."""

    start: int
    step: int
    max: int
    resolution: int
    warmup: float
    window: float
    repeats: int
    p99_limit_ms: float = 50.0


@dataclass(frozen=True)
class Profile:
    """What one invocation measures, and how long each measurement lasts."""

    name: str
    repeats: int
    warmup: float
    window: float
    fixed: tuple[FixedLoad, ...]
    ramp: Ramp
    idle_counts: tuple[int, ...]
    idle_repeats: int
    storm_campaigns: int
    storm_clients: int
    storm_repeats: int
    flush_campaigns: int
    flush_runs: int
    chat: tuple[ChatLoad, ...]
    chat_repeats: int
    # The baseline's cursor runs (a comparison, not a target) in the first repeats only.
    cursor_baseline_repeats: int
    connect_repeats: int
    connect_campaigns: int = 200
    connect_clients: int = 10
    connect_concurrency: int = 200
    modes: tuple[str, ...] = (
        "fixed", "cursor", "ramp", "idle", "storm", "connect", "chat", "flush",
    )  # fmt: skip


QUICK = Profile(
    name="quick",
    repeats=3,
    warmup=2.0,
    window=5.0,
    fixed=(FixedLoad("100x6 @ 20 Hz", 100), FixedLoad("300x6 @ 20 Hz", 300)),
    ramp=Ramp(start=100, step=100, max=1200, resolution=50, warmup=1.0, window=3.0, repeats=1),
    idle_counts=(2000,),
    idle_repeats=1,
    storm_campaigns=50,
    storm_clients=10,
    storm_repeats=3,
    flush_campaigns=10_000,
    flush_runs=3,
    chat=(ChatLoad("100x6 @ 2 Hz", 100),),
    chat_repeats=1,
    cursor_baseline_repeats=1,
    connect_repeats=3,
)
FULL = Profile(
    name="full",
    repeats=3,
    warmup=3.0,
    window=15.0,
    fixed=(FixedLoad("100x6 @ 20 Hz", 100), FixedLoad("300x6 @ 20 Hz", 300)),
    ramp=Ramp(start=100, step=100, max=1500, resolution=25, warmup=2.0, window=5.0, repeats=3),
    idle_counts=(2000, 5000),
    idle_repeats=3,
    storm_campaigns=50,
    storm_clients=10,
    storm_repeats=5,
    flush_campaigns=10_000,
    flush_runs=5,
    chat=(
        ChatLoad("100x6 @ 2 Hz", 100),
        ChatLoad("100x6 @ 2 Hz, 1 in 4 rolled", 100, roll_every=4),
    ),
    chat_repeats=3,
    cursor_baseline_repeats=3,
    connect_repeats=5,
)


@dataclass
class Setup:
    """How this run's servers are started and authenticated, and what was substituted."""

    auth: str
    database: str
    notes: list[str] = field(default_factory=list)
    ours_env: dict[str, str] = field(default_factory=dict)
    pg_url: str | None = None
    ours_ready_path: str = "/ready"


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def default_server(work: Path, key_dir: Path, database: str) -> Iterator[tuple[ServerProcess, str]]:
    """`python -m app` on its defaults (dev auth with the keys in `key_dir`, SQLite at
    `work / database`), started pinned and ready, with the URL of the bench's campaign 0;
    stopped on exit."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "VTT_SQLITE_PATH": str(work / database),
        "VTT_DEV_KEY_DIR": str(key_dir),
        "LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "app"]
    server = ServerProcess("ours", argv, env, port, "/ready", work / "server.log", REPO)
    server.start()
    try:
        yield server, f"ws://127.0.0.1:{port}/ws?campaign={campaign_id(0)}"
    finally:
        server.stop()


def machine_info() -> dict[str, Any]:
    """Describe the machine, interpreter and code the figures belong to."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Bench:
    """Runs every selected mode against every server, alternating servers per repeat."""

    def __init__(self, profile: Profile, setup: Setup, books: dict[str, TokenBook], work: Path):
        self.profile = profile
        self.setup = setup
        self.books = books
        self.work = work
        self.servers = [OURS, BASELINE] if OURS in books else [BASELINE]
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

    # Processes

    def server(
        self, name: str, extra_env: dict[str, str] | None = None, log_name: str | None = None
    ) -> ServerProcess:
        """Build (not start) a fresh server process of kind `name` on a free port."""
        port = free_port()
        log = RAW / (log_name or f"{name}.log")
        if name == OURS:
            env = {**os.environ, **self.setup.ours_env, **(extra_env or {}), "PORT": str(port)}
            argv = [sys.executable, "-m", "app"]
            return ServerProcess(OURS, argv, env, port, self.setup.ours_ready_path, log, REPO)
        argv = [sys.executable, "-m", "bench.baseline_relay", "--port", str(port)]
        return ServerProcess(BASELINE, argv, dict(os.environ), port, "/health", log, REPO)

    def plan(self, name: str, port: int, campaigns: int, clients: int) -> Path:
        """Write the loadgen plan for `campaigns` x `clients` against server `name`."""
        path = self.work / f"plan-{name}-{campaigns}x{clients}-{port}.json"
        url = f"ws://127.0.0.1:{port}/ws"
        path.write_text(json.dumps(self.books[name].plan(url, campaigns, clients)))
        return path

    def loadgen(
        self,
        args: list[str],
        on_event: Callable[[dict[str, Any]], None] = lambda e: None,
        on_ready: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run the load generator with `args`, logging to raw/loadgen.log."""
        return run_loadgen(args, RAW / "loadgen.log", REPO, on_event, on_ready)

    @contextlib.contextmanager
    def running(
        self, name: str, extra_env: dict[str, str] | None = None, log_name: str | None = None
    ) -> Iterator[ServerProcess]:
        """Start server `name` (ours with `extra_env` on top of the set-up's) for the block."""
        server = self.server(name, extra_env, log_name)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    # Windows

    def window_sampler(
        self, server: ServerProcess
    ) -> tuple[Callable[[dict[str, Any]], None], list[dict[str, Any]]]:
        """An event handler sampling server CPU, RSS and core noise per window, and its log."""
        windows: list[dict[str, Any]] = []
        open_window: dict[str, float] = {}

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "window_start":
                open_window.update(
                    t=time.perf_counter(),
                    cpu=server.cpu(),
                    core_server=core_busy(SERVER_CORE),
                    core_generator=core_busy(GENERATOR_CORE),
                )
            elif event["event"] == "window_end" and open_window:
                elapsed = time.perf_counter() - open_window["t"]
                cpu = server.cpu() - open_window["cpu"]
                windows.append(
                    {
                        "elapsed_s": elapsed,
                        "server_cpu_s": cpu,
                        "server_rss": server.rss(),
                        "core_server_busy_s": core_busy(SERVER_CORE) - open_window["core_server"],
                        "core_generator_busy_s": core_busy(GENERATOR_CORE)
                        - open_window["core_generator"],
                    }
                )
                open_window.clear()

        return on_event, windows

    @staticmethod
    def combine(result: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
        """Join a generator window with the server samples of the same window."""
        delivered = max(1, int(result["delivered"]))
        elapsed = window["elapsed_s"]
        gen_cpu = result["generator"]["cpu_s"]
        sent = max(1, int(result.get("moves_sent", 0)))
        return {
            **result,
            "server_cpu_s": round(window["server_cpu_s"], 3),
            "server_cpu_share": round(window["server_cpu_s"] / elapsed, 3),
            "cpu_per_msg_us": round(window["server_cpu_s"] / delivered * 1e6, 2),
            "cpu_per_sent_us": round(window["server_cpu_s"] / sent * 1e6, 2),
            "server_rss_mb": round(window["server_rss"] / 2**20, 1),
            "noise_server_core": round(
                max(0.0, window["core_server_busy_s"] - window["server_cpu_s"]) / elapsed, 3
            ),
            "noise_generator_core": round(
                max(0.0, window["core_generator_busy_s"] - gen_cpu) / elapsed, 3
            ),
        }

    # Modes

    def fixed(
        self,
        name: str,
        load: FixedLoad | ChatLoad,
        mode: str = "fixed",
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """One fixed-load measurement against server `name`: moves, cursors or chat messages."""
        with self.running(name, extra_env) as server:
            plan = self.plan(name, server.port, load.campaigns, load.clients)
            on_event, windows = self.window_sampler(server)
            result = self.loadgen(
                [
                    "--plan",
                    str(plan),
                    "--mode",
                    mode,
                    "--relay",
                    OURS if name == OURS else BASELINE,
                    "--campaigns",
                    str(load.campaigns),
                    "--clients",
                    str(load.clients),
                    "--rate",
                    str(load.rate),
                    "--warmup",
                    str(self.profile.warmup),
                    "--window",
                    str(self.profile.window),
                    *extra_args,
                ],
                on_event,
            )
        return self.combine(result, windows[0])

    def chat(self, name: str, load: ChatLoad) -> dict[str, Any]:
        """One chat measurement: one sender per campaign, every client receiving.

        A load above our server's default per-user chat rate (2 a second, burst 10) raises the
        rate for this measurement only, so the one sender is not refused; the limit is checked
        either way.
        """
        env = {}
        if load.rate > CHAT_RATE_DEFAULT:
            env = {
                "VTT_CHAT_RATE_PER_SECOND": str(2 * load.rate),
                "VTT_CHAT_RATE_BURST": str(max(10, round(4 * load.rate))),
            }
        return self.fixed(name, load, "chat", env, ("--roll-every", str(load.roll_every)))

    def connect(self, name: str) -> dict[str, Any]:
        """Connect rate: N connections, C handshakes in flight, to a freshly started server."""
        p = self.profile
        with self.running(name) as server:
            plan = self.plan(name, server.port, p.connect_campaigns, p.connect_clients)
            before = server.cpu()
            result = self.loadgen(
                [
                    "--plan",
                    str(plan),
                    "--mode",
                    "connect",
                    "--campaigns",
                    str(p.connect_campaigns),
                    "--clients",
                    str(p.connect_clients),
                    "--concurrency",
                    str(p.connect_concurrency),
                ]
            )
            return _with_cpu_per_connection(result, server.cpu() - before, "connections")

    def ramp(self, name: str) -> dict[str, Any]:
        """One capacity ramp against server `name`."""
        spec = self.profile.ramp
        with self.running(name) as server:
            plan = self.plan(name, server.port, spec.max, 6)
            on_event, windows = self.window_sampler(server)
            result = self.loadgen(
                [
                    "--plan",
                    str(plan),
                    "--mode",
                    "ramp",
                    "--clients",
                    "6",
                    "--start",
                    str(spec.start),
                    "--step",
                    str(spec.step),
                    "--max",
                    str(spec.max),
                    "--resolution",
                    str(spec.resolution),
                    "--warmup",
                    str(spec.warmup),
                    "--window",
                    str(spec.window),
                    "--p99-limit-ms",
                    str(spec.p99_limit_ms),
                ],
                on_event,
            )
        result["steps"] = [
            self.combine(s, w) for s, w in zip(result["steps"], windows, strict=True)
        ]
        return result

    def idle(self, name: str) -> dict[str, Any]:
        """RSS per idle connection at each count, against an empty (warmed-up) server."""
        counts = self.profile.idle_counts
        with self.running(name) as server:
            # One join and leave first, so lazy imports and pools are not billed to connections.
            warm = self.plan(name, server.port, 1, 2)
            self.loadgen(
                ["--plan", str(warm), "--mode", "storm", "--campaigns", "1", "--clients", "2"]
            )
            time.sleep(1.0)
            empty = server.rss()
            plan = self.plan(name, server.port, -(-max(counts) // 6), 6)
            readings: list[dict[str, Any]] = []

            def on_ready(event: dict[str, Any]) -> None:
                time.sleep(2.0)
                rss = server.rss()
                connected = max(1, int(event["connected"]))
                readings.append(
                    {
                        "target": event["target"],
                        "connected": event["connected"],
                        "rss_mb": round(rss / 2**20, 1),
                        "kb_per_connection": round((rss - empty) / connected / 1024, 2),
                        "errors": event["errors"],
                    }
                )

            result = self.loadgen(
                [
                    "--plan",
                    str(plan),
                    "--mode",
                    "idle",
                    "--clients",
                    "6",
                    "--counts",
                    ",".join(str(c) for c in counts),
                ],
                on_ready=on_ready,
            )
        for earlier, later in itertools.pairwise(readings):
            added = max(1, later["connected"] - earlier["connected"])
            later["marginal_kb_per_connection"] = round(
                (later["rss_mb"] - earlier["rss_mb"]) * 1024 / added, 2
            )
        return {
            "empty_rss_mb": round(empty / 2**20, 1),
            "readings": readings,
            "errors": result["errors"],
        }

    def storm(self, name: str) -> dict[str, Any]:
        """All storm clients connect at once to a freshly started server."""
        p = self.profile
        with self.running(name) as server:
            plan = self.plan(name, server.port, p.storm_campaigns, p.storm_clients)
            before = server.cpu()
            result = self.loadgen(
                [
                    "--plan",
                    str(plan),
                    "--mode",
                    "storm",
                    "--campaigns",
                    str(p.storm_campaigns),
                    "--clients",
                    str(p.storm_clients),
                ]
            )
            return _with_cpu_per_connection(result, server.cpu() - before, "clients")

    def flush(self) -> dict[str, Any]:
        """Run bench.flush_bench (one tick of N dirty campaigns into Postgres) and read its JSON."""
        out = self.work / "flush.json"
        argv = [
            sys.executable, "-m", "bench.flush_bench",
            "--sessions", str(self.profile.flush_campaigns),
            "--runs", str(self.profile.flush_runs),
            "--postgres", str(self.setup.pg_url),
            "--out", str(out),
        ]  # fmt: skip
        done = subprocess.run(
            pinned(SERVER_CORE, argv), cwd=REPO, capture_output=True, text=True, timeout=900
        )
        (RAW / "flush.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"flush_bench exit {done.returncode}: {done.stderr.strip()[-300:]}")
        flush = json.loads(out.read_text())["flush"]
        updates = [tick for tick in flush["ticks"] if tick["kind"] == "update"]
        return {
            "sessions": flush["sessions"],
            "tokens_per_session": flush["tokens_per_session"],
            "tick_s": flush["tick_seconds_median"],
            "round_trips_per_tick": flush["round_trips_per_tick"],
            # The worst stall of the update ticks (the first, insert tick also opens the pool's
            # connections): in the loop's own CPU time, the target's figure, and on the wall.
            "stall_cpu_ms": max(t["max_loop_lag_cpu_ms"] for t in updates),
            "stall_wall_ms": max(t["max_loop_lag_ms"] for t in updates),
            "summary": done.stdout.strip(),
        }

    def record(self, mode: str, name: str, run: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement, keeping a failure as a result instead of ending the bench."""
        log(f"{mode} / {name} ...")
        started = time.perf_counter()
        try:
            result = run()
        except (RuntimeError, TimeoutError, OSError, KeyError, IndexError, ValueError) as exc:
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = round(time.perf_counter() - started, 1)
        log(f"{mode} / {name}: {report.one_line(mode, result)}")
        self.runs.setdefault(mode, {}).setdefault(name, []).append(result)

    def run_all(self, modes: tuple[str, ...], repeats: int | None) -> None:
        """Run the selected modes, alternating servers A B A B within each mode."""
        p = self.profile
        for load in p.fixed if {"fixed", "cursor"} & set(modes) else ():
            for repeat in range(repeats or p.repeats):
                for name in self.servers if "fixed" in modes else ():
                    self.record(
                        f"fixed {load.label}", name, functools.partial(self.fixed, name, load)
                    )
                # The baseline relays cursor.move like any frame, to its sender too.
                baseline_too = repeat < (repeats or p.cursor_baseline_repeats)
                for name in self.servers if "cursor" in modes else ():
                    if name == OURS or baseline_too:
                        cursor = functools.partial(self.fixed, name, load, "cursor")
                        self.record(f"cursor {load.label}", name, cursor)
        plan: list[tuple[str, int, Callable[[str], dict[str, Any]]]] = [
            ("ramp", p.ramp.repeats, self.ramp),
            ("idle", p.idle_repeats, self.idle),
            ("storm", p.storm_repeats, self.storm),
            ("connect", p.connect_repeats, self.connect),
        ]
        for mode, count, method in plan:
            if mode not in modes:
                continue
            for _ in range(repeats or count):
                for name in self.servers:
                    self.record(mode, name, functools.partial(method, name))
        # Chat last: the messages it stores would otherwise be every later join's history.
        for chat_load in p.chat if "chat" in modes else ():
            for _ in range(repeats or p.chat_repeats):
                for name in self.servers:
                    self.record(
                        f"chat {chat_load.label}",
                        name,
                        functools.partial(self.chat, name, chat_load),
                    )
        if "flush" in modes and OURS in self.servers:
            if self.setup.pg_url is None:
                self.runs["flush"] = {OURS: [{"skipped": "no Postgres"}]}
            else:
                self.record("flush", OURS, self.flush)


@contextlib.contextmanager
def exclusive(limit: float = 1800.0) -> Iterator[None]:
    """Hold the bench lock: two benches at once would share the pinned cores and both lie."""
    RAW.mkdir(parents=True, exist_ok=True)
    with (RAW / "bench.lock").open("w") as handle:
        deadline = time.monotonic() + limit
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError("another bench run held the lock for too long") from None
                log("another bench run is in progress; waiting for it")
                time.sleep(10)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_quiet(limit: float, threshold: float = 20.0) -> None:
    """On a shared machine, wait (at most `limit` s) until other processes leave the CPUs idle."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=5.0)
        if busy < threshold:
            return
        log(f"machine busy ({busy:.0f}% CPU), waiting for it to quiet down")
    if limit:
        log("machine still busy: measuring anyway (see the noise rows)")


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the summary."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def probe_ours(
    setup_env: dict[str, str], book: TokenBook, work: Path, ready_path: str
) -> str | None:
    """Start our server with `setup_env`; return None if a GM and a player both get state.sync."""
    port = free_port()
    server = ServerProcess(
        OURS,
        [sys.executable, "-m", "app"],
        {**os.environ, **setup_env, "PORT": str(port)},
        port,
        ready_path,
        RAW / "probe.log",
        REPO,
    )
    try:
        server.start(timeout=20)
        plan = work / "probe.json"
        plan.write_text(json.dumps(book.plan(f"ws://127.0.0.1:{port}/ws", 1, 2)))
        result = run_loadgen(
            ["--plan", str(plan), "--mode", "storm", "--campaigns", "1", "--clients", "2"],
            RAW / "loadgen.log",
            REPO,
            lambda e: None,
            timeout=60,
        )
    except (RuntimeError, TimeoutError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    if result["synced"] != 2:
        return f"probe clients not synced: {result['errors']}"
    return None


def prepare(
    args: argparse.Namespace, stack: contextlib.ExitStack, profile: Profile, work: Path
) -> tuple[Setup, dict[str, TokenBook]]:
    """Set up auth (local JWKS or dev), the scratch database, and a token book per server."""
    key = SigningKey()
    jwks = stack.enter_context(JwksServer(key))
    books = {BASELINE: jwks_book(key, jwks.issuer)}
    setup = Setup(auth=args.auth, database="none")
    if not (REPO / "app" / "transport" / "serve.py").exists():
        setup.notes.append(
            "app/transport/serve.py does not exist yet: only the baseline relay was measured."
        )
        return setup, books
    campaigns_needed = max(
        profile.ramp.max,
        -(-max(profile.idle_counts) // 6),
        300,
        profile.connect_campaigns,
        *(load.campaigns for load in profile.chat),
    )
    pg_problem = reachable(args.pg_url)
    env: dict[str, str] = {"LOG_LEVEL": args.log_level, "HOST": "127.0.0.1"}
    if pg_problem is None:
        setup.pg_url = args.pg_url
        db = stack.enter_context(ScratchDatabase(args.pg_url, campaigns_needed))
        env["DATABASE_URL"] = db.url
        setup.database = f"postgres (scratch database {db.name})"
    else:
        env["VTT_SQLITE_PATH"] = str(work / "vtt.db")
        setup.database = "sqlite (embedded)"
        setup.notes.append(f"Postgres unreachable at {args.pg_url} ({pg_problem}): SQLite used.")
    if args.auth == "jwks":
        if pg_problem is not None:
            setup.notes.append(
                "Production auth needs the campaigns table in Postgres: dev auth used."
            )
        else:
            jwks_env = {
                **env,
                "VTT_ENV": "production",
                "CLERK_JWKS_URL": jwks.url,
                "CLERK_ISSUER": jwks.issuer,
            }
            book = jwks_book(key, jwks.issuer)
            problem = probe_ours(jwks_env, book, work, "/ready")
            if problem is not None and "HTTP 503" in problem:
                # /ready may wait for keys that are only fetched on first use: try without it.
                lazy_problem = probe_ours(jwks_env, book, work, "/health")
                if lazy_problem is None:
                    setup.notes.append(
                        f"/ready never answered 200 in production mode ({problem}); servers "
                        "were started on /health, and the first connection loaded the JWKS."
                    )
                    setup.ours_ready_path = "/health"
                    problem = None
            if problem is None:
                setup.ours_env = jwks_env
                books[OURS] = book
                return setup, books
            setup.notes.append(
                f"Production auth (local JWKS + campaigns table) is not available yet ({problem}): "
                "fell back to dev auth."
            )
    setup.auth = "dev"
    env["VTT_DEV_KEY_DIR"] = str(work / "devkeys")
    setup.ours_env = env
    books[OURS] = dev_book(work / "devkeys")
    return setup, books


def _with_cpu_per_connection(result: dict[str, Any], cpu_s: float, count: str) -> dict[str, Any]:
    """`result` with the server's CPU per connection over the run (ms), when it counted any."""
    connections = result.get(count)
    if isinstance(connections, int) and connections > 0:
        result["server_cpu_ms_per_connection"] = round(cpu_s / connections * 1000, 3)
    return result


def medians(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Median of every figure across repeats, per mode and server."""
    summary: dict[str, Any] = {}
    for mode, by_server in runs.items():
        summary[mode] = {}
        for name, results in by_server.items():
            good = [r for r in results if "failed" not in r and "skipped" not in r]
            summary[mode][name] = report.summarise(mode, good) if good else {}
            summary[mode][name]["repeats"] = len(good)
            summary[mode][name]["failures"] = [r["failed"] for r in results if "failed" in r]
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few-minute subset (default)")
    size.add_argument(
        "--full", action="store_true", help="every mode, longer windows, more repeats"
    )
    parser.add_argument("--auth", choices=["dev", "jwks"], default="jwks")
    parser.add_argument(
        "--modes", help="comma list of fixed,cursor,ramp,idle,storm,connect,chat,flush"
    )
    parser.add_argument("--repeats", type=int, help="override the repeats of every mode")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "VTT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--log-level", default="warning", help="LOG_LEVEL for our server")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for latest.json and latest.md (default bench/results; partial runs "
        "with --modes or --repeats default to bench/results/raw, so they never replace "
        "the latest complete run)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the machine to be idle (< 20%% CPU) first",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the bench, write latest.json and latest.md; exit 1 if a measurement crashed."""
    args = parse_args(argv)
    profile = FULL if args.full else QUICK
    modes = tuple(args.modes.split(",")) if args.modes else profile.modes
    unknown = sorted(set(modes) - set(FULL.modes))
    if unknown:
        sys.stderr.write(
            f"unknown mode(s) {', '.join(unknown)}: choose from {','.join(FULL.modes)} "
            "(the soak is `make bench-soak`, python -m bench.soak)\n"
        )
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive())
        wait_for_quiet(args.quiet_wait)
        info = machine_info()
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vtt-bench-")))
        setup, books = prepare(args, stack, profile, work)
        for note in setup.notes:
            log(note)
        bench = Bench(profile, setup, books, work)
        bench.run_all(modes, args.repeats)
    results = {
        "machine": info,
        "profile": asdict(profile),
        "modes": list(modes),
        "setup": {"auth": setup.auth, "database": setup.database, "notes": setup.notes},
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": round(time.perf_counter() - started, 1),
        "servers": bench.servers,
        "summary": medians(bench.runs),
        "runs": bench.runs,
    }
    out: Path = args.out or (RAW if args.modes or args.repeats else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.markdown(results)
    (out / "latest.md").write_text(markdown)
    log(f"results written to {out}/latest.json and latest.md")
    sys.stdout.write(markdown)
    crashed = [r for by in bench.runs.values() for rs in by.values() for r in rs if "failed" in r]
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
