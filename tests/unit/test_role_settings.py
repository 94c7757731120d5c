"""The role lookup settings: the membership cache, the statement cache, their README rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
NEON_POOLED = "postgresql://u:p@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/db"
NEON_DIRECT = "postgresql://u:p@ep-cool-darkness-123456.us-east-2.aws.neon.tech/db"


def test_the_defaults_cache_members_for_five_seconds_and_prepare_statements() -> None:
    settings = Settings.from_env({})

    assert settings.role_cache_ttl == 5.0
    assert settings.role_cache_size == 10_000
    assert settings.db_statement_cache is None
    assert settings.statement_cache is True


def test_the_variables_set_them() -> None:
    settings = Settings.from_env(
        {
            "VTT_ROLE_CACHE_TTL": "0",
            "VTT_ROLE_CACHE_SIZE": "50",
            "VTT_DB_STATEMENT_CACHE": "off",
        }
    )

    assert (settings.role_cache_ttl, settings.role_cache_size) == (0.0, 50)
    assert settings.statement_cache is False


@pytest.mark.parametrize(
    ("url", "variable", "expected"),
    [
        (NEON_POOLED, None, False),
        (NEON_POOLED, "true", True),
        (NEON_DIRECT, None, True),
        (NEON_DIRECT, "false", False),
        ("postgresql://postgres@127.0.0.1:5432/app", None, True),
    ],
)
def test_the_statement_cache_is_off_by_default_only_on_a_neon_pooled_endpoint(
    url: str, variable: str | None, expected: bool
) -> None:
    env = {"DATABASE_URL": url}
    if variable is not None:
        env["VTT_DB_STATEMENT_CACHE"] = variable

    assert Settings.from_env(env).statement_cache is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("VTT_ROLE_CACHE_TTL", "-1"),
        ("VTT_ROLE_CACHE_TTL", "soon"),
        ("VTT_ROLE_CACHE_SIZE", "-1"),
        ("VTT_ROLE_CACHE_SIZE", "1.5"),
        ("VTT_DB_STATEMENT_CACHE", "sometimes"),
    ],
)
def test_a_malformed_value_is_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "field"),
    [("VTT_ROLE_CACHE_TTL", "role_cache_ttl"), ("VTT_ROLE_CACHE_SIZE", "role_cache_size")],
)
def test_the_readme_documents_each_cache_variable_with_its_real_default(
    name: str, field: str
) -> None:
    documented = re.search(rf"^\| `{name}` \| `([^`]+)`", README.read_text("utf-8"), re.MULTILINE)
    assert documented is not None, f"README.md's configuration table lacks {name}"

    parsed = getattr(Settings.from_env({name: documented[1]}), field)
    assert parsed == getattr(Settings.from_env({}), field)


def test_the_readme_documents_the_statement_cache_and_neons_pooled_endpoint() -> None:
    row = re.search(r"^\| `VTT_DB_STATEMENT_CACHE` \|.*$", README.read_text("utf-8"), re.MULTILINE)

    assert row is not None, "README.md's configuration table lacks VTT_DB_STATEMENT_CACHE"
    assert "-pooler" in row[0]
    assert "PgBouncer" in row[0]
