"""Hostile connections cannot hold the door: unfinished request headers meet a deadline and a bound.

The attack is a slowloris against a real server process: thousands of TCP connections that send
part of a WebSocket upgrade request and then nothing (or one byte a second). Meanwhile a real
player joins and drags; afterwards every attacking socket has been closed by the server and the
server's descriptors are back where they started.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.harness import TIMEOUT, Peer, serve, settings_for, token_payload
from tests.support.jwks_server import JwksServer, signing_key
from tests.support.poll import poll
from tests.support.process import ServerProcess

pytestmark = pytest.mark.anyio

ATTACKERS = 3000
DEADLINE = 5.0
HALF_REQUEST = b"GET /ws?campaign=demo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
# The rest of a valid upgrade request, for the attacker that trickles it a byte at a time.
TRICKLE = (
    b"GET /ws?campaign=demo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)

Socket = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(autouse=True)
def enough_descriptors() -> Iterator[None]:
    """The attacker needs a descriptor per socket, beside what the test itself holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ATTACKERS + 1000
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the descriptor limit ({hard}) is below the {wanted} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A server process with a short header deadline (the default is 10 s)."""
    process = ServerProcess(
        tmp_path, env={"VTT_HANDSHAKE_TIMEOUT": str(DEADLINE), "LOG_LEVEL": "warning"}
    )
    await process.start()
    try:
        yield process
    finally:
        process.kill()


def descriptors(server: ServerProcess) -> int:
    """How many descriptors the server process holds open now."""
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


async def metric(server: ServerProcess, name: str) -> float:
    """One unlabelled counter from /metrics."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        text = (await client.get(f"http://127.0.0.1:{server.port}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


async def open_attackers(port: int, count: int, first: bytes) -> list[Socket]:
    """`count` connections that have each sent `first` and nothing more."""

    async def one() -> Socket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first)
        await writer.drain()
        return reader, writer

    sockets: list[Socket] = []
    for start in range(0, count, 250):
        batch = min(250, count - start)
        async with asyncio.timeout(TIMEOUT):
            sockets += await asyncio.gather(*(one() for _ in range(batch)))
    return sockets


async def closed_by_server(sockets: list[Socket], timeout: float) -> int:
    """How many of `sockets` the server closed (EOF or reset) within `timeout`."""

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await reader.read(1024) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    async with asyncio.timeout(timeout):
        results = await asyncio.gather(*(closed(reader) for reader, _ in sockets))
    return sum(results)


async def trickle(sockets: list[Socket], stop: asyncio.Event) -> None:
    """Send each socket one more byte of a request every second until `stop` or it is closed."""
    position = 0
    while not stop.is_set():
        position += 1
        for _, writer in sockets:
            if not writer.is_closing() and position < len(TRICKLE):
                try:
                    writer.write(TRICKLE[position : position + 1])
                except (ConnectionResetError, BrokenPipeError, RuntimeError):
                    writer.close()
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            continue


def moved_to(x: int) -> Callable[[dict[str, Any]], bool]:
    """Whether a frame is the move of a token to `x`."""
    return lambda frame: frame["type"] == "token.move" and frame["payload"]["x"] == x


