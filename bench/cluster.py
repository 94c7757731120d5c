"""Several machines (issue 17.8): the op log's cost, Redis commands, failover, the relay's cost.

`python -m bench.cluster [--quick | --full]` (`make bench-cluster`). Every measurement gets a
fresh scratch Postgres database and a private `redis-server` (no persistence) on a free port;
servers are `python -m app` with dev auth, pinned to core 0; the load generator (bench/loadgen.py)
and the clients of this process are on core 1, and so are Redis and the delay proxy.

1. Op log off / on / on + 1 ms: N campaigns x 6 clients, one mover each at 20 Hz (loadgen's
   `fixed` mode), against one server with REDIS_URL unset (op log off), set (op log on, one
   node), and set through a TCP proxy that holds each chunk 0.5 ms in each direction (~1 ms
   added round trip). Server CPU per delivered message and the fan-out's p99.
2. Redis commands per second per dragging campaign: `INFO commandstats` deltas over the same
   windows (the INFO calls themselves not counted), divided by the window and by N.
3. Failover: two nodes; a GM connected to the owner drags at 20 Hz; the owner is SIGKILLed;
   the GM reconnects to the other node (since/epoch) every 100 ms until a greeting arrives.
   Time from SIGKILL to the first state.resume or state.sync (which one is reported).
4. Relay cost: two nodes; a GM on the owner moves at 20 Hz; one player on the owner, one on
   the other node (relayed): move -> arrival p50/p99 for each, and connect time (open ->
   state.sync) direct and relayed.

Results go to bench/results/cluster-latest.json and cluster-latest.md. `--delay-proxy LISTEN
TARGET MS` runs only the delay proxy (the bench starts it that way, in its own process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.processes import GENERATOR_CORE, SERVER_CORE, ServerProcess, core_busy, pinned
from bench.stats import percentile

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RAW = RESULTS / "raw"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
# Redis commands the bench itself sends while measuring, left out of the per-campaign rates.
OWN_COMMANDS = frozenset({"info", "ping"})
GREETINGS = ("state.sync", "state.resume")
RECONNECT_INTERVAL = 0.1


@dataclass(frozen=True)
class Profile:
    """What one invocation measures."""

    name: str
    campaigns: tuple[int, ...]
    warmup: float
    window: float
    oplog_repeats: int
    ttls: tuple[int, ...]
    failover_repeats: int
    relay_repeats: int
    relay_seconds: float
    clients: int = 6
    rate: float = 20.0


QUICK = Profile(
    name="quick",
    campaigns=(50,),
    warmup=3.0,
    window=20.0,
    oplog_repeats=1,
    ttls=(2,),
    failover_repeats=3,
    relay_repeats=3,
    relay_seconds=10.0,
)
FULL = Profile(
    name="full",
    campaigns=(100, 300),
    warmup=3.0,
    window=20.0,
    oplog_repeats=3,
    ttls=(2, 10),
    failover_repeats=3,
    relay_repeats=3,
    relay_seconds=10.0,
)
# (label, Redis delay per chunk each way in ms): None is no Redis at all (op log off).
CONFIGS = (("off", None), ("on", 0.0), ("on + 1 ms", 0.5))
MEASUREMENTS = ("oplog", "failover", "relay")


# --- pure parts (tests/unit/test_bench_cluster.py) ------------------------------------------


def parse_commandstats(text: str) -> dict[str, int]:
    """`INFO commandstats` -> calls per command (lower case; `cmdstat_client|list` kept whole)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_") :].partition(":")
        for field in fields.split(","):
            key, _, value = field.partition("=")
            if key == "calls":
                calls[name.lower()] = int(value)
    return calls


