"""Chat from outside the table, through the real server: POST /internal/broadcast, the Go
service's chat_messages with its rows, usernames, and chat's metrics (PROTOCOL.md "Chat and
dice")."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.chat import chat_of, history_of, said
from tests.support.harness import TIMEOUT, RunningServer, serve, settings_for
from tests.support.sql import (
    GO_CAMPAIGN,
    GO_INSERT,
    GO_POSTGRES_DDL,
    GO_ROWS,
    execute,
)
from tests.support.table import join, new_campaign, news

pytestmark = pytest.mark.anyio

SECRET = "internal-" + uuid.uuid4().hex
PATH = "/internal/broadcast"
AUTHORIZED = {"Authorization": f"Bearer {SECRET}"}
USERS = (
    "CREATE TABLE users (id text PRIMARY KEY, username text)",
    "INSERT INTO users VALUES ('gm-ada', 'Ada the GM')",
)


@asynccontextmanager
async def internal_server(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    """A server with an INTERNAL_API_SECRET, a users table naming gm-ada, and an HTTP client."""
    await execute(database_url, *USERS)
    settings = settings_for(tmp_path, database_url=database_url, internal_api_secret=SECRET)
    async with (
        serve(settings) as server,
        httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http,
    ):
        yield server, http


def body(campaign: str, **fields: Any) -> dict[str, Any]:
    """A broadcast body from gm-ada into `campaign`, with `fields` changed."""
    return {
        "campaign_id": campaign,
        "user_id": "gm-ada",
        "message_type": "text",
        "content": {"text": "The bridge collapses!"},
        "gm_only": False,
        **fields,
    }


async def test_without_a_secret_the_server_answers_404_at_internal_broadcast(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as http:
        answers = [
            (await http.request(method, PATH, headers=AUTHORIZED)).status_code
            for method in ("POST", "GET", "PUT")
        ]
    assert answers == [404, 404, 404]


async def test_internal_broadcast_refuses_a_bad_request_and_nothing_reaches_the_table(
    tmp_path: Path, database_url: str
) -> None:
    async with internal_server(tmp_path, database_url) as (server, http):
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        good = json.dumps(body(campaign)).encode()
        answers = {
            "GET": await http.get(PATH, headers=AUTHORIZED),
            "no secret": await http.post(PATH, content=good),
            "another secret": await http.post(
                PATH, content=good, headers={"Authorization": "Bearer nope"}
            ),
            "over 64 KiB": await http.post(
                PATH, content=good + b" " * (64 * 1024), headers=AUTHORIZED
            ),
            "not JSON": await http.post(PATH, content=b"{", headers=AUTHORIZED),
            "a field refused": await http.post(
                PATH, json=body(campaign, gm_only="yes"), headers=AUTHORIZED
            ),
        }
        heard = chat_of(await news(gm))
        rows = await server.services.chat_store.recent(campaign, 10)

    assert {what: answer.status_code for what, answer in answers.items()} == {
        "GET": 405,
        "no secret": 401,
        "another secret": 401,
        "over 64 KiB": 413,
        "not JSON": 400,
        "a field refused": 400,
    }
    assert answers["GET"].headers["allow"] == "POST"
    assert answers["not JSON"].json()["code"] == "invalid_json"
    assert answers["a field refused"].json()["code"] == "invalid_payload"
    assert heard == []
    assert rows == []


async def test_a_broadcast_to_a_live_campaign_reaches_its_audience_once_with_the_next_seq(
    tmp_path: Path, database_url: str
) -> None:
    async with internal_server(tmp_path, database_url) as (server, http):
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        player = await join(server, campaign, "pl-bo")
        session = server.services.manager.sessions[campaign]
        seq = session.state.seq

        stored = await http.post(
            PATH, json=body(campaign, id="action-1", roll="1d6 falling"), headers=AUTHORIZED
        )
        heard = [chat_of(await news(peer)) for peer in (gm, player)]
        again = await http.post(PATH, json=body(campaign, id="action-1"), headers=AUTHORIZED)
        heard_again = [chat_of(await news(peer)) for peer in (gm, player)]
        secret = await http.post(
            PATH, json=body(campaign, gm_only=True, content="for the GM"), headers=AUTHORIZED
        )
        heard_secret = [chat_of(await news(peer)) for peer in (gm, player)]
        late = await server.join(campaign, "pl-cy")

    assert [stored.status_code, again.status_code, secret.status_code] == [204, 204, 204]
    (to_gm,), (to_player,) = heard
    assert to_gm == to_player
    assert (to_gm["seq"], to_gm["user_id"]) == (seq + 1, "gm-ada")
    message = to_gm["payload"]
    assert message["username"] == "Ada the GM"
    assert message["content"] == {"text": "The bridge collapses!"}
    assert (message["roll"]["expression"], message["roll"]["label"]) == ("1d6", "falling")
    assert heard_again == [[], []]
    (gm_secret,), nothing = heard_secret
    assert (gm_secret["seq"], gm_secret["payload"]["content"], nothing) == (
        seq + 2,
        "for the GM",
        [],
    )
    assert late.history["payload"]["messages"] == [message]


async def test_a_broadcast_to_a_campaign_not_live_here_shows_in_the_next_joins_history(
    tmp_path: Path, database_url: str
) -> None:
    async with internal_server(tmp_path, database_url) as (server, http):
        campaign = new_campaign()
        stored = await http.post(PATH, json=body(campaign, content="while nobody was here"))
        refused = stored.status_code
        stored = await http.post(
            PATH, json=body(campaign, content="while nobody was here"), headers=AUTHORIZED
        )
        assert campaign not in server.services.manager.sessions
        player = await server.join(campaign, "pl-bo")

    assert (refused, stored.status_code) == (401, 204)
    assert history_of(player) == ["while nobody was here"]


async def test_usernames_come_from_the_users_table_once_per_connection(
    tmp_path: Path, database_url: str
) -> None:
    async with internal_server(tmp_path, database_url) as (server, _):
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        player = await join(server, campaign, "pl-bo")
        named = await said(gm, "welcome")
        # The name was read when gm-ada connected; a rename shows on the next connection.
        await execute(server.settings.database_url or "", "UPDATE users SET username = 'Ada'")
        still = await said(gm, "still me")
        unnamed = await said(player, "hello")
        renamed = await said(await join(server, campaign, "gm-ada", "gm"), "renamed")

    assert named["payload"]["username"] == still["payload"]["username"] == "Ada the GM"
    assert "username" not in unnamed["payload"]
    assert renamed["payload"]["username"] == "Ada"


async def test_chat_is_counted_in_and_out_with_rolls_and_broadcasts_and_no_content_is_told(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret_words = "the-password-is-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG, logger="vtt"):
        async with internal_server(tmp_path, database_url) as (server, http):
            campaign = new_campaign()
            gm = await join(server, campaign, "gm-ada", "gm")
            await join(server, campaign, "pl-bo")
            await said(gm, secret_words, roll="2d6")
            await said(gm, {"note": secret_words}, gm_only=True)
            await http.post(PATH, json=body(campaign, content=secret_words, roll="1d4"))
            await http.post(
                PATH, json=body(campaign, content=secret_words, roll="1d4"), headers=AUTHORIZED
            )
            await http.post(PATH, content=secret_words.encode(), headers=AUTHORIZED)
            await news(gm)
            scraped = (await http.get("/metrics")).text
            registry = server.services.metrics.registry

            def sample(name: str, **labels: str) -> float | None:
                return registry.get_sample_value(name, labels)

            counts = {
                "in": sample("vtt_messages_in_total", type="chat.send"),
                "out": sample("vtt_messages_out_total", type="chat.message"),
                "history": sample("vtt_messages_out_total", type="chat.history"),
                "rolls": sample("vtt_chat_rolls_total"),
                "204": sample("vtt_internal_broadcasts_total", status="204"),
                "401": sample("vtt_internal_broadcasts_total", status="401"),
                "400": sample("vtt_internal_broadcasts_total", status="400"),
            }
            # A failure that is logged, with the database's own words as its reason.
            await execute(server.settings.database_url or "", "DROP TABLE chat_messages")
            lost = await http.post(
                PATH, json=body(campaign, content=secret_words), headers=AUTHORIZED
            )

    # Out: the public message to both members and the broadcast to both, the note to the GM.
    assert counts == {
        "in": 2,
        "out": 5,
        "history": 2,
        "rolls": 2,
        "204": 1,
        "401": 1,
        "400": 1,
    }
    assert secret_words not in scraped
    assert lost.status_code == 503
    ours = [record for record in caplog.records if record.name.startswith("vtt")]
    assert "internal broadcast not stored" in [record.getMessage() for record in ours]
    told = [f"{record.getMessage()} {record.__dict__}" for record in ours]
    assert not [line for line in told if secret_words in line]


@pytest.mark.postgres
async def test_the_go_services_chat_table_and_rows_show_on_join_and_are_never_rewritten(
    tmp_path: Path, postgres_url: str
) -> None:
    await execute(postgres_url, *GO_POSTGRES_DDL)
    await execute(
        postgres_url,
        "INSERT INTO users (id, username) VALUES ('user_gm', 'Game Master'), ('user_ana', 'Ana')",
    )
    for row in GO_ROWS:
        await execute(postgres_url, GO_INSERT, campaign=GO_CAMPAIGN, **row)
    rows = "SELECT xmin::text, * FROM chat_messages ORDER BY created_at"
    before = await execute(postgres_url, rows)

    async with serve(settings_for(tmp_path, database_url=postgres_url)) as server:
        ana = await server.join(GO_CAMPAIGN, "user_ana")
        gm = await server.join(GO_CAMPAIGN, "user_gm", "gm")
        sent = await said(ana, {"text": "a new message"})
    after = await execute(postgres_url, rows)

    ana_sees = ana.history["payload"]["messages"]
    assert [m["content"] for m in ana_sees] == [json.loads(r["content"]) for r in GO_ROWS[:3]]
    assert [m["username"] for m in ana_sees] == ["Game Master", "Ana", "Ana"]
    assert [m["created_at"] for m in ana_sees] == [
        "2025-03-01T20:00:00Z",
        "2025-03-01T20:01:00Z",
        "2025-03-01T20:02:00Z",
    ]
    assert ana_sees[1]["character_id"] == GO_ROWS[1]["character"]
    assert ana_sees[2]["recipient_id"] == "user_gm"
    assert [m["id"] for m in ana_sees] == [str(row.id) for row in before[:3]]
    gm_sees = gm.history["payload"]["messages"]
    assert [m["gm_only"] for m in gm_sees] == [False, False, False, True]
    # Not one Go row was rewritten (same xmin); the new one sits beside them, a UUID.
    assert after[:4] == before
    assert [str(row.id) for row in after[4:]] == [sent["payload"]["id"]]