async def drag_round_trips(server: ServerProcess, moves: int) -> list[float]:
    """A GM and a player join; the GM drags; each move's time until the player sees it."""
    gm_url = server.ws_url("demo", server.token("gm", "gm"))
    player_url = server.ws_url("demo", server.token("bob"))
    latencies: list[float] = []
    async with (
        asyncio.timeout(TIMEOUT * 3),
        connect(gm_url, max_queue=None) as gm_ws,
        connect(player_url, max_queue=None) as player_ws,
    ):
        gm, player = Peer(gm_ws), Peer(player_ws)
        await gm.expect("state.sync")
        await player.expect("state.sync")
        await gm.send("token.add", token_payload("t1"))
        await player.until(lambda frame: frame["type"] == "token.add")
        for index in range(moves):
            started = time.monotonic()
            await gm.send("token.move", {"token_id": "t1", "x": index, "y": 0})
            await player.until(moved_to(index))
            latencies.append(time.monotonic() - started)
    return latencies


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attack", ["half-open", "trickle"])
async def test_thousands_of_unfinished_handshakes_are_closed_at_the_deadline_while_a_player_drags(
    server: ServerProcess, attack: str
) -> None:
    # A first table and its database connection exist before the attack starts.
    await drag_round_trips(server, 1)
    baseline = descriptors(server)
    first = HALF_REQUEST if attack == "half-open" else TRICKLE[:1]
    started = time.monotonic()
    sockets = await open_attackers(server.port, ATTACKERS, first)
    opened = time.monotonic()
    stop = asyncio.Event()
    trickler = asyncio.create_task(trickle(sockets, stop)) if attack == "trickle" else None
    try:
        await poll(
            lambda: descriptors(server) >= baseline + ATTACKERS,
            TIMEOUT,
            f"the server to hold every attacking connection ({descriptors(server)} held)",
        )
        latencies = await drag_round_trips(server, 20)
        assert time.monotonic() - started < DEADLINE, "the drag did not run during the attack"
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.1, latencies
        assert latencies[-1] < 0.5, latencies

        # Every attacking socket is closed by the server within the deadline plus a second of
        # the moment the last of them connected.
        closed = await closed_by_server(sockets, opened + DEADLINE + 1.0 - time.monotonic())
        assert closed == ATTACKERS
    finally:
        stop.set()
        if trickler is not None:
            await trickler
        for _, writer in sockets:
            writer.close()

    await poll(lambda: descriptors(server) <= baseline, TIMEOUT, "descriptors back to baseline")
    assert await metric(server, "vtt_handshake_timeouts_total") == ATTACKERS
    assert await metric(server, "vtt_handshake_bound_refusals_total") == 0


@pytest.mark.timeout(60)
async def test_past_the_bound_new_connections_are_dropped_at_once_with_one_warning(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path, env={"VTT_HANDSHAKE_TIMEOUT": "30", "VTT_MAX_HANDSHAKES": "50"}
    )
    await server.start()
    baseline = descriptors(server)
    try:
        held = await open_attackers(server.port, 50, HALF_REQUEST)
        refused = await open_attackers(server.port, 200, HALF_REQUEST)
        assert await closed_by_server(refused, TIMEOUT) == 200
        # The held ones are not touched by the refusals: none of them has been closed.
        assert all(not reader.at_eof() for reader, _ in held)
        for _, writer in held:
            writer.close()
        await poll(lambda: descriptors(server) <= baseline, TIMEOUT, "the held ones to go")
        assert await metric(server, "vtt_handshake_bound_refusals_total") == 200
        warnings = [
            line
            for line in server.output().splitlines()
            if line.startswith("{") and json.loads(line).get("logger") == "vtt.handshake"
        ]
        assert len(warnings) == 1, warnings
        assert json.loads(warnings[0])["level"] == "warning"
    finally:
        await server.stop()


@pytest.mark.timeout(60)
async def test_a_websocket_that_is_quiet_after_its_upgrade_outlives_the_deadline(
    tmp_path: Path,
) -> None:
    async with serve(settings_for(tmp_path, handshake_timeout=0.3)) as running:
        async with (
            asyncio.timeout(TIMEOUT),
            connect(running.ws_url("c1", running.token("u1"))) as ws,
        ):
            peer = Peer(ws)
            await peer.expect("state.sync")
            await peer.expect("map.list")
            await peer.expect("chat.history")
            await asyncio.sleep(1.0)  # quiet for more than three deadlines: nothing may cut it
            await peer.send("ping", {})
            await peer.expect("pong")
        registry = running.services.metrics.registry
        assert registry.get_sample_value("vtt_handshake_timeouts_total") == 0


@pytest.mark.timeout(60)
async def test_a_slow_token_check_after_the_headers_is_not_cut_by_the_deadline(
    tmp_path: Path,
) -> None:
    async with JwksServer([signing_key("k1")]) as jwks:
        settings = settings_for(
            tmp_path,
            handshake_timeout=0.3,
            clerk_jwks_url=jwks.url,
            clerk_issuer=jwks.issuer,
            role_sql="SELECT 'gm' WHERE :campaign_id = :campaign_id AND :user_id = :user_id",
        )
        async with serve(settings) as running:
            # A token naming a key the server has not fetched yet: the check waits on a
            # JWKS endpoint that takes longer to answer than the header deadline.
            jwks.rotate(signing_key("k2", index=1))
            jwks.delay = 1.0
            token = jwks.mint("user_1")
            async with asyncio.timeout(TIMEOUT), connect(running.ws_url("c1", token)) as ws:
                await Peer(ws).expect("state.sync")
