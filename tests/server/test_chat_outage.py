"""Chat when its database fails: the table goes on, chat says so (PROTOCOL.md "Chat and dice").

Outages are a TcpProxy between the server and Postgres: stalled (nothing answers) or cut
(connections reset). Chat disabled is a chat_messages that lacks a column, on both databases.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.config import ChatLimits
from tests.support.chat import chat_of, contents, say
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for, token_payload
from tests.support.sql import execute
from tests.support.table import act, join, new_campaign, news
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio

SECRET = "outage-secret"
# chat_messages as some other tool might have left it: everything but gm_only.
WITHOUT_GM_ONLY = """CREATE TABLE chat_messages (
  id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL, user_id TEXT NOT NULL,
  character_id TEXT, recipient_id TEXT, message_type TEXT NOT NULL, content TEXT NOT NULL,
  created_at TIMESTAMP NOT NULL
)"""


@asynccontextmanager
async def behind_proxy(
    tmp_path: Path, postgres_url: str, **overrides: Any
) -> AsyncIterator[tuple[RunningServer, TcpProxy]]:
    """A server whose database link goes through a TcpProxy, restored before it stops."""
    direct = make_url(postgres_url)
    async with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with serve(settings_for(tmp_path, database_url=url, **overrides)) as server:
            try:
                yield server, proxy
            finally:
                # The final flush needs the database.
                proxy.restore()


async def moves_seen(mover: Peer, watcher: Peer, count: int) -> list[float]:
    """Move t1 `count` times; how long each took to reach the watcher, in seconds."""
    latencies = []
    for x in range(count):
        started = time.monotonic()
        await mover.send("token.move", {"token_id": "t1", "x": x, "y": 0})
        await watcher.until(moved_to(x))
        latencies.append(time.monotonic() - started)
    return latencies


def moved_to(x: int) -> Callable[[dict[str, Any]], bool]:
    """Whether a frame is the move of t1 to `x`."""
    return lambda frame: frame["type"] == "token.move" and frame["payload"]["x"] == x


@pytest.mark.postgres
async def test_chat_waiting_on_a_stalled_database_holds_up_no_move_not_even_its_senders(
    tmp_path: Path, postgres_url: str
) -> None:
    limits = ChatLimits(rate_per_second=0.01, rate_burst=3)
    async with behind_proxy(tmp_path, postgres_url, chat=limits) as (server, proxy):
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        player = await join(server, campaign, "pl-bo")
        await act(gm, "token.add", token_payload("t1"))
        await news(player)
        proxy.stall()

        # The first chat.send is under way (its insert hangs); three wait; a fourth is refused.
        await gm.send("chat.send", {"content": 0})
        await gm.roundtrip()
        for n in range(1, 5):
            await gm.send("chat.send", {"content": n})
        waiting = await gm.until(lambda f: f["type"] == "error")
        stalled = await moves_seen(gm, player, 20)
        published_while_stalled = chat_of(await news(player))
        proxy.restore()
        delivered = [
            await player.until(lambda f: f["type"] == "chat.message", timeout=TIMEOUT * 2)
            for _ in range(3)
        ]
        late = await gm.until(lambda f: f["type"] == "error", timeout=TIMEOUT * 2)

    assert waiting["payload"]["code"] == "rate_limited"
    assert "waiting" in waiting["payload"]["message"]
    assert published_while_stalled == []
    # Moves took what they take with a healthy database (the insert waits up to 10 s).
    assert statistics.median(stalled) < 0.1
    assert max(stalled) < 1.0
    # Once the database answers, the chat.sends go out in the order sent, at the user's rate.
    assert contents(delivered) == [0, 1, 2]
    assert late["payload"]["code"] == "rate_limited"


@pytest.mark.postgres
async def test_a_chat_send_that_cannot_be_stored_answers_db_error_and_broadcasts_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    limits = ChatLimits(rate_per_second=100.0, rate_burst=100)
    async with behind_proxy(tmp_path, postgres_url, chat=limits) as (server, proxy):
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        player = await join(server, campaign, "pl-bo")
        await act(gm, "token.add", token_payload("t1"))
        proxy.cut()

        refused = await say(gm, "lost to the outage", roll="1d20")
        latencies = await moves_seen(gm, player, 10)
        heard = chat_of(await news(player))
        proxy.restore()
        # The pool finds its connections gone one attempt at a time; each attempt is answered.
        for _ in range(20):
            answer = await say(gm, "back again")
            if answer["type"] == "chat.message":
                break
            assert answer["payload"]["code"] == "db_error", answer
        rows = await server.services.chat_store.recent(campaign, 10)

    assert refused["type"] == "error"
    assert refused["payload"] == {"code": "db_error", "message": "the message could not be stored"}
    assert heard == []
    assert max(latencies) < 1.0
    assert answer["type"] == "chat.message"
    assert [row.content for row in rows] == ['"back again"']


async def test_chat_disabled_by_an_unusable_table_says_why_and_the_rest_of_the_table_works(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await execute(database_url, WITHOUT_GM_ONLY)
    settings = settings_for(tmp_path, database_url=database_url, internal_api_secret=SECRET)
    reason = "chat_messages lacks column gm_only"
    with caplog.at_level(logging.ERROR, logger="vtt.chat"):
        async with (
            serve(settings) as server,
            httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
        ):
            ready = await http.get("/ready")
            campaign = new_campaign()
            gm = await join(server, campaign, "gm-ada", "gm")
            player = await join(server, campaign, "pl-bo")
            refused = await say(player, "anyone there?")
            moved = await act(gm, "token.add", token_payload("t1"))
            broadcast = await http.post(
                "/internal/broadcast",
                headers={"Authorization": f"Bearer {SECRET}"},
                json={
                    "campaign_id": campaign,
                    "user_id": "gm-ada",
                    "message_type": "text",
                    "content": "hi",
                },
            )
            heard = chat_of(await news(player))

    (startup,) = [r for r in caplog.records if r.getMessage().startswith("chat disabled")]
    assert getattr(startup, "reason", None) == reason
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "chat": f"disabled: {reason}"},
    )
    assert gm.history["payload"] == {"messages": [], "incomplete": True}
    assert refused["payload"] == {"code": "db_error", "message": f"chat is unavailable: {reason}"}
    assert [frame["type"] for frame in moved] == ["token.add"]
    assert (broadcast.status_code, broadcast.json()["code"]) == (503, "db_error")
    assert heard == []
