"""How a save is cut into upsert batches: by rows, by bytes, one row per campaign, in id order."""

from __future__ import annotations

import pytest

from app.persistence.store import BATCH_ROWS, ORDER_SLICE, batches, cut, in_id_order
from tests.support.loops import EveryTurn, run


def test_batches_hold_at_most_500_rows() -> None:
    rows = [(f"c{i:05d}", b"{}") for i in range(1200)]
    assert [len(batch) for batch in batches(rows)] == [BATCH_ROWS, BATCH_ROWS, 200]


def test_a_campaign_named_twice_in_one_save_keeps_its_last_state_once() -> None:
    rows = [("b", b"1"), ("a", b"2"), ("b", b"3")]
    assert list(batches(rows)) == [[("a", b"2"), ("b", b"3")]]


def test_batches_also_stop_growing_at_the_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.persistence.store.BATCH_BYTES", 10)
    rows = [("a", b"123456"), ("b", b"123456"), ("c", b"1")]
    assert list(batches(rows)) == [[("a", b"123456")], [("b", b"123456"), ("c", b"1")]]


def test_no_rows_make_no_batches() -> None:
    assert list(batches([])) == []


def test_rows_ordered_a_slice_at_a_time_are_cut_as_batches_cuts_them() -> None:
    # Ids out of order, and each of the first 1,004 named twice: the later state wins.
    count = 3 * ORDER_SLICE + 7
    rows = [(f"c{(i * 7919) % 5003:05d}", str(i).encode()) for i in range(count)]

    async def scenario() -> tuple[list[list[tuple[str, bytes]]], int]:
        turns = EveryTurn(lambda: None)
        try:
            ordered = await in_id_order(rows)
        finally:
            turns.close()
        return list(cut(ordered)), turns.turns

    cuts, turns = run(scenario())
    assert cuts == list(batches(rows))
    assert sum(len(batch) for batch in cuts) == 5003
    assert dict(row for batch in cuts for row in batch)["c00000"] == str(5003).encode()
    assert turns >= 3, "the event loop ran between the slices"
