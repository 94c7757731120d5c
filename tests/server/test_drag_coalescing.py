"""Inbound token.move coalescing against a real server: a drag at any pointer rate is merged to
its latest positions, never refused, never closed, and stays in order with the sender's other
messages; other floods are still refused and closed with 1008.

Most tests shrink the rate (10 a second, burst 5) and drag at 144 Hz, which is more hostile
than a 144 Hz drag against the default 60 a second; one runs the real defaults.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from app.config import Limits
from app.connection import MOVE_FRAME_MAX, Connection
from tests.support.harness import (
    TIMEOUT,
    Peer,
    RunningServer,
    serve,
    settings_for,
    token_payload,
)

pytestmark = pytest.mark.anyio

HERTZ = 144.0
SLOW = {"rate_per_second": 10.0, "rate_burst": 5}


@dataclass
class Watch:
    """What one watcher saw of a drag: each position (x) and when it arrived."""

    seen: list[tuple[float, float]] = field(default_factory=list)

    @property
    def xs(self) -> list[float]:
        """The positions, in arrival order."""
        return [x for _, x in self.seen]


async def poll(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until `check()` holds, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def drag(
    peer: Peer, token_ids: list[str], hertz: float, seconds: float
) -> tuple[list[float], int]:
    """Move `token_ids` together (one move each per pointer event) to x = 0, 1, 2, ... at
    `hertz` for `seconds`, on a fixed schedule; each event's send time, and the last x."""
    steps = round(hertz * seconds)
    sent_at: list[float] = []
    start = time.monotonic()
    for step in range(steps):
        delay = start + step / hertz - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.monotonic())
        for token_id in token_ids:
            await peer.send("token.move", {"token_id": token_id, "x": step, "y": 0})
    return sent_at, steps - 1


async def watch(peer: Peer, token_id: str, final: float) -> Watch:
    """Record every position of `token_id` that reaches `peer` until the final one has."""
    seen = Watch()
    while True:
        frame = await peer.recv()
        if frame["type"] == "token.move" and frame["payload"]["token_id"] == token_id:
            x = frame["payload"]["x"]
            seen.seen.append((time.monotonic(), x))
            if x == final:
                return seen


def connection_of(server: RunningServer, campaign: str, user: str) -> Connection:
    """The server's connection of `user` in `campaign`."""
    session = server.services.manager.sessions[campaign]
    found = [m for m in session.members if isinstance(m, Connection) and m.actor.user_id == user]
    assert len(found) == 1, found
    return found[0]


def errors(peer: Peer) -> list[str]:
    """The codes of every error the peer received."""
    return [f["payload"]["code"] for f in peer.received if f["type"] == "error"]


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `samples`."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def dragged_table(server: RunningServer, *token_ids: str) -> tuple[Peer, Peer, Peer]:
    """A GM who added `token_ids`, and a player and a second GM who saw them added."""
    gm = await server.join("c1", "gm", "gm")
    player = await server.join("c1", "player")
    other_gm = await server.join("c1", "gm2", "gm")
    for token_id in token_ids:
        await gm.request("token.add", token_payload(token_id))
    for peer in (player, other_gm):
        await peer.until(lambda f: f["type"] == "token.add" and f["payload"]["token_id"] == "t1")
    return gm, player, other_gm


async def drag_and_watch(
    server: RunningServer, hertz: float, seconds: float
) -> tuple[Peer, list[float], dict[str, Watch]]:
    """The GM drags t1 while everyone (the GM included) watches; what each saw."""
    gm, player, other_gm = await dragged_table(server, "t1")
    final = round(hertz * seconds) - 1
    watchers = {
        name: asyncio.create_task(watch(peer, "t1", final))
        for name, peer in (("gm", gm), ("player", player), ("other gm", other_gm))
    }
    sent_at, _ = await drag(gm, ["t1"], hertz, seconds)
    async with asyncio.timeout(TIMEOUT):
        seen = {name: await task for name, task in watchers.items()}
    return gm, sent_at, seen


def staleness(sent_at: list[float], seen: Watch) -> list[float]:
    """For each position sent, how long until this watcher had it or a newer one."""
    samples, index = [], 0
    for step, sent in enumerate(sent_at):
        while index < len(seen.seen) and seen.seen[index][1] < step:
            index += 1
        if index < len(seen.seen):
            samples.append(max(0.0, seen.seen[index][0] - sent))
    return samples


@pytest.mark.parametrize("impl", ["websockets-sansio", "websockets"])
async def test_a_144_hz_drag_at_14_times_the_rate_stays_connected_and_lands_everywhere(
    tmp_path: Path, impl: str
) -> None:
    async with serve(settings_for(tmp_path, ws_impl=impl, **SLOW)) as server:
        gm, sent_at, seen = await drag_and_watch(server, HERTZ, seconds=3.0)

        for name, watched in seen.items():
            assert watched.xs[-1] == len(sent_at) - 1, name
            assert watched.xs == sorted(watched.xs), f"{name} saw positions go backwards"
            assert len(watched.xs) < len(sent_at) // 4, f"{name}: the moves were not merged"
        await gm.roundtrip()
        assert errors(gm) == [], "a drag is never refused"
        assert connection_of(server, "c1", "gm").closing is None


