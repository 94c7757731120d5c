"""The demo against a real server: its page and token endpoint, and 404 in production."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for

pytestmark = pytest.mark.anyio


async def test_the_demo_token_endpoint_mints_tokens_the_websocket_accepts(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        page = await http.get("/demo/")
        assert page.status_code == 200
        assert "vtt-client.js" in page.text or "demo.js" in page.text
        refused = await http.get("/demo/token", params={"user": "a b", "campaign": "demo"})
        assert refused.status_code == 400
        minted = await http.get(
            "/demo/token", params={"user": "alice", "role": "gm", "campaign": "demo"}
        )
    assert minted.status_code == 200
    assert minted.headers["cache-control"] == "no-store"
    peer = await Peer.open(server.ws_url("demo", minted.json()["token"]))
    assert (await peer.expect("state.sync"))["payload"]["campaign_id"] == "demo"
    await peer.close()


async def test_in_production_mode_the_demo_and_its_token_endpoint_answer_404(
    tmp_path: Path,
) -> None:
    async with (
        serve(
            settings_for(
                tmp_path,
                env="production",
                clerk_jwks_url="http://127.0.0.1:9/.well-known/jwks.json",
                clerk_issuer="http://127.0.0.1:9",
            )
        ) as running,
        httpx.AsyncClient(base_url=running.http, timeout=TIMEOUT) as http,
    ):
        for path in ("/demo/", "/demo/demo.js", "/demo/token?user=a&role=gm&campaign=demo"):
            assert (await http.get(path)).status_code == 404, path
