"""Token verification with keys from a real JWKS endpoint: good tokens, every bad one, reasons."""

from __future__ import annotations

import time

import pytest

from app.auth.jwks import JwksKeySource
from app.auth.tokens import TokenPolicyConfig, TokenVerifier
from app.errors import CloseCode
from tests.support.fakes import static_verifier
from tests.support.harness import refused
from tests.support.jwks_server import AZP, BAD_TOKENS, JwksServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def verifier(source: JwksKeySource, jwks: JwksServer) -> TokenVerifier:
    return TokenVerifier(source, TokenPolicyConfig(jwks.issuer, (AZP,), leeway=5.0))


async def test_a_good_token_gives_its_subject_expiry_and_claims(
    verifier: TokenVerifier, jwks: JwksServer
) -> None:
    token = jwks.mint("user_2abc", ttl=60)

    identity = await verifier.verify(token)

    assert identity.user_id == "user_2abc"
    assert identity.expires_at == identity.claims["exp"]
    assert identity.expires_at - time.time() > 50
    assert identity.claims["azp"] == AZP


@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_every_kind_of_bad_token_is_refused_with_4401(
    verifier: TokenVerifier, jwks: JwksServer, case: str
) -> None:
    token = BAD_TOKENS[case](jwks)

    failure = await refused(verifier.verify(token))

    assert failure.code == CloseCode.UNAUTHORIZED, failure.reason


async def test_a_missing_token_is_refused_with_4401(verifier: TokenVerifier) -> None:
    for token in (None, ""):
        assert (await refused(verifier.verify(token))).reason == "missing token"


async def test_clock_skew_within_the_leeway_is_tolerated(
    verifier: TokenVerifier, jwks: JwksServer
) -> None:
    now = int(time.time())
    token = jwks.mint(exp=now - 2, nbf=now + 3, iat=now + 3)

    assert (await verifier.verify(token)).user_id == "user_1"


async def test_the_refusal_reason_says_what_was_wrong(
    verifier: TokenVerifier, jwks: JwksServer
) -> None:
    reasons = {
        case: (await refused(verifier.verify(BAD_TOKENS[case](jwks)))).reason
        for case in ("expired", "nbf in the future", "alg none", "wrong iss", "wrong azp")
    }

    assert reasons == {
        "expired": "token expired",
        "nbf in the future": "token not yet valid",
        "alg none": "token algorithm must be RS256",
        "wrong iss": "token issuer not accepted",
        "wrong azp": "token authorized party not allowed",
    }


async def test_without_authorized_parties_any_azp_is_accepted(jwks: JwksServer) -> None:
    verifier = static_verifier(issuer=jwks.issuer, parties=())

    for azp in ("https://elsewhere.example", None):
        assert (await verifier.verify(jwks.mint(azp=azp))).user_id == "user_1"
