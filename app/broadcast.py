"""POST /internal/broadcast: chat from the Next.js app's own server, stored, then published.

The answers, in the order they are decided (PROTOCOL.md "Chat and dice"):
  404  INTERNAL_API_SECRET is not set (every method: the route does not exist)
  405  not POST
  401  no `Authorization: Bearer <secret>`, or another secret (compared in constant time)
  413  a body over 64 KiB: by Content-Length up front, else once the bytes read pass it
  400  not JSON, or a field refused: `{"code", "message"}` as an `error` payload
  503  the database could not store it, or chat_messages is unusable
  204  stored (an `id` stored before: 204 again, and nothing published)
Where the contract is silent: the body is read like a chat.send (same limits, `""`/null
optional fields absent), plus `campaign_id`, `user_id` and an optional `id` of 1-128
characters; `message_type` is required and not empty, as the Go service had it. `user_id`,
`gm_only`, `recipient_id` and `character_id` are trusted (no membership or ownership check),
but `gm_only` with `recipient_id` and a whisper to oneself are still 400.
A UUID `id` is the message's id; any other `id` stands for uuid5(BROADCAST_NAMESPACE, id),
so a repeat is the same primary key. The sender's username (never stored) is asked of
VTT_USERNAME_SQL after the insert; when it cannot be, the message goes without one. Nothing of
a body is ever logged.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from dataclasses import replace
from typing import Annotated, Final, Protocol

import msgspec
from msgspec import Meta
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.chat import compose, message_of, read_send
from app.config import Settings
from app.errors import Refusal
from app.metrics import Metrics
from app.persistence.chat import ChatRejected, ChatStore, ChatUnusable, DuplicateMessage
from app.persistence.store import StoreUnavailable
from app.protocol import NO_NUL, ChatMessage, ChatSend, Id, LenientId

log = logging.getLogger("vtt.broadcast")

MAX_BODY_BYTES: Final = 64 * 1024
BROADCAST_NAMESPACE: Final = uuid.UUID("0d8f9a52-6f1e-4c1b-9a8e-5b2f3c4d7e61")
CampaignId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
# Required here, as the Go service required it (a chat.send's defaults to "").
BroadcastType = Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_NUL)]


class BroadcastBody(ChatSend, kw_only=True):
    """The Go service's body, plus the optional `roll` and `id`."""

    campaign_id: CampaignId
    user_id: Id
    message_type: BroadcastType
    id: LenientId | None = None


class ChatPublisher(Protocol):
    """Where a stored message goes live: the campaign's session, if this server holds it."""

    async def publish(self, message: ChatMessage) -> bool:
        """Publish through the live session under its lock, like a chat.send; False if not live."""
        ...


class BroadcastServices(Protocol):
    """What the endpoint needs from the app's services."""

    @property
    def settings(self) -> Settings:
        """The secret and the chat limits."""
        ...

    @property
    def chat_store(self) -> ChatStore:
        """Where the message is stored, and usernames come from."""
        ...

    @property
    def chat_publisher(self) -> ChatPublisher:
        """Who publishes it when the campaign is live here."""
        ...

    @property
    def metrics(self) -> Metrics:
        """Where answers and rolls are counted."""
        ...


_decoder: Final = msgspec.json.Decoder(BroadcastBody)


class TooLarge(Exception):
    """The body passed MAX_BODY_BYTES."""


