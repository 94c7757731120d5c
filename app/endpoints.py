"""HTTP and WebSocket endpoints: /health, /ready, /metrics and /ws (handshake -> join -> run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.auth import CAMPAIGN_ID, Identity
from app.auth.middleware import HANDSHAKE_KEY, RELAYED_KEY, handshake_outcome
from app.connection import SOCKET_EXTENSION, Connection, FrameSocket
from app.coord.base import Owned, Owner
from app.errors import CloseCode, CloseConnection
from app.persistence.chat import ChatStore
from app.persistence.store import StoreUnavailable
from app.services import Services
from app.session import Session

# Why a connection whose campaign moved to another machine is closed, to reconnect there.
MOVING = "campaign moving; reconnect"

if TYPE_CHECKING:
    from app.coord.routing import Handshake

log = logging.getLogger("vtt.endpoints")


def services_of(scope: Scope) -> Services:
    """The services the lifespan built, as every request's scope carries them."""
    services: Services = scope["state"]["services"]
    return services


async def root(_: Request) -> Response:
    """The service's name, where the Go service answered (uptime probes may point here)."""
    return PlainTextResponse("vtt-realtime\n")


async def health(request: Request) -> Response:
    """Liveness with counts only: never a campaign id or a user id.

    `total_clients` is the Go service's name for `clients`, kept for its monitors.
    """
    manager = services_of(request.scope).manager
    clients = sum(len(session.members) for session in manager.sessions.values())
    return JSONResponse(
        {
            "status": "ok",
            "sessions": len(manager.sessions),
            "clients": clients,
            "total_clients": clients,
        }
    )


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this app instance."""
    return await services_of(request.scope).metrics.endpoint(request)


async def ready(request: Request) -> Response:
    """Readiness: the database answers, signing keys are loaded and (clustered) the lease held.

    Chat disabled (chat_messages unusable) leaves the server ready, since the rest of the
    table works; the answer then says why under `chat`.
    """
    services = services_of(request.scope)
    if services.manager.closing:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not services.keys.ready:
        return JSONResponse({"status": "not ready", "reason": "signing keys not loaded"}, 503)
    try:
        await asyncio.wait_for(services.store.ping(), timeout=5.0)
    except (StoreUnavailable, TimeoutError):
        return JSONResponse(
            {"status": "not ready", "reason": "database unavailable or not migrated"}, 503
        )
    answer = {"status": "ready"}
    if services.coordinator.clustered:
        problem = await services.coordinator.problem()
        if problem is not None:
            return JSONResponse({"status": "not ready", "reason": "redis", "redis": problem}, 503)
        answer["redis"] = "ok"
    unusable = services.chat_store.unusable_reason
    if unusable is not None:
        answer["chat"] = f"disabled: {unusable}"
    return JSONResponse(answer)


class WebSocketEndpoint:
    """The /ws endpoint as a plain ASGI app, so the hot path skips per-message wrappers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the handshake checks, accept, join the campaign, then read until disconnect.

        In a cluster, a campaign another machine owns is reached before accepting: through
        Fly's replay or a relay (`app.coord.routing`); then the connection is over here.
        """
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        services = services_of(scope)
        if services.settings.cluster is not None and await _routed(scope, receive, send, services):
            return
        services.metrics.open_connections.inc()
        try:
            await self._run(scope, receive, send, services)
        finally:
            services.metrics.open_connections.dec()

    async def _run(self, scope: Scope, receive: Receive, send: Send, services: Services) -> None:
        joined = await self._join(scope, receive, send, services)
        if joined is not None:
            connection, session = joined
            await connection.run(receive, session, services)

    async def _join(
        self, scope: Scope, receive: Receive, send: Send, services: Services
    ) -> tuple[Connection, Session] | None:
        """Admit, accept and join the connection, or accept it and close it with the refusal's
        code (then None; None too when the client left before it was accepted).

        The upgrade is accepted once the checks passed: a campaign already live then greets
        in the turn that accepted, so its state goes out with the 101 (app/transport/adapter.py).
        What only the handshake needs (query, claims) stays in this frame, which ends here:
        the connection then keeps the essentials for as long as it lasts. A campaign another
        machine claimed meanwhile (Owned) is relayed there, after the refusal's clean-up.
        """
        query = QueryParams(scope["query_string"])
        campaign_id = query.get("campaign", "")
        moved: tuple[Owner, Handshake, Identity] | None = None
        accepted = False
        try:
            try:
                identity, actor = await services.auth.admit(scope, campaign_id)
                username = await _username(services.chat_store, identity.user_id)
                try:
                    await send({"type": "websocket.accept"})
                except OSError:
                    # The client went away during the checks (uvicorn's ClientDisconnected).
                    return None
                accepted = True
                kept = Identity(identity.user_id, {}, identity.expires_at)
                connection = Connection(
                    send,
                    _socket_of(scope),
                    actor,
                    kept,
                    campaign_id,
                    services.settings,
                    services.metrics,
                    username,
                )
                since, epoch = _resume_point(query)
                session, _ = await services.manager.join(campaign_id, connection, since, epoch)
            except Owned as owned:
                # Relayed here already, or alone: never relayed on (no loops between owners).
                if services.settings.cluster is None or scope.get(RELAYED_KEY):
                    raise CloseConnection(CloseCode.SERVICE_RESTART, MOVING) from None
                from app.coord.routing import handshake_of

                moved = (owned.owner, handshake_of(scope), identity)
        except CloseConnection as refusal:
            services.metrics.handshake_refused(refusal.code)
            log.info(
                "connection refused",
                extra={
                    "campaign_id": campaign_id[:128],
                    "code": int(refusal.code),
                    "reason": refusal.reason,
                },
            )
            # Gone already (uvicorn's ClientDisconnected): nobody to tell.
            with contextlib.suppress(OSError):
                if not accepted:
                    # A refusal is a close code: browsers cannot read an upgrade's HTTP status.
                    await send({"type": "websocket.accept"})
                await send(
                    {"type": "websocket.close", "code": int(refusal.code), "reason": refusal.reason}
                )
            return None
        finally:
            # Nothing reads these after the handshake; a connection that lasts hours need not
            # hold its claims, its request headers (kilobytes each) or its token.
            scope.pop(HANDSHAKE_KEY, None)
            scope["headers"] = []
            scope["query_string"] = b""
        if moved is not None:
            from app.coord.routing import relay_to

            owner, handshake, identity = moved
            await relay_to(
                owner, handshake, receive, send, services, campaign_id, identity, accepted=True
            )
            return None
        return connection, session


async def _routed(scope: Scope, receive: Receive, send: Send, services: Services) -> bool:
    """In a cluster, before accepting: True when the connection was answered elsewhere
    (replayed or relayed to the campaign's owner, or refused because nobody can tell who
    owns it); False: go on here.

    Malformed campaigns and refused tokens go on here, to today's accept-then-close; so does
    a connection another machine relayed here (the owner never routes it on).
    """
    campaign_id = QueryParams(scope["query_string"]).get("campaign", "")
    if (
        not CAMPAIGN_ID.fullmatch(campaign_id)
        or not isinstance(handshake_outcome(scope), Identity)
        or scope.get(RELAYED_KEY)
    ):
        return False
    from app.coord.routing import route

    try:
        return await route(scope, receive, send, services, campaign_id)
    except CloseConnection as refusal:
        services.metrics.handshake_refused(refusal.code)
        log.info(
            "connection refused",
            extra={"campaign_id": campaign_id, "code": int(refusal.code), "reason": refusal.reason},
        )
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": int(refusal.code), "reason": refusal.reason})
        return True


async def _username(store: ChatStore, user_id: str) -> str | None:
    """The user's display name for chat, looked up once per connection; None when unknown."""
    try:
        return await store.username(user_id)
    except StoreUnavailable:
        # Chat then shows the user id alone; the join goes on.
        return None


def _socket_of(scope: Scope) -> FrameSocket | None:
    """The FrameSocket the server published for this connection, if any."""
    # Taken out: the server keeps the scope, and with it the socket, for the connection's life.
    extensions = scope.get("extensions") or {}
    socket: FrameSocket | None = extensions.pop(SOCKET_EXTENSION, None)
    return socket


def _resume_point(query: QueryParams) -> tuple[int | None, str | None]:
    """`since` and `epoch` from the URL; anything malformed means a full state.sync."""
    since, epoch = query.get("since"), query.get("epoch")
    if since is None or epoch is None or not since.isdigit() or len(since) > 18:
        return None, None
    return int(since), epoch
