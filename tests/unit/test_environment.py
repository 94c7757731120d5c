"""Settings from the environment and `.env`: the file's syntax, booleans, log level, policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, Settings, read_dotenv


def test_a_dotenv_file_gives_its_assignments_and_skips_comments_blanks_and_other_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# a comment\n"
        "\n"
        "PORT=9000\n"
        "export LOG_LEVEL = debug\n"
        'CLERK_ISSUER="https://clerk.example"\n'
        "VTT_ROLE_SQL='SELECT 1'\n"
        'QUOTE="\n'
        "not an assignment\n",
        encoding="utf-8",
    )

    assert read_dotenv(path) == {
        "PORT": "9000",
        "LOG_LEVEL": "debug",
        "CLERK_ISSUER": "https://clerk.example",
        "VTT_ROLE_SQL": "SELECT 1",
        "QUOTE": '"',
    }


def test_a_missing_dotenv_file_gives_nothing(tmp_path: Path) -> None:
    assert read_dotenv(tmp_path / ".env") == {}


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
        ("", True),
    ],
)
def test_a_boolean_variable_reads_the_usual_spellings_and_blank_means_the_default(
    raw: str, value: bool
) -> None:
    assert Settings.from_env({"VTT_AUTO_MIGRATE": raw}).auto_migrate is value


def test_a_boolean_variable_refuses_anything_else_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="VTT_TOKEN_REFRESH_REQUIRED must be a boolean"):
        Settings.from_env({"VTT_TOKEN_REFRESH_REQUIRED": "sometimes"})


def test_the_log_level_is_read_in_any_case_and_an_unknown_one_is_refused() -> None:
    assert Settings.from_env({"LOG_LEVEL": "WARNING"}).log_level == "warning"
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of"):
        Settings.from_env({"LOG_LEVEL": "loud"})


def test_the_token_policy_is_open_or_owner_and_anything_else_is_refused() -> None:
    assert Settings.from_env({}).token_policy == "open"
    assert Settings.from_env({"VTT_TOKEN_POLICY": "Owner"}).token_policy == "owner"
    with pytest.raises(ConfigError, match="VTT_TOKEN_POLICY must be open or owner"):
        Settings.from_env({"VTT_TOKEN_POLICY": "anyone"})
