"""The ground the transport adapter stands on: the uvicorn and websockets code it overrides,
copies or relies on, recorded by a hash of its source.

When an upgrade changes one of them, its test fails naming the method: re-read the upstream
change, re-check what the message names, then record the new hash here.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from app.transport.adapter import AdaptedProtocol
from app.transport.handshake import HeaderDeadlineProtocol
from app.transport.serve import Server

ADAPTER = "app/transport/adapter.py"
SERVE = "app/transport/serve.py"
HANDSHAKE = "app/transport/handshake.py"


@dataclass(frozen=True)
class Upstream:
    """One upstream function, how we depend on it, and the hash of the source we checked."""

    library: str
    owner: type[Any] | ModuleType
    name: str
    digest: str
    use: str
    where: str

    @property
    def function(self) -> Callable[..., Any]:
        """The upstream function itself."""
        function: Callable[..., Any] = getattr(self.owner, self.name)
        return function


def sansio(name: str, digest: str, use: str) -> Upstream:
    """A method of uvicorn's websockets-sansio protocol."""
    return Upstream("uvicorn", WebSocketsSansIOProtocol, name, digest, use, ADAPTER)


def httptools(name: str, digest: str, use: str) -> Upstream:
    """A method of uvicorn's httptools HTTP protocol."""
    return Upstream("uvicorn", HttpToolsProtocol, name, digest, use, HANDSHAKE)


UPSTREAM = [
    sansio("__init__", "631dcd744eab875f", "override (the Inbox; `writable`, `transport`)"),
    sansio("run_asgi", "662375aa38d9044c", "override (publishes the socket, drops the request)"),
    sansio(
        "send",
        "d4919ed760ce9f7b",
        "override (drops the response once accepted; its accept branch copied as `_switch`)",
    ),
    sansio("send_receive_event_to_app", "a2b10de91477dc1d", "override copied and edited"),
    sansio("data_received", "c89d394077d8841d", "override (cuts frames; feeds it the others)"),
    sansio("handle_events", "b2c9351a5d13493f", "relied on (frames fed whole reach the app)"),
    sansio("handle_text", "6ae523180cf04a01", "relied on (a text message ends in the override)"),
    sansio("keepalive_timeout", "8e1ceb6ec446de9d", "override (aborts after it)"),
    sansio(
        "shutdown",
        "e8ace796ada616b7",
        "override (tells the app and waits for its close; guarded; puts the same disconnect)",
    ),
    sansio("stop_keepalive", "bbb91b997b37b77c", "relied on (a draining socket pings no more)"),
    sansio("receive", "1dc0e715390021a1", "relied on (reads the Inbox as a queue)"),
    sansio(
        "handle_connect",
        "fc648c2161ff8e13",
        "relied on (the scope, `request`, extensions) and copied as `upgrade` (the same scope)",
    ),
    sansio(
        "connection_made",
        "f533ec93747c2cbf",
        "mirrored as `taken_over` (with the addresses the HTTP protocol found)",
    ),
    sansio("connection_lost", "dd116afc4d8034e1", "relied on (sets `writable` when lost)"),
    sansio("pause_writing", "4830f7e0d81f877d", "override (`write_paused` follows `writable`)"),
    sansio("resume_writing", "ef79384e5fff077c", "override (`write_paused` follows `writable`)"),
    httptools("__init__", "4f08999410347141", "override (adds the deadline's state)"),
    httptools("connection_made", "6efb565ff3d36b91", "override (arms the deadline)"),
    httptools("on_message_begin", "96d377fdc7c2baef", "override (a keep-alive request's deadline)"),
    httptools(
        "on_headers_complete",
        "1ea8589acfad92d8",
        "override (the headers are in; an upgrade returns early, before the app runs)",
    ),
    httptools("connection_lost", "c91a4c9bf2e29c55", "override (releases the gate's count)"),
    httptools(
        "handle_websocket_upgrade",
        "179c4f769386ab89",
        "override copied and edited (the parsed request goes to `upgrade`; its serialization "
        "copied as the adapter's `_serialized`)",
    ),
    Upstream(
        "uvicorn",
        uvicorn.Server,
        "__init__",
        "c150b55284f7511e",
        "override (adds freeze_gc)",
        SERVE,
    ),
    Upstream("uvicorn", uvicorn.Server, "startup", "2aa1d70a244bfcf2", "override (freeze)", SERVE),
    Upstream(
        "websockets",
        ServerProtocol,
        "parse",
        "8c4d10340de4d32f",
        "relied on (its parser keeps the handshake request, which run_asgi empties)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        Protocol,
        "parse",
        "45aaf900644b63c4",
        "relied on (between frames it waits in the reader's at_eof; it checks the size limits)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        Protocol,
        "recv_frame",
        "4f83d3b90ea62428",
        "relied on (`current_size` is None unless a fragmented message is under way)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        StreamReader,
        "at_eof",
        "106a9f1e43abf91f",
        "relied on (the generator the parser waits in at a frame boundary)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        ServerProtocol,
        "process_request",
        "2611abb84de75f09",
        "relied on (`extensions` are negotiated before the app runs) and mirrored: "
        "`_accept_header` takes only requests it accepts",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        ServerProtocol,
        "accept",
        "f2f96c48162dbfda",
        "mirrored (the 101 `_switch` writes: Upgrade, Connection, Sec-WebSocket-Accept)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        ServerProtocol,
        "send_response",
        "0676fec30e39473d",
        "mirrored (a 101 only sets the state OPEN, which `_switch` does)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        ServerProtocol,
        "process_origin",
        "84eb4ca9847e9f8c",
        "mirrored (without origins to check, only a repeated Origin is refused)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        ServerProtocol,
        "process_extensions",
        "a7fab79d2bf5ae4f",
        "mirrored (offers are ignored unless the server has extensions)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        Request,
        "parse",
        "fd00e2611149536e",
        "mirrored (`_accept_header` sends a body the long way)",
        ADAPTER,
    ),
    Upstream(
        "websockets",
        http11,
        "parse_headers",
        "90bddf8d62394fe6",
        "mirrored (the header limits and value bytes `_accept_header` checks)",
        ADAPTER,
    ),
]


def digest_of(function: Callable[..., Any]) -> str:
    """The first 16 hex digits of the SHA-256 of a function's source."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    "upstream", UPSTREAM, ids=[f"{u.owner.__name__}.{u.name}" for u in UPSTREAM]
)
def test_the_upstream_code_the_transport_depends_on_is_the_code_it_was_checked_against(
    upstream: Upstream,
) -> None:
    versions = f"uvicorn {uvicorn.__version__}, websockets {version('websockets')}"
    assert digest_of(upstream.function) == upstream.digest, (
        f"{upstream.library} changed {upstream.owner.__name__}.{upstream.name} ({versions}): "
        f"re-check {upstream.where}'s {upstream.use}, then record the new digest "
        f"{digest_of(upstream.function)!r} in tests/unit/test_transport_contract.py"
    )


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (AdaptedProtocol, WebSocketsSansIOProtocol),
        (Server, uvicorn.Server),
        (HeaderDeadlineProtocol, HttpToolsProtocol),
    ],
    ids=["AdaptedProtocol", "Server", "HeaderDeadlineProtocol"],
)
def test_every_upstream_method_we_override_is_under_contract(
    ours: type[Any], theirs: type[Any]
) -> None:
    overridden = {name for name in vars(ours) if callable(getattr(theirs, name, None))}
    recorded = {u.name for u in UPSTREAM if u.owner is theirs}
    assert overridden <= recorded, f"overrides without a recorded digest: {overridden - recorded}"
