"""The probes against a real server: /health counts without naming anyone, /ready asks the store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.harness import TIMEOUT, RunningServer, serve, settings_for

pytestmark = pytest.mark.anyio


async def test_health_reports_counts_of_sessions_and_clients_and_never_an_id(
    server: RunningServer,
) -> None:
    await server.join("c-health-one", "user-alpha", "gm")
    await server.join("c-health-one", "user-beta")
    await server.join("c-health-two", "user-gamma")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{server.http}/health")
    assert response.status_code == 200
    # total_clients: the Go service's name for clients, for the monitors that read it.
    assert response.json() == {"status": "ok", "sessions": 2, "clients": 3, "total_clients": 3}
    for secret in ("c-health", "user-"):
        assert secret not in response.text


async def test_the_root_path_answers_200_in_plain_text_naming_the_service(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{server.http}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.strip() == "vtt-realtime"


async def test_ready_reports_the_database(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{server.http}/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}
