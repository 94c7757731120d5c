"""Chat storage on real SQLite and real Postgres: migration 0002, adoption, SqlChatStore."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import DEFAULT_USERNAME_SQL, ConfigError
from app.persistence.chat import (
    RECHECK_SECONDS,
    ChatRejected,
    ChatUnusable,
    DuplicateMessage,
    SqlChatStore,
    StoredMessage,
)
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import SqlStore, StoreUnavailable
from tests.support.database import cancel_mid_statement, small_driver_pool
from tests.support.harness import serve, settings_for
from tests.support.sql import GO_CAMPAIGN as CAMPAIGN
from tests.support.sql import GO_CHARACTER as CHARACTER
from tests.support.sql import GO_INSERT, GO_POSTGRES_DDL, GO_ROWS, HEAD, alembic
from tests.support.tcpproxy import TcpProxy

T = TypeVar("T")
MOMENT = datetime(2026, 2, 19, 10, 55, 13, 250000, tzinfo=UTC)
ROLL = (
    '{"expression":"2d20kh1+5","total":23,"terms":[{"sign":1,"count":2,"sides":20,"keep":"kh1",'
    '"dice":[{"value":4,"kept":false},{"value":18,"kept":true}],"value":18},'
    '{"sign":1,"constant":5,"value":5}]}'
)


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test scenario on a fresh event loop, failing it after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


async def execute(url: str, *statements: str, **parameters: object) -> list[Any]:
    """Run statements in one transaction and return the last one's rows."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = await connection.execute(text(statement), parameters)
                rows = list(result) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def look(url: str) -> dict[str, Any]:
    """Tables, chat_messages' columns (type, nullable) and indexes, and the version."""

    def read(connection: Connection) -> dict[str, Any]:
        inspector = inspect(connection)
        found: dict[str, Any] = {"tables": set(inspector.get_table_names())}
        if "chat_messages" in found["tables"]:
            found["columns"] = {
                column["name"]: (str(column["type"]), column["nullable"])
                for column in inspector.get_columns("chat_messages")
            }
            found["indexes"] = {
                index["name"]: index["column_names"]
                for index in inspector.get_indexes("chat_messages")
            }
        found["versions"] = [
            row[0] for row in connection.execute(text("SELECT * FROM vtt_alembic_version"))
        ]
        return found

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


@asynccontextmanager
async def chat_store(
    url: str, *, migrate: bool = True, reads: str = "engine", **options: Any
) -> AsyncIterator[tuple[SqlChatStore, AsyncEngine]]:
    """A SqlChatStore on the database (migrated first), its engine disposed afterwards; with
    `reads="driver"` (Postgres), its reads run on a driver pool of their own, as the server's
    do (after its startup check, as there)."""
    if migrate:
        await asyncio.to_thread(upgrade_to_head, url)
    timeouts: dict[str, Any] = {
        key: options.pop(key) for key in ("connect_timeout", "command_timeout") if key in options
    }
    engine = create_engine(url, **timeouts)
    options.setdefault("username_sql", DEFAULT_USERNAME_SQL)
    options.setdefault("character_sql", None)
    store = SqlChatStore(engine, **options)
    driver = None
    if reads == "driver":
        driver = small_driver_pool(url, timeouts)
        store.read_through(driver)
        await driver.start()
    try:
        yield store, engine
    finally:
        if driver is not None:
            await driver.close(grace=1.0)
        await engine.dispose()


def stored(
    number: int,
    *,
    campaign: str = "c1",
    user: str = "alice",
    moment: datetime = MOMENT,
    **fields: Any,
) -> StoredMessage:
    """A message to store: id m<number> as a UUID, `number` seconds after MOMENT."""
    return StoredMessage(
        id=str(uuid.UUID(int=number)),
        campaign_id=campaign,
        user_id=user,
        message_type=fields.pop("message_type", "text"),
        content=fields.pop("content", json.dumps({"n": number})),
        gm_only=fields.pop("gm_only", False),
        created_at=moment + timedelta(seconds=number),
        **fields,
    )


# --- the migration -----------------------------------------------------------------------------


