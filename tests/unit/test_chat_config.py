"""Chat settings: the contract's defaults, their environment variables, README rows, bad values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.config import DEFAULT_USERNAME_SQL, ChatLimits, ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

# Each chat limit: the ChatLimits field it sets, and a value other than the default.
CHAT_VARIABLES: dict[str, tuple[str, str, Any]] = {
    "VTT_CHAT_MAX_CONTENT_BYTES": ("max_content_bytes", "4096", 4096),
    "VTT_CHAT_RATE_PER_SECOND": ("rate_per_second", "0.5", 0.5),
    "VTT_CHAT_RATE_BURST": ("rate_burst", "3", 3),
    "VTT_CHAT_HISTORY_MESSAGES": ("history_messages", "50", 50),
    "VTT_CHAT_HISTORY_BYTES": ("history_bytes", "65536", 65536),
    "VTT_CHAT_MEMORY_MESSAGES": ("memory_messages", "200", 200),
    "VTT_CHAT_MEMORY_BYTES": ("memory_bytes", "1048576", 1048576),
}


def test_the_chat_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({})
    assert settings.chat == ChatLimits(
        max_content_bytes=8 * 1024,
        history_messages=100,
        history_bytes=512 * 1024,
        rate_per_second=2.0,
        rate_burst=10,
        memory_messages=1000,
        memory_bytes=2 * 1024 * 1024,
    )
    assert settings.username_sql == DEFAULT_USERNAME_SQL
    assert (settings.character_sql, settings.internal_api_secret) == (None, None)


@pytest.mark.parametrize(
    ("name", "raw", "expected"), [(n, r, e) for n, (_, r, e) in CHAT_VARIABLES.items()]
)
def test_each_chat_limit_is_read_from_its_environment_variable_alone(
    name: str, raw: str, expected: Any
) -> None:
    field = CHAT_VARIABLES[name][0]
    chat = Settings.from_env({name: raw}).chat
    assert getattr(chat, field) == expected
    others = {f for f, _, _ in CHAT_VARIABLES.values()} - {field}
    assert all(getattr(chat, other) == getattr(ChatLimits(), other) for other in others)


@pytest.mark.parametrize("name", sorted(CHAT_VARIABLES))
@pytest.mark.parametrize("raw", ["abc", "-1", "nan"])
def test_a_malformed_chat_limit_is_refused_naming_it(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    "name",
    [*sorted(CHAT_VARIABLES), "INTERNAL_API_SECRET", "VTT_USERNAME_SQL", "VTT_CHARACTER_SQL"],
)
def test_every_chat_setting_has_a_row_in_the_readme(name: str) -> None:
    assert re.search(rf"^\| `{name}` \|", README.read_text("utf-8"), re.MULTILINE), name


@pytest.mark.parametrize("name", sorted(CHAT_VARIABLES))
def test_each_documented_chat_default_is_the_one_used(name: str) -> None:
    documented = re.search(rf"^\| `{name}` \| `([^`]+)`", README.read_text("utf-8"), re.MULTILINE)
    assert documented is not None
    field = CHAT_VARIABLES[name][0]
    assert getattr(Settings.from_env({name: documented[1]}).chat, field) == getattr(
        ChatLimits(), field
    )


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("   ", None), ("SELECT 1", "SELECT 1")])
def test_an_empty_username_query_means_no_usernames(raw: str, expected: str | None) -> None:
    assert Settings.from_env({"VTT_USERNAME_SQL": raw}).username_sql == expected


def test_the_character_query_and_the_internal_secret_are_read_as_given() -> None:
    settings = Settings.from_env(
        {"VTT_CHARACTER_SQL": "SELECT true", "INTERNAL_API_SECRET": "  s3cret  "}
    )
    assert (settings.character_sql, settings.internal_api_secret) == ("SELECT true", "s3cret")
    assert Settings.from_env({"INTERNAL_API_SECRET": " "}).internal_api_secret is None
