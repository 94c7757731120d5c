"""The role query: VTT_ROLE_SQL run with bound parameters, its database errors translated here.

RoleSource              what SqlRoles asks: `first_value(campaign_id, user_id)`
DriverRoleQuery         Postgres: the query on the app's asyncpg pool, one round trip a lookup
RoleQuery               SQLite (the embedded default): the query through the SQLAlchemy engine
RoleQueryUnavailable    the database cannot answer now (connection, resources, timeouts)
RoleQueryBroken         the query itself fails; neither a client nor a retry can fix it
A value the database cannot compare (SQLSTATE class 22, e.g. a non-UUID id against a UUID
column) means "no such campaign", so it reads as no row.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from app.config import ConfigError
from app.persistence.database import ConnectionGone, DriverPool, NoResultColumns

ROLE_PARAMETERS = frozenset({"campaign_id", "user_id"})
# SQLSTATE classes: 22 is a data exception (the id cannot even be compared: not a member);
# these mean the database cannot answer right now (connection, rollback, resources,
# object state, operator intervention, system error).
_DATA_EXCEPTION = "22"
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
# A named statement missing on the server connection, or there twice: a transaction pooler.
_POOLER_STATES = frozenset({"26000", "42P05"})


class RoleQueryUnavailable(Exception):
    """The database did not answer the role query; `cause` names why, without any data."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class RoleQueryBroken(Exception):
    """The role query failed in a way only the deployment can fix; `cause` names why."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _NotComparable(Exception):
    """The database could not compare the given ids: no such campaign."""


class RoleSource(Protocol):
    """Where SqlRoles gets the role value from."""

    async def first_value(self, campaign_id: str, user_id: str) -> Any:
        """The first column of the first row; None for no row or ids the database can't compare.

        Raises RoleQueryUnavailable or RoleQueryBroken.
        """
        ...


def checked_role_sql(sql: str) -> TextClause:
    """VTT_ROLE_SQL as a statement, or ConfigError unless it binds :campaign_id and :user_id."""
    statement = text(sql)
    _check_names(frozenset(statement.compile().params))
    return statement


def _check_names(names: frozenset[str]) -> None:
    if names != ROLE_PARAMETERS:
        raise ConfigError(
            "VTT_ROLE_SQL must use exactly the parameters :campaign_id and :user_id "
            f"(found {', '.join(sorted(names)) or 'none'}; write CAST(:campaign_id AS uuid), "
            "not :campaign_id::uuid)"
        )


class RoleQuery:
    """VTT_ROLE_SQL through the SQLAlchemy engine (SQLite), run in autocommit."""

    def __init__(self, engine: AsyncEngine, sql: str) -> None:
        statement = checked_role_sql(sql)
        # One SELECT needs no transaction: autocommit saves the BEGIN and ROLLBACK round trips.
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statement = statement

    async def first_value(self, campaign_id: str, user_id: str) -> Any:
        """The first column of the first row; None for no row or ids the database can't compare."""
        try:
            async with self.engine.connect() as connection:
                result = await connection.execute(
                    self.statement, {"campaign_id": campaign_id, "user_id": user_id}
                )
                row = result.first()
        except (OSError, TimeoutError, sa_exc.TimeoutError) as exc:
            raise RoleQueryUnavailable(type(exc).__name__) from None
        except sa_exc.DBAPIError as exc:
            try:
                raise _classify(exc) from None
            except _NotComparable:
                return None
        except sa_exc.SQLAlchemyError as exc:
            raise RoleQueryBroken(type(exc).__name__) from None
        return None if row is None else row[0]


