"""Campaign roles from SQL on real databases: the default query, bind checks, bad values, errors.

Each behaviour runs on SQLite (the engine's path, the embedded default) and on Postgres
through the app's asyncpg pool, with asyncpg's statement cache on and off (as behind a
transaction pooler); what only Postgres can do (UUID columns, SQLSTATEs, prepared statements,
a lost server connection) runs on Postgres only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from app.auth.roles import MembershipCache, SharedRoles, SqlRoles
from app.auth.tokens import Identity
from app.config import DEFAULT_ROLE_SQL, ConfigError
from app.errors import CloseCode
from app.persistence.database import DriverPool, create_engine
from app.persistence.roles import DriverRoleQuery, RoleQuery, RoleSource
from tests.support.harness import TIMEOUT, refused
from tests.support.process import free_port
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio
postgres = pytest.mark.postgres

UUID_CAMPAIGN = "7d1f0a3e-2b4c-4e5f-9a6b-0c1d2e3f4a5b"
# The app's asyncpg pool (what the server uses on Postgres), with the statement cache on and off.
POSTGRES_BACKENDS = [
    pytest.param("postgres", marks=postgres),
    pytest.param("postgres without statement cache", marks=postgres),
]
# The engine's path on Postgres: how roles were looked up before the pool, for comparison.
ENGINE = pytest.param("postgres through the engine", marks=postgres)
BACKENDS = ["sqlite", ENGINE, *POSTGRES_BACKENDS]


@dataclass
class RoleDatabase:
    """One backend's database: statements run on it, role queries built against it."""

    backend: str
    run: Callable[[str], Awaitable[None]]
    query: Callable[[str], RoleSource]
    url: str = ""

    @property
    def statement_cache(self) -> bool:
        return self.backend == "postgres"

    @property
    def engine_path(self) -> bool:
        return self.backend in ("sqlite", "postgres through the engine")

    def roles(self, sql: str = DEFAULT_ROLE_SQL) -> SqlRoles:
        return SqlRoles(self.query(sql))

    async def sql(self, *statements: str) -> None:
        for statement in statements:
            await self.run(statement)


async def started_pool(url: str, *, statement_cache: bool, **options: Any) -> DriverPool:
    pool = DriverPool(url, statement_cache=statement_cache, **options)
    await pool.start()
    return pool


@asynccontextmanager
async def opened(name: str, url: str, tmp_path: Path) -> AsyncIterator[RoleDatabase]:
    """A backend's empty database (Postgres: `url`, with a pool of the app's for the test)."""
    if name == "sqlite":
        path = tmp_path / "roles.db"
        engine = create_engine(None, str(path))

        async def run(statement: str) -> None:
            with sqlite3.connect(path) as db:
                db.execute(statement)

        try:
            yield RoleDatabase(name, run, lambda sql: RoleQuery(engine, sql))
        finally:
            await engine.dispose()
        return

    async def run_pg(statement: str) -> None:
        connection = await asyncpg.connect(url, timeout=TIMEOUT)
        try:
            await connection.execute(statement, timeout=TIMEOUT)
        finally:
            await connection.close(timeout=TIMEOUT)

    if name == "postgres through the engine":
        engine = create_engine(url)
        try:
            yield RoleDatabase(name, run_pg, lambda sql: RoleQuery(engine, sql), url)
        finally:
            await engine.dispose()
        return
    pool = await started_pool(url, statement_cache=name == "postgres", size=2)
    try:
        yield RoleDatabase(name, run_pg, lambda sql: DriverRoleQuery(pool, sql), url)
    finally:
        await asyncio.wait_for(pool.close(), TIMEOUT)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The backend's name, and for Postgres the URL of a fresh database."""
    if request.param == "sqlite":
        return "sqlite", ""
    url: str = request.getfixturevalue("postgres_url")
    return request.param, url


@pytest.fixture(params=POSTGRES_BACKENDS)
def postgres_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The app's pool with the statement cache on and off, and the URL of a fresh database."""
    url: str = request.getfixturevalue("postgres_url")
    return request.param, url


