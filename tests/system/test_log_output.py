"""What a server process prints: JSON lines only, and never a token, however it was launched."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.harness import TIMEOUT, Peer
from tests.support.jwks_server import AZP, JwksServer
from tests.support.loops import run
from tests.support.poll import poll
from tests.support.process import free_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SECRET = "SeCrEt-" + uuid.uuid4().hex
# A JWT-shaped value (header {"alg":"RS256"}, a payload, a signature) made of the secret.
JWT = f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEifQ.{SECRET}"
CAMPAIGN = "7d1f0a3e-2b4c-4e5f-9a6b-0c1d2e3f4a5b"
GM, PLAYER = "user_gm", "user_player"


SERVER = textwrap.dedent(
    """
    import logging
    import sys

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute

    from app.logs import configure_logging, log_config

    log = logging.getLogger("app.endpoints")


    async def hello(request):
        log.info("request headers %s", dict(request.headers), extra={"campaign_id": "c1"})
        return PlainTextResponse("ok")


    async def ws(websocket):
        log.info("handshake %s", websocket.url, extra={"user_id": "user_1"})
        await websocket.accept()
        text = await websocket.receive_text()
        log.debug("frame %s", text)
        await websocket.send_text("bye")
        await websocket.close(1000)


    app = Starlette(routes=[Route("/hello", hello), WebSocketRoute("/ws", ws)])
    configure_logging("debug")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        ws=sys.argv[2],
        log_config=log_config("debug"),
    )
    """
)


async def _answers(url: str, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, "the server exited before it answered"
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            await http.get(url)
    except httpx.TransportError:
        return False
    return True


@pytest.mark.parametrize("ws_impl", ["websockets-sansio", "websockets"])
def test_uvicorn_with_log_config_never_prints_the_token_and_prints_only_json(
    tmp_path: Path, ws_impl: str
) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), ws_impl],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        run(poll(lambda: _answers(f"{base}/hello", proc), 20, f"{base}/hello to answer"))
        response = httpx.get(
            f"{base}/hello?token={SECRET}",
            headers={"Authorization": f"Bearer {JWT}"},
            timeout=5.0,
        )
        assert response.status_code == 200
        with connect(
            f"ws://127.0.0.1:{port}/ws?campaign=c1&token={SECRET}",
            additional_headers={"Authorization": f"Bearer {JWT}"},
            open_timeout=5,
            close_timeout=5,
        ) as websocket:
            websocket.send(json.dumps({"type": "auth.refresh", "payload": {"token": JWT}}))
            assert websocket.recv(timeout=5) == "bye"
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=20)

    output = stdout + stderr
    assert SECRET not in output
    assert "eyJ" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert any("WebSocket /ws?campaign=c1&token=[redacted]" in event for event in events)
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["full_path"] == "/hello?token=[redacted]" for line in access)
    assert any(line.get("campaign_id") == "c1" for line in lines)
    assert any(line.get("user_id") == "user_1" for line in lines)


@pytest.fixture
def sqlite_app_db(tmp_path: Path) -> Path:
    """A SQLite file holding the app's campaigns table (the server migrates its own tables)."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)")
        db.execute(f"INSERT INTO campaigns VALUES ('{CAMPAIGN}', '{GM}')")
    return path


def _plain_uvicorn(level: str) -> Any:
    return lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        level,
    ]


# How the server gets started: our launcher, and uvicorn with its own logging config (at
# trace level uvicorn also logs every ASGI scope, query string and headers included).
LAUNCHERS = {
    "python -m app": lambda port: [sys.executable, "-m", "app"],
    "uvicorn app.main:app --log-level debug": _plain_uvicorn("debug"),
    "uvicorn app.main:app --log-level trace": _plain_uvicorn("trace"),
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_no_token_appears_anywhere_in_the_logs_of_a_whole_session(
    tmp_path: Path, jwks: JwksServer, sqlite_app_db: Path, launcher: str
) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VTT_", "CLERK_")) and key not in {"DATABASE_URL", "FLY_APP_NAME"}
    }
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        LOG_LEVEL="debug",
        VTT_ENV="test",
        CLERK_JWKS_URL=jwks.url,
        CLERK_AUTHORIZED_PARTIES=AZP,
        DATABASE_URL=f"sqlite:///{sqlite_app_db}",
        PYTHONPATH=str(ROOT),
    )
    output = tmp_path / "server.log"
    tokens: list[str] = []

    def mint(sub: str, **claims: Any) -> str:
        token = jwks.mint(sub, **claims)
        tokens.append(token)
        return token

    process = _launch(LAUNCHERS[launcher](port), env, tmp_path, output)
    try:
        base = f"ws://127.0.0.1:{port}/ws?campaign={CAMPAIGN}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            await _until_up(http, process, output)
            gm = await Peer.open(f"{base}&token={mint(GM)}")
            await gm.expect("state.sync")
            player = await Peer.open(
                base, additional_headers={"Authorization": f"Bearer {mint(PLAYER)}"}
            )
            await player.expect("state.sync")
            await gm.send("auth.refresh", {"token": mint(GM)})
            await gm.roundtrip()
            refused = await Peer.open(f"{base}&token={mint(GM, iss='https://evil.example')}")
            assert (await refused.closed())[0] == 4401
            await player.send("auth.refresh", {"token": mint(GM)})
            assert (await player.closed())[0] == 4401
            await gm.close()
            await http.get(f"/ready?token={mint(GM)}")
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT * 3)

    logged = _text(output)
    assert re.search(r"WebSocket /ws\?campaign=[^ ]*token=\[redacted\]", logged), logged
    for token in tokens:
        _, payload, signature = token.split(".")
        for secret in (token, payload, signature):
            assert secret not in logged, f"a token leaked into the log of {launcher}"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _launch(command: list[str], env: dict[str, str], cwd: Path, output: Path) -> Any:
    """Start the server with stdout and stderr both going to `output`."""
    with output.open("wb") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=sink)


async def _until_up(http: httpx.AsyncClient, process: Any, output: Path) -> None:
    async def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited before it came up:\n{_text(output)}")
        try:
            return (await http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await poll(healthy, 30, "the server to come up", interval=0.05)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}:\n{_text(output)}") from None
