"""A TCP proxy that tests control, to take a database link down and bring it back."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Literal

Mode = Literal["open", "cut", "stalled"]


class TcpProxy:
    """Forward 127.0.0.1:<ephemeral port> to a target; cut(), stall() and restore() the link.

    cut()     resets every connection and every new one: the peer is gone (fails fast)
    stall()   accepts and holds connections but forwards nothing: a black hole (times out)
    restore() forwards again; held bytes flow on, cut connections stay gone
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "open"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        """How many client connections the proxy holds right now."""
        return len(self._links)

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 (then see `port`)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Reset every open connection and every new one until restore()."""
        self.mode = "cut"
        self._drop_all()

    def stall(self) -> None:
        """Stop forwarding: connections stay open and new ones are accepted, but nothing flows."""
        self.mode = "stalled"
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again."""
        self.mode = "open"
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._links)
        self._drop_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _drop_all(self) -> None:
        # Aborting (not cancelling) ends each handler: its pipes see the reset and return.
        for writers in self._links.values():
            for writer in writers:
                writer.transport.abort()
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links[task] = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._links[task].append(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except OSError:
            pass
        finally:
            for each in self._links.pop(task):
                each.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        # One side ended: end the other, as a real peer's close would.
        writer.transport.abort()
