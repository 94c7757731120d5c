"""The envelope against a real server: who and where are stamped, invented fields never relayed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.harness import (
    RunningServer,
    map_payload,
    token_payload,
)
from tests.support.table import (
    ZONE,
    act,
    join,
    new_campaign,
    news,
    only_error,
    prompted,
    snapshot,
    table,
    types,
)

pytestmark = pytest.mark.anyio


async def test_the_server_stamps_user_id_and_campaign_id_whatever_the_client_claims(
    shared: RunningServer,
) -> None:
    gm, player, campaign = await table(shared)
    elsewhere = await join(shared, new_campaign(), "gm-ada", "gm")
    forged = {"user_id": "gm-ada", "campaign_id": "c-elsewhere"}
    mine = await act(player, "token.add", token_payload("t1", owner_id="gm-ada"), **forged)
    theirs = await news(gm)
    for frames in (mine, theirs):
        assert (frames[0]["user_id"], frames[0]["campaign_id"]) == ("pl-bo", campaign)
        assert frames[0]["payload"]["owner_id"] == "pl-bo"
    assert await news(elsewhere) == []
    await player.send("ping", **forged)
    assert (await prompted(player))["user_id"] == "pl-bo"
    only_error(await act(player, "scene.darkness", {"darkness_level": 1}, **forged), "forbidden")


INVENTED: list[tuple[str, dict[str, Any]]] = [
    ("token.add", {**token_payload("t2"), "x_invented": "MARK"}),
    ("token.move", {"token_id": "t1", "x": 1, "y": 2, "x_invented": "MARK"}),
    ("token.update", {"token_id": "t1", "name": "n", "x_invented": "MARK", "owner": "MARK"}),
    ("token.remove", {"token_id": "t1", "x_invented": "MARK"}),
    ("fog.update", {"zones": [{**ZONE, "x_invented": "MARK"}], "x_invented": "MARK"}),
    (
        "map.set",
        map_payload(
            "m2",
            x_invented="MARK",
            map_metadata={
                "x_invented": "MARK",
                "walls": [[{"x": 0, "y": 0, "x_invented": "MARK"}]],
                "lights": [{"range": 2, "x_invented": "MARK"}],
                "environment": {"baked_lighting": True, "x_invented": "MARK"},
            },
        ),
    ),
    ("map.switch", {"map_id": "m1", "x_invented": "MARK"}),
    ("map.rename", {"map_id": "m1", "new_name": "n", "x_invented": "MARK"}),
    ("map.delete", {"map_id": "m0", "x_invented": "MARK"}),
    ("scene.darkness", {"darkness_level": 0.5, "x_invented": "MARK"}),
]


@pytest.mark.parametrize(("kind", "payload"), INVENTED, ids=[k for k, _ in INVENTED])
async def test_fields_a_client_invents_are_never_relayed_nor_stored(
    shared: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m0"))
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    frames = await act(gm, kind, payload, x_envelope="MARK")
    assert frames, kind
    assert "error" not in types(frames)
    await news(player)
    for peer in (gm, player):
        assert not [raw for raw in peer.raw if "MARK" in raw or "x_invented" in raw]
    stored = json.dumps(await snapshot(shared, campaign))
    assert "MARK" not in stored
    assert "x_invented" not in stored
