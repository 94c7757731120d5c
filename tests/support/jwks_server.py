"""A JWKS endpoint for tests: real RSA keys served over HTTP on 127.0.0.1, under test control.

It rotates keys, goes down and comes back on the same port, counts requests, answers slowly
or with an error status, and sets Cache-Control. It also mints Clerk-shaped tokens, good and
forged, signed with its keys.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jws, jwt

from tests.support.poll import poll

TIMEOUT = 10.0
JWKS_PATH = "/.well-known/jwks.json"
AZP = "https://app.example"


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with a kid: the private half signs, the public half is a JWK."""

    kid: str
    private: rsa.RSAPrivateKey

    @property
    def private_pem(self) -> str:
        """The private key as PKCS#8 PEM."""
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    @property
    def public_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM (what an HS256 forgery keys with)."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def jwk(self) -> dict[str, Any]:
        """The public JWK as Clerk publishes it."""
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """An RS256 JWS of `claims` with this key's kid (unless `headers` says otherwise)."""
        token: str = jwt.encode(
            dict(claims),
            self.private_pem,
            algorithm="RS256",
            headers={"kid": self.kid, **(headers or {})},
        )
        return token


@functools.cache
def _pool_key(index: int, bits: int) -> rsa.RSAPrivateKey:
    # Generating a key takes tens of milliseconds: each test process makes a few, once.
    del index
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def signing_key(kid: str, index: int = 0, bits: int = 2048) -> SigningKey:
    """A key pair named `kid`; the same `index` (and size) gives the same key material."""
    return SigningKey(kid, _pool_key(index, bits))


def unsigned_token(claims: Mapping[str, Any], kid: str) -> str:
    """An `alg: none` token: a header, the claims, and an empty signature."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_segment(header)}.{_segment(claims)}."


def hmac_token(claims: Mapping[str, Any], secret: str, kid: str, alg: str = "HS256") -> str:
    """A token MACed with `secret`, e.g. the public key's PEM: the classic confusion attack."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{_segment({'alg': alg, 'typ': 'JWT', 'kid': kid})}.{_segment(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(mac)}"


