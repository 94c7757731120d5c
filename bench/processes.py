"""The processes a bench run drives: a pinned server under test and a pinned load generator."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil  # type: ignore[import-untyped, unused-ignore]

SERVER_CORE = 0
GENERATOR_CORE = 1


def pinned(core: int, argv: list[str]) -> list[str]:
    """Prefix argv with taskset so the process and its threads stay on one core."""
    return ["taskset", "-c", str(core), *argv]


def core_busy(core: int) -> float:
    """Return the seconds core `core` has spent not idle since boot (all processes)."""
    times = psutil.cpu_times(percpu=True)[core]
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class ServerProcess:
    """One server under test: started pinned to SERVER_CORE, probed over HTTP, measured by pid."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        ready_path: str,
        log_path: Path,
        cwd: Path,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until its readiness path answers 200."""
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            pinned(SERVER_CORE, self.argv),
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.popen.pid)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode}; see {self.log_path}"
                )
            status = self._probe()
            if status == 200:
                return
            last = f"HTTP {status}" if status else "no answer"
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready after {timeout:.0f} s ({last}); see {self.log_path}"
        )

    def _probe(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path)
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def _tree(self) -> list[psutil.Process]:
        if self.ps is None:
            return []
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        """Return user+system CPU seconds used so far by the server and its children."""
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        """Return the resident set size in bytes of the server and its children."""
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the server to stop (SIGTERM) and kill it if it does not within `timeout`."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.popen = None
        self.ps = None


EventHandler = Callable[[dict[str, Any]], None]


def run_loadgen(
    args: list[str],
    log_path: Path,
    cwd: Path,
    on_event: EventHandler,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run bench.loadgen pinned to GENERATOR_CORE; feed its events to callbacks; return its result.

    `on_event` sees every event line as it arrives (the caller samples the server's CPU on
    `window_start` / `window_end`); `on_ready` runs on `ready`, after which the generator is
    told to go on.
    """
    argv = pinned(GENERATOR_CORE, [sys.executable, "-m", "bench.loadgen", *args])
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE,
            text=True,
        )
        assert popen.stdout is not None
        assert popen.stdin is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: IO[str]) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(popen.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        result: dict[str, Any] | None = None
        try:
            while result is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"load generator did not finish in {timeout:.0f} s")
                try:
                    line = lines.get(timeout=remaining)
                except queue.Empty:
                    continue
                if line is None:
                    break
                event = json.loads(line)
                on_event(event)
                if event["event"] == "ready":
                    if on_ready is not None:
                        on_ready(event)
                    popen.stdin.write("next\n")
                    popen.stdin.flush()
                elif event["event"] == "result":
                    result = event
        finally:
            with contextlib.suppress(OSError):
                popen.stdin.close()
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)
    if result is None:
        raise RuntimeError(
            f"load generator exited {popen.returncode} without a result; see {log_path}"
        )
    return result