def test_upgrade_creates_chat_messages_with_the_go_columns_and_the_history_index(
    database_url: str,
) -> None:
    upgrade_to_head(database_url)
    found = run(look(database_url))
    assert {"chat_messages", "vtt_chat_rolls", "vtt_sessions"} <= found["tables"]
    assert found["versions"] == [HEAD]
    assert found["indexes"] == {
        "chat_messages_campaign_id_created_at_idx": ["campaign_id", "created_at"]
    }
    columns = found["columns"]
    assert list(columns) == [
        "id",
        "campaign_id",
        "user_id",
        "character_id",
        "recipient_id",
        "message_type",
        "content",
        "gm_only",
        "created_at",
    ]
    nullable = {name for name, (_, is_null) in columns.items() if is_null}
    assert nullable == {"character_id", "recipient_id"}
    if postgres(database_url):
        assert columns["id"][0] == "UUID"
        assert columns["content"][0] == "JSONB"
        assert columns["created_at"][0] == "TIMESTAMP"
    # Another writer (the app) may leave id and created_at to the database.
    run(
        execute(
            database_url,
            "INSERT INTO chat_messages (campaign_id, user_id, message_type, content, gm_only)"
            " VALUES ('c1', 'u1', 'text', '{}', false)",
        )
    )
    (row,) = run(execute(database_url, "SELECT id, created_at FROM chat_messages"))
    assert uuid.UUID(str(row[0])).version == 4
    assert row[1] is not None


def test_upgrading_twice_keeps_chat_rows_and_adds_no_second_index(database_url: str) -> None:
    upgrade_to_head(database_url)

    async def scenario() -> list[StoredMessage]:
        async with chat_store(database_url, migrate=False) as (store, _):
            await store.insert(stored(1, roll=ROLL))
        await asyncio.to_thread(upgrade_to_head, database_url)
        async with chat_store(database_url, migrate=False) as (store, _):
            return await store.recent("c1", 10)

    (message,) = run(scenario())
    assert message.roll is not None
    assert len(run(look(database_url))["indexes"]) == 1