@pytest.fixture(params=[ENGINE, *POSTGRES_BACKENDS])
def any_postgres_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The app's pool and the engine's path, and the URL of a fresh database."""
    url: str = request.getfixturevalue("postgres_url")
    return request.param, url


@pytest.fixture
async def database(backend: tuple[str, str], tmp_path: Path) -> AsyncIterator[RoleDatabase]:
    """An empty database of each backend."""
    async with opened(*backend, tmp_path) as database:
        yield database


@pytest.fixture
async def campaigns(database: RoleDatabase) -> RoleDatabase:
    await database.sql(
        "CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)",
        "INSERT INTO campaigns VALUES ('c1', 'user_gm')",
    )
    return database


def identity(user_id: str, **claims: Any) -> Identity:
    return Identity(user_id, {"sub": user_id, **claims}, time.time() + 60)


# --- the bind check ---------------------------------------------------------------------------

NOT_EXACTLY_THE_TWO = [
    "SELECT 'gm' FROM campaigns WHERE id = :campaign_id",
    "SELECT 'gm' WHERE :user_id = :user_id",
    "SELECT role FROM members WHERE campaign = :campaign_id AND user = :user_id AND :extra",
    "SELECT role FROM members WHERE campaign = :campaign_id::uuid AND user = :user_id",
    "SELECT 'gm'",
]


@pytest.mark.parametrize("sql", NOT_EXACTLY_THE_TWO)
async def test_role_sql_must_bind_exactly_campaign_id_and_user_id(tmp_path: Path, sql: str) -> None:
    engine = create_engine(None, str(tmp_path / "roles.db"))
    try:
        with pytest.raises(ConfigError, match=":campaign_id and :user_id"):
            SqlRoles(RoleQuery(engine, sql))
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "sql",
    [
        *NOT_EXACTLY_THE_TWO,
        # A name inside a string literal or a comment is no parameter.
        "SELECT role FROM members WHERE campaign = ':campaign_id' AND user_id = :user_id",
        "SELECT role FROM members WHERE user_id = :user_id -- AND campaign = :campaign_id",
    ],
)
def test_the_driver_role_query_checks_the_same_and_sees_no_names_in_strings(sql: str) -> None:
    pool = DriverPool(f"postgresql://vtt@127.0.0.1:{free_port()}/app")  # never started

    with pytest.raises(ConfigError, match=r"exactly the parameters :campaign_id and :user_id"):
        DriverRoleQuery(pool, sql)


# --- the same answers on every backend --------------------------------------------------------


async def test_the_default_role_sql_makes_the_campaigns_gm_its_gm_and_anyone_else_a_player(
    campaigns: RoleDatabase,
) -> None:
    roles = campaigns.roles()

    assert await roles.role("c1", identity("user_gm")) == "gm"
    assert await roles.role("c1", identity("user_other")) == "player"
    assert await roles.role("c1", identity("user_gm")) == "gm", "and again, on a warm connection"


async def test_a_campaign_that_does_not_exist_is_4403(campaigns: RoleDatabase) -> None:
    failure = await refused(campaigns.roles().role("nope", identity("user_gm")))

    assert failure.code == CloseCode.FORBIDDEN


async def test_the_role_claim_of_a_token_is_ignored_by_sql_roles(campaigns: RoleDatabase) -> None:
    assert await campaigns.roles().role("c1", identity("user_x", vtt_role="gm")) == "player"


@pytest.mark.parametrize("value", ["'GM'", "'owner'", "''", "' gm'", "NULL", "1"])
async def test_any_role_value_but_gm_or_player_is_4403(database: RoleDatabase, value: str) -> None:
    sql = (
        f"SELECT {value} WHERE CAST(:campaign_id AS TEXT) = :campaign_id "
        "AND CAST(:user_id AS TEXT) = :user_id"
    )

    failure = await refused(database.roles(sql).role("c1", identity("u")))

    assert failure.code == CloseCode.FORBIDDEN


async def test_a_role_query_that_returns_no_rows_at_all_is_an_internal_error(
    database: RoleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    await database.sql("CREATE TABLE campaigns (id TEXT PRIMARY KEY, gm_id TEXT NOT NULL)")
    roles = database.roles("UPDATE campaigns SET gm_id = :user_id WHERE id = :campaign_id")

    with caplog.at_level("ERROR", logger="vtt.auth"):
        failure = await refused(roles.role("c1", identity("u")))

    assert (failure.code, failure.reason) == (
        CloseCode.INTERNAL_ERROR,
        "campaign roles cannot be resolved",
    )
    (record,) = [r for r in caplog.records if r.getMessage().startswith("campaign role query")]
    expected = "ResourceClosedError" if database.engine_path else "the query returns no columns"
    assert record.__dict__["reason"].startswith(expected)


async def test_a_role_database_that_refuses_connections_gives_1013() -> None:
    engine = create_engine(f"postgresql://vtt@127.0.0.1:{free_port()}/app", connect_timeout=2.0)
    roles = SqlRoles(RoleQuery(engine, DEFAULT_ROLE_SQL))
    try:
        failure = await refused(roles.role("c1", identity("u")))
    finally:
        await engine.dispose()

    assert (failure.code, failure.reason) == (
        CloseCode.TRY_AGAIN_LATER,
        "campaign roles unavailable",
    )


@pytest.mark.parametrize("statement_cache", [True, False])
async def test_a_driver_pool_whose_database_refuses_connections_gives_1013_and_says_so_once(
    statement_cache: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="vtt.database"):
        pool = await started_pool(
            f"postgresql://vtt@127.0.0.1:{free_port()}/app",
            statement_cache=statement_cache,
            connect_timeout=2.0,
        )
        roles = SqlRoles(DriverRoleQuery(pool, DEFAULT_ROLE_SQL))
        try:
            failure = await refused(roles.role("c1", identity("u")))
            assert pool._warming is not None
            await asyncio.wait_for(pool._warming, TIMEOUT)
        finally:
            await asyncio.wait_for(pool.close(), TIMEOUT)

    assert (failure.code, failure.reason) == (
        CloseCode.TRY_AGAIN_LATER,
        "campaign roles unavailable",
    )
    (warning,) = [r for r in caplog.records if r.name == "vtt.database"]
    assert "connections not opened at startup" in warning.getMessage()


async def test_concurrent_identical_admissions_send_one_query(campaigns: RoleDatabase) -> None:
    query = campaigns.query(DEFAULT_ROLE_SQL)
    calls: list[tuple[str, str]] = []

    class Counting:
        async def first_value(self, campaign_id: str, user_id: str) -> Any:
            calls.append((campaign_id, user_id))
            return await query.first_value(campaign_id, user_id)

    shared = SharedRoles(SqlRoles(Counting()), MembershipCache(0.0, 0))
    answers = await asyncio.wait_for(
        asyncio.gather(*(shared.admitted("c1", identity("user_gm")) for _ in range(50))), TIMEOUT
    )

    assert answers == ["gm"] * 50
    assert calls == [("c1", "user_gm")]


# --- Postgres only ----------------------------------------------------------------------------


APP_TABLES = (
    "CREATE TABLE campaigns (id uuid PRIMARY KEY, gm_id text NOT NULL)",
    "CREATE TABLE members (campaign_id uuid, user_id text, role text)",
    f"INSERT INTO campaigns VALUES ('{UUID_CAMPAIGN}', 'user_gm')",
    f"INSERT INTO members VALUES ('{UUID_CAMPAIGN}', 'user_p', 'player')",
)


@pytest.fixture
async def uuid_campaigns(
    postgres_backend: tuple[str, str], tmp_path: Path
) -> AsyncIterator[RoleDatabase]:
    """The app's pool on Postgres with the app's tables: a uuid campaign id, members."""
    async with opened(*postgres_backend, tmp_path) as database:
        await database.sql(*APP_TABLES)
        yield database


@pytest.fixture
async def app_tables(
    any_postgres_backend: tuple[str, str], tmp_path: Path
) -> AsyncIterator[RoleDatabase]:
    """The same, on the pool and through the engine."""
    async with opened(*any_postgres_backend, tmp_path) as database:
        await database.sql(*APP_TABLES)
        yield database


MEMBERS_SQL = (
    "SELECT role FROM members WHERE campaign_id = CAST(:campaign_id AS uuid) AND user_id = :user_id"
)


@pytest.mark.parametrize("sql", [DEFAULT_ROLE_SQL, MEMBERS_SQL])
async def test_an_id_a_uuid_column_cannot_compare_is_4403_and_the_next_lookup_works(
    app_tables: RoleDatabase, sql: str
) -> None:
    # The default SQL binds a text id to the uuid column (asyncpg refuses it before sending);
    # the membership SQL casts it (Postgres refuses it: 22P02).
    roles = app_tables.roles(sql)
    user = "user_gm" if sql == DEFAULT_ROLE_SQL else "user_p"

    for campaign in ("not-a-uuid", "c1", "7d1f0a3e2b4c4e5f9a6b0c1d2e3f4a5bff"):
        assert (await refused(roles.role(campaign, identity(user)))).code == CloseCode.FORBIDDEN
    assert await roles.role(UUID_CAMPAIGN, identity(user)) in ("gm", "player")


async def test_a_query_the_database_rejects_is_1011_naming_its_sqlstate(
    app_tables: RoleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    roles = app_tables.roles("SELECT role FROM nowhere WHERE c = :campaign_id AND u = :user_id")

    with caplog.at_level("ERROR", logger="vtt.auth"):
        failure = await refused(roles.role(UUID_CAMPAIGN, identity("u")))

    assert failure.code == CloseCode.INTERNAL_ERROR
    (record,) = [r for r in caplog.records if r.getMessage().startswith("campaign role query")]
    assert record.__dict__["reason"] == "SQLSTATE 42P01"


async def test_a_string_literal_keeps_its_colon_names_and_casts_stay_casts(
    uuid_campaigns: RoleDatabase,
) -> None:
    sql = (
        "SELECT CASE WHEN ':user_id' = ':' || 'user_id' THEN role END FROM members "
        "WHERE campaign_id::text = CAST(:campaign_id AS uuid)::text AND user_id = :user_id"
    )

    assert await uuid_campaigns.roles(sql).role(UUID_CAMPAIGN, identity("user_p")) == "player"


async def test_lookups_go_on_after_the_tables_change_under_a_prepared_statement(
    uuid_campaigns: RoleDatabase,
) -> None:
    roles = uuid_campaigns.roles(MEMBERS_SQL)
    assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"

    # The result type changes: a named statement's plan is invalid ("cached plan must not
    # change result type"), and is prepared again.
    await uuid_campaigns.sql("ALTER TABLE members ALTER COLUMN role TYPE varchar(16)")

    for _ in range(3):
        assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"


async def _prepared_statements(pool: DriverPool) -> list[str]:
    async with pool._pool.acquire(timeout=TIMEOUT) as connection:
        rows = await connection.fetch(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'SELECT role%'",
            timeout=TIMEOUT,
        )
    return [row[0] for row in rows]


async def test_named_statements_are_used_exactly_when_the_statement_cache_is_on(
    uuid_campaigns: RoleDatabase,
) -> None:
    cache = uuid_campaigns.statement_cache
    single = await started_pool(uuid_campaigns.url, statement_cache=cache, size=1)
    try:
        roles = SqlRoles(DriverRoleQuery(single, MEMBERS_SQL))
        for _ in range(3):
            assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"

        named = await _prepared_statements(single)
    finally:
        await asyncio.wait_for(single.close(), TIMEOUT)

    if cache:
        assert len(named) == 1, "one named statement, prepared once and used since"
        assert "$1" in named[0]
    else:
        assert named == []


async def test_a_server_that_forgets_prepared_statements_is_fine_without_the_statement_cache(
    uuid_campaigns: RoleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # What a transaction pooler does: the next lookup lands where the statement is unknown.
    cache = uuid_campaigns.statement_cache
    single = await started_pool(uuid_campaigns.url, statement_cache=cache, size=1)
    try:
        roles = SqlRoles(DriverRoleQuery(single, MEMBERS_SQL))
        assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
        async with single._pool.acquire(timeout=TIMEOUT) as connection:
            await connection.execute("DEALLOCATE ALL", timeout=TIMEOUT)

        with caplog.at_level("ERROR", logger="vtt.auth"):
            if cache:
                failure = await refused(roles.role(UUID_CAMPAIGN, identity("user_p")))
                assert failure.code == CloseCode.INTERNAL_ERROR
                (record,) = [r for r in caplog.records if r.name == "vtt.auth"]
                assert "VTT_DB_STATEMENT_CACHE=false" in record.__dict__["reason"]
            else:
                assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
        # Either way the pool's next connection starts clean.
        assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
    finally:
        await asyncio.wait_for(single.close(), TIMEOUT)


async def test_a_lookup_after_the_server_closed_the_pools_connections_succeeds(
    uuid_campaigns: RoleDatabase,
) -> None:
    # As after a restart, or a Neon compute suspended while idle.
    roles = uuid_campaigns.roles(MEMBERS_SQL)
    assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
    name = make_url(uuid_campaigns.url).database
    await uuid_campaigns.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND application_name = 'vtt-realtime'"
    )

    assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"


@pytest.mark.parametrize("mode", ["cut", "stall"])
async def test_a_lost_database_link_gives_1013_within_the_lookup_deadline_then_recovers(
    uuid_campaigns: RoleDatabase, mode: str
) -> None:
    url = make_url(uuid_campaigns.url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        pool = await started_pool(
            proxied,
            statement_cache=uuid_campaigns.statement_cache,
            size=2,
            connect_timeout=0.5,
            command_timeout=1.0,
        )
        try:
            roles = SqlRoles(DriverRoleQuery(pool, MEMBERS_SQL))
            assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
            if mode == "cut":
                proxy.cut()
            else:
                proxy.stall()

            began = time.monotonic()
            failure = await refused(roles.role(UUID_CAMPAIGN, identity("user_p")))
            assert failure.code == CloseCode.TRY_AGAIN_LATER
            assert time.monotonic() - began < pool.deadline + 0.5

            proxy.restore()
            assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
        finally:
            await asyncio.wait_for(pool.close(grace=1.0), TIMEOUT)


async def test_closing_the_pool_while_a_lookup_holds_a_connection_ends_within_its_grace(
    uuid_campaigns: RoleDatabase,
) -> None:
    pool = await started_pool(uuid_campaigns.url, statement_cache=True, size=1)
    async with pool._pool.acquire(timeout=TIMEOUT) as held:
        began = time.monotonic()
        await asyncio.wait_for(pool.close(grace=0.2), TIMEOUT)

        assert time.monotonic() - began < 0.2 + 1.0
        # Terminated, not waited for.
        assert held.is_closed()


# --- lookups asked together -------------------------------------------------------------------


class CountingPool(DriverPool):
    """The app's pool, counting the queries sent alone and the sizes of those sent together."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.alone = 0
        self.together: list[int] = []

    async def first_row(self, sql: str, args: Sequence[Any]) -> Any:
        self.alone += 1
        return await super().first_row(sql, args)

    async def all_rows(self, sql: str, args: Sequence[Any]) -> list[Any]:
        self.together.append(len(args[0]))
        return await super().all_rows(sql, args)


