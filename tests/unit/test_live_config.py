"""Presence, drag lock and signal settings: defaults, environment variables, README rows."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

# Each variable: the Settings field it sets, and a value other than the default.
LIVE_VARIABLES: dict[str, tuple[str, str, Any]] = {
    "VTT_PRESENCE_GRACE": ("presence_grace", "2.5", 2.5),
    "VTT_LOCK_IDLE_TIMEOUT": ("lock_idle_timeout", "8", 8.0),
    "VTT_CURSOR_RATE_PER_SECOND": ("cursor_rate", "30", 30.0),
    "VTT_POINTER_PING_RATE_PER_SECOND": ("pointer_ping_rate", "0.5", 0.5),
    "VTT_POINTER_PING_BURST": ("pointer_ping_burst", "3", 3),
}


def test_the_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({})

    assert settings.presence_grace == 10
    assert settings.lock_idle_timeout == 5
    assert settings.cursor_rate == 20
    assert (settings.pointer_ping_rate, settings.pointer_ping_burst) == (2, 5)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [(n, r, e) for n, (_, r, e) in LIVE_VARIABLES.items()] + [("VTT_PRESENCE_GRACE", "0", 0.0)],
)
def test_each_setting_is_read_from_its_environment_variable_alone(
    name: str, raw: str, expected: Any
) -> None:
    field = LIVE_VARIABLES[name][0]

    settings = Settings.from_env({name: raw})

    assert settings == dataclasses.replace(Settings.from_env({}), **{field: expected})


@pytest.mark.parametrize("name", sorted(LIVE_VARIABLES))
@pytest.mark.parametrize("raw", ["abc", "-1", "inf"])
def test_a_nonsensical_value_is_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    "name", ["VTT_LOCK_IDLE_TIMEOUT", "VTT_CURSOR_RATE_PER_SECOND", "VTT_POINTER_PING_BURST"]
)
def test_zero_is_refused_where_it_means_nothing(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "0"})


@pytest.mark.parametrize("name", sorted(LIVE_VARIABLES))
def test_the_readme_documents_each_variable_with_its_real_default(name: str) -> None:
    documented = re.search(rf"^\| `{name}` \| `([^`]+)`", README.read_text("utf-8"), re.MULTILINE)
    assert documented is not None, f"README.md's configuration table lacks {name}"

    field = LIVE_VARIABLES[name][0]
    assert getattr(Settings.from_env({name: documented[1]}), field) == getattr(Settings(), field)