def test_an_existing_history_index_under_another_name_is_not_duplicated(
    database_url: str, tmp_path: Path
) -> None:
    result = alembic("upgrade", "0001", cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    id_type = "uuid" if postgres(database_url) else "text"
    run(
        execute(
            database_url,
            f"CREATE TABLE chat_messages (id {id_type} PRIMARY KEY, campaign_id text NOT NULL,"
            " user_id text NOT NULL, character_id text, recipient_id text, message_type text"
            " NOT NULL, content text NOT NULL, gm_only boolean NOT NULL,"
            " created_at timestamp NOT NULL)",
            "CREATE INDEX app_chat_history ON chat_messages (campaign_id, created_at, id)",
        )
    )
    upgrade_to_head(database_url)
    assert run(look(database_url))["indexes"] == {
        "app_chat_history": ["campaign_id", "created_at", "id"]
    }


def test_downgrading_drops_the_rolls_and_keeps_chat_messages(
    database_url: str, tmp_path: Path
) -> None:
    upgrade_to_head(database_url)
    run(
        execute(
            database_url,
            "INSERT INTO chat_messages (campaign_id, user_id, message_type, content, gm_only)"
            " VALUES ('c1', 'u1', 'text', '{}', false)",
        )
    )
    result = alembic("downgrade", "0001", cwd=tmp_path, database_url=database_url)
    assert result.returncode == 0, result.stderr
    found = run(look(database_url))
    assert "vtt_chat_rolls" not in found["tables"]
    assert found["versions"] == ["0001"]
    assert len(run(execute(database_url, "SELECT * FROM chat_messages"))) == 1
    upgrade_to_head(database_url)
    assert run(look(database_url))["versions"] == [HEAD]


@pytest.mark.postgres
@pytest.mark.parametrize("reads", ["engine", "driver"])
def test_upgrade_adopts_a_go_shaped_chat_messages_and_rewrites_none_of_its_rows(
    postgres_url: str, tmp_path: Path, reads: str
) -> None:
    run(execute(postgres_url, *GO_POSTGRES_DDL))
    run(
        execute(
            postgres_url,
            "INSERT INTO users (id, username)"
            " VALUES ('user_gm', 'Game Master'), ('user_ana', 'Ana')",
        )
    )
    for row in GO_ROWS:
        run(execute(postgres_url, GO_INSERT, campaign=CAMPAIGN, **row))
    rows = "SELECT xmin::text, * FROM chat_messages ORDER BY created_at"
    before = run(execute(postgres_url, rows))
    columns_before = run(look_without_versions(postgres_url))

    result = alembic("upgrade", "head", cwd=tmp_path, database_url=postgres_url)

    assert result.returncode == 0, result.stderr
    # Same xmin: not one row was rewritten, let alone changed.
    assert run(execute(postgres_url, rows)) == before
    found = run(look(postgres_url))
    assert found["columns"] == columns_before
    assert found["columns"]["campaign_id"] == ("UUID", False)
    assert found["indexes"] == {
        "chat_messages_campaign_id_created_at_idx": ["campaign_id", "created_at"]
    }
    assert "vtt_chat_rolls" in found["tables"]

    async def history() -> list[StoredMessage]:
        async with chat_store(postgres_url, migrate=False, reads=reads) as (store, _):
            await store.check()
            assert await store.recent("not-a-uuid", 100) == []
            return await store.recent(CAMPAIGN, 100)

    messages = run(history())
    assert [str(row.id) for row in before] == [m.id for m in messages]
    assert [(m.user_id, m.username) for m in messages] == [
        ("user_gm", "Game Master"),
        ("user_ana", "Ana"),
        ("user_ana", "Ana"),
        ("user_gm", "Game Master"),
    ]
    assert [json.loads(m.content) for m in messages] == [json.loads(r["content"]) for r in GO_ROWS]
    assert [(m.character_id, m.recipient_id, m.gm_only) for m in messages] == [
        (None, None, False),
        (CHARACTER, None, False),
        (None, "user_gm", False),
        (None, None, True),
    ]
    assert messages[0].created_at == datetime(2025, 3, 1, 20, 0, tzinfo=UTC)
    assert all(m.roll is None for m in messages)
    assert run(execute(postgres_url, rows)) == before


async def look_without_versions(url: str) -> dict[str, Any]:
    """chat_messages' columns before any migration ran (there is no version table yet)."""

    def read(connection: Connection) -> dict[str, Any]:
        return {
            column["name"]: (str(column["type"]), column["nullable"])
            for column in inspect(connection).get_columns("chat_messages")
        }

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


def test_upgrade_adopts_an_existing_sqlite_chat_messages_without_altering_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    ddl = (
        "CREATE TABLE chat_messages (id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL,"
        " user_id TEXT NOT NULL, character_id TEXT, recipient_id TEXT, message_type TEXT NOT NULL,"
        " content TEXT NOT NULL, gm_only BOOLEAN NOT NULL, created_at DATETIME NOT NULL)"
    )
    run(
        execute(
            url,
            ddl,
            "INSERT INTO chat_messages VALUES ('a1', 'c1', 'u1', NULL, NULL, 'text',"
            " '{\"text\":\"old\"}', 0, '2025-03-01 20:00:00')",
        )
    )
    upgrade_to_head(url)
    schema = "SELECT sql FROM sqlite_master WHERE name = 'chat_messages'"
    assert run(execute(url, schema)) == [(ddl,)]

    async def scenario() -> list[StoredMessage]:
        async with chat_store(url, migrate=False, username_sql=None) as (store, _):
            await store.insert(stored(2, campaign="c1", roll=ROLL))
            return await store.recent("c1", 10)

    old, new = run(scenario())
    assert (old.id, old.content, old.created_at) == (
        "a1",
        '{"text":"old"}',
        datetime(2025, 3, 1, 20, 0, tzinfo=UTC),
    )
    assert json.loads(new.roll or "") == json.loads(ROLL)


# --- SqlChatStore ------------------------------------------------------------------------------


def test_a_message_and_its_roll_round_trip_through_insert_and_recent(database_url: str) -> None:
    content = {"text": "Gobelin éclaireur 🗡", "nested": [[{"k": None}]], "n": 2**62}
    message = stored(
        1,
        content=json.dumps(content, ensure_ascii=False),
        character_id="pc-1",
        recipient_id="bob",
        message_type="whisper",
        roll=ROLL,
    )

    async def scenario() -> list[StoredMessage]:
        async with chat_store(database_url) as (store, _):
            await store.insert(message)
            await store.insert(stored(2, gm_only=True))
            return await store.recent("c1", 10)

    first, second = run(scenario())
    assert json.loads(first.content) == content
    assert json.loads(first.roll or "") == json.loads(ROLL)
    assert (first.id, first.user_id, first.character_id, first.recipient_id) == (
        message.id,
        "alice",
        "pc-1",
        "bob",
    )
    assert (first.message_type, first.gm_only, first.created_at) == (
        "whisper",
        False,
        MOMENT + timedelta(seconds=1),
    )
    assert (second.gm_only, second.roll, second.character_id) == (True, None, None)


@pytest.mark.postgres
def test_reads_on_the_driver_pool_give_what_the_engine_gives(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    character_sql = (
        "SELECT 1 FROM characters WHERE id = :character_id AND owner_id = :user_id"
        " AND campaign_id = :campaign_id"
    )
    messages = [
        stored(1, character_id="pc-1", recipient_id="bob", message_type="whisper", roll=ROLL),
        stored(2, user="bob", gm_only=True, content=json.dumps({"text": "é 🗡", "n": 2**62})),
        stored(3, user="carol"),
        stored(4, campaign="c2"),
    ]
    asked = [
        ("c1", "alice", "pc-1"),
        ("c1", "bob", "pc-1"),
        ("c1", "alice", "pc-2"),
        ("c2", "alice", "pc-1"),
    ]

    statements: dict[str, int] = {}

    async def read(reads: str, **options: Any) -> tuple[Any, ...]:
        async with chat_store(
            postgres_url, migrate=False, reads=reads, character_sql=character_sql, **options
        ) as (store, engine):
            await store.check()
            through_engine: list[str] = []
            event.listen(
                engine.sync_engine,
                "before_cursor_execute",
                lambda _c, _k, statement, *_: through_engine.append(statement),
            )
            answers = (
                await store.recent("c1", 2),
                await store.recent("c1", 10),
                await store.recent("c9", 10),
                [await store.username(user) for user in ("alice", "bob", "carol", "dave")],
                [await store.may_speak_as(*triple) for triple in asked],
            )
            statements[reads] = len(through_engine)
            return answers

    async def scenario() -> tuple[tuple[Any, ...], ...]:
        await asyncio.to_thread(upgrade_to_head, postgres_url)
        await execute(
            postgres_url,
            "CREATE TABLE users (id text PRIMARY KEY, username text)",
            "INSERT INTO users VALUES ('alice', 'Alice'), ('bob', ''), ('carol', NULL)",
            "CREATE TABLE characters (id text, owner_id text, campaign_id text)",
            "INSERT INTO characters VALUES ('pc-1', 'alice', 'c1')",
        )
        async with chat_store(postgres_url, migrate=False) as (store, _):
            for message in messages:
                await store.insert(message)
        broken = "SELECT username FROM no_such_table WHERE id = :user_id"
        return (
            await read("engine"),
            await read("driver"),
            await read("engine", username_sql=broken),
            await read("driver", username_sql=broken),
        )

    with caplog.at_level(logging.WARNING, logger="vtt.chat"):
        engine, driver, engine_broken, driver_broken = run(scenario())
    assert driver == engine
    # On the pool, not one of these reads went through the engine.
    assert statements["driver"] == 0 < statements["engine"]
    last_two, every, none, names, speaks = driver
    assert [m.id for m in last_two] == [messages[1].id, messages[2].id]
    first = every[0]
    assert (first.id, first.character_id, first.recipient_id, first.message_type) == (
        messages[0].id,
        "pc-1",
        "bob",
        "whisper",
    )
    assert (first.created_at, json.loads(first.roll or "")) == (
        messages[0].created_at,
        json.loads(ROLL),
    )
    assert [m.username for m in every] == ["Alice", None, None]
    assert json.loads(every[1].content) == {"text": "é 🗡", "n": 2**62}
    assert [(m.gm_only, m.roll is None) for m in every] == [
        (False, False),
        (True, True),
        (False, True),
    ]
    assert none == []
    assert names == ["Alice", None, None, None]
    assert speaks == [True, False, False, False]
    # A failing username query: no names, and one warning from each store.
    assert driver_broken == engine_broken
    assert driver_broken[3] == [None, None, None, None]
    warnings = [r for r in caplog.records if r.name == "vtt.chat"]
    assert [r.getMessage().split(";")[0] for r in warnings] == ["VTT_USERNAME_SQL fails"] * 2


def test_recent_gives_the_last_messages_of_one_campaign_oldest_first_ties_by_id(
    database_url: str,
) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with chat_store(database_url) as (store, _):
            for number in (5, 3, 4, 1, 2):
                await store.insert(stored(number))
            await store.insert(stored(9, campaign="c2"))
            # Two more in the same microsecond as message 1: the ids decide, not the order.
            await store.insert(stored(7, moment=MOMENT - timedelta(seconds=6)))
            await store.insert(stored(6, moment=MOMENT - timedelta(seconds=5)))
            last = [m.id for m in await store.recent("c1", 3)]
            every = [m.id for m in await store.recent("c1", 100)]
            none = [m.id for m in await store.recent("c3", 100)]
            return last, every, none

    last, every, none = run(scenario())
    ids = [str(uuid.UUID(int=n)) for n in (1, 2, 3, 4, 5)]
    assert last == ids[2:]
    assert every == [ids[0], str(uuid.UUID(int=6)), str(uuid.UUID(int=7)), *ids[1:]]
    assert none == []


def test_a_repeated_id_writes_nothing_and_is_reported_as_a_duplicate(database_url: str) -> None:
    async def scenario() -> list[StoredMessage]:
        async with chat_store(database_url) as (store, _):
            await store.insert(stored(1, content='"first"'))
            with pytest.raises(DuplicateMessage):
                await store.insert(stored(1, content='"second"', roll=ROLL))
            return await store.recent("c1", 10)

    (only,) = run(scenario())
    assert (only.content, only.roll) == ('"first"', None)


def test_an_insert_whose_sender_left_mid_statement_runs_to_its_end_and_frees_the_database(
    tmp_path: Path,
) -> None:
    # Cancelled while SQLite ran it, an INSERT ... RETURNING went on in aiosqlite's thread and
    # stopped on the row nobody read; the connection closed around it kept the write lock
    # until a full garbage collection (the chat-churn wedge: every later write "locked").
    path = tmp_path / "vtt.db"
    url = f"sqlite:///{path}"

    async def scenario() -> list[StoredMessage]:
        async with chat_store(url, connect_timeout=2.0) as (store, engine):
            await cancel_mid_statement(
                engine, path, "INSERT INTO chat_messages", store.insert(stored(1))
            )
            async with asyncio.timeout(5.0):
                await store.insert(stored(2))
            return await store.recent("c1", 10)

    assert [m.id for m in run(scenario())] == [stored(1).id, stored(2).id]


@pytest.mark.postgres
def test_a_go_table_takes_new_messages_and_refuses_non_uuid_ids_before_writing(
    postgres_url: str,
) -> None:
    run(execute(postgres_url, *GO_POSTGRES_DDL))

    async def scenario() -> tuple[list[StoredMessage], list[str]]:
        async with chat_store(postgres_url) as (store, _):
            await store.insert(stored(1, campaign=CAMPAIGN, character_id=CHARACTER, roll=ROLL))
            refused = []
            bad: list[dict[str, Any]] = [
                {"campaign": "c1"},
                {"campaign": CAMPAIGN, "character_id": "pc-1"},
            ]
            for fields in bad:
                with pytest.raises(ChatRejected) as raised:
                    await store.insert(stored(2, **fields))
                refused.append(raised.value.column)
            # A campaign id the uuid column cannot hold has no messages, and costs no query.
            assert await store.recent("not-a-uuid", 10) == []
            return await store.recent(CAMPAIGN, 10), refused

    messages, refused = run(scenario())
    assert [(m.character_id, m.roll is not None) for m in messages] == [(CHARACTER, True)]
    assert refused == ["campaign_id", "character_id"]


@pytest.mark.postgres
@pytest.mark.parametrize("reads", ["engine", "driver"])
def test_a_cut_link_makes_every_call_raise_store_unavailable_until_restored(
    postgres_url: str, reads: str
) -> None:
    async def scenario() -> list[StoredMessage]:
        direct = make_url(postgres_url)
        await asyncio.to_thread(upgrade_to_head, postgres_url)
        await execute(postgres_url, "CREATE TABLE users (id text PRIMARY KEY, username text)")
        async with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
            through = direct.set(host="127.0.0.1", port=proxy.port)
            url = through.render_as_string(hide_password=False)
            async with chat_store(
                url, migrate=False, reads=reads, connect_timeout=1.5, command_timeout=2.0
            ) as (store, _):
                await store.check()
                proxy.cut()
                calls = (
                    lambda: store.insert(stored(1)),
                    lambda: store.recent("c1", 10),
                    lambda: store.username("alice"),
                )
                for call in calls:
                    started = time.monotonic()
                    with pytest.raises(StoreUnavailable) as raised:
                        await asyncio.wait_for(call(), 15)
                    assert not isinstance(raised.value, ChatUnusable)
                    assert time.monotonic() - started < 8
                proxy.restore()
                give_up = time.monotonic() + 10
                while True:
                    try:
                        await store.insert(stored(2))
                        break
                    except StoreUnavailable:
                        assert time.monotonic() < give_up
                        await asyncio.sleep(0.05)
                return await store.recent("c1", 10)

    assert [m.id for m in run(scenario())] == [str(uuid.UUID(int=2))]


# --- the column check ----------------------------------------------------------------------------


def test_a_chat_table_lacking_a_column_disables_chat_with_a_reason_and_the_table_works(
    database_url: str, tmp_path: Path
) -> None:
    assert alembic("upgrade", "0001", cwd=tmp_path, database_url=database_url).returncode == 0
    run(
        execute(
            database_url,
            "CREATE TABLE chat_messages (id text PRIMARY KEY, campaign_id text NOT NULL,"
            " user_id text NOT NULL, message_type text NOT NULL, content text NOT NULL,"
            " created_at timestamp NOT NULL, kind integer NOT NULL)",
        )
    )

    async def scenario() -> tuple[str | None, bytes | None]:
        async with chat_store(database_url) as (store, engine):
            with pytest.raises(ChatUnusable) as raised:
                await store.check()
            for call in (lambda: store.insert(stored(1)), lambda: store.recent("c1", 10)):
                with pytest.raises(ChatUnusable):
                    await call()
            sessions = SqlStore(engine)
            await sessions.save_many([("c1", b'{"campaign_id":"c1","seq":3}')])
            assert raised.value.reason == store.unusable_reason
            return store.unusable_reason, await sessions.load("c1")

    reason, state = run(scenario())
    assert reason == (
        "chat_messages lacks column character_id; chat_messages lacks column recipient_id; "
        "chat_messages lacks column gm_only; chat_messages.kind is NOT NULL without a default"
    )
    assert state is not None


def test_a_column_of_the_wrong_kind_or_a_not_null_optional_one_makes_chat_unusable(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    run(
        execute(
            url,
            "CREATE TABLE chat_messages (id text PRIMARY KEY, campaign_id integer NOT NULL,"
            " user_id text NOT NULL, character_id text NOT NULL, recipient_id text,"
            " message_type text NOT NULL, content text NOT NULL, gm_only boolean NOT NULL,"
            " created_at text NOT NULL)",
        )
    )

    async def scenario() -> str | None:
        async with chat_store(url) as (store, _):
            with pytest.raises(ChatUnusable):
                await store.check()
            return store.unusable_reason

    assert run(scenario()) == (
        "chat_messages.campaign_id is integer, not text or uuid; "
        "chat_messages.character_id is NOT NULL; chat_messages.created_at is text, not timestamp"
    )


def test_an_unusable_table_is_looked_at_again_after_a_while(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    upgrade_to_head(url)
    run(execute(url, "ALTER TABLE vtt_chat_rolls RENAME TO parked"))
    now = [0.0]

    async def scenario() -> list[StoredMessage]:
        async with chat_store(url, migrate=False, clock=lambda: now[0]) as (store, _):
            with pytest.raises(ChatUnusable, match="vtt_chat_rolls does not exist"):
                await store.check()
            await execute(url, "ALTER TABLE parked RENAME TO vtt_chat_rolls")
            now[0] += RECHECK_SECONDS - 1
            with pytest.raises(ChatUnusable):
                await store.insert(stored(1))
            now[0] += 1
            await store.insert(stored(1))
            assert store.unusable_reason is None
            return await store.recent("c1", 10)

    assert len(run(scenario())) == 1


# --- usernames and characters --------------------------------------------------------------------


def test_usernames_come_from_the_configured_query_and_none_without_one(database_url: str) -> None:
    custom = "SELECT display_name FROM profiles WHERE clerk_id = :user_id AND display_name <> ''"

    async def scenario() -> tuple[list[str | None], list[str | None], list[str | None]]:
        await execute(
            database_url,
            "CREATE TABLE users (id text PRIMARY KEY, username text)",
            "CREATE TABLE profiles (clerk_id text PRIMARY KEY, display_name text)",
            "INSERT INTO users VALUES ('alice', 'Alice'), ('nameless', NULL), ('blank', '')",
            "INSERT INTO profiles VALUES ('alice', 'Alice the Bold'), ('bob', '')",
        )
        users = ["alice", "nameless", "blank", "nobody"]
        async with chat_store(database_url) as (store, _):
            default = [await store.username(user) for user in users]
            await store.insert(stored(1, user="alice"))
            await store.insert(stored(2, user="nobody"))
            loaded = [m.username for m in await store.recent("c1", 10)]
        async with chat_store(database_url, migrate=False, username_sql=custom) as (store, _):
            configured = [await store.username(user) for user in ("alice", "bob")]
        async with chat_store(database_url, migrate=False, username_sql=None) as (store, _):
            configured += [await store.username("alice")]
        return default, loaded, configured

    default, loaded, configured = run(scenario())
    assert default == ["Alice", None, None, None]
    assert loaded == ["Alice", None]
    assert configured == ["Alice the Bold", None, None]


@pytest.mark.postgres
def test_usernames_asked_at_once_on_the_driver_pool_go_together_in_one_query(
    postgres_url: str,
) -> None:
    users = [f"user_{n}" for n in range(40)]

    async def scenario() -> tuple[list[str | None], list[int]]:
        await execute(
            postgres_url,
            "CREATE TABLE users (id text PRIMARY KEY, username text)",
            *(f"INSERT INTO users VALUES ('{user}', 'Name {user}')" for user in users[::2]),
        )
        async with chat_store(postgres_url, reads="driver") as (store, _):
            pool = store._usernames._lookups.pool  # type: ignore[union-attr]
            batches: list[int] = []
            first_row, all_rows = pool.first_row, pool.all_rows

            async def one(sql: str, args: Any) -> Any:
                batches.append(1)
                return await first_row(sql, args)

            async def every(sql: str, args: Any) -> Any:
                batches.append(len(args[0]))
                return await all_rows(sql, args)

            pool.first_row, pool.all_rows = one, every  # type: ignore[method-assign]
            names = await asyncio.gather(*(store.username(user) for user in users))
            return list(names), batches

    names, batches = run(scenario())
    assert names == [f"Name {user}" if n % 2 == 0 else None for n, user in enumerate(users)]
    assert batches == [40], "asked in one turn, the 40 lookups went in one query"


@pytest.mark.postgres
@pytest.mark.parametrize("reads", ["engine", "driver"])
def test_a_user_id_a_uuid_users_table_cannot_hold_has_no_username(
    postgres_url: str, reads: str
) -> None:
    async def scenario() -> list[str | None]:
        await execute(
            postgres_url,
            "CREATE TABLE users (id uuid PRIMARY KEY, username text)",
            f"INSERT INTO users VALUES ('{CHARACTER}', 'Uma')",
        )
        async with chat_store(postgres_url, reads=reads) as (store, _):
            names = [await store.username("user_2abc"), await store.username(CHARACTER)]
            # A data exception is no row, not a broken query: it is asked again. Asked
            # together (one batch on the pool), the id the column cannot hold spoils nothing.
            together = await asyncio.gather(store.username("user_2abc"), store.username(CHARACTER))
            return [*names, await store.username(CHARACTER), *together]

    assert run(scenario()) == [None, "Uma", "Uma", None, "Uma"]


def test_a_broken_username_query_is_logged_once_and_gives_no_names(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[str | None]:
        async with chat_store(database_url) as (store, _):
            await store.check()  # the default query, and no users table
            return [await store.username("alice"), await store.username("bob")]

    with caplog.at_level(logging.WARNING, logger="vtt.chat"):
        assert run(scenario()) == [None, None]
    (record,) = [r for r in caplog.records if r.name == "vtt.chat"]
    assert record.getMessage() == (
        "VTT_USERNAME_SQL fails; it is not run again until restart (set it empty to turn it off)"
    )
    assert "users" in record.__dict__["reason"]


def test_the_character_query_decides_what_else_a_player_may_speak_as(database_url: str) -> None:
    sql = (
        "SELECT 1 FROM characters WHERE id = :character_id AND owner_id = :user_id"
        " AND campaign_id = :campaign_id"
    )

    async def scenario() -> list[bool]:
        await execute(
            database_url,
            "CREATE TABLE characters (id text, owner_id text, campaign_id text)",
            "INSERT INTO characters VALUES ('pc1', 'alice', 'c1')",
        )
        async with chat_store(database_url, character_sql=sql) as (store, _):
            answers = [
                await store.may_speak_as("c1", "alice", "pc1"),
                await store.may_speak_as("c1", "bob", "pc1"),
                await store.may_speak_as("c2", "alice", "pc1"),
            ]
        async with chat_store(database_url, migrate=False) as (store, _):
            answers.append(await store.may_speak_as("c1", "alice", "pc1"))
        return answers

    assert run(scenario()) == [True, False, False, False]


@pytest.mark.parametrize(
    ("option", "sql", "named"),
    [
        ("username_sql", "SELECT username FROM users WHERE id = :id", "VTT_USERNAME_SQL"),
        ("username_sql", "SELECT 'x'", "VTT_USERNAME_SQL"),
        ("character_sql", "SELECT 1 WHERE :user_id = :character_id", "VTT_CHARACTER_SQL"),
    ],
)
def test_a_configured_query_must_bind_exactly_its_parameters(
    tmp_path: Path, option: str, sql: str, named: str
) -> None:
    engine = create_engine(None, str(tmp_path / "vtt.db"))
    options: dict[str, str | None] = {"username_sql": None, "character_sql": None, option: sql}
    with pytest.raises(ConfigError, match=f"^{named} must use exactly the parameters"):
        SqlChatStore(engine, **options)  # type: ignore[arg-type]


# --- the server at startup -----------------------------------------------------------------------


def test_a_server_on_an_unusable_chat_table_says_so_and_the_table_still_works(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert alembic("upgrade", "0001", cwd=tmp_path, database_url=database_url).returncode == 0
    run(
        execute(
            database_url,
            "CREATE TABLE chat_messages (id text PRIMARY KEY, campaign_id text NOT NULL)",
        )
    )

    async def scenario() -> tuple[str | None, dict[str, Any]]:
        async with serve(settings_for(tmp_path, database_url=database_url)) as server:
            gm = await server.join("c1", "gm1", "gm")
            moved = await gm.request("token.add", TOKEN)
            await gm.close()
            return server.services.chat_store.unusable_reason, moved

    with caplog.at_level(logging.WARNING, logger="vtt.chat"):
        reason, moved = run(scenario())
    assert moved["type"] == "token.add"
    assert reason is not None
    assert reason.startswith("chat_messages lacks column user_id")
    (line,) = [r for r in caplog.records if r.getMessage().startswith("chat disabled")]
    assert line.levelno == logging.ERROR
    assert line.getMessage() == (
        "chat disabled: chat_messages cannot be used; the rest of the table works"
    )
    assert line.__dict__["reason"] == reason


TOKEN = {
    "token_id": "t1",
    "name": "Scout",
    "x": 1,
    "y": 2,
    "width": 64,
    "height": 64,
    "visible": True,
}
