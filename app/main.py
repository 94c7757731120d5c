"""The ASGI application: routes, auth middleware and the lifespan that builds the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from app.auth import AuthMiddleware
from app.config import Settings
from app.directsend import RawSendMiddleware
from app.endpoints import WebSocketEndpoint, health, metrics, ready
from app.logs import install_redaction
from app.services import Services


def create_app(settings: Settings | None = None) -> Starlette:
    """A fresh app; settings are read from the environment at startup when not given."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        install_redaction()
        services = await Services.build(settings or Settings.from_env())
        try:
            yield {"services": services, "verifier": services.verifier}
        finally:
            await services.close()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
            WebSocketRoute("/ws", WebSocketEndpoint()),
        ],
        middleware=[Middleware(RawSendMiddleware), Middleware(AuthMiddleware)],
        lifespan=lifespan,
    )


app = create_app()
