"""The role query: VTT_ROLE_SQL run with bound parameters, its database errors translated here.

RoleQuery.first_value   the first column of the first row, or None when there is no row
RoleQueryUnavailable    the database cannot answer now (connection, resources, timeouts)
RoleQueryBroken         the query itself fails; neither a client nor a retry can fix it
A value the database cannot compare (SQLSTATE class 22, e.g. a non-UUID id against a UUID
column) means "no such campaign", so it reads as no row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import ConfigError

ROLE_PARAMETERS = frozenset({"campaign_id", "user_id"})
# SQLSTATE classes: 22 is a data exception (the id cannot even be compared: not a member);
# these mean the database cannot answer right now (connection, rollback, resources,
# object state, operator intervention, system error).
_DATA_EXCEPTION = "22"
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})


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


class RoleQuery:
    """VTT_ROLE_SQL, checked to bind exactly :campaign_id and :user_id, run in autocommit."""

    def __init__(self, engine: AsyncEngine, sql: str) -> None:
        statement = text(sql)
        names = frozenset(statement.compile().params)
        if names != ROLE_PARAMETERS:
            raise ConfigError(
                "VTT_ROLE_SQL must use exactly the parameters :campaign_id and :user_id "
                f"(found {', '.join(sorted(names)) or 'none'}; write CAST(:campaign_id AS uuid), "
                "not :campaign_id::uuid)"
            )
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


def _classify(exc: sa_exc.DBAPIError) -> Exception:
    """Which failure a database error means: no such campaign, try later, or a broken query."""
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate.startswith(_DATA_EXCEPTION):
            return _NotComparable()
        if sqlstate[:2] in _UNAVAILABLE_CLASSES:
            return RoleQueryUnavailable(f"SQLSTATE {sqlstate}")
        return RoleQueryBroken(f"SQLSTATE {sqlstate}")
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return RoleQueryUnavailable(type(exc).__name__)
    if isinstance(exc, sa_exc.DataError):
        return _NotComparable()
    return RoleQueryBroken(type(exc).__name__)
