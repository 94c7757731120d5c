"""Two or three server processes run as one cluster: one private Redis, one Postgres database.

Every node is a `ServerProcess` in the same work directory, so they share the dev keys (a
token minted by any node is good on all of them); each has its own port, log and node id.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.process import ServerProcess
from tests.support.redisproc import RedisProcess

NODE_NAMES = ("a", "b", "c")
LEASE_TTL = "2"


class Cluster:
    """`size` nodes named a, b, c... of one cluster; `env` is added to every node's."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        database_url: str,
        size: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        assert 1 <= size <= len(NODE_NAMES), f"a cluster has 1 to {len(NODE_NAMES)} nodes"
        self.secret = secrets.token_hex(16)
        self.nodes: dict[str, ServerProcess] = {}
        for name in NODE_NAMES[:size]:
            node = ServerProcess(
                workdir,
                {
                    "REDIS_URL": redis_url,
                    "DATABASE_URL": database_url,
                    "VTT_NODE_ID": name,
                    "VTT_LEASE_TTL": LEASE_TTL,
                    "VTT_CLUSTER_SECRET": self.secret,
                    **(env or {}),
                },
            )
            node.env["VTT_NODE_URL"] = f"ws://127.0.0.1:{node.port}"
            self.nodes[name] = node

    def node(self, name: str) -> ServerProcess:
        """The node named `name`."""
        return self.nodes[name]

    @property
    def ports(self) -> dict[str, int]:
        """Each node's port by name (what a `FlyProxy` routes to)."""
        return {name: node.port for name, node in self.nodes.items()}

    async def start(self) -> None:
        """Start every node together (they take turns migrating) and wait until all are up."""
        await asyncio.gather(*(node.start() for node in self.nodes.values()))

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every node still running (waking paused ones) and wait for them all; kill
        whoever is left."""
        running = [node for node in self.nodes.values() if _running(node)]
        for node in running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)
        try:
            await asyncio.gather(*(node.stop(timeout=timeout) for node in running))
        finally:
            for node in self.nodes.values():
                node.kill()


def _running(node: ServerProcess) -> bool:
    return node.proc is not None and node.proc.returncode is None


class StartCluster(Protocol):
    """What the `cluster` fixture gives a test."""

    def __call__(self, size: int = 2, env: Mapping[str, str] | None = None) -> Awaitable[Cluster]:
        """Start a cluster of `size` nodes with `env` added to each node's."""
        ...


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_server: RedisProcess, postgres_url: str
) -> AsyncIterator[StartCluster]:
    """`await cluster(size=2, env={...})` starts a cluster on this test's Redis and database.

    Every cluster it started is stopped after the test.
    """
    started: list[Cluster] = []

    async def start(size: int = 2, env: Mapping[str, str] | None = None) -> Cluster:
        made = Cluster(tmp_path, redis_server.url, postgres_url, size, env)
        started.append(made)
        await made.start()
        return made

    try:
        yield start
    finally:
        for each in started:
            await each.stop()
