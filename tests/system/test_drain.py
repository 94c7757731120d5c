"""A deploy loses nothing: SIGTERM or SIGINT flushes everything and closes all clients with 1012."""

from __future__ import annotations

import asyncio
import json
import signal
import tomllib
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.persistence.database import create_engine
from app.persistence.store import SqlStore
from tests.support.harness import Peer, token_payload
from tests.support.process import ROOT, ServerProcess
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio

CLIENTS_PER_CAMPAIGN = 5


def kill_timeout() -> float:
    """fly.toml's kill_timeout, in seconds."""
    config = tomllib.loads((ROOT / "fly.toml").read_text(encoding="utf-8"))
    value = str(config["kill_timeout"])
    return float(value.removesuffix("s"))


async def stored_rows(
    database_url: str, sqlite_path: Path, campaigns: list[str]
) -> dict[str, bytes | None]:
    """The state row of each of `campaigns` as the database holds it (None when absent)."""
    engine = create_engine(database_url, str(sqlite_path))
    try:
        store = SqlStore(engine)
        return {campaign: await store.load(campaign) for campaign in campaigns}
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("sig", "campaigns"),
    [
        pytest.param(signal.SIGTERM, 100, id="SIGTERM"),
        # Fly's kill_signal is SIGTERM; SIGINT (Ctrl+C, Fly's default) takes the same path,
        # so fewer clients show it without making the suite much slower.
        pytest.param(signal.SIGINT, 10, id="SIGINT"),
    ],
)
async def test_a_drain_signal_flushes_every_campaign_and_closes_every_client_with_1012(
    tmp_path: Path, database_url: str, sig: signal.Signals, campaigns: int
) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "3600"})
    await server.start()
    try:
        gm_token = server.token("gm", "gm")
        player_tokens = [server.token(f"p{i}") for i in range(CLIENTS_PER_CAMPAIGN - 1)]
        peers: list[Peer] = []
        for c in range(campaigns):
            tokens = [gm_token, *player_tokens]
            urls = [server.ws_url(f"c{c}", t) for t in tokens]
            peers += await asyncio.gather(*(Peer.greeted(url) for url in urls))
        assert len(peers) == campaigns * CLIENTS_PER_CAMPAIGN
        gms = peers[::CLIENTS_PER_CAMPAIGN]
        for c, gm in enumerate(gms):
            await gm.send("token.add", token_payload(f"t{c}", x=c))
        for gm in gms:
            await gm.expect("token.add")

        drain = await server.stop(sig)
        closes = await asyncio.gather(*(peer.closed() for peer in peers))
        codes = {code for code, _ in closes}
        dirty = f"{campaigns} dirty campaigns"
        print(f"drain of {len(peers)} clients ({dirty}, {sig.name}): {drain:.2f} s")
        assert codes == {1012}
        assert drain < kill_timeout()
        assert "Application shutdown complete" in server.output()
    finally:
        server.kill()

    rows = await stored_rows(database_url, tmp_path / "vtt.db", [f"c{c}" for c in range(campaigns)])
    for c in range(campaigns):
        data = rows[f"c{c}"]
        assert data is not None, f"campaign c{c} was not flushed"
        assert json.loads(data)["tokens"][f"t{c}"]["x"] == c


@pytest.mark.postgres
async def test_a_join_during_the_drain_cannot_connect_and_the_drain_still_flushes(
    tmp_path: Path, postgres_url: str
) -> None:
    """Once the drain has begun, the port is closed: a join is refused at TCP connect.

    uvicorn's shutdown closes its listening socket, then sends every open connection its
    1012, and only after those connections are gone runs the lifespan shutdown, where the
    manager starts refusing joins with 1012 "server restarting" and the final flush runs.
    So once an open client has its 1012, no new connection can reach the app: neither that
    refusal nor /ready's 503 "draining" is what a late client meets. A stalled database
    holds the process in its final flush meanwhile; that the flush lands after the link is
    restored shows the refused join came while the process was still draining.
    """
    target = make_url(postgres_url)
    async with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        server = ServerProcess(tmp_path, {"DATABASE_URL": proxied, "VTT_FLUSH_INTERVAL": "3600"})
        await server.start()
        try:
            assert server.proc is not None
            gm = await Peer.greeted(server.ws_url("c1", server.token("gm", "gm")))
            await gm.request("token.add", token_payload("t1", x=7))
            proxy.stall()
            server.proc.send_signal(signal.SIGTERM)
            code, _ = await gm.closed()
            assert code == 1012
            with pytest.raises(ConnectionRefusedError):
                await Peer.open(server.ws_url("c1", server.token("late")))
            assert server.proc.returncode is None
            proxy.restore()
            async with asyncio.timeout(kill_timeout()):
                await server.proc.wait()
            assert "Application shutdown complete" in server.output()
        finally:
            server.kill()
    data = (await stored_rows(postgres_url, tmp_path / "vtt.db", ["c1"]))["c1"]
    assert data is not None, "the edit made before the drain was not flushed"
    assert json.loads(data)["tokens"]["t1"]["x"] == 7