class JwksServer:
    """Serves `keys` (plus any `extra_entries`) as a JWKS document on an ephemeral port."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self.keys: list[SigningKey] = list(keys if keys is not None else [signing_key("k1")])
        self.extra_entries: list[Any] = []
        self.cache_control: str | None = None
        self.status = 200
        self.body: bytes | None = None
        self.delay = 0.0
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> JwksServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The JWKS URL (ending in the well-known path, so the issuer derives from it)."""
        return f"http://127.0.0.1:{self.port}{JWKS_PATH}"

    @property
    def issuer(self) -> str:
        """The issuer a Clerk instance at this address puts in its tokens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server accepts connections right now."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (again on the same port after a stop)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Go down: stop listening and reset every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for handler in self._handlers:
            handler.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    def rotate(self, key: SigningKey, *, keep_old: bool = True) -> None:
        """Publish `key`, keeping the current keys unless told not to."""
        self.keys = [*self.keys, key] if keep_old else [key]

    def document(self) -> dict[str, Any]:
        """The JWKS document served right now."""
        return {"keys": [key.jwk for key in self.keys] + list(self.extra_entries)}

    async def wait_for_requests(self, count: int, timeout: float = TIMEOUT) -> None:
        """Poll until at least `count` JWKS requests have been answered."""
        await poll(lambda: self.requests >= count, timeout, f"{count} JWKS requests")

    def claims(self, sub: str | None = "user_1", ttl: float = 60.0, **extra: Any) -> dict[str, Any]:
        """Clerk-shaped claims; an `extra` value of None drops that claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": sub,
            "iss": self.issuer,
            "azp": AZP,
            "iat": now,
            "nbf": now - 1,
            "exp": int(now + ttl),
            "sid": "sess_1",
        }
        claims.update(extra)
        return {key: value for key, value in claims.items() if value is not None}

    def mint(
        self,
        sub: str | None = "user_1",
        *,
        key: SigningKey | None = None,
        ttl: float = 60.0,
        headers: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> str:
        """A token signed by `key` (default: the newest published key)."""
        signer = key if key is not None else self.keys[-1]
        return signer.sign(self.claims(sub, ttl, **extra), headers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                if self.delay:
                    await asyncio.sleep(self.delay)
                self._respond(writer, path)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            self._handlers.discard(handler)
            self._writers.discard(writer)
            writer.transport.abort()

    def _respond(self, writer: asyncio.StreamWriter, path: str) -> None:
        if path != JWKS_PATH:
            status, body, headers = 404, b"not found", {"content-type": "text/plain"}
        else:
            self.requests += 1
            status = self.status
            body = self.body if self.body is not None else json.dumps(self.document()).encode()
            headers = {"content-type": "application/json"}
            if self.cache_control is not None:
                headers["cache-control"] = self.cache_control
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def _other_alg(server: JwksServer, alg: str) -> str:
    token: str = jwt.encode(
        server.claims(), server.keys[0].private_pem, algorithm=alg, headers={"kid": "k1"}
    )
    return token


def _reheadered(server: JwksServer, alg: str) -> str:
    _, payload, signature = server.mint().split(".")
    return f"{_segment({'alg': alg, 'kid': 'k1'})}.{payload}.{signature}"


def _tampered(server: JwksServer) -> str:
    header, _, signature = server.mint("user_1").split(".")
    forged = server.mint("admin").split(".")[1]
    return f"{header}.{forged}.{signature}"


def _raw_rs256(server: JwksServer, payload: bytes) -> str:
    token: str = jws.sign(
        payload, server.keys[0].private_pem, headers={"kid": "k1"}, algorithm="RS256"
    )
    return token


def _later(seconds: int) -> int:
    return int(time.time()) + seconds


# Every way a token can be wrong, each made against a server publishing the key `k1`.
BAD_TOKENS: dict[str, Callable[[JwksServer], str]] = {
    "expired": lambda s: s.mint(exp=_later(-30)),
    "nbf in the future": lambda s: s.mint(nbf=_later(60)),
    "iat in the future": lambda s: s.mint(iat=_later(60)),
    "alg none": lambda s: unsigned_token(s.claims(), "k1"),
    "alg none with a signature": lambda s: unsigned_token(s.claims(), "k1") + "c2ln",
    "HS256 with the public key": lambda s: hmac_token(s.claims(), s.keys[0].public_pem, "k1"),
    "HS512 with the public key": lambda s: hmac_token(
        s.claims(), s.keys[0].public_pem, "k1", "HS512"
    ),
    "HS256 with the JWK as secret": lambda s: hmac_token(
        s.claims(), json.dumps(s.keys[0].jwk), "k1"
    ),
    "RS512": lambda s: _other_alg(s, "RS512"),
    "PS256 header on an RS256 signature": lambda s: _reheadered(s, "PS256"),
    "ES256 header on an RS256 signature": lambda s: _reheadered(s, "ES256"),
    "lowercase rs256 header": lambda s: _reheadered(s, "rs256"),
    "wrong iss": lambda s: s.mint(iss="https://evil.example"),
    "missing iss": lambda s: s.mint(iss=None),
    "wrong azp": lambda s: s.mint(azp="https://evil.example"),
    "missing azp": lambda s: s.mint(azp=None),
    "unknown kid": lambda s: s.mint(headers={"kid": "nobody"}),
    "missing kid": lambda s: s.keys[0].sign(s.claims(), {"kid": None}),
    "missing sub": lambda s: s.mint(sub=None),
    "empty sub": lambda s: s.mint(sub=""),
    "numeric sub": lambda s: s.keys[-1].sign({**s.claims(), "sub": 12345}),
    "overlong sub": lambda s: s.mint(sub="u" * 129),
    "missing exp": lambda s: s.mint(exp=None),
    "string exp": lambda s: s.mint(exp=str(_later(60))),
    "boolean exp": lambda s: s.mint(exp=True),
    "list nbf": lambda s: s.mint(nbf=[1]),
    "signed by another key under our kid": lambda s: signing_key("k1", index=5).sign(s.claims()),
    "tampered claims": _tampered,
    "claims not an object": lambda s: _raw_rs256(s, b"[1,2,3]"),
    "claims not JSON": lambda s: _raw_rs256(s, b"\xff\xfe not json"),
    "garbage": lambda s: "garbage",
    "three garbage segments": lambda s: "a.b.c",
    "empty segments": lambda s: "..",
    "too large": lambda s: s.mint(pad="x" * 20000),
}
