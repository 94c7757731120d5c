"""How `python -m app` sets up the process: the collector's thresholds and freeze."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app.transport.serve
from app.transport.serve import GC_THRESHOLDS
from tests.support.harness import serve, settings_for, token_payload


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as the test found it."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.anyio
async def test_a_frozen_server_keeps_its_startup_objects_out_of_collections(
    tmp_path: Path, collector: None
) -> None:
    gc.unfreeze()
    async with serve(settings_for(tmp_path), freeze_gc=True) as running:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000
        gm = await running.join("c1", "alice", "gm")
        await gm.send("token.add", token_payload("t1"))
        assert (await gm.expect("token.add"))["payload"]["token_id"] == "t1"
        await gm.close()
        # What connections allocate later stays collectable (frozen objects may still be freed).
        assert gc.get_freeze_count() <= frozen


@pytest.mark.anyio
async def test_an_unfrozen_server_freezes_nothing(tmp_path: Path, collector: None) -> None:
    gc.unfreeze()
    async with serve(settings_for(tmp_path)):
        assert gc.get_freeze_count() == 0


def test_main_sets_the_thresholds_and_runs_a_freezing_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, collector: None
) -> None:
    started: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, config: Any, *, freeze_gc: bool = False) -> None:
            started.append({"freeze_gc": freeze_gc})
            self.started = True

        def run(self) -> None:
            started[-1]["thresholds"] = gc.get_threshold()

    monkeypatch.setattr(app.transport.serve, "Server", Recorder)
    monkeypatch.setenv("VTT_SQLITE_PATH", str(tmp_path / "vtt.db"))
    monkeypatch.setenv("VTT_DEV_KEY_DIR", str(tmp_path / "keys"))
    gc.set_threshold(700, 10, 10)
    assert app.transport.serve.main() == 0
    assert started == [{"freeze_gc": True, "thresholds": GC_THRESHOLDS}]
