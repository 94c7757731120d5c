"""to_the_end: a write whose caller is cancelled still ends, and writes_finished waits for it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from app.persistence.database import to_the_end, writes_finished

pytestmark = pytest.mark.anyio


async def test_a_write_whose_caller_is_cancelled_ends_and_writes_finished_waits_for_it() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    done: list[str] = []

    async def write() -> str:
        started.set()
        await gate.wait()
        done.append("written")
        return "written"

    async with asyncio.timeout(5.0):
        caller = asyncio.create_task(to_the_end(write()))
        await started.wait()
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        assert done == []
        waiting = asyncio.create_task(writes_finished())
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        await waiting
    assert done == ["written"]


async def test_a_failed_write_raises_to_the_caller_that_awaited_it() -> None:
    async def failing() -> None:
        raise RuntimeError("the database went away")

    async with asyncio.timeout(5.0):
        with pytest.raises(RuntimeError, match="went away"):
            await to_the_end(failing())
        await writes_finished()
