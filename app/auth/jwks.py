"""Clerk's signing keys: the JWKS document fetched with httpx, cached, and kept fresh.

Keys are refreshed in the background on a TTL (the response's Cache-Control max-age when it
gives one). A token naming an unknown `kid` triggers at most one refetch per REFETCH_INTERVAL,
shared by every connection that asks meanwhile, so garbage kids cannot make us hammer Clerk.
When the endpoint is down the cached keys keep working; with no keys at all, or when the
endpoint cannot be asked whether a new kid exists, connections are told to come back later (1013).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from jose import jwk
from jose.backends.base import Key
from jose.exceptions import JOSEError

from app.auth.tokens import ALGORITHM
from app.errors import CloseCode, CloseConnection

log = logging.getLogger("vtt.jwks")


# An unknown kid may cause one refetch per this many seconds, however many tokens name one.
REFETCH_INTERVAL = 30.0
# One fetch (connect, headers, body) gives up after this long.
FETCH_TIMEOUT = 5.0
# A JWKS document is a few KiB; anything far larger is not one.
MAX_DOCUMENT_BYTES = 256 * 1024
# Keys weaker than this are ignored.
MIN_RSA_BITS = 2048
# Cache-Control max-age is honoured within these bounds (seconds).
MIN_MAX_AGE = 1.0
MAX_MAX_AGE = 24 * 3600.0
# After a failed fetch the background refresh retries after 1 s, doubling up to this.
MAX_RETRY_DELAY = 60.0
# Auth.start() waits this long at most for the first fetch, so startup is never held up.
STARTUP_WAIT = 2.0

_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class JwksError(Exception):
    """The JWKS endpoint did not give a usable key set."""


@dataclass(frozen=True, slots=True)
class _CachedKey:
    """A verification key and the public numbers it was built from (to reuse it)."""

    kid: str
    modulus: str
    exponent: str
    key: Key


class JwksKeySource:
    """Signing keys from a JWKS URL: cached, refreshed on a TTL, refetched for unknown kids."""

    def __init__(
        self,
        url: str,
        ttl: float,
        *,
        refetch_interval: float = REFETCH_INTERVAL,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), headers={"accept": "application/json"}
        )
        # The cache: kid -> key. Replaced whole by each successful fetch.
        self._keys: dict[str, _CachedKey] = {}
        # Fetching: the shared in-flight fetch, whether the last one worked, and when an
        # unknown kid last caused one (monotonic; None: never).
        self._inflight: asyncio.Task[float | None] | None = None
        self._last_ok = False
        self._last_kid_refetch: float | None = None
        # The background refresh: its task, whether its first fetch has ended, and a flag any
        # failed fetch raises so it switches from the TTL to retrying.
        self._refresher: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._endpoint_failed = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Whether any key is loaded."""
        return bool(self._keys)

    async def start(self) -> None:
        """Start the background refresh; wait briefly for its first fetch, never for success."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT):
                await self._first_attempt.wait()

    async def close(self) -> None:
        """Stop refreshing and release the HTTP client."""
        for task in (self._refresher, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._inflight = None
        await self._client.aclose()

    async def key_for(self, kid: str | None) -> Key:
        """The key for `kid`; CloseConnection 4401 when unknown, 1013 when none is available."""
        if kid is None:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "token names no signing key")
        cached = self._keys.get(kid)
        if cached is not None:
            return cached.key
        await self._refetch_for_unknown_kid()
        cached = self._keys.get(kid)
        if cached is not None:
            return cached.key
        if not self._keys or not self._last_ok:
            # The endpoint cannot be asked right now: the kid may well be a new, valid one.
            raise CloseConnection(CloseCode.TRY_AGAIN_LATER, "signing keys unavailable")
        log.info("token names an unknown signing key", extra={"kid": kid[:64]})
        raise CloseConnection(CloseCode.UNAUTHORIZED, "unknown signing key")

    async def _refetch_for_unknown_kid(self) -> None:
        if self._inflight is None:
            now = time.monotonic()
            last = self._last_kid_refetch
            if last is not None and now - last < self.refetch_interval:
                return
            self._last_kid_refetch = now
        await self._fetch_shared()

    async def _fetch_shared(self) -> float | None:
        """Join the fetch in flight, or start one; its result is the next refresh delay."""
        if self._inflight is None:
            task = asyncio.create_task(self._fetch(), name="jwks-fetch")
            self._inflight = task
            task.add_done_callback(self._fetched)
        # A waiter that goes away (its client hung up) must not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    def _fetched(self, task: asyncio.Task[float | None]) -> None:
        if self._inflight is task:
            self._inflight = None
        self._first_attempt.set()

    async def _refresh_loop(self) -> None:
        retry = 1.0
        while True:
            try:
                fresh_for = await self._fetch_shared()
            except Exception:
                # A bug in one fetch must not end the refreshing for the life of the process.
                log.exception("JWKS refresh failed unexpectedly")
                fresh_for = None
            if fresh_for is not None:
                retry = 1.0
                if not await self._failed_within(fresh_for):
                    continue
            # The endpoint is down: retry with backoff, so keys come back soon after it does.
            await asyncio.sleep(retry)
            retry = min(retry * 2, MAX_RETRY_DELAY, self.ttl)

    async def _failed_within(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as a fetch for an unknown kid finds the endpoint down."""
        self._endpoint_failed.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._endpoint_failed.wait()
        except TimeoutError:
            return False
        return True

    async def _fetch(self) -> float | None:
        """Fetch and install the key set; return how long it stays fresh, None on failure."""
        try:
            async with asyncio.timeout(self.timeout * 2):
                document, fresh_for = await self._download()
            keys = self._parse(document)
        except (httpx.HTTPError, httpx.InvalidURL, JwksError, TimeoutError, ValueError) as exc:
            self._last_ok = False
            self._endpoint_failed.set()
            log.warning(
                "JWKS fetch failed; %d cached keys stay in use",
                len(self._keys),
                extra={"reason": _describe(exc)},
            )
            return None
        self._keys = keys
        self._last_ok = True
        return self.ttl if fresh_for is None else fresh_for

    async def _download(self) -> tuple[Any, float | None]:
        async with self._client.stream("GET", self.url) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
            return json.loads(bytes(body)), _fresh_for(response.headers)

    def _parse(self, document: Any) -> dict[str, _CachedKey]:
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise JwksError("document has no `keys` list")
        keys: dict[str, _CachedKey] = {}
        for entry in entries:
            cached = self._usable(entry)
            if cached is not None and cached.kid not in keys:
                keys[cached.kid] = cached
        if not keys:
            raise JwksError("document has no usable RS256 signing key")
        return keys

    def _usable(self, entry: Any) -> _CachedKey | None:
        """An RS256 signing key of the set, reusing the cached object for unchanged keys."""
        if not isinstance(entry, dict):
            return None
        kid, n, e = entry.get("kid"), entry.get("n"), entry.get("e")
        if (
            entry.get("kty") != "RSA"
            or entry.get("use", "sig") != "sig"
            or entry.get("alg", ALGORITHM) != ALGORITHM
            or not isinstance(kid, str)
            or not kid
            or not isinstance(n, str)
            or not isinstance(e, str)
        ):
            return None
        previous = self._keys.get(kid)
        if previous is not None and (previous.modulus, previous.exponent) == (n, e):
            return previous
        if _bits(n) < MIN_RSA_BITS:
            log.warning("JWKS key ignored: RSA modulus too small", extra={"kid": kid[:64]})
            return None
        try:
            # Only the public numbers: a key set that leaks private parts must not change how
            # we verify.
            key = jwk.construct({"kty": "RSA", "n": n, "e": e}, ALGORITHM)
        except (JOSEError, ValueError, TypeError):
            log.warning("JWKS key ignored: not a valid RSA key", extra={"kid": kid[:64]})
            return None
        return _CachedKey(kid, n, e, key)


def _bits(modulus: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big").bit_length()


def _fresh_for(headers: Mapping[str, str]) -> float | None:
    """How long the response stays fresh per Cache-Control max-age (minus Age), if it says."""
    match = _MAX_AGE.search(headers.get("cache-control", ""))
    if match is None:
        return None
    age = headers.get("age", "0").strip()
    remaining = int(match.group(1)) - (int(age) if age.isdigit() else 0)
    return min(max(float(remaining), MIN_MAX_AGE), MAX_MAX_AGE)


def _describe(exc: Exception) -> str:
    """A log-safe reason for a failed fetch: the status, the kind of failure, never a body."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, JwksError):
        return str(exc)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, ValueError):
        return "response is not JSON"
    return type(exc).__name__
