"""Run the server as `make run` and the container do: uvicorn with uvloop, on PORT."""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
import sys
from typing import Any

import uvicorn

from app.config import ConfigError, Settings
from app.logs import configure_logging, log_config
from app.transport.adapter import AdaptedProtocol
from app.transport.handshake import HeaderDeadlineProtocol

# Collector thresholds (young, middle, old). Every message allocates short-lived objects; the
# default young threshold (700) ran a collection every few messages, and none of them form
# cycles, so collecting ten times less often costs little memory. The middle generation's
# pause grows with what survived since it last ran: after a burst of joins, collecting it
# every tenth or twentieth young collection made one long pause for every table, so it runs
# every second one (each object is scanned there once either way). A full collection still
# comes only after 400 young ones, as with (7000, 20, 20): it walks every live connection.
# docs/BENCHMARKS.md has the measured pauses.
GC_THRESHOLDS = (7000, 2, 200)

# Forwarded headers are trusted from these peers only; fly.toml names Fly's proxy network.
DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"


def banner(settings: Settings, *, dev_tools: bool | None = None) -> str:
    """How to use a development server, printed at startup.

    The token command and the demo table are named only where `app.dev` is installed (a
    checkout, not the production image).
    """
    if dev_tools is None:
        dev_tools = importlib.util.find_spec("app.dev") is not None
    base = f"ws://127.0.0.1:{settings.port}/ws"
    lines = [
        f"vtt-realtime (development) on http://127.0.0.1:{settings.port}",
        f"  state: SQLite file {settings.sqlite_path}",
        f"  auth:  dev keys in {settings.dev_key_dir}/ (RS256, same checks as production)",
    ]
    if dev_tools:
        lines += [
            "  mint a token:  make token ARGS='--user alice --gm --campaign demo'",
            "             or  .venv/bin/python -m app.dev.devtoken --user bob --campaign demo",
        ]
    lines += [
        f"  connect:       {base}?campaign=demo&token=<token>",
        f"  health:        http://127.0.0.1:{settings.port}/health",
    ]
    if dev_tools:
        demo = f"http://127.0.0.1:{settings.port}/demo/?campaign=demo"
        lines += [
            f"  demo table:    {demo}&user=alice&role=gm",
            f"                 {demo}&user=bob&role=player",
        ]
    return "\n".join(lines)


class Server(uvicorn.Server):
    """uvicorn's server, which can freeze what its startup left behind.

    With `freeze_gc`, the objects that exist once startup is done (modules, the engine, the
    app) are moved out of the collector's reach, so that a full
    collection walks only what the connections and sessions hold. They live as long as the
    process does, so nothing collectable is lost.
    """

    def __init__(self, config: uvicorn.Config, *, freeze_gc: bool = False) -> None:
        super().__init__(config)
        self.freeze_gc = freeze_gc

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does; then, with `freeze_gc`, freeze what startup left behind."""
        await super().startup(sockets)
        if self.freeze_gc and not self.should_exit:
            gc.collect()
            gc.freeze()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn configuration this server runs with (also used by the tests)."""
    return {
        "loop": "uvloop",
        "http": HeaderDeadlineProtocol,
        "ws": AdaptedProtocol if settings.ws_impl == "websockets-sansio" else settings.ws_impl,
        "ws_max_size": settings.limits.max_frame_bytes,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "proxy_headers": True,
        "forwarded_allow_ips": os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS),
        "log_config": log_config(settings.log_level),
        "timeout_graceful_shutdown": 20,
        "lifespan": "on",
    }


def dual_stack(port: int) -> list[socket.socket]:
    """Listening sockets on every IPv4 and every IPv6 address of this machine, on `port`."""
    ipv4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ipv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ipv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    for sock, address in ((ipv4, "0.0.0.0"), (ipv6, "::")):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.set_inheritable(True)
    return [ipv4, ipv6]


def main() -> int:
    """Start uvicorn with this server's settings."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if settings.dev_auth and settings.database_url is None:
        print(banner(settings), flush=True)
    gc.set_threshold(*GC_THRESHOLDS)
    host = os.environ.get("HOST")
    config = uvicorn.Config(
        "app.main:app", host=host or "0.0.0.0", port=settings.port, **uvicorn_options(settings)
    )
    server = Server(config, freeze_gc=True)
    if host is None and settings.cluster is not None:
        # The other machines reach this one at its private address (on Fly, IPv6), the
        # proxy at its IPv4 one: listen on both, each socket its own family.
        server.run(sockets=dual_stack(settings.port))
    else:
        server.run()
    # Like `uvicorn.run`: a server that never started (its startup failed) exits non-zero.
    return 0 if server.started else 3


if __name__ == "__main__":
    raise SystemExit(main())
