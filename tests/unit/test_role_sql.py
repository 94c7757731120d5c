"""VTT_ROLE_SQL's `:name` parameters as `$n`: found as text() finds them, never in strings.

The driver path runs the translated SQL directly on asyncpg; the engine path (SQLite) keeps
SQLAlchemy's text(). Outside literals and comments, both must mean the same SQL.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

from app.config import DEFAULT_ROLE_SQL
from app.persistence.lookups import positional


def test_the_default_query_numbers_its_parameters_in_order_of_appearance() -> None:
    sql, order = positional(DEFAULT_ROLE_SQL)

    assert order == ("user_id", "campaign_id")
    assert sql == (
        "SELECT CASE WHEN gm_id = $1 THEN 'gm' ELSE 'player' END AS role "
        "FROM campaigns WHERE id = $2"
    )


def test_a_repeated_name_keeps_its_number() -> None:
    assert positional("SELECT :user_id, :campaign_id, :user_id") == (
        "SELECT $1, $2, $1",
        ("user_id", "campaign_id"),
    )


@pytest.mark.parametrize(
    "sql",
    [
        DEFAULT_ROLE_SQL,
        "SELECT role FROM m WHERE c = CAST(:campaign_id AS uuid) AND u = :user_id",
        "SELECT r FROM m WHERE c::text = :campaign_id AND (u = :user_id OR :user_id IS NULL)",
        "SELECT a[1:2] FROM m WHERE c=:campaign_id AND u=:user_id",
        "SELECT 1 WHERE x = :campaign_id::uuid AND y = :user_id",
        r"SELECT 1 WHERE x = \:campaign_id AND y = :user_id",
        "SELECT r FROM m WHERE c = :campaign_id\nAND u = :user_id;",
    ],
)
def test_without_literals_or_comments_it_is_what_sqlalchemy_sends_to_asyncpg(sql: str) -> None:
    compiled = text(sql).compile(dialect=asyncpg_dialect.dialect())  # type: ignore[no-untyped-call]

    assert positional(sql) == (compiled.string, tuple(compiled.positiontup or ()))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT ':user_id' WHERE c = :campaign_id", "SELECT ':user_id' WHERE c = $1"),
        ("SELECT 'it''s :user_id' || :campaign_id", "SELECT 'it''s :user_id' || $1"),
        (r"SELECT E'it\'s :user_id', :campaign_id", r"SELECT E'it\'s :user_id', $1"),
        (
            'SELECT "odd:user_id" FROM t WHERE c = :campaign_id',
            'SELECT "odd:user_id" FROM t WHERE c = $1',
        ),
        ("SELECT $$ :user_id $$, :campaign_id", "SELECT $$ :user_id $$, $1"),
        ("SELECT $q$ it's :user_id $q$, :campaign_id", "SELECT $q$ it's :user_id $q$, $1"),
        ("SELECT :campaign_id -- or :user_id\n", "SELECT $1 -- or :user_id\n"),
        ("SELECT /* :user_id */ :campaign_id", "SELECT /* :user_id */ $1"),
        ("SELECT :campaign_id, ':user_id", "SELECT $1, ':user_id"),
    ],
)
def test_names_inside_literals_identifiers_and_comments_are_left_alone(
    sql: str, expected: str
) -> None:
    assert positional(sql) == (expected, ("campaign_id",))


def test_an_escaped_colon_is_a_literal_colon_even_in_a_string_as_text_has_it() -> None:
    assert positional(r"SELECT '\:x' WHERE c = :campaign_id") == (
        "SELECT ':x' WHERE c = $1",
        ("campaign_id",),
    )
