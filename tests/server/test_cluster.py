"""The cluster harness: nodes on one Redis and one database, each with its id and address."""

from __future__ import annotations

import signal

import pytest

from tests.support.cluster import StartCluster
from tests.support.harness import Peer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_a_cluster_runs_its_nodes_on_shared_redis_database_and_keys(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=3, env={"VTT_FLUSH_INTERVAL": "0.5"})
    assert list(nodes.nodes) == ["a", "b", "c"]
    assert len(set(nodes.ports.values())) == 3
    for name, node in nodes.nodes.items():
        assert node.env["VTT_NODE_ID"] == name
        assert node.env["VTT_NODE_URL"] == f"ws://127.0.0.1:{node.port}"
        assert node.env["VTT_LEASE_TTL"] == "2"
        assert node.env["VTT_CLUSTER_SECRET"] == nodes.secret
        assert node.env["VTT_FLUSH_INTERVAL"] == "0.5"
    a, b = nodes.node("a"), nodes.node("b")
    assert (a.env["REDIS_URL"], a.env["DATABASE_URL"]) == (
        b.env["REDIS_URL"],
        b.env["DATABASE_URL"],
    )
    peer = await Peer.greeted(b.ws_url("c1", a.token("gm1", "gm")))
    assert peer.sync["payload"]["campaign_id"] == "c1"
    await peer.close()
    await nodes.stop()
    codes = [node.proc.returncode for node in nodes.nodes.values() if node.proc is not None]
    # uvicorn ends a SIGTERM by re-raising it: a clean exit reads as killed by SIGTERM.
    assert set(codes) <= {0, -signal.SIGTERM}, codes
    assert len(codes) == 3
