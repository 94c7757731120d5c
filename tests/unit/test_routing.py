"""Routing before accept: serve here, answer with fly-replay, or relay (with a fake owner)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import pytest

from app.auth.middleware import HANDSHAKE_KEY, RELAYED_KEY
from app.auth.tokens import Identity, Rejected
from app.config import Cluster, Settings
from app.coord.base import Owner
from app.coord.relay import MOVING
from app.coord.routing import route
from app.endpoints import WebSocketEndpoint, _routed
from app.errors import CloseCode, CloseConnection
from app.services import Services
from tests.support.process import free_port

pytestmark = pytest.mark.anyio

CLUSTER = Cluster(
    redis_url="redis://127.0.0.1:1/0",
    node_id="b",
    node_url="ws://127.0.0.1:1",
    secret="s" * 32,
    routing="fly-replay",
    replay_status=307,
)
REPLAY = (b"fly-replay", b"instance=a;timeout=2s;fallback=force_self")


class FakeCoordinator:
    def __init__(self, owner: Owner | CloseConnection | None) -> None:
        self.answer = owner
        self.asked: list[str] = []

    async def owner(self, campaign_id: str) -> Owner | None:
        self.asked.append(campaign_id)
        if isinstance(self.answer, CloseConnection):
            raise self.answer
        return self.answer


class Refusals:
    def __init__(self) -> None:
        self.codes: list[int] = []

    def handshake_refused(self, code: int) -> None:
        self.codes.append(code)


def services(answer: Owner | CloseConnection | None, cluster: Cluster = CLUSTER) -> Services:
    fake = SimpleNamespace(
        settings=Settings(cluster=cluster),
        coordinator=FakeCoordinator(answer),
        metrics=Refusals(),
    )
    return cast(Services, fake)


def scope_for(
    outcome: Identity | Rejected | None,
    headers: list[tuple[bytes, bytes]] | None = None,
    campaign: str = "c1",
    **extra: Any,
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "query_string": f"campaign={campaign}&token=t0k&since=3&epoch=e".encode(),
        "headers": headers or [],
        "extensions": {},
        **extra,
    }
    if outcome is not None:
        scope[HANDSHAKE_KEY] = outcome
    return scope


ALICE = Identity("alice", {"vtt_role": "gm"}, 4e9)


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, message: Any) -> None:
        self.messages.append(dict(message))

    async def receive(self) -> Any:
        return await self.inbox.get()


async def test_nobody_else_owning_the_campaign_serves_it_here() -> None:
    sent, served = Sent(), services(None)
    assert not await route(scope_for(ALICE), sent.receive, sent.send, served, "c1")
    assert sent.messages == []
    assert cast(Any, served).coordinator.asked == ["c1"]


async def test_another_owner_on_fly_is_answered_with_a_replay_before_accept() -> None:
    sent = Sent()
    assert await route(scope_for(ALICE), sent.receive, sent.send, services(Owner("a", "")), "c1")
    assert sent.messages == [
        {
            "type": "websocket.http.response.start",
            "status": 307,
            "headers": [REPLAY, (b"content-length", b"0")],
        },
        {"type": "websocket.http.response.body", "body": b""},
    ]


async def test_a_101_replay_status_accepts_with_the_header_then_closes_1012() -> None:
    sent = Sent()
    cluster = replace(CLUSTER, replay_status=101)
    assert await route(
        scope_for(ALICE), sent.receive, sent.send, services(Owner("a", ""), cluster), "c1"
    )
    assert sent.messages == [
        {"type": "websocket.accept", "headers": [REPLAY]},
        {"type": "websocket.close", "code": 1012, "reason": MOVING},
    ]


@pytest.mark.parametrize("header", [b"fly-replay-src", b"fly-replay-failed"])
async def test_a_replayed_request_is_never_replayed_again_but_relayed(header: bytes) -> None:
    sent = Sent()
    gone = Owner("a", f"ws://127.0.0.1:{free_port()}")
    scope = scope_for(ALICE, [(header, b"instance=b")])
    assert await route(scope, sent.receive, sent.send, services(gone), "c1")
    # The relay found no owner there: accepted, then told to reconnect.
    assert sent.messages == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1012, "reason": MOVING},
    ]
    # What only the handshake needed is gone from the scope the server keeps.
    assert (scope["headers"], scope["query_string"], HANDSHAKE_KEY in scope) == ([], b"", False)


async def test_relay_mode_relays_without_a_replay() -> None:
    sent = Sent()
    gone = Owner("a", f"ws://127.0.0.1:{free_port()}")
    cluster = replace(CLUSTER, routing="relay")
    assert await route(scope_for(ALICE), sent.receive, sent.send, services(gone, cluster), "c1")
    assert [m["type"] for m in sent.messages] == ["websocket.accept", "websocket.close"]


async def test_a_coordinator_outage_propagates() -> None:
    sent = Sent()
    down = CloseConnection(CloseCode.TRY_AGAIN_LATER, "cluster coordination unavailable; retry")
    with pytest.raises(CloseConnection) as caught:
        await route(scope_for(ALICE), sent.receive, sent.send, services(down), "c1")
    assert caught.value is down


async def endpoint(scope: dict[str, Any], served: Services) -> Sent:
    sent = Sent()
    sent.inbox.put_nowait({"type": "websocket.connect"})
    scope["state"] = {"services": served}
    await WebSocketEndpoint()(scope, sent.receive, sent.send)
    return sent


async def test_the_endpoint_routes_a_valid_identity_before_accepting() -> None:
    sent = await endpoint(scope_for(ALICE), services(Owner("a", "")))
    assert sent.messages[0]["type"] == "websocket.http.response.start"
    assert len(sent.messages) == 2


async def test_the_endpoint_refuses_with_the_coordinators_code_after_accepting() -> None:
    served = services(CloseConnection(CloseCode.TRY_AGAIN_LATER, "retry"))
    sent = await endpoint(scope_for(ALICE), served)
    assert sent.messages == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1013, "reason": "retry"},
    ]
    assert cast(Any, served).metrics.codes == [1013]


@pytest.mark.parametrize(
    ("outcome", "campaign", "relayed"),
    [
        (Rejected(CloseCode.UNAUTHORIZED, "token expired"), "c1", False),
        (None, "c1", False),
        (ALICE, "bad campaign!", False),
        (ALICE, "c1", True),
    ],
)
async def test_the_endpoint_asks_nobody_for_refusals_or_relayed_handshakes(
    outcome: Identity | Rejected | None, campaign: str, relayed: bool
) -> None:
    served = services(Owner("a", ""))
    scope = scope_for(outcome, campaign=campaign)
    if relayed:
        scope[RELAYED_KEY] = True
    sent = Sent()
    scope["state"] = {"services": served}
    assert not await _routed(scope, sent.receive, sent.send, served)
    assert cast(Any, served).coordinator.asked == []
    assert sent.messages == []
