"""Database outages against a real server: edits made are kept, a refused join changes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.persistence.store import Saved
from tests.support.harness import Peer, serve, settings_for, token_payload
from tests.support.sql import FIXTURE, put_row, stored_state
from tests.support.table import saved
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio


@pytest.mark.postgres
async def test_edits_during_a_database_outage_all_reach_the_table(
    tmp_path: Path, postgres_url: str
) -> None:
    target = make_url(postgres_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        settings = settings_for(tmp_path, database_url=proxied, flush_interval=0.1)
        async with serve(settings) as server:
            gm = await server.join("c1", "gm1", "gm")
            await gm.request("token.add", token_payload("t1"))
            await saved(gm, 1)
            proxy.cut()
            async with httpx.AsyncClient(timeout=10) as http:
                ready = await http.get(f"{server.http}/ready")
                assert ready.status_code == 503
                for step in range(1, 41):
                    await gm.request("token.move", {"token_id": "t1", "x": step, "y": step})
                    await gm.request("token.add", token_payload(f"extra{step}"))
                assert server.services.manager.sessions["c1"].dirty
                proxy.restore()
                await saved(gm, 81)
                assert (await http.get(f"{server.http}/ready")).status_code == 200
            await gm.close()
    state = await stored_state(postgres_url, "", "c1")
    assert state["seq"] == 81
    assert state["tokens"]["t1"]["x"] == 40
    assert {f"extra{step}" for step in range(1, 41)} <= set(state["tokens"])


@pytest.mark.postgres
async def test_an_outage_before_the_first_join_refuses_it_and_leaves_the_row_alone(
    tmp_path: Path, postgres_url: str
) -> None:
    original = FIXTURE.read_bytes()
    await put_row(postgres_url, "", "c-fixture", original)
    before = await stored_state(postgres_url, "", "c-fixture")
    target = make_url(postgres_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        settings = settings_for(tmp_path, database_url=proxied, flush_interval=0.1)
        async with serve(settings) as server:
            proxy.cut()
            peer = await Peer.open(server.ws_url("c-fixture", server.token("gm1", "gm")))
            code, _ = await peer.closed()
            assert code == 1013
            assert "c-fixture" not in server.services.manager.sessions
            assert not any(frame["type"] == "state.sync" for frame in peer.received)
            proxy.restore()
            await asyncio.sleep(0)
            retry = await server.join("c-fixture", "gm1", "gm")
            assert retry.sync["payload"]["tokens"].keys() == before["tokens"].keys()
            await retry.close()
    assert await stored_state(postgres_url, "", "c-fixture") == before


async def test_a_memory_store_outage_keeps_sessions_dirty_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(replace(settings_for(tmp_path), flush_interval=3600)) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1"))
        store = server.services.store
        original = store.save_many

        async def failing(rows: Any, fences: Any = None) -> Saved:
            from app.persistence.store import StoreUnavailable

            raise StoreUnavailable("link down")

        store.save_many = failing  # type: ignore[method-assign]
        manager = server.services.manager
        with caplog.at_level("ERROR", logger="vtt.manager"):
            for _ in range(5):
                assert not await manager.flush()
        assert manager.sessions["c1"].dirty
        assert len([r for r in caplog.records if "flush failed" in r.getMessage()]) == 1
        store.save_many = original  # type: ignore[method-assign]
        assert await manager.flush()
        await saved(gm, 1)
        await gm.close()
