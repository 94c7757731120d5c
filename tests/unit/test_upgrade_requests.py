"""Which upgrade requests the adapter opens itself (`_accept_header`), against websockets' own
judgement of the same request: it may send a request the long way that websockets would
accept, never open one that websockets would refuse, and its Sec-WebSocket-Accept is theirs.
"""

from __future__ import annotations

import base64
import logging

from hypothesis import given
from hypothesis import strategies as st
from websockets.http11 import Request
from websockets.server import ServerProtocol

from app.transport.adapter import _accept_header, _serialized

KEY = base64.b64encode(b"0123456789abcdef")
USUAL = [
    (b"host", b"127.0.0.1:8000"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"origin", b"http://localhost:3000"),
    (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    (b"user-agent", b"Mozilla/5.0"),
]
TARGET = b"/ws?campaign=c1&token=abc"


def websockets_verdict(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes | None:
    """The Sec-WebSocket-Accept websockets answers this request with (no extensions, as
    uvicorn builds it), or None when it does not answer 101."""
    protocol = ServerProtocol(logger=logging.getLogger("test.upgrade"))
    protocol.receive_data(_serialized(method, target, headers))
    requests = [event for event in protocol.events_received() if isinstance(event, Request)]
    if not requests:
        return None
    response = protocol.accept(requests[0])
    if response.status_code != 101:
        return None
    accept: str = response.headers["Sec-WebSocket-Accept"]
    return accept.encode()


def test_the_usual_browser_request_opens_here_with_websockets_accept_key() -> None:
    accept = _accept_header("GET", TARGET, USUAL)

    assert accept is not None
    assert accept == websockets_verdict("GET", TARGET, USUAL)


VALUES = {
    b"upgrade": [b"websocket", b"WebSocket", b"websocket, h2c", b"h2c", b"websocket/13", b""],
    b"connection": [b"Upgrade", b"keep-alive, upgrade", b"close", b"upgrade,,", b"up grade", b""],
    b"sec-websocket-key": [KEY, b"short", KEY + b"=", b"!!!!", base64.b64encode(b"x" * 17), b""],
    b"sec-websocket-version": [b"13", b"8", b"13, 8", b""],
    b"origin": [b"http://a", b"null"],
    b"content-length": [b"0", b"5"],
    b"transfer-encoding": [b"chunked"],
    b"sec-websocket-protocol": [b"vtt", b"a, b", b"@@"],
    b"sec-websocket-extensions": [b"permessage-deflate", b"@@;;"],
    b"x-other": [b"ok", b"caf\xc3\xa9", b"\x7f", b"a\x00b"],
}
header = st.sampled_from(sorted(VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(VALUES[name]))
)


@given(
    method=st.sampled_from(["GET", "POST"]),
    target=st.sampled_from([TARGET, b"/ws", "/ws?x=é".encode()]),
    drop=st.sets(st.sampled_from([name for name, _ in USUAL])),
    extra=st.lists(header, max_size=4),
)
def test_a_request_opened_here_is_one_websockets_accepts_with_the_same_key(
    method: str, target: bytes, drop: set[bytes], extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(name, value) for name, value in USUAL if name not in drop] + extra

    ours = _accept_header(method, target, headers)

    if ours is not None:
        assert ours == websockets_verdict(method, target, headers)


def test_more_headers_than_websockets_parses_go_the_long_way() -> None:
    headers = USUAL + [(b"x-filler", b"1")] * 121

    assert _accept_header("GET", TARGET, headers) is None
    assert websockets_verdict("GET", TARGET, headers) is None
