"""The JWKS key source against a real JWKS endpoint: loads, rotation, refetch limits, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from jose.backends.base import Key

from app.auth.jwks import STARTUP_WAIT, JwksKeySource
from app.auth.tokens import TokenPolicyConfig, TokenVerifier
from app.errors import CloseCode, CloseConnection
from tests.support.fakes import StaticKeys
from tests.support.harness import TIMEOUT, refused
from tests.support.jwks_server import JwksServer, signing_key
from tests.support.poll import poll

pytestmark = pytest.mark.anyio


async def test_keys_load_from_the_jwks_url_and_the_source_becomes_ready(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    assert source.ready
    assert jwks.requests == 1
    assert isinstance(await source.key_for("k1"), Key)


async def test_a_rotated_key_is_fetched_once_when_a_token_names_its_new_kid(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    jwks.rotate(signing_key("k2", index=1))

    assert isinstance(await source.key_for("k2"), Key)
    assert isinstance(await source.key_for("k2"), Key)
    assert isinstance(await source.key_for("k1"), Key)
    assert jwks.requests == 2


async def test_unknown_kids_cause_at_most_one_refetch_per_interval(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    for attempt in range(20):
        failure = await refused(source.key_for(f"garbage-{attempt}"))
        assert (failure.code, failure.reason) == (CloseCode.UNAUTHORIZED, "unknown signing key")

    assert jwks.requests == 2


async def test_concurrent_unknown_kids_share_one_fetch(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    jwks.rotate(signing_key("k2", index=1))
    jwks.delay = 0.3

    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(
            *(source.key_for("k2") for _ in range(10)),
            *(source.key_for(f"garbage-{n}") for n in range(10)),
            return_exceptions=True,
        )

    assert jwks.requests == 2
    assert len({id(key) for key in results[:10]}) == 1
    assert all(isinstance(result, CloseConnection) for result in results[10:])


async def test_an_unknown_kid_may_refetch_again_once_the_interval_has_passed(
    jwks: JwksServer,
) -> None:
    keys = JwksKeySource(jwks.url, ttl=300, refetch_interval=0.2)
    try:
        await keys.start()
        await refused(keys.key_for("garbage"))
        assert jwks.requests == 2
        started = time.monotonic()
        jwks.rotate(signing_key("k2", index=1))

        await poll(lambda: _known(keys, "k2"), TIMEOUT, "the new kid to load")
    finally:
        await keys.close()

    assert jwks.requests == 3
    assert time.monotonic() - started >= 0.1


async def _known(keys: JwksKeySource, kid: str) -> bool:
    try:
        await keys.key_for(kid)
    except CloseConnection:
        return False
    return True


async def test_cached_keys_keep_working_while_the_endpoint_is_down_and_a_new_kid_gets_1013(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    await jwks.stop()

    assert isinstance(await source.key_for("k1"), Key)
    first = await refused(source.key_for("k2"))
    again = await refused(source.key_for("k3"))

    assert first.code == again.code == CloseCode.TRY_AGAIN_LATER
    assert source.ready


async def test_once_the_endpoint_is_back_a_new_kid_loads_without_waiting_out_the_ttl(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    await jwks.stop()
    jwks.rotate(signing_key("k2", index=1))
    assert (await refused(source.key_for("k2"))).code == CloseCode.TRY_AGAIN_LATER

    await jwks.start()

    await poll(lambda: _known(source, "k2"), TIMEOUT, "the new kid to load")
    assert jwks.requests <= 4


async def test_an_unreachable_endpoint_at_startup_gives_1013_until_the_keys_load() -> None:
    jwks = JwksServer([signing_key("k1")])
    await jwks.start()
    await jwks.stop()
    keys = JwksKeySource(jwks.url, ttl=300)
    try:
        started = time.monotonic()
        await keys.start()
        assert time.monotonic() - started < STARTUP_WAIT

        assert not keys.ready
        failure = await refused(keys.key_for("k1"))
        assert failure.code == CloseCode.TRY_AGAIN_LATER

        await jwks.start()
        await poll(lambda: keys.ready, TIMEOUT, "the background retry to load the keys")
        assert isinstance(await keys.key_for("k1"), Key)
    finally:
        await keys.close()
        await jwks.stop()


async def test_a_black_holed_endpoint_holds_startup_for_at_most_the_startup_wait(
    jwks: JwksServer,
) -> None:
    jwks.delay = 30.0
    keys = JwksKeySource(jwks.url, ttl=300)
    started = time.monotonic()
    try:
        await keys.start()
        assert time.monotonic() - started < STARTUP_WAIT + 1.0
        assert not keys.ready
    finally:
        await keys.close()


async def test_keys_are_refreshed_in_the_background_on_the_ttl(jwks: JwksServer) -> None:
    keys = JwksKeySource(jwks.url, ttl=0.2)
    try:
        await keys.start()
        jwks.rotate(signing_key("k2", index=1), keep_old=False)
        await jwks.wait_for_requests(3)
        failure = await refused(keys.key_for("k1"))
    finally:
        await keys.close()

    assert failure.code == CloseCode.UNAUTHORIZED


async def test_cache_control_max_age_overrides_the_ttl(jwks: JwksServer) -> None:
    jwks.cache_control = "public, max-age=1, must-revalidate"
    keys = JwksKeySource(jwks.url, ttl=300)
    try:
        await keys.start()
        started = time.monotonic()
        await jwks.wait_for_requests(2, timeout=5.0)
    finally:
        await keys.close()

    assert time.monotonic() - started > 0.5


async def test_only_rsa_signing_keys_for_rs256_are_taken(jwks: JwksServer) -> None:
    good = signing_key("good").jwk
    weak = signing_key("weak", index=9, bits=1024).jwk
    jwks.keys = []
    jwks.extra_entries = [
        {**good, "kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": "rs512", "alg": "RS512"},
        {**good, "kid": "no-n", "n": None},
        {**good, "kid": "bad-n", "n": "!!!"},
        {key: value for key, value in good.items() if key != "kid"},
        weak,
        "not an object",
        {key: value for key, value in good.items() if key not in ("use", "alg")} | {"kid": "bare"},
        good,
        {**signing_key("dup", index=3).jwk, "kid": "good"},
    ]
    keys = JwksKeySource(jwks.url, ttl=300, refetch_interval=0)
    try:
        await keys.start()
        good_key = await keys.key_for("good")
        assert isinstance(await keys.key_for("bare"), Key)
        for kid in ("ec", "enc", "rs512", "no-n", "bad-n", "weak"):
            assert (await refused(keys.key_for(kid))).code == CloseCode.UNAUTHORIZED
    finally:
        await keys.close()

    verifier = TokenVerifier(StaticKeys(good_key, "good"), TokenPolicyConfig(issuer=jwks.issuer))
    identity = await verifier.verify(signing_key("good").sign(jwks.claims()))
    assert identity.user_id == "user_1"


async def test_an_unchanged_key_keeps_its_key_object_across_fetches(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    before = await source.key_for("k1")
    jwks.rotate(signing_key("k2", index=1))
    await source.key_for("k2")

    assert jwks.requests == 2
    assert await source.key_for("k1") is before


async def test_new_material_under_a_known_kid_replaces_the_key_object(jwks: JwksServer) -> None:
    keys = JwksKeySource(jwks.url, ttl=300, refetch_interval=0)
    try:
        await keys.start()
        before = await keys.key_for("k1")
        jwks.keys = [signing_key("k1", index=1), signing_key("k2", index=2)]
        await keys.key_for("k2")
        after = await keys.key_for("k1")
    finally:
        await keys.close()

    assert after is not before
    assert after.to_dict()["n"] == signing_key("k1", index=1).jwk["n"]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, None),
        (200, b"<html>not json</html>"),
        (200, b'{"keys": []}'),
        (200, b'{"no": "keys"}'),
        (200, b"[1, 2]"),
        (200, b"x" * (300 * 1024)),
    ],
)
async def test_an_error_response_or_a_bad_document_keeps_the_cached_keys(
    jwks: JwksServer, source: JwksKeySource, status: int, body: bytes | None
) -> None:
    jwks.status, jwks.body = status, body

    failure = await refused(source.key_for("k2"))

    assert jwks.requests == 2
    assert failure.code == CloseCode.TRY_AGAIN_LATER
    assert isinstance(await source.key_for("k1"), Key)


async def test_close_cancels_the_refresh_and_closes_the_http_client(jwks: JwksServer) -> None:
    keys = JwksKeySource(jwks.url, ttl=0.05)
    await keys.start()
    refresher = keys._refresher
    client = keys._client

    await keys.close()

    assert refresher is not None
    assert refresher.done()
    assert client.is_closed


async def test_a_token_without_a_kid_is_refused_without_a_fetch(
    jwks: JwksServer, source: JwksKeySource
) -> None:
    failure = await refused(source.key_for(None))

    assert failure.code == CloseCode.UNAUTHORIZED
    assert jwks.requests == 1


async def test_a_key_whose_numbers_cannot_be_read_is_ignored(jwks: JwksServer) -> None:
    good = signing_key("good").jwk
    jwks.keys = []
    jwks.extra_entries = [
        {**good, "kid": "bad-e", "e": "AA"},
        {**good, "kid": "short-n", "n": "A"},
        good,
    ]
    keys = JwksKeySource(jwks.url, ttl=300, refetch_interval=0)
    try:
        await keys.start()
        assert isinstance(await keys.key_for("good"), Key)
        for kid in ("bad-e", "short-n"):
            assert (await refused(keys.key_for(kid))).code == CloseCode.UNAUTHORIZED
    finally:
        await keys.close()


async def test_an_endpoint_slower_than_the_timeout_fails_the_fetch_as_timed_out(
    jwks: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.delay = 30.0
    keys = JwksKeySource(jwks.url, ttl=300, timeout=0.2)
    try:
        with caplog.at_level("WARNING", logger="vtt.jwks"):
            await keys.start()
            assert not keys.ready
            assert (await refused(keys.key_for("k1"))).code == CloseCode.TRY_AGAIN_LATER
    finally:
        await keys.close()

    failures = [r for r in caplog.records if r.getMessage().startswith("JWKS fetch failed")]
    assert failures
    assert {r.__dict__["reason"] for r in failures} == {"timed out"}
