"""Which auth a configuration gets: dev keys and token roles, or the JWKS and SQL roles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.auth import build_auth
from app.auth.jwks import JwksKeySource
from app.auth.keys import DevKeys
from app.auth.roles import DevClaimRoles, SharedRoles, SqlRoles
from app.auth.tokens import TokenPolicyConfig
from app.config import ConfigError
from app.persistence.database import DriverPool, create_engine
from app.persistence.roles import DriverRoleQuery, RoleQuery
from tests.support.harness import settings_for
from tests.support.jwks_server import AZP, JwksServer
from tests.support.process import free_port

pytestmark = pytest.mark.anyio


async def test_without_a_jwks_url_auth_is_dev_keys_with_roles_from_the_token(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    engine = create_engine(None, settings.sqlite_path)
    auth = build_auth(settings, engine)
    try:
        await auth.start()
        assert isinstance(auth.keys, DevKeys)
        assert isinstance(auth.roles, DevClaimRoles)
        assert auth.keys.ready
    finally:
        await auth.close()
        await engine.dispose()


async def test_with_a_jwks_url_auth_is_the_jwks_with_sql_roles_and_the_configured_policy(
    tmp_path: Path, jwks: JwksServer
) -> None:
    settings = dataclasses.replace(
        settings_for(tmp_path),
        clerk_jwks_url=jwks.url,
        clerk_issuer="https://clerk.example",
        clerk_authorized_parties=(AZP,),
        jwt_leeway=2.0,
        jwks_ttl=42.0,
    )
    engine = create_engine(None, settings.sqlite_path)
    auth = build_auth(settings, engine)
    try:
        assert not auth.keys.ready
        await auth.start()
        assert auth.keys.ready
        assert isinstance(auth.keys, JwksKeySource)
        assert auth.keys.ttl == 42.0
        assert isinstance(auth.roles, SharedRoles)
        assert auth.shared is auth.roles
        resolver = auth.roles.resolver
        assert isinstance(resolver, SqlRoles)
        assert isinstance(resolver.query, RoleQuery), "SQLite: through the engine"
        assert (auth.roles.cache.ttl, auth.roles.cache.size) == (5.0, 10_000)
        assert auth.verifier.config == TokenPolicyConfig("https://clerk.example", (AZP,), 2.0)
    finally:
        await auth.close()
        await engine.dispose()


async def test_with_a_driver_pool_sql_roles_run_on_it_with_the_configured_membership_cache(
    tmp_path: Path, jwks: JwksServer
) -> None:
    settings = dataclasses.replace(
        settings_for(tmp_path), clerk_jwks_url=jwks.url, role_cache_ttl=2.5, role_cache_size=7
    )
    engine = create_engine(None, settings.sqlite_path)
    driver = DriverPool(f"postgresql://vtt@127.0.0.1:{free_port()}/app")  # never started
    auth = build_auth(settings, engine, driver)
    try:
        assert isinstance(auth.roles, SharedRoles)
        resolver = auth.roles.resolver
        assert isinstance(resolver, SqlRoles)
        assert isinstance(resolver.query, DriverRoleQuery)
        assert resolver.query.lookups.pool is driver
        assert (auth.roles.cache.ttl, auth.roles.cache.size) == (2.5, 7)
    finally:
        await engine.dispose()


async def test_dev_auth_is_refused_in_production_even_with_hand_built_settings(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(settings_for(tmp_path), env="production")
    engine = create_engine(None, settings.sqlite_path)
    try:
        with pytest.raises(ConfigError, match="CLERK_JWKS_URL"):
            build_auth(settings, engine)
    finally:
        await engine.dispose()
