"""Chat forwarded to the campaign's owner: the signature, and every answer of the owner's side."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.broadcast import MAX_BODY_BYTES
from app.config import Cluster, Settings
from app.coord.base import Owner
from app.coord.forward import (
    SIGNATURE_HEADER,
    ClusterChatEndpoint,
    forward_secret,
    http_base,
    sign,
    verify,
)
from app.coord.relay import MAX_SKEW
from app.protocol import ChatMessage

pytestmark = pytest.mark.anyio

SECRET = "s" * 32
NOW = 1_800_000_000.0
CLUSTER = Cluster(redis_url="redis://x", node_id="a", node_url="ws://a:8080", secret=SECRET)
MESSAGE = ChatMessage(
    id="00000000-0000-4000-8000-000000000001",
    campaign_id="c1",
    user_id="gm1",
    message_type="text",
    content=msgspec.Raw(b'{"text":"hi"}'),
    gm_only=False,
    created_at="2026-12-07T00:00:00Z",
)
BODY = msgspec.json.encode(MESSAGE)


@given(st.binary(max_size=256), st.floats(-MAX_SKEW, MAX_SKEW))
def test_a_signature_verifies_its_body_within_the_skew(body: bytes, offset: float) -> None:
    assert verify(SECRET, sign(SECRET, body, NOW), body, NOW + offset)


@pytest.mark.parametrize(
    ("value", "body", "now"),
    [
        (sign(SECRET, BODY, NOW), BODY + b" ", NOW),
        (sign("other" * 8, BODY, NOW), BODY, NOW),
        (sign(SECRET, BODY, NOW), BODY, NOW + MAX_SKEW + 1),
        (sign(SECRET, BODY, NOW), BODY, NOW - MAX_SKEW - 1),
        ("", BODY, NOW),
        ("1.00", BODY, NOW),
        ("nan." + sign(SECRET, BODY, NOW).partition(".")[2], BODY, NOW),
        ("inf." + sign(SECRET, BODY, NOW).partition(".")[2], BODY, NOW),
        ("not-a-time.abc", BODY, NOW),
    ],
    ids=[
        "other-body",
        "other-secret",
        "stale",
        "from-the-future",
        "empty",
        "no-mac",
        "nan",
        "infinite",
        "malformed",
    ],
)
def test_a_signature_is_refused(value: str, body: bytes, now: float) -> None:
    assert not verify(SECRET, value, body, now)


def test_the_cluster_secret_signs_else_the_internal_apis_and_one_machine_forwards_nothing() -> None:
    assert forward_secret(Settings(env="test")) is None
    assert forward_secret(replace(Settings(env="test"), cluster=CLUSTER)) == SECRET
    unsigned = replace(CLUSTER, secret=None)
    settings = replace(Settings(env="test"), cluster=unsigned, internal_api_secret="internal")
    assert forward_secret(settings) == "internal"


@pytest.mark.parametrize(
    ("url", "base"),
    [("ws://a.internal:8080", "http://a.internal:8080"), ("wss://a.example", "https://a.example")],
)
def test_the_owners_http_base_follows_its_websocket_url(url: str, base: str) -> None:
    assert http_base(Owner("a", url)) == base


@dataclass
class Manager:
    """publish_here's answer, and what it was given."""

    live: bool
    published: list[ChatMessage] = field(default_factory=list)

    async def publish_here(self, message: ChatMessage) -> bool:
        self.published.append(message)
        return self.live


@dataclass
class Services:
    settings: Settings
    manager: Manager


async def answer(
    body: bytes,
    headers: dict[str, str],
    *,
    live: bool = True,
    method: str = "POST",
    cluster: Cluster | None = CLUSTER,
) -> tuple[int, Manager]:
    """Call the endpoint as uvicorn would; its status and the manager it published through."""
    manager = Manager(live)
    services = Services(replace(Settings(env="test"), cluster=cluster), manager)
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/internal/cluster/chat",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "state": {"services": services},
    }
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await ClusterChatEndpoint()(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], manager


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: sign(SECRET, body, time.time())}


async def test_a_signed_message_is_published_when_the_campaign_is_live_here() -> None:
    status, manager = await answer(BODY, signed(BODY))
    assert status == 204
    assert [m.id for m in manager.published] == [MESSAGE.id]


async def test_a_signed_message_for_a_campaign_not_live_here_is_409() -> None:
    status, manager = await answer(BODY, signed(BODY), live=False)
    assert status == 409
    assert len(manager.published) == 1


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no-cluster", 404),
        ("get", 405),
        ("too-large", 413),
        ("unsigned", 401),
        ("signed-for-another-body", 401),
        ("not-a-chat-message", 400),
    ],
)
async def test_the_owner_refuses_and_publishes_nothing(case: str, status: int) -> None:
    body, headers = BODY, signed(BODY)
    kwargs: dict[str, Any] = {}
    if case == "no-cluster":
        kwargs["cluster"] = None
    elif case == "get":
        kwargs["method"] = "GET"
    elif case == "too-large":
        body = b"x" * (MAX_BODY_BYTES + 1)
        headers = signed(body)
    elif case == "unsigned":
        headers = {}
    elif case == "signed-for-another-body":
        headers = signed(b"{}")
    elif case == "not-a-chat-message":
        body = b'{"campaign_id": "c1"}'
        headers = signed(body)
    got, manager = await answer(body, headers, **kwargs)
    assert got == status
    assert manager.published == []
