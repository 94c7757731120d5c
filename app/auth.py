"""Who is connecting: signing keys, RS256 JWT verification, and campaign roles.

Only this module sees python-jose; its errors become CloseConnection(4401) here.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.errors import CloseCode, CloseConnection
from app.table import Role

ALGORITHM = "RS256"
DEV_ISSUER = "vtt-dev"
DEV_ROLE_CLAIM = "vtt_role"
DEV_CAMPAIGN_CLAIM = "vtt_campaign"


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token's subject and claims."""

    user_id: str
    claims: Mapping[str, Any]
    expires_at: float


def unauthorized(reason: str) -> CloseConnection:
    """The token is missing or not acceptable: the client should get a fresh one."""
    return CloseConnection(CloseCode.UNAUTHORIZED, reason)


def keys_unavailable(reason: str) -> CloseConnection:
    """No signing key can be had right now: the client should retry later."""
    return CloseConnection(CloseCode.TRY_AGAIN_LATER, reason)


class KeySource(Protocol):
    """Where verification keys come from (the dev key pair, or Clerk's JWKS)."""

    async def key_for(self, kid: str | None) -> Key:
        """The key for `kid`; CloseConnection 4401 when unknown, 1013 when none is available."""
        ...

    @property
    def ready(self) -> bool:
        """Whether any key is loaded."""
        ...


class RoleResolver(Protocol):
    """Where a user's campaign role comes from."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role, or CloseConnection 4403 (not a member) / 1013 (cannot tell now)."""
        ...


@dataclass(frozen=True, slots=True)
class TokenPolicyConfig:
    """What a token must carry besides a good signature."""

    issuer: str | None
    authorized_parties: tuple[str, ...] = ()
    leeway: float = 5.0


class TokenVerifier:
    """Verifies RS256 JWTs: key chosen by `kid`, algorithm pinned, exp and sub required."""

    def __init__(self, keys: KeySource, config: TokenPolicyConfig) -> None:
        self.keys = keys
        self.config = config

    async def verify(self, token: str | None) -> Identity:
        """The token's identity, or CloseConnection (4401, or 1013 when keys are unavailable)."""
        if not token:
            raise unauthorized("missing token")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise unauthorized("unreadable token") from None
        if header.get("alg") != ALGORITHM:
            raise unauthorized("token algorithm must be RS256")
        kid = header.get("kid")
        key = await self.keys.key_for(kid if isinstance(kid, str) else None)
        options = {
            "require_exp": True,
            "require_sub": True,
            "verify_aud": False,
            "verify_iss": self.config.issuer is not None,
            "leeway": self.config.leeway,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], issuer=self.config.issuer, options=options
            )
        except JOSEError as exc:
            raise unauthorized(_describe(exc)) from None
        sub, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise unauthorized("token subject missing or malformed")
        if not isinstance(exp, int | float):
            raise unauthorized("token expiry missing")
        parties = self.config.authorized_parties
        if parties and claims.get("azp") not in parties:
            raise unauthorized("token authorized party not allowed")
        return Identity(user_id=sub, claims=claims, expires_at=float(exp))


def _describe(exc: JOSEError) -> str:
    text = str(exc).lower()
    for needle, reason in (
        ("expired", "token expired"),
        ("not yet valid", "token not yet valid"),
        ("issuer", "token issuer not accepted"),
        ("signature", "token signature invalid"),
    ):
        if needle in text:
            return reason
    return "token invalid"


def check_cryptography_backend() -> None:
    """Refuse to run unless python-jose verifies RSA with the `cryptography` backend."""
    from jose.backends import RSAKey

    if "cryptography" not in RSAKey.__module__:
        raise RuntimeError(
            f"python-jose is using {RSAKey.__module__}; install python-jose[cryptography]"
        )


# --- dev auth: a local key pair whose public half is the key set -------------------------------


class DevKeys:
    """A local RSA key pair kept in a directory outside git, created on first use."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        private_path = self.directory / "private.pem"
        if not private_path.exists():
            self._generate(private_path)
        pem = private_path.read_bytes()
        self.kid = (self.directory / "kid").read_text(encoding="utf-8").strip()
        self._private_pem = pem
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise RuntimeError(f"{private_path} is not an RSA private key")
        public_pem = loaded.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._public = jwk.construct(public_pem.decode(), ALGORITHM)

    def _generate(self, private_path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = private_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        (self.directory / "kid").write_text(f"dev-{uuid.uuid4().hex[:12]}\n", encoding="utf-8")
        (self.directory / ".gitignore").write_text("*\n", encoding="utf-8")
        tmp.replace(private_path)

    @property
    def ready(self) -> bool:
        """Dev keys are always loaded."""
        return True

    async def key_for(self, kid: str | None) -> Key:
        """The dev public key, when the token names it."""
        if kid != self.kid:
            raise unauthorized("unknown signing key")
        return self._public

    def mint(
        self,
        user_id: str,
        role: Role = "player",
        *,
        campaign: str | None = None,
        ttl: float = 3600,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed dev token for `user_id` with `role` (in `campaign` only, when given)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id,
            "iss": DEV_ISSUER,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            DEV_ROLE_CLAIM: role,
        }
        if campaign is not None:
            claims[DEV_CAMPAIGN_CLAIM] = campaign
        claims.update(extra or {})
        token: str = jwt.encode(
            claims, self._private_pem.decode(), algorithm=ALGORITHM, headers={"kid": self.kid}
        )
        return token


class DevClaimRoles:
    """Dev auth's roles: read from the token's own claims (never used in production)."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role the dev token carries, if it is for this campaign."""
        scoped = identity.claims.get(DEV_CAMPAIGN_CLAIM)
        if scoped is not None and scoped != campaign_id:
            raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
        role = identity.claims.get(DEV_ROLE_CLAIM)
        if role == "gm":
            return "gm"
        if role == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "token carries no campaign role")


@dataclass(slots=True)
class Auth:
    """The key source, verifier and role resolver one app uses, chosen by the settings."""

    keys: KeySource
    verifier: TokenVerifier
    roles: RoleResolver

    async def close(self) -> None:
        """Release what the key source and resolver hold."""


def build_auth(settings: Settings, engine: AsyncEngine) -> Auth:
    """Dev auth (local key pair, roles from the token) or production auth, per the settings."""
    del engine
    keys = DevKeys(settings.dev_key_dir)
    policy = TokenPolicyConfig(issuer=DEV_ISSUER, leeway=settings.jwt_leeway)
    return Auth(keys, TokenVerifier(keys, policy), DevClaimRoles())


class AuthMiddleware:
    """Verifies the token of every /ws handshake and puts the outcome in `scope["auth"]`.

    The outcome is an Identity, or the CloseConnection to close with: browsers cannot read an
    HTTP status from a failed upgrade, so the endpoint accepts and then closes with the code.
    The token comes from `?token=` or an `Authorization: Bearer` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate WebSocket scopes; pass everything else through untouched."""
        if scope["type"] == "websocket":
            verifier: TokenVerifier = scope["state"]["verifier"]
            try:
                scope["auth"] = await verifier.verify(bearer_token(scope))
            except CloseConnection as failure:
                scope["auth"] = failure
        await self.app(scope, receive, send)


def bearer_token(scope: Scope) -> str | None:
    """The token of a request: `?token=` first, else `Authorization: Bearer`."""
    token = QueryParams(scope["query_string"]).get("token")
    if token:
        return token
    header = Headers(scope=scope).get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
