"""A WebSocket client that records every frame as it arrives, across reconnects.

Unlike `harness.Peer`, which reads when the test asks, a `Recorder` reads all the time in a
task of its own: it is the witness of a test that kills or pauses servers, where what
arrived, and when, matters even while the test is busy elsewhere. It reconnects with
`since` (the highest seq it saw) and `epoch` (from the last state.sync or state.resume), so
a node that still holds the missed events answers with state.resume.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10.0


@dataclass(frozen=True)
class Arrival:
    """One frame received: on which connection (0 for the first), when (monotonic), what."""

    connection: int
    at: float
    frame: dict[str, Any]

    @property
    def type(self) -> str:
        """The frame's type."""
        kind: str = self.frame["type"]
        return kind


class Recorder:
    """Connect with `await Recorder.open(url)`; every frame lands in `arrivals`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrivals: list[Arrival] = []
        self.seq: int | None = None
        self.epoch: str | None = None
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._cursors: dict[str, int] = {}

    @classmethod
    async def open(cls, url: str, timeout: float = TIMEOUT) -> Recorder:
        """Connect to `url` and start recording."""
        recorder = cls(url)
        await recorder._connect(url, timeout)
        return recorder

    @property
    def frames(self) -> list[dict[str, Any]]:
        """Every frame received, in order."""
        return [arrival.frame for arrival in self.arrivals]

    @property
    def close_code(self) -> int | None:
        """The current connection's close code once it closed (1006 when it dropped), else None."""
        if self._ws is None or self._reader is None or not self._reader.done():
            return None
        return self._ws.close_code

    def seqs(self) -> list[int]:
        """The seq of every sequenced frame received, in arrival order."""
        return [a.frame["seq"] for a in self.arrivals if isinstance(a.frame.get("seq"), int)]

    async def send(self, kind: str, payload: Any = None, timeout: float = TIMEOUT) -> None:
        """Send one message of type `kind`."""
        assert self._ws is not None
        message: dict[str, Any] = {"type": kind}
        if payload is not None:
            message["payload"] = payload
        async with asyncio.timeout(timeout):
            await self._ws.send(json.dumps(message))

    async def next(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of type `kind` that no earlier `next(kind)` returned (waiting for it).

        Each type has its own cursor: waiting for one type never passes over another's frames.
        """
        start = self._cursors.get(kind, 0)

        def found() -> int | None:
            for index in range(start, len(self.arrivals)):
                if self.arrivals[index].type == kind:
                    return index
            return None

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None or self._ended())
        except TimeoutError:
            raise AssertionError(f"no {kind} frame within {timeout} s") from None
        index = found()
        if index is None:
            raise AssertionError(f"the connection closed ({self.close_code}) before a {kind}")
        self._cursors[kind] = index + 1
        return self.arrivals[index].frame

    async def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait until the current connection has closed; its close code."""
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)
        return self.close_code

    def resume_url(self, url: str | None = None) -> str:
        """`url` (by default the last one) with `since` and `epoch` to resume from, when known."""
        base = url or self.url
        if self.seq is None or self.epoch is None:
            return base
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}{urlencode({'since': self.seq, 'epoch': self.epoch})}"

    async def reconnect(self, url: str | None = None, timeout: float = TIMEOUT) -> None:
        """Close the current connection if open, then resume at `url` (default: the last)."""
        await self.close(timeout)
        await self._connect(self.resume_url(url), timeout, url or self.url)

    async def close(self, timeout: float = TIMEOUT) -> None:
        """Close the current connection and wait until the reader stopped."""
        if self._ws is None or self._reader is None:
            return
        async with asyncio.timeout(timeout):
            await self._ws.close()
            await asyncio.shield(self._reader)

    def _ended(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def _connect(self, url: str, timeout: float, base: str | None = None) -> None:
        async with asyncio.timeout(timeout):
            # An unbounded queue and frame size: the reader drains it all the time anyway.
            self._ws = await connect(url, max_size=None, max_queue=None, open_timeout=timeout)
        self.url = base or url
        self._reader = asyncio.create_task(self._read(self._ws, self.connections))
        self.connections += 1

    async def _read(self, ws: ClientConnection, connection: int) -> None:
        try:
            async for raw in ws:
                frame: dict[str, Any] = json.loads(raw)
                self._note(frame)
                async with self._changed:
                    self.arrivals.append(Arrival(connection, time.monotonic(), frame))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        async with self._changed:
            self._changed.notify_all()

    def _note(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        if isinstance(seq, int) and (self.seq is None or seq > self.seq):
            self.seq = seq
        if frame["type"] in {"state.sync", "state.resume"}:
            self.epoch = frame["payload"]["epoch"]
