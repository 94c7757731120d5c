"""Flow-control and handshake settings: defaults, environment variables, bad values."""

from __future__ import annotations

import dataclasses
import re
import resource
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

# Each flow-control variable: the Settings field it sets, and a value other than the default.
FLOW_VARIABLES: dict[str, tuple[str, str, Any]] = {
    "VTT_RATE_PER_SECOND": ("rate_per_second", "30.5", 30.5),
    "VTT_RATE_BURST": ("rate_burst", "240", 240),
    "VTT_FLOOD_CLOSE_SECONDS": ("flood_close_seconds", "2.5", 2.5),
    "VTT_OUTBOX_MAX_MESSAGES": ("outbox_max_messages", "64", 64),
    "VTT_OUTBOX_MAX_BYTES": ("outbox_max_bytes", "65536", 65536),
    "VTT_MAX_CONNECTIONS_PER_USER": ("max_connections_per_user", "3", 3),
    "VTT_MAX_CONNECTIONS_PER_CAMPAIGN": ("max_connections_per_campaign", "250", 250),
    "VTT_PING_INTERVAL": ("ping_interval", "15", 15.0),
    "VTT_PING_TIMEOUT": ("ping_timeout", "7.5", 7.5),
    "VTT_RESUME_BUFFER": ("resume_buffer", "50", 50),
    "VTT_RESUME_BUFFER_BYTES": ("resume_buffer_bytes", "65536", 65536),
    "VTT_HANDSHAKE_TIMEOUT": ("handshake_timeout", "2.5", 2.5),
}

INTEGERS = {name for name, (_, _, value) in FLOW_VARIABLES.items() if isinstance(value, int)}
# Zero turns resume off (every reconnect gets a full state.sync); for the rest it means nothing:
# no rate, no burst, an instant flood close, no queue, no connections, no keepalive.
ZERO_IS_MEANINGFUL = {"VTT_RESUME_BUFFER", "VTT_RESUME_BUFFER_BYTES"}

BAD_VALUES = sorted(
    {(name, raw) for name in FLOW_VARIABLES for raw in ("abc", "1,000", "-1")}
    | {(name, "0") for name in FLOW_VARIABLES.keys() - ZERO_IS_MEANINGFUL}
    | {(name, "1.5") for name in INTEGERS}
    | {(name, raw) for name in FLOW_VARIABLES.keys() - INTEGERS for raw in ("nan", "inf")}
)


def test_an_empty_environment_gives_the_issues_flow_control_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.rate_per_second == 60
    assert settings.rate_burst == 120
    assert settings.flood_close_seconds == 10
    assert settings.max_connections_per_user == 8
    assert settings.max_connections_per_campaign == 100
    assert settings.resume_buffer == 1000
    assert settings.resume_buffer_bytes == 1024 * 1024
    assert settings.ping_interval + settings.ping_timeout <= 60, "a dead peer goes within 60 s"
    assert settings.handshake_timeout == 10


def test_the_handshake_bound_defaults_to_a_quarter_of_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)

    assert Settings.from_env({}).max_handshakes == soft // 4
    assert Settings.from_env({"VTT_MAX_HANDSHAKES": "64"}).max_handshakes == 64
    with pytest.raises(ConfigError, match="VTT_MAX_HANDSHAKES"):
        Settings.from_env({"VTT_MAX_HANDSHAKES": "0"})


def test_an_empty_environment_gives_the_same_settings_as_the_dataclass_defaults() -> None:
    # Tests and the benchmark build Settings() directly; the server parses its environment.
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("name", FLOW_VARIABLES)
def test_the_readme_documents_each_flow_control_variable_with_its_real_default(name: str) -> None:
    documented = re.search(rf"^\| `{name}` \| `([^`]+)`", README.read_text("utf-8"), re.MULTILINE)
    assert documented is not None, f"README.md's configuration table lacks {name}"

    field = FLOW_VARIABLES[name][0]
    parsed = getattr(Settings.from_env({name: documented[1]}), field)
    assert parsed == getattr(Settings.from_env({}), field)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [(name, raw, expected) for name, (_, raw, expected) in FLOW_VARIABLES.items()]
    + [("VTT_RESUME_BUFFER", "0", 0)],
)
def test_each_flow_control_setting_is_read_from_its_environment_variable_alone(
    name: str, raw: str, expected: Any
) -> None:
    field = FLOW_VARIABLES[name][0]

    settings = Settings.from_env({name: raw})

    assert settings == dataclasses.replace(Settings.from_env({}), **{field: expected})


@pytest.mark.parametrize(("name", "raw"), BAD_VALUES)
def test_a_nonsensical_flow_control_value_is_refused_naming_the_variable(
    name: str, raw: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})

    message = str(caught.value)
    assert message.startswith(f"{name} must be"), message
    assert repr(raw) in message


def test_the_stored_state_bound_is_read_from_its_variable_and_documented_with_its_default() -> None:
    documented = re.search(
        r"^\| `VTT_MAX_STATE_BYTES` \| `([0-9]+)`", README.read_text("utf-8"), re.MULTILINE
    )
    assert documented is not None, "README.md's limits table lacks VTT_MAX_STATE_BYTES"
    assert int(documented[1]) == Settings.from_env({}).limits.max_state_bytes == 32 * 1024 * 1024
    bound = Settings.from_env({"VTT_MAX_STATE_BYTES": "1048576"}).limits.max_state_bytes
    assert bound == 1024 * 1024
    with pytest.raises(ConfigError, match="VTT_MAX_STATE_BYTES"):
        Settings.from_env({"VTT_MAX_STATE_BYTES": "1000"})
