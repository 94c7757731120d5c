"""The fly-replay stand-in: it routes, replays on `fly-replay`, falls back, and splices upgrades."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request

from tests.support.flyproxy import FlyProxy, Route
from tests.support.process import free_port

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
REPLAY_TO_B = "HTTP/1.1 307 Temporary Redirect\r\nfly-replay: instance=b;state=s1\r\n"
OK = "HTTP/1.1 200 OK\r\n"


class HttpNode:
    """A trivial HTTP server: `answer(request head)` gives the status line and headers."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.requests: list[str] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        self.requests.append(head)
        body = head.encode()
        writer.write(f"{self.answer(head)}content-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()


@asynccontextmanager
async def http_node(answer: Callable[[str], str]) -> AsyncIterator[HttpNode]:
    node = HttpNode(answer)
    server = await asyncio.start_server(node.handle, "127.0.0.1", 0)
    node.port = server.sockets[0].getsockname()[1]
    async with server:
        yield node


async def get(proxy: FlyProxy, path: str = "/health") -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.get(proxy.url(path, "http"))


def replayed_head(head: str) -> str:
    """The fly-replay-src header of a request head, or '' without one."""
    for line in head.split("\r\n"):
        if line.lower().startswith("fly-replay-src:"):
            return line.split(":", 1)[1].strip()
    return ""


async def test_a_replay_resends_the_request_to_the_named_instance() -> None:
    async with (
        http_node(lambda head: REPLAY_TO_B) as a,
        http_node(lambda head: OK) as b,
        FlyProxy({"a": a.port, "b": b.port}) as proxy,
    ):
        proxy.forced = "a"
        response = await get(proxy, "/ws?campaign=c1")
        assert response.status_code == 200
        assert b.requests[0].startswith("GET /ws?campaign=c1 HTTP/1.1\r\n")
        assert replayed_head(b.requests[0]) == "instance=a;state=s1"
        assert replayed_head(a.requests[0]) == ""
        assert proxy.log == [Route("a", "b")]


async def test_without_a_replay_the_response_goes_through_and_picks_rotate() -> None:
    async with (
        http_node(lambda head: OK) as a,
        http_node(lambda head: OK) as b,
        FlyProxy({"a": a.port, "b": b.port}) as proxy,
    ):
        first, second, third = [await get(proxy) for _ in range(3)]
        assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
        assert first.text.startswith("GET /health HTTP/1.1\r\n")
        assert proxy.log == [Route("a"), Route("b"), Route("a")]
        assert (len(a.requests), len(b.requests)) == (2, 1)


async def test_an_unreachable_pick_goes_to_the_next_node() -> None:
    async with http_node(lambda head: OK) as b, FlyProxy({"a": free_port(), "b": b.port}) as proxy:
        proxy.forced = "a"
        assert (await get(proxy)).status_code == 200
        assert proxy.log == [Route("b")]


async def test_an_unreachable_replay_target_falls_back_to_self_when_asked() -> None:
    def answer(head: str) -> str:
        if "fly-replay-failed" in head:
            return OK
        replay = "instance=b;timeout=300ms;fallback=force_self"
        return f"HTTP/1.1 307 Temporary Redirect\r\nfly-replay: {replay}\r\n"

    async with http_node(answer) as a, FlyProxy({"a": a.port, "b": free_port()}) as proxy:
        proxy.forced = "a"
        assert (await get(proxy)).status_code == 200
        assert "fly-replay-failed: unreachable" in a.requests[1]
        assert proxy.log == [Route("a", "b", failed=True)]


async def test_an_unreachable_replay_target_is_a_502_without_fallback() -> None:
    async with http_node(lambda head: REPLAY_TO_B) as a, FlyProxy({"a": a.port}) as proxy:
        assert (await get(proxy)).status_code == 502
        assert proxy.log == [Route("a", "b", failed=True)]


async def test_a_websocket_upgrade_is_replayed_and_spliced_both_ways() -> None:
    seen: list[str | None] = []

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers.get("fly-replay-src"))

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(f"echo {message!s}")

    async with (
        http_node(lambda head: REPLAY_TO_B) as a,
        serve(echo, "127.0.0.1", 0, process_request=record) as b,
    ):
        b_port = next(iter(b.sockets)).getsockname()[1]
        async with FlyProxy({"a": a.port, "b": b_port}) as proxy:
            proxy.forced = "a"
            async with asyncio.timeout(TIMEOUT), connect(proxy.url("/ws?campaign=c1")) as ws:
                await ws.send("one")
                assert await ws.recv() == "echo one"
                await ws.send("two")
                assert await ws.recv() == "echo two"
            assert seen == ["instance=a;state=s1"]
            assert proxy.log == [Route("a", "b")]
