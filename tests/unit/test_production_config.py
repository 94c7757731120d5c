"""Production settings: what production mode requires before it starts, and what it derives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import ConfigError, Settings


def test_production_refuses_to_leave_token_issuers_unchecked() -> None:
    environ = {
        "VTT_ENV": "production",
        "CLERK_JWKS_URL": "https://keys.example/jwks",
        "DATABASE_URL": "postgresql://u@db.example/app",
    }
    with pytest.raises(ConfigError, match="CLERK_ISSUER"):
        Settings.from_env(environ)
    assert Settings.from_env({**environ, "CLERK_ISSUER": "https://keys.example"}).production


JWKS_URL = "https://clerk.example.com/.well-known/jwks.json"


PG_URL = "postgresql://u@db.example/app"


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"VTT_ENV": "production"}, "CLERK_JWKS_URL and DATABASE_URL"),
        ({"VTT_ENV": "production", "DATABASE_URL": PG_URL}, "CLERK_JWKS_URL"),
        ({"VTT_ENV": "production", "CLERK_JWKS_URL": JWKS_URL}, "DATABASE_URL"),
        ({"FLY_APP_NAME": "vtt"}, "CLERK_JWKS_URL and DATABASE_URL"),
        (
            {"FLY_APP_NAME": "vtt", "VTT_ENV": "development", "DATABASE_URL": PG_URL},
            "CLERK_JWKS_URL",
        ),
    ],
)
def test_production_mode_refuses_to_start_naming_what_is_missing(
    env: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    assert f"requires {missing}:" in str(caught.value)


def test_production_with_both_set_runs_clerk_auth_never_dev_auth() -> None:
    settings = Settings.from_env(
        {"FLY_APP_NAME": "vtt", "CLERK_JWKS_URL": JWKS_URL, "DATABASE_URL": PG_URL}
    )

    assert settings.production
    assert not settings.dev_auth
    assert settings.clerk_issuer == "https://clerk.example.com"


def test_clerk_issuer_overrides_the_derived_one_and_is_none_for_another_url() -> None:
    explicit = Settings.from_env(
        {"CLERK_JWKS_URL": JWKS_URL, "CLERK_ISSUER": "https://clerk.app.example"}
    )
    underived = Settings.from_env({"CLERK_JWKS_URL": "https://keys.example/jwks"})

    assert explicit.clerk_issuer == "https://clerk.app.example"
    assert underived.clerk_issuer is None


def test_production_refuses_an_embedded_database_given_as_a_url(tmp_path: Path) -> None:
    environ = {"VTT_ENV": "production", "CLERK_JWKS_URL": JWKS_URL}

    with pytest.raises(ConfigError, match="requires a PostgreSQL DATABASE_URL"):
        Settings.from_env({**environ, "DATABASE_URL": "sqlite:///" + str(tmp_path / "vtt.db")})
    assert Settings.from_env({**environ, "DATABASE_URL": "postgres://u@db.example/app"}).production


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("CLERK_AUTHORIZED_PARTIES", ",", "names nothing"),
        ("CLERK_AUTHORIZED_PARTIES", " , ,", "names nothing"),
        ("CLERK_AUTHORIZED_PARTIES", "*", "takes no wildcard"),
        ("VTT_ALLOWED_ORIGINS", "*", "takes no wildcard"),
        ("VTT_ALLOWED_ORIGINS", "https://app.example, *", "takes no wildcard"),
        ("VTT_IMAGE_URL_PREFIXES", ",", "names nothing"),
        ("VTT_JWT_LEEWAY", "100000", "at most 300 s"),
        ("CLERK_JWKS_URL", "ftp://keys.example/.well-known/jwks.json", "http(s) URL"),
    ],
)
def test_a_value_that_would_turn_an_auth_check_off_or_refuse_everyone_is_refused(
    name: str, raw: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        Settings.from_env({name: raw})

    assert name in str(caught.value)


def test_lists_and_leeway_within_bounds_are_read() -> None:
    settings = Settings.from_env(
        {
            "CLERK_AUTHORIZED_PARTIES": "https://a.example, https://b.example",
            "VTT_ALLOWED_ORIGINS": " https://a.example ",
            "VTT_JWT_LEEWAY": "300",
            "CLERK_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json",
        }
    )

    assert settings.clerk_authorized_parties == ("https://a.example", "https://b.example")
    assert settings.allowed_origins == ("https://a.example",)
    assert settings.jwt_leeway == 300
    assert Settings.from_env({"VTT_ALLOWED_ORIGINS": " "}).allowed_origins == ()
