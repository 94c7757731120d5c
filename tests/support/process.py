"""The server as a separate process, started the way `make run` starts it, for restart tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from app.auth import DevKeys
from app.model import Role
from tests.support.poll import poll

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`python -m app` in a subprocess, with its output captured to a file."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "VTT_ENV": "test",
            "VTT_DEV_KEY_DIR": str(workdir / "keys"),
            "VTT_SQLITE_PATH": str(workdir / "vtt.db"),
            "LOG_LEVEL": "info",
            **(env or {}),
        }
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def keys(self) -> DevKeys:
        """The dev keys the server verifies against."""
        return DevKeys(self.env["VTT_DEV_KEY_DIR"])

    def token(self, user: str, role: Role = "player", **kwargs: Any) -> str:
        """A dev token for `user`."""
        return self.keys.mint(user, role, **kwargs)

    def ws_url(self, campaign: str, token: str, **query: Any) -> str:
        """The /ws URL for `campaign`."""
        extra = "".join(f"&{key}={value}" for key, value in query.items())
        return f"ws://127.0.0.1:{self.port}/ws?campaign={campaign}&token={token}{extra}"

    async def start(self) -> None:
        """Start the process and wait until /health answers."""
        self.keys  # noqa: B018 - create the key pair before the server reads it
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app",
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        proc = self.proc
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def healthy() -> bool:
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited during startup:\n{self.output()}")
                try:
                    response = await client.get(f"http://127.0.0.1:{self.port}/health")
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            try:
                await poll(healthy, STARTUP_TIMEOUT, "/health to answer", interval=0.05)
            except AssertionError as timed_out:
                raise TimeoutError(f"{timed_out}; the server printed:\n{self.output()}") from None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> float:
        """Send `sig` and wait for the exit; return how long the exit took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            raise TimeoutError(
                f"server did not exit within {timeout} s:\n{self.output()}"
            ) from None
        return time.monotonic() - started

    def kill(self) -> None:
        """Kill the process if it still runs (its exit is reaped by the event loop)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def output(self) -> str:
        """Everything the process printed."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")
