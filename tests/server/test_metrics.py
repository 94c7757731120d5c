"""The metrics of a real server: what real traffic moves, and what no scrape ever names."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.errors import CloseCode
from app.metrics import UNKNOWN
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for, token_payload
from tests.support.samples import Samples, parse_samples

# Identifiers no metric may carry; distinctive, so a leak cannot hide behind a common word.
CAMPAIGN = "camp-5d1f9e"
GM = "user-gm-83a2c7"
PLAYER = "user-player-b40e16"
# The frames every join starts with.


async def _scrape(server: RunningServer) -> str:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{server.http}/metrics")
    assert response.status_code == 200
    return response.text


def _increase(before: Samples, after: Samples, name: str) -> dict[str, float]:
    """How much each series of a one-label counter grew, keyed by its label value."""
    return {
        labels[0][1]: value - before[(sample, labels)]
        for (sample, labels), value in after.items()
        if sample == name and value != before[(sample, labels)]
    }


@pytest.mark.anyio
async def test_real_traffic_moves_exactly_the_counters_it_should(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, flush_interval=3600)) as server:
        before = parse_samples(await _scrape(server))
        gm = await server.join(CAMPAIGN, GM, "gm")
        player = await server.join(CAMPAIGN, PLAYER)
        await gm.request("token.add", token_payload("t1"))
        await player.expect("token.add")
        await gm.request("token.move", {"token_id": "t1", "x": 3, "y": 4})
        await player.expect("token.move")
        # Invalid: a type nobody knows, spelled as the campaign id, which must not become a label.
        await player.send(CAMPAIGN)
        await player.error("unknown_type")
        await player.roundtrip()
        refused = await Peer.open(server.ws_url(CAMPAIGN, "not-a-jwt"))
        assert await refused.closed() == (CloseCode.UNAUTHORIZED, "unreadable token")
        text = await _scrape(server)
        after = parse_samples(text)
        await gm.close()
        await player.close()

    assert before[("vtt_open_connections", ())] == 0
    assert before[("vtt_live_sessions", ())] == 0
    assert after[("vtt_open_connections", ())] == 2
    assert after[("vtt_live_sessions", ())] == 1
    assert after[("vtt_dirty_sessions", ())] == 1, "the edits are not written yet"
    assert _increase(before, after, "vtt_messages_in_total") == {
        "token.add": 1,
        "token.move": 1,
        "ping": 1,
        UNKNOWN: 1,
    }
    assert _increase(before, after, "vtt_messages_out_total") == {
        "state.sync": 2,
        "map.list": 2,
        "chat.history": 2,
        # Each joiner's presence.sync; the GM's arrival to the GM, the player's to both.
        "presence.sync": 2,
        "presence.join": 3,
        "token.add": 2,
        "token.move": 2,
        "pong": 1,
        "error": 1,
    }
    assert _increase(before, after, "vtt_errors_total") == {"unknown_type": 1}
    assert _increase(before, after, "vtt_handshake_refusals_total") == {"unauthorized": 1}
    latency = "vtt_broadcast_latency_seconds_count"
    assert after[(latency, ())] - before[(latency, ())] == 2
    for identifier in (CAMPAIGN, GM, PLAYER):
        assert identifier not in text, f"{identifier} appears in the scrape"


@pytest.mark.anyio
async def test_the_greeting_of_every_join_is_counted_as_messages_out(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, flush_interval=3600)) as server:
        before = parse_samples(await _scrape(server))
        gm = await server.join(CAMPAIGN, GM, "gm")
        player = await server.join(CAMPAIGN, PLAYER)
        after = parse_samples(await _scrape(server))
        await gm.close()
        await player.close()

    assert _increase(before, after, "vtt_messages_out_total") == {
        "state.sync": 2,
        "map.list": 2,
        "chat.history": 2,
        "presence.sync": 2,
        "presence.join": 3,
    }
