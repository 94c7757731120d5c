"""Services.close: a release that hangs is logged by name and left, and the rest still runs."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from app import services as services_module
from app.services import Services
from tests.support.harness import settings_for

pytestmark = pytest.mark.anyio


async def test_a_hanging_release_is_left_behind_by_name_and_the_database_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    services = await Services.build(settings_for(tmp_path))
    monkeypatch.setattr(services_module, "SHUTDOWN_STEP_SECONDS", 0.2)
    closed = asyncio.Event()
    store_type = type(services.store)
    real_close = store_type.close

    async def hang(_: object) -> None:
        await asyncio.Event().wait()

    async def close_store(store: object) -> None:
        await real_close(store)  # type: ignore[arg-type]
        closed.set()

    monkeypatch.setattr(type(services.auth), "close", hang)
    monkeypatch.setattr(store_type, "close", close_store)

    with caplog.at_level(logging.INFO, logger="vtt.shutdown"):
        async with asyncio.timeout(5.0):
            await services.close()

    assert closed.is_set()
    steps = [r.__dict__.get("step") for r in caplog.records if r.levelno == logging.ERROR]
    assert steps == ["auth"]


@pytest.mark.parametrize("flushed", [True, False])
async def test_the_log_says_whether_the_sessions_were_written_before_the_releases(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flushed: bool,
) -> None:
    services = await Services.build(settings_for(tmp_path))

    async def close(_: float) -> bool:
        return flushed

    monkeypatch.setattr(services.manager, "close", close)

    with caplog.at_level(logging.INFO, logger="vtt.shutdown"):
        async with asyncio.timeout(5.0):
            await services.close()

    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vtt.shutdown"]
    if flushed:
        assert (logging.INFO, "sessions written; releasing") in said
    else:
        assert (logging.ERROR, "releasing with sessions unwritten") in said
        assert not [m for _, m in said if m.startswith("sessions written")]
