"""Chat at a running server, seen from its clients: saying something, and what each was told."""

from __future__ import annotations

import re
from typing import Any

from tests.support.harness import Peer

# chat.message's created_at: RFC 3339 in UTC at whole seconds.
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def user_of(peer: Peer) -> str:
    """The user a greeted peer is connected as (its state.sync carries the recipient's id)."""
    user: str = peer.sync["user_id"]
    return user


async def say(peer: Peer, content: Any = "hello", **fields: Any) -> dict[str, Any]:
    """Send one chat.send; return the sender's answer: its own chat.message, or an error.

    What the peer was sent before (another connection's messages of the same user among it)
    is read first, so that it is not taken for the answer.
    """
    user = user_of(peer)
    await peer.roundtrip()
    await peer.send("chat.send", {"content": content, **fields})
    return await peer.until(
        lambda f: f["type"] == "error" or (f["type"] == "chat.message" and f["user_id"] == user)
    )


async def said(peer: Peer, content: Any = "hello", **fields: Any) -> dict[str, Any]:
    """Send one chat.send that must be accepted; its chat.message as the sender received it."""
    answer = await say(peer, content, **fields)
    assert answer["type"] == "chat.message", answer
    return answer


def chat_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat.message frames among `frames`, in order."""
    return [frame for frame in frames if frame["type"] == "chat.message"]


def contents(messages: list[dict[str, Any]]) -> list[Any]:
    """The content of each chat.message frame or chat.history entry, in order."""
    return [m["payload"]["content"] if "payload" in m else m["content"] for m in messages]


def history_of(peer: Peer) -> list[Any]:
    """The contents of the chat.history a greeted peer received, oldest first."""
    return contents(peer.history["payload"]["messages"])
