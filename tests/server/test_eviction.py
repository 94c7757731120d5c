"""Idle sessions against a real server: flushed and evicted after the grace, kept within it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import RunningServer, serve, settings_for, token_payload
from tests.support.poll import poll

pytestmark = pytest.mark.anyio


async def test_an_idle_session_is_flushed_and_evicted_after_the_grace_period(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, flush_interval=3600, evict_grace=0.2)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1", x=5))
        await gm.close()
        manager = server.services.manager
        await poll(lambda: "c1" not in manager.sessions, 10, "the session to be evicted")
        back = await server.join("c1", "gm1", "gm")
        assert back.sync["payload"]["tokens"]["t1"]["x"] == 5
        await back.close()


async def test_a_client_that_returns_within_the_grace_period_keeps_the_live_session(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm1", "gm")
    epoch = gm.sync["payload"]["epoch"]
    await gm.close()
    again = await server.join("c1", "gm1", "gm")
    assert again.sync["payload"]["epoch"] == epoch
    await again.close()
