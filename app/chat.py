"""Chat (PROTOCOL.md "Chat and dice"): chat.send checked, rolled and stored; who sees a message.

The wire structs (ChatSend in, ChatMessage and ChatHistory out) live in app.protocol, in the
message table. Where the contract is silent, this module decides:

- chat.send: `content` is required (any JSON value, `null` included) and is re-encoded
  compactly; the 8 KiB limit applies to that encoding, which is also what is stored and sent.
  It nests at most 64 deep and holds no NUL (Postgres jsonb refuses it). `message_type`
  defaults to `""` and `gm_only` to false, as the Go service read them; `""` or null optional
  fields mean absent. Checks run in this order, the first failing one answering: the payload
  (invalid_payload, with a bad roll naming what is wrong), `gm_only` with `recipient_id` or a
  whisper to oneself (invalid_request), the rate (rate_limited), the recipient (not_found),
  `character_id` (forbidden), then the store (db_error).
- A recipient is a member when connected now or when the role resolver gives them a role; with
  dev auth (roles come from tokens) only connected users can be whispered to.
- `created_at` is the server's clock truncated to whole seconds; the row keeps the exact time,
  so stored history is in send order. `id` is a new UUID.
- The chat log holds the last messages of a campaign encoded once, bounded in count and bytes;
  a message already in it (same id) is not added twice. A log whose stored rows could not be
  loaded still collects new messages, and its history says `incomplete: true` until a load
  works (joins retry it, at most every CHAT_RETRY_SECONDS: app.manager).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

import msgspec
from msgspec import UNSET, Raw, UnsetType

from app.auth import Identity, RoleResolver
from app.config import ChatLimits
from app.dice import SECRETS, DiceError, Expression, RandomSource, decode_roll, parse, roll
from app.errors import CloseCode, CloseConnection, Refusal
from app.model import Actor, Role
from app.persistence.chat import ChatRejected, ChatStore, ChatUnusable, StoredMessage
from app.persistence.store import StoreUnavailable
from app.protocol import CampaignState, ChatMessage, ChatSend, Roll
from app.ratelimit import TokenBucket, Verdict

log = logging.getLogger("vtt.chat")

MAX_CONTENT_DEPTH: Final = 64

_encoder: Final = msgspec.json.Encoder()

# --- reading chat.send -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat.send that passed the payload checks, with absent fields as None."""

    message_type: str
    content: str
    gm_only: bool
    recipient_id: str | None
    character_id: str | None
    roll: Expression | None


def read_send(payload: ChatSend, sender_id: str, limits: ChatLimits) -> ChatRequest:
    """Check a chat.send payload from `sender_id`, or raise Refusal (invalid_payload/_request)."""
    content = _content(payload.content, limits.max_content_bytes)
    expression = None
    if payload.roll:
        try:
            expression = parse(payload.roll)
        except DiceError as error:
            raise Refusal("invalid_payload", f"chat.send roll: {error}") from None
    request = ChatRequest(
        message_type=payload.message_type or "",
        content=content,
        gm_only=bool(payload.gm_only),
        recipient_id=payload.recipient_id or None,
        character_id=payload.character_id or None,
        roll=expression,
    )
    if request.gm_only and request.recipient_id is not None:
        raise Refusal("invalid_request", "a message is either gm_only or to a recipient_id")
    if request.recipient_id == sender_id:
        raise Refusal("invalid_request", "a whisper goes to someone else")
    return request


def _content(raw: Raw, max_bytes: int) -> str:
    """The content re-encoded compactly, if it fits the limits; else Refusal(invalid_payload)."""
    try:
        value = msgspec.json.decode(raw)
    except RecursionError:
        raise _too_deep() from None
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise Refusal("invalid_payload", "chat.send content holds a NUL character")
        elif isinstance(item, list | dict):
            if depth == MAX_CONTENT_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((entry, depth + 1) for entry in item.values())
            else:
                stack.extend((entry, depth + 1) for entry in item)
    encoded = _encoder.encode(value)
    if len(encoded) > max_bytes:
        raise Refusal(
            "invalid_payload",
            f"chat.send content is {len(encoded)} bytes encoded; at most {max_bytes}",
        )
    return encoded.decode()


def _too_deep() -> Refusal:
    return Refusal("invalid_payload", f"chat.send content nests more than {MAX_CONTENT_DEPTH} deep")


# --- audiences ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may see a message: everyone, the GMs and the sender, or sender and recipient."""

    sender: str
    gm_only: bool = False
    recipient: str | None = None

    @classmethod
    def of(cls, message: ChatMessage) -> Audience:
        """The audience a message was sent to."""
        recipient = None if message.recipient_id is UNSET else message.recipient_id
        return cls(message.user_id, message.gm_only, recipient)

    def includes(self, user_id: str, role: Role) -> bool:
        """Whether `user_id`, in `role`, sees the message (live, in history, on resume)."""
        if self.gm_only:
            return role == "gm" or user_id == self.sender
        if self.recipient is not None:
            return user_id in (self.sender, self.recipient)
        return True


