"""The TCP segments our server sends per relayed frame (issue 15.2): a token.move against a
cursor.move, counted on the server's own sockets.

`python -m bench.acks`: `python -m app` on its defaults (dev auth, SQLite), one campaign, a
GM and 5 players. The GM sends --frames frames at 20 Hz (token.moves of one token, then on a
fresh server cursor.moves). Before and after, `ss -tin` reads each of the server's sockets'
counters: segments out, data segments out (the difference is bare ACKs), segments in. A
move's echo carries the server's acknowledgement of the move back to its sender; a cursor is
never echoed, so the kernel acknowledges each one with a bare ACK of its own. Needs `ss`
(iproute2). Prints the counts; writes them as JSON (default bench/results/acks.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench.run import RESULTS, default_server, log
from bench.tokens import dev_book

KINDS = ("token.move", "cursor.move")
PLAYERS = 5
HERTZ = 20.0
TIMEOUT = 10.0
TOKEN = {"token_id": "t1", "name": "a", "x": 0, "y": 0, "width": 1, "height": 1, "visible": True}


class Segments(NamedTuple):
    """One socket's TCP counters, as `ss -tin` shows them."""

    out: int
    data_out: int
    into: int
    data_in: int

    def __sub__(self, other: tuple[Any, ...]) -> Segments:
        return Segments(*(a - b for a, b in zip(self, other, strict=True)))

    @property
    def bare_out(self) -> int:
        """Segments out that carried no data: bare ACKs (and the odd window update)."""
        return self.out - self.data_out


def _counter(info: str, name: str) -> int:
    found = re.search(rf"\b{name}:(\d+)", info)
    return int(found.group(1)) if found else 0


def parse_ss(output: str) -> dict[int, Segments]:
    """`ss -tinH` output: each socket's counters, by its peer's port."""
    lines = [line for line in output.splitlines() if line.strip()]
    sockets: dict[int, Segments] = {}
    for head, info in zip(lines[0::2], lines[1::2], strict=True):
        peer = head.split()[-1]
        sockets[int(peer.rsplit(":", 1)[1])] = Segments(
            _counter(info, "segs_out"),
            _counter(info, "data_segs_out"),
            _counter(info, "segs_in"),
            _counter(info, "data_segs_in"),
        )
    return sockets


def server_sockets(port: int) -> dict[int, Segments]:
    """The counters of every established socket the server has on `port`."""
    argv = ["ss", "-tinH", "state", "established", f"( sport = :{port} )"]
    return parse_ss(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def frame(kind: str, n: int) -> str:
    """The GM's `n`-th frame of `kind`."""
    if kind == "token.move":
        return json.dumps({"type": kind, "payload": {"token_id": "t1", "x": n, "y": n}})
    return json.dumps({"type": kind, "payload": {"x": n, "y": n}})


async def greeted(ws: ClientConnection) -> None:
    """Wait until the join's greeting has arrived (presence.sync comes last)."""
    while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != "presence.sync":
        pass


async def drain(ws: ClientConnection) -> None:
    """Read everything the server sends, so no socket holds back."""
    async for _ in ws:
        pass


async def count(url: str, tokens: list[str], port: int, kind: str, frames: int) -> dict[str, Any]:
    """Send `frames` frames of `kind` from the GM; the segments of each server socket."""
    sockets = [await connect(f"{url}&token={token}", max_size=None) for token in tokens]
    readers = []
    try:
        for ws in sockets:
            await greeted(ws)
        gm = sockets[0]
        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        if kind == "token.move":
            await gm.send(json.dumps({"type": "token.add", "payload": TOKEN}))
        await asyncio.sleep(1.0)
        sender = gm.transport.get_extra_info("sockname")[1]
        before = server_sockets(port)
        for n in range(frames):
            await gm.send(frame(kind, n))
            await asyncio.sleep(1.0 / HERTZ)
        await asyncio.sleep(0.5)
        after = server_sockets(port)
    finally:
        for ws in sockets:
            await ws.close()
        for reader in readers:
            reader.cancel()
    to_sender = after[sender] - before[sender]
    watchers = [after[peer] - before[peer] for peer in after if peer != sender]
    return {
        "frames": frames,
        "to_sender": to_sender._asdict() | {"bare_out": to_sender.bare_out},
        "to_watchers": [w._asdict() | {"bare_out": w.bare_out} for w in watchers],
        "server_segments_out_per_frame": (to_sender.out + sum(w.out for w in watchers)) / frames,
    }


def run(frames: int, work: Path) -> dict[str, Any]:
    """Each kind against a fresh server on its defaults."""
    book = dev_book(work / "devkeys")
    tokens = [book.token(0, slot) for slot in range(PLAYERS + 1)]
    results: dict[str, Any] = {}
    for kind in KINDS:
        with default_server(work, work / "devkeys", f"{kind}.db") as (server, url):
            results[kind] = uvloop.run(count(url, tokens, server.port, kind, frames))
    return results


def main(argv: list[str] | None = None) -> None:
    """Count, print, write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "acks.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        kinds = run(args.frames, Path(work))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.acks " + " ".join(sys.argv[1:]),
        "kinds": kinds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for kind, figures in kinds.items():
        sender = figures["to_sender"]
        log(
            f"{kind}: {figures['frames']} frames; the server's socket to the sender sent "
            f"{sender['out']} segments, {sender['data_out']} with data, {sender['bare_out']} "
            f"bare; {figures['server_segments_out_per_frame']:.2f} segments out per frame "
            "on all its sockets"
        )


if __name__ == "__main__":
    main()
