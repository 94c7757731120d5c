"""A private redis-server for tests that may SIGKILL, SIGSTOP or restart it.

It listens on a free port of 127.0.0.1 with no config file, an append-only file synced on
every write and no snapshots, so a restart on the same port and directory finds every
acknowledged write again. Tests that need it skip when redis-server is not installed, except
with CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.support.database import _in_ci
from tests.support.poll import poll
from tests.support.process import free_port

STARTUP_TIMEOUT = 10.0
PING_TIMEOUT = 1.0
EXIT_TIMEOUT = 10.0


async def ping(port: int, timeout: float = PING_TIMEOUT) -> bool:
    """Whether a Redis on `port` answers PING within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"PING\r\n")
                return await reader.readline() == b"+PONG\r\n"
            finally:
                writer.transport.abort()
    except (OSError, TimeoutError):
        return False


class RedisProcess:
    """`redis-server` in a subprocess under `workdir`, its output in a log file there."""

    def __init__(self, workdir: Path, binary: str = "redis-server") -> None:
        self.binary = binary
        self.port = free_port()
        self.data_dir = workdir / f"redis-{self.port}"
        self.log_path = workdir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Start the server and wait until it answers PING."""
        assert not self.running, "redis-server is already running"
        proc = self._spawn()

        async def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited during startup:\n{self.output()}")
            return await ping(self.port)

        try:
            await poll(answers, timeout, "redis-server to answer PING", interval=0.02)
        except AssertionError as timed_out:
            self.kill()
            raise TimeoutError(f"{timed_out}; redis-server printed:\n{self.output()}") from None

    def _spawn(self) -> subprocess.Popen[bytes]:
        # A plain Popen, not an asyncio subprocess, so that kill(), pause() and resume() can be
        # plain calls: kill() reaps at once, without awaiting the event loop's child watcher.
        self.data_dir.mkdir(exist_ok=True)
        options = {"appendonly": "yes", "appendfsync": "always", "save": "", "dir": self.data_dir}
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        for name, value in options.items():
            argv += [f"--{name}", str(value)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self.proc

    def kill(self) -> None:
        """SIGKILL the server (paused or not) and reap it: a crash, nothing flushed after."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers until resume()."""
        assert self.proc is not None, "redis-server was never started"
        assert self.running, "redis-server is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server answers again, held commands first."""
        assert self.proc is not None, "redis-server was never started"
        assert self.running, "redis-server is not running"
        self.proc.send_signal(signal.SIGCONT)

    async def restart(self, *, empty: bool = False, timeout: float = STARTUP_TIMEOUT) -> None:
        """SIGKILL the server if it runs, then start it on the same port and directory.

        It reloads its append-only file, so it holds every write it acknowledged; with
        `empty=True` the data is deleted first and it starts with none.
        """
        self.kill()
        if empty:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        await self.start(timeout)

    async def stop(self, timeout: float = EXIT_TIMEOUT) -> None:
        """SIGTERM (waking a paused server) and wait for the exit; SIGKILL after `timeout`."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        proc.send_signal(signal.SIGCONT)
        try:
            await poll(lambda: proc.poll() is not None, timeout, "redis-server to exit")
        finally:
            self.kill()

    def output(self) -> str:
        """Everything the server printed."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    """A started private Redis, stopped after the test (skip, or fail in CI, when missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: Redis tests are mandatory)")
        pytest.skip(message)
    redis = RedisProcess(tmp_path, binary)
    await redis.start()
    try:
        yield redis
    finally:
        await redis.stop()


@asynccontextmanager
async def connected(
    redis: RedisProcess, socket_timeout: float = 1.0
) -> AsyncIterator[aioredis.Redis]:
    """A redis-py client of `redis` that gives up after `socket_timeout`, never retrying."""
    client = aioredis.Redis.from_url(
        redis.url, socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        yield client
    finally:
        async with asyncio.timeout(EXIT_TIMEOUT):
            await client.aclose()
