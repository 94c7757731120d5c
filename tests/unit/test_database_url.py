"""DATABASE_URL as the server reads it: the driver it picks, Neon's parameters, refusals."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from app.persistence.database import async_url


def test_no_database_url_means_the_sqlite_file() -> None:
    assert async_url(None).render_as_string() == "sqlite+aiosqlite:///vtt.db"
    assert async_url("", "/data/x.db").render_as_string() == "sqlite+aiosqlite:////data/x.db"


def test_a_sqlite_url_gets_the_aiosqlite_driver() -> None:
    assert async_url("sqlite:///tmp/a.db").drivername == "sqlite+aiosqlite"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_postgres_schemes_get_the_asyncpg_driver_with_credentials_intact(scheme: str) -> None:
    url = async_url(f"{scheme}://alice:p%40ss%3Aw0rd@db.example:6543/neondb")
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "alice",
        "p@ss:w0rd",
        "db.example",
        6543,
        "neondb",
    )
    assert dict(url.query) == {}


def test_a_neon_url_has_sslmode_translated_and_channel_binding_dropped() -> None:
    url = async_url(
        "postgresql://u:pw@ep-cool-1234-pooler.eu-central-1.aws.neon.tech/neondb"
        "?sslmode=require&channel_binding=require"
    )
    assert url.drivername == "postgresql+asyncpg"
    assert dict(url.query) == {"ssl": "require"}


@pytest.mark.parametrize(
    "sslmode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_every_libpq_sslmode_becomes_the_same_asyncpg_ssl_mode(sslmode: str) -> None:
    assert dict(async_url(f"postgres://h/db?sslmode={sslmode}").query) == {"ssl": sslmode}


def test_libpq_only_parameters_are_dropped_and_asyncpg_ones_kept() -> None:
    url = async_url(
        "postgres://h/db?application_name=x&options=endpoint%3Dep-1&connect_timeout=10"
        "&target_session_attrs=read-write&sslrootcert=system"
    )
    assert dict(url.query) == {"target_session_attrs": "read-write"}


def test_an_explicit_asyncpg_url_is_used_as_given() -> None:
    given = "postgresql+asyncpg://h/db?ssl=require&prepared_statement_cache_size=0"
    assert async_url(given) == make_url(given)


@pytest.mark.parametrize(
    "bad", ["mysql://h/db", "postgresql+psycopg://h/db", "postgres://h/db?sslmode=sometimes"]
)
def test_an_unsupported_url_is_refused_at_once(bad: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        async_url(bad)
