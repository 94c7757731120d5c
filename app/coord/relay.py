"""The relay to a campaign's owner, and the signed identity it carries.

A client that landed on a machine that does not own its campaign is piped to the owner over
a WebSocket of our own: the owner sees an ordinary client whose identity this machine vouches
for with `RELAY_HEADER` (the token itself never leaves the machine it was sent to). The value
is base64url(JSON) + "." + the HMAC-SHA256 (hex) of the base64 part under the cluster
secret; it names the campaign and this machine, and is good for `MAX_SKEW` seconds.

No redis here: the non-owner side needs `websockets` alone, the owner side only the secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

from starlette.types import Receive, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.auth.tokens import MAX_SUBJECT_CHARS, Identity
from app.coord.base import Owner
from app.errors import CloseCode, CloseConnection

log = logging.getLogger("vtt.relay")

RELAY_HEADER = "x-vtt-relay"
# A signed identity is refused when issued further than this from the owner's clock.
MAX_SKEW = 30.0
# The claims role resolution reads (dev auth); the rest of a token's claims stay behind.
RELAYED_CLAIMS = (DEV_ROLE_CLAIM, DEV_CAMPAIGN_CLAIM)
# A signed identity longer than this is refused before any parsing.
MAX_VALUE_CHARS = 4096
MOVING = "campaign moving; reconnect"
OPEN_TIMEOUT = 5.0
# The close frames a WebSocket never carries: their codes only say how a connection ended.
NO_STATUS = 1005
ABNORMAL = {1006, 1015}


@runtime_checkable
class RelayMetrics(Protocol):
    """What the relay counts: pipes opened and closed, and owners that could not be reached."""

    def relay_opened(self) -> None:
        """A relayed client is piped to its campaign's owner."""
        ...

    def relay_closed(self) -> None:
        """A pipe opened earlier ended."""
        ...

    def relay_failed(self) -> None:
        """The owner could not be reached: the client was closed with 1012."""
        ...


def _refused(reason: str) -> CloseConnection:
    return CloseConnection(CloseCode.UNAUTHORIZED, reason)


def _mac(secret: str, encoded: str) -> str:
    return hmac.new(secret.encode(), encoded.encode("ascii"), hashlib.sha256).hexdigest()


def sign_identity(
    secret: str, identity: Identity, campaign_id: str, node_id: str, now: float
) -> str:
    """The `RELAY_HEADER` value vouching for `identity` in `campaign_id`, signed by `node_id`."""
    claims = {name: identity.claims[name] for name in RELAYED_CLAIMS if name in identity.claims}
    body = {
        "user_id": identity.user_id,
        "claims": claims,
        "expires_at": identity.expires_at,
        "campaign_id": campaign_id,
        "node": node_id,
        "issued_at": now,
    }
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return f"{encoded}.{_mac(secret, encoded)}"


def verify_identity(secret: str, value: str, campaign_id: str, now: float) -> Identity:
    """The identity a relaying machine vouches for, or CloseConnection(4401).

    Refused: anything not signed with `secret`, signed for another campaign, or issued more
    than `MAX_SKEW` seconds away from `now`.
    """
    if len(value) > MAX_VALUE_CHARS:
        raise _refused("relayed identity too large")
    encoded, dot, mac = value.partition(".")
    if not dot or not encoded:
        raise _refused("relayed identity malformed")
    try:
        expected = _mac(secret, encoded).encode("ascii")
        good = hmac.compare_digest(expected, mac.encode("ascii"))
    except UnicodeEncodeError:
        good = False
    if not good:
        raise _refused("relayed identity signature invalid")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _refused("relayed identity malformed") from None
    if not isinstance(body, dict):
        raise _refused("relayed identity malformed")
    issued_at = _number(body.get("issued_at"))
    if issued_at is None or abs(now - issued_at) > MAX_SKEW:
        raise _refused("relayed identity expired")
    if body.get("campaign_id") != campaign_id:
        raise _refused("relayed identity is for another campaign")
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_SUBJECT_CHARS:
        raise _refused("relayed identity malformed")
    expires_at = _number(body.get("expires_at"))
    claims = body.get("claims")
    if expires_at is None or not isinstance(claims, dict) or not isinstance(body.get("node"), str):
        raise _refused("relayed identity malformed")
    kept = {name: claims[name] for name in RELAYED_CLAIMS if name in claims}
    return Identity(user_id=user_id, claims=kept, expires_at=expires_at)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


