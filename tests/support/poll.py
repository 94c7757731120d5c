"""How a test waits for something to happen: it polls a condition, it never sleeps a guess."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

INTERVAL = 0.01


async def poll(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = INTERVAL,
) -> None:
    """Wait until `check()` is true, awaiting it when it is async; fail after `timeout` seconds.

    The timeout bounds the whole wait, an awaited check included; the failure names `what`.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