class BroadcastEndpoint:
    """The route as a plain ASGI app, so it answers every method itself (404 before 405)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request; the services come from the lifespan's state."""
        services: BroadcastServices = scope["state"]["services"]
        response = await self._respond(scope, receive, services)
        services.metrics.broadcast_answered(response.status_code)
        await response(scope, receive, send)

    async def _respond(
        self, scope: Scope, receive: Receive, services: BroadcastServices
    ) -> Response:
        secret = services.settings.internal_api_secret
        if secret is None:
            return Response("Not Found", 404, media_type="text/plain")
        if scope["method"] != "POST":
            return Response("Method Not Allowed", 405, {"Allow": "POST"}, "text/plain")
        headers = Headers(scope=scope)
        if not _authorized(headers.get("authorization"), secret):
            return Response("Unauthorized", 401, {"WWW-Authenticate": "Bearer"}, "text/plain")
        try:
            # uvicorn refuses a malformed Content-Length itself; any other body is still capped.
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise TooLarge
            body = await read_body(receive)
        except TooLarge:
            return Response("Content Too Large", 413, media_type="text/plain")
        try:
            # UTF-8 all through (msgspec checks only the strings it decodes, not the content it
            # keeps raw), then as Raw: the syntax of the whole body before any field is judged.
            text = body.decode()
            msgspec.json.decode(text, type=msgspec.Raw)
            request = _decoder.decode(text)
        except msgspec.ValidationError as error:
            return _refused(Refusal("invalid_payload", f"invalid body: {error}"))
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            return _refused(Refusal("invalid_json", f"body is not valid JSON: {error}"))
        try:
            return await self._store(request, services)
        except Refusal as refusal:
            return _refused(refusal)

    async def _store(self, body: BroadcastBody, services: BroadcastServices) -> Response:
        """Store the message and publish it; the response for each outcome."""
        chat = read_send(body, body.user_id, services.settings.chat)
        store = services.chat_store
        stored = compose(
            chat,
            campaign_id=body.campaign_id,
            user_id=body.user_id,
            username=None,
            message_id=_message_id(body.id),
        )
        try:
            await store.insert(stored)
        except DuplicateMessage:
            return Response(status_code=204)
        except ChatRejected as rejected:
            raise Refusal("invalid_payload", rejected.reason) from None
        except ChatUnusable as unusable:
            log.warning("internal broadcast not stored: chat is unavailable")
            return _unavailable(f"chat is unavailable: {unusable.reason}")
        except StoreUnavailable as failure:
            log.warning(
                "internal broadcast not stored",
                extra={"campaign_id": body.campaign_id, "reason": str(failure)},
            )
            return _unavailable("the message could not be stored")
        if stored.roll is not None:
            services.metrics.chat_rolls.inc()
        try:
            username = await store.username(body.user_id)
        except StoreUnavailable:
            username = None
        await services.chat_publisher.publish(message_of(replace(stored, username=username)))
        return Response(status_code=204)


def _authorized(header: str | None, secret: str) -> bool:
    """Whether the header is `Bearer <secret>`; the secret is compared in constant time."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    # Header values arrive decoded as latin-1: back to the bytes sent, to compare with the
    # secret's UTF-8. compare_digest takes as long for any token of a given length.
    matches = hmac.compare_digest(token.encode("latin-1"), secret.encode())
    return scheme.lower() == "bearer" and matches


async def read_body(receive: Receive) -> bytes:
    """The request body, or TooLarge as soon as it passes MAX_BODY_BYTES (nothing more read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client went away; what arrived is all there is, and it will not parse.
            return b"".join(chunks)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _message_id(given: str | None) -> str | None:
    """The message id a caller's `id` stands for: itself if a UUID, else a UUID derived from it."""
    if not given:
        return None
    try:
        return str(uuid.UUID(given))
    except ValueError:
        return str(uuid.uuid5(BROADCAST_NAMESPACE, given))


def _refused(refusal: Refusal) -> Response:
    return JSONResponse({"code": refusal.code, "message": refusal.message}, 400)


def _unavailable(message: str) -> Response:
    return JSONResponse({"code": "db_error", "message": message}, 503)


def announce(settings: Settings) -> None:
    """Say at startup, in production, that the route is off because no secret is set."""
    if settings.production and settings.internal_api_secret is None:
        log.warning("INTERNAL_API_SECRET is not set: POST /internal/broadcast answers 404")
