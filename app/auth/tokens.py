"""Token verification: RS256 JWTs checked against a key source, claims checked by hand.

Only this package sees python-jose. A token is cut and decoded here, once (python-jose's
`jws.verify` would decode it again after `get_unverified_header` did); its signature is
checked by the python-jose key itself. Every failure becomes CloseConnection(4401) here.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jose import jwk

from app.errors import CloseCode, CloseConnection

if TYPE_CHECKING:
    from app.auth.keys import KeySource

ALGORITHM = "RS256"
# Clerk session tokens are 1-2 KiB; a far longer one is refused before any parsing.
MAX_TOKEN_CHARS = 16 * 1024
MAX_SUBJECT_CHARS = 128


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token's subject and claims."""

    user_id: str
    claims: Mapping[str, Any]
    expires_at: float


@dataclass(frozen=True, slots=True)
class Rejected:
    """A handshake whose token was not accepted: the close code and reason to answer with."""

    code: CloseCode
    reason: str


def unauthorized(reason: str) -> CloseConnection:
    """The token is missing or not acceptable: the client should get a fresh one."""
    return CloseConnection(CloseCode.UNAUTHORIZED, reason)


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
        segments = token.split(".")
        if len(segments) != 3:
            raise unauthorized("unreadable token")
        header_segment, claims_segment, signature_segment = segments
        try:
            header = json.loads(_base64url(header_segment).decode())
        except ValueError:
            raise unauthorized("unreadable token") from None
        if not isinstance(header, dict):
            raise unauthorized("unreadable token")
        # Pinned before any key is looked at: `none`, HS256 keyed with the public key, and
        # every other algorithm are refused whatever the key set holds.
        if header.get("alg") != ALGORITHM:
            raise unauthorized("token algorithm must be RS256")
        kid = header.get("kid")
        # One key, chosen by kid: python-jose would otherwise try every key it is given.
        key = await self.keys.key_for(kid if isinstance(kid, str) else None)
        try:
            signed = f"{header_segment}.{claims_segment}".encode("ascii")
            # As python-jose's own verify: a key that cannot check the signature refuses it.
            verified = key.verify(signed, _base64url(signature_segment))
        except (ValueError, TypeError):
            verified = False
        if not verified:
            raise unauthorized("token signature invalid")
        try:
            claims = json.loads(_base64url(claims_segment).decode())
        except ValueError:
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


def _base64url(segment: str) -> bytes:
    """A JWT segment's bytes, decoded as python-jose decodes them; ValueError if it cannot be.

    As python-jose: from the segment's UTF-8, padded by its length in bytes, characters
    outside the alphabet skipped (a non-ASCII one in a signature changes nothing signed).
    """
    data = segment.encode()
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


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