def commandstats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls made between two samples, per command (commands not called are left out)."""
    delta = {name: count - before.get(name, 0) for name, count in after.items()}
    return {name: count for name, count in sorted(delta.items()) if count > 0}


def per_campaign_rates(delta: dict[str, int], seconds: float, campaigns: int) -> dict[str, float]:
    """Commands per second per campaign: evalsha, and the total without the bench's own."""
    if seconds <= 0 or campaigns <= 0:
        raise ValueError("seconds and campaigns must be positive")
    total = sum(count for name, count in delta.items() if name not in OWN_COMMANDS)
    scale = seconds * campaigns
    return {
        "evalsha": round(delta.get("evalsha", 0) / scale, 3),
        "total": round(total / scale, 3),
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> value per metric name, summed over label sets (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, _labels, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + value
    return values


def metric_delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """How much metric `name` grew between two samples."""
    return after.get(name, 0.0) - before.get(name, 0.0)


def quantile_ms(samples_s: Sequence[float], q: float) -> float:
    """The q-quantile of latencies in seconds, in milliseconds (nearest rank)."""
    return round(percentile(sorted(samples_s), q) * 1000, 2)


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that exist, None when none do."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for the table, or a dash when it was not measured."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The figures as markdown tables."""
    lines = [
        f"## Several machines (issue 17.8): `{result['command']}`, {result['machine']['date']}",
        "",
        f"Commit {result['machine']['commit']}, {result['machine']['nproc']} cores "
        f"({result['machine']['cpu_model']}), load average at start "
        f"{result['machine']['load_average_at_start']}.",
        "",
        "### Op log off / on, and Redis commands per dragging campaign",
        "",
        f"{result['profile']['clients']} clients per campaign, one mover at "
        f"{result['profile']['rate']:.0f} Hz; {result['profile']['window']:.0f} s windows; "
        f"medians of {result['profile']['oplog_repeats']} run(s).",
        "",
        "| campaigns | op log | Redis PING RTT (ms) | server CPU per delivered msg (us) "
        "| p50 (ms) | p99 (ms) "
        "| delivered/s | lost | errors | Redis evalsha/s per campaign | Redis cmds/s per campaign "
        "| op log appends/s | mean append (ms) | redis-server CPU per msg (us) "
        "| other load on server core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]["oplog"]:
        lines.append(
            f"| {row['campaigns']} | {row['config']} | {fmt(row['redis_rtt_ms'], 3)} "
            f"| {fmt(row['cpu_per_msg_us'], 2)} "
            f"| {fmt(row['p50_ms'], 2)} | {fmt(row['p99_ms'], 2)} "
            f"| {fmt(row['delivered_per_s'], 0)} "
            f"| {row['lost']} | {row['errors'] or 'none'} | {fmt(row['evalsha_per_s'], 2)} "
            f"| {fmt(row['commands_per_s'], 2)} | {fmt(row['appends_per_s'], 0)} "
            f"| {fmt(row['mean_append_ms'], 3)} | {fmt(row['redis_cpu_per_msg_us'], 2)} "
            f"| {fmt(row['noise_server_core'], 2)} |"
        )
    lines += [
        "",
        "### Failover: SIGKILL the owner, reconnect to the other node every 100 ms",
        "",
        "| VTT_LEASE_TTL (s) | repeats | SIGKILL -> greeting, median (s) | min (s) | max (s) "
        "| greeting |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["summary"]["failover"]:
        lines.append(
            f"| {row['ttl']} | {row['repeats']} | {fmt(row['median_s'], 2)} "
            f"| {fmt(row['min_s'], 2)} | {fmt(row['max_s'], 2)} | {row['greetings'] or '-'} |"
        )
    relay = result["summary"]["relay"]
    lines += [
        "",
        f"### Relay cost: GM on the owner moving at {result['profile']['rate']:.0f} Hz "
        f"(medians of {relay['repeats']})",
        "",
        "| player | move -> arrival p50 (ms) | p99 (ms) | connect, open -> state.sync (ms) |",
        "|---|---|---|---|",
    ]
    for path in ("direct", "relayed"):
        figures = relay.get(path, {})
        lines.append(
            f"| {path} | {fmt(figures.get('p50_ms'), 2)} | {fmt(figures.get('p99_ms'), 2)} "
            f"| {fmt(figures.get('connect_ms'), 1)} |"
        )
    if result["notes"]:
        lines += ["", "Notes:", "", *(f"- {note}" for note in result["notes"])]
    lines.append("")
    return "\n".join(lines)


# --- processes ------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[bench.cluster] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts on `port` (or `proc` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port} after {timeout:.0f} s")


def redis_info(port: int, section: str = "commandstats") -> str:
    """`INFO <section>` over a plain socket (RESP inline command, bulk string answer)."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            data += chunk
        header, _, body = data.partition(b"\r\n")
        if not header.startswith(b"$"):
            raise RuntimeError(f"unexpected INFO answer {header!r}")
        length = int(header[1:])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("redis closed the connection")
            body += chunk
        return body[:length].decode()


class Redis:
    """A private redis-server without persistence, on the generator's core."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log_path = work / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Redis:
        binary = shutil.which("redis-server") or "redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                pinned(GENERATOR_CORE, argv), stdout=out, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, 10, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)

    def calls(self) -> dict[str, int]:
        """Calls per command so far."""
        return parse_commandstats(redis_info(self.port))

    def cpu(self) -> float:
        """redis-server's user+system CPU seconds so far."""
        import psutil

        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)


class DelayProxy:
    """`python -m bench.cluster --delay-proxy` in its own process, in front of Redis."""

    def __init__(self, target: int, delay_ms: float, work: Path) -> None:
        self.port = free_port()
        self.target = target
        self.delay_ms = delay_ms
        self.log_path = work / f"proxy-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DelayProxy:
        argv = [sys.executable, "-m", "bench.cluster", "--delay-proxy"]
        argv += [str(self.port), str(self.target), str(self.delay_ms)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                pinned(GENERATOR_CORE, argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, 10, self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Copy source -> sink, each chunk written `delay` s after it was read, order kept.

    Threads and time.sleep, not an event loop: epoll's timeouts (and so asyncio's and
    uvloop's timers) are in whole milliseconds, which would turn 0.5 ms into 1 ms or more.
    """
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def send() -> None:
        try:
            while True:
                due, chunk = chunks.get()
                if not chunk:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        while True:
            chunk = source.recv(65536)
            chunks.put((time.perf_counter() + delay, chunk))
            if not chunk:
                break
    except OSError:
        chunks.put((0.0, b""))
    sender.join()


def serve_delay_proxy(listen: int, target: int, delay_ms: float) -> None:
    """A TCP proxy on `listen` to `target` holding each chunk `delay_ms` in each direction."""
    delay = delay_ms / 1000

    def handle(client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", target))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(upstream, client, delay), daemon=True)
        back.start()
        _pipe(client, upstream, delay)
        back.join()
        client.close()
        upstream.close()

    with socket.create_server(("127.0.0.1", listen)) as server:
        while True:
            client, _ = server.accept()
            threading.Thread(target=handle, args=(client,), daemon=True).start()


def ping_rtt_ms(port: int, count: int = 200) -> float:
    """The median round trip of PING to a Redis (or the proxy in front of it), in ms."""
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            before = time.perf_counter()
            sock.sendall(b"PING\r\n")
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    raise RuntimeError("redis closed the connection")
                answer += chunk
            samples.append(time.perf_counter() - before)
    return round(statistics.median(samples) * 1000, 3)


class Scratch:
    """A fresh, empty Postgres database for one measurement (the server migrates it)."""

    def __init__(self, admin_url: str, tag: str) -> None:
        self.admin_url = admin_url
        self.name = f"vtt_bench_cluster_{os.getpid()}_{tag}"
        base, _, _ = admin_url.rpartition("/")
        self.url = f"{base}/{self.name}"

    async def _execute(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def __enter__(self) -> Scratch:
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        asyncio.run(self._execute(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run(self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def metrics_of(port: int) -> dict[str, float]:
    """A node's /metrics, parsed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return parse_metrics(answer.read().decode())


class Bench:
    """Runs the four measurements; keeps every run and a note for whatever could not run."""

    def __init__(self, profile: Profile, pg_url: str, work: Path) -> None:
        from bench.tokens import dev_book

        self.profile = profile
        self.pg_url = pg_url
        self.work = work
        self.key_dir = work / "devkeys"
        self.book = dev_book(self.key_dir)
        self.secret = secrets.token_hex(16)
        self.counter = 0
        self.notes: list[str] = []
        self.runs: dict[str, list[dict[str, Any]]] = {"oplog": [], "failover": [], "relay": []}

    def tag(self) -> str:
        self.counter += 1
        return str(self.counter)

    def node(
        self, name: str, db_url: str, redis_url: str | None, extra: dict[str, str] | None = None
    ) -> ServerProcess:
        """A server process (not started); clustered when `redis_url` is given."""
        port = free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "DATABASE_URL": db_url,
            "VTT_DEV_KEY_DIR": str(self.key_dir),
        }
        env.pop("REDIS_URL", None)
        if redis_url is not None:
            env |= {
                "REDIS_URL": redis_url,
                "VTT_NODE_ID": name,
                "VTT_NODE_URL": f"ws://127.0.0.1:{port}",
                "VTT_CLUSTER_SECRET": self.secret,
                "VTT_ROUTING": "relay",
            }
        env |= extra or {}
        log_path = RAW / f"cluster-node-{name}.log"
        return ServerProcess(
            name, [sys.executable, "-m", "app"], env, port, "/ready", log_path, REPO
        )

    # 1 and 2: op log off / on / on + delay

    def oplog(self, campaigns: int, config: str, delay_ms: float | None) -> dict[str, Any]:
        """One fixed-load window against one server in configuration `config`."""
        from bench.processes import run_loadgen

        p = self.profile
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(Scratch(self.pg_url, self.tag()))
            redis: Redis | None = None
            redis_url = None
            rtt: dict[str, float] | None = None
            if delay_ms is not None:
                redis = stack.enter_context(Redis(self.work))
                port = redis.port
                if delay_ms > 0:
                    port = stack.enter_context(DelayProxy(redis.port, delay_ms, self.work)).port
                redis_url = f"redis://127.0.0.1:{port}/0"
                rtt = {"direct_ms": ping_rtt_ms(redis.port), "via_url_ms": ping_rtt_ms(port)}
            server = self.node("a", db.url, redis_url)
            server.start()
            stack.callback(server.stop)
            plan = self.work / f"plan-{server.port}.json"
            url = f"ws://127.0.0.1:{server.port}/ws"
            plan.write_text(json.dumps(self.book.plan(url, campaigns, p.clients)))
            samples: dict[str, Any] = {}

            def sample() -> dict[str, Any]:
                return {
                    "t": time.perf_counter(),
                    "cpu": server.cpu(),
                    "core": core_busy(SERVER_CORE),
                    "calls": redis.calls() if redis else {},
                    "redis_cpu": redis.cpu() if redis else 0.0,
                    "metrics": metrics_of(server.port),
                }

            def on_event(event: dict[str, Any]) -> None:
                if event["event"] in ("window_start", "window_end"):
                    samples[event["event"]] = sample()

            args = {
                "--plan": plan, "--mode": "fixed", "--campaigns": campaigns,
                "--clients": p.clients, "--rate": p.rate, "--warmup": p.warmup,
                "--window": p.window,
            }  # fmt: skip
            result = run_loadgen(
                [str(item) for pair in args.items() for item in pair],
                RAW / "cluster-loadgen.log",
                REPO,
                on_event,
            )
        start, end = samples["window_start"], samples["window_end"]
        elapsed = end["t"] - start["t"]
        cpu = end["cpu"] - start["cpu"]
        delivered = max(1, int(result["delivered"]))
        delta = commandstats_delta(start["calls"], end["calls"])
        appends = metric_delta(start["metrics"], end["metrics"], "vtt_oplog_appends_total")
        append_s = metric_delta(start["metrics"], end["metrics"], "vtt_oplog_append_seconds_sum")
        append_n = metric_delta(start["metrics"], end["metrics"], "vtt_oplog_append_seconds_count")
        rates = per_campaign_rates(delta, elapsed, campaigns) if redis else None
        return {
            "campaigns": campaigns,
            "config": config,
            "redis_delay_ms_each_way": delay_ms,
            "redis_ping_rtt": rtt,
            "elapsed_s": round(elapsed, 3),
            "delivered": result["delivered"],
            "delivered_per_s": result["delivered_per_s"],
            "moves_sent": result["moves_sent"],
            "lost": result["lost"],
            "errors": result["errors"],
            "latency_ms": result["latency_ms"],
            "generator": result["generator"],
            "generator_limited": result["generator_limited"],
            "server_cpu_s": round(cpu, 3),
            "cpu_per_msg_us": round(cpu / delivered * 1e6, 2),
            "noise_server_core": round(max(0.0, end["core"] - start["core"] - cpu) / elapsed, 3),
            "redis_commands": delta,
            "redis_per_campaign_per_s": rates,
            "redis_cpu_per_msg_us": (
                round((end["redis_cpu"] - start["redis_cpu"]) / delivered * 1e6, 2)
                if redis
                else None
            ),
            "oplog_appends_per_s": round(appends / elapsed, 1),
            "oplog_mean_append_ms": round(append_s / append_n * 1000, 3) if append_n else None,
        }

    # 3: failover

    def failover(self, ttl: int) -> dict[str, Any]:
        """Two nodes; kill the owner mid-drag; time until the other node greets the GM."""
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(Scratch(self.pg_url, self.tag()))
            redis = stack.enter_context(Redis(self.work))
            url = f"redis://127.0.0.1:{redis.port}/0"
            ttl_env = {"VTT_LEASE_TTL": str(ttl)}
            a = self.node("a", db.url, url, ttl_env)
            b = self.node("b", db.url, url, ttl_env)
            for node in (a, b):
                node.start()
                stack.callback(node.stop)
            outcome: dict[str, Any] = run_async(self._failover(a, b, ttl))
            return outcome

    async def _failover(self, a: ServerProcess, b: ServerProcess, ttl: int) -> dict[str, Any]:
        from bench.tokens import campaign_id

        cid, token = campaign_id(0), self.book.token(0, 0)
        gm = await open_client(ws_url(a.port, cid, token))
        sync = await first_of(gm, GREETINGS)
        epoch, seq = str(sync["payload"].get("epoch", "")), int(sync.get("seq", 0))
        await gm.send(json.dumps({"type": "token.add", "payload": TOKEN}))
        seq = max(seq, int((await first_of(gm, ("token.add",))).get("seq", seq)))
        last_seq = [seq]

        async def drag() -> None:
            x = 0
            while True:
                x += 1
                move = {"token_id": "t1", "x": x, "y": 0}
                await gm.send(json.dumps({"type": "token.move", "payload": move}))
                await asyncio.sleep(1 / self.profile.rate)

        async def track() -> None:
            async for raw in gm:
                frame = json.loads(raw)
                if isinstance(frame.get("seq"), int):
                    last_seq[0] = max(last_seq[0], frame["seq"])

        tasks = [asyncio.create_task(drag()), asyncio.create_task(track())]
        await asyncio.sleep(2.0)
        assert a.popen is not None
        a.popen.kill()
        killed = time.monotonic()
        a.popen.wait(10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await gm.close()
        attempts, refusals = 0, list[str]()
        since = last_seq[0]
        resume = f"{ws_url(b.port, cid, token)}&since={since}&epoch={epoch}"
        deadline = killed + ttl + 20.0
        while time.monotonic() < deadline:
            attempts += 1
            try:
                client = await open_client(resume, within=3.0)
                try:
                    frame = await first_of(client, GREETINGS, within=3.0)
                    at = time.monotonic()
                finally:
                    await client.close()
                return {
                    "ttl": ttl,
                    "seconds": round(at - killed, 3),
                    "greeting": frame["type"],
                    "since": since,
                    "attempts": attempts,
                    "refusals": sorted(set(refusals)),
                }
            except Exception as exc:  # a refused upgrade, a close, a timeout: try again
                refusals.append(type(exc).__name__ + (f" {exc}"[:60] if str(exc) else ""))
            await asyncio.sleep(RECONNECT_INTERVAL)
        raise TimeoutError(f"no greeting from b within {ttl + 20} s: {sorted(set(refusals))}")

    # 4: relay cost

    def relay(self) -> list[dict[str, Any]]:
        """Two nodes; a GM on the owner moves; a player direct and one relayed measure."""
        with contextlib.ExitStack() as stack:
            db = stack.enter_context(Scratch(self.pg_url, self.tag()))
            redis = stack.enter_context(Redis(self.work))
            url = f"redis://127.0.0.1:{redis.port}/0"
            a = self.node("a", db.url, url)
            b = self.node("b", db.url, url)
            for node in (a, b):
                node.start()
                stack.callback(node.stop)
            runs: list[dict[str, Any]] = run_async(self._relay(a, b))
            return runs

    async def _relay(self, a: ServerProcess, b: ServerProcess) -> list[dict[str, Any]]:
        from bench.tokens import campaign_id

        cid = campaign_id(0)
        gm = await open_client(ws_url(a.port, cid, self.book.token(0, 0)))
        await first_of(gm, GREETINGS)
        await gm.send(json.dumps({"type": "token.add", "payload": TOKEN}))
        await first_of(gm, ("token.add",))
        players = {
            "direct": await open_client(ws_url(a.port, cid, self.book.token(0, 1))),
            "relayed": await open_client(ws_url(b.port, cid, self.book.token(0, 2))),
        }
        for ws in players.values():
            await first_of(ws, GREETINGS)
        relays_open = metrics_of(b.port).get("vtt_relays_open")
        drain = asyncio.create_task(discard(gm))
        runs: list[dict[str, Any]] = []
        x = 0
        for repeat in range(self.profile.relay_repeats):
            sent: dict[int, float] = {}
            arrived: dict[str, dict[int, float]] = {path: {} for path in players}
            watchers = [
                asyncio.create_task(watch_moves(ws, arrived[path])) for path, ws in players.items()
            ]
            steps = round(self.profile.rate * self.profile.relay_seconds)
            started = time.monotonic()
            for step in range(steps):
                wait = started + step / self.profile.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                x += 1
                sent[x] = time.monotonic()
                move = {"token_id": "t1", "x": x, "y": 0}
                await gm.send(json.dumps({"type": "token.move", "payload": move}))
            await asyncio.sleep(1.0)
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            run: dict[str, Any] = {
                "repeat": repeat,
                "sent": len(sent),
                "relays_open_on_b": relays_open,
            }
            for path, seen in arrived.items():
                latencies = [seen[k] - sent[k] for k in sent if k in seen]
                run[path] = {
                    "received": len(latencies),
                    "p50_ms": quantile_ms(latencies, 0.5),
                    "p99_ms": quantile_ms(latencies, 0.99),
                }
            for path, port, slot in (("direct", a.port, 3), ("relayed", b.port, 4)):
                opened = time.monotonic()
                ws = await open_client(ws_url(port, cid, self.book.token(0, slot)))
                await first_of(ws, ("state.sync",))
                run[path]["connect_ms"] = round((time.monotonic() - opened) * 1000, 1)
                await ws.close()
            runs.append(run)
            log(f"relay {repeat + 1}: direct {run['direct']}, relayed {run['relayed']}")
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        for ws in [gm, *players.values()]:
            await ws.close()
        return runs

    # all

    def record(self, kind: str, label: str, run: Any) -> None:
        """Run one measurement; a failure is kept (and noted) rather than ending the bench."""
        log(f"{label} ...")
        started = time.perf_counter()
        try:
            outcome = run()
        except Exception as exc:
            outcome = {"failed": f"{type(exc).__name__}: {exc}"}
            self.notes.append(f"{label} failed: {outcome['failed']}")
        results = outcome if isinstance(outcome, list) else [outcome]
        for result in results:
            result["label"] = label
            result["wall_s"] = round(time.perf_counter() - started, 1)
            self.runs[kind].append(result)
        log(f"{label}: {json.dumps(results)[:400]}")

    def run_all(self, only: frozenset[str]) -> None:
        """Run the selected measurements: op log configurations interleaved per repeat."""
        p = self.profile
        for campaigns in p.campaigns if "oplog" in only else ():
            for repeat in range(p.oplog_repeats):
                for config, delay in CONFIGS:
                    label = f"oplog {campaigns} {config} #{repeat + 1}"
                    self.record(
                        "oplog", label, lambda c=campaigns, k=config, d=delay: self.oplog(c, k, d)
                    )
        for ttl in p.ttls if "failover" in only else ():
            for repeat in range(p.failover_repeats):
                self.record(
                    "failover", f"failover ttl {ttl} #{repeat + 1}", lambda t=ttl: self.failover(t)
                )
        if "relay" in only:
            self.record("relay", "relay", self.relay)


TOKEN = {
    "token_id": "t1",
    "name": "bench",
    "x": 0,
    "y": 0,
    "width": 1,
    "height": 1,
    "visible": True,
}


def ws_url(port: int, campaign: str, token: str) -> str:
    return f"ws://127.0.0.1:{port}/ws?campaign={campaign}&token={token}"


def run_async(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


async def open_client(url: str, within: float = 30.0) -> Any:
    from websockets.asyncio.client import connect

    return await connect(url, max_size=None, open_timeout=within)


async def first_of(ws: Any, kinds: Sequence[str], within: float = 30.0) -> dict[str, Any]:
    """Read frames until one of `kinds` arrives; return it."""
    async with asyncio.timeout(within):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] in kinds:
                return frame
            if frame["type"] == "error":
                raise RuntimeError(f"error frame {frame['payload']}")


async def watch_moves(ws: Any, arrived: dict[int, float]) -> None:
    """Record the arrival time of each token.move by its x."""
    while True:
        raw = await ws.recv()
        at = time.monotonic()
        frame = json.loads(raw)
        if frame["type"] == "token.move":
            arrived.setdefault(int(frame["payload"]["x"]), at)


async def discard(ws: Any) -> None:
    """Read and drop everything (the GM's own echoes), so its buffer never fills."""
    async for _ in ws:
        pass


def summarise(runs: dict[str, list[dict[str, Any]]], profile: Profile) -> dict[str, Any]:
    """Medians per (campaigns, config), per TTL, and per relay path."""
    oplog = []
    for campaigns in profile.campaigns:
        for config, _ in CONFIGS:
            good = [
                r
                for r in runs["oplog"]
                if "failed" not in r and r["campaigns"] == campaigns and r["config"] == config
            ]
            rates = [r["redis_per_campaign_per_s"] for r in good if r["redis_per_campaign_per_s"]]
            errors: dict[str, int] = {}
            for r in good:
                for code, count in r["errors"].items():
                    errors[code] = errors.get(code, 0) + count
            oplog.append(
                {
                    "campaigns": campaigns,
                    "config": config,
                    "repeats": len(good),
                    "redis_rtt_ms": median_or_none(
                        [r["redis_ping_rtt"]["via_url_ms"] for r in good if r["redis_ping_rtt"]]
                    ),
                    "cpu_per_msg_us": median_or_none([r["cpu_per_msg_us"] for r in good]),
                    "p50_ms": median_or_none([r["latency_ms"]["p50"] for r in good]),
                    "p99_ms": median_or_none([r["latency_ms"]["p99"] for r in good]),
                    "delivered_per_s": median_or_none([r["delivered_per_s"] for r in good]),
                    "lost": sum(r["lost"] for r in good),
                    "errors": ", ".join(f"{k} {v}" for k, v in sorted(errors.items())),
                    "evalsha_per_s": median_or_none([x["evalsha"] for x in rates]),
                    "commands_per_s": median_or_none([x["total"] for x in rates]),
                    "appends_per_s": median_or_none([r["oplog_appends_per_s"] for r in good]),
                    "mean_append_ms": median_or_none([r["oplog_mean_append_ms"] for r in good]),
                    "redis_cpu_per_msg_us": median_or_none(
                        [r["redis_cpu_per_msg_us"] for r in good]
                    ),
                    "noise_server_core": median_or_none([r["noise_server_core"] for r in good]),
                    "generator_limited_runs": sum(bool(r["generator_limited"]) for r in good),
                }
            )
    failover = []
    for ttl in profile.ttls:
        good = [r for r in runs["failover"] if "failed" not in r and r["ttl"] == ttl]
        seconds = [r["seconds"] for r in good]
        kinds: dict[str, int] = {}
        for r in good:
            kinds[r["greeting"]] = kinds.get(r["greeting"], 0) + 1
        failover.append(
            {
                "ttl": ttl,
                "repeats": len(good),
                "median_s": median_or_none(seconds),
                "min_s": min(seconds) if seconds else None,
                "max_s": max(seconds) if seconds else None,
                "greetings": ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())),
            }
        )
    relay_runs = [r for r in runs["relay"] if "failed" not in r]
    relay: dict[str, Any] = {"repeats": len(relay_runs)}
    for path in ("direct", "relayed"):
        if relay_runs:
            relay[path] = {
                key: median_or_none([r[path][key] for r in relay_runs])
                for key in ("p50_ms", "p99_ms", "connect_ms")
            }
    return {"oplog": oplog, "failover": failover, "relay": relay}


def machine_info() -> dict[str, Any]:
    """The machine and code the figures belong to."""
    from bench.run import machine_info as run_machine_info

    info: dict[str, Any] = run_machine_info()
    return info


def main(argv: list[str] | None = None) -> int:
    """Run the cluster bench; exit 1 when a measurement failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="N=50, TTL 2 (default)")
    size.add_argument("--full", action="store_true", help="N=100 and 300, TTL 2 and 10")
    parser.add_argument("--pg-url", default=os.environ.get("VTT_BENCH_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument(
        "--out", type=Path, help="default bench/results (bench/results/raw with --only)"
    )
    parser.add_argument("--only", help="comma list of oplog,failover,relay (a partial run)")
    parser.add_argument(
        "--delay-proxy",
        nargs=3,
        metavar=("LISTEN", "TARGET", "MS"),
        help="only run the delay proxy: listen port, target port, delay per chunk each way",
    )
    args = parser.parse_args(argv)
    if args.delay_proxy:
        listen, target, delay = args.delay_proxy
        serve_delay_proxy(int(listen), int(target), float(delay))
        return 0
    from bench.run import exclusive
    from bench.scratchdb import reachable

    profile = FULL if args.full else QUICK
    only = frozenset(args.only.split(",")) if args.only else frozenset(MEASUREMENTS)
    if only - set(MEASUREMENTS):
        sys.stderr.write(f"--only: choose from {','.join(MEASUREMENTS)}\n")
        return 2
    problem = reachable(args.pg_url)
    if problem is not None:
        sys.stderr.write(f"Postgres is required (REDIS_URL needs it): {problem}\n")
        return 2
    if shutil.which("redis-server") is None:
        sys.stderr.write("redis-server is not installed\n")
        return 2
    os.sched_setaffinity(0, {GENERATOR_CORE})
    started = time.perf_counter()
    with exclusive(), tempfile.TemporaryDirectory(prefix="vtt-cluster-") as work:
        info = machine_info()
        bench = Bench(profile, args.pg_url, Path(work))
        bench.run_all(only)
    notes = [
        "Shared machine: 2 cores, another process may have been running tests; the "
        "'other load on server core' column is the server core's busy time not ours.",
        "Redis and the delay proxy run on the generator's core (1), the server(s) on core 0.",
        *bench.notes,
    ]
    limited = [
        f"{r['label']}: generator near its limit"
        for r in bench.runs["oplog"]
        if r.get("generator_limited")
    ]
    notes += limited
    command = "python -m bench.cluster " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "machine": info,
        "command": command.strip(),
        "profile": asdict(profile),
        "duration_s": round(time.perf_counter() - started, 1),
        "summary": summarise(bench.runs, profile),
        "runs": bench.runs,
        "notes": notes,
    }
    out: Path = args.out or (RAW if args.only else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "cluster-latest.md").write_text(text)
    sys.stdout.write(text)
    failed = [r for rs in bench.runs.values() for r in rs if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
