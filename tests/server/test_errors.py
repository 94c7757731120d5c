"""Every refusal a client can provoke: GM-only messages, bad frames, and every error code.

Error codes: every code of PROTOCOL.md "Errors" is provoked here from a client except `internal`,
which the server defines but never sends (no code path produces it). `db_error` is provoked
with the chat table dropped from under a running server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.config import Limits
from app.errors import ERROR_CODES
from app.persistence.database import create_engine
from tests.support.harness import (
    TIMEOUT,
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
    news,
    only_error,
    snapshot,
    table,
    types,
)

pytestmark = pytest.mark.anyio


GM_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("fog.update", {"zones": [ZONE]}),
    ("map.set", map_payload("m-new")),
    ("map.set", map_payload("m1", name="hijacked")),
    ("map.switch", {"map_id": "m1"}),
    ("map.rename", {"map_id": "m1", "new_name": "hijacked"}),
    ("map.delete", {"map_id": "m1"}),
    ("scene.darkness", {"darkness_level": 1}),
    ("token.update", {"token_id": "t1", "visible": False}),
    ("token.update", {"token_id": "t1", "name": "also refused", "visible": True}),
    ("token.add", token_payload("t-hidden", visible=False)),
]


@pytest.mark.parametrize(
    ("kind", "payload"), GM_ONLY, ids=[f"{k}-{i}" for i, (k, _) in enumerate(GM_ONLY)]
)
async def test_a_player_sending_a_gm_only_message_is_forbidden_and_nothing_changes(
    shared: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "map.set", map_payload("m2"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    before = await snapshot(shared, campaign)
    only_error(await act(player, kind, payload), "forbidden")
    assert await news(gm) == []
    assert await snapshot(shared, campaign) == before


BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("truncated JSON", '{"type": "token.move", "payload": {"token_id": "t1"', "invalid_json"),
    ("not JSON", "hello", "invalid_json"),
    (
        "a NaN literal",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": NaN, "y": 0}}',
        "invalid_json",
    ),
    (
        "an Infinity literal",
        '{"type": "scene.darkness", "payload": {"darkness_level": Infinity}}',
        "invalid_json",
    ),
    ("a binary frame that is not JSON", b"\x00\x01\xfe\xff", "invalid_json"),
    (
        "a refused value then truncated JSON",
        '{"type": "token.move", "payload": {"token_id": 5',
        "invalid_json",
    ),
    ("a binary frame of broken UTF-8 inside JSON", b'{"type": "ping\xc3"}', "invalid_json"),
    (
        "a binary frame of broken UTF-8 in chat content",
        b'{"type": "chat.send", "payload": {"content": "\xff"}}',
        "invalid_json",
    ),
    (
        "a binary frame of broken UTF-8 in a key of chat content",
        b'{"type": "chat.send", "payload": {"content": {"\xff": 1}}}',
        "invalid_json",
    ),
    ("a JSON array", '[{"type": "ping"}]', "invalid_message"),
    (
        "a payload nested 100,000 deep",
        '{"type": "ping", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "invalid_payload",
    ),
    ("a JSON string", '"ping"', "invalid_message"),
    ("an object without type", '{"payload": {}}', "invalid_message"),
    ("a numeric type", '{"type": 7, "payload": {}}', "invalid_message"),
    ("an unknown type", '{"type": "token.teleport", "payload": {}}', "unknown_type"),
    ("a server-only type", '{"type": "state.sync", "payload": {}}', "unknown_type"),
    (
        "a string coordinate",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": "1", "y": 0}}',
        "invalid_payload",
    ),
    (
        "a numeric visible",
        '{"type": "token.update", "payload": {"token_id": "t1", "visible": 0}}',
        "invalid_payload",
    ),
    (
        "1e999",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": 1e999, "y": 0}}',
        "invalid_payload",
    ),
    (
        "a coordinate beyond ten million",
        '{"type": "token.move", "payload": {"token_id": "t1", "x": 10000001, "y": 0}}',
        "invalid_payload",
    ),
    (
        "a zero size",
        '{"type": "token.update", "payload": {"token_id": "t1", "width": 0}}',
        "invalid_payload",
    ),
    ("a missing field", '{"type": "token.move", "payload": {"token_id": "t1"}}', "invalid_payload"),
    ("no payload", '{"type": "map.switch"}', "invalid_payload"),
    ("a payload array", '{"type": "token.remove", "payload": ["t1"]}', "invalid_payload"),
    (
        "a javascript image_url",
        '{"type": "token.update", "payload": {"token_id": "t1", "image_url": "javascript:x"}}',
        "invalid_payload",
    ),
    (
        "a protocol-relative image_url",
        '{"type": "token.update", "payload": {"token_id": "t1", "image_url": "//evil/x.png"}}',
        "invalid_payload",
    ),
    (
        "a 129-character token id",
        json.dumps({"type": "token.remove", "payload": {"token_id": "t" * 129}}),
        "invalid_payload",
    ),
    (
        "a 201-character name",
        json.dumps({"type": "token.update", "payload": {"token_id": "t1", "name": "n" * 201}}),
        "invalid_payload",
    ),
    ("an unknown token", '{"type": "token.remove", "payload": {"token_id": "t9"}}', "not_found"),
    ("an unknown map", '{"type": "map.switch", "payload": {"map_id": "m9"}}', "not_found"),
    (
        "deleting the active map",
        '{"type": "map.delete", "payload": {"map_id": "m1"}}',
        "invalid_request",
    ),
]


# A player sending these is refused as forbidden before the map is even looked up.
GM_ONLY_FRAMES = frozenset({"an unknown map", "deleting the active map"})


@pytest.mark.parametrize(("sender", "role"), [("gm-ada", "gm"), ("pl-bo", "player")])
@pytest.mark.parametrize(("name", "data", "code"), BAD_FRAMES, ids=[n for n, _, _ in BAD_FRAMES])
async def test_a_bad_frame_gets_one_error_keeps_the_socket_usable_and_changes_nothing(
    shared: RunningServer, name: str, data: str | bytes, code: str, sender: str, role: str
) -> None:
    gm, player, campaign = await table(shared)
    await act(gm, "map.set", map_payload("m1"))
    await act(gm, "token.add", token_payload("t1"))
    await news(player)
    peer, other = (gm, player) if role == "gm" else (player, gm)
    gm_only = name in GM_ONLY_FRAMES
    expected = "forbidden" if role == "player" and gm_only else code
    before = await snapshot(shared, campaign)
    error = only_error(await act_raw(peer, data), expected)
    assert (error["user_id"], error["campaign_id"]) == (sender, campaign)
    assert await news(other) == []
    assert await snapshot(shared, campaign) == before
    moved = await act(peer, "token.move", {"token_id": "t1", "x": 1, "y": 1})
    assert types(moved) == ["token.move"]


async def test_every_error_code_but_internal_is_reachable_from_a_client(tmp_path: Path) -> None:
    limits = Limits(max_tokens=1)
    settings = settings_for(tmp_path, limits=limits, rate_per_second=0.1, rate_burst=14)
    async with serve(settings) as server:
        gm = await server.join("c-codes", "gm-ada", "gm")
        player = await server.join("c-codes", "pl-bo")
        await gm.send("map.set", map_payload("m1"))
        await gm.send("token.add", token_payload("t1"))
        # The GM holds t1's drag lock before the player tries to move it (locked).
        await gm.send("token.grab", {"token_id": "t1"})
        await player.until(lambda f: f["type"] == "token.grabbed")
        engine = create_engine(None, settings.sqlite_path)
        async with asyncio.timeout(TIMEOUT), engine.begin() as connection:
            await connection.execute(text("DROP TABLE chat_messages"))
        await engine.dispose()
        provocations: list[tuple[Peer, str | bytes]] = [
            (gm, "{"),
            (gm, "[]"),
            (gm, '{"type": "nope"}'),
            (gm, '{"type": "token.move", "payload": {}}'),
            (player, '{"type": "scene.darkness", "payload": {"darkness_level": 1}}'),
            (player, '{"type": "chat.send", "payload": {"content": "lost"}}'),
            (player, '{"type": "token.move", "payload": {"token_id": "t1", "x": 5, "y": 5}}'),
            (gm, '{"type": "token.remove", "payload": {"token_id": "t9"}}'),
            (gm, '{"type": "map.delete", "payload": {"map_id": "m1"}}'),
            (gm, json.dumps({"type": "token.add", "payload": token_payload("t2")})),
        ]
        for peer, data in provocations:
            await peer.send_raw(data)
        # The GM has sent 10 messages; 6 pings more go past its burst of 14.
        for _ in range(6):
            await gm.send("ping")
        await gm.until(lambda f: f["type"] == "error" and f["payload"]["code"] == "rate_limited")
        for _ in range(3):
            await player.until(lambda f: f["type"] == "error")
        seen = {f["payload"]["code"] for f in gm.received + player.received if f["type"] == "error"}
        assert seen == set(ERROR_CODES) - {"internal"}
