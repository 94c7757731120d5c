"""`make run` in a fresh clone: the newcomer's path from `git clone` to two clients at one table.

The README promises that a clone on a machine with Python 3.11+ and make is enough: `make
run` installs everything, starts the server on the embedded defaults (SQLite + dev auth)
and prints how to mint a token and connect. This test clones the repository's committed
HEAD into tmp_path and does exactly what the banner says, through make and the clone's
own virtualenv. uv's cache keeps the install to seconds; a cold cache needs the network.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from app.config import Settings
from tests.support.harness import TIMEOUT, Peer, token_payload
from tests.support.process import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
# The first `make run` of a clone creates .tools and .venv before the server starts.
STARTUP_TIMEOUT = 180.0
COMMAND_TIMEOUT = 60.0
# Settings the server or make would read from a developer's shell; a newcomer has none.
UNSET = {
    "DATABASE_URL",
    "FLY_APP_NAME",
    "LOG_LEVEL",
    "FORWARDED_ALLOW_IPS",
    "PYTHONPATH",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
}


def newcomer_environ(port: int) -> dict[str, str]:
    """This process's environment without server settings, serving on `port` locally."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VTT_", "CLERK_")) and key not in UNSET
    }
    return {**kept, "PORT": str(port), "HOST": "127.0.0.1"}


def require(tool: str) -> None:
    """Skip when `tool` is not on PATH (fail instead with CI=true)."""
    if shutil.which(tool) is None:
        message = f"`{tool}` is not on PATH: `make run` from a fresh clone cannot be tried"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def run(argv: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    """Run a command to its end; it must succeed. Its standard output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await asyncio.wait_for(proc.wait(), TIMEOUT)
        raise AssertionError(f"{shlex.join(argv)} did not finish in {COMMAND_TIMEOUT} s") from None
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{err.decode()}"
    return out.decode()


async def mint(command: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Run a mint command as printed; the token is the last line it prints (make echoes first)."""
    token = (await run(shlex.split(command), cwd, env)).splitlines()[-1]
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token), token
    return token


@dataclass
class Console:
    """Everything a process prints, read line by line as it comes."""

    stream: asyncio.StreamReader
    lines: list[str] = field(default_factory=list)
    fresh: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)

    async def read(self) -> None:
        """Read until the end of the output (run as a task, so the pipe never fills)."""
        while raw := await self.stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            self.fresh.put_nowait(line)
        self.fresh.put_nowait(None)

    async def wait_for(self, match: Callable[[str], bool], what: str, timeout: float) -> str:
        """The next line that matches; fails with the output so far when it does not come."""
        try:
            async with asyncio.timeout(timeout):
                while (line := await self.fresh.get()) is not None:
                    if match(line):
                        return line
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s:\n{self.text}") from None
        raise AssertionError(f"the output ended before {what}:\n{self.text}")

    @property
    def text(self) -> str:
        """The output so far."""
        return "\n".join(self.lines)


@dataclass
class MakeRun:
    """`make run` in its own process group, and what it printed."""

    proc: asyncio.subprocess.Process
    console: Console

    def server(self) -> psutil.Process:
        """The `python -m app` process make started."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        servers = [child for child in children if "app" in child.cmdline()]
        assert len(servers) == 1, [child.cmdline() for child in children]
        return servers[0]


def log_event(text: str) -> Callable[[str], bool]:
    """Matches a JSON log line whose event starts with `text`."""
    return lambda line: line.startswith("{") and json.loads(line)["event"].startswith(text)


@asynccontextmanager
async def make_run(clone: Path, env: Mapping[str, str]) -> AsyncIterator[MakeRun]:
    """Start `make run`; on the way out, kill its group if the test left it running."""
    proc = await asyncio.create_subprocess_exec(
        "make",
        "run",
        cwd=clone,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    console = Console(proc.stdout)
    reader = asyncio.create_task(console.read())
    try:
        yield MakeRun(proc, console)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), TIMEOUT)
        await asyncio.wait_for(reader, TIMEOUT)


def mapped_uvloop(pid: int) -> list[str]:
    """The paths of the uvloop extensions mapped into process `pid`."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted(set(re.findall(r"\S+/uvloop/loop\.\S*\.so$", maps, re.M)))


