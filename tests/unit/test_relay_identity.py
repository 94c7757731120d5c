"""The identity a relaying machine signs for the owner: what it carries, and what is refused."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.auth.tokens import Identity
from app.coord.relay import MAX_SKEW, sign_identity, verify_identity
from app.errors import CloseCode, CloseConnection

SECRET = "s" * 32
NOW = 1_800_000_000.0
IDENTITY = Identity(
    "alice",
    {
        "sub": "alice",
        "iss": "vtt-dev",
        DEV_ROLE_CLAIM: "gm",
        DEV_CAMPAIGN_CLAIM: "c1",
        "email": "alice@example.com",
    },
    NOW + 600,
)


def refusal(value: str, campaign: str = "c1", now: float = NOW, secret: str = SECRET) -> str:
    with pytest.raises(CloseConnection) as caught:
        verify_identity(secret, value, campaign, now)
    assert caught.value.code == CloseCode.UNAUTHORIZED
    return caught.value.reason


def body_of(value: str) -> dict[str, object]:
    encoded = value.split(".")[0]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(encoded + "=" * 4))
    return decoded


def test_a_signed_identity_verifies_as_the_same_user_role_claims_and_expiry() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    identity = verify_identity(SECRET, value, "c1", NOW + 1)
    assert identity == Identity(
        "alice", {DEV_ROLE_CLAIM: "gm", DEV_CAMPAIGN_CLAIM: "c1"}, NOW + 600
    )


def test_only_the_claims_role_resolution_reads_are_carried() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    body = body_of(value)
    assert body["claims"] == {DEV_ROLE_CLAIM: "gm", DEV_CAMPAIGN_CLAIM: "c1"}
    assert body["node"] == "node-a"
    assert body["campaign_id"] == "c1"
    assert "alice@example.com" not in value
    # A production token carries no dev claims: nothing of its claims goes along.
    bare = sign_identity(SECRET, Identity("bob", {"sub": "bob", "x": 1}, NOW), "c1", "a", NOW)
    assert body_of(bare)["claims"] == {}
    assert verify_identity(SECRET, bare, "c1", NOW).claims == {}


def test_another_secret_is_refused() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    assert refusal(value, secret="t" * 32) == "relayed identity signature invalid"


def test_another_campaign_is_refused() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    assert refusal(value, campaign="c2") == "relayed identity is for another campaign"


@pytest.mark.parametrize("offset", [MAX_SKEW + 1, -(MAX_SKEW + 1), 3600])
def test_an_identity_issued_too_far_from_now_is_refused(offset: float) -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    assert refusal(value, now=NOW + offset) == "relayed identity expired"


def test_within_the_skew_both_ways_it_is_accepted() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    for offset in (-MAX_SKEW, MAX_SKEW):
        assert verify_identity(SECRET, value, "c1", NOW + offset).user_id == "alice"


def test_a_payload_rewritten_without_the_secret_is_refused() -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    body = body_of(value)
    body["user_id"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert refusal(f"{forged}.{value.split('.')[1]}") == "relayed identity signature invalid"


@pytest.mark.parametrize(
    "value", ["", ".", "abc", "abc.", ".abc", "a.b.c", "é.é", "x" * 5000, "\x00.\x00"]
)
def test_malformed_values_are_refused(value: str) -> None:
    refusal(value)


@given(st.data())
def test_any_one_character_changed_is_refused(data: st.DataObject) -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    position = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(codec="latin-1").filter(lambda c: c != value[position]))
    tampered = value[:position] + replacement + value[position + 1 :]
    refusal(tampered)


@given(st.data())
def test_any_cut_or_extension_is_refused(data: st.DataObject) -> None:
    value = sign_identity(SECRET, IDENTITY, "c1", "node-a", NOW)
    cut = data.draw(st.integers(0, len(value) - 1))
    refusal(value[:cut])
    refusal(value + data.draw(st.text(min_size=1, max_size=8)))


def test_the_middleware_looks_for_the_header_the_relay_sends() -> None:
    from app.auth import middleware
    from app.coord import relay

    assert relay.RELAY_HEADER.encode() == middleware.RELAY_HEADER
