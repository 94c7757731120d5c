"""Bench credentials: an RSA key served as a local JWKS, RS256 tokens for it, and dev tokens."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

TOKEN_TTL = 4 * 3600
CAMPAIGN_NAMESPACE = uuid.UUID("6f1c5b8e-3a55-4d6b-9a4e-2f0d8a1c7b10")


def b64url(data: bytes) -> str:
    """Base64url without padding, as JOSE wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def campaign_id(index: int) -> str:
    """Return the stable UUID of bench campaign `index` (the campaigns table keys on UUIDs)."""
    return str(uuid.uuid5(CAMPAIGN_NAMESPACE, f"bench-campaign-{index}"))


def user_id(index: int, slot: int) -> str:
    """Return the Clerk-like user id of slot `slot` (0 is the GM) of campaign `index`."""
    role = "gm" if slot == 0 else f"p{slot}"
    return f"user_bench_{index}_{role}"


class SigningKey:
    """An RSA key pair with a key id, able to publish its JWKS and mint RS256 tokens."""

    def __init__(self, private: rsa.RSAPrivateKey | None = None, kid: str | None = None) -> None:
        self.private = private or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid or "bench-" + uuid.uuid4().hex[:12]

    def jwks(self) -> dict[str, object]:
        """Return the public half as a JWKS document."""
        numbers = self.private.public_key().public_numbers()

        def encode_int(value: int) -> str:
            return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        key = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": encode_int(numbers.n),
            "e": encode_int(numbers.e),
        }
        return {"keys": [key]}

    def mint(self, subject: str, issuer: str, extra: dict[str, str] | None = None) -> str:
        """Return a Clerk-shaped RS256 session token for `subject`."""
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {
            "sub": subject,
            "iss": issuer,
            "iat": now,
            "nbf": now - 5,
            "exp": now + TOKEN_TTL,
            "sid": "sess_bench",
            **(extra or {}),
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(signature)


class JwksServer:
    """Serves one JWKS document at /.well-known/jwks.json on a loopback port, in a thread."""

    def __init__(self, key: SigningKey) -> None:
        body = json.dumps(key.jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.issuer + "/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TokenBook:
    """Mints and caches one token per (campaign, slot), so repeats reuse the same users."""

    def __init__(self, mint: Callable[[int, int], str]) -> None:
        self._mint = mint
        self._cache: dict[tuple[int, int], str] = {}

    def token(self, index: int, slot: int) -> str:
        """Return the token of slot `slot` of campaign `index`."""
        key = (index, slot)
        token = self._cache.get(key)
        if token is None:
            token = self._cache[key] = self._mint(index, slot)
        return token

    def plan(self, url: str, campaigns: int, clients: int) -> dict[str, object]:
        """Return the loadgen plan: the URL, then each campaign's id and its slots' tokens."""
        return {
            "url": url,
            "campaigns": [
                {"id": campaign_id(i), "tokens": [self.token(i, s) for s in range(clients)]}
                for i in range(campaigns)
            ],
        }


def jwks_book(key: SigningKey, issuer: str) -> TokenBook:
    """Tokens for production auth: RS256 with our kid, roles come from the campaigns table."""
    return TokenBook(lambda index, slot: key.mint(user_id(index, slot), issuer))


def dev_book(key_dir: Path) -> TokenBook:
    """Tokens for the server's dev auth: its DevKeys pair, its issuer and role claims.

    The key pair comes from the server's own DevKeys (which creates it), but tokens are
    signed here: DevKeys.mint goes through python-jose at tens of ms per token, too slow
    for thousands of clients.
    """
    from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ISSUER, DEV_ROLE_CLAIM, DevKeys

    dev = DevKeys(key_dir)
    private = serialization.load_pem_private_key((key_dir / "private.pem").read_bytes(), None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise RuntimeError(f"{key_dir}/private.pem is not an RSA key")
    key = SigningKey(private, dev.kid)

    def mint(index: int, slot: int) -> str:
        claims = {
            DEV_ROLE_CLAIM: "gm" if slot == 0 else "player",
            DEV_CAMPAIGN_CLAIM: campaign_id(index),
        }
        return key.mint(user_id(index, slot), DEV_ISSUER, claims)

    return TokenBook(mint)
