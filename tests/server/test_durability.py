"""Not one edit lost: restarts, SIGTERM, database outages, Go rows, batching, eviction."""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from app.config import Settings
from app.connection import text_of
from app.manager import MAX_FLUSH_BACKOFF, SessionManager
from app.metrics import Metrics
from app.model import Actor
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import MemoryStore, SqlStore
from app.protocol import TokenAddMsg, decode_client_message
from app.session import Outgoing
from tests.support.harness import Peer, RunningServer, serve, settings_for, token_payload
from tests.support.process import ServerProcess
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "go-vtt-sessions-state.json"


async def stored_state(database_url: str | None, sqlite_path: str, campaign: str) -> Any:
    """The state row of `campaign` as the database holds it, decoded (None when absent)."""
    engine = create_engine(database_url, sqlite_path)
    try:
        data = await SqlStore(engine).load(campaign)
    finally:
        await engine.dispose()
    return None if data is None else json.loads(data)


async def put_row(database_url: str | None, sqlite_path: str, campaign: str, data: bytes) -> None:
    """Write a state row directly, as another service (or an earlier version) would have."""
    await asyncio.to_thread(upgrade_to_head, database_url, sqlite_path)
    engine = create_engine(database_url, sqlite_path)
    try:
        await SqlStore(engine).save_many([(campaign, data)])
    finally:
        await engine.dispose()


async def open_peer(url: str) -> Peer:
    peer = await Peer.open(url)
    peer.sync = await peer.expect("state.sync")
    await peer.expect("map.list")
    return peer


async def saved(peer: Peer, seq: int) -> None:
    """Wait until the server says everything up to `seq` is durable."""
    await peer.until(lambda f: f["type"] == "state.saved" and f["payload"]["seq"] >= seq)


async def test_a_restart_keeps_every_saved_edit(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "0.2"})
    await server.start()
    try:
        gm = await open_peer(server.ws_url("c1", server.token("gm1", "gm")))
        await gm.request("token.add", token_payload("t1", x=3, y=4))
        await gm.request("token.move", {"token_id": "t1", "x": 30, "y": 40})
        await saved(gm, 2)
        first_epoch = gm.sync["payload"]["epoch"]
        await gm.close()
        await server.stop()
        await server.start()
        again = await open_peer(server.ws_url("c1", server.token("gm1", "gm")))
        state = again.sync["payload"]
        assert state["tokens"]["t1"]["x"] == 30
        assert state["tokens"]["t1"]["owner_id"] == "gm1"
        assert state["seq"] == 2
        assert state["epoch"] != first_epoch
        await again.close()
    finally:
        server.kill()


async def test_sigterm_right_after_an_edit_keeps_that_edit(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "3600"})
    await server.start()
    try:
        gm = await open_peer(server.ws_url("c1", server.token("gm1", "gm")))
        await gm.request("token.add", token_payload("t1", x=7))
        await gm.roundtrip()
        await server.stop(signal.SIGTERM)
        code, _ = await gm.closed()
        assert code == 1012
        await server.start()
        again = await open_peer(server.ws_url("c1", server.token("gm1", "gm")))
        assert again.sync["payload"]["tokens"]["t1"]["x"] == 7
        await again.close()
    finally:
        server.kill()


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


async def test_a_go_service_row_loads_unchanged(tmp_path: Path, database_url: str) -> None:
    await put_row(database_url, "", "c-fixture", FIXTURE.read_bytes())
    fixture = json.loads(FIXTURE.read_bytes())
    settings = settings_for(tmp_path, database_url=database_url)
    async with serve(settings) as server:
        gm = await server.join("c-fixture", "gm1", "gm")
        state = gm.sync["payload"]
        for key in ("campaign_id", "darkness_level", "grid_size", "map_height", "map_id"):
            assert state[key] == fixture[key]
        assert state["map_url"] == fixture["map_url"]
        assert state["tokens"] == fixture["tokens"]
        assert state["fog_zones"] == []
        assert state["seq"] == 0
        assert state["saved_maps"]["map-crypt"] == fixture["saved_maps"]["map-crypt"]
        tavern = dict(fixture["saved_maps"]["map-tavern"], fog_zones=[])
        assert state["saved_maps"]["map-tavern"] == tavern
        await gm.close()


async def test_an_undecodable_row_refuses_the_join_with_1011_and_stays_untouched(
    tmp_path: Path, database_url: str
) -> None:
    bad = b'{"tokens": {"t1": {"token_id": "t1"}}, "grid_size": "big"}'
    await put_row(database_url, "", "c-bad", bad)
    before = await stored_state(database_url, "", "c-bad")
    async with serve(settings_for(tmp_path, database_url=database_url)) as server:
        peer = await Peer.open(server.ws_url("c-bad", server.token("gm1", "gm")))
        code, _ = await peer.closed()
        assert code == 1011
        assert "c-bad" not in server.services.manager.sessions
        assert await server.services.manager.flush()
    assert await stored_state(database_url, "", "c-bad") == before


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

        async def held(rows: Any) -> int:
            entered.set()
            await release.wait()
            return await original(rows)

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


async def test_an_idle_session_is_flushed_and_evicted_after_the_grace_period(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, flush_interval=3600, evict_grace=0.2)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1", x=5))
        await gm.close()
        manager = server.services.manager
        deadline = time.monotonic() + 10
        while "c1" in manager.sessions:
            assert time.monotonic() < deadline, "session was not evicted"
            await asyncio.sleep(0.05)
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


async def test_ready_reports_the_database(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{server.http}/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}


async def test_a_memory_store_outage_keeps_sessions_dirty_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(replace(settings_for(tmp_path), flush_interval=3600)) as server:
        gm = await server.join("c1", "gm1", "gm")
        await gm.request("token.add", token_payload("t1"))
        store = server.services.store
        original = store.save_many

        async def failing(rows: Any) -> int:
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


class AttemptRecordingStore(MemoryStore):
    """A MemoryStore that reports when, on the loop's clock, each write was attempted."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: asyncio.Queue[float] = asyncio.Queue()

    async def save_many(self, rows: Sequence[tuple[str, bytes]]) -> int:
        """Report the attempt, then write (or fail, during an outage)."""
        self.attempts.put_nowait(asyncio.get_running_loop().time())
        return await super().save_many(rows)


class Listener:
    """A session member that keeps what it is sent."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.frames: list[dict[str, Any]] = []

    def deliver(self, outgoing: Outgoing) -> None:
        """Keep the message."""
        self.frames.append(json.loads(text_of(outgoing.frame)))


def test_a_failing_flush_loop_backs_off_to_the_cap_and_logs_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        settings = Settings(env="test")
        interval = settings.flush_interval
        store = AttemptRecordingStore()
        metrics = Metrics()
        manager = SessionManager(settings, store, metrics)
        gm = Listener(Actor(user_id="gm1", role="gm"))
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
        assert gm.frames[-1]["type"] == "state.saved"
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
        store = AttemptRecordingStore()
        manager = SessionManager(settings, store, Metrics())
        gm = Listener(Actor(user_id="gm1", role="gm"))
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
