"""Event loops for tests: a run with a deadline, a loop on a virtual clock, a per-turn hook."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test scenario on a fresh event loop, failing it after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


class JumpingSelector(selectors.DefaultSelector):
    """A selector that never waits: when no I/O is ready it moves its loop's clock instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """The I/O ready now; with none, jump the clock to the next timer."""
        ready = super().select(0)
        if not ready and timeout:
            self.loop.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: minutes of backoff pass at once, each delay exact."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(JumpingSelector(self))

    def time(self) -> float:
        """The virtual time."""
        return self.now


class EveryTurn:
    """Calls `action` once per turn of the running event loop until closed, never sleeping.

    What a test sees from it happens between two callbacks of the loop: it observes (or
    nudges) a long task exactly where that task lets the loop run.
    """

    def __init__(self, action: Callable[[], None]) -> None:
        self.turns = 0
        self._action = action
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self.turns += 1
        self._action()
        self._handle = self._loop.call_soon(self._turn)

    def close(self) -> None:
        """Stop calling the action."""
        self._handle.cancel()
