"""Ephemeral signals against a real server: pings, cursors and rulers relayed to the others,
paced per sender, outside the inbound bucket, dropped first for a slow client, and never a
way for players to learn where a hidden token is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.connection import Connection
from tests.server.test_flow import SMALL_RECEIVE_BUFFER, RawPeer, fill_pipe
from tests.support.harness import (
    Peer,
    RunningServer,
    serve,
    settings_for,
    token_payload,
)

pytestmark = pytest.mark.anyio

ALL: frozenset[str] = frozenset()
SIGNALS = frozenset({"pointer.ping", "cursor.move", "cursor.hide", "ruler.update", "ruler.clear"})
# Where the hidden token is: no frame a player receives may carry these coordinates.
SECRET = 4242.5


def connection_of(server: RunningServer, user: str, campaign: str = "c1") -> Connection:
    """The server's (only) connection of `user`."""
    session = server.services.manager.sessions[campaign]
    found = [m for m in session.members if isinstance(m, Connection) and m.actor.user_id == user]
    assert len(found) == 1, found
    return found[0]


def signals_of(peer: Peer, sender: str) -> list[dict[str, Any]]:
    """Every signal frame from `sender` the peer has received."""
    return [f for f in peer.everything if f["type"] in SIGNALS and f["user_id"] == sender]


async def test_a_signal_reaches_the_other_members_in_the_senders_name_without_a_seq(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm", "gm")
    bob = await server.join("c1", "bob")
    bob_tab = await server.join("c1", "bob")

    await bob.send("pointer.ping", {"x": 1, "y": 2, "x_invented": 1}, user_id="gm")
    ping = await gm.expect("pointer.ping")

    assert ping == {
        "type": "pointer.ping",
        "campaign_id": "c1",
        "user_id": "bob",
        "payload": {"x": 1.0, "y": 2.0},
    }
    await bob.roundtrip()
    await bob_tab.roundtrip()
    assert signals_of(bob, "bob") == signals_of(bob_tab, "bob") == []
    session = server.services.manager.sessions["c1"]
    assert session.state.seq == 0
    assert not session.history


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("cursor.move", {"x": 10_000_001, "y": 0}),
        ("pointer.ping", {"x": 0}),
        ("ruler.update", {"points": [{"x": 0, "y": 0}] * 65}),
        ("ruler.update", {"points": [{"x": 0, "y": 0}], "color": "red;x"}),
    ],
)
async def test_a_malformed_signal_is_invalid_payload_and_relayed_to_nobody(
    server: RunningServer, kind: str, payload: dict[str, Any]
) -> None:
    gm = await server.join("c1", "gm", "gm")
    bob = await server.join("c1", "bob")

    await bob.send(kind, payload)

    await bob.error("invalid_payload")
    await gm.roundtrip()
    assert signals_of(gm, "bob") == []


async def test_a_cursor_at_a_pointers_rate_costs_no_inbound_budget_and_lands_its_last_position(
    tmp_path: Path,
) -> None:
    # A bucket of 10 a second: 300 cursor frames sent flat out would be refused and, kept up,
    # close the connection, were they metered like changes.
    async with serve(settings_for(tmp_path, rate_per_second=10.0, rate_burst=5)) as server:
        gm = await server.join("c1", "gm", "gm")
        bob = await server.join("c1", "bob")
        for step in range(300):
            await bob.send("cursor.move", {"x": step, "y": 0})
        # The whole burst is still there for changes.
        for index in range(5):
            await bob.send("token.add", token_payload(f"t{index}"))

        last = await gm.until(lambda f: f["type"] == "cursor.move" and f["payload"]["x"] == 299)
        assert last["user_id"] == "bob"
        for _ in range(5):
            answer = await bob.until(lambda f: f["type"] in {"token.add", "error"})
            assert answer["type"] == "token.add", answer
        relayed = [f["payload"]["x"] for f in signals_of(gm, "bob")]
        assert len(relayed) < 300 / 2, "a cursor is paced, not relayed at the sender's rate"
        assert relayed == sorted(relayed)
        assert connection_of(server, "bob").closing is None


async def test_pings_past_their_rate_are_dropped_and_answered_once_a_second_never_closed(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, flood_close_seconds=0.5)) as server:
        gm = await server.join("c1", "gm", "gm")
        bob = await server.join("c1", "bob")
        for step in range(50):
            await bob.send("pointer.ping", {"x": step, "y": 0})
        await bob.roundtrip()
        await gm.roundtrip()

        errors = [f["payload"]["code"] for f in bob.received if f["type"] == "error"]
        assert errors == ["rate_limited"]
        assert [f["payload"]["x"] for f in signals_of(gm, "bob")][:5] == [0, 1, 2, 3, 4]
        assert len(signals_of(gm, "bob")) < 10
        assert connection_of(server, "bob").closing is None


