"""The demo's routes in-process: loopback-only tokens, and 404 in production even when mounted."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from jose import jwt
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import DevKeys
from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.config import Settings
from app.dev.demo import TOKEN_TTL_SECONDS, demo_routes
from tests.support.fakes import StaticKeys, k1_public
from tests.support.harness import TIMEOUT

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.1", 50000)
TOKEN = "/demo/token?user=alice&role=gm&campaign=demo"


def demo(keys: object, *, env: str = "test", client: tuple[str, int] | None = LOOPBACK) -> ASGIApp:
    """The demo routes, seeing `keys` and `env` as the lifespan's services, and `client`."""
    services = SimpleNamespace(settings=Settings(env=env), keys=keys)
    router = Router(routes=demo_routes())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await router({**scope, "state": {"services": services}, "client": client}, receive, send)

    return app


async def get(app: ASGIApp, path: str) -> httpx.Response:
    """GET `path` from `app`, in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        return await client.get(path, timeout=TIMEOUT)


async def test_the_token_endpoint_mints_a_campaign_scoped_dev_token(tmp_path: Path) -> None:
    keys = DevKeys(tmp_path / "keys")

    response = await get(demo(keys), "/demo/token?user=alice&campaign=demo")

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.get_unverified_claims(response.json()["token"])
    assert (claims["sub"], claims[DEV_ROLE_CLAIM], claims[DEV_CAMPAIGN_CLAIM]) == (
        "alice",
        "player",
        "demo",
    )
    assert claims["exp"] - claims["iat"] == TOKEN_TTL_SECONDS


@pytest.mark.parametrize(
    "query",
    ["user=alice&role=admin&campaign=demo", "user=alice", "campaign=demo", "user=a.b&campaign=c"],
    ids=["unknown role", "no campaign", "no user", "bad user"],
)
async def test_the_token_endpoint_refuses_bad_parameters_with_400(
    tmp_path: Path, query: str
) -> None:
    response = await get(demo(DevKeys(tmp_path / "keys")), f"/demo/token?{query}")

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("client", "status"),
    [
        (LOOPBACK, 200),
        (("::1", 50000), 200),
        (("::ffff:127.0.0.1", 50000), 200),
        (("::ffff:203.0.113.9", 50000), 403),
        (("203.0.113.9", 50000), 403),
        (("testclient", 50000), 403),
        (None, 403),
    ],
    ids=[
        "ipv4 loopback",
        "ipv6 loopback",
        "mapped loopback",
        "mapped remote",
        "remote",
        "a name",
        "none",
    ],
)
async def test_tokens_are_handed_out_to_this_machine_only(
    tmp_path: Path, client: tuple[str, int] | None, status: int
) -> None:
    response = await get(demo(DevKeys(tmp_path / "keys"), client=client), TOKEN)

    assert response.status_code == status


async def test_without_dev_keys_the_token_endpoint_answers_404() -> None:
    response = await get(demo(StaticKeys(k1_public())), TOKEN)

    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/demo/", "/demo/demo.js", TOKEN])
async def test_in_production_every_demo_route_answers_404_even_when_mounted(
    tmp_path: Path, path: str
) -> None:
    assert (await get(demo(DevKeys(tmp_path / "keys")), path)).status_code == 200
    response = await get(demo(DevKeys(tmp_path / "keys"), env="production"), path)

    assert response.status_code == 404
