"""A campaign at a running server, seen from its clients: who joins, what each was sent since."""

from __future__ import annotations

import uuid
import weakref
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.harness import Peer, RunningServer

ZONE = {"x": 0, "y": 0, "w": 100, "h": 50, "visible": True}
UNPROMPTED = frozenset({"pong", "state.saved"})

_cursors: weakref.WeakKeyDictionary[Peer, int] = weakref.WeakKeyDictionary()


def new_campaign() -> str:
    """A campaign id no other test uses."""
    return f"c-{uuid.uuid4().hex[:12]}"


async def join(server: RunningServer, campaign: str, user: str, role: Any = "player") -> Peer:
    """Join and read the greeting; `news` starts after it."""
    peer = await server.join(campaign, user, role)
    _cursors[peer] = len(peer.received)
    return peer


async def table(server: RunningServer) -> tuple[Peer, Peer, str]:
    """A GM and a player at a fresh campaign."""
    campaign = new_campaign()
    gm = await join(server, campaign, "gm-ada", "gm")
    player = await join(server, campaign, "pl-bo")
    return gm, player, campaign


async def news(peer: Peer) -> list[dict[str, Any]]:
    """Every frame `peer` received since the last call; a roundtrip drains them.

    Pongs and `state.saved` (which the flush loop sends whenever it wrote) are left out.
    """
    await peer.roundtrip()
    start = _cursors.get(peer, 0)
    _cursors[peer] = len(peer.received)
    return [frame for frame in peer.received[start:] if frame["type"] not in UNPROMPTED]


async def frames_before_pong(peer: Peer) -> list[dict[str, Any]]:
    """Ping, and return what the peer received before the pong (state.saved aside)."""
    start = len(peer.received)
    await peer.roundtrip()
    return [f for f in peer.received[start:-1] if f["type"] != "state.saved"]


async def saved(peer: Peer, seq: int) -> None:
    """Wait until the server says everything up to `seq` is durable."""
    await peer.until(lambda f: f["type"] == "state.saved" and f["payload"]["seq"] >= seq)


async def prompted(peer: Peer) -> dict[str, Any]:
    """The next frame that is not a `state.saved` (which a flush may slip in at any time)."""
    return await peer.until(lambda frame: frame["type"] != "state.saved")


async def act(peer: Peer, kind: str, payload: Any = None, **envelope: Any) -> list[dict[str, Any]]:
    """Send one message; return what the sender received because of it."""
    await peer.send(kind, payload, **envelope)
    return await news(peer)


async def act_raw(peer: Peer, data: str | bytes) -> list[dict[str, Any]]:
    """Send one frame as is; return what the sender received because of it."""
    await peer.send_raw(data)
    return await news(peer)


async def snapshot(server: RunningServer, campaign: str, role: Any = "gm") -> dict[str, Any]:
    """The state.sync payload a fresh joiner of `role` receives."""
    peer = await server.join(campaign, f"observer-{uuid.uuid4().hex[:8]}", role)
    await peer.close()
    payload: dict[str, Any] = peer.sync["payload"]
    return payload


def types(frames: list[dict[str, Any]]) -> list[str]:
    """The frame types, in order."""
    return [frame["type"] for frame in frames]


def only_error(frames: list[dict[str, Any]], code: str) -> dict[str, Any]:
    """The single frame of `frames`, which must be an error with `code` and no seq."""
    assert types(frames) == ["error"], frames
    error = frames[0]
    assert error["payload"]["code"] == code, error
    assert isinstance(error["payload"]["message"], str)
    assert "seq" not in error
    return error


async def refusal(peer: Peer) -> int | None:
    """The close code of a handshake the server refused; fails when it sent anything first."""
    try:
        frame = await peer.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    pytest.fail(f"the server admitted the connection and sent {frame['type']}")


def ws_url(server: RunningServer, query: str) -> str:
    """A /ws URL with a raw query string."""
    return f"ws://127.0.0.1:{server.port}/ws?{query}"
