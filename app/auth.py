"""Who is connecting: signing keys, RS256 JWT verification, and campaign roles.

Only this module and app/jwks.py (Clerk's key set) see python-jose; its errors become
CloseConnection(4401) here. Only SqlRoles sees the role query's database errors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jws, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import ConfigError, Settings
from app.errors import CloseCode, CloseConnection
from app.jwks import ALGORITHM, JwksKeySource
from app.table import Role

log = logging.getLogger("vtt.auth")

# Clerk session tokens are 1-2 KiB; a far longer one is refused before any parsing.
MAX_TOKEN_CHARS = 16 * 1024
MAX_SUBJECT_CHARS = 128
ROLE_PARAMETERS = frozenset({"campaign_id", "user_id"})
# SQLSTATE classes: 22 is a data exception (the id cannot even be compared: not a member);
# these mean the database cannot answer right now (connection, rollback, resources,
# object state, operator intervention, system error).
_DATA_EXCEPTION = "22"
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
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


class KeySource(Protocol):
    """Where verification keys come from (the dev key pair, or Clerk's JWKS)."""

    async def key_for(self, kid: str | None) -> Key:
        """The key for `kid`; CloseConnection 4401 when unknown, 1013 when none is available."""
        ...

    @property
    def ready(self) -> bool:
        """Whether any key is loaded."""
        ...

    async def start(self) -> None:
        """Begin loading and refreshing keys (never waits long for them)."""
        ...

    async def close(self) -> None:
        """Stop refreshing and release what the source holds."""
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
        if len(token) > MAX_TOKEN_CHARS:
            raise unauthorized("token too large")
        try:
            header = jws.get_unverified_header(token)
        except JOSEError:
            raise unauthorized("unreadable token") from None
        # Pinned before any key is looked at: `none`, HS256 keyed with the public key, and
        # every other algorithm are refused whatever the key set holds.
        if header.get("alg") != ALGORITHM:
            raise unauthorized("token algorithm must be RS256")
        kid = header.get("kid")
        # One key, chosen by kid: python-jose would otherwise try every key it is given.
        key = await self.keys.key_for(kid if isinstance(kid, str) else None)
        try:
            payload = jws.verify(token, key, algorithms=[ALGORITHM])
            claims = json.loads(payload)
        except (JOSEError, ValueError):
            raise unauthorized("token signature invalid") from None
        if not isinstance(claims, dict):
            raise unauthorized("token claims are not an object")
        return self._identity(claims, time.time())

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        """Check the claims ourselves: python-jose accepts a token without exp unless told."""
        leeway = self.config.leeway
        exp = _timestamp(claims, "exp")
        if exp is None:
            raise unauthorized("token expiry missing")
        if now >= exp + leeway:
            raise unauthorized("token expired")
        nbf = _timestamp(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise unauthorized("token not yet valid")
        iat = _timestamp(claims, "iat")
        if iat is not None and now + leeway < iat:
            raise unauthorized("token issued in the future")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS:
            raise unauthorized("token subject missing or malformed")
        if self.config.issuer is not None and claims.get("iss") != self.config.issuer:
            raise unauthorized("token issuer not accepted")
        parties = self.config.authorized_parties
        if parties and claims.get("azp") not in parties:
            raise unauthorized("token authorized party not allowed")
        return Identity(user_id=sub, claims=claims, expires_at=exp)


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, None when absent; anything but a finite number is refused."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise unauthorized(f"token {name} malformed")
    return float(value)


def check_cryptography_backend() -> None:
    """Refuse to run unless python-jose verifies RS256 with the `cryptography` backend."""
    try:
        from jose.backends.cryptography_backend import CryptographyRSAKey
    except ImportError:
        raise RuntimeError(
            "python-jose cannot load its cryptography backend; install python-jose[cryptography]"
        ) from None
    used = jwk.get_key(ALGORITHM)
    if used is not CryptographyRSAKey:
        where = "nothing" if used is None else f"{used.__module__}.{used.__qualname__}"
        raise RuntimeError(
            f"python-jose verifies RS256 with {where}, not the cryptography backend; "
            "install python-jose[cryptography]"
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

    async def start(self) -> None:
        """Nothing to load: the key pair was read when the source was built."""

    async def close(self) -> None:
        """Nothing to release."""

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


class SqlRoles:
    """Campaign roles from the app's own tables: VTT_ROLE_SQL with bound parameters only."""

    def __init__(self, engine: AsyncEngine, sql: str) -> None:
        statement = text(sql)
        names = frozenset(statement.compile().params)
        if names != ROLE_PARAMETERS:
            raise ConfigError(
                "VTT_ROLE_SQL must use exactly the parameters :campaign_id and :user_id "
                f"(found {', '.join(sorted(names)) or 'none'}; write CAST(:campaign_id AS uuid), "
                "not :campaign_id::uuid)"
            )
        # One SELECT needs no transaction: autocommit saves the BEGIN and ROLLBACK round trips.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statement = statement

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """'gm' or 'player' from the first column of the first row; anything else is 4403."""
        try:
            async with self.engine.connect() as connection:
                result = await connection.execute(
                    self.statement, {"campaign_id": campaign_id, "user_id": identity.user_id}
                )
                row = result.first()
        except (OSError, TimeoutError, sa_exc.TimeoutError) as exc:
            raise _roles_unavailable(type(exc).__name__) from None
        except sa_exc.DBAPIError as exc:
            raise _classify(exc) from None
        except sa_exc.SQLAlchemyError as exc:
            raise _role_query_broken(type(exc).__name__) from None
        value = None if row is None else row[0]
        if value == "gm":
            return "gm"
        if value == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")


def _classify(exc: sa_exc.DBAPIError) -> CloseConnection:
    """Which close a database error means: not a member, try later, or a broken query."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate.startswith(_DATA_EXCEPTION):
            # e.g. a non-UUID campaign id against a UUID column: no such campaign.
            return CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
        if sqlstate[:2] in _UNAVAILABLE_CLASSES:
            return _roles_unavailable(f"SQLSTATE {sqlstate}")
        return _role_query_broken(f"SQLSTATE {sqlstate}")
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return _roles_unavailable(type(exc).__name__)
    if isinstance(exc, sa_exc.DataError):
        return CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
    return _role_query_broken(type(exc).__name__)


def _roles_unavailable(cause: str) -> CloseConnection:
    log.warning("campaign role lookup failed: database unavailable", extra={"reason": cause})
    return CloseConnection(CloseCode.TRY_AGAIN_LATER, "campaign roles unavailable")


def _role_query_broken(cause: str) -> CloseConnection:
    # Neither the client nor a retry can fix this: the deployment's VTT_ROLE_SQL or schema is.
    log.error("campaign role query failed; check VTT_ROLE_SQL", extra={"reason": cause})
    return CloseConnection(CloseCode.INTERNAL_ERROR, "campaign roles cannot be resolved")


@dataclass(slots=True)
class Auth:
    """The key source, verifier and role resolver one app uses, chosen by the settings."""

    keys: KeySource
    verifier: TokenVerifier
    roles: RoleResolver

    async def start(self) -> None:
        """Start loading signing keys; returns promptly even when the key set is unreachable."""
        await self.keys.start()

    async def close(self) -> None:
        """Stop the key refresh and release its HTTP client."""
        await self.keys.close()


def build_auth(settings: Settings, engine: AsyncEngine) -> Auth:
    """Dev auth (local key pair, roles from the token) or Clerk's JWKS with roles from SQL."""
    if settings.clerk_jwks_url is None:
        if settings.production:
            raise ConfigError("dev auth is never used in production: set CLERK_JWKS_URL")
        dev_keys = DevKeys(settings.dev_key_dir)
        policy = TokenPolicyConfig(issuer=DEV_ISSUER, leeway=settings.jwt_leeway)
        return Auth(dev_keys, TokenVerifier(dev_keys, policy), DevClaimRoles())
    keys = JwksKeySource(settings.clerk_jwks_url, settings.jwks_ttl)
    policy = TokenPolicyConfig(
        issuer=settings.clerk_issuer,
        authorized_parties=settings.clerk_authorized_parties,
        leeway=settings.jwt_leeway,
    )
    return Auth(keys, TokenVerifier(keys, policy), SqlRoles(engine, settings.role_sql))


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
