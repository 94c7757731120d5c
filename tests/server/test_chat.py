"""Chat through a real server, on SQLite and on Postgres: who hears what, refusals, the rate,
the history a join gets, and what a resume replays (PROTOCOL.md "Chat and dice")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.config import ChatLimits
from app.model import Role
from app.persistence.chat import StoredMessage
from tests.support.chat import CREATED_AT, chat_of, contents, history_of, said, say, user_of
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for, token_payload
from tests.support.table import act, frames_before_pong, join, new_campaign, news

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def chat_server(
    tmp_path: Path, database_url: str, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """A server on `database_url` (migrated at startup), dev auth."""
    async with serve(settings_for(tmp_path, database_url=database_url, **overrides)) as server:
        yield server


async def stored(server: RunningServer, campaign: str) -> list[StoredMessage]:
    """What chat_messages holds for `campaign`, oldest first."""
    async with asyncio.timeout(TIMEOUT):
        return await server.services.chat_store.recent(campaign, 1000)


def last_seq(peer: Peer) -> int:
    """The highest seq `peer` has received."""
    seq: int = max(frame["seq"] for frame in peer.received if "seq" in frame)
    return seq


# --- audiences ----------------------------------------------------------------------------------


async def test_a_public_message_reaches_every_member_with_the_next_seq_and_is_stored_first(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        bo = await join(server, campaign, "pl-bo")
        await act(gm, "token.add", token_payload("t1"))

        sent = await said(ana, {"text": "Hello, table"}, message_type="text")

        for peer in (gm, bo):
            assert chat_of(await news(peer)) == [sent]
        assert (sent["campaign_id"], sent["user_id"], sent["seq"]) == (campaign, "pl-ana", 2)
        payload = sent["payload"]
        assert set(payload) == {
            "id",
            "campaign_id",
            "user_id",
            "message_type",
            "content",
            "gm_only",
            "created_at",
        }
        assert uuid.UUID(payload["id"]).version == 4
        assert (payload["campaign_id"], payload["user_id"]) == (campaign, "pl-ana")
        assert (payload["message_type"], payload["content"]) == ("text", {"text": "Hello, table"})
        assert payload["gm_only"] is False
        assert CREATED_AT.fullmatch(payload["created_at"])
        assert [row.id for row in await stored(server, campaign)] == [payload["id"]]
        # The seq is the state's: the next change continues from it.
        moved = await act(gm, "token.move", {"token_id": "t1", "x": 1, "y": 1})
        assert [frame["seq"] for frame in moved] == [3]


async def test_a_players_gm_only_message_reaches_the_gms_and_the_senders_connections_only(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        co_gm = await join(server, campaign, "gm-cy", "gm")
        ana = await join(server, campaign, "pl-ana")
        ana_tab = await join(server, campaign, "pl-ana")
        bo = await join(server, campaign, "pl-bo")

        sent = await said(ana, "I pocket the gem", gm_only=True)
        await news(ana)

        assert sent["payload"]["gm_only"] is True
        for peer in (gm, co_gm, ana_tab):
            assert chat_of(await news(peer)) == [sent]
        assert chat_of(await news(bo)) == []
        # A GM's own gm_only reaches the GMs and no player.
        note = await said(gm, "the gem is cursed", gm_only=True)
        assert chat_of(await news(co_gm)) == [note]
        for peer in (ana, ana_tab, bo):
            assert chat_of(await news(peer)) == []


async def test_a_whisper_reaches_exactly_the_connections_of_its_sender_and_its_recipient(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        ana_tab = await join(server, campaign, "pl-ana")
        bo = await join(server, campaign, "pl-bo")
        bo_tab = await join(server, campaign, "pl-bo")
        cy = await join(server, campaign, "pl-cy")

        sent = await said(ana, "meet me by the well", recipient_id="pl-bo")
        await news(ana)

        assert sent["payload"]["recipient_id"] == "pl-bo"
        assert sent["payload"]["gm_only"] is False
        for peer in (ana_tab, bo, bo_tab):
            assert chat_of(await news(peer)) == [sent]
        for peer in (gm, cy):
            assert chat_of(await news(peer)) == []
        reply = await said(gm, "you hear footsteps", recipient_id="pl-cy")
        assert chat_of(await news(cy)) == [reply]
        for peer in (ana, ana_tab, bo, bo_tab):
            assert chat_of(await news(peer)) == []


async def test_a_player_speaks_as_a_character_whose_token_they_own_and_a_gm_as_any(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        await act(ana, "token.add", token_payload("t-ana", character_id="pc-ana"))

        mine = await said(ana, "I draw my sword", character_id="pc-ana")
        voiced = await said(gm, "Halt!", character_id="npc-guard")

        assert mine["payload"]["character_id"] == "pc-ana"
        assert voiced["payload"]["character_id"] == "npc-guard"


async def test_the_server_rolls_the_dice_of_a_message_and_the_roll_follows_its_audience(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")

        public = await said(ana, "attack", roll="/roll 2d20kh1+5 longsword")
        secret = await said(gm, "stealth check", roll="d20", gm_only=True)

        roll = public["payload"]["roll"]
        assert (roll["expression"], roll["label"]) == ("2d20kh1+5", "longsword")
        dice = roll["terms"][0]["dice"]
        assert [d["kept"] for d in dice].count(True) == 1
        assert roll["total"] == max(d["value"] for d in dice) + 5
        assert chat_of(await news(gm)) == [public, secret]
        assert chat_of(await news(ana)) == [public]
        assert secret["payload"]["roll"]["expression"] == "1d20"
        rows = await stored(server, campaign)
        assert [row.roll is not None for row in rows] == [True, True]


# --- refusals -----------------------------------------------------------------------------------

# (what, chat.send fields, code, a phrase of the message); the sender is the player pl-ana.
REFUSALS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "a recipient who is not a member",
        {"recipient_id": "pl-nobody"},
        "not_found",
        "not a member",
    ),
    ("a whisper to oneself", {"recipient_id": "pl-ana"}, "invalid_request", "someone else"),
    (
        "gm_only with a recipient",
        {"gm_only": True, "recipient_id": "pl-bo"},
        "invalid_request",
        "either gm_only or to a recipient_id",
    ),
    (
        "a character whose token the player does not own",
        {"character_id": "pc-bo"},
        "forbidden",
        "characters whose tokens they own",
    ),
    # 8,192 characters are 8,194 bytes encoded, quotes included.
    ("content over 8 KiB", {"content": "x" * 8192}, "invalid_payload", "at most 8192"),
    (
        "a roll that does not parse",
        {"roll": "2d20kh"},
        "invalid_payload",
        "chat.send roll: 'kh' at position 4 needs a count",
    ),
    (
        "a roll with too many dice",
        {"roll": "101d6"},
        "invalid_payload",
        "chat.send roll: at most 100 dice per term",
    ),
    ("a message_type over 32 chars", {"message_type": "m" * 33}, "invalid_payload", "32"),
]


async def test_every_refused_chat_send_answers_its_code_and_nothing_is_sent_stored_or_numbered(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        bo = await join(server, campaign, "pl-bo")
        await act(bo, "token.add", token_payload("t-bo", character_id="pc-bo"))
        session = server.services.manager.sessions[campaign]
        seq = session.state.seq

        for what, fields, code, says in REFUSALS:
            answer = await say(ana, **{"content": "hello", **fields})
            assert answer["type"] == "error", what
            assert answer["payload"]["code"] == code, (what, answer)
            assert says in answer["payload"]["message"], (what, answer)
            assert "seq" not in answer

        for peer in (gm, bo):
            assert chat_of(await news(peer)) == []
        assert await stored(server, campaign) == []
        assert session.state.seq == seq


async def test_the_chat_rate_is_per_user_across_connections_and_answers_rate_limited(
    tmp_path: Path, database_url: str
) -> None:
    limits = ChatLimits(rate_per_second=0.01, rate_burst=3)
    async with chat_server(tmp_path, database_url, chat=limits) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        ana_tab = await join(server, campaign, "pl-ana")
        bo = await join(server, campaign, "pl-bo")

        answers = [await say(peer, n) for n, peer in enumerate((ana, ana_tab, ana, ana_tab))]
        other = await say(bo, "my own allowance")

        assert [a["type"] for a in answers] == ["chat.message"] * 3 + ["error"]
        assert answers[-1]["payload"]["code"] == "rate_limited"
        assert other["type"] == "chat.message"
        assert contents(chat_of(await news(gm))) == [0, 1, 2, "my own allowance"]


# --- history ------------------------------------------------------------------------------------


async def test_a_join_gets_only_the_history_its_member_may_see_oldest_first(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        ana = await join(server, campaign, "pl-ana")
        await join(server, campaign, "pl-bo")
        assert gm.history["payload"] == {"messages": []}
        live = [
            await said(gm, "public"),
            await said(gm, "gm note", gm_only=True),
            await said(ana, "ana to the gm", gm_only=True),
            await said(ana, "ana to bo", recipient_id="pl-bo"),
            await said(gm, "gm to ana", recipient_id="pl-ana"),
        ]

        seen = {
            user: history_of(await server.join(campaign, user))
            for user in ("pl-cy", "pl-ana", "pl-bo")
        }
        gm_again = await server.join(campaign, "gm-ada", "gm")

        assert seen == {
            "pl-cy": ["public"],
            "pl-ana": ["public", "ana to the gm", "ana to bo", "gm to ana"],
            "pl-bo": ["public", "ana to bo"],
        }
        assert gm_again.history["payload"] == {
            "messages": [live[i]["payload"] for i in (0, 1, 2, 4)]
        }
        # Only a full join gets history: it comes third, and after it live traffic.
        assert [f["type"] for f in gm_again.received] == ["state.sync", "map.list", "chat.history"]
        assert gm_again.history["user_id"] == "gm-ada"
        assert "seq" not in gm_again.history


async def test_history_is_filtered_for_its_recipient_before_it_is_limited(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, chat=ChatLimits(history_messages=2))) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        for text in ("one", "two", "three"):
            await said(gm, text)
        for note in range(3):
            await said(gm, f"note {note}", gm_only=True)

        player = await server.join(campaign, "pl-ana")
        again = await server.join(campaign, "gm-ada", "gm")

    assert history_of(player) == ["two", "three"]
    assert history_of(again) == ["note 1", "note 2"]


async def test_history_outlives_a_restart_loaded_from_the_table_with_rolls_and_ids(
    tmp_path: Path, database_url: str
) -> None:
    campaign = new_campaign()
    async with chat_server(tmp_path, database_url) as server:
        gm = await join(server, campaign, "gm-ada", "gm")
        live = [await said(gm, "before the restart"), await said(gm, "a roll", roll="3d6")]
    async with chat_server(tmp_path, database_url) as server:
        player = await server.join(campaign, "pl-ana")
    assert player.history["payload"] == {"messages": [m["payload"] for m in live]}


# --- resume -------------------------------------------------------------------------------------


async def test_a_resume_replays_missed_chat_to_exactly_those_who_would_have_received_it(
    tmp_path: Path, database_url: str
) -> None:
    async with chat_server(tmp_path, database_url) as server:
        campaign = new_campaign()
        gm = await join(server, campaign, "gm-ada", "gm")
        bo = await join(server, campaign, "pl-bo")
        away = {
            "pl-ana": await join(server, campaign, "pl-ana"),
            "gm-cy": await join(server, campaign, "gm-cy", "gm"),
        }
        await act(gm, "token.add", token_payload("t1"))
        points = {}
        for user, peer in away.items():
            await news(peer)
            points[user] = (last_seq(peer), peer.sync["payload"]["epoch"], user_of(peer))
            await peer.close()

        public = await said(gm, "while you were away")
        secret = await said(gm, "for GMs only", gm_only=True)
        whisper = await said(gm, "for bo only", recipient_id="pl-bo")
        done = await act(gm, "token.move", {"token_id": "t1", "x": 5, "y": 5})
        (moved,) = [frame for frame in done if frame["type"] == "token.move"]

        replayed = {}
        for user, (since, epoch, _) in points.items():
            role: Role = "gm" if user.startswith("gm") else "player"
            url = server.ws_url(campaign, server.token(user, role), since=since, epoch=epoch)
            back = await Peer.open(url)
            resume = await back.expect("state.resume")
            assert (resume["payload"]["from_seq"], resume["payload"]["to_seq"]) == (
                since + 1,
                moved["seq"],
            )
            replayed[user] = await frames_before_pong(back)
        assert chat_of(await news(bo)) == [public, whisper]

    assert replayed["pl-ana"] == [public, moved]
    assert replayed["gm-cy"] == [public, secret, moved]
