"""Fixtures of the server tier: servers shared by a module's tests, and a JWKS key source."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.auth.jwks import JwksKeySource
from app.config import Limits
from tests.support.harness import RunningServer, serve, settings_for
from tests.support.jwks_server import JwksServer


@pytest.fixture(scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A default server; each test uses campaigns of its own."""
    async with serve(settings_for(tmp_path_factory.mktemp("shared"))) as running:
        yield running


@pytest.fixture(scope="module")
async def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A server with tiny collection limits and an image URL prefix."""
    limits = Limits(
        max_tokens=2,
        max_fog_zones=2,
        max_maps=2,
        max_map_points=4,
        image_url_prefixes=("https://cdn.example/",),
    )
    async with serve(settings_for(tmp_path_factory.mktemp("limited"), limits=limits)) as running:
        yield running


@pytest.fixture
async def source(jwks: JwksServer) -> AsyncIterator[JwksKeySource]:
    """A started key source reading `jwks`."""
    keys = JwksKeySource(jwks.url, ttl=300)
    await keys.start()
    yield keys
    await keys.close()
