"""Rows already in the table: a Go service row loads unchanged, an unreadable one is left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.harness import Peer, serve, settings_for
from tests.support.sql import FIXTURE, put_row, stored_state

pytestmark = pytest.mark.anyio


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
