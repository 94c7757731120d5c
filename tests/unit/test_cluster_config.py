"""The scale-out settings: none without REDIS_URL, each one read and checked with it."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from app.config import Cluster, ConfigError, Settings

README = Path(__file__).resolve().parents[2] / "README.md"

BASE = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://vtt@127.0.0.1/vtt",
    "VTT_NODE_ID": "a",
    "VTT_NODE_URL": "http://10.0.0.5:8080",
    "VTT_CLUSTER_SECRET": "s" * 16,
}


def cluster_of(**env: str) -> Cluster:
    cluster = Settings.from_env({**BASE, **env}).cluster
    assert cluster is not None
    return cluster


def test_without_redis_url_there_is_no_cluster_whatever_else_is_set() -> None:
    env = {k: v for k, v in BASE.items() if k != "REDIS_URL"}
    assert Settings.from_env(env).cluster is None
    assert Settings.from_env({}).cluster is None


def test_redis_url_with_its_companions_gives_every_default() -> None:
    cluster = cluster_of()

    assert cluster == Cluster(
        redis_url="redis://127.0.0.1:6379/0",
        node_id="a",
        node_url="ws://10.0.0.5:8080",
        secret="s" * 16,
        lease_ttl=10.0,
        routing="relay",
        replay_status=307,
        oplog_max_entries=100_000,
    )
    assert cluster.renew_interval == pytest.approx(2.0)
    assert cluster.deadline_margin == pytest.approx(2.0)


@pytest.mark.parametrize("database", [None, "sqlite:///vtt.db", "mysql://x@y/z"])
def test_redis_url_refuses_anything_but_a_postgres_database(database: str | None) -> None:
    env = {**BASE}
    env.pop("DATABASE_URL")
    if database is not None:
        env["DATABASE_URL"] = database
    with pytest.raises(ConfigError, match="Postgres DATABASE_URL"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REDIS_URL", "http://redis", "REDIS_URL must be"),
        ("VTT_NODE_ID", "a b", "VTT_NODE_ID must be"),
        ("VTT_NODE_URL", "10.0.0.5:8080", "VTT_NODE_URL must be"),
        ("VTT_CLUSTER_SECRET", "short", "VTT_CLUSTER_SECRET"),
        ("VTT_ROUTING", "pubsub", "VTT_ROUTING must be"),
        ("VTT_REPLAY_STATUS", "200", "VTT_REPLAY_STATUS must be"),
        ("VTT_LEASE_TTL", "0.1", "VTT_LEASE_TTL"),
    ],
)
def test_a_bad_cluster_setting_is_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**BASE, name: value})


def test_a_missing_node_url_is_named() -> None:
    env = {k: v for k, v in BASE.items() if k != "VTT_NODE_URL"}
    with pytest.raises(ConfigError, match="VTT_NODE_URL"):
        Settings.from_env(env)


def test_without_a_cluster_secret_the_relay_hands_over_the_token_instead() -> None:
    env = {k: v for k, v in BASE.items() if k != "VTT_CLUSTER_SECRET"}
    cluster = Settings.from_env(env).cluster
    assert cluster is not None
    assert cluster.secret is None


def test_on_fly_the_node_is_the_machine_reached_at_its_internal_name_and_routed_by_replay() -> None:
    env = {k: v for k, v in BASE.items() if k not in {"VTT_NODE_ID", "VTT_NODE_URL"}}
    fly = {
        **env,
        "FLY_MACHINE_ID": "e784079b449483",
        "FLY_APP_NAME": "wtsfs-realtime",
        "CLERK_JWKS_URL": "https://clerk.example/.well-known/jwks.json",
        "PORT": "8081",
    }

    cluster = Settings.from_env(fly).cluster

    assert cluster is not None
    assert cluster.node_id == "e784079b449483"
    assert cluster.node_url == "ws://e784079b449483.vm.wtsfs-realtime.internal:8081"
    assert cluster.routing == "fly-replay"
    relayed = Settings.from_env({**fly, "VTT_ROUTING": "relay"}).cluster
    assert relayed is not None
    assert relayed.routing == "relay"


def test_off_fly_the_node_id_defaults_to_the_hostname() -> None:
    env = {k: v for k, v in BASE.items() if k != "VTT_NODE_ID"}
    cluster = Settings.from_env(env).cluster
    assert cluster is not None
    assert cluster.node_id == socket.gethostname()


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://10.0.0.5:8080/", "ws://10.0.0.5:8080"),
        ("https://node.example/vtt", "wss://node.example/vtt"),
        ("ws://127.0.0.1:8081", "ws://127.0.0.1:8081"),
    ],
)
def test_the_node_url_becomes_a_websocket_base(given: str, base: str) -> None:
    assert cluster_of(VTT_NODE_URL=given).node_url == base


def test_each_cluster_setting_is_read() -> None:
    cluster = cluster_of(
        VTT_LEASE_TTL="2",
        VTT_ROUTING="fly-replay",
        VTT_REPLAY_STATUS="101",
        VTT_OPLOG_MAX_ENTRIES="5000",
    )
    assert (cluster.lease_ttl, cluster.routing, cluster.replay_status) == (2.0, "fly-replay", 101)
    assert cluster.oplog_max_entries == 5000


@pytest.mark.parametrize(
    "name",
    [
        "REDIS_URL",
        "VTT_NODE_ID",
        "VTT_NODE_URL",
        "VTT_CLUSTER_SECRET",
        "VTT_LEASE_TTL",
        "VTT_ROUTING",
        "VTT_REPLAY_STATUS",
        "VTT_OPLOG_MAX_ENTRIES",
    ],
)
def test_the_readme_tables_name_each_cluster_setting(name: str) -> None:
    assert re.search(rf"^\| `{name}` \|", README.read_text(), re.MULTILINE), name