async def test_a_144_hz_drag_for_15_s_on_the_default_settings_stays_connected_and_lands(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm, sent_at, seen = await drag_and_watch(server, HERTZ, seconds=15.0)

        for name, watched in seen.items():
            samples = staleness(sent_at, watched)
            print(
                f"\n{name}: {len(watched.xs)} of {len(sent_at)} positions; staleness "
                f"p50 {percentile(samples, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(samples, 0.99) * 1000:.1f} ms"
            )
            assert watched.xs[-1] == len(sent_at) - 1, name
        await gm.roundtrip()
        assert errors(gm) == []


async def test_the_last_position_of_every_token_of_a_group_drag_lands(tmp_path: Path) -> None:
    tokens = [f"t{index}" for index in range(1, 6)]
    async with serve(settings_for(tmp_path, **SLOW)) as server:
        gm, player, _ = await dragged_table(server, *tokens)

        _, final = await drag(gm, tokens, HERTZ, seconds=2.0)

        last: dict[str, float] = {}

        def landed(frame: dict[str, Any]) -> bool:
            if frame["type"] == "token.move":
                last[frame["payload"]["token_id"]] = frame["payload"]["x"]
            return last == dict.fromkeys(tokens, final)

        await player.until(landed)
        late = await server.join("c1", "late")
        assert {t: late.sync["payload"]["tokens"][t]["x"] for t in tokens} == last
        assert errors(gm) == []


async def test_an_update_sent_right_after_a_drag_arrives_after_its_last_move(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, **SLOW)) as server:
        gm, player, _ = await dragged_table(server, "t1")

        _, final = await drag(gm, ["t1"], HERTZ, seconds=1.0)
        await gm.send("token.update", {"token_id": "t1", "name": "Dropped here"})
        await gm.send("token.move", {"token_id": "t1", "x": -1, "y": 0})

        updated = await player.until(lambda f: f["type"] == "token.update")
        moves = [f["payload"]["x"] for f in player.received if f["type"] == "token.move"]
        assert moves[-1] == final, "the update overtook the drag's last position"
        after = await player.until(lambda f: f["type"] == "token.move")
        assert after["payload"]["x"] == -1
        assert after["seq"] > updated["seq"]
        assert errors(gm) == []


async def test_a_message_sent_mid_drag_comes_after_every_position_sent_before_it(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, **SLOW)) as server:
        gm, player, _ = await dragged_table(server, "t1")
        await drag(gm, ["t1"], HERTZ, seconds=0.5)
        await gm.send("token.move", {"token_id": "t1", "x": 1000, "y": 0})
        await gm.send("scene.darkness", {"darkness_level": 0.25})
        await gm.send("ping")
        await drag(gm, ["t1"], HERTZ, seconds=0.5)

        darkness = await player.until(lambda f: f["type"] == "scene.darkness")
        before = [f for f in player.received if f["type"] == "token.move"]
        assert before[-1]["payload"]["x"] == 1000
        assert before[-1]["seq"] < darkness["seq"]
        await gm.until(lambda f: f["type"] == "pong")
        assert errors(gm) == [], "a message queued behind a drag is not refused"


async def test_a_dragger_who_disconnects_mid_drag_leaves_the_token_on_its_last_position(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, **SLOW)) as server:
        gm, player, _ = await dragged_table(server, "t1")
        _, final = await drag(gm, ["t1"], HERTZ, seconds=1.0)

        await gm.close()

        await player.until(lambda f: f["type"] == "token.move" and f["payload"]["x"] == final)
        late = await server.join("c1", "late")
        assert late.sync["payload"]["tokens"]["t1"]["x"] == final


async def test_moves_of_ever_new_tokens_hold_at_most_the_tokens_per_map_and_still_apply(
    tmp_path: Path,
) -> None:
    limits = Limits(max_tokens=5)
    settings = settings_for(tmp_path, limits=limits, rate_per_second=50.0, rate_burst=5)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm", "gm")
        await gm.request("token.add", token_payload("t1"))
        connection = connection_of(server, "c1", "gm")
        most = 0

        async def sample() -> None:
            nonlocal most
            while True:
                most = max(most, connection.merging)
                await asyncio.sleep(0.001)

        sampler = asyncio.create_task(sample())
        try:
            for index in range(40):
                await gm.send("token.move", {"token_id": f"ghost{index}", "x": index, "y": 0})
            await gm.send("token.move", {"token_id": "t1", "x": 7, "y": 7})
            moved = await gm.until(lambda f: f["type"] == "token.move")
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

        assert moved["payload"] == {"token_id": "t1", "x": 7, "y": 7}
        assert 1 <= most <= limits.max_tokens
        assert set(errors(gm)) == {"not_found"}, "each ghost's move is applied, and refused"
        assert len(errors(gm)) == 40
        assert connection.closing is None


async def flood(peer: Peer, message: str, until: asyncio.Event, hertz: float) -> None:
    """Send `message` at `hertz` until `until` is set or the server closed the connection."""
    start = time.monotonic()
    sent = 0
    while not until.is_set():
        delay = start + sent / hertz - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await peer.send_raw(message)
        except ConnectionClosed:
            return
        sent += 1


@pytest.mark.parametrize(
    "message",
    [
        {"type": "token.update", "payload": {"token_id": "t1", "name": "spam"}},
        {"type": "token.move", "payload": {"token_id": "t1", "x": 1, "y": 1}, "pad": ""},
    ],
    ids=["token.update", "a move frame too big to merge"],
)
async def test_a_flood_of_another_kind_is_still_refused_then_closed_with_1008(
    tmp_path: Path, message: dict[str, Any]
) -> None:
    if "pad" in message:
        message["pad"] = "x" * MOVE_FRAME_MAX
    settings = settings_for(tmp_path, flood_close_seconds=1.5, **SLOW)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm", "gm")
        await gm.request("token.add", token_payload("t1"))
        stop = asyncio.Event()
        flooder = asyncio.create_task(flood(gm, json.dumps(message), stop, hertz=200))
        try:
            code, reason = await gm.closed(timeout=TIMEOUT)
        finally:
            stop.set()
            await flooder

        assert (code, reason) == (1008, "sustained flooding")
        assert "rate_limited" in errors(gm)