@pytest.mark.skipif(sys.platform != "linux", reason="reads the server's /proc/<pid>/maps")
@pytest.mark.timeout(STARTUP_TIMEOUT + 120)
async def test_make_run_in_a_fresh_clone_serves_the_printed_url_to_two_clients_and_saves_on_exit(
    tmp_path: Path,
) -> None:
    """Slow (a clone and an install): the README's quick start, followed to the letter."""
    require("git")
    require("make")
    port = free_port()
    env = newcomer_environ(port)
    clone = tmp_path / "clone"
    await run(["git", "clone", "--quiet", str(ROOT), str(clone)], tmp_path, env)

    async with make_run(clone, env) as make:
        await make.console.wait_for(
            log_event(f"Uvicorn running on http://127.0.0.1:{port}"),
            "server listening",
            STARTUP_TIMEOUT,
        )
        banner = make.console.text
        gm_command = re.search(r"mint a token:\s+(make token ARGS='[^']*')$", banner, re.M)
        player_command = re.search(r"^\s+or\s+(\S+ -m app\.dev\.devtoken .*)$", banner, re.M)
        connect = re.search(r"connect:\s+(ws://\S+)$", banner, re.M)
        assert gm_command is not None, banner
        assert gm_command[1] == "make token ARGS='--user alice --gm --campaign demo'"
        assert player_command is not None, banner
        assert player_command[1].endswith(" --user bob --campaign demo")
        assert connect is not None, banner
        assert connect[1] == f"ws://127.0.0.1:{port}/ws?campaign=demo&token=<token>"

        server = make.server()
        assert Path(server.cwd()) == clone.resolve()
        uvloop = mapped_uvloop(server.pid)
        assert uvloop, "the server has no uvloop extension mapped: it runs on another loop"
        assert all(path.startswith(f"{clone.resolve()}/.venv/") for path in uvloop), uvloop

        gm_token = await mint(gm_command[1], clone, env)
        player_token = await mint(player_command[1], clone, env)
        gm = await Peer.greeted(connect[1].replace("<token>", gm_token))
        player = await Peer.greeted(connect[1].replace("<token>", player_token))

        await gm.send("token.add", token_payload("t1", x=1, y=2))
        added = await player.until(lambda f: f["type"] == "token.add")
        assert (added["user_id"], added["payload"]["token_id"]) == ("alice", "t1")
        await player.send("token.move", {"token_id": "t1", "x": 7, "y": 9})
        moved = await gm.until(lambda f: f["type"] == "token.move")
        assert moved["user_id"] == "bob"
        assert moved["payload"] == {"token_id": "t1", "x": 7, "y": 9}
        await gm.close()
        await player.close()

        stopping = time.monotonic()
        os.killpg(make.proc.pid, signal.SIGTERM)
        await make.console.wait_for(
            log_event("Application shutdown complete."), "a clean shutdown", TIMEOUT * 3
        )
        await asyncio.wait_for(make.proc.wait(), TIMEOUT)
        await asyncio.wait_for(asyncio.to_thread(server.wait, TIMEOUT), TIMEOUT * 2)
        assert time.monotonic() - stopping < TIMEOUT * 3
        # The connections' URLs carried the tokens; the server's log redacts them.
        assert gm_token not in make.console.text
        assert player_token not in make.console.text

    database = clone / Settings().sqlite_path
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT state FROM vtt_sessions WHERE campaign_id = ?", ("demo",)
        ).fetchall()
    assert len(rows) == 1, rows
    saved = json.loads(rows[0][0])["tokens"]["t1"]
    assert (saved["x"], saved["y"]) == (7, 9)
