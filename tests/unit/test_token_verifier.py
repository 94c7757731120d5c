"""The token verifier in-process: arbitrary input only ever gives 4401, on the right RSA backend."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose import jwk
from jose.constants import ALGORITHMS

from app.auth.tokens import check_cryptography_backend
from app.errors import CloseCode, CloseConnection
from tests.support.fakes import static_verifier


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.text(alphabet="eyJABCabc0123456789-_=+/", max_size=60), max_size=5).map(
            ".".join
        ),
    )
)
def test_arbitrary_input_only_ever_gives_a_4401(token: str) -> None:
    verifier = static_verifier()

    with pytest.raises(CloseConnection) as caught:
        asyncio.run(verifier.verify(token))

    assert caught.value.code == CloseCode.UNAUTHORIZED


def test_the_cryptography_backend_is_detected() -> None:
    check_cryptography_backend()


def test_a_replaced_rs256_key_class_is_refused() -> None:
    from jose.backends.rsa_backend import RSAKey

    jwk.register_key("RS256", RSAKey)
    try:
        with pytest.raises(RuntimeError, match="rsa_backend"):
            check_cryptography_backend()
    finally:
        ALGORITHMS.KEYS.pop("RS256")
    check_cryptography_backend()
