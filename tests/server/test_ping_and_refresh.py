"""The messages that change no state: a ping gets a pong, an auth.refresh keeps or closes."""

from __future__ import annotations

import pytest

from tests.support.harness import (
    RunningServer,
    token_payload,
)
from tests.support.table import (
    act,
    news,
    prompted,
    table,
    types,
)

pytestmark = pytest.mark.anyio


async def test_ping_is_answered_with_a_pong_to_the_sender_only_and_without_seq(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    await player.send("ping")
    pong = await prompted(player)
    assert pong == {
        "type": "pong",
        "campaign_id": campaign,
        "user_id": "pl-bo",
        "payload": {},
    }
    assert await news(gm) == []


async def test_auth_refresh_with_a_fresh_token_for_the_same_user_keeps_the_connection(
    shared: RunningServer,
) -> None:
    gm, player, _ = await table(shared)
    assert await act(player, "auth.refresh", {"token": shared.token("pl-bo")}) == []
    await act(gm, "token.add", token_payload("t1"))
    assert types(await news(player)) == ["token.add"]


async def test_auth_refresh_with_another_users_token_closes_4401(shared: RunningServer) -> None:
    _, player, _ = await table(shared)
    await player.send("auth.refresh", {"token": shared.token("someone-else")})
    code, _ = await player.closed()
    assert code == 4401
