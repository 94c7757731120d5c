"""A server shutdown sends every client what was applied before its 1012: the merged moves it
applies on the way out included, so each client's resume point is the state that was stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from app.auth import Auth
from app.connection import Connection
from app.session import Session
from app.transport import adapter
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for, token_payload
from tests.support.poll import poll
from tests.support.sql import stored_state

pytestmark = pytest.mark.anyio

# One move a burst, and the next one only ten seconds later: every move after the first is
# merged and waits, so the shutdown finds the last position still to apply.
HELD = {"rate_per_second": 0.1, "rate_burst": 1}


def pending_x(server: RunningServer, user: str) -> Any:
    """The x of `user`'s merged move of t1 waiting for the bucket, or None."""
    session = server.services.manager.sessions["c1"]
    for member in session.members:
        if isinstance(member, Connection) and member.actor.user_id == user:
            move = member._pending.get("t1")
            return None if move is None else move.payload.x
    return None


async def read_until_closed(peer: Peer) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame `peer` got until the server closed it, and the close code."""
    code, _ = await peer.closed(timeout=TIMEOUT)
    return peer.received, code


def last_seq(frames: list[dict[str, Any]]) -> int:
    """The highest seq among `frames`."""
    return max(int(frame["seq"]) for frame in frames if isinstance(frame.get("seq"), int))


async def test_a_shutdown_sends_the_moves_it_applies_on_the_way_out_before_the_1012(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, **HELD)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm", "gm")
        await gm.request("token.add", token_payload("t1"))
        player = await server.join("c1", "player")
        # The GM's bucket is spent by the add: these moves all merge, the last one waiting.
        for x in range(1, 21):
            await gm.send("token.move", {"token_id": "t1", "x": x, "y": 0})
        await poll(lambda: pending_x(server, "gm") == 20, TIMEOUT, "the last move to wait")
        server.server.should_exit = True
        seen = {name: await read_until_closed(peer) for name, peer in (("gm", gm), ("pl", player))}
    stored = await stored_state(None, settings.sqlite_path, "c1")

    assert stored["tokens"]["t1"]["x"] == 20
    for frames, code in seen.values():
        assert code == 1012
        moves = [f for f in frames if f["type"] == "token.move"]
        assert moves[-1]["payload"]["x"] == 20
        assert last_seq(frames) == stored["seq"]


async def test_a_connection_the_app_does_not_close_is_closed_1012_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = asyncio.Event()

    async def hangs(self: Connection, session: Session, auth: Auth) -> None:
        await released.wait()

    monkeypatch.setattr(adapter, "SHUTDOWN_GRACE", 0.3)
    monkeypatch.setattr(Connection, "_close_for_restart", hangs)
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm", "gm")
        server.server.should_exit = True
        started = time.monotonic()
        code, _ = await gm.closed(timeout=TIMEOUT)
        waited = time.monotonic() - started
        released.set()

    assert code == 1012
    assert 0.3 <= waited < TIMEOUT
