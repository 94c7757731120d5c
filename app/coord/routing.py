"""Before accept: serve here, answer with fly-replay, or relay to the campaign's owner.

`route` runs in a clustered server only, for a handshake whose token the middleware
verified; the owner checks everything else (Origin, role) as for any client. A handshake
another machine relayed here is never routed again: it is served here or closed 1012.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from app.auth.middleware import HANDSHAKE_KEY, RELAYED_HEADER, bearer_token, handshake_outcome
from app.auth.tokens import Identity
from app.connection import SOCKET_EXTENSION
from app.coord.base import Owner
from app.coord.relay import MOVING, RELAY_HEADER, RelayMetrics, relay, sign_identity
from app.errors import CloseCode
from app.services import Services

# Fly's proxy replays the upgrade to the owner, waits this long for it, else falls back here.
REPLAY = "instance={node};timeout=2s;fallback=force_self"
# The headers Fly's proxy adds to a replayed request, and to one whose replay failed.
REPLAYED = ("fly-replay-src", "fly-replay-failed")
# The owner's frames to a relayed client: state.sync may be several MB (the client's own
# frames are bounded by the owner, which refuses the over-large ones itself).
RELAY_MAX_MESSAGE = 64 * 1024 * 1024
# What of the client's query the owner gets: never its token.
FORWARDED_QUERY = ("campaign", "since", "epoch")


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the owner needs of the client's request: its query (no token), its Origin, and
    its token (handed over only where no cluster secret signs the identity instead)."""

    query: dict[str, str]
    origin: str | None
    token: str | None = None


def handshake_of(scope: Scope) -> Handshake:
    """The query and Origin of `scope`, captured before the endpoint clears them."""
    query = QueryParams(scope["query_string"])
    kept = {name: query[name] for name in FORWARDED_QUERY if name in query}
    return Handshake(kept, Headers(scope=scope).get("origin"), bearer_token(scope))


async def route(
    scope: Scope, receive: Receive, send: Send, services: Services, campaign_id: str
) -> bool:
    """Reach the campaign's owner when it is another machine: True when the connection was
    answered (replayed or relayed, and is over); False: serve it here.

    Called before `websocket.accept`. CloseConnection from the coordinator (Redis away)
    propagates: the caller accepts and closes with it.
    """
    cluster = services.settings.cluster
    identity = handshake_outcome(scope)
    if cluster is None or not isinstance(identity, Identity):
        return False
    owner = await services.coordinator.owner(campaign_id)
    if owner is None:
        return False
    headers = Headers(scope=scope)
    if cluster.routing == "fly-replay" and not any(name in headers for name in REPLAYED):
        await _replay(send, owner, cluster.replay_status)
        return True
    handshake = handshake_of(scope)
    await relay_to(owner, handshake, receive, send, services, campaign_id, identity, scope=scope)
    return True


async def _replay(send: Send, owner: Owner, status: int) -> None:
    """Answer so that Fly's proxy sends the same upgrade to the owner."""
    replay = (b"fly-replay", REPLAY.format(node=owner.node).encode())
    if status == 101:
        await send({"type": "websocket.accept", "headers": [replay]})
        await send(
            {"type": "websocket.close", "code": int(CloseCode.SERVICE_RESTART), "reason": MOVING}
        )
        return
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [replay, (b"content-length", b"0")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b""})


async def relay_to(
    owner: Owner,
    handshake: Handshake,
    receive: Receive,
    send: Send,
    services: Services,
    campaign_id: str,
    identity: Identity,
    accepted: bool = False,
    scope: Scope | None = None,
) -> None:
    """Relay the client to `owner` with its identity (signed, or its token), until either
    side ends.

    `accepted`: the endpoint accepted already (a join found the campaign claimed meanwhile).
    `scope`, when given, is emptied of what only the handshake needed (the relay lasts).
    """
    cluster = services.settings.cluster
    assert cluster is not None, "only a clustered server relays"
    if cluster.secret is not None:
        signed = sign_identity(cluster.secret, identity, campaign_id, cluster.node_id, time.time())
        upstream = [(RELAY_HEADER, signed)]
    else:
        # The owner verifies the client's own token, as it would the client's.
        upstream = [(RELAYED_HEADER.decode(), "1"), ("authorization", f"Bearer {handshake.token}")]
    if handshake.origin is not None:
        upstream.append(("origin", handshake.origin))
    if scope is not None:
        scope.pop(HANDSHAKE_KEY, None)
        (scope.get("extensions") or {}).pop(SOCKET_EXTENSION, None)
        scope["headers"] = []
        scope["query_string"] = b""
    metrics = services.metrics
    counted = metrics if isinstance(metrics, RelayMetrics) else None
    await relay(
        receive,
        send,
        owner,
        upstream,
        handshake.query,
        RELAY_MAX_MESSAGE,
        counted,
        accepted=accepted,
    )
