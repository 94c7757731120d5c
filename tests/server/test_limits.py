"""Limits against a real server: collection sizes, image URL prefixes, message rate, frame size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import Limits
from app.transport.serve import uvicorn_options
from tests.support.harness import (
    Peer,
    RunningServer,
    map_payload,
    serve,
    settings_for,
    token_payload,
)
from tests.support.table import (
    ZONE,
    act,
    act_raw,
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


async def test_limits_refuse_with_limit_exceeded_and_change_nothing(limited: RunningServer) -> None:
    gm, player, campaign = await table(limited)
    point = {"x": 0, "y": 0}
    await act(gm, "map.set", map_payload("m1", map_metadata={"walls": [[point] * 4]}))
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t1"))
    await act(player, "token.add", token_payload("t2"))
    await act(gm, "fog.update", {"zones": [ZONE, ZONE]})
    await news(player)
    before = await snapshot(limited, campaign)
    refusals: list[tuple[Peer, str, dict[str, Any]]] = [
        (player, "token.add", token_payload("t3")),
        (gm, "token.add", token_payload("t3", visible=False)),
        (gm, "fog.update", {"zones": [ZONE, ZONE, ZONE]}),
        (gm, "map.set", map_payload("m3")),
        (gm, "map.set", map_payload("m2", map_metadata={"walls": [[point] * 5]})),
    ]
    for peer, kind, payload in refusals:
        only_error(await act(peer, kind, payload), "limit_exceeded")
    assert await snapshot(limited, campaign) == before
    assert types(await act(gm, "token.add", token_payload("t1", name="replaced"))) == ["token.add"]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("token.add", token_payload("t2", image_url="https://elsewhere.example/x.png")),
        ("token.update", {"token_id": "t1", "image_url": "/relative.png"}),
        ("map.set", map_payload("m2", image_url="https://cdn.example.evil/x.png")),
    ],
)
async def test_an_image_url_outside_the_configured_prefixes_is_invalid_payload(
    limited: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, _, campaign = await table(limited)
    await act(gm, "token.add", token_payload("t1", image_url="https://cdn.example/t1.png"))
    before = await snapshot(limited, campaign)
    only_error(await act(gm, kind, payload), "invalid_payload")
    assert await snapshot(limited, campaign) == before


async def test_a_client_over_its_message_rate_gets_rate_limited_and_the_message_is_dropped(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, rate_per_second=0.1, rate_burst=3)) as server:
        gm = await server.join("c-rate", "gm-ada", "gm")
        for index in range(4):
            await gm.send("token.add", token_payload(f"t{index}"))
        for index in range(3):
            added = await prompted(gm)
            assert (added["type"], added["payload"]["token_id"]) == ("token.add", f"t{index}")
        only_error([await prompted(gm)], "rate_limited")
        assert sorted((await snapshot(server, "c-rate"))["tokens"]) == ["t0", "t1", "t2"]


def padded(size: int) -> str:
    """A valid token.add frame of exactly `size` bytes, padded by an invented field."""
    base = {"type": "token.add", "payload": token_payload("big"), "pad": ""}
    return json.dumps({**base, "pad": "x" * (size - len(json.dumps(base)))})


async def assert_oversize_closes_1009(server: RunningServer, data: str | bytes) -> None:
    campaign = new_campaign()
    watcher = await join(server, campaign, "watcher", "gm")
    sender = await join(server, campaign, "sender", "gm")
    before = await snapshot(server, campaign)
    await sender.send_raw(data)
    code, _ = await sender.closed()
    assert code == 1009
    assert await news(watcher) == []
    assert await snapshot(server, campaign) == before


async def test_a_frame_over_a_configured_4096_byte_limit_closes_1009(tmp_path: Path) -> None:
    limits = Limits(max_frame_bytes=4096)
    async with serve(settings_for(tmp_path, limits=limits)) as server:
        await assert_oversize_closes_1009(server, padded(4097))
        await assert_oversize_closes_1009(server, "é" * 2049)
        await assert_oversize_closes_1009(server, padded(4097).encode())


async def test_a_frame_of_exactly_the_configured_limit_is_accepted(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, limits=Limits(max_frame_bytes=4096))) as server:
        gm = await join(server, new_campaign(), "gm-ada", "gm")
        frames = await act_raw(gm, padded(4096))
        assert types(frames) == ["token.add"]
        assert "pad" not in gm.raw[-2]


async def test_a_600_kib_frame_closes_1009_under_the_default_512_kib_limit(
    shared: RunningServer,
) -> None:
    await assert_oversize_closes_1009(shared, padded(600 * 1024))


async def test_the_frame_limit_holds_when_uvicorn_itself_allows_16_mib_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def as_plain_uvicorn_launches(settings: Any) -> dict[str, Any]:
        options = uvicorn_options(settings)
        del options["ws_max_size"]
        return options

    monkeypatch.setattr("tests.support.harness.uvicorn_options", as_plain_uvicorn_launches)
    async with serve(settings_for(tmp_path)) as server:
        await assert_oversize_closes_1009(server, padded(600 * 1024))
        await assert_oversize_closes_1009(server, padded(600 * 1024).encode())
        await assert_oversize_closes_1009(server, "é" * (300 * 1024))
