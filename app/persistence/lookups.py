"""A configured lookup query (VTT_ROLE_SQL, VTT_USERNAME_SQL, ...) run with bound parameters,
its database errors translated here.

DriverLookups           Postgres: the query on the app's asyncpg pool, the lookups asked
                        meanwhile together in one round trip
LookupUnavailable       the database cannot answer now (connection, resources, timeouts)
LookupBroken            the query itself fails; neither a client nor a retry can fix it
NotComparable           a value the database cannot compare (SQLSTATE class 22, e.g. a
                        non-UUID id against a UUID column): no such row
classify, by_sqlstate   which of these a database error means (through the engine, or asyncpg)
positional              the SQL's `:name` parameters as `$1`, `$2`, ...
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc

from app.persistence.database import ConnectionGone, DriverPool, NoResultColumns

log = logging.getLogger("vtt.database")

# Queries under way at once; lookups asked meanwhile wait, then go together in one.
IN_FLIGHT = 2
# The most lookups one query answers.
BATCH_LIMIT = 256
# The names the batched form gives its lookups' values and their rows: none a query would use.
_KEYS = "vtt_lookup_keys"
_ORDINAL = "vtt_lookup_n"
_ROWS = "vtt_lookup_rows"
# SQLSTATE classes, for every query of the app's (chat reads too): 22 is a data exception (the
# id cannot even be compared: no such row); these mean the database cannot answer now
# (connection, rollback, resources, object state, operator intervention, system error).
DATA_EXCEPTION = "22"
UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
# A named statement missing on the server connection, or there twice: a transaction pooler.
_POOLER_STATES = frozenset({"26000", "42P05"})


class LookupUnavailable(Exception):
    """The database did not answer the lookup; `cause` names why, without any data."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class LookupBroken(Exception):
    """The lookup query failed in a way only the deployment can fix; `cause` names why."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class NotComparable(Exception):
    """The database could not compare the given values: no such row."""


class DriverLookups:
    """A configured lookup query (VTT_ROLE_SQL, VTT_USERNAME_SQL, ...) on the app's asyncpg
    pool (Postgres): no SQLAlchemy layers in between.

    The SQL's `:name` parameters become `$1`, `$2`, ... once, here; the errors are classified
    by SQLSTATE as the engine's are. In autocommit, as through the engine: no transaction is
    begun.

    Lookups go out at the end of the event loop's turn that asked for them, IN_FLIGHT queries
    at most at a time; those asked while they are under way go together, up to BATCH_LIMIT in
    one query: the SQL joined laterally to the parameters' values, passed as one array per
    parameter of the type Postgres infers for it, first row per lookup. A join storm then
    costs a round trip per batch, not per connection. A batch that fails for anything but an
    outage is answered one lookup at a time, each as if alone (an id Postgres cannot compare
    spoils only a batch); one whose batched form fails where the lookups alone succeed means
    that form does not suit this SQL, and lookups go one at a time from then on.
    """

    def __init__(self, pool: DriverPool, sql: str, setting: str) -> None:
        self.sql, self.order = positional(sql)
        self.setting = setting
        self.pool = pool
        pool.prepare_when_warming(self.sql, len(self.order))
        self.batching = True
        # The SQL with its names as columns of the lookups' values; the whole query once the
        # parameters' types are known.
        self._lateral = _named(sql, lambda name: f"{_KEYS}.{name}").rstrip().rstrip(";")
        self._batch_sql: str | None = None
        self._waiting: list[_Lookup] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def first_value(self, parameters: Mapping[str, str]) -> Any:
        """The first column of the first row for these parameters (one value per name); None
        for no row or values the database can't compare.

        Raises LookupUnavailable (an outage) or LookupBroken (the query fails).
        """
        loop = asyncio.get_running_loop()
        values = tuple(parameters[name] for name in self.order)
        lookup = _Lookup(values, loop.create_future())
        self._waiting.append(lookup)
        if not self._scheduled and self._in_flight < IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await lookup.answer

    def _dispatch(self) -> None:
        """Send what waits: one query per lookup alone, or per batch, IN_FLIGHT at most."""
        self._scheduled = False
        waiting = self._waiting
        while waiting and self._in_flight < IN_FLIGHT:
            # A lookup whose caller gave up is not asked.
            batch = [lookup for lookup in waiting[:BATCH_LIMIT] if not lookup.answer.done()]
            del waiting[:BATCH_LIMIT]
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._answer(batch))
            self._tasks.add(task)
            task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    async def _answer(self, batch: list[_Lookup]) -> None:
        try:
            outcome = _SINGLY
            if len(batch) > 1 and self.batching:
                outcome = await self._together(batch)
            if outcome is _ANSWERED:
                return
            broken = await asyncio.gather(*(self._alone(lookup) for lookup in batch))
            if outcome is _SUSPECT and not any(broken):
                self.batching = False
                log.warning(
                    "%s lookups go one at a time: it fails in its batched form, alone it works",
                    self.setting,
                )
        finally:
            for lookup in batch:
                # Cancelled (the server stops): the callers hear of an outage, not nothing.
                lookup.settle(error=LookupUnavailable("lookup abandoned"))

    async def _alone(self, lookup: _Lookup) -> bool:
        """Answer one lookup with a query of its own; whether the query itself is broken."""
        try:
            value = await self._one(lookup.values)
        except LookupBroken as failure:
            lookup.settle(error=failure)
            return True
        except LookupUnavailable as failure:
            lookup.settle(error=failure)
            return False
        lookup.settle(value)
        return False

    async def _one(self, values: tuple[str, ...]) -> Any:
        try:
            row = await self.pool.first_row(self.sql, values)
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            # InterfaceError: the connection closed under the query, the pool is closing.
            raise LookupUnavailable(type(exc).__name__) from None
        except ConnectionGone as gone:
            raise LookupUnavailable(gone.cause) from None
        except asyncpg.PostgresError as exc:
            failure = by_sqlstate(getattr(exc, "sqlstate", None))
            if isinstance(failure, NotComparable):
                return None
            raise (failure or LookupBroken(type(exc).__name__)) from None
        except NoResultColumns:
            raise LookupBroken("the query returns no columns") from None
        return None if row is None else row[0]

    async def _together(self, batch: list[_Lookup]) -> object:
        """Answer `batch` with one query: _ANSWERED, or _SINGLY/_SUSPECT to answer it singly
        (_SUSPECT: the batched form itself may be what failed)."""
        columns = [[lookup.values[n] for lookup in batch] for n in range(len(self.order))]
        try:
            if self._batch_sql is None:
                self._batch_sql = await self._batched_form()
            if self._batch_sql is None:
                return _SUSPECT
            rows = await self.pool.all_rows(self._batch_sql, columns)
        except (OSError, TimeoutError, asyncpg.InterfaceError, ConnectionGone) as exc:
            cause = exc.cause if isinstance(exc, ConnectionGone) else type(exc).__name__
            for lookup in batch:
                lookup.settle(error=LookupUnavailable(cause))
            return _ANSWERED
        except asyncpg.PostgresError as exc:
            sqlstate = getattr(exc, "sqlstate", None)
            failure = by_sqlstate(sqlstate)
            if isinstance(failure, LookupUnavailable):
                for lookup in batch:
                    lookup.settle(error=LookupUnavailable(failure.cause))
                return _ANSWERED
            # Class 22: an id the parameters' type cannot hold (a non-UUID for a UUID), which
            # asyncpg refuses before sending, or Postgres does.
            return _SINGLY if isinstance(failure, NotComparable) else _SUSPECT
        values: list[Any] = [None] * len(batch)
        for row in rows:
            if len(row) < 2:
                # The query returns no columns: alone, each lookup says so.
                return _SUSPECT
            values[row[0] - 1] = row[1]
        for lookup, value in zip(batch, values, strict=True):
            lookup.settle(value)
        return _ANSWERED

    async def _batched_form(self) -> str | None:
        """The batched query, for the parameter types Postgres infers; None if it has none."""
        kinds = await self.pool.parameter_types(self.sql)
        if len(kinds) != len(self.order) or any(kind != "scalar" for _, _, kind in kinds):
            return None
        arrays = ", ".join(
            f"${n}::{_quoted(schema)}.{_quoted(name)}[]"
            for n, (schema, name, _) in enumerate(kinds, 1)
        )
        keys = f"{_KEYS}({', '.join(self.order)}, {_ORDINAL})"
        # The SQL on lines of its own: a trailing `--` comment ends on its line.
        first_row = f"SELECT * FROM (\n{self._lateral}\n) AS {_ROWS} LIMIT 1"
        return (
            f"SELECT {_KEYS}.{_ORDINAL}, {_ROWS}.* FROM unnest({arrays}) WITH ORDINALITY AS "
            f"{keys} CROSS JOIN LATERAL ({first_row}) AS {_ROWS}"
        )


# How a batch went (DriverLookups._together).
_ANSWERED = object()
_SINGLY = object()
_SUSPECT = object()


class _Lookup:
    """One caller's lookup: its values in $ order, and the future its answer (or failure)
    goes to."""

    __slots__ = ("answer", "values")

    def __init__(self, values: tuple[str, ...], answer: asyncio.Future[Any]) -> None:
        self.values = values
        self.answer = answer

    def settle(self, value: Any = None, *, error: Exception | None = None) -> None:
        """Answer the caller, unless it gave up or was answered already."""
        if self.answer.done():
            return
        if error is None:
            self.answer.set_result(value)
        else:
            self.answer.set_exception(error)


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def by_sqlstate(sqlstate: object) -> Exception | None:
    """What a SQLSTATE means for a lookup (None: no usable SQLSTATE)."""
    if not isinstance(sqlstate, str) or len(sqlstate) != 5:
        return None
    if sqlstate.startswith(DATA_EXCEPTION):
        return NotComparable()
    if sqlstate[:2] in UNAVAILABLE_CLASSES:
        return LookupUnavailable(f"SQLSTATE {sqlstate}")
    if sqlstate in _POOLER_STATES:
        return LookupBroken(
            f"SQLSTATE {sqlstate} (behind a transaction pooler? set VTT_DB_STATEMENT_CACHE=false)"
        )
    return LookupBroken(f"SQLSTATE {sqlstate}")


def classify(exc: sa_exc.DBAPIError) -> Exception:
    """Which failure a database error (through the engine) means: no such row, try later, or a
    broken query."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    failure = by_sqlstate(sqlstate)
    if failure is not None:
        return failure
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return LookupUnavailable(type(exc).__name__)
    if isinstance(exc, sa_exc.DataError):
        return NotComparable()
    return LookupBroken(type(exc).__name__)


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

    def number(name: str) -> str:
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _named(sql, number), tuple(order)


def _named(sql: str, replace: Callable[[str], str]) -> str:
    """`sql` with each `:name` as `replace(name)`, found as `positional` finds them."""

    def plain(part: str) -> str:
        return _ESCAPED.sub(r"\1", _BIND.sub(lambda match: replace(match.group(1)), part))

    pieces: list[str] = []
    at = 0
    for quoted in _QUOTED.finditer(sql):
        pieces += [plain(sql[at : quoted.start()]), _ESCAPED.sub(r"\1", quoted.group(0))]
        at = quoted.end()
    pieces.append(plain(sql[at:]))
    return "".join(pieces)
