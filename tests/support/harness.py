"""A real server for tests: uvicorn on an ephemeral port, and WebSocket peers that talk to it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.auth import DevKeys
from app.config import Settings
from app.errors import CloseConnection
from app.main import create_app
from app.model import Role
from app.services import Services
from app.transport.serve import Server, uvicorn_options
from tests.support.poll import poll

TIMEOUT = 10.0
# Frames that come whenever someone else arrives or leaves: a Peer passes over them (they are
# in `everything` only) unless it was opened to see them.
PRESENCE = frozenset({"presence.sync", "presence.join", "presence.leave"})


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test server: its own SQLite file and dev keys under `tmp_path`."""
    base = Settings(
        env="test",
        sqlite_path=str(tmp_path / "vtt.db"),
        dev_key_dir=str(tmp_path / "keys"),
        log_level="warning",
    )
    return replace(base, **overrides)


@dataclass
class RunningServer:
    """A server started by `serve`: its address, settings, services and dev keys."""

    port: int
    settings: Settings
    server: uvicorn.Server
    keys: DevKeys

    @property
    def services(self) -> Services:
        """The services the app's lifespan built."""
        services: Services = self.server.lifespan.state["services"]
        return services

    @property
    def http(self) -> str:
        """The server's base HTTP URL."""
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, campaign: str, token: str | None = None, **query: Any) -> str:
        """The /ws URL for `campaign` with `token` and any extra query parameters."""
        params = {"campaign": campaign, **({"token": token} if token else {}), **query}
        joined = "&".join(f"{key}={value}" for key, value in params.items())
        return f"ws://127.0.0.1:{self.port}/ws?{joined}"

    def token(self, user: str, role: Role = "player", **kwargs: Any) -> str:
        """A dev token for `user`."""
        return self.keys.mint(user, role, **kwargs)

    async def join(
        self,
        campaign: str,
        user: str,
        role: Role = "player",
        *,
        skip: frozenset[str] = PRESENCE,
        **query: Any,
    ) -> Peer:
        """Connect `user` to `campaign` and read the greeting (see `Peer.greeted`)."""
        return await Peer.greeted(self.ws_url(campaign, self.token(user, role), **query), skip)


@asynccontextmanager
async def serve(settings: Settings, *, freeze_gc: bool = False) -> AsyncIterator[RunningServer]:
    """Run the app under uvicorn in this event loop on an ephemeral port."""
    # IPPROTO_TCP, so that the loop turns Nagle off on accepted sockets as uvloop does.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = uvicorn_options(settings)
    options.update(loop="asyncio", log_config=None, timeout_graceful_shutdown=5)
    config = uvicorn.Config(create_app(settings), **options)
    server = Server(config, freeze_gc=freeze_gc)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError("server exited during startup")
        return server.started

    try:
        await poll(started, TIMEOUT, "the server to start")
        yield RunningServer(port, settings, server, DevKeys(settings.dev_key_dir))
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT * 3):
            await task
        sock.close()


