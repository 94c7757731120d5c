"""Where verification keys come from: the KeySource seam, and dev auth's local key pair.

Clerk's key set (the production source) is `app.auth.jwks.JwksKeySource`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from jose.backends.base import Key

from app.auth.tokens import ALGORITHM, unauthorized
from app.model import Role

DEV_ISSUER = "vtt-dev"
DEV_ROLE_CLAIM = "vtt_role"
DEV_CAMPAIGN_CLAIM = "vtt_campaign"


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
