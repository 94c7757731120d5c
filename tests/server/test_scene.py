"""Fog and darkness against a real server: every client receives them, as applied."""

from __future__ import annotations

import pytest

from tests.support.harness import (
    RunningServer,
)
from tests.support.table import (
    ZONE,
    act,
    news,
    snapshot,
    table,
    types,
)

pytestmark = pytest.mark.anyio


async def test_fog_update_reaches_every_client(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    zones = [ZONE, {**ZONE, "x": 100, "visible": False}]
    mine = await act(gm, "fog.update", {"zones": zones})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["fog.update"]
        assert frames[0]["payload"] == {"zones": zones}
    assert (await snapshot(shared, campaign, "player"))["fog_zones"] == zones


@pytest.mark.parametrize(("sent", "applied"), [(0.4, 0.4), (3, 1), (-2, 0)])
async def test_scene_darkness_reaches_everyone_clamped_to_zero_to_one(
    shared: RunningServer, sent: float, applied: float
) -> None:
    gm, player, campaign = await table(shared)
    mine = await act(gm, "scene.darkness", {"darkness_level": sent})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["scene.darkness"]
        assert frames[0]["payload"] == {"darkness_level": applied}
    assert (await snapshot(shared, campaign, "player"))["darkness_level"] == applied
