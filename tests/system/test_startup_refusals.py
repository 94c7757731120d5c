"""Processes that refuse to start and say why: a fallback RSA backend, production without config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_fallback_rsa_backend_is_refused_at_startup() -> None:
    # Hide python-jose's cryptography backend so it falls back to its pure-Python `rsa` one.
    script = (
        "import sys\n"
        "sys.modules['jose.backends.cryptography_backend'] = None\n"
        "from app.auth.tokens import check_cryptography_backend\n"
        "try:\n"
        "    check_cryptography_backend()\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert done.stdout.startswith("refused:"), done.stdout + done.stderr
    assert "python-jose[cryptography]" in done.stdout


def test_the_server_exits_with_status_2_and_says_why_in_production_without_config(
    tmp_path: Path,
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"CLERK_JWKS_URL", "DATABASE_URL", "VTT_ENV", "FLY_APP_NAME"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT), "FLY_APP_NAME": "vtt", "PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "configuration error" in done.stderr
    assert "CLERK_JWKS_URL and DATABASE_URL" in done.stderr