class Peer:
    """A WebSocket client that keeps every frame it received, in order.

    Frames whose type is in `skip` are passed over: `recv` (and so `expect`, `until`, ...)
    never returns them, and `received` and `raw` leave them out; `everything` has them all.
    """

    def __init__(self, ws: ClientConnection, skip: frozenset[str] = PRESENCE) -> None:
        self.ws = ws
        self.skip = skip
        self.received: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.everything: list[dict[str, Any]] = []
        self.sync: dict[str, Any] = {}
        self.history: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Peer:
        """Connect to `url` (its `skip` can be set before the first `recv`)."""
        async with asyncio.timeout(TIMEOUT):
            # By default an unbounded queue: a peer that reads little must still see the close.
            options = {"max_size": None, "max_queue": None, "open_timeout": TIMEOUT, **kwargs}
            ws = await connect(url, **options)
        return cls(ws)

    @classmethod
    async def greeted(cls, url: str, skip: frozenset[str] = PRESENCE) -> Peer:
        """Connect to `url` and read a full join's greeting: state.sync (kept in `sync`),
        map.list, chat.history (kept in `history`)."""
        peer = await cls.open(url)
        peer.skip = skip
        peer.sync = await peer.expect("state.sync")
        await peer.expect("map.list")
        peer.history = await peer.expect("chat.history")
        return peer

    async def send(self, kind: str, payload: Any = None, **envelope: Any) -> None:
        """Send one message."""
        message: dict[str, Any] = {"type": kind, **envelope}
        if payload is not None:
            message["payload"] = payload
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send one frame as is."""
        async with asyncio.timeout(TIMEOUT):
            await self.ws.send(data)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame not skipped, decoded."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.ws.recv()
                assert isinstance(raw, str), "the server sends text frames only"
                frame = self._keep(raw)
                if frame is not None:
                    return frame

    def _keep(self, raw: str) -> dict[str, Any] | None:
        """Record a frame; it, unless it is skipped."""
        frame: dict[str, Any] = json.loads(raw)
        self.everything.append(frame)
        if frame["type"] in self.skip:
            return None
        self.raw.append(raw)
        self.received.append(frame)
        return frame

    async def expect(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be of type `kind`."""
        frame = await self.recv(timeout)
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def until(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """Read frames until one matches."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if match(frame):
                    return frame

    async def error(self, code: str) -> dict[str, Any]:
        """The next frame, which must be an error with `code`."""
        frame = await self.expect("error")
        assert frame["payload"]["code"] == code, frame
        return frame

    async def request(self, kind: str, payload: Any = None) -> dict[str, Any]:
        """Send a message, then read until the server answers it (broadcast echo or error)."""
        await self.send(kind, payload)
        return await self.until(lambda f: f["type"] in {kind, "error"})

    async def roundtrip(self) -> None:
        """Ping and wait for the pong: everything sent before has been handled."""
        await self.send("ping")
        await self.until(lambda f: f["type"] == "pong")

    async def closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Wait for the server to close; return (code, reason)."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    self._keep(str(await self.ws.recv()))
            except ConnectionClosed as closed:
                frame = closed.rcvd
                return (frame.code, frame.reason) if frame else (None, "")

    async def close(self) -> None:
        """Close from our side."""
        async with asyncio.timeout(TIMEOUT):
            await self.ws.close()


async def refused(awaitable: Awaitable[Any]) -> CloseConnection:
    """The CloseConnection `awaitable` raises (it must raise one)."""
    with pytest.raises(CloseConnection) as caught:
        async with asyncio.timeout(TIMEOUT):
            await awaitable
    return caught.value


def token_payload(token_id: str, **fields: Any) -> dict[str, Any]:
    """A complete token.add payload with sensible defaults."""
    base: dict[str, Any] = {
        "token_id": token_id,
        "name": f"Token {token_id}",
        "x": 0,
        "y": 0,
        "width": 1,
        "height": 1,
        "visible": True,
    }
    base.update(fields)
    return base


def map_payload(map_id: str, **fields: Any) -> dict[str, Any]:
    """A complete map.set payload with sensible defaults."""
    base: dict[str, Any] = {
        "map_id": map_id,
        "image_url": f"https://cdn.example/maps/{map_id}.webp",
        "grid_size": 64,
        "width": 1280,
        "height": 960,
    }
    base.update(fields)
    return base


def without(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """A copy of `mapping` without `keys`."""
    return {key: value for key, value in mapping.items() if key not in keys}


async def role_of(peer: Peer, user: str) -> str:
    """'gm' when the server lets `user` (on `peer`) do a GM-only thing, else 'player'."""
    await peer.send("scene.darkness", {"darkness_level": 0.5})
    reply = await peer.until(
        lambda f: (
            f["type"] == "error" or (f["type"] == "scene.darkness" and f.get("user_id") == user)
        )
    )
    if reply["type"] == "error":
        assert reply["payload"]["code"] == "forbidden", reply
        return "player"
    return "gm"
