"""The private Redis of the scale-out tests: it starts, dies, freezes, thaws and comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.support.redisproc import RedisProcess, connected, ping

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@pytest.fixture
async def client(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A client of `redis_server` that gives up after 0.5 s, never retrying."""
    async with connected(redis_server, 0.5) as connection:
        yield connection


async def test_it_serves_on_its_url(redis_server: RedisProcess, client: aioredis.Redis) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    async with asyncio.timeout(TIMEOUT):
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert await client.config_get("appendfsync") == {"appendfsync": "always"}
        assert await client.config_get("save") == {"save": ""}


async def test_a_killed_server_answers_nothing(redis_server: RedisProcess) -> None:
    redis_server.kill()
    assert not redis_server.running
    assert not await ping(redis_server.port)


async def test_a_paused_server_times_out_then_answers_again(
    redis_server: RedisProcess, client: aioredis.Redis
) -> None:
    redis_server.pause()
    try:
        assert not await ping(redis_server.port, timeout=0.3)
        with pytest.raises(aioredis.TimeoutError):
            await client.ping()
    finally:
        redis_server.resume()
    assert await ping(redis_server.port)
    async with asyncio.timeout(TIMEOUT):
        assert await client.ping()


async def test_a_restart_after_a_kill_keeps_every_acknowledged_write(
    redis_server: RedisProcess, client: aioredis.Redis
) -> None:
    port = redis_server.port
    async with asyncio.timeout(TIMEOUT):
        await client.set("k", "v")
        await client.xadd("s", {"n": "1"})
    redis_server.kill()
    await redis_server.restart()
    assert redis_server.port == port
    async with connected(redis_server, 0.5) as again, asyncio.timeout(TIMEOUT):
        assert await again.get("k") == b"v"
        assert await again.xlen("s") == 1


async def test_a_restart_of_a_paused_server_keeps_its_data(
    redis_server: RedisProcess, client: aioredis.Redis
) -> None:
    async with asyncio.timeout(TIMEOUT):
        await client.set("k", "v")
    redis_server.pause()
    await redis_server.restart()
    async with connected(redis_server, 0.5) as again, asyncio.timeout(TIMEOUT):
        assert await again.get("k") == b"v"


async def test_an_empty_restart_loses_the_data(
    redis_server: RedisProcess, client: aioredis.Redis
) -> None:
    async with asyncio.timeout(TIMEOUT):
        await client.set("k", "v")
    await redis_server.restart(empty=True)
    async with connected(redis_server, 0.5) as again, asyncio.timeout(TIMEOUT):
        assert await again.get("k") is None
        assert await again.dbsize() == 0


async def test_stop_ends_even_a_paused_server(redis_server: RedisProcess) -> None:
    redis_server.pause()
    await redis_server.stop()
    assert not redis_server.running
    assert not await ping(redis_server.port)
