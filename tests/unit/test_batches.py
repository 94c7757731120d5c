"""How a save is cut into upsert batches: by rows, by bytes, one row per campaign."""

from __future__ import annotations

import pytest

from app.persistence.store import BATCH_ROWS, batches


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
