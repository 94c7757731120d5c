"""Where our server's time goes: py-spy samples it under a bench load, summarised by function.

    python -m bench.profile --py-spy /tmp/pyspy/bin/py-spy [--mode fixed|cursor|storm|connect]
        [--campaigns 100]
    python -m bench.profile --perf perf [--server ours|baseline] [--mode ...]

py-spy is not a project dependency: install it outside the repo (for example
`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`). The server is started
exactly as bench.run starts it (same auth and database set-up); samples cover the
measurement window only. Writes the collapsed stacks and a text summary to bench/results/raw/.

py-spy sees Python frames but undercounts the time spent inside system calls. With `--perf`,
Linux perf samples the server instead (kernel included: it needs kernel.perf_event_paranoid
<= 1, or root) and the summary is the share of samples by shared object, the kernel's apart,
and the top symbols: how much of the server's CPU is the kernel's work on its sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
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
# perf's sampling rate (Hz), odd so that it does not beat with the loop's timers.
PERF_RATE = 999
KERNEL = "[kernel.kallsyms]"
_PERCENT_ROW = re.compile(r"^\s*([0-9.]+)%\s+(.+?)\s*$")
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


def perf_rows(report: str) -> list[tuple[float, str]]:
    """The rows of a `perf report --stdio` table: (percent, the rest of the row)."""
    rows = []
    for line in report.splitlines():
        found = _PERCENT_ROW.match(line)
        if found and not line.lstrip().startswith("#"):
            rows.append((float(found.group(1)), found.group(2)))
    return rows


def perf_summary(by_dso: str, by_symbol: str, top: int, sent_us: float | None = None) -> str:
    """The kernel's and user space's shares of the samples, by shared object and symbol;
    with the server's CPU per sent frame (`sent_us`), the kernel's and user space's part."""
    dsos = perf_rows(by_dso)
    if not dsos:
        return "no samples\n"
    kernel = sum(share for share, name in dsos if name == KERNEL)
    lines = [f"kernel {kernel:.1f}% of the server's samples, user space {100 - kernel:.1f}%"]
    if sent_us is not None:
        in_kernel = sent_us * kernel / 100
        lines += [
            f"server CPU per sent frame {sent_us:.2f} us: kernel {in_kernel:.2f} us, "
            f"user space {sent_us - in_kernel:.2f} us"
        ]
    lines += ["", "by shared object:"]
    lines += [f"  {share:6.2f}%  {name}" for share, name in dsos[:top]]
    lines += ["", "by symbol ([k] kernel, [.] user space):"]
    lines += [f"  {share:6.2f}%  {name}" for share, name in perf_rows(by_symbol)[:top]]
    return "\n".join(lines) + "\n"


def per_sent_us(outcome: dict[str, Any]) -> float | None:
    """The server's CPU per frame the generator sent in the window (fixed and cursor modes)."""
    sent = outcome["result"].get("moves_sent")
    cpu_s = outcome.get("server_cpu_s")
    if not sent or cpu_s is None:
        return None
    return float(cpu_s) / int(sent) * 1e6


def _perf_report(perf: str, data: Path, sort: str) -> str:
    argv = [perf, "report", "-i", str(data), "--stdio", "--no-children", "-g", "none"]
    argv += ["--sort", sort]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _module(frame: str) -> str:
    """The file part of a shortened frame: `f (pkg/mod.py)` -> `pkg/mod.py`."""
    return frame.rpartition(" (")[2].rstrip(")")


def _short(frame: str) -> str:
    """`f (/a/b/pkg/mod.py:12)` -> `f (pkg/mod.py)`: line numbers would split one function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:]) if path else '?'})"


def sampler_argv(args: argparse.Namespace, pid: int, duration: float, out: Path) -> list[str]:
    """The py-spy or perf command that samples `pid` for `duration` seconds into `out`."""
    seconds = str(max(1, int(duration)))
    if args.perf:
        argv = [args.perf, "record", "-F", str(PERF_RATE), "-p", str(pid), "-o", str(out)]
        return [*argv, "--", "sleep", seconds]
    argv = [args.py_spy, "record", "--native", "--format", "raw", "--rate", str(RATE)]
    return [*argv, "--duration", seconds, "-o", str(out), "--pid", str(pid)]


def profile_window(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Run one load against the server with the sampler attached for the measurement window."""
    suffix = "perf.data" if args.perf else "txt"
    out = RAW / f"profile-{args.server}-{args.mode}-{args.campaigns}.{suffix}"
    server: ServerProcess = bench.server(args.server)
    server.start()
    spy: subprocess.Popen[bytes] | None = None

    def start_spy(duration: float) -> subprocess.Popen[bytes]:
        assert server.popen is not None
        log = (RAW / ("perf.log" if args.perf else "py-spy.log")).open("ab")
        argv = sampler_argv(args, server.popen.pid, duration, out)
        return subprocess.Popen(argv, stdout=log, stderr=log)

    sample_window, windows = bench.window_sampler(server)

    def on_event(event: dict[str, Any]) -> None:
        nonlocal spy
        sample_window(event)
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
    cpu_s = windows[-1]["server_cpu_s"] if windows else None
    return {"result": result, "samples": str(out), "server_cpu_s": cpu_s}


def main(argv: list[str] | None = None) -> int:
    """Profile our server under one load and print where its time goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--perf", help="sample with this perf binary instead of py-spy")
    parser.add_argument("--server", choices=[OURS, BASELINE], default=OURS)
    parser.add_argument("--mode", choices=["fixed", "cursor", "storm", "connect"], default="fixed")
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--auth", choices=["dev", "jwks"], default="jwks")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    sampler = args.perf or args.py_spy
    if not shutil.which(sampler):
        sys.stderr.write(f"{sampler} not found\n")
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
        outcome = profile_window(bench, args)
    samples = Path(outcome["samples"])
    if args.perf:
        by_dso = _perf_report(args.perf, samples, "dso")
        by_symbol = _perf_report(args.perf, samples, "dso,sym")
        text = perf_summary(by_dso, by_symbol, args.top, per_sent_us(outcome))
    else:
        text = summarise(samples, args.top)
    summary_path = samples.with_suffix(".summary.txt")
    summary_path.write_text(text)
    sys.stdout.write(
        json.dumps({k: v for k, v in outcome["result"].items() if k != "steps"}) + "\n"
    )
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
