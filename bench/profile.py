"""Where our server's time goes: py-spy samples it under a bench load, summarised by function.

    python -m bench.profile --py-spy /tmp/pyspy/bin/py-spy [--mode fixed|cursor|storm|connect]
        [--campaigns 100]

py-spy is not a project dependency: install it outside the repo (for example
`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`). The server is started
exactly as bench.run starts it (same auth and database set-up); samples cover the
measurement window only. Writes the collapsed stacks and a text summary to bench/results/raw/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.processes import ServerProcess
from bench.run import BASELINE, OURS, QUICK, RAW, Bench, FixedLoad, exclusive, prepare

RATE = 200
# Stacks through these are threads or the loop waiting, not working.
IDLE_FRAMES = ("epoll_wait", "epoll_pwait", "PyThread_acquire_lock_timed")


def summarise(collapsed: Path, top: int) -> str:
    """Rank functions by inclusive and by self share of samples in a py-spy raw file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        if any(frame.startswith(IDLE_FRAMES) for frame in frames):
            continue
        total += count
        own[frames[-1]] += count
        modules[_module(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} busy samples (threads and the loop waiting are left out)", ""]
    sections = [
        ("self by module (where the CPU itself was spent):", modules),
        ("self by function:", own),
        ("inclusive (share of samples with the function on the stack):", inclusive),
    ]
    for title, counts in sections:
        lines += [title]
        lines += [f"  {n / total:6.1%}  {name}" for name, n in counts.most_common(top)]
        lines += [""]
    return "\n".join(lines) + "\n"


def _module(frame: str) -> str:
    """The file part of a shortened frame: `f (pkg/mod.py)` -> `pkg/mod.py`."""
    return frame.rpartition(" (")[2].rstrip(")")


def _short(frame: str) -> str:
    """`f (/a/b/pkg/mod.py:12)` -> `f (pkg/mod.py)`: line numbers would split one function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:]) if path else '?'})"


def profile_window(bench: Bench, args: argparse.Namespace, py_spy: str) -> dict[str, Any]:
    """Run one load against our server with py-spy attached for the measurement window."""
    out = RAW / f"profile-{args.server}-{args.mode}-{args.campaigns}.txt"
    server: ServerProcess = bench.server(args.server)
    server.start()
    spy: subprocess.Popen[bytes] | None = None

    def start_spy(duration: float) -> subprocess.Popen[bytes]:
        assert server.popen is not None
        argv = [py_spy, "record", "--native", "--format", "raw", "--rate", str(RATE)]
        argv += ["--duration", str(max(1, int(duration))), "-o", str(out)]
        argv += ["--pid", str(server.popen.pid)]
        log = (RAW / "py-spy.log").open("ab")
        return subprocess.Popen(argv, stdout=log, stderr=log)

    def on_event(event: dict[str, Any]) -> None:
        nonlocal spy
        if event["event"] == "window_start" and spy is None:
            spy = start_spy(args.window)

    try:
        if args.mode in ("fixed", "cursor"):
            load = FixedLoad(f"{args.campaigns}x6", args.campaigns)
            plan = bench.plan(args.server, server.port, load.campaigns, load.clients)
            extra = ["--campaigns", str(args.campaigns), "--warmup", "2", "--window"]
            result = bench.loadgen(
                ["--plan", str(plan), "--mode", args.mode, *extra, str(args.window)], on_event
            )
        else:
            # storm: 50 campaigns of 10 at once; connect: 200 of 10, 200 handshakes in flight.
            campaigns, extra = (50, []) if args.mode == "storm" else (200, ["--concurrency", "200"])
            plan = bench.plan(args.server, server.port, campaigns, 10)
            spy = start_spy(args.window)
            argv = ["--plan", str(plan), "--mode", args.mode, "--campaigns", str(campaigns)]
            result = bench.loadgen([*argv, "--clients", "10", *extra])
    finally:
        if spy is not None:
            spy.wait(args.window + 30)
        server.stop()
    return {"result": result, "collapsed": str(out)}


def main(argv: list[str] | None = None) -> int:
    """Profile our server under one load and print where its time goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--server", choices=[OURS, BASELINE], default=OURS)
    parser.add_argument("--mode", choices=["fixed", "cursor", "storm", "connect"], default="fixed")
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--auth", choices=["dev", "jwks"], default="jwks")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if not Path(args.py_spy).exists():
        sys.stderr.write(f"py-spy not found at {args.py_spy}\n")
        return 2
    RAW.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(exclusive())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vtt-profile-")))
        setup, books = prepare(args, stack, QUICK, work)
        if args.server not in books:
            sys.stderr.write("our server (app/transport/serve.py) is not there to profile\n")
            return 2
        bench = Bench(QUICK, setup, books, work)
        outcome = profile_window(bench, args, args.py_spy)
    text = summarise(Path(outcome["collapsed"]), args.top)
    summary_path = Path(outcome["collapsed"]).with_suffix(".summary.txt")
    summary_path.write_text(text)
    sys.stdout.write(
        json.dumps({k: v for k, v in outcome["result"].items() if k != "steps"}) + "\n"
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
