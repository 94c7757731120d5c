"""Production auth end to end: a real server, a local JWKS endpoint, roles from real Postgres.

Clerk is stood in for by tests/support/jwks_server.py (real RSA keys over HTTP); the app's
`campaigns` table has a UUID `id`, as in the app's own database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from app.config import Settings
from app.persistence.store import SqlStore
from tests.support.harness import TIMEOUT, Peer, RunningServer, role_of, serve, settings_for
from tests.support.jwks_server import AZP, BAD_TOKENS, JwksServer, signing_key
from tests.support.poll import poll
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio
postgres = pytest.mark.postgres

CAMPAIGN = "7d1f0a3e-2b4c-4e5f-9a6b-0c1d2e3f4a5b"
OTHER_CAMPAIGN = "0b9e8d7c-6f5a-4b3c-8d2e-1f0a9b8c7d6e"
GM, PLAYER, STRANGER = "user_gm", "user_player", "user_stranger"

# A deployment with a membership table: the GM from `campaigns`, players from `members`.
MEMBERSHIP_SQL = (
    "SELECT CASE WHEN c.gm_id = :user_id THEN 'gm' ELSE m.role END AS role "
    "FROM campaigns c LEFT JOIN campaign_members m "
    "ON m.campaign_id = c.id AND m.user_id = :user_id "
    "WHERE c.id = CAST(:campaign_id AS uuid)"
)


async def _sql(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement, timeout=10)
    finally:
        await connection.close(timeout=5)


@pytest.fixture
async def database(postgres_url: str) -> str:
    """The app's tables as the Next.js app has them: one campaign, its GM and one player."""
    await _sql(
        postgres_url,
        "CREATE TABLE campaigns (id uuid PRIMARY KEY, name text, gm_id text NOT NULL)",
        "CREATE TABLE campaign_members (campaign_id uuid REFERENCES campaigns (id), "
        "user_id text NOT NULL, role text NOT NULL, PRIMARY KEY (campaign_id, user_id))",
        f"INSERT INTO campaigns VALUES ('{CAMPAIGN}', 'Stars', '{GM}')",
        f"INSERT INTO campaign_members VALUES ('{CAMPAIGN}', '{PLAYER}', 'player')",
    )
    return postgres_url


def production_settings(
    tmp_path: Path, jwks: JwksServer, database_url: str, **extra: Any
) -> Settings:
    """Settings as production has them, pointed at the local JWKS and the test database."""
    return dataclasses.replace(
        settings_for(tmp_path),
        clerk_jwks_url=jwks.url,
        clerk_issuer=jwks.issuer,
        clerk_authorized_parties=(AZP,),
        database_url=database_url,
        **{"role_sql": MEMBERSHIP_SQL, **extra},
    )


@asynccontextmanager
async def production(
    tmp_path: Path, jwks: JwksServer, database_url: str, **extra: Any
) -> AsyncIterator[RunningServer]:
    async with serve(production_settings(tmp_path, jwks, database_url, **extra)) as server:
        yield server


async def join(server: RunningServer, token: str, campaign: str = CAMPAIGN) -> Peer:
    """Connect and read the greeting; fails if the server closes instead."""
    return await Peer.greeted(server.ws_url(campaign, token))


async def refusal(server: RunningServer, token: str, campaign: str = CAMPAIGN) -> tuple[Any, ...]:
    """Connect and return the close (code, reason); nothing may be sent before it."""
    peer = await Peer.open(server.ws_url(campaign, token))
    closed = await peer.closed()
    assert peer.received == [], "nothing about the campaign is sent before the checks pass"
    return closed


async def stays_open(peer: Peer, until: float) -> None:
    """Poll with pings (within the rate limit) until wall-clock time `until`."""
    while time.time() < until:
        await peer.roundtrip()
        await asyncio.sleep(0.1)