@asynccontextmanager
async def counting_pool(database: RoleDatabase, **options: Any) -> AsyncIterator[CountingPool]:
    pool = CountingPool(database.url, statement_cache=database.statement_cache, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(grace=1.0), TIMEOUT)


OTHER_CAMPAIGN = "0b9c8d7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e"
# (campaign, user) pairs whose answers differ: the GM, a member, strangers, no such campaign.
PAIRS = [
    (UUID_CAMPAIGN, "user_gm"),
    (UUID_CAMPAIGN, "user_p"),
    (UUID_CAMPAIGN, "stranger"),
    (OTHER_CAMPAIGN, "user_p"),
]


async def asked_at_once(query: RoleSource, pairs: list[tuple[str, str]]) -> list[Any]:
    return await asyncio.wait_for(
        asyncio.gather(*(query.first_value(campaign, user) for campaign, user in pairs)), TIMEOUT
    )


@pytest.mark.parametrize("sql", [DEFAULT_ROLE_SQL, MEMBERS_SQL])
async def test_lookups_asked_at_once_go_in_one_query_and_answer_as_each_would_alone(
    uuid_campaigns: RoleDatabase, sql: str
) -> None:
    pairs = PAIRS * 15
    async with counting_pool(uuid_campaigns, size=2) as pool:
        query = DriverRoleQuery(pool, sql)
        alone = [await query.first_value(campaign, user) for campaign, user in PAIRS]
        assert pool.alone == len(PAIRS)

        answers = await asked_at_once(query, pairs)

    assert answers == alone * 15
    assert pool.together == [len(pairs)]
    assert pool.alone == len(PAIRS)
    assert query.batching


