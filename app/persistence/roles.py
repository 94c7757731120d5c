"""The role query: VTT_ROLE_SQL run with bound parameters (its database errors are translated
in app.persistence.lookups: LookupUnavailable, LookupBroken).

RoleSource              what SqlRoles asks: `first_value(campaign_id, user_id)`
DriverRoleQuery         Postgres: the query on the app's asyncpg pool (DriverLookups)
RoleQuery               SQLite (the embedded default): the query through the SQLAlchemy engine
A value the database cannot compare (SQLSTATE class 22, e.g. a non-UUID id against a UUID
column) means "no such campaign", so it reads as no row.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from app.config import ConfigError
from app.persistence.database import DriverPool
from app.persistence.lookups import (
    DriverLookups,
    LookupBroken,
    LookupUnavailable,
    NotComparable,
    classify,
    positional,
)

ROLE_PARAMETERS = frozenset({"campaign_id", "user_id"})


class RoleSource(Protocol):
    """Where SqlRoles gets the role value from."""

    async def first_value(self, campaign_id: str, user_id: str) -> Any:
        """The first column of the first row; None for no row or ids the database can't compare.

        Raises LookupUnavailable or LookupBroken.
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
            raise LookupUnavailable(type(exc).__name__) from None
        except sa_exc.DBAPIError as exc:
            try:
                raise classify(exc) from None
            except NotComparable:
                return None
        except sa_exc.SQLAlchemyError as exc:
            raise LookupBroken(type(exc).__name__) from None
        return None if row is None else row[0]


class DriverRoleQuery:
    """VTT_ROLE_SQL on the app's asyncpg pool (Postgres), lookups batched (DriverLookups)."""

    def __init__(self, pool: DriverPool, sql: str) -> None:
        checked_role_sql(sql)
        # Names only inside a string literal or a comment are not parameters at all.
        _check_names(frozenset(positional(sql)[1]))
        self.lookups = DriverLookups(pool, sql, "VTT_ROLE_SQL")

    @property
    def batching(self) -> bool:
        """Whether lookups asked together go in one query (see DriverLookups)."""
        return self.lookups.batching

    async def first_value(self, campaign_id: str, user_id: str) -> Any:
        """The first column of the first row; None for no row or ids the database can't compare."""
        return await self.lookups.first_value({"campaign_id": campaign_id, "user_id": user_id})
