"""Auth.admit in-process: a handshake the auth middleware never saw is refused, not admitted."""

from __future__ import annotations

import pytest

from app.auth import Auth
from app.auth.roles import DevClaimRoles
from app.errors import CloseCode
from tests.support.fakes import StaticKeys, k1_public, static_verifier
from tests.support.harness import refused

pytestmark = pytest.mark.anyio


async def test_a_handshake_without_the_middlewares_verdict_is_refused_as_missing_a_token() -> None:
    auth = Auth(StaticKeys(k1_public()), static_verifier(), DevClaimRoles())
    scope = {"type": "websocket", "headers": [], "query_string": b"campaign=c1"}

    failure = await refused(auth.admit(scope, "c1"))

    assert (failure.code, failure.reason) == (CloseCode.UNAUTHORIZED, "missing token")
