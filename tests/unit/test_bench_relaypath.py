"""bench.relaypath: the in-process relay measurement fans out as the server does."""

from __future__ import annotations

import pytest

from app import connection
from bench import relaypath

pytestmark = pytest.mark.anyio


async def test_a_move_reaches_all_six_members_and_a_cursor_the_five_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "UNMETERED_PER_SECOND", relaypath.UNLIMITED)

    results = await relaypath.run(count=70, repeats=1)

    summary = results["summary"]
    assert summary["token.move"]["deliveries_per_sent"] == 6
    assert summary["cursor.move"]["deliveries_per_sent"] == 5
    for figures in summary.values():
        assert figures["cpu_per_delivered_us"] * figures["deliveries_per_sent"] == pytest.approx(
            figures["cpu_per_sent_us"]
        )
    assert results["cursor_per_delivered_vs_move"] == pytest.approx(
        summary["cursor.move"]["cpu_per_delivered_us"]
        / summary["token.move"]["cpu_per_delivered_us"]
    )


async def test_a_frame_the_connection_leaves_to_its_reader_stops_the_measurement() -> None:
    # Without the raised read pace, signals beyond the first burst wait for the reader.
    with pytest.raises(RuntimeError, match="left to the reader"):
        await relaypath.measure("cursor.move", 7_000)
