"""Where chat lives between sessions: chat_messages (adopted or created), rolls, usernames.

ChatStore (Protocol)    what the chat layer calls
  SqlChatStore          chat_messages and vtt_chat_rolls through the shared engine; the
                        columns of chat_messages are read first and statements bind to their types
  MemoryChatStore       dicts, for unit tests, with a switchable outage
StoredMessage           one message as stored (content and roll as JSON text)
StoreUnavailable        (app.persistence.store) the database did not answer
  ChatUnusable          chat_messages lacks what chat needs; `reason` says what, for logs and /ready
DuplicateMessage        a message with this id is already stored
ChatRejected            a value the adopted table cannot hold (a non-UUID in a uuid column)

Usernames come from VTT_USERNAME_SQL (one :user_id, the first column of the first row) and
characters a player may speak as from VTT_CHARACTER_SQL (:campaign_id, :user_id,
:character_id; allowed when the first column of the first row is true). An id the database
cannot compare (SQLSTATE class 22) means no row; a query that fails otherwise is logged once
and then treated as answering nothing, since only the deployment can fix it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import sqlalchemy as sa
from sqlalchemy import Text, bindparam, cast, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeEngine

from app.config import ConfigError
from app.persistence.database import READ_FAILURES, DriverPool, to_the_end
from app.persistence.lookups import (
    DATA_EXCEPTION,
    UNAVAILABLE_CLASSES,
    DriverLookups,
    LookupBroken,
    LookupUnavailable,
)
from app.persistence.store import StoreUnavailable
from app.persistence.tables import vtt_chat_rolls

log = logging.getLogger("vtt.chat")

CHAT_TABLE: Final = "chat_messages"
# Which column types each column may have in an adopted table (kinds, see _kind).
_IDS: Final = frozenset({"uuid", "text"})
COLUMNS: Final[Mapping[str, frozenset[str]]] = {
    "id": _IDS,
    "campaign_id": _IDS,
    "user_id": _IDS,
    "character_id": _IDS,
    "recipient_id": _IDS,
    "message_type": frozenset({"text"}),
    "content": frozenset({"json", "jsonb", "text"}),
    "gm_only": frozenset({"bool"}),
    "created_at": frozenset({"timestamp"}),
}
OPTIONAL_COLUMNS: Final = ("character_id", "recipient_id")
# A table found unusable is looked at again after this long (someone may migrate or fix it).
RECHECK_SECONDS: Final = 10.0
USERNAME_PARAMETERS: Final = frozenset({"user_id"})
CHARACTER_PARAMETERS: Final = frozenset({"campaign_id", "user_id", "character_id"})


class ChatUnusable(StoreUnavailable):
    """chat_messages is missing or lacks a column chat needs; `reason` names what, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DuplicateMessage(Exception):
    """A message with this id is already stored; nothing was written."""


class ChatRejected(Exception):
    """A value `column` of the adopted table cannot hold; nothing was written."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One chat message as stored; `username` is filled in when read back, never stored."""

    id: str
    campaign_id: str
    user_id: str
    message_type: str
    content: str
    gm_only: bool
    created_at: datetime
    character_id: str | None = None
    recipient_id: str | None = None
    roll: str | None = None
    username: str | None = None


class ChatStore(Protocol):
    """Durable chat: messages with their rolls, plus the usernames and characters of users."""

    @property
    def unusable_reason(self) -> str | None:
        """Why chat is off (for /ready), or None while chat_messages is usable or not yet read."""
        ...

    async def check(self) -> None:
        """Read chat_messages' columns; raise ChatUnusable, or StoreUnavailable when down."""
        ...

    async def insert(self, message: StoredMessage) -> None:
        """Store a message and its roll in one transaction, or raise (see the module doc)."""
        ...

    async def recent(self, campaign_id: str, limit: int) -> list[StoredMessage]:
        """The campaign's last `limit` messages, oldest first, with rolls and usernames."""
        ...

    async def username(self, user_id: str) -> str | None:
        """The user's name from VTT_USERNAME_SQL, or None (no row, or no query configured)."""
        ...

    async def may_speak_as(self, campaign_id: str, user_id: str, character_id: str) -> bool:
        """Whether VTT_CHARACTER_SQL lets the user speak as the character (False when unset)."""
        ...


# --- translating the database's failures -------------------------------------------------------


