"""A stand-in for Fly's proxy in front of the nodes of a cluster, for fly-replay routing.

Each HTTP/1.1 connection goes to the node `pick()` names (round-robin unless a test forces
one; when that node is unreachable, the next one that is). When that node's response carries
`fly-replay: instance=<id>;...`, the proxy drops it and sends the same request to node `<id>`
with `fly-replay-src: instance=<origin>[;state=..]`; if `<id>` cannot be reached within the
replay's `timeout` (default 5 s), `fallback=force_self` sends it back to the origin with
`fly-replay-failed`, and otherwise the client gets a 502. Then bytes flow both ways, so a
WebSocket upgrade works through it. One request per connection; a request body must come
with a Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

REPLAY_TIMEOUT = 5.0
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass
class Route:
    """Where one connection went: the node picked, the node replayed to (None: no replay)
    and whether the replay failed (and so fell back to the origin, or got a 502)."""

    node: str
    replayed_to: str | None = None
    failed: bool = False


class FlyProxy:
    """Listen on a free port of 127.0.0.1 and route to `nodes` (name -> port)."""

    def __init__(self, nodes: Mapping[str, int], pick: Callable[[], str] | None = None) -> None:
        self.nodes = dict(nodes)
        self.port = 0
        self.log: list[Route] = []
        self.forced: str | None = None
        names = itertools.cycle(list(self.nodes))
        self._pick = pick or (lambda: next(names))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FlyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        """The proxy's URL for `path` (a WebSocket URL unless `scheme` says otherwise)."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def pick(self) -> str:
        """The node the next connection goes to: the forced one, else the picker's choice."""
        return self.forced or self._pick()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        route = Route(self.pick())
        self.log.append(route)
        links = [client_w]
        try:
            request = await client_r.readuntil(b"\r\n\r\n")
            request += await client_r.readexactly(int(_headers(request).get("content-length", 0)))
            route.node, (node_r, node_w) = await self._send_any(route.node, request)
            links.append(node_w)
            response = await node_r.readuntil(b"\r\n\r\n")
            replay = _fields(_headers(response).get("fly-replay", ""))
            if "instance" in replay:
                node_w.transport.abort()
                route.replayed_to = replay["instance"]
                head, end = request.split(b"\r\n", 1)
                source = f"instance={route.node}" + (
                    f";state={replay['state']}" if "state" in replay else ""
                )
                replayed = head + f"\r\nfly-replay-src: {source}\r\n".encode() + end
                try:
                    timeout = _seconds(replay.get("timeout", f"{REPLAY_TIMEOUT}s"))
                    node_r, node_w = await self._send(route.replayed_to, replayed, timeout)
                except (OSError, TimeoutError, KeyError):
                    route.failed = True
                    if replay.get("fallback") != "force_self":
                        await _refuse(client_w)
                        return
                    failed = head + b"\r\nfly-replay-failed: unreachable\r\n" + end
                    node_r, node_w = await self._send(route.node, failed, REPLAY_TIMEOUT)
                links.append(node_w)
            else:
                client_w.write(response)
            await asyncio.gather(_pipe(client_r, node_w), _pipe(node_r, client_w))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await _refuse(client_w)
        finally:
            for link in links:
                link.transport.abort()
            self._tasks.discard(task)

    async def _send_any(
        self, first: str, request: bytes
    ) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Send to `first`, or when it is unreachable to the next node that is, as Fly does."""
        names = list(self.nodes)
        start = names.index(first)
        for name in names[start:] + names[:start]:
            with contextlib.suppress(OSError, TimeoutError):
                return name, await self._send(name, request, REPLAY_TIMEOUT)
        raise OSError("no node is reachable")

    async def _send(
        self, node: str, request: bytes, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.nodes[node])
        writer.write(request)
        return reader, writer


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


def _fields(value: str) -> dict[str, str]:
    pairs = (part.split("=", 1) for part in value.split(";") if "=" in part)
    return {name.strip(): field.strip() for name, field in pairs}


def _seconds(duration: str) -> float:
    """A Fly duration ("800ms", "2s") in seconds."""
    if duration.endswith("ms"):
        return float(duration.removesuffix("ms")) / 1000
    return float(duration.removesuffix("s"))


async def _refuse(writer: asyncio.StreamWriter) -> None:
    """Answer 502, as Fly does when no machine can take the request."""
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(BAD_GATEWAY)
        async with asyncio.timeout(1.0):
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            if writer.transport.is_closing():
                break
            writer.write(data)
            await writer.drain()
    # One side ended: end the other, as a real peer's close would.
    writer.transport.abort()
