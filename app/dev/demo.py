"""The development demo table: the static page at /demo and the dev token endpoint it uses.

Development only: mounted when not in production, and every request checks again, because
/demo/token hands out GM tokens to anyone who can reach it (from this machine only).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from app.auth import DevKeys
from app.services import Services

STATIC_DIR: Final = Path(__file__).resolve().parent / "static" / "demo"
USER_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CAMPAIGN_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
TOKEN_TTL_SECONDS: Final = 3600.0


def _services(scope: Scope) -> Services:
    services: Services = scope["state"]["services"]
    return services


def _available(scope: Scope) -> bool:
    return not _services(scope).settings.production


def _from_this_machine(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


async def demo_token(request: Request) -> Response:
    """A dev token for `?user=&role=&campaign=`, for the demo page (dev auth, loopback only)."""
    keys = _services(request.scope).keys
    if not _available(request.scope) or not isinstance(keys, DevKeys):
        return JSONResponse({"error": "the demo needs development mode with dev auth"}, 404)
    if not _from_this_machine(request):
        return JSONResponse({"error": "demo tokens are handed out to this machine only"}, 403)
    user = request.query_params.get("user", "")
    role = request.query_params.get("role", "player")
    campaign = request.query_params.get("campaign", "")
    if not USER_ID.match(user) or not CAMPAIGN_ID.match(campaign) or role not in {"gm", "player"}:
        return JSONResponse(
            {"error": "user and campaign: 1-128 chars of [A-Za-z0-9_-]; role: gm or player"}, 400
        )
    token = keys.mint(
        user, "gm" if role == "gm" else "player", campaign=campaign, ttl=TOKEN_TTL_SECONDS
    )
    return JSONResponse({"token": token}, headers={"Cache-Control": "no-store"})


class DemoFiles:
    """The demo's static files, answering 404 in production even if mounted there by mistake."""

    def __init__(self) -> None:
        self.files = StaticFiles(directory=STATIC_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a file of app/dev/static/demo/."""
        if not _available(scope):
            await JSONResponse({"error": "not found"}, 404)(scope, receive, send)
            return
        await self.files(scope, receive, send)


def demo_routes() -> list[BaseRoute]:
    """The /demo routes: the token endpoint, then the page and its scripts."""
    return [
        Route("/demo/token", demo_token),
        Mount("/demo", app=DemoFiles()),
    ]