def _sqlstate(error: DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _describe(error: BaseException) -> str:
    """Name a failure on one short line: the driver's error, not SQLAlchemy's statement dump."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


@contextmanager
def _failures() -> Iterator[None]:
    """Translate database and network errors into StoreUnavailable, keeping the cause."""
    try:
        yield
    except (SQLAlchemyError, OSError) as error:
        raise StoreUnavailable(_describe(error)) from error


def _unavailable(error: Exception, dialect: str) -> bool:
    """Whether a failed query means "the database cannot answer now" rather than a bad query."""
    if isinstance(error, OSError | TimeoutError | sa.exc.TimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    state = _sqlstate(error)
    if state is not None:
        return state[:2] in UNAVAILABLE_CLASSES
    if error.connection_invalidated:
        return True
    # SQLite reports a missing table as an OperationalError too; it has no outage to report.
    return dialect != "sqlite" and isinstance(
        error, sa.exc.OperationalError | sa.exc.InterfaceError
    )


class _ConfiguredQuery:
    """A deployment's query with bound parameters: its first value, errors translated here."""

    def __init__(
        self, engine: AsyncEngine, sql: str, parameters: frozenset[str], setting: str
    ) -> None:
        statement = text(sql)
        names = frozenset(statement.compile().params)
        if names != parameters:
            raise ConfigError(
                f"{setting} must use exactly the parameters "
                + ", ".join(f":{name}" for name in sorted(parameters))
                + f" (found {', '.join(sorted(names)) or 'none'})"
            )
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statement = statement
        self.setting = setting
        self.broken = False
        self._sql = sql
        # Where it runs when not through the engine (`read_through`).
        self._lookups: DriverLookups | None = None

    def read_through(self, driver: DriverPool) -> None:
        """Run on `driver` (the app's asyncpg pool, Postgres), not through the engine: the
        lookups of a join storm go together, as the role lookups do."""
        self._lookups = DriverLookups(driver, self._sql, self.setting)

    async def first_value(self, parameters: Mapping[str, str]) -> Any:
        """The first column of the first row; None for no row, ids it cannot compare, or broken."""
        if self.broken:
            return None
        if self._lookups is not None:
            return await self._driver_value(self._lookups, parameters)
        try:
            async with self.engine.connect() as connection:
                row = (await connection.execute(self.statement, dict(parameters))).first()
        except (SQLAlchemyError, OSError) as error:
            if _unavailable(error, self.engine.dialect.name):
                raise StoreUnavailable(_describe(error)) from error
            if isinstance(error, sa.exc.DataError) or (
                isinstance(error, DBAPIError)
                and (_sqlstate(error) or "").startswith(DATA_EXCEPTION)
            ):
                return None
            self._break(error)
            return None
        return None if row is None else row[0]

    async def _driver_value(self, lookups: DriverLookups, parameters: Mapping[str, str]) -> Any:
        """`first_value` on the pool: its failures sorted by SQLSTATE as the engine's are."""
        try:
            return await lookups.first_value(parameters)
        except LookupUnavailable as failure:
            raise StoreUnavailable(failure.cause) from failure
        except LookupBroken as failure:
            self._break(failure.cause)
            return None

    def _break(self, error: Exception | str) -> None:
        self.broken = True
        log.warning(
            "%s fails; it is not run again until restart (set it empty to turn it off)",
            self.setting,
            extra={"reason": error if isinstance(error, str) else _describe(error)},
        )


# --- the table as found --------------------------------------------------------------------------


def _kind(type_: TypeEngine[Any]) -> str:
    """The family of a reflected column type that matters here."""
    if isinstance(type_, sa.Uuid):
        return "uuid"
    if isinstance(type_, postgresql.JSONB):
        return "jsonb"
    if isinstance(type_, sa.JSON):
        return "json"
    if isinstance(type_, sa.String):
        return "text"
    if isinstance(type_, sa.Boolean):
        return "bool"
    if isinstance(type_, sa.DateTime):
        return "timestamp"
    return type(type_).__name__.lower()


def _column_type(kind: str, timezone: bool) -> TypeEngine[Any]:
    """The type to bind a column of `kind` with: ids and JSON travel as text."""
    if kind == "uuid":
        return sa.Uuid(as_uuid=False)
    if kind == "jsonb":
        return postgresql.JSONB()
    if kind == "json":
        return sa.JSON()
    if kind == "bool":
        return sa.Boolean()
    if kind == "timestamp":
        return sa.DateTime(timezone=timezone)
    return sa.Text()


@dataclass(frozen=True, slots=True)
class _Schema:
    """chat_messages as found: its kinds, and the statements built for them."""

    uuid_columns: frozenset[str]
    timezone: bool
    insert: Executable
    insert_roll: Executable
    recent: sa.Select[Any]


def _read_columns(connection: Connection) -> tuple[dict[str, tuple[str, bool]], list[str]]:
    """Each needed column's (kind, timezone), or the problems that make the table unusable."""
    inspector = inspect(connection)
    if not inspector.has_table(CHAT_TABLE):
        return {}, [f"{CHAT_TABLE} does not exist (run the migrations)"]
    if not inspector.has_table(vtt_chat_rolls.name):
        return {}, [f"{vtt_chat_rolls.name} does not exist (run the migrations)"]
    found = {column["name"]: column for column in inspector.get_columns(CHAT_TABLE)}
    problems: list[str] = []
    kinds: dict[str, tuple[str, bool]] = {}
    for name, allowed in COLUMNS.items():
        column = found.get(name)
        if column is None:
            problems.append(f"{CHAT_TABLE} lacks column {name}")
            continue
        kind = _kind(column["type"])
        if kind not in allowed:
            problems.append(f"{CHAT_TABLE}.{name} is {kind}, not {' or '.join(sorted(allowed))}")
        if name in OPTIONAL_COLUMNS and not column["nullable"]:
            problems.append(f"{CHAT_TABLE}.{name} is NOT NULL")
        kinds[name] = (kind, bool(getattr(column["type"], "timezone", False)))
    for name, column in found.items():
        if (
            name not in COLUMNS
            and not column["nullable"]
            and column.get("default") is None
            and column.get("autoincrement") is not True
            and column.get("computed") is None
            and column.get("identity") is None
        ):
            problems.append(f"{CHAT_TABLE}.{name} is NOT NULL without a default")
    return kinds, problems


def _build_schema(kinds: dict[str, tuple[str, bool]], dialect: str) -> _Schema:
    """Statements bound to the found column types, for this dialect."""
    postgres = dialect == "postgresql"
    table = sa.Table(
        CHAT_TABLE,
        sa.MetaData(),
        *(sa.Column(name, _column_type(kind, tz)) for name, (kind, tz) in kinds.items()),
    )
    c = table.c

    def param(name: str) -> ColumnElement[Any]:
        return bindparam(f"p_{name}", type_=c[name].type)

    def json_param(name: str, kind: str) -> ColumnElement[Any]:
        # JSON arrives as text and becomes json(b) in the server: never parsed or re-encoded here.
        value = bindparam(f"p_{name}", type_=Text)
        if postgres and kind == "jsonb":
            return cast(value, postgresql.JSONB)
        if postgres and kind == "json":
            return cast(value, postgresql.JSON)
        return value

    dialect_insert = postgresql.insert if postgres else sqlite.insert
    values = {name: param(name) for name in COLUMNS if name != "content"}
    values["content"] = json_param("content", kinds["content"][0])
    insert = dialect_insert(table).values(values).on_conflict_do_nothing().returning(c.id)
    rolls = vtt_chat_rolls.c
    insert_roll = dialect_insert(vtt_chat_rolls).values(
        message_id=bindparam("p_message_id", type_=Text),
        campaign_id=bindparam("p_campaign_id", type_=Text),
        roll=json_param("roll", "jsonb"),
    )
    latest = (
        select(*(c[name] for name in COLUMNS))
        .where(c.campaign_id == param("campaign_id"))
        .order_by(c.created_at.desc(), c.id.desc())
        .limit(bindparam("p_limit", type_=sa.Integer))
        .subquery("cm")
    )
    m = latest.c
    message_id = cast(m.id, Text)
    recent = (
        select(
            message_id,
            cast(m.campaign_id, Text),
            cast(m.user_id, Text),
            cast(m.character_id, Text),
            cast(m.recipient_id, Text),
            m.message_type,
            cast(m.content, Text),
            m.gm_only,
            m.created_at,
            cast(rolls.roll, Text),
        )
        .select_from(latest.outerjoin(vtt_chat_rolls, rolls.message_id == message_id))
        .order_by(m.created_at, m.id)
    )
    return _Schema(
        uuid_columns=frozenset(name for name, (kind, _) in kinds.items() if kind == "uuid"),
        timezone=kinds["created_at"][1],
        insert=insert,
        insert_roll=insert_roll,
        recent=recent,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite and `timestamp` columns give naive UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class SqlChatStore:
    """A ChatStore over chat_messages and vtt_chat_rolls, through a shared async engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        username_sql: str | None,
        character_sql: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        # Reads are one SELECT each: in autocommit, without the BEGIN and ROLLBACK round trips.
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        self._schema: _Schema | None = None
        self._unusable: ChatUnusable | None = None
        self._checked_at = float("-inf")
        self._usernames = (
            None
            if username_sql is None
            else _ConfiguredQuery(engine, username_sql, USERNAME_PARAMETERS, "VTT_USERNAME_SQL")
        )
        self._characters = (
            None
            if character_sql is None
            else _ConfiguredQuery(engine, character_sql, CHARACTER_PARAMETERS, "VTT_CHARACTER_SQL")
        )
        # Where reads run when not through the engine (`read_through`); the history's SQL
        # there and its parameters in $ order, compiled once (the schema, once found, stays).
        self._driver: DriverPool | None = None
        self._recent_sql: tuple[str, tuple[str, ...]] | None = None

    def read_through(self, driver: DriverPool) -> None:
        """Run reads (a campaign's history, usernames, characters) on `driver`, the app's
        asyncpg pool (Postgres), not through the engine.

        Each join looks up its user's name, and a campaign's first join reads its history:
        through SQLAlchemy's async layers, several tenths of a millisecond of CPU more each
        than on the pool (docs/BENCHMARKS.md, 2026-12-04). The statements are the engine's
        own; failures are sorted as through the engine. Writes stay on the engine, in its
        transactions.
        """
        self._driver = driver
        for query in (self._usernames, self._characters):
            if query is not None:
                query.read_through(driver)

    @property
    def unusable_reason(self) -> str | None:
        """Why chat is off (for /ready), or None while chat_messages is usable or not yet read."""
        return None if self._unusable is None else self._unusable.reason

    async def check(self) -> None:
        """Read chat_messages' columns (again, if unusable a while ago); probe usernames."""
        await self._ready()
        if self._usernames is not None:
            # At startup, a broken username query is logged now rather than at the first join.
            await self._usernames.first_value({"user_id": ""})

    async def _ready(self) -> _Schema:
        if self._schema is not None:
            return self._schema
        if self._unusable is not None and self._clock() - self._checked_at < RECHECK_SECONDS:
            raise self._unusable
        with _failures():
            async with self._engine.connect() as connection:
                kinds, problems = await connection.run_sync(_read_columns)
        self._checked_at = self._clock()
        if problems:
            self._unusable = ChatUnusable("; ".join(problems))
            raise self._unusable
        self._unusable = None
        self._schema = _build_schema(kinds, self._engine.dialect.name)
        return self._schema

    async def insert(self, message: StoredMessage) -> None:
        """Store the message (and its roll) in one transaction; a repeated id writes nothing."""
        schema = await self._ready()
        values = {
            "id": message.id,
            "campaign_id": message.campaign_id,
            "user_id": message.user_id,
            "character_id": message.character_id,
            "recipient_id": message.recipient_id,
        }
        for column in schema.uuid_columns:
            value = values[column]
            if value is not None and not _is_uuid(value):
                raise ChatRejected(column, f"{column} must be a UUID here, got {value[:128]!r}")
        moment = _utc(message.created_at)
        parameters = {
            **{f"p_{name}": value for name, value in values.items()},
            "p_message_type": message.message_type,
            "p_content": message.content,
            "p_gm_only": message.gm_only,
            "p_created_at": moment if schema.timezone else moment.replace(tzinfo=None),
        }
        # Its sender may leave meanwhile (the insert is then cancelled): it ends all the same.
        if not await to_the_end(self._write(schema, message, parameters)):
            raise DuplicateMessage(message.id)

    async def _write(
        self, schema: _Schema, message: StoredMessage, parameters: Mapping[str, Any]
    ) -> bool:
        """Insert the message and its roll in one transaction; False when the id was stored."""
        with _failures():
            async with self._engine.begin() as connection:
                stored = (await connection.execute(schema.insert, parameters)).first()
                if stored is not None and message.roll is not None:
                    await connection.execute(
                        schema.insert_roll,
                        {
                            "p_message_id": message.id,
                            "p_campaign_id": message.campaign_id,
                            "p_roll": message.roll,
                        },
                    )
        return stored is not None

    async def recent(self, campaign_id: str, limit: int) -> list[StoredMessage]:
        """The last `limit` messages, oldest first (ties by id), with rolls, then usernames."""
        schema = await self._ready()
        if "campaign_id" in schema.uuid_columns and not _is_uuid(campaign_id):
            return []
        parameters = {"p_campaign_id": campaign_id, "p_limit": limit}
        rows: Sequence[Any]
        if self._driver is not None:
            rows = await self._driver_rows(self._driver, schema, parameters)
        else:
            with _failures():
                async with self._reader.connect() as connection:
                    rows = (await connection.execute(schema.recent, parameters)).all()
        messages = [
            StoredMessage(
                id=row[0],
                campaign_id=row[1],
                user_id=row[2],
                character_id=row[3] or None,
                recipient_id=row[4] or None,
                message_type=row[5],
                content=row[6],
                # A NULL in an adopted table reads as GM-only: never shown wider than meant.
                gm_only=True if row[7] is None else bool(row[7]),
                created_at=_utc(row[8]),
                roll=row[9],
            )
            for row in rows
        ]
        # Asked at once: on the driver pool they go in one query.
        users = list({m.user_id: None for m in messages})
        names = dict(zip(users, await asyncio.gather(*map(self.username, users)), strict=True))
        return [replace(m, username=names[m.user_id]) for m in messages]

    async def _driver_rows(
        self, driver: DriverPool, schema: _Schema, parameters: Mapping[str, Any]
    ) -> list[Any]:
        """The history's rows read on the pool, with the statement as the engine compiles it."""
        if self._recent_sql is None:
            compiled = schema.recent.compile(dialect=self._engine.dialect)
            self._recent_sql = (str(compiled), tuple(compiled.positiontup or ()))
        sql, order = self._recent_sql
        try:
            return await driver.all_rows(sql, [parameters[name] for name in order])
        except READ_FAILURES as error:
            raise StoreUnavailable(_describe(error)) from error

    async def username(self, user_id: str) -> str | None:
        """The first value VTT_USERNAME_SQL gives, when it is a non-empty string."""
        if self._usernames is None:
            return None
        value = await self._usernames.first_value({"user_id": user_id})
        return value[:200] if isinstance(value, str) and value else None

    async def may_speak_as(self, campaign_id: str, user_id: str, character_id: str) -> bool:
        """Whether VTT_CHARACTER_SQL's first value is true for these ids (False when unset)."""
        if self._characters is None:
            return False
        value = await self._characters.first_value(
            {"campaign_id": campaign_id, "user_id": user_id, "character_id": character_id}
        )
        return bool(value)


class MemoryChatStore:
    """A ChatStore in dicts, for unit tests; set `outage` to make every call fail."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredMessage] = {}
        self.usernames: dict[str, str] = {}
        # (campaign_id, user_id, character_id) that VTT_CHARACTER_SQL would allow
        self.characters: set[tuple[str, str, str]] = set()
        self.outage = False
        self.unusable: str | None = None

    @property
    def unusable_reason(self) -> str | None:
        """The reason set in `unusable`, if any."""
        return self.unusable

    async def check(self) -> None:
        """Raise as SqlChatStore would during an outage or with an unusable table."""
        self._check()

    async def insert(self, message: StoredMessage) -> None:
        """Keep the message, unless one with its id is kept already."""
        self._check()
        if message.id in self.rows:
            raise DuplicateMessage(message.id)
        self.rows[message.id] = message

    async def recent(self, campaign_id: str, limit: int) -> list[StoredMessage]:
        """The campaign's last `limit` messages, oldest first, with usernames."""
        self._check()
        mine = sorted(
            (m for m in self.rows.values() if m.campaign_id == campaign_id),
            key=lambda m: (m.created_at, m.id),
        )
        latest = mine[max(0, len(mine) - limit) :]
        return [replace(m, username=self.usernames.get(m.user_id)) for m in latest]

    async def username(self, user_id: str) -> str | None:
        """The name set in `usernames`."""
        self._check()
        return self.usernames.get(user_id)

    async def may_speak_as(self, campaign_id: str, user_id: str, character_id: str) -> bool:
        """Whether the triple is in `characters`."""
        self._check()
        return (campaign_id, user_id, character_id) in self.characters

    def _check(self) -> None:
        if self.outage:
            raise StoreUnavailable("simulated outage")
        if self.unusable is not None:
            raise ChatUnusable(self.unusable)
