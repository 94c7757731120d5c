"""Connecting: the greeting a client gets, and every refusal before anything is sent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jose import jwt

from app.auth import DevKeys
from tests.support.harness import (
    Peer,
    RunningServer,
    serve,
    settings_for,
)
from tests.support.table import (
    new_campaign,
    refusal,
    ws_url,
)

pytestmark = pytest.mark.anyio


async def test_a_client_joining_a_fresh_campaign_gets_its_empty_state_then_the_map_list(
    shared: RunningServer,
) -> None:
    campaign = new_campaign()
    gm = await shared.join(campaign, "gm-ada", "gm")
    player = await shared.join(campaign, "pl-bo")
    sync, listing = gm.received[0], gm.received[1]
    assert sync["type"] == "state.sync"
    assert (sync["campaign_id"], sync["user_id"], sync["seq"]) == (campaign, "gm-ada", 0)
    epoch = sync["payload"].pop("epoch")
    assert isinstance(epoch, str)
    assert epoch
    assert sync["payload"] == {
        "campaign_id": campaign,
        "grid_size": 64,
        "map_width": 0,
        "map_height": 0,
        "darkness_level": 0,
        "tokens": {},
        "fog_zones": [],
        "saved_maps": {},
        "seq": 0,
    }
    assert listing["type"] == "map.list"
    assert listing["payload"] == {"maps": [], "active_map_id": ""}
    assert "saved_maps" not in player.sync["payload"]
    assert player.sync["payload"]["epoch"] == epoch


@pytest.mark.parametrize(
    "query",
    [
        "",
        "campaign=",
        "campaign=" + "c" * 129,
        "campaign=" + quote("a b"),
        "campaign=a.b",
        "campaign=" + quote("a/b"),
        "campaign=" + quote("ü"),
        "campaign=" + quote("c1\n"),
        "campaign_id=c1",
    ],
    ids=["none", "empty", "129 chars", "space", "dot", "slash", "non-ascii", "newline", "misnamed"],
)
async def test_a_missing_or_malformed_campaign_closes_4400_before_anything_is_sent(
    shared: RunningServer, query: str
) -> None:
    token = shared.token("pl-bo")
    peer = await Peer.open(ws_url(shared, f"{query}&token={token}"))
    assert await refusal(peer) == 4400


async def test_a_campaign_of_128_allowed_characters_is_accepted(shared: RunningServer) -> None:
    campaign = ("Az09_-" * 22)[:128]
    peer = await shared.join(campaign, "pl-bo")
    assert peer.sync["campaign_id"] == campaign


def foreign_token(shared: RunningServer, tmp_path: Path, **claims: Any) -> str:
    """A token signed by another key pair that claims the server's key id."""
    other = DevKeys(tmp_path / "other-keys")
    other.kid = shared.keys.kid
    return other.mint("pl-bo", "player", extra=claims)


def hs256_token(shared: RunningServer) -> str:
    """A token signed with HMAC instead of RS256."""
    now = int(time.time())
    claims = {"sub": "pl-bo", "exp": now + 600, "iat": now, "role": "player"}
    return str(jwt.encode(claims, "secret", algorithm="HS256", headers={"kid": shared.keys.kid}))


@pytest.mark.parametrize(
    "make",
    [
        lambda s, p: "",
        lambda s, p: "garbage",
        lambda s, p: "a.b.c",
        lambda s, p: s.token("pl-bo", ttl=-100),
        lambda s, p: s.token("pl-bo", extra={"nbf": int(time.time()) + 3600}),
        lambda s, p: s.token("pl-bo", extra={"iss": "https://someone-else.example"}),
        lambda s, p: foreign_token(s, p),
        lambda s, p: hs256_token(s),
        lambda s, p: s.token("pl-bo")[:-8] + "AAAAAAAA",
    ],
    ids=[
        "missing",
        "garbage",
        "unreadable",
        "expired",
        "not yet valid",
        "wrong issuer",
        "another key",
        "HS256",
        "tampered signature",
    ],
)
async def test_a_missing_garbage_or_invalid_token_closes_4401_before_anything_is_sent(
    shared: RunningServer, tmp_path: Path, make: Any
) -> None:
    token = make(shared, tmp_path)
    query = f"campaign={new_campaign()}" + (f"&token={token}" if token else "")
    peer = await Peer.open(ws_url(shared, query))
    assert await refusal(peer) == 4401


async def test_a_token_in_an_authorization_bearer_header_is_accepted(
    shared: RunningServer,
) -> None:
    headers = {"Authorization": f"Bearer {shared.token('pl-bo')}"}
    peer = await Peer.open(ws_url(shared, f"campaign={new_campaign()}"), additional_headers=headers)
    assert (await peer.expect("state.sync"))["user_id"] == "pl-bo"


async def test_a_garbage_authorization_bearer_header_closes_4401(shared: RunningServer) -> None:
    headers = {"Authorization": "Bearer not-a-jwt"}
    peer = await Peer.open(ws_url(shared, f"campaign={new_campaign()}"), additional_headers=headers)
    assert (await peer.closed())[0] == 4401


ALLOWED = "https://app.example"


@pytest.mark.parametrize("origin", [ALLOWED, None])
async def test_an_allowed_origin_or_none_at_all_lets_the_token_decide(
    tmp_path: Path, origin: str | None
) -> None:
    settings = settings_for(tmp_path, allowed_origins=(ALLOWED, "https://other.example"))
    async with serve(settings) as server:
        extra = {} if origin is None else {"origin": origin}
        peer = await Peer.open(server.ws_url("c1", server.token("alice", "gm")), **extra)
        assert (await peer.recv())["type"] == "state.sync"
        await peer.close()

        bad = await Peer.open(server.ws_url("c1", "not-a-token"), **extra)
        assert await bad.closed() == (4401, "unreadable token")


async def test_a_disallowed_origin_is_closed_with_4403_before_any_state(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allowed_origins=(ALLOWED,))
    async with serve(settings) as server:
        for origin in ("https://evil.example", "https://app.example.evil", "null"):
            peer = await Peer.open(server.ws_url("c1", server.token("alice", "gm")), origin=origin)
            assert await peer.closed() == (4403, "origin not allowed")
            assert peer.received == []


async def test_with_no_allowed_origins_configured_any_origin_is_accepted(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        peer = await Peer.open(
            server.ws_url("c1", server.token("alice")), origin="https://anywhere.example"
        )
        assert (await peer.recv())["type"] == "state.sync"
        await peer.close()


async def test_the_token_may_come_as_an_authorization_bearer_header(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        token = server.token("alice", "gm")
        peer = await Peer.open(
            server.ws_url("c1"), additional_headers={"Authorization": f"Bearer {token}"}
        )
        sync = await peer.recv()
        assert sync["type"] == "state.sync"
        await peer.close()

        wrong = await Peer.open(
            server.ws_url("c1"), additional_headers={"Authorization": f"Basic {token}"}
        )
        assert await wrong.closed() == (4401, "missing token")
