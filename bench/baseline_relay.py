"""A minimal relay on the raw websockets library with uvloop: the Python ceiling we compare to.

It speaks the server's wire format (state.sync on connect, stamped and sequenced broadcasts)
but does no validation, no persistence and no signature check: it only reads `sub` from the
token so that frames carry the sender's user id.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import msgspec
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
MAX_FRAME = 512 * 1024


class Campaign:
    """The clients of one campaign and its broadcast sequence number."""

    __slots__ = ("clients", "seq")

    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()
        self.seq = 0


def token_subject(token: str) -> str:
    """Return the `sub` claim of a JWT without verifying it (the baseline trusts everyone)."""
    try:
        body = token.split(".")[1]
        claims = _decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError, msgspec.DecodeError):
        return "anonymous"


def initial_state(campaign_id: str) -> dict[str, object]:
    """Return the smallest state.sync payload of the wire format."""
    return {
        "campaign_id": campaign_id,
        "grid_size": 64,
        "map_width": 0,
        "map_height": 0,
        "darkness_level": 0,
        "tokens": {},
        "fog_zones": [],
        "seq": 0,
        "epoch": "x",
    }


class Relay:
    """Campaign id -> connected clients, and the per-connection handler."""

    def __init__(self) -> None:
        self.campaigns: dict[str, Campaign] = {}

    async def handle(self, ws: ServerConnection) -> None:
        """Send state.sync, then stamp and broadcast every frame the client sends."""
        query = parse_qs(urlsplit(ws.request.path).query if ws.request else "")
        campaign_id = query.get("campaign", [""])[0]
        if not campaign_id:
            await ws.close(4400, "missing campaign")
            return
        user_id = token_subject(query.get("token", [""])[0])
        campaign = self.campaigns.get(campaign_id)
        if campaign is None:
            campaign = self.campaigns[campaign_id] = Campaign()
        sync = {
            "type": "state.sync",
            "campaign_id": campaign_id,
            "user_id": user_id,
            "seq": campaign.seq,
            "payload": {**initial_state(campaign_id), "seq": campaign.seq},
        }
        # No await between the snapshot and joining the audience: no broadcast can fall between.
        broadcast([ws], _encode(sync), text=True)
        campaign.clients.add(ws)
        try:
            while True:
                data = await ws.recv(decode=False)
                try:
                    frame = _decode(data)
                except msgspec.DecodeError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if frame.get("type") == "ping":
                    await ws.send(b'{"type":"pong"}', text=True)
                    continue
                campaign.seq += 1
                frame["campaign_id"] = campaign_id
                frame["user_id"] = user_id
                frame["seq"] = campaign.seq
                broadcast(campaign.clients, _encode(frame), text=True)
        except ConnectionClosed:
            pass
        finally:
            campaign.clients.discard(ws)
            if not campaign.clients:
                self.campaigns.pop(campaign_id, None)

    def health(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer plain HTTP GET /health so the orchestrator can poll for readiness."""
        if request.path == "/health":
            clients = sum(len(c.clients) for c in self.campaigns.values())
            body = _encode({"status": "ok", "sessions": len(self.campaigns), "clients": clients})
            headers = Headers([("Content-Type", "application/json")])
            return Response(HTTPStatus.OK.value, "OK", headers, body)
        return None


async def main(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    relay = Relay()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        relay.handle,
        host,
        port,
        compression=None,
        process_request=relay.health,
        max_size=MAX_FRAME,
        backlog=2048,
    ):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8090")))
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