# --- messages ----------------------------------------------------------------------------------


def created_at_text(moment: datetime) -> str:
    """RFC 3339 in UTC at whole seconds, e.g. "2026-02-19T10:55:13Z"."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compose(
    request: ChatRequest,
    *,
    campaign_id: str,
    user_id: str,
    username: str | None,
    message_id: str | None = None,
    moment: datetime | None = None,
    rng: RandomSource = SECRETS,
) -> StoredMessage:
    """The message to store: a new id (unless given), the time now, the roll rolled by us."""
    rolled = None if request.roll is None else _encoder.encode(roll(request.roll, rng)).decode()
    return StoredMessage(
        id=message_id or str(uuid.uuid4()),
        campaign_id=campaign_id,
        user_id=user_id,
        message_type=request.message_type,
        content=request.content,
        gm_only=request.gm_only,
        created_at=moment or datetime.now(UTC),
        character_id=request.character_id,
        recipient_id=request.recipient_id,
        roll=rolled,
        username=username,
    )


def message_of(stored: StoredMessage) -> ChatMessage:
    """The chat.message payload of a stored message (a roll that no longer decodes is left out)."""
    rolled: Roll | UnsetType = UNSET
    if stored.roll is not None:
        try:
            rolled = decode_roll(stored.roll)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("stored roll undecodable", extra={"campaign_id": stored.campaign_id})
    return ChatMessage(
        id=stored.id,
        campaign_id=stored.campaign_id,
        user_id=stored.user_id,
        username=stored.username or UNSET,
        character_id=stored.character_id or UNSET,
        recipient_id=stored.recipient_id or UNSET,
        message_type=stored.message_type,
        content=Raw(stored.content.encode()),
        gm_only=stored.gm_only,
        created_at=created_at_text(stored.created_at),
        roll=rolled,
    )


# --- who may speak, and how often ----------------------------------------------------------------


class ChatRate:
    """The per-user chat allowance: `rate` messages a second, `burst` at once, else rate_limited."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        # A campaign has few members, so a bucket is kept for each who ever chatted.
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, user_id: str, now: float) -> None:
        """Take one message from the user's allowance at `now`, or raise Refusal(rate_limited)."""
        bucket = self._buckets.get(user_id)
        if bucket is None:
            # Never a flood close: every refused chat.send is answered, and that is all.
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst, math.inf, now)
        if bucket.take(now) is not Verdict.ACCEPT:
            raise Refusal(
                "rate_limited",
                f"at most {self.rate:g} chat messages a second (bursts of {self.burst})",
            )


def owns_character(state: CampaignState, user_id: str, character_id: str) -> bool:
    """Whether a token of the character, on the active map or a stored one, is the user's."""
    libraries = [] if state.saved_maps is UNSET else [m.tokens for m in state.saved_maps.values()]
    return any(
        token.character_id == character_id and token.owner_id == user_id
        for tokens in (state.tokens, *libraries)
        for token in tokens.values()
    )


async def is_member(roles: RoleResolver, campaign_id: str, user_id: str) -> bool:
    """Whether the role resolver gives `user_id` a role here; Refusal when it cannot tell now."""
    try:
        await roles.role(campaign_id, Identity(user_id, {}, 0.0))
    except CloseConnection as refusal:
        if refusal.code == CloseCode.FORBIDDEN:
            return False
        if refusal.code == CloseCode.TRY_AGAIN_LATER:
            raise Refusal("db_error", "the recipient could not be checked now") from None
        raise Refusal("internal", "the recipient could not be checked") from None
    return True


class Roster(Protocol):
    """What the session knows about its members, read without waiting."""

    def connected(self, user_id: str) -> bool:
        """Whether the user has a connection to this campaign now."""
        ...

    def owns_character(self, user_id: str, character_id: str) -> bool:
        """Whether the user owns a token of the character in this campaign's state."""
        ...


# --- a campaign's chat -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Logged:
    id: str
    audience: Audience
    data: bytes