@pytest.mark.parametrize("sql", [DEFAULT_ROLE_SQL, MEMBERS_SQL])
async def test_an_id_postgres_cannot_compare_spoils_only_its_batch(
    uuid_campaigns: RoleDatabase, sql: str
) -> None:
    # The default SQL's uuid column refuses a text id in asyncpg, the cast in Postgres (22P02).
    spoiled = [*PAIRS, ("not-a-uuid", "user_p"), ("c1", "user_gm")]
    async with counting_pool(uuid_campaigns, size=2) as pool:
        query = DriverRoleQuery(pool, sql)
        answers = await asked_at_once(query, spoiled)
        assert pool.alone == len(spoiled), "the batch failed: each lookup asked alone"

        again = await asked_at_once(query, PAIRS)

    assert answers[-2:] == [None, None]
    assert answers[:-2] == again
    assert again == (
        ["gm", "player", "player", None]
        if sql == DEFAULT_ROLE_SQL
        else [None, "player", None, None]
    )
    assert pool.together == [len(spoiled), len(PAIRS)]
    assert query.batching


async def test_a_role_sql_that_fails_only_in_the_batched_form_goes_one_lookup_at_a_time(
    uuid_campaigns: RoleDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    # One statement with a trailing comment after its semicolon: fine alone, a syntax error
    # inside the batched form's subquery.
    sql = MEMBERS_SQL + "; -- the member's role"
    async with counting_pool(uuid_campaigns, size=2) as pool:
        query = DriverRoleQuery(pool, sql)
        with caplog.at_level("WARNING", logger="vtt.database"):
            answers = await asked_at_once(query, PAIRS)
        assert not query.batching
        (warning,) = [r for r in caplog.records if r.name == "vtt.database"]
        assert "one at a time" in warning.getMessage()

        again = await asked_at_once(query, PAIRS)

    assert answers == again == [None, "player", None, None]
    assert pool.alone == 2 * len(PAIRS)


async def test_a_broken_role_sql_fails_each_lookup_and_keeps_the_batched_form(
    uuid_campaigns: RoleDatabase,
) -> None:
    # Alone it fails too: the query, not its batched form, is what the deployment must fix.
    sql = "SELECT role FROM nowhere WHERE c = :campaign_id AND u = :user_id"
    async with counting_pool(uuid_campaigns, size=2) as pool:
        query = DriverRoleQuery(pool, sql)
        roles = SqlRoles(query)
        failures = await asyncio.wait_for(
            asyncio.gather(
                *(refused(roles.role(campaign, identity(user))) for campaign, user in PAIRS)
            ),
            TIMEOUT,
        )

    assert [failure.code for failure in failures] == [CloseCode.INTERNAL_ERROR] * len(PAIRS)
    assert query.batching


async def test_a_batch_during_an_outage_fails_every_lookup_within_one_deadline(
    uuid_campaigns: RoleDatabase,
) -> None:
    url = make_url(uuid_campaigns.url)
    async with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        pool = CountingPool(
            proxied,
            statement_cache=uuid_campaigns.statement_cache,
            size=2,
            connect_timeout=0.5,
            command_timeout=1.0,
        )
        await pool.start()
        try:
            roles = SqlRoles(DriverRoleQuery(pool, MEMBERS_SQL))
            assert await roles.role(UUID_CAMPAIGN, identity("user_p")) == "player"
            await asked_at_once(roles.query, PAIRS)
            proxy.stall()

            began = time.monotonic()
            failures = await asyncio.wait_for(
                asyncio.gather(
                    *(refused(roles.role(campaign, identity(user))) for campaign, user in PAIRS)
                ),
                TIMEOUT,
            )
            # One deadline, not one for the batch and another for each lookup alone.
            assert time.monotonic() - began < pool.deadline + 0.5
            assert [f.code for f in failures] == [CloseCode.TRY_AGAIN_LATER] * len(PAIRS)
            assert pool.together == [len(PAIRS)] * 2
            assert pool.alone == 1

            proxy.restore()
            assert await asked_at_once(roles.query, PAIRS) == [None, "player", None, None]
        finally:
            await asyncio.wait_for(pool.close(grace=1.0), TIMEOUT)
