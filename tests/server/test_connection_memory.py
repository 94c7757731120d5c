"""A connection's objects go at once, by reference counting, not at the next full collection:
with the cyclic collector off, the HTTP protocol of every upgrade is freed once the WebSocket
protocol takes over, and the websockets protocol of every connection that ended once it ends."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.server import ServerProtocol

from tests.support.harness import RunningServer
from tests.support.poll import poll

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


def alive(kind: type) -> int:
    """How many objects of `kind` are alive in this process."""
    return sum(isinstance(o, kind) for o in gc.get_objects())


def server_protocols() -> int:
    """How many websockets server protocols are alive in this process."""
    return alive(ServerProtocol)


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic collector off for the test: only reference counting frees anything."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_a_closed_connection_frees_its_websockets_protocol_without_the_collector(
    server: RunningServer, no_collector: None
) -> None:
    gm = await server.join("c1", "gm", "gm")
    before = server_protocols()
    peers = [await server.join("c1", f"p{n}") for n in range(10)]
    assert server_protocols() == before + 10
    # Old enough to be in the oldest generation, as a connection of minutes is.
    gc.collect()

    for peer in peers:
        await peer.close()
    await poll(
        lambda: server_protocols() == before, TIMEOUT, "the closed connections' protocols freed"
    )
    await gm.close()


async def test_an_upgraded_connection_frees_its_http_protocol_without_the_collector(
    server: RunningServer, no_collector: None
) -> None:
    gm = await server.join("c1", "gm", "gm")
    before = alive(HttpToolsProtocol)

    peers = [await server.join("c1", f"p{n}") for n in range(10)]

    assert alive(HttpToolsProtocol) == before
    for peer in [*peers, gm]:
        await peer.close()
