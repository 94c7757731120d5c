"""The ASGI application: routes, auth middleware and the lifespan that builds the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from app.auth import AuthMiddleware
from app.broadcast import BroadcastEndpoint
from app.config import Settings
from app.coord.forward import CHAT_PATH, ClusterChatEndpoint
from app.endpoints import WebSocketEndpoint, health, metrics, ready, root
from app.logs import install_redaction
from app.services import Services
from app.transport.handshake import GATE_KEY


def create_app(settings: Settings | None = None) -> Starlette:
    """A fresh app; settings are read from the environment at startup when not given."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        install_redaction()
        services = await Services.build(settings or Settings.from_env())
        cluster = services.settings.cluster
        try:
            yield {
                "services": services,
                "verifier": services.verifier,
                # What a relayed handshake's signed identity is checked with (None: alone).
                "relay_secret": None if cluster is None else cluster.secret,
                GATE_KEY: services.handshakes,
            }
        finally:
            await services.close()

    routes: list[BaseRoute] = [
        Route("/", root),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        # An ASGI app gets every method: it answers 404 (no secret) or 405 (not POST) itself.
        Route("/internal/broadcast", BroadcastEndpoint()),
        # Clustered only (404 otherwise): chat another machine stored, for the owner here.
        Route(CHAT_PATH, ClusterChatEndpoint()),
        WebSocketRoute("/ws", WebSocketEndpoint()),
    ]
    # The demo table is for development: the production image does not ship app.dev, and
    # its routes also answer 404 by themselves in production, since settings may only be
    # read at startup.
    if settings is None or not settings.production:
        routes += _dev_routes()
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthMiddleware)],
        lifespan=lifespan,
    )


def _dev_routes() -> list[BaseRoute]:
    try:
        from app.dev.demo import demo_routes
    except ModuleNotFoundError:
        return []
    return demo_routes()


app = create_app()
