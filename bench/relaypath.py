"""Our code's own cost of a relayed frame (issue 15.2): a token.move against a cursor.move.

The cursor mode of bench.run measures the whole server process, kernel included, over the
frames it delivered. A cursor goes to 5 of a table's 6 clients and a move to all 6 (the
sender's echo is its acknowledgement), so the cost of receiving one frame (the wake-up,
epoll, the read, the ACK) is shared by one delivery fewer. This isolates what our code adds:
one real Session with a GM and 5 players, each a real Connection whose socket only counts
what it is given (no system call), and the sender's frames handed to `Connection._take` as
the transport hands each complete text message. CPU time (process_time) per sent and per
delivered frame, in chunks, median of the chunks, for each kind in fresh sessions, median
of --repeats. Nothing here waits on the rate limits: the bucket, the read pace of signals
and the cursor pacer are set far above the load (they still run on every frame).

    .venv/bin/python -m bench.relaypath [--frames 140000] [--repeats 3] [--out FILE]

Prints a summary; writes the figures as JSON (default bench/results/relaypath.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from app import connection as connection_module
from app.auth import Identity
from app.auth.roles import DevClaimRoles
from app.chat import CampaignChat
from app.config import Settings
from app.connection import Connection, Taker
from app.metrics import Metrics
from app.model import Actor
from app.persistence.chat import MemoryChatStore
from app.rules import new_state
from app.session import Session
from bench.run import RESULTS

MEMBERS = 6
CHUNKS = 7
KINDS = ("token.move", "cursor.move")
# Far above any load here: the limits run on every frame but never hold one back.
UNLIMITED = 1e12


class CountingSocket:
    """A FrameSocket that is always writable and only counts the frames it is given."""

    def __init__(self) -> None:
        self.writes = 0

    def writable(self) -> bool:
        """Always."""
        return True

    async def wait_writable(self) -> None:
        """Never waits."""

    def write(self, frame: bytes) -> None:
        """Count one write."""
        self.writes += 1

    def try_write(self, frame: bytes) -> bool:
        """Count one write; it always goes."""
        self.writes += 1
        return True

    def abort(self) -> None:
        """Nothing to drop."""

    def take_messages(self, taker: Taker | None) -> None:
        """The bench hands frames to the connection itself."""

    def draining(self) -> bool:
        """No shutdown here."""
        return False


async def _send(message: Any) -> None:
    """The ASGI send, never used: every frame goes through the socket."""


def frames(kind: str, count: int) -> list[str]:
    """`count` client frames of `kind`, each a new position, as the generator sends them."""
    if kind == "token.move":
        template = '{"type":"token.move","payload":{"token_id":"t1","x":%d,"y":%d}}'
    else:
        template = '{"type":"cursor.move","payload":{"x":%d,"y":%d}}'
    return [template % (i % 997, i) for i in range(count)]


async def table() -> tuple[Session, list[Connection], list[CountingSocket]]:
    """A session with a GM and players on counting sockets, and a visible token to move."""
    base = Settings(env="test")
    settings = replace(base, rate_per_second=UNLIMITED, rate_burst=10**12, cursor_rate=UNLIMITED)
    metrics = Metrics()
    chat = CampaignChat("c1", settings.chat, MemoryChatStore(), DevClaimRoles())
    session = Session(new_state("c1"), settings, metrics, chat)
    members, sockets = [], []
    for i in range(MEMBERS):
        user_id = f"user_{i:02d}_0123456789abcdef"
        socket = CountingSocket()
        member = Connection(
            _send,
            socket,
            Actor(user_id, "gm" if i == 0 else "player"),
            Identity(user_id=user_id, claims={}, expires_at=0.0),
            "c1",
            settings,
            metrics,
        )
        await session.join(member)
        members.append(member)
        sockets.append(socket)
    token = {"token_id": "t1", "name": "a", "x": 0, "y": 0, "width": 1, "height": 1}
    add = {"type": "token.add", "payload": {**token, "visible": True}}
    if not members[0]._take(session, json.dumps(add)):
        raise RuntimeError("the token.add was not taken")
    return session, members, sockets


async def measure(kind: str, count: int) -> dict[str, float]:
    """One kind in a fresh session: CPU per sent and per delivered frame (us), writes per sent."""
    session, members, sockets = await table()
    sender = members[0]
    batch = frames(kind, count)
    size = count // CHUNKS
    before = sum(socket.writes for socket in sockets)
    per_sent = []
    gc.collect()
    for chunk in range(CHUNKS):
        part = batch[chunk * size : (chunk + 1) * size]
        started = time.process_time()
        for frame in part:
            if not sender._take(session, frame):
                raise RuntimeError(f"a {kind} was left to the reader")
        per_sent.append((time.process_time() - started) / size * 1e6)
    writes = (sum(socket.writes for socket in sockets) - before) / (size * CHUNKS)
    sent_us = statistics.median(per_sent)
    return {
        "cpu_per_sent_us": sent_us,
        "cpu_per_delivered_us": sent_us / writes,
        "deliveries_per_sent": writes,
    }


async def run(count: int, repeats: int) -> dict[str, Any]:
    """Every kind `repeats` times, alternating; the medians and the cursor's ratio to a move."""
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind in KINDS:
            runs[kind].append(await measure(kind, count))
    summary = {
        kind: {
            key: statistics.median(run[key] for run in runs[kind])
            for key in ("cpu_per_sent_us", "cpu_per_delivered_us", "deliveries_per_sent")
        }
        for kind in KINDS
    }
    move, cursor = summary["token.move"], summary["cursor.move"]
    ratio = cursor["cpu_per_delivered_us"] / move["cpu_per_delivered_us"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench.relaypath " + " ".join(sys.argv[1:]),
        "frames": count,
        "repeats": repeats,
        "members": MEMBERS,
        "summary": summary,
        "cursor_per_delivered_vs_move": ratio,
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=140_000, help="frames per kind and run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "relaypath.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure, print the summary, write the JSON."""
    args = parse_args(argv)
    if args.frames < CHUNKS:
        raise SystemExit(f"--frames must be at least {CHUNKS}")
    # Signals are read at most this fast per connection; the bench sends far faster.
    connection_module.UNMETERED_PER_SECOND = UNLIMITED
    results = uvloop.run(run(args.frames, args.repeats))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for kind, figures in results["summary"].items():
        print(
            f"{kind}: {figures['cpu_per_sent_us']:.2f} us per sent frame, "
            f"{figures['deliveries_per_sent']:g} deliveries, "
            f"{figures['cpu_per_delivered_us']:.3f} us per delivered frame"
        )
    print(f"cursor.move per delivered frame: {results['cursor_per_delivered_vs_move']:.2f}x a move")
    return results


if __name__ == "__main__":
    main()