class ChatLog:
    """A campaign's recent chat in memory, encoded once: the source of every join's history."""

    def __init__(self, limits: ChatLimits) -> None:
        self.limits = limits
        self.incomplete = False
        self._entries: deque[_Logged] = deque()
        self._ids: set[str] = set()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, message: ChatMessage) -> bytes | None:
        """Add a message and return its encoding; None when a message with its id is logged."""
        if message.id in self._ids:
            return None
        data = _encoder.encode(message)
        self._push(_Logged(message.id, Audience.of(message), data))
        return data

    def restore(self, stored: Iterable[ChatMessage]) -> None:
        """Put the stored messages (oldest first) before those appended since; now complete."""
        live = list(self._entries)
        self._entries.clear()
        self._ids.clear()
        self._bytes = 0
        for message in stored:
            if message.id not in self._ids:
                data = _encoder.encode(message)
                self._push(_Logged(message.id, Audience.of(message), data))
        for entry in live:
            if entry.id not in self._ids:
                self._push(entry)
        self.incomplete = False

    def history_for(self, user_id: str, role: Role) -> Raw:
        """chat.history's payload for one recipient: what they may see, then the last N, capped."""
        tail = b',"incomplete":true}' if self.incomplete else b"}"
        head = b'{"messages":['
        budget = self.limits.history_bytes - len(head) - len(b"]") - len(tail)
        chosen: list[bytes] = []
        for entry in reversed(self._entries):
            if len(chosen) == self.limits.history_messages:
                break
            if not entry.audience.includes(user_id, role):
                continue
            cost = len(entry.data) + (1 if chosen else 0)
            if cost > budget:
                break
            budget -= cost
            chosen.append(entry.data)
        chosen.reverse()
        return Raw(head + b",".join(chosen) + b"]" + tail)

    def _push(self, entry: _Logged) -> None:
        self._entries.append(entry)
        self._ids.add(entry.id)
        self._bytes += len(entry.data)
        limits = self.limits
        while self._entries and (
            len(self._entries) > limits.memory_messages or self._bytes > limits.memory_bytes
        ):
            dropped = self._entries.popleft()
            self._ids.discard(dropped.id)
            self._bytes -= len(dropped.data)


class CampaignChat:
    """One campaign's chat: its log, and chat.send taken as far as a stored message."""

    def __init__(
        self,
        campaign_id: str,
        limits: ChatLimits,
        store: ChatStore,
        roles: RoleResolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.campaign_id = campaign_id
        self.limits = limits
        self.store = store
        self.roles = roles
        self.clock = clock
        self.log = ChatLog(limits)
        self.rate = ChatRate(limits.rate_per_second, limits.rate_burst)
        self._loaded_at = -math.inf
        self._reload: asyncio.Future[None] | None = None

    async def load(self) -> None:
        """Fill the log from storage (with the campaign's state); on failure it is incomplete."""
        self._loaded_at = self.clock()
        try:
            rows = await self.store.recent(self.campaign_id, self.limits.memory_messages)
        except StoreUnavailable as failure:
            log.warning(
                "chat history load failed",
                extra={"campaign_id": self.campaign_id, "reason": str(failure)},
            )
            self.log.incomplete = True
            return
        self.log.restore(message_of(row) for row in rows)

    async def retry(self, interval: float) -> None:
        """Load again if the last load failed and began `interval` seconds ago; callers share it."""
        if not self.log.incomplete:
            return
        if self._reload is None:
            if self.clock() - self._loaded_at < interval:
                return
            self._reload = reload = asyncio.ensure_future(self.load())
            reload.add_done_callback(self._reloaded)
        await asyncio.shield(self._reload)

    def _reloaded(self, _: asyncio.Future[None]) -> None:
        self._reload = None

    async def accept(
        self, sender: Actor, username: str | None, payload: ChatSend, roster: Roster
    ) -> ChatMessage:
        """Check, roll and store one chat.send, or raise Refusal; the caller then publishes it.

        Nothing here holds the session's lock: the checks that ask the database and the insert
        run while the table's other traffic goes on.
        """
        request = read_send(payload, sender.user_id, self.limits)
        self.rate.check(sender.user_id, self.clock())
        recipient = request.recipient_id
        if (
            recipient is not None
            and not roster.connected(recipient)
            and not await is_member(self.roles, self.campaign_id, recipient)
        ):
            raise Refusal("not_found", "the recipient is not a member of this campaign")
        character = request.character_id
        if character is not None and not await self._may_speak_as(sender, character, roster):
            raise Refusal("forbidden", "players speak only as characters whose tokens they own")
        stored = compose(
            request, campaign_id=self.campaign_id, user_id=sender.user_id, username=username
        )
        await store_message(self.store, stored)
        return message_of(stored)

    async def _may_speak_as(self, sender: Actor, character_id: str, roster: Roster) -> bool:
        if sender.role == "gm" or roster.owns_character(sender.user_id, character_id):
            return True
        try:
            return await self.store.may_speak_as(self.campaign_id, sender.user_id, character_id)
        except StoreUnavailable:
            raise Refusal("db_error", "the character could not be checked now") from None


async def store_message(store: ChatStore, message: StoredMessage) -> None:
    """Insert one fresh message, turning store failures into the refusals a sender gets."""
    try:
        await store.insert(message)
    except ChatUnusable as unusable:
        raise Refusal("db_error", f"chat is unavailable: {unusable.reason}") from None
    except StoreUnavailable as failure:
        log.warning(
            "chat message not stored",
            extra={"campaign_id": message.campaign_id, "reason": str(failure)},
        )
        raise Refusal("db_error", "the message could not be stored") from None
    except ChatRejected as rejected:
        raise Refusal("invalid_payload", f"chat.send {rejected.reason}") from None
