"""The token messages against a real server: what every client receives, hidden or not."""

from __future__ import annotations

import pytest

from tests.support.harness import (
    RunningServer,
    token_payload,
)
from tests.support.table import (
    act,
    news,
    snapshot,
    table,
    types,
)

pytestmark = pytest.mark.anyio


async def test_token_add_reaches_every_client_stamped_with_the_sender_as_owner(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    mine = await act(player, "token.add", token_payload("t1", character_id="ch-1"))
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.add"]
        frame = frames[0]
        assert (frame["campaign_id"], frame["user_id"], frame["seq"]) == (campaign, "pl-bo", 1)
        assert frame["payload"] == {
            **token_payload("t1", character_id="ch-1"),
            "owner_id": "pl-bo",
        }


async def test_token_move_reaches_every_client_including_the_sender(shared: RunningServer) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    mine = await act(player, "token.move", {"token_id": "t1", "x": 12.5, "y": -3})
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.move"]
        assert frames[0]["payload"] == {"token_id": "t1", "x": 12.5, "y": -3}
        assert (frames[0]["user_id"], frames[0]["seq"]) == ("pl-bo", 2)


async def test_token_update_reaches_every_client_with_only_the_fields_given(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    update = {"token_id": "t1", "name": "Aria", "image_url": "/tokens/aria.png", "width": 2}
    mine = await act(player, "token.update", update)
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.update"]
        assert frames[0]["payload"] == update
    token = (await snapshot(shared, campaign))["tokens"]["t1"]
    assert token == {**token_payload("t1"), **update, "owner_id": "gm-ada"}


async def test_token_remove_reaches_every_client(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    mine = await act(player, "token.remove", {"token_id": "t1"})
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert types(frames) == ["token.remove"]
        assert frames[0]["payload"] == {"token_id": "t1"}
    assert (await snapshot(shared, campaign))["tokens"] == {}


async def test_a_hidden_token_exists_for_the_gm_only(shared: RunningServer) -> None:
    gm, player, campaign = await table(shared)
    steps = [
        ("token.add", token_payload("h1", visible=False)),
        ("token.move", {"token_id": "h1", "x": 4, "y": 4}),
        ("token.update", {"token_id": "h1", "name": "Lurker"}),
    ]
    for kind, payload in steps:
        assert types(await act(gm, kind, payload)) == [kind]
    assert await news(player) == []
    assert "h1" not in (await snapshot(shared, campaign, "player"))["tokens"]
    assert "h1" in (await snapshot(shared, campaign, "gm"))["tokens"]
    assert types(await act(gm, "token.remove", {"token_id": "h1"})) == ["token.remove"]
    assert await news(player) == []


async def test_hiding_a_token_removes_it_for_players_and_revealing_adds_it_whole(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1", image_url="/a.png"))
    await news(player)
    hidden = await act(gm, "token.update", {"token_id": "t1", "visible": False})
    assert types(hidden) == ["token.update"]
    seen = await news(player)
    assert types(seen) == ["token.remove"]
    assert seen[0]["payload"] == {"token_id": "t1"}
    assert seen[0]["seq"] == hidden[0]["seq"]
    await act(gm, "token.move", {"token_id": "t1", "x": 9, "y": 9})
    assert await news(player) == []
    await act(gm, "token.update", {"token_id": "t1", "visible": True})
    seen = await news(player)
    assert types(seen) == ["token.add"]
    assert seen[0]["payload"] == {
        **token_payload("t1", image_url="/a.png", x=9, y=9),
        "owner_id": "gm-ada",
    }


async def test_re_adding_a_visible_token_as_hidden_removes_it_for_players(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    assert types(await act(gm, "token.add", token_payload("t1", visible=False))) == ["token.add"]
    assert types(await news(player)) == ["token.remove"]
