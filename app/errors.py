"""Close codes and reply errors: the one place that says what each means to a client.

CloseConnection (fatal: the socket is closed with `code`)
  4400 bad request     malformed campaign id               don't retry
  4401 unauthorized    token missing/invalid/expired       fresh token, then reconnect
  4403 forbidden       not a member, or Origin refused     don't retry
  4429 too many        connection caps                     retry later
  1008 policy          sustained flooding                  retry later with backoff
  1009 too big         frame over the size limit           fix the client
  1011 internal        e.g. stored state undecodable       retry with backoff
  1012 restarting      deploy / drain                      reconnect soon
  1013 try later       store down, no keys, slow consumer  retry with backoff
Refusal (recoverable: an `error` reply to the sender; state unchanged)
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class CloseCode(IntEnum):
    """WebSocket close codes this server uses."""

    NORMAL = 1000
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    TOO_MANY_CONNECTIONS = 4429


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
