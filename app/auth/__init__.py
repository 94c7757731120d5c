"""Who is connecting, behind one facade: `Auth.admit` at the handshake, `Auth.refresh` later.

tokens.py       Identity, TokenVerifier (RS256, claims checked by hand), Rejected
keys.py         the KeySource seam and dev auth's local key pair (DevKeys)
jwks.py         Clerk's key set, fetched with httpx and kept fresh
roles.py        the RoleResolver seam: SqlRoles (VTT_ROLE_SQL) and DevClaimRoles; SharedRoles:
                single-flight lookups and the membership cache handshakes may answer from
middleware.py   verifies each /ws handshake's token before the endpoint runs

Only this package sees python-jose; the role query's database errors are translated in
`app.persistence.lookups`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.types import Scope

from app.auth.jwks import JwksKeySource
from app.auth.keys import DEV_ISSUER, DevKeys, KeySource
from app.auth.middleware import AuthMiddleware, handshake_outcome
from app.auth.roles import DevClaimRoles, MembershipCache, RoleResolver, SharedRoles, SqlRoles
from app.auth.tokens import (
    Identity,
    Rejected,
    TokenPolicyConfig,
    TokenVerifier,
    check_cryptography_backend,
)
from app.config import ConfigError, Settings
from app.errors import CloseCode, CloseConnection
from app.model import Actor, Role
from app.persistence.database import DriverPool
from app.persistence.roles import DriverRoleQuery, RoleQuery, RoleSource

__all__ = [
    "Auth",
    "AuthMiddleware",
    "DevKeys",
    "Identity",
    "KeySource",
    "RoleResolver",
    "TokenVerifier",
    "build_auth",
    "check_cryptography_backend",
]

CAMPAIGN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(slots=True)
class Auth:
    """The key source, verifier and role resolver one app uses, chosen by the settings.

    `roles` answers from the database every time (auth.refresh asks it); `shared`, when the
    roles come from SQL, is the same resolver behind the membership cache, for handshakes.
    """

    keys: KeySource
    verifier: TokenVerifier
    roles: RoleResolver
    allowed_origins: tuple[str, ...] = ()
    shared: SharedRoles | None = None

    async def start(self) -> None:
        """Start loading signing keys; returns promptly even when the key set is unreachable."""
        await self.keys.start()

    async def close(self) -> None:
        """Stop the key refresh and release its HTTP client."""
        await self.keys.close()

    async def admit(self, scope: Scope, campaign_id: str) -> tuple[Identity, Actor]:
        """Who may join `campaign_id` on this handshake, or CloseConnection with the refusal.

        The checks run in the order of their close codes' precedence: the campaign id (4400),
        the token the middleware verified (4401, 1013), the Origin (4403), the role (4403).
        """
        if not CAMPAIGN_ID.fullmatch(campaign_id):
            raise CloseConnection(
                CloseCode.BAD_REQUEST, "campaign must be 1-128 characters of [A-Za-z0-9_-]"
            )
        outcome = handshake_outcome(scope)
        if isinstance(outcome, Rejected):
            raise CloseConnection(outcome.code, outcome.reason)
        if outcome is None:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "missing token")
        origin = Headers(scope=scope).get("origin")
        allowed = self.allowed_origins
        if allowed and origin is not None and origin not in allowed:
            raise CloseConnection(CloseCode.FORBIDDEN, "origin not allowed")
        shared = self.shared
        if shared is not None:
            role = await shared.admitted(campaign_id, outcome)
        else:
            role = await self.roles.role(campaign_id, outcome)
        return outcome, Actor(user_id=outcome.user_id, role=role)

    async def refresh(self, token: str, current: Actor, campaign_id: str) -> Identity:
        """A fresh token's identity for the same user and role, or CloseConnection.

        Another user's token, or a role that changed since the handshake, is 4401; a user who
        is no longer a member is 4403; key-set or database outages are 1013. The role is the
        database's answer now, never a cached one; the cache learns it.
        """
        identity = await self.verifier.verify(token)
        if identity.user_id != current.user_id:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "token is for another user")
        role: Role = await self.roles.role(campaign_id, identity)
        if role != current.role:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "campaign role changed; reconnect")
        return identity


def build_auth(settings: Settings, engine: AsyncEngine, driver: DriverPool | None = None) -> Auth:
    """Dev auth (local key pair, roles from the token) or Clerk's JWKS with roles from SQL.

    With `driver` (Postgres), the role query runs on it; without, through `engine`.
    """
    origins = settings.allowed_origins
    if settings.clerk_jwks_url is None:
        if settings.production:
            raise ConfigError("dev auth is never used in production: set CLERK_JWKS_URL")
        dev_keys = DevKeys(settings.dev_key_dir)
        policy = TokenPolicyConfig(issuer=DEV_ISSUER, leeway=settings.jwt_leeway)
        return Auth(dev_keys, TokenVerifier(dev_keys, policy), DevClaimRoles(), origins)
    keys = JwksKeySource(settings.clerk_jwks_url, settings.jwks_ttl)
    policy = TokenPolicyConfig(
        issuer=settings.clerk_issuer,
        authorized_parties=settings.clerk_authorized_parties,
        leeway=settings.jwt_leeway,
    )
    query: RoleSource = (
        RoleQuery(engine, settings.role_sql)
        if driver is None
        else DriverRoleQuery(driver, settings.role_sql)
    )
    cache = MembershipCache(settings.role_cache_ttl, settings.role_cache_size)
    shared = SharedRoles(SqlRoles(query), cache)
    return Auth(keys, TokenVerifier(keys, policy), shared, origins, shared)
