"""fly.toml says what issue 7 requires, and agrees with the Dockerfile and app.config."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.services import SHUTDOWN_FLUSH_SECONDS
from app.transport.serve import uvicorn_options

ROOT = Path(__file__).resolve().parents[2]
# Fly allows shared-CPU machines at most five minutes between the kill signal and SIGKILL.
SHARED_CPU_MAX_KILL_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


def _seconds(value: str | int) -> float:
    """A Fly duration ("30s", "1m30s", or a bare number of seconds) in seconds."""
    if isinstance(value, int):
        return float(value)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert value, "an empty duration"
    assert match, f"not a duration: {value!r}"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600.0 + minutes * 60.0 + seconds


def test_the_app_is_wtsfs_realtime_in_london(fly: dict[str, Any]) -> None:
    assert fly["app"] == "wtsfs-realtime"
    assert fly["primary_region"] == "lhr"


def test_migrations_run_once_per_deploy_as_the_release_command(fly: dict[str, Any]) -> None:
    assert fly["deploy"]["release_command"] == "alembic upgrade head"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY alembic\.ini ", dockerfile, re.MULTILINE)
    assert re.search(r"^COPY migrations/ ", dockerfile, re.MULTILINE)


def test_deploys_replace_the_machine_in_place_so_two_never_hold_a_campaign(
    fly: dict[str, Any],
) -> None:
    assert fly["deploy"]["strategy"] == "rolling"


def test_the_http_service_keeps_one_machine_running_and_never_stops_it(
    fly: dict[str, Any],
) -> None:
    service = fly["http_service"]
    assert service["force_https"] is True
    assert service["auto_stop_machines"] in ("off", False)
    assert service["auto_start_machines"] is True
    assert service["min_machines_running"] >= 1


def test_the_internal_port_is_the_port_the_server_and_the_image_use(fly: dict[str, Any]) -> None:
    port = fly["http_service"]["internal_port"]
    assert port == 8080
    assert int(fly["env"]["PORT"]) == port
    assert re.search(rf"^EXPOSE {port}$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert fly["metrics"]["port"] == port


def test_concurrency_counts_connections_with_a_soft_limit_below_the_hard_one(
    fly: dict[str, Any],
) -> None:
    concurrency = fly["http_service"]["concurrency"]
    assert concurrency["type"] == "connections"
    assert 0 < concurrency["soft_limit"] < concurrency["hard_limit"]


def test_a_health_check_gets_the_health_endpoint(fly: dict[str, Any]) -> None:
    checks = fly["http_service"]["checks"]
    assert any(check["path"] == "/health" and check["method"].upper() == "GET" for check in checks)
    for check in checks:
        assert _seconds(check["timeout"]) < _seconds(check["interval"])


def test_shutdown_is_sigterm_with_a_kill_timeout_longer_than_the_worst_drain(
    fly: dict[str, Any],
) -> None:
    assert fly["kill_signal"] == "SIGTERM"
    timeout = _seconds(fly["kill_timeout"])
    # uvicorn waits this long for the closed sockets' tasks, then the lifespan's final
    # flush may retry a failing database for SHUTDOWN_FLUSH_SECONDS.
    graceful = uvicorn_options(Settings())["timeout_graceful_shutdown"]
    worst_drain = graceful + SHUTDOWN_FLUSH_SECONDS
    assert worst_drain < timeout <= SHARED_CPU_MAX_KILL_TIMEOUT


def test_proxy_headers_are_trusted_only_from_private_addresses(fly: dict[str, Any]) -> None:
    allowed = fly["env"]["FORWARDED_ALLOW_IPS"]
    assert allowed.strip() != "*"
    for entry in allowed.split(","):
        network = ipaddress.ip_network(entry.strip())
        assert network.is_private, entry


def test_the_environment_is_production_and_accepted_by_the_servers_config(
    fly: dict[str, Any],
) -> None:
    env = fly["env"]
    assert env["VTT_ENV"] == "production"
    secrets = {
        "DATABASE_URL": "postgresql://user:pw@db.example/neondb",
        "CLERK_JWKS_URL": "https://clerk.example.com/.well-known/jwks.json",
    }

    settings = Settings.from_env({**env, **secrets})

    assert settings.production
    assert settings.port == fly["http_service"]["internal_port"]
    assert settings.auto_migrate is False
    assert settings.log_level == "info"


def test_no_secret_is_written_in_fly_toml(fly: dict[str, Any]) -> None:
    assert {"DATABASE_URL", "CLERK_JWKS_URL"}.isdisjoint(fly["env"])


def test_no_cluster_secret_is_written_in_fly_toml(fly: dict[str, Any]) -> None:
    """REDIS_URL (it carries the Redis password) and VTT_CLUSTER_SECRET are `fly secrets`."""
    assert {"REDIS_URL", "VTT_CLUSTER_SECRET"}.isdisjoint(fly["env"])
    text = (ROOT / "fly.toml").read_text()
    for name in ("REDIS_URL", "VTT_CLUSTER_SECRET"):
        assert not re.search(rf"^\s*{name}\s*=", text, re.MULTILINE), name
    assert "redis://" not in text
    assert "rediss://" not in text


def test_without_redis_in_the_secrets_the_config_is_one_machine(fly: dict[str, Any]) -> None:
    """fly.toml alone never turns the cluster on: scaling out takes REDIS_URL as a secret."""
    secrets = {
        "DATABASE_URL": "postgresql://user:pw@db.example/neondb",
        "CLERK_JWKS_URL": "https://clerk.example.com/.well-known/jwks.json",
    }

    assert Settings.from_env({**fly["env"], **secrets}).cluster is None


def test_the_handshake_bound_is_well_under_the_hard_connection_limit(fly: dict[str, Any]) -> None:
    secrets = {
        "DATABASE_URL": "postgresql://user:pw@db.example/neondb",
        "CLERK_JWKS_URL": "https://clerk.example.com/.well-known/jwks.json",
    }
    bound = Settings.from_env({**fly["env"], **secrets}).max_handshakes
    hard_limit = fly["http_service"]["concurrency"]["hard_limit"]

    assert bound <= hard_limit // 2, (bound, hard_limit)
