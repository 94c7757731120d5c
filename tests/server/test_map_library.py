"""The map library against a real server: map.set, map.switch, map.rename, map.delete."""

from __future__ import annotations

import pytest

from tests.support.harness import (
    RunningServer,
    map_payload,
    token_payload,
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


async def test_map_set_of_a_new_map_sends_everyone_map_set_with_its_stored_name_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    metadata = {"walls": [[{"x": 0, "y": 0}, {"x": 3, "y": 0}]]}
    # What the Go service always sent: `environment` with its zero values, when none was given.
    stored = {**metadata, "environment": {"baked_lighting": False, "ambient_light": ""}}
    mine = await act(gm, "map.set", map_payload("m1", map_metadata=metadata))
    theirs = await news(player)
    listing = {
        "maps": [{"map_id": "m1", "name": "Map 1", "image_url": map_payload("m1")["image_url"]}],
        "active_map_id": "m1",
    }
    for frames in (mine, theirs):
        assert types(frames) == ["map.set", "map.list"]
        assert frames[0]["payload"] == {
            **map_payload("m1", map_metadata=stored),
            "name": "Map 1",
        }
        assert frames[1]["payload"] == listing
        assert [frame["seq"] for frame in frames] == [1, 2]
    state = await snapshot(shared, campaign, "player")
    assert (state["map_id"], state["map_url"], state["map_metadata"]) == (
        "m1",
        map_payload("m1")["image_url"],
        stored,
    )


async def test_map_set_of_a_library_map_sends_everyone_a_fresh_state_sync_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await act(gm, "token.add", token_payload("h1", visible=False))
    await act(gm, "map.set", map_payload("m2"))
    await news(player)
    mine = await act(gm, "map.set", map_payload("m1", grid_size=32, name="Tavern"))
    theirs = await news(player)
    assert types(mine) == types(theirs) == ["state.sync", "map.list"]
    gm_state, player_state = mine[0]["payload"], theirs[0]["payload"]
    assert set(gm_state["tokens"]) == {"t1", "h1"}
    assert set(player_state["tokens"]) == {"t1"}
    assert "saved_maps" in gm_state
    assert "saved_maps" not in player_state
    assert (player_state["map_id"], player_state["grid_size"]) == ("m1", 32)
    assert mine[0]["seq"] == theirs[0]["seq"] == player_state["seq"]
    assert [m["name"] for m in theirs[1]["payload"]["maps"]] == ["Tavern", "Map 2"]


async def test_map_switch_sends_everyone_a_fresh_state_sync_and_map_list(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await act(gm, "token.add", token_payload("h1", visible=False))
    await act(gm, "fog.update", {"zones": [ZONE]})
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t2"))
    await news(player)
    mine = await act(gm, "map.switch", {"map_id": "m1"})
    theirs = await news(player)
    assert types(mine) == types(theirs) == ["state.sync", "map.list"]
    gm_state, player_state = mine[0]["payload"], theirs[0]["payload"]
    assert set(gm_state["tokens"]) == {"t1", "h1"}
    assert set(player_state["tokens"]) == {"t1"}
    assert player_state["fog_zones"] == [ZONE]
    assert "saved_maps" not in player_state
    assert set(gm_state["saved_maps"]) == {"m1", "m2"}
    assert list(gm_state["saved_maps"]["m2"]["tokens"]) == ["t2"]
    assert theirs[1]["payload"]["active_map_id"] == "m1"
    assert await snapshot(shared, campaign, "gm") == {**gm_state, "seq": gm_state["seq"] + 1}


async def test_map_rename_sends_everyone_the_map_list(shared: RunningServer) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await news(player)
    mine = await act(gm, "map.rename", {"map_id": "m1", "new_name": "The Crypt"})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["map.list"]
        assert frames[0]["payload"]["maps"][0]["name"] == "The Crypt"


async def test_map_delete_sends_everyone_the_map_list(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "map.set", map_payload("m2"))
    await news(player)
    mine = await act(gm, "map.delete", {"map_id": "m1"})
    theirs = await news(player)
    for frames in (mine, theirs):
        assert types(frames) == ["map.list"]
        assert [m["map_id"] for m in frames[0]["payload"]["maps"]] == ["m2"]
    assert set((await snapshot(shared, campaign))["saved_maps"]) == {"m2"}
