"""Chat stored on one machine, published by the campaign's owner on another.

POST /internal/broadcast stores a message wherever it lands; when the campaign is live on
another machine, that machine must publish it (the seq, the op log, the fan-out are the
owner's). The message goes there as JSON over `CHAT_PATH`, signed like a relayed identity:
`<issued_at>.<HMAC-SHA256 hex of issued_at + "." + body>` under the cluster secret, good
for `MAX_SKEW` seconds. The owner publishes it only if the campaign is live there, so a
forward can never bounce on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from typing import Final

import httpx
import msgspec
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.broadcast import TooLarge, read_body
from app.config import Settings
from app.coord.base import Owner
from app.coord.relay import MAX_SKEW
from app.protocol import ChatMessage

log = logging.getLogger("vtt.relay")

CHAT_PATH: Final = "/internal/cluster/chat"
SIGNATURE_HEADER: Final = "x-vtt-signature"
FORWARD_TIMEOUT: Final = 5.0

_decoder: Final = msgspec.json.Decoder(ChatMessage)


def sign(secret: str, body: bytes, now: float) -> str:
    """The signature header's value for `body`, issued at `now` (wall clock)."""
    issued = f"{now:.3f}"
    return f"{issued}.{_mac(secret, issued, body)}"


def verify(secret: str, value: str, body: bytes, now: float) -> bool:
    """Whether `value` signs `body` under `secret` and was issued within MAX_SKEW of `now`."""
    issued, _, mac = value.rpartition(".")
    try:
        at = float(issued)
    except ValueError:
        return False
    if not math.isfinite(at) or abs(now - at) > MAX_SKEW:
        return False
    return hmac.compare_digest(mac.encode(), _mac(secret, issued, body).encode())


def _mac(secret: str, issued: str, body: bytes) -> str:
    return hmac.new(secret.encode(), issued.encode() + b"." + body, hashlib.sha256).hexdigest()


def forward_secret(settings: Settings) -> str | None:
    """What signs forwarded chat: the cluster secret, else the internal API's (without which
    no chat is ever posted to forward); None on one machine."""
    cluster = settings.cluster
    if cluster is None:
        return None
    return cluster.secret or settings.internal_api_secret


def http_base(owner: Owner) -> str:
    """The owner's HTTP base URL, from its WebSocket one."""
    if owner.url.startswith("wss://"):
        return "https://" + owner.url.removeprefix("wss://")
    return "http://" + owner.url.removeprefix("ws://")


async def forward_chat(owner: Owner, message: ChatMessage, secret: str) -> bool:
    """Have `owner` publish a stored message; False when it could not (it stays stored)."""
    body = msgspec.json.encode(message)
    headers = {
        SIGNATURE_HEADER: sign(secret, body, time.time()),
        "content-type": "application/json",
    }
    try:
        async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT) as client:
            answer = await client.post(http_base(owner) + CHAT_PATH, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning(
            "chat not forwarded to the campaign's owner; it is stored and in the next history",
            extra={"campaign_id": message.campaign_id, "node": owner.node, "reason": str(exc)},
        )
        return False
    return answer.status_code == 204


class ClusterChatEndpoint:
    """The owner's side: publish a message another machine stored, if the campaign is live here.

    404 without a cluster, 405 unless POST, 413 over /internal/broadcast's 64 KiB, 401 for a
    bad or stale signature, 400 for a body that is not a chat message, 204 published, 409 not
    live here.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one forwarded message."""
        response = await self._respond(scope, receive)
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        secret = forward_secret(scope["state"]["services"].settings)
        if secret is None:
            return Response("Not Found", 404, media_type="text/plain")
        if scope["method"] != "POST":
            return Response("Method Not Allowed", 405, {"Allow": "POST"}, "text/plain")
        try:
            body = await read_body(receive)
        except TooLarge:
            return Response("Content Too Large", 413, media_type="text/plain")
        signature = Headers(scope=scope).get(SIGNATURE_HEADER, "")
        if not verify(secret, signature, body, time.time()):
            return Response("Unauthorized", 401, media_type="text/plain")
        try:
            message = _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return Response("Bad Request", 400, media_type="text/plain")
        published = await scope["state"]["services"].manager.publish_here(message)
        return Response(status_code=204 if published else 409)
