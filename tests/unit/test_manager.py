"""The manager's flush loop on a virtual clock: backoff to the cap, one log line per outage."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.config import Settings
from app.manager import MAX_FLUSH_BACKOFF, SessionManager
from app.metrics import Metrics
from app.protocol import TokenAddMsg, decode_client_message
from tests.support.fakes import FakeMember, RecordingStore
from tests.support.harness import token_payload
from tests.support.loops import VirtualClockLoop

pytestmark = pytest.mark.anyio


def test_a_failing_flush_loop_backs_off_to_the_cap_and_logs_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        settings = Settings(env="test")
        interval = settings.flush_interval
        store = RecordingStore()
        metrics = Metrics()
        manager = SessionManager(settings, store, metrics)
        gm = FakeMember("gm1", "gm")
        session, _ = await manager.join("c1", gm)
        clock = asyncio.get_running_loop().time

        async def edit(x: int) -> None:
            message = {"type": "token.add", "payload": token_payload(f"t{x}", x=x)}
            decoded = decode_client_message(json.dumps(message))
            assert isinstance(decoded, TokenAddMsg)
            await session.submit(gm, decoded)

        async def gaps(count: int) -> list[float]:
            """The delays before each of the next `count` write attempts."""
            found, last = [], clock()
            for _ in range(count):
                async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
                    attempt = await store.attempts.get()
                found.append(attempt - last)
                last = attempt
            return found

        def logged(message: str) -> int:
            return sum(1 for r in caplog.records if r.getMessage().startswith(message))

        await edit(1)
        store.outage = True
        manager.start()
        backoff = [min(interval * 2**n, MAX_FLUSH_BACKOFF) for n in range(8)]
        assert await gaps(8) == pytest.approx(backoff)
        assert session.dirty
        assert metrics.registry.get_sample_value("vtt_flush_failures_total") == 8
        assert logged("flush failed") == 1
        assert logged("flush recovered") == 0

        store.outage = False
        assert await gaps(1) == pytest.approx([MAX_FLUSH_BACKOFF])
        assert not session.dirty
        assert store.rows.keys() == {"c1"}
        assert gm.received[-1]["type"] == "state.saved"
        assert logged("flush recovered") == 1

        await edit(2)
        assert await gaps(1) == pytest.approx([interval]), "a success resets the backoff"
        store.outage = True
        await edit(3)
        assert await gaps(3) == pytest.approx([interval, interval * 2, interval * 4])
        assert logged("flush failed") == 2, "a second outage is logged once more"

        store.outage = False
        assert await manager.close(clock() + MAX_FLUSH_BACKOFF, clock=clock)
        assert not session.dirty
        assert logged("flush failed") == 2
        assert logged("flush recovered") == 2

    loop = VirtualClockLoop()
    try:
        with caplog.at_level("INFO", logger="vtt.manager"):
            loop.run_until_complete(asyncio.wait_for(scenario(), timeout=3600))
    finally:
        loop.close()


def test_a_session_waiting_for_eviction_during_an_outage_adds_no_writes_to_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        settings = Settings(env="test", evict_grace=0.0)
        interval = settings.flush_interval
        store = RecordingStore()
        manager = SessionManager(settings, store, Metrics())
        gm = FakeMember("gm1", "gm")
        session, _ = await manager.join("c1", gm)
        clock = asyncio.get_running_loop().time
        message = {"type": "token.add", "payload": token_payload("t1")}
        decoded = decode_client_message(json.dumps(message))
        assert isinstance(decoded, TokenAddMsg)
        await session.submit(gm, decoded)

        store.outage = True
        manager.start()
        async with asyncio.timeout(interval * 2):
            first = await store.attempts.get()
        assert first == pytest.approx(interval)
        await session.leave(gm)
        manager.released(session)

        attempts = []
        for _ in range(5):
            async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
                attempts.append(await store.attempts.get())
        gaps = [b - a for a, b in zip([first, *attempts], attempts, strict=False)]
        assert gaps == pytest.approx([interval * 2, interval * 4, interval * 8, 60.0, 60.0])
        assert manager.sessions.keys() == {"c1"}, "unsaved: kept in memory"

        evictor = manager._evicting["c1"]
        store.outage = False
        async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
            await store.attempts.get()
            await evictor
        assert "c1" not in manager.sessions
        assert store.rows.keys() == {"c1"}
        assert session.closed
        assert await manager.close(clock() + 1.0, clock=clock)

    loop = VirtualClockLoop()
    try:
        with caplog.at_level("INFO", logger="vtt.manager"):
            loop.run_until_complete(asyncio.wait_for(scenario(), timeout=3600))
    finally:
        loop.close()
