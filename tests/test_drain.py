"""A deploy loses nothing: SIGTERM with 500 clients flushes everything and closes all with 1012."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import pytest

from app.database import create_engine
from app.store import SqlStore
from tests.harness import Peer, token_payload
from tests.process import ROOT, ServerProcess

pytestmark = pytest.mark.anyio

CAMPAIGNS = 100
CLIENTS_PER_CAMPAIGN = 5


def kill_timeout() -> float:
    """fly.toml's kill_timeout, in seconds."""
    config = tomllib.loads((ROOT / "fly.toml").read_text(encoding="utf-8"))
    value = str(config["kill_timeout"])
    return float(value.removesuffix("s"))


async def test_sigterm_with_500_clients_flushes_everything_and_closes_all_with_1012(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "3600"})
    await server.start()
    try:
        gm_token = server.token("gm", "gm")
        player_tokens = [server.token(f"p{i}") for i in range(CLIENTS_PER_CAMPAIGN - 1)]

        async def connect(campaign: str, token: str) -> Peer:
            peer = await Peer.open(server.ws_url(campaign, token))
            await peer.expect("state.sync")
            await peer.expect("map.list")
            return peer

        peers: list[Peer] = []
        for c in range(CAMPAIGNS):
            tokens = [gm_token, *player_tokens]
            peers += await asyncio.gather(*(connect(f"c{c}", t) for t in tokens))
        assert len(peers) == CAMPAIGNS * CLIENTS_PER_CAMPAIGN
        gms = peers[::CLIENTS_PER_CAMPAIGN]
        for c, gm in enumerate(gms):
            await gm.send("token.add", token_payload(f"t{c}", x=c))
        for gm in gms:
            await gm.expect("token.add")

        drain = await server.stop()
        closes = await asyncio.gather(*(peer.closed() for peer in peers))
        codes = {code for code, _ in closes}
        print(f"drain: {len(peers)} clients, {CAMPAIGNS} dirty campaigns, exit in {drain:.2f} s")
        assert codes == {1012}
        assert drain < kill_timeout()
        assert "Application shutdown complete" in server.output()
    finally:
        server.kill()

    engine = create_engine(database_url, str(tmp_path / "vtt.db"))
    try:
        store = SqlStore(engine)
        for c in range(CAMPAIGNS):
            data = await store.load(f"c{c}")
            assert data is not None, f"campaign c{c} was not flushed"
            assert json.loads(data)["tokens"][f"t{c}"]["x"] == c
    finally:
        await engine.dispose()
