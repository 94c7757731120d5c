"""In-memory stand-ins for the server's seams: a session member, a store that records, a key source.

They implement the Protocols of app/ (`Member`, `Store`, `KeySource`) so that unit tests drive
the session, the manager and the verifier directly, without sockets or databases; `change`
builds what a member submits, `live` what it submits aside (grabs, releases, signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from jose import jwk
from jose.backends.base import Key

from app.auth.roles import DevClaimRoles
from app.auth.tokens import TokenPolicyConfig, TokenVerifier
from app.chat import CampaignChat
from app.config import Settings
from app.connection import text_of
from app.ephemeral import LiveMessage
from app.errors import CloseCode, CloseConnection
from app.model import Actor, Role, StateChange
from app.persistence.chat import MemoryChatStore
from app.persistence.store import MemoryStore, Saved
from app.protocol import (
    AuthRefreshMsg,
    PingMsg,
    Signal,
    TokenGrabMsg,
    TokenReleaseMsg,
    decode_client_message,
)
from app.session import Outgoing
from tests.support.harness import PRESENCE
from tests.support.jwks_server import AZP, signing_key


def campaign_chat(campaign_id: str, settings: Settings) -> CampaignChat:
    """An empty campaign chat over a MemoryChatStore, roles from dev tokens (none offline)."""
    return CampaignChat(campaign_id, settings.chat, MemoryChatStore(), DevClaimRoles())


def change(kind: str, payload: dict[str, Any]) -> StateChange:
    """A state-changing client message, decoded exactly as the server decodes it."""
    message = decode_client_message(json.dumps({"type": kind, "payload": payload}))
    assert not isinstance(message, PingMsg | AuthRefreshMsg), kind
    return message


def live(kind: str, payload: dict[str, Any]) -> LiveMessage:
    """A message that changes nothing stored (a grab, a release, a signal), decoded."""
    message = decode_client_message(json.dumps({"type": kind, "payload": payload}))
    assert isinstance(message, TokenGrabMsg | TokenReleaseMsg | Signal), kind
    return message


@dataclass(frozen=True)
class Delivery:
    """One message a member was handed: decoded, with what lets its outbox conflate it."""

    message: dict[str, Any]
    token_id: str | None
    conflates: bool
    signal: str | None = None


class FakeMember:
    """A session member that keeps every message it is handed, decoded into a dict.

    `deliveries` (and so `received`, `types`, `take`) leaves out the types in `skip`, which
    arrive whenever someone else comes or goes; `everything` keeps them too.
    """

    def __init__(
        self,
        user_id: str,
        role: Role = "player",
        username: str | None = None,
        skip: frozenset[str] = PRESENCE,
    ) -> None:
        self.actor = Actor(user_id=user_id, role=role)
        self.username = username
        self.skip = skip
        self.deliveries: list[Delivery] = []
        self.everything: list[Delivery] = []
        self.closed_with: CloseConnection | None = None

    def batch(self) -> AbstractContextManager[None]:
        """Nothing to gather: every delivery is kept as it comes."""
        return contextlib.nullcontext()

    def close(self, reason: CloseConnection) -> None:
        """Remember the first reason the session closed this member with."""
        if self.closed_with is None:
            self.closed_with = reason

    def deliver(self, outgoing: Outgoing) -> None:
        """Keep the message, decoded."""
        message = json.loads(text_of(outgoing.frame))
        delivery = Delivery(message, outgoing.token_id, outgoing.conflates, outgoing.signal)
        self.everything.append(delivery)
        if message["type"] not in self.skip:
            self.deliveries.append(delivery)

    def deliver_soon(self, outgoing: Outgoing) -> None:
        """Kept as it comes, as `deliver` keeps it (the order is what matters here)."""
        self.deliver(outgoing)

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every message handed over so far, in order."""
        return [delivery.message for delivery in self.deliveries]

    @property
    def types(self) -> list[str]:
        """The type of every message handed over so far, in order."""
        return [message["type"] for message in self.received]

    def take(self) -> list[dict[str, Any]]:
        """The messages handed over since the last `take`, in order."""
        taken = self.received
        self.deliveries.clear()
        return taken


class RecordingStore(MemoryStore):
    """A MemoryStore that counts loads, can hold them, and reports when each write was tried."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        # Cleared by a test to hold load mid-read; set again to let it finish.
        self.load_gate = asyncio.Event()
        self.load_gate.set()
        # The event loop's time at each save_many attempt, successful or not.
        self.attempts: asyncio.Queue[float] = asyncio.Queue()

    async def load(self, campaign_id: str) -> bytes | None:
        """Count the load and wait for the gate, then load (or fail, during an outage)."""
        self.loads += 1
        await self.load_gate.wait()
        return await super().load(campaign_id)

    async def load_fenced(self, campaign_id: str) -> tuple[bytes | None, int]:
        """Count the load and wait for the gate, then load with the fence (or fail)."""
        self.loads += 1
        await self.load_gate.wait()
        return await super().load_fenced(campaign_id)

    async def save_many(
        self, rows: Sequence[tuple[str, bytes]], fences: Mapping[str, int] | None = None
    ) -> Saved:
        """Report the attempt, then write (or fail, during an outage)."""
        self.attempts.put_nowait(asyncio.get_running_loop().time())
        return await super().save_many(rows, fences)


class StaticKeys:
    """A key source holding one key under one kid, always ready."""

    def __init__(self, key: Key, kid: str = "k1") -> None:
        self.key = key
        self.kid = kid

    @property
    def ready(self) -> bool:
        """Always: the key is at hand."""
        return True

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to release."""

    async def key_for(self, kid: str | None) -> Key:
        """The key, when `kid` names it."""
        if kid != self.kid:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "unknown signing key")
        return self.key


@functools.cache
def k1_public() -> Key:
    """The public half of the test signing key `k1`."""
    return jwk.construct(signing_key("k1").public_pem, "RS256")


def static_verifier(
    issuer: str | None = "http://127.0.0.1:1", parties: tuple[str, ...] = (AZP,)
) -> TokenVerifier:
    """A verifier of tokens signed by the test key `k1`, with no key endpoint at all."""
    return TokenVerifier(StaticKeys(k1_public()), TokenPolicyConfig(issuer, parties, leeway=5.0))
