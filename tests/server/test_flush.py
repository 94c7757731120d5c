"""Flushing against a real server: one batched write a tick, edits mid-write, the final flush."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from app.persistence.store import Saved
from tests.support.harness import serve, settings_for, token_payload
from tests.support.sql import execute, stored_state
from tests.support.table import saved

pytestmark = pytest.mark.anyio


async def test_two_hundred_campaigns_flush_in_one_batched_tick(
    tmp_path: Path, database_url: str
) -> None:
    settings = settings_for(tmp_path, database_url=database_url, flush_interval=3600)
    async with serve(settings) as server:
        peers = [await server.join(f"c{i}", "gm1", "gm") for i in range(200)]
        for i, peer in enumerate(peers):
            await peer.send("token.add", token_payload(f"t{i}"))
        for peer in peers:
            await peer.expect("token.add")
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(str(args[2]))

        engine = server.services.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert await server.services.manager.flush()
        finally:
            event.remove(engine, "before_cursor_execute", count)
        writes = [s for s in statements if "INSERT" in s.upper()]
        assert len(writes) == 1, statements
        for peer in peers:
            await saved(peer, 1)
        assert not any(s.dirty for s in server.services.manager.sessions.values())
        for peer in peers:
            await peer.close()
    for i in (0, 99, 199):
        state = await stored_state(database_url, "", f"c{i}")
        assert f"t{i}" in state["tokens"]


async def test_edits_during_a_flush_in_flight_stay_dirty(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, flush_interval=3600)) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1"))
        manager = server.services.manager
        session = manager.sessions["c1"]
        store = server.services.store
        original = store.save_many
        entered, release = asyncio.Event(), asyncio.Event()

        async def held(rows: Any, fences: Any = None) -> Saved:
            entered.set()
            await release.wait()
            return await original(rows, fences)

        store.save_many = held  # type: ignore[method-assign]
        flush = asyncio.create_task(manager.flush())
        async with asyncio.timeout(10):
            await entered.wait()
        await gm.request("token.move", {"token_id": "t1", "x": 9, "y": 9})
        release.set()
        async with asyncio.timeout(10):
            assert await flush
        store.save_many = original  # type: ignore[method-assign]
        assert session.dirty, "the move landed after the snapshot, so it is not saved yet"
        assert await manager.flush()
        assert not session.dirty
        await gm.close()


async def test_a_handshake_uvicorn_cannot_parse_does_not_cost_the_final_flush(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, flush_interval=3600)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1", x=11))
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port), timeout=10
        )
        request = (
            f"GET /ws?campaign=c1&pad={'x' * 9000} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        await gm.close()
    writer.close()
    async with serve(settings) as server:
        again = await server.join("c1", "gm1", "gm")
        assert again.sync["payload"]["tokens"]["t1"]["x"] == 11
        await again.close()


async def test_a_campaign_whose_row_another_writer_fenced_is_not_overwritten(
    tmp_path: Path, database_url: str
) -> None:
    settings = settings_for(tmp_path, database_url=database_url, flush_interval=3600)
    async with serve(settings) as server:
        taken, kept = await server.join("c1", "gm1", "gm"), await server.join("c2", "gm1", "gm")
        for peer in (taken, kept):
            await peer.request("token.add", token_payload("t1"))
        manager = server.services.manager
        assert await manager.flush()
        # Another writer (a newer owner of c1) raises the row's fence behind this server.
        await execute(database_url, "UPDATE vtt_sessions SET fence = 3 WHERE campaign_id = 'c1'")
        for peer in (taken, kept):
            await peer.request("token.add", token_payload("t2"))

        assert await manager.flush()

        code, reason = await taken.closed()
        assert (code, reason) == (1012, "campaign moved; reconnect")
        await saved(kept, 2)
        assert "c1" not in manager.sessions
        await kept.close()
    assert set((await stored_state(database_url, "", "c1"))["tokens"]) == {"t1"}
    assert set((await stored_state(database_url, "", "c2"))["tokens"]) == {"t1", "t2"}
