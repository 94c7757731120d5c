"""Close codes and reply errors: the one place that says what each means to a client.

CloseConnection  fatal: the socket is closed with a CloseCode, whose `reconnect` says what a
                 client should do next (clients/ts imports the same table, generated)
Refusal          recoverable: an `error` reply to the sender, whose state did not change
"""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Final


class Reconnect(Enum):
    """What a client should do after the server closed its connection with a code."""

    advice: str

    def __new__(cls, name: str, advice: str) -> Reconnect:
        member = object.__new__(cls)
        member._value_ = name
        member.advice = advice
        return member

    NEVER = "never", "the request cannot succeed as sent: fix it, don't retry"
    FRESH_TOKEN = "fresh-token", "get a fresh token, then reconnect at once"
    LATER = "later", "a cap is full: wait a while, then retry"
    BACKOFF = "backoff", "retry with exponential backoff and jitter"
    SOON = "soon", "a deploy: reconnect within a moment (another machine may answer)"


class CloseCode(IntEnum):
    """Every WebSocket close code this server sends, with its meaning and reconnect advice."""

    reconnect: Reconnect
    meaning: str

    def __new__(cls, code: int, reconnect: Reconnect, meaning: str) -> CloseCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.reconnect = reconnect
        member.meaning = meaning
        return member

    BAD_REQUEST = 4400, Reconnect.NEVER, "malformed campaign id"
    UNAUTHORIZED = 4401, Reconnect.FRESH_TOKEN, "token missing, invalid or expired"
    FORBIDDEN = 4403, Reconnect.NEVER, "not a member of the campaign, or Origin refused"
    TOO_MANY_CONNECTIONS = 4429, Reconnect.LATER, "too many connections (user or campaign)"
    POLICY_VIOLATION = 1008, Reconnect.BACKOFF, "sustained flooding"
    TOO_BIG = 1009, Reconnect.NEVER, "a frame over the size limit"
    INTERNAL_ERROR = 1011, Reconnect.BACKOFF, "internal error (e.g. stored state unreadable)"
    SERVICE_RESTART = 1012, Reconnect.SOON, "server restarting or draining"
    TRY_AGAIN_LATER = 1013, Reconnect.BACKOFF, "store down, no signing keys, or slow consumer"

    @classmethod
    def of(cls, code: int) -> CloseCode | None:
        """The member for `code`, or None for a code this server never sends."""
        member = cls._value2member_map_.get(code)
        return member if isinstance(member, cls) else None


class CloseConnection(Exception):
    """A fatal condition: the connection is closed with `code` and a short `reason`."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason[:120]


ERROR_CODES: Final = (
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "invalid_payload",
    "forbidden",
    "not_found",
    "invalid_request",
    "limit_exceeded",
    "rate_limited",
    "db_error",
    "locked",
    "internal",
)


class Refusal(Exception):
    """A message that cannot be applied; the sender gets an `error` reply, nothing changes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def forbidden(message: str) -> Refusal:
    """The sender's role or ownership does not allow this."""
    return Refusal("forbidden", message)


def not_found(message: str) -> Refusal:
    """The addressed token or map does not exist (or is hidden from the sender)."""
    return Refusal("not_found", message)


def invalid_payload(message: str) -> Refusal:
    """A payload value the server's configuration does not accept."""
    return Refusal("invalid_payload", message)


def limit_exceeded(message: str) -> Refusal:
    """A collection would grow past its configured limit."""
    return Refusal("limit_exceeded", message)


def invalid_request(message: str) -> Refusal:
    """A well-formed request that cannot apply to the current state."""
    return Refusal("invalid_request", message)


def locked(message: str) -> Refusal:
    """Another user holds the token's drag lock."""
    return Refusal("locked", message)


def rate_limited(message: str) -> Refusal:
    """The sender sent more of something than its rate allows; the excess was dropped."""
    return Refusal("rate_limited", message)