async def test_a_gm_dragging_a_hidden_token_shows_players_no_cursor_ruler_or_ping_until_released(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        gm = await server.join("c1", "gm", "gm")
        other_gm = await server.join("c1", "gm2", "gm", skip=ALL)
        players = [await server.join("c1", user, skip=ALL) for user in ("bob", "cat")]
        await gm.request("token.add", token_payload("h1", visible=False, x=SECRET, y=SECRET))
        await gm.send("cursor.move", {"x": 1, "y": 1})
        for peer in (other_gm, *players):
            await peer.until(lambda f: f["type"] == "cursor.move")
        marks = [len(peer.everything) for peer in players]

        await gm.send("token.grab", {"token_id": "h1"})
        await gm.until(lambda f: f["type"] == "token.grabbed")
        for step in range(20):
            spot = {"x": SECRET + step, "y": SECRET}
            await gm.send("cursor.move", spot)
            await gm.send("token.move", {"token_id": "h1", **spot})
            await gm.send("ruler.update", {"points": [{"x": 0, "y": 0}, spot], "label": "far"})
        await gm.send("pointer.ping", {"x": SECRET, "y": SECRET})
        await other_gm.until(lambda f: f["type"] == "pointer.ping")
        await other_gm.until(
            lambda f: f["type"] == "cursor.move" and f["payload"]["x"] == SECRET + 19
        )
        await gm.send("token.release", {"token_id": "h1"})
        await gm.until(lambda f: f["type"] == "token.released")
        await gm.send("cursor.move", {"x": 777, "y": 777})
        for peer in players:
            await peer.until(lambda f: f["type"] == "cursor.move" and f["payload"]["x"] == 777)

        for peer, mark in zip(players, marks, strict=True):
            while_held = peer.everything[mark:]
            from_gm = [(f["type"], f["payload"]) for f in while_held if f["user_id"] == "gm"]
            assert from_gm == [("cursor.hide", {}), ("cursor.move", {"x": 777.0, "y": 777.0})]
            text = json.dumps(while_held)
            for secret in (str(SECRET), "h1", "far"):
                assert secret not in text
        assert {f["type"] for f in signals_of(other_gm, "gm")} >= {
            "cursor.move",
            "ruler.update",
            "pointer.ping",
        }


async def test_a_slow_clients_queue_holds_at_most_one_signal_per_sender_and_channel(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, ping_interval=120.0, ping_timeout=120.0)
    async with serve(settings) as server:
        gm = await server.join("c1", "gm", "gm")
        senders = [await server.join("c1", f"p{index}") for index in range(3)]
        slow_peer = await RawPeer.open(
            server.ws_url("c1", server.token("slow")), receive_buffer=SMALL_RECEIVE_BUFFER
        )
        try:
            slow = connection_of(server, "slow")
            await fill_pipe(gm, senders, slow)
            queued_before = slow.queued
            peaks: list[int] = []
            for step in range(200):
                for sender in senders:
                    await sender.send("cursor.move", {"x": step, "y": 0})
                    await sender.send("ruler.update", {"points": [{"x": step, "y": 0}]})
                peaks.append(slow.queued)
            for sender in senders:
                await sender.roundtrip()
            await gm.roundtrip()

            assert slow.closing is None, "signals never make a client too slow"
            assert max(peaks) <= queued_before + 2 * len(senders)
            metrics = server.services.metrics.counts.dropped
            assert metrics["cursor.move", "coalesced"] > 0
        finally:
            slow_peer.close()


async def test_the_metrics_count_relayed_and_dropped_signals_and_lock_refusals(
    server: RunningServer,
) -> None:
    gm = await server.join("c1", "gm", "gm")
    bob = await server.join("c1", "bob")
    await gm.request("token.add", token_payload("t1"))
    await gm.send("token.grab", {"token_id": "t1"})
    await bob.until(lambda f: f["type"] == "token.grabbed")
    await bob.send("token.move", {"token_id": "t1", "x": 1, "y": 1})
    await bob.until(lambda f: f["type"] == "error")
    # Back to back: two or three go at once (the pacer's tolerance is 1.9 intervals), the next
    # waits and the later ones replace it in turn; the last one goes out.
    for step in range(6):
        await bob.send("cursor.move", {"x": step, "y": 0})
    await gm.until(lambda f: f["type"] == "cursor.move" and f["payload"]["x"] == 5)

    async with httpx.AsyncClient(base_url=server.http) as http:
        text = (await http.get("/metrics")).text

    relayed = sample(text, 'vtt_ephemeral_relayed_total{type="cursor.move"}')
    coalesced = sample(text, 'vtt_ephemeral_dropped_total{reason="coalesced",type="cursor.move"}')
    assert (relayed + coalesced, coalesced >= 2) == (6, True)
    assert "vtt_lock_refusals_total 1.0" in text
    assert 'vtt_errors_total{code="locked"} 1.0' in text


def sample(text: str, name: str) -> float:
    """The value of the metric sample `name` (with its labels) in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in /metrics")
