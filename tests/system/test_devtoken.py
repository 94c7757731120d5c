"""The dev-token CLI (`make token`): its tokens against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from app.auth.keys import DEV_ISSUER, DevKeys
from app.auth.tokens import TokenPolicyConfig, TokenVerifier
from app.config import Settings
from app.dev.devtoken import main
from tests.support.harness import TIMEOUT, Peer, RunningServer, role_of, serve, settings_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
JWKS_URL = "https://clerk.example.com/.well-known/jwks.json"


def _clean_environ() -> dict[str, str]:
    """The process environment without any server setting that would change dev auth."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VTT_", "CLERK_")) and key not in {"DATABASE_URL", "FLY_APP_NAME"}
    }


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Dev auth for the CLI (no `.env`, keys under `tmp_path`); the test server's settings."""
    monkeypatch.chdir(tmp_path)
    for key in os.environ.keys() - _clean_environ().keys():
        monkeypatch.delenv(key)
    server_settings = settings_for(tmp_path)
    monkeypatch.setenv("VTT_DEV_KEY_DIR", server_settings.dev_key_dir)
    return server_settings


def mint(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI; it must succeed and print exactly one line, the token."""
    status = main(list(argv))
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert printed.err == ""
    lines = printed.out.splitlines()
    assert len(lines) == 1, printed.out
    return lines[0]


async def greeting(server: RunningServer, campaign: str, token: str) -> tuple[Peer, dict[str, Any]]:
    """Connect with `token`; the state.sync the server greets with."""
    peer = await Peer.greeted(server.ws_url(campaign, token))
    return peer, peer.sync


@pytest.mark.parametrize(("flags", "role"), [(["--gm"], "gm"), ([], "player")])
async def test_the_printed_token_joins_any_campaign_of_a_real_server_as_its_user_and_role(
    settings: Settings, capsys: pytest.CaptureFixture[str], flags: list[str], role: str
) -> None:
    token = mint(capsys, "--user", "alice", *flags)

    async with serve(settings) as server:
        for campaign in ("c1", "c2"):
            peer, sync = await greeting(server, campaign, token)

            assert sync["user_id"] == "alice"
            assert sync["campaign_id"] == campaign
            # Only a GM's state.sync carries the campaign's map library.
            assert ("saved_maps" in sync["payload"]) == (role == "gm")
            assert await role_of(peer, "alice") == role
            await peer.close()


async def test_a_campaign_scoped_token_joins_that_campaign_and_is_refused_elsewhere(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    token = mint(capsys, "--user", "gwen", "--gm", "--campaign", "demo")

    async with serve(settings) as server:
        peer, sync = await greeting(server, "demo", token)
        assert sync["user_id"] == "gwen"
        assert await role_of(peer, "gwen") == "gm"

        elsewhere = await Peer.open(server.ws_url("other", token))
        assert await elsewhere.closed() == (4403, "not a member of this campaign")
        assert elsewhere.received == []
        await peer.close()


async def test_the_ttl_option_sets_when_the_token_expires(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    refreshing = dataclasses.replace(settings, token_refresh_required=True, token_grace=0.5)
    async with serve(refreshing) as server:
        # Minted once the server is up, so the short lifetime is not spent on its startup.
        lasting, _ = await greeting(server, "c1", mint(capsys, "--user", "carol"))
        short = mint(capsys, "--user", "bob", "--ttl", "2")
        expiring, _ = await greeting(server, "c1", short)

        assert await expiring.closed() == (4401, "token expired; refresh it")
        await lasting.roundtrip()
        await lasting.close()


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_the_cli_refuses_with_status_2_and_mints_nothing_when_clerk_jwks_url_is_set(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    if where == "environment":
        monkeypatch.setenv("CLERK_JWKS_URL", JWKS_URL)
    else:
        (tmp_path / ".env").write_text(f"CLERK_JWKS_URL={JWKS_URL}\n", encoding="utf-8")

    status = main(["--user", "alice", "--gm"])
    printed = capsys.readouterr()

    assert status == 2
    assert printed.out == ""
    assert "CLERK_JWKS_URL is set" in printed.err
    assert not Path(settings.dev_key_dir).exists(), "no dev key pair is created"


def test_the_cli_refuses_a_configuration_the_server_would_refuse_with_status_2(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTT_ENV", "staging")

    status = main(["--user", "alice"])
    printed = capsys.readouterr()

    assert status == 2
    assert printed.out == ""
    assert printed.err.startswith("error: VTT_ENV must be")


async def run_module(cwd: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """`python -m app.dev.devtoken ARGV`: its exit status, stdout and stderr."""
    async with asyncio.timeout(TIMEOUT * 3):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.dev.devtoken",
            *argv,
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_python_dash_m_app_devtoken_prints_a_token_the_dev_verifier_accepts(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    env = {**_clean_environ(), "PYTHONPATH": str(ROOT), "VTT_DEV_KEY_DIR": str(keys)}
    argv = ("--user", "dana", "--ttl", "600")

    status, out, err = await run_module(tmp_path, env, *argv)
    refused = await run_module(tmp_path, {**env, "CLERK_JWKS_URL": JWKS_URL}, *argv)

    assert status == 0, err
    verifier = TokenVerifier(DevKeys(keys), TokenPolicyConfig(issuer=DEV_ISSUER))
    identity = await verifier.verify(out.strip())
    assert identity.user_id == "dana"
    assert identity.claims["vtt_role"] == "player"
    assert "vtt_campaign" not in identity.claims
    assert identity.expires_at - identity.claims["iat"] == 600
    assert refused[:2] == (2, "")
    assert "CLERK_JWKS_URL is set" in refused[2]
