"""The verifier's own cutting and decoding of a token against python-jose's `jws.verify`:
a token altered anywhere is accepted by ours exactly when python-jose accepts it (a token of
other than three segments is refused by ours whatever python-jose makes of it)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jose import jws
from jose.exceptions import JOSEError

from app.errors import CloseConnection
from tests.support.fakes import k1_public, static_verifier
from tests.support.jwks_server import AZP, signing_key

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ é"
CLAIMS = {"sub": "user_1", "iss": "http://127.0.0.1:1", "azp": AZP}


def good_token() -> str:
    return signing_key("k1").sign({**CLAIMS, "exp": int(time.time()) + 3600})


def ours(token: str) -> dict[str, Any] | None:
    try:
        identity = asyncio.run(static_verifier().verify(token))
    except CloseConnection:
        return None
    return dict(identity.claims)


def pythons_jose(token: str) -> dict[str, Any] | None:
    try:
        claims = json.loads(jws.verify(token, k1_public(), algorithms=["RS256"]))
    except (JOSEError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


TOKEN = good_token()


def test_a_good_token_is_accepted_by_both() -> None:
    assert ours(TOKEN) == pythons_jose(TOKEN) is not None


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(TOKEN)), st.sampled_from(ALPHABET), st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_an_altered_token_is_accepted_by_ours_exactly_when_python_jose_accepts_it(
    edits: list[tuple[int, str, bool]],
) -> None:
    token = TOKEN
    for at, char, insert in edits:
        at = min(at, len(token))
        token = token[:at] + char + token[at + (0 if insert else 1) :]

    theirs = pythons_jose(token)
    if token.count(".") != 2:
        assert ours(token) is None
    else:
        assert ours(token) == theirs