class DriverRoleQuery:
    """VTT_ROLE_SQL on the app's asyncpg pool (Postgres): no SQLAlchemy layers in between.

    The SQL's `:campaign_id` and `:user_id` become `$1`/`$2` once, here; the errors are
    classified by SQLSTATE as the engine's are. In autocommit, as through the engine: no
    transaction is begun.
    """

    def __init__(self, pool: DriverPool, sql: str) -> None:
        checked_role_sql(sql)
        self.sql, self.order = positional(sql)
        # Names only inside a string literal or a comment are not parameters at all.
        _check_names(frozenset(self.order))
        self.pool = pool
        pool.prepare_when_warming(self.sql, len(self.order))

    async def first_value(self, campaign_id: str, user_id: str) -> Any:
        """The first column of the first row; None for no row or ids the database can't compare."""
        values = {"campaign_id": campaign_id, "user_id": user_id}
        try:
            row = await self.pool.first_row(self.sql, [values[name] for name in self.order])
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            # InterfaceError: the connection closed under the query, the pool is closing.
            raise RoleQueryUnavailable(type(exc).__name__) from None
        except ConnectionGone as gone:
            raise RoleQueryUnavailable(gone.cause) from None
        except asyncpg.PostgresError as exc:
            failure = _by_sqlstate(getattr(exc, "sqlstate", None))
            if isinstance(failure, _NotComparable):
                return None
            raise (failure or RoleQueryBroken(type(exc).__name__)) from None
        except NoResultColumns:
            raise RoleQueryBroken("the query returns no columns") from None
        return None if row is None else row[0]


def _by_sqlstate(sqlstate: object) -> Exception | None:
    """What a SQLSTATE means for a role lookup (None: no usable SQLSTATE)."""
    if not isinstance(sqlstate, str) or len(sqlstate) != 5:
        return None
    if sqlstate.startswith(_DATA_EXCEPTION):
        return _NotComparable()
    if sqlstate[:2] in _UNAVAILABLE_CLASSES:
        return RoleQueryUnavailable(f"SQLSTATE {sqlstate}")
    if sqlstate in _POOLER_STATES:
        return RoleQueryBroken(
            f"SQLSTATE {sqlstate} (behind a transaction pooler? set VTT_DB_STATEMENT_CACHE=false)"
        )
    return RoleQueryBroken(f"SQLSTATE {sqlstate}")


def _classify(exc: sa_exc.DBAPIError) -> Exception:
    """Which failure a database error means: no such campaign, try later, or a broken query."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    failure = _by_sqlstate(sqlstate)
    if failure is not None:
        return failure
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return RoleQueryUnavailable(type(exc).__name__)
    if isinstance(exc, sa_exc.DataError):
        return _NotComparable()
    return RoleQueryBroken(type(exc).__name__)


# --- :name to $n ------------------------------------------------------------------------------

# SQLAlchemy's own rule for a bind parameter in text(): `:name`, not after a colon, a word
# character or a backslash, and not followed by a colon (so `x::uuid` is a cast).
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
# text()'s escape: `\:name` is the literal `:name`.
_ESCAPED = re.compile(r"\\(:\w*)(?![:\w])")
# What parameters never appear in: string literals ('', E'' with backslash escapes), quoted
# identifiers, dollar-quoted strings and comments. Nested /* */ comments are taken as
# ending at the first */, which only matters for a parameter inside such a comment.
_QUOTED = re.compile(
    r"""(?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'?"""
    r"""|'(?:[^']|'')*'?"""
    r"""|"(?:[^"]|"")*"?"""
    r"""|(?<![\w$])(\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$)[\s\S]*?(?:\1|\Z)"""
    r"""|--[^\n]*"""
    r"""|/\*[\s\S]*?(?:\*/|\Z)""",
)


def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with each `:name` as `$n` (a name keeps its number), and the names in $ order.

    The names are found as SQLAlchemy's text() finds them, but never inside a string
    literal, a quoted identifier, a dollar-quoted string or a comment; `\\:` is a literal
    colon, as in text().
    """
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    def plain(part: str) -> str:
        return _ESCAPED.sub(r"\1", _BIND.sub(number, part))

    pieces: list[str] = []
    at = 0
    for quoted in _QUOTED.finditer(sql):
        pieces += [plain(sql[at : quoted.start()]), _ESCAPED.sub(r"\1", quoted.group(0))]
        at = quoted.end()
    pieces.append(plain(sql[at:]))
    return "".join(pieces), tuple(order)