async def relay(
    receive: Receive,
    send: Send,
    owner: Owner,
    upstream_headers: list[tuple[str, str]],
    query: Mapping[str, str],
    max_size: int,
    metrics: RelayMetrics | None,
    accepted: bool = False,
) -> None:
    """Pipe the client (`receive`/`send`, accepted already when `accepted`) to `owner`.

    `query` is what the owner's /ws gets (campaign, since, epoch: never a token), and
    `upstream_headers` what else it sees (the signed identity, the client's Origin). Frames
    flow both ways until either side ends; the owner's close code and reason reach the
    client as they were, and an owner that cannot be reached, or that vanished without a
    close frame, is 1012 "campaign moving; reconnect".
    """
    url = f"{owner.url}/ws?{urlencode(dict(query))}"
    try:
        upstream = await connect(
            url,
            additional_headers=upstream_headers,
            compression=None,
            max_size=max_size,
            open_timeout=OPEN_TIMEOUT,
        )
    except (OSError, TimeoutError, WebSocketException) as failure:
        if metrics is not None:
            metrics.relay_failed()
        log.warning(
            "relay to the campaign's owner failed",
            extra={"node": owner.node, "reason": str(failure) or type(failure).__name__},
        )
        if not accepted:
            await send({"type": "websocket.accept"})
        await send(_moving())
        return
    if metrics is not None:
        metrics.relay_opened()
    try:
        if not accepted:
            await send({"type": "websocket.accept"})
        await _pipe(receive, send, upstream)
    finally:
        if metrics is not None:
            metrics.relay_closed()
        # Whatever ended the pipe (a cancellation included), the owner's socket goes too.
        if upstream.state is not State.CLOSED:
            with contextlib.suppress(Exception):
                await upstream.close(1001)


async def _pipe(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Pump both ways until one side ends, then end the other one accordingly."""
    from_client = asyncio.create_task(_client_to_upstream(receive, upstream))
    from_owner = asyncio.create_task(_upstream_to_client(send, upstream))
    tasks = {from_client, from_owner}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    ended = next(iter(done))
    failure = ended.exception()
    if failure is not None:
        log.warning("relay pump failed", exc_info=failure)
        with contextlib.suppress(Exception):
            await upstream.close(1001)
        with contextlib.suppress(OSError, RuntimeError):
            await send(_moving())
        return
    outcome = ended.result()
    if outcome == CloseCode.SERVICE_RESTART:
        # This machine is shutting down (the server's disconnect, the client still there):
        # the owner sees the client go away, and the client is told to reconnect.
        with contextlib.suppress(Exception):
            await upstream.close(1001)
        with contextlib.suppress(OSError, RuntimeError):
            await send({"type": "websocket.close", "code": outcome, "reason": "server restarting"})
        return
    if outcome is not None:
        # The client went away: so does our socket to the owner.
        with contextlib.suppress(Exception):
            await upstream.close(1001 if outcome == 1001 else 1000)
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(OPEN_TIMEOUT):
            await upstream.wait_closed()
    code, reason = _owner_close(upstream)
    # The client may be gone by now: nothing more to tell it then.
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code, "reason": reason})


def _moving() -> dict[str, Any]:
    return {"type": "websocket.close", "code": int(CloseCode.SERVICE_RESTART), "reason": MOVING}


def _owner_close(upstream: ClientConnection) -> tuple[int, str]:
    """The close code and reason the owner ended with, for the client (abnormal: 1012)."""
    frame = upstream.protocol.close_rcvd
    if frame is None or frame.code in ABNORMAL:
        return int(CloseCode.SERVICE_RESTART), MOVING
    if frame.code == NO_STATUS:
        return 1000, ""
    return frame.code, frame.reason


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> int | None:
    """Client frames to the owner; the client's close code when it disconnects, None when the
    owner's socket closed first."""
    while True:
        message: Any = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            try:
                await upstream.send(data)
            except ConnectionClosed:
                return None
        elif kind == "websocket.disconnect":
            code: int = message.get("code", 1000)
            return code


async def _upstream_to_client(send: Send, upstream: ClientConnection) -> int | None:
    """The owner's frames to the client; None when the owner's socket closed, 1001 when the
    client could not be written to (it is going away)."""
    while True:
        try:
            data = await upstream.recv()
        except ConnectionClosed:
            return None
        message = (
            {"type": "websocket.send", "text": data}
            if isinstance(data, str)
            else {"type": "websocket.send", "bytes": data}
        )
        try:
            await send(message)
        except OSError:
            return 1001
