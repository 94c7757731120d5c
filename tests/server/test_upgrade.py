"""The WebSocket upgrade on the wire: the usual request (opened by the adapter from httptools'
parsed headers) and one sent the long way (through websockets' parser) get the same 101 and
the same greeting; a request websockets refuses is still refused as it refuses it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from asyncio import selector_events
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.utils import accept_key

from app.transport.adapter import AdaptedProtocol
from tests.support.harness import TIMEOUT, RunningServer
from tests.support.table import new_campaign

pytestmark = pytest.mark.anyio


def request(url: str, key: str, *extra: str) -> bytes:
    parts = urlsplit(url)
    lines = [
        f"GET {parts.path}?{parts.query} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(url: str, raw: bytes) -> tuple[str, dict[str, str], Stream]:
    """Send `raw`; the response's status line and headers (lowercase names), and the stream."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port), TIMEOUT
    )
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} sent twice"
        headers[name.lower()] = value.strip()
    return status, headers, (reader, writer)


async def first_message(stream: Stream) -> dict[str, Any]:
    """The first server frame, a whole unmasked text frame, as JSON."""
    reader, _ = stream
    first, second = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    assert first == 0x81
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
    elif length == 127:
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(8), TIMEOUT), "big")
    message: dict[str, Any] = json.loads(
        await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    )
    return message


@pytest.mark.parametrize(
    "extra",
    [(), ("Sec-WebSocket-Protocol: vtt",)],
    ids=["the usual request", "one with a subprotocol offered (the long way)"],
)
async def test_an_upgrade_gets_the_101_and_the_greeting_either_way(
    shared: RunningServer, extra: tuple[str, ...]
) -> None:
    campaign = new_campaign()
    url = shared.ws_url(campaign, shared.token("pl-up"))
    key = base64.b64encode(os.urandom(16)).decode()

    status, headers, stream = await exchange(url, request(url, key, *extra))

    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == accept_key(key)
    assert {"date", "server"} <= set(headers)
    assert "sec-websocket-protocol" not in headers, "no subprotocol is chosen"
    assert "sec-websocket-extensions" not in headers, "no extension is negotiated"
    sync = await first_message(stream)
    stream[1].close()
    assert (sync["type"], sync["campaign_id"], sync["user_id"]) == ("state.sync", campaign, "pl-up")


@pytest.mark.parametrize(
    ("key", "version", "answer"),
    [
        ("c2hvcnQ=", "13", "invalid Sec-WebSocket-Key header"),
        (base64.b64encode(os.urandom(16)).decode(), "8", "invalid Sec-WebSocket-Version header"),
    ],
    ids=["a key of 5 bytes", "version 8"],
)
async def test_a_request_websockets_refuses_is_refused_as_it_refuses_it(
    shared: RunningServer, key: str, version: str, answer: str
) -> None:
    url = shared.ws_url(new_campaign(), shared.token("pl-up"))
    raw = request(url, key).replace(b"Version: 13", f"Version: {version}".encode())

    status, headers, (reader, writer) = await exchange(url, raw)

    assert status == "HTTP/1.1 400 Bad Request"
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), TIMEOUT)
    assert answer in body.decode()
    writer.close()


class Writes:
    """Every write of the server's transports (the test's loop runs asyncio's own), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, bytes]] = []
        kind = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
        write = kind.write

        def recorded(transport: Any, data: Any) -> None:
            self.seen.append((id(transport), bytes(data)))
            write(transport, data)

        monkeypatch.setattr(kind, "write", recorded)

    def of_the_connection_switched(self, count: int = 1) -> list[list[bytes]]:
        """The writes of each of the last `count` transports whose first write is a 101."""
        firsts: dict[int, list[bytes]] = {}
        for transport, data in self.seen:
            if transport in firsts:
                firsts[transport].append(data)
            elif data.startswith(b"HTTP/1.1 101 "):
                firsts[transport] = [data]
        return list(firsts.values())[-count:]


async def test_a_live_campaigns_greeting_goes_out_in_the_write_of_the_101(
    shared: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = new_campaign()
    writes = Writes(monkeypatch)
    first = await shared.join(campaign, "gm-up", "gm")
    second = await shared.join(campaign, "pl-up2")
    await first.close()
    await second.close()

    loaded, live = writes.of_the_connection_switched(2)
    # The first join loads the campaign: the 101 goes at the end of the turn that accepted,
    # the greeting once the state is loaded, after it.
    assert b"state.sync" not in loaded[0]
    assert any(b"state.sync" in data for data in loaded[1:])
    # The campaign is live: the greeting is written in the turn that accepted, with the 101.
    head, _, frames = live[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
    assert frames[:1] == b"\x81"
    assert b'"type":"state.sync"' in frames


async def test_a_refusal_writes_the_101_before_its_close(
    shared: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = Writes(monkeypatch)
    url = shared.ws_url(new_campaign(), "not-a-token")
    key = base64.b64encode(os.urandom(16)).decode()

    status, _, (reader, writer) = await exchange(url, request(url, key))
    close = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
    writer.close()

    assert status == "HTTP/1.1 101 Switching Protocols"
    assert close[0] == 0x88, "a close frame"
    (switched,) = writes.of_the_connection_switched()
    closing = b"".join(switched).partition(b"\r\n\r\n")[2]
    assert closing[:1] == b"\x88", "the close follows the 101"
    assert int.from_bytes(closing[2:4], "big") == 4401


async def test_a_connection_opened_here_knows_the_addresses_the_socket_has(
    shared: RunningServer,
) -> None:
    url = shared.ws_url(new_campaign(), shared.token("pl-up"))
    key = base64.b64encode(os.urandom(16)).decode()
    status, _, stream = await exchange(url, request(url, key))
    await first_message(stream)
    here = stream[1].get_extra_info("sockname")

    (opened,) = [
        protocol
        for protocol in shared.server.server_state.connections
        if isinstance(protocol, AdaptedProtocol) and protocol.client == tuple(here)
    ]
    stream[1].close()
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert (opened.server, opened.scheme) == (("127.0.0.1", shared.port), "ws")