@postgres
async def test_members_join_with_their_role_from_the_database(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        gm = await join(server, jwks.mint(GM))
        player = await join(server, jwks.mint(PLAYER))

        assert await role_of(gm, GM) == "gm"
        assert await role_of(player, PLAYER) == "player"
        await gm.close()
        await player.close()


@postgres
async def test_a_role_claim_in_the_token_is_ignored_in_production(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        player = await join(server, jwks.mint(PLAYER, vtt_role="gm"))
        assert await role_of(player, PLAYER) == "player"

        stranger = jwks.mint(STRANGER, vtt_role="gm", vtt_campaign=CAMPAIGN)
        assert await refusal(server, stranger) == (4403, "not a member of this campaign")


@postgres
async def test_a_non_member_and_a_campaign_that_does_not_exist_are_closed_with_4403(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        forbidden = (4403, "not a member of this campaign")
        assert await refusal(server, jwks.mint(STRANGER)) == forbidden
        assert await refusal(server, jwks.mint(GM), OTHER_CAMPAIGN) == forbidden


@postgres
@pytest.mark.parametrize("role_sql", ["default", "membership"])
async def test_a_campaign_id_that_is_not_a_uuid_is_4403_and_the_server_carries_on(
    tmp_path: Path, jwks: JwksServer, database: str, role_sql: str
) -> None:
    # The default SQL compares a text parameter with the UUID column (asyncpg refuses the
    # value before sending it); the membership SQL casts it (Postgres refuses it: 22P02).
    extra = {"role_sql": Settings().role_sql} if role_sql == "default" else {}
    async with production(tmp_path, jwks, database, **extra) as server:
        for campaign in ("not-a-uuid", "c1", "7d1f0a3e2b4c4e5f9a6b0c1d2e3f4a5bff"):
            assert await refusal(server, jwks.mint(GM), campaign) == (
                4403,
                "not a member of this campaign",
            )
        gm = await join(server, jwks.mint(GM))
        assert await role_of(gm, GM) == "gm"
        await gm.close()


@postgres
async def test_a_role_query_the_database_rejects_is_an_internal_error_not_a_refusal(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    broken = "SELECT role FROM no_such_table WHERE campaign = :campaign_id AND u = :user_id"
    async with production(tmp_path, jwks, database, role_sql=broken) as server:
        assert await refusal(server, jwks.mint(GM)) == (1011, "campaign roles cannot be resolved")


@postgres
async def test_a_postgres_outage_during_role_resolution_closes_with_1013(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    url = make_url(database)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with production(tmp_path, jwks, proxied) as server:
            gm = await join(server, jwks.mint(GM))
            proxy.cut()

            started = time.monotonic()
            assert await refusal(server, jwks.mint(PLAYER)) == (1013, "campaign roles unavailable")
            assert time.monotonic() - started < TIMEOUT

            proxy.restore()
            player = await join(server, jwks.mint(PLAYER))
            assert await role_of(player, PLAYER) == "player"
            for peer in (gm, player):
                await peer.close()


@postgres
async def test_every_bad_token_is_closed_with_4401_at_the_handshake(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        # A token too large for a URL never reaches the app: the HTTP layer limits the line.
        cases = {case: make for case, make in BAD_TOKENS.items() if case != "too large"}
        outcomes = {case: await refusal(server, make(jwks)) for case, make in cases.items()}
        gm = await join(server, jwks.mint(GM))
        await gm.close()

    assert {case: code for case, (code, _) in outcomes.items()} == dict.fromkeys(cases, 4401)


@postgres
async def test_a_key_rotated_in_mid_run_is_picked_up_by_its_first_token(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        old = await join(server, jwks.mint(GM))
        rotated = signing_key("k2", index=1)
        jwks.rotate(rotated)
        requests = jwks.requests

        new = await join(server, jwks.mint(PLAYER, key=rotated))
        await old.send("auth.refresh", {"token": jwks.mint(GM, key=rotated)})
        await old.roundtrip()

        assert jwks.requests == requests + 1
        assert await role_of(old, GM) == "gm"
        assert await role_of(new, PLAYER) == "player"
        for peer in (old, new):
            await peer.close()


@postgres
async def test_during_a_jwks_outage_cached_keys_verify_and_a_new_kid_gets_1013(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        gm = await join(server, jwks.mint(GM))
        rotated = signing_key("k2", index=1)
        jwks.rotate(rotated)
        await jwks.stop()

        player = await join(server, jwks.mint(PLAYER, key=jwks.keys[0]))
        code, reason = await refusal(server, jwks.mint(PLAYER, key=rotated))
        assert (code, reason) == (1013, "signing keys unavailable")

        await jwks.start()

        # Back up: the background refresh (retrying after the failure) loads the new key.
        async def greeted() -> bool:
            code = await _greeted_or_closed(server, jwks.mint(PLAYER, key=rotated))
            assert code in (None, 1013)
            return code is None

        await poll(greeted, TIMEOUT, "the new key to load", interval=0.05)
        for each in (gm, player):
            await each.close()


async def _greeted_or_closed(server: RunningServer, token: str) -> int | None:
    """None when the connection is greeted with state.sync, else its close code."""
    peer = await Peer.open(server.ws_url(CAMPAIGN, token))
    try:
        await peer.expect("state.sync")
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code
    await peer.close()
    return None


@postgres
async def test_an_unreachable_jwks_at_startup_does_not_block_startup(
    tmp_path: Path, database: str
) -> None:
    jwks = JwksServer([signing_key("k1")])
    await jwks.start()
    await jwks.stop()
    try:
        async with (
            production(tmp_path, jwks, database) as server,
            httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        ):
            not_ready = await http.get("/ready")
            assert not_ready.status_code == 503
            assert not_ready.json()["reason"] == "signing keys not loaded"
            assert await refusal(server, jwks.mint(GM)) == (1013, "signing keys unavailable")

            await jwks.start()

            async def ready() -> bool:
                return (await http.get("/ready")).status_code == 200

            await poll(ready, TIMEOUT, "/ready to turn ready", interval=0.05)
            gm = await join(server, jwks.mint(GM))
            await gm.close()
    finally:
        await jwks.stop()


# --- auth.refresh ----------------------------------------------------------------------------


@postgres
async def test_a_refresh_by_the_same_user_extends_the_connection_past_its_first_token(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(
        tmp_path, jwks, database, token_refresh_required=True, token_grace=0.5
    ) as server:
        player = await join(server, jwks.mint(PLAYER, ttl=1))
        first_deadline = time.time() + 1.5
        await player.send("auth.refresh", {"token": jwks.mint(PLAYER, ttl=60)})

        await stays_open(player, until=first_deadline + 1.0)
        assert await role_of(player, PLAYER) == "player"
        await player.close()


@postgres
async def test_without_a_refresh_the_connection_is_closed_with_4401_after_its_grace(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(
        tmp_path, jwks, database, token_refresh_required=True, token_grace=0.5
    ) as server:
        player = await join(server, jwks.mint(PLAYER, ttl=1))

        assert await player.closed() == (4401, "token expired; refresh it")


@postgres
async def test_refresh_is_not_required_by_default(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database, token_grace=0.1) as server:
        player = await join(server, jwks.mint(PLAYER, ttl=1))
        await stays_open(player, until=time.time() + 2.0)
        await player.close()


@postgres
async def test_a_refresh_with_another_users_token_closes_with_4401(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        player = await join(server, jwks.mint(PLAYER))
        await player.send("auth.refresh", {"token": jwks.mint(GM)})

        assert await player.closed() == (4401, "token is for another user")


@postgres
async def test_a_refresh_with_a_bad_token_closes_with_4401(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        for case in ("expired", "HS256 with the public key", "wrong azp", "unknown kid"):
            player = await join(server, jwks.mint(PLAYER))
            await player.send("auth.refresh", {"token": BAD_TOKENS[case](jwks)})
            code, _ = await player.closed()
            assert code == 4401, case


@postgres
async def test_a_player_removed_from_the_campaign_is_closed_with_4403_at_the_next_refresh(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        player = await join(server, jwks.mint(PLAYER))
        await player.send("auth.refresh", {"token": jwks.mint(PLAYER)})
        await player.roundtrip()

        await _sql(database, f"DELETE FROM campaign_members WHERE user_id = '{PLAYER}'")
        await player.send("auth.refresh", {"token": jwks.mint(PLAYER)})

        assert await player.closed() == (4403, "not a member of this campaign")
        assert await refusal(server, jwks.mint(PLAYER)) == (4403, "not a member of this campaign")


@postgres
async def test_a_member_admitted_from_the_membership_cache_is_still_closed_at_the_next_refresh(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    forbidden = (4403, "not a member of this campaign")
    async with production(tmp_path, jwks, database, role_cache_ttl=60.0) as server:
        assert server.services.driver is not None, "roles come from the app's asyncpg pool"
        first = await join(server, jwks.mint(PLAYER))
        await _sql(database, f"DELETE FROM campaign_members WHERE user_id = '{PLAYER}'")

        # Within the cache's ttl a handshake takes the database's answer of a moment ago...
        second = await join(server, jwks.mint(PLAYER))
        assert await role_of(second, PLAYER) == "player"

        # ...a refresh asks the database: the member is closed, and no longer cached.
        await first.send("auth.refresh", {"token": jwks.mint(PLAYER)})
        assert await first.closed() == forbidden
        assert await refusal(server, jwks.mint(PLAYER)) == forbidden
        await second.send("auth.refresh", {"token": jwks.mint(PLAYER)})
        assert await second.closed() == forbidden


@postgres
async def test_a_user_refused_a_moment_before_being_added_is_admitted_at_once(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    # "Not a member" is never cached.
    async with production(tmp_path, jwks, database, role_cache_ttl=60.0) as server:
        assert await refusal(server, jwks.mint(STRANGER)) == (4403, "not a member of this campaign")
        await _sql(
            database, f"INSERT INTO campaign_members VALUES ('{CAMPAIGN}', '{STRANGER}', 'player')"
        )

        stranger = await join(server, jwks.mint(STRANGER))
        assert await role_of(stranger, STRANGER) == "player"
        await stranger.close()


@postgres
async def test_a_member_whose_role_changed_is_closed_with_4401_at_the_next_refresh(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    async with production(tmp_path, jwks, database) as server:
        gm = await join(server, jwks.mint(GM))
        player = await join(server, jwks.mint(PLAYER))
        for peer, user in ((gm, GM), (player, PLAYER)):
            await peer.send("auth.refresh", {"token": jwks.mint(user)})
            await peer.roundtrip()

        # The player is promoted to GM and the GM stays on as a player.
        await _sql(
            database,
            f"UPDATE campaigns SET gm_id = '{PLAYER}' WHERE id = '{CAMPAIGN}'",
            f"INSERT INTO campaign_members VALUES ('{CAMPAIGN}', '{GM}', 'player')",
        )
        for peer, user in ((gm, GM), (player, PLAYER)):
            await peer.send("auth.refresh", {"token": jwks.mint(user)})
            assert await peer.closed() == (4401, "campaign role changed; reconnect"), user

        demoted = await join(server, jwks.mint(GM))
        promoted = await join(server, jwks.mint(PLAYER))
        assert await role_of(demoted, GM) == "player"
        assert await role_of(promoted, PLAYER) == "gm"
        for peer in (demoted, promoted):
            await peer.close()


@postgres
async def test_a_refresh_during_a_database_outage_keeps_the_connection_on_its_current_token(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    url = make_url(database)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with production(tmp_path, jwks, proxied) as server:
            player = await join(server, jwks.mint(PLAYER))
            proxy.cut()
            await player.send("auth.refresh", {"token": jwks.mint(PLAYER)})
            await player.roundtrip()
            proxy.restore()
            await player.send("auth.refresh", {"token": jwks.mint(PLAYER)})
            await player.roundtrip()
            assert await role_of(player, PLAYER) == "player"
            await player.close()


@postgres
async def test_a_campaigns_first_join_reads_its_state_chat_and_usernames_on_the_driver_pool(
    tmp_path: Path, jwks: JwksServer, database: str
) -> None:
    await _sql(database, "CREATE TABLE users (id text PRIMARY KEY, username text)")
    async with production(tmp_path, jwks, database) as server:
        store = server.services.store
        assert isinstance(store, SqlStore)
        driver = store._driver
        assert driver is not None, "production auth on Postgres: loads go to the driver pool"
        asked: list[str] = []
        first_row, all_rows = driver.first_row, driver.all_rows

        async def counted(sql: str, args: Any) -> Any:
            asked.append(sql)
            return await first_row(sql, args)

        async def counted_all(sql: str, args: Any) -> Any:
            asked.append(sql)
            return await all_rows(sql, args)

        driver.first_row = counted  # type: ignore[method-assign]
        driver.all_rows = counted_all  # type: ignore[method-assign]
        gm = await join(server, jwks.mint(GM))

        assert any("FROM vtt_sessions" in sql for sql in asked), "the state"
        assert any("FROM chat_messages" in sql for sql in asked), "the chat history"
        assert any(sql == "SELECT username FROM users WHERE id = $1" for sql in asked), "the name"
        await gm.close()
