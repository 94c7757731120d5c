"""Auth against a real JWKS endpoint: key source, verifier, roles, config, origins."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jose import jwk
from jose.backends.base import Key
from jose.constants import ALGORITHMS

from app.auth import build_auth
from app.auth.jwks import STARTUP_WAIT, JwksKeySource
from app.auth.keys import DevKeys
from app.auth.roles import DevClaimRoles, SqlRoles
from app.auth.tokens import Identity, TokenPolicyConfig, TokenVerifier, check_cryptography_backend
from app.config import DEFAULT_ROLE_SQL, ConfigError, Settings
from app.errors import CloseCode, CloseConnection
from app.persistence.database import create_engine
from app.persistence.roles import RoleQuery
from tests.support.harness import TIMEOUT, Peer, serve, settings_for
from tests.support.jwks_server import AZP, BAD_TOKENS, JwksServer, poll, signing_key

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    async with JwksServer([signing_key("k1")]) as server:
        yield server


@pytest.fixture
async def source(jwks: JwksServer) -> AsyncIterator[JwksKeySource]:
    keys = JwksKeySource(jwks.url, ttl=300)
    await keys.start()
    yield keys
    await keys.close()


async def refused(awaitable: Any) -> CloseConnection:
    """The CloseConnection `awaitable` raises (it must raise one)."""
    with pytest.raises(CloseConnection) as caught:
        async with asyncio.timeout(TIMEOUT):
            await awaitable
    return caught.value


# --- the JWKS key source ------------------------------------------------------------------


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

        async with asyncio.timeout(TIMEOUT):
            while await _unknown(keys, "k2"):
                pass
    finally:
        await keys.close()

    assert jwks.requests == 3
    assert time.monotonic() - started >= 0.1


async def _unknown(keys: JwksKeySource, kid: str) -> bool:
    try:
        await keys.key_for(kid)
    except CloseConnection:
        await asyncio.sleep(0.01)
        return True
    return False


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

    async with asyncio.timeout(TIMEOUT):
        while await _unknown(source, "k2"):
            pass
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

    verifier = TokenVerifier(_Static(good_key, "good"), TokenPolicyConfig(issuer=jwks.issuer))
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


# --- token verification -------------------------------------------------------------------


class _Static:
    """An in-memory key source holding one key under one kid."""

    def __init__(self, key: Key, kid: str = "k1") -> None:
        self.key = key
        self.kid = kid

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def key_for(self, kid: str | None) -> Key:
        if kid != self.kid:
            raise CloseConnection(CloseCode.UNAUTHORIZED, "unknown signing key")
        return self.key


@functools.cache
def _k1_public() -> Key:
    return jwk.construct(signing_key("k1").public_pem, "RS256")


def static_verifier(
    issuer: str | None = "http://127.0.0.1:1", parties: tuple[str, ...] = (AZP,)
) -> TokenVerifier:
    return TokenVerifier(_Static(_k1_public()), TokenPolicyConfig(issuer, parties, leeway=5.0))


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


# --- the cryptography backend -------------------------------------------------------------


def test_the_cryptography_backend_is_detected() -> None:
    check_cryptography_backend()


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


def test_a_replaced_rs256_key_class_is_refused() -> None:
    from jose.backends.rsa_backend import RSAKey

    jwk.register_key("RS256", RSAKey)
    try:
        with pytest.raises(RuntimeError, match="rsa_backend"):
            check_cryptography_backend()
    finally:
        ALGORITHMS.KEYS.pop("RS256")
    check_cryptography_backend()


# --- campaign roles from SQL --------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'gm' FROM campaigns WHERE id = :campaign_id",
        "SELECT 'gm' WHERE :user_id = :user_id",
        "SELECT role FROM members WHERE campaign = :campaign_id AND user = :user_id AND :extra",
        "SELECT role FROM members WHERE campaign = :campaign_id::uuid AND user = :user_id",
        "SELECT 'gm'",
    ],
)
async def test_role_sql_must_bind_exactly_campaign_id_and_user_id(tmp_path: Path, sql: str) -> None:
    engine = create_engine(None, str(tmp_path / "roles.db"))
    try:
        with pytest.raises(ConfigError, match=":campaign_id and :user_id"):
            SqlRoles(RoleQuery(engine, sql))
    finally:
        await engine.dispose()


@pytest.fixture
async def sqlite_roles(tmp_path: Path) -> AsyncIterator[SqlRoles]:
    path = tmp_path / "roles.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)")
        db.execute("INSERT INTO campaigns VALUES ('c1', 'user_gm')")
    engine = create_engine(None, str(path))
    yield SqlRoles(RoleQuery(engine, DEFAULT_ROLE_SQL))
    await engine.dispose()


def identity(user_id: str, **claims: Any) -> Identity:
    return Identity(user_id, {"sub": user_id, **claims}, time.time() + 60)


async def test_the_default_role_sql_makes_the_campaigns_gm_its_gm_and_anyone_else_a_player(
    sqlite_roles: SqlRoles,
) -> None:
    assert await sqlite_roles.role("c1", identity("user_gm")) == "gm"
    assert await sqlite_roles.role("c1", identity("user_other")) == "player"


async def test_a_campaign_that_does_not_exist_is_4403(sqlite_roles: SqlRoles) -> None:
    failure = await refused(sqlite_roles.role("nope", identity("user_gm")))

    assert failure.code == CloseCode.FORBIDDEN


async def test_the_role_claim_of_a_token_is_ignored_by_sql_roles(sqlite_roles: SqlRoles) -> None:
    assert await sqlite_roles.role("c1", identity("user_x", vtt_role="gm")) == "player"


@pytest.mark.parametrize("value", ["'GM'", "'owner'", "''", "' gm'", "NULL", "1"])
async def test_any_role_value_but_gm_or_player_is_4403(tmp_path: Path, value: str) -> None:
    engine = create_engine(None, str(tmp_path / "roles.db"))
    sql = f"SELECT {value} WHERE :campaign_id = :campaign_id AND :user_id = :user_id"
    roles = SqlRoles(RoleQuery(engine, sql))
    try:
        failure = await refused(roles.role("c1", identity("u")))
    finally:
        await engine.dispose()

    assert failure.code == CloseCode.FORBIDDEN


# --- which auth a configuration gets ------------------------------------------------------


async def test_without_a_jwks_url_auth_is_dev_keys_with_roles_from_the_token(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    engine = create_engine(None, settings.sqlite_path)
    auth = build_auth(settings, engine)
    try:
        await auth.start()
        assert isinstance(auth.keys, DevKeys)
        assert isinstance(auth.roles, DevClaimRoles)
        assert auth.keys.ready
    finally:
        await auth.close()
        await engine.dispose()


async def test_with_a_jwks_url_auth_is_the_jwks_with_sql_roles_and_the_configured_policy(
    tmp_path: Path, jwks: JwksServer
) -> None:
    settings = dataclasses.replace(
        settings_for(tmp_path),
        clerk_jwks_url=jwks.url,
        clerk_issuer="https://clerk.example",
        clerk_authorized_parties=(AZP,),
        jwt_leeway=2.0,
        jwks_ttl=42.0,
    )
    engine = create_engine(None, settings.sqlite_path)
    auth = build_auth(settings, engine)
    try:
        assert not auth.keys.ready
        await auth.start()
        assert auth.keys.ready
        assert isinstance(auth.keys, JwksKeySource)
        assert auth.keys.ttl == 42.0
        assert isinstance(auth.roles, SqlRoles)
        assert auth.verifier.config == TokenPolicyConfig("https://clerk.example", (AZP,), 2.0)
    finally:
        await auth.close()
        await engine.dispose()


async def test_dev_auth_is_refused_in_production_even_with_hand_built_settings(
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(settings_for(tmp_path), env="production")
    engine = create_engine(None, settings.sqlite_path)
    try:
        with pytest.raises(ConfigError, match="CLERK_JWKS_URL"):
            build_auth(settings, engine)
    finally:
        await engine.dispose()


def test_production_refuses_to_leave_token_issuers_unchecked(tmp_path: Path) -> None:
    environ = {
        "VTT_ENV": "production",
        "CLERK_JWKS_URL": "https://keys.example/jwks",
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "vtt.db"),
    }
    with pytest.raises(ConfigError, match="CLERK_ISSUER"):
        Settings.from_env(environ)
    assert Settings.from_env({**environ, "CLERK_ISSUER": "https://keys.example"}).production


# --- production mode refuses to start without its configuration ----------------------------

JWKS_URL = "https://clerk.example.com/.well-known/jwks.json"
PG_URL = "postgresql://u@db.example/app"


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"VTT_ENV": "production"}, "CLERK_JWKS_URL and DATABASE_URL"),
        ({"VTT_ENV": "production", "DATABASE_URL": PG_URL}, "CLERK_JWKS_URL"),
        ({"VTT_ENV": "production", "CLERK_JWKS_URL": JWKS_URL}, "DATABASE_URL"),
        ({"FLY_APP_NAME": "vtt"}, "CLERK_JWKS_URL and DATABASE_URL"),
        (
            {"FLY_APP_NAME": "vtt", "VTT_ENV": "development", "DATABASE_URL": PG_URL},
            "CLERK_JWKS_URL",
        ),
    ],
)
def test_production_mode_refuses_to_start_naming_what_is_missing(
    env: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert f"requires {missing}:" in str(caught.value)


def test_production_with_both_set_runs_clerk_auth_never_dev_auth() -> None:
    settings = Settings.from_env(
        {"FLY_APP_NAME": "vtt", "CLERK_JWKS_URL": JWKS_URL, "DATABASE_URL": PG_URL}
    )

    assert settings.production
    assert not settings.dev_auth
    assert settings.clerk_issuer == "https://clerk.example.com"


def test_clerk_issuer_overrides_the_derived_one_and_is_none_for_another_url() -> None:
    explicit = Settings.from_env(
        {"CLERK_JWKS_URL": JWKS_URL, "CLERK_ISSUER": "https://clerk.app.example"}
    )
    underived = Settings.from_env({"CLERK_JWKS_URL": "https://keys.example/jwks"})

    assert explicit.clerk_issuer == "https://clerk.app.example"
    assert underived.clerk_issuer is None


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


# --- the Origin check and where the token comes from ------------------------------------------

ALLOWED = "https://app.example"


@pytest.mark.parametrize("origin", [ALLOWED, None])
async def test_an_allowed_origin_or_none_at_all_lets_the_token_decide(
    tmp_path: Path, origin: str | None
) -> None:
    settings = settings_for(tmp_path, allowed_origins=(ALLOWED, "https://other.example"))
    async with serve(settings) as server:
        extra = {} if origin is None else {"origin": origin}
        peer = await Peer.open(server.ws_url("c1", server.token("alice", "gm")), **extra)
        assert (await peer.recv())["type"] == "state.sync"
        await peer.close()

        bad = await Peer.open(server.ws_url("c1", "not-a-token"), **extra)
        assert await bad.closed() == (4401, "unreadable token")


async def test_a_disallowed_origin_is_closed_with_4403_before_any_state(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, allowed_origins=(ALLOWED,))
    async with serve(settings) as server:
        for origin in ("https://evil.example", "https://app.example.evil", "null"):
            peer = await Peer.open(server.ws_url("c1", server.token("alice", "gm")), origin=origin)
            assert await peer.closed() == (4403, "origin not allowed")
            assert peer.received == []


async def test_with_no_allowed_origins_configured_any_origin_is_accepted(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path)) as server:
        peer = await Peer.open(
            server.ws_url("c1", server.token("alice")), origin="https://anywhere.example"
        )
        assert (await peer.recv())["type"] == "state.sync"
        await peer.close()


async def test_the_token_may_come_as_an_authorization_bearer_header(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path)) as server:
        token = server.token("alice", "gm")
        peer = await Peer.open(
            server.ws_url("c1"), additional_headers={"Authorization": f"Bearer {token}"}
        )
        sync = await peer.recv()
        assert sync["type"] == "state.sync"
        await peer.close()

        wrong = await Peer.open(
            server.ws_url("c1"), additional_headers={"Authorization": f"Basic {token}"}
        )
        assert await wrong.closed() == (4401, "missing token")
