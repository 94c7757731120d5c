"""Dev auth in-process: the local key pair, and roles read from the dev token's own claims."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM, DevKeys
from app.auth.roles import DevClaimRoles
from app.auth.tokens import Identity
from app.errors import CloseCode
from tests.support.harness import refused

pytestmark = pytest.mark.anyio


def identity(**claims: Any) -> Identity:
    """A verified dev identity for `alice` carrying `claims`."""
    return Identity("alice", {"sub": "alice", **claims}, time.time() + 60)


def test_the_key_pair_is_created_once_and_read_back_with_its_kid(tmp_path: Path) -> None:
    first = DevKeys(tmp_path / "keys")
    again = DevKeys(tmp_path / "keys")

    assert again.kid == first.kid
    assert (tmp_path / "keys" / ".gitignore").read_text(encoding="utf-8") == "*\n"


def test_a_key_file_that_holds_no_rsa_key_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    DevKeys(directory)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (directory / "private.pem").write_bytes(other)

    with pytest.raises(RuntimeError, match="is not an RSA private key"):
        DevKeys(directory)


async def test_a_token_naming_another_kid_is_refused_4401(tmp_path: Path) -> None:
    keys = DevKeys(tmp_path / "keys")

    assert await keys.key_for(keys.kid) is await keys.key_for(keys.kid)
    failure = await refused(keys.key_for("dev-someone-else"))

    assert (failure.code, failure.reason) == (CloseCode.UNAUTHORIZED, "unknown signing key")


@pytest.mark.parametrize("role", ["gm", "player"])
async def test_the_role_claim_gives_the_role_in_any_campaign_unless_scoped(role: str) -> None:
    roles = DevClaimRoles()

    assert await roles.role("c1", identity(**{DEV_ROLE_CLAIM: role})) == role
    scoped = identity(**{DEV_ROLE_CLAIM: role, DEV_CAMPAIGN_CLAIM: "c1"})
    assert await roles.role("c1", scoped) == role
    failure = await refused(roles.role("c2", scoped))
    assert (failure.code, failure.reason) == (
        CloseCode.FORBIDDEN,
        "not a member of this campaign",
    )


@pytest.mark.parametrize("claims", [{}, {DEV_ROLE_CLAIM: "admin"}], ids=["none", "unknown"])
async def test_a_token_without_a_known_role_claim_is_refused_4403(claims: dict[str, Any]) -> None:
    failure = await refused(DevClaimRoles().role("c1", identity(**claims)))

    assert (failure.code, failure.reason) == (CloseCode.FORBIDDEN, "token carries no campaign role")
