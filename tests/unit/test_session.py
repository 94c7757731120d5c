"""app.session.Session on fake members: joins, seq, fan-out per audience, resume, caps, saving."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest
from msgspec import UNSET

from app.config import Settings
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.model import Role
from app.protocol import ChatMessage, decode_stored_state
from app.rules import new_state
from app.session import Session, SessionClosed
from tests.support.fakes import FakeMember, campaign_chat, change
from tests.support.harness import map_payload, token_payload

pytestmark = pytest.mark.anyio

SETTINGS = Settings(env="test")


def session_of(**overrides: Any) -> Session:
    """A session of a fresh campaign `c1`."""
    settings = replace(SETTINGS, **overrides)
    return Session(new_state("c1"), settings, Metrics(), campaign_chat("c1", settings))


async def seated(session: Session, member: FakeMember) -> FakeMember:
    """`member`, joined, with its greeting taken."""
    await session.join(member)
    member.take()
    return member


async def table(session: Session) -> tuple[FakeMember, FakeMember]:
    """A GM and a player joined to `session`, greetings taken."""
    gm = await seated(session, FakeMember("gm-ada", "gm"))
    player = await seated(session, FakeMember("pl-bo"))
    return gm, player


# --- joining and leaving ------------------------------------------------------------------------


async def test_a_joining_member_gets_the_state_at_the_current_seq_the_map_list_then_chat() -> None:
    session = session_of()
    gm = FakeMember("gm-ada", "gm")

    resumed = await session.join(gm)

    assert resumed is False
    sync, listing, history = gm.received
    assert (sync["type"], sync["campaign_id"], sync["user_id"], sync["seq"]) == (
        "state.sync",
        "c1",
        "gm-ada",
        0,
    )
    assert sync["payload"]["epoch"] == session.epoch
    assert listing == {
        "type": "map.list",
        "campaign_id": "c1",
        "user_id": "gm-ada",
        "payload": {"maps": [], "active_map_id": ""},
    }
    assert history == {
        "type": "chat.history",
        "campaign_id": "c1",
        "user_id": "gm-ada",
        "payload": {"messages": []},
    }


async def test_a_gm_joins_with_the_map_library_and_a_player_without_it() -> None:
    session = session_of()
    gm, player = FakeMember("gm-ada", "gm"), FakeMember("pl-bo")

    await session.join(gm)
    await session.join(player)

    assert gm.received[0]["payload"]["saved_maps"] == {}
    assert "saved_maps" not in player.received[0]["payload"]


async def test_a_member_that_left_receives_nothing_more_and_leaving_again_changes_nothing() -> None:
    session = session_of()
    gm, player = await table(session)

    await session.leave(player)
    await session.leave(player)
    await session.submit(gm, change("token.add", token_payload("t1")))

    assert player.take() == []
    assert [member.actor.user_id for member in session.members] == ["gm-ada"]


async def test_a_session_evicted_while_a_join_waited_refuses_that_join() -> None:
    session = session_of()
    session.closed = True

    with pytest.raises(SessionClosed):
        await session.join(FakeMember("gm-ada", "gm"))

    assert not session.members


async def test_a_state_loaded_without_a_library_gets_an_empty_one_and_a_fresh_epoch() -> None:
    state = new_state("c1")
    state.saved_maps = UNSET
    first = Session(state, SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))
    epoch = first.epoch
    second = Session(state, SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))

    assert first.state.saved_maps == {}
    assert second.epoch != epoch


# --- caps ---------------------------------------------------------------------------------------


async def test_a_users_connection_past_the_per_user_cap_is_refused_4429_and_not_added() -> None:
    session = session_of(max_connections_per_user=2)
    for _ in range(2):
        await session.join(FakeMember("pl-bo"))

    with pytest.raises(CloseConnection) as caught:
        await session.join(FakeMember("pl-bo"))
    await session.join(FakeMember("pl-cy"))

    assert caught.value.code == CloseCode.TOO_MANY_CONNECTIONS
    assert caught.value.reason == "too many connections for user"
    assert len(session.members) == 3


async def test_a_connection_past_the_per_campaign_cap_is_refused_4429_and_not_added() -> None:
    session = session_of(max_connections_per_campaign=2)
    await session.join(FakeMember("gm-ada", "gm"))
    await session.join(FakeMember("pl-bo"))
    late = FakeMember("pl-cy")

    with pytest.raises(CloseConnection) as caught:
        await session.join(late)

    assert caught.value.code == CloseCode.TOO_MANY_CONNECTIONS
    assert caught.value.reason == "too many connections to campaign"
    assert late not in session.members
    assert late.received == []


def bounded(max_state_bytes: int, stored: bytes | None = None) -> Session:
    """A session of `c1` (fresh, or loaded from `stored`) whose stored state may hold
    `max_state_bytes`; loaded, it measures `stored` as the manager does."""
    settings = replace(SETTINGS, limits=replace(SETTINGS.limits, max_state_bytes=max_state_bytes))
    chat = campaign_chat("c1", settings)
    state = new_state("c1") if stored is None else decode_stored_state(stored, "c1")
    size = 0 if stored is None else len(stored)
    return Session(state, settings, Metrics(), chat, stored_bytes=size)


def errors_of(member: FakeMember) -> list[str]:
    return [m["payload"]["code"] for m in member.take() if m["type"] == "error"]


async def add_until_refused(session: Session, gm: FakeMember) -> int:
    """Add tokens t1, t2, ... until one is refused; the number of the refused one."""
    added = 0
    while not errors_of(gm):
        added += 1
        await session.submit(gm, change("token.add", token_payload(f"t{added}")))
    return added


async def test_a_change_that_would_grow_the_stored_state_past_its_bound_is_refused() -> None:
    session = bounded(2048)
    gm, player = await table(session)
    added = await add_until_refused(session, gm)
    refused = f"t{added}"

    assert 5 <= added < 30
    assert refused not in session.state.tokens
    assert not any(
        m["type"] == "token.add" and m["payload"]["token_id"] == refused for m in player.take()
    )
    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 4, "y": 2}))
    assert errors_of(gm) == []
    assert session.state.tokens["t1"].x == 4
    growing: list[tuple[str, dict[str, Any]]] = [
        ("token.update", {"token_id": "t1", "name": "x" * 200}),
        ("fog.update", {"zones": [{"x": 0, "y": 0, "w": 1, "h": 1, "visible": True}] * 30}),
        ("map.set", map_payload("m1")),
    ]
    for kind, payload in growing:
        await session.submit(gm, change(kind, payload))
        assert errors_of(gm) == ["limit_exceeded"], kind


async def test_a_snapshot_measures_the_stored_state_again_so_what_was_removed_makes_room() -> None:
    session = bounded(2048)
    gm, _ = await table(session)
    added = await add_until_refused(session, gm)
    for n in range(1, added):
        await session.submit(gm, change("token.remove", {"token_id": f"t{n}"}))
    await session.submit(gm, change("token.add", token_payload("late")))
    assert errors_of(gm) == ["limit_exceeded"]

    snapshot = await session.snapshot()

    assert snapshot is not None
    assert session.stored_bytes == len(snapshot.data)
    await session.submit(gm, change("token.add", token_payload("late")))
    assert errors_of(gm) == []
    assert "late" in session.state.tokens


async def test_a_state_loaded_past_its_bound_takes_moves_and_removals_but_nothing_that_grows() -> (
    None
):
    earlier = session_of()
    gm, _ = await table(earlier)
    await earlier.submit(gm, change("token.add", token_payload("t1", name="x" * 200)))
    snapshot = await earlier.snapshot()
    assert snapshot is not None
    session = bounded(len(snapshot.data) - 1, snapshot.data)
    gm, player = await table(session)

    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 1, "y": 1}))
    await session.submit(gm, change("scene.darkness", {"darkness_level": 0.5}))
    await session.submit(gm, change("token.remove", {"token_id": "t1"}))
    assert errors_of(gm) == []
    await session.submit(gm, change("token.add", token_payload("t2")))
    assert errors_of(gm) == ["limit_exceeded"]
    # What the sender may not send at all is refused as such first.
    await session.submit(player, change("map.set", map_payload("m1")))
    assert errors_of(player) == ["forbidden"]


# --- seq and fan-out ----------------------------------------------------------------------------


async def test_each_applied_change_takes_the_next_seq_and_marks_the_session_dirty() -> None:
    session = session_of()
    gm, _ = await table(session)
    assert not session.dirty

    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 1, "y": 2}))
    await session.submit(gm, change("scene.darkness", {"darkness_level": 0.5}))

    assert [message["seq"] for message in gm.received] == [1, 2, 3]
    assert session.state.seq == 3
    assert session.version == 3
    assert session.dirty


async def test_a_broadcast_reaches_every_member_of_both_audiences_the_sender_included() -> None:
    session = session_of()
    gm, player = await table(session)
    other = await seated(session, FakeMember("pl-cy"))

    await session.submit(player, change("token.add", token_payload("t1")))

    for member in (gm, player, other):
        (added,) = member.take()
        assert (added["type"], added["user_id"], added["seq"]) == ("token.add", "pl-bo", 1)
        assert added["payload"]["owner_id"] == "pl-bo"


async def test_a_change_to_a_hidden_token_reaches_the_gms_only_yet_takes_a_seq() -> None:
    session = session_of()
    gm, player = await table(session)

    await session.submit(gm, change("token.add", token_payload("h1", visible=False)))
    await session.submit(gm, change("token.move", {"token_id": "h1", "x": 3, "y": 3}))

    assert [(m["type"], m["seq"]) for m in gm.take()] == [("token.add", 1), ("token.move", 2)]
    assert player.take() == []


async def test_hiding_a_token_sends_players_a_token_remove_under_the_gms_seq() -> None:
    session = session_of()
    gm, player = await table(session)
    await session.submit(gm, change("token.add", token_payload("t1")))
    gm.take()
    player.take()

    await session.submit(gm, change("token.update", {"token_id": "t1", "visible": False}))

    (update,) = gm.take()
    (remove,) = player.take()
    assert (update["type"], remove["type"]) == ("token.update", "token.remove")
    assert remove["payload"] == {"token_id": "t1"}
    assert remove["seq"] == update["seq"] == 2


async def test_a_move_is_handed_over_as_conflatable_under_its_token_and_nothing_else_is() -> None:
    session = session_of()
    gm, player = await table(session)

    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 1, "y": 1}))
    await session.submit(gm, change("fog.update", {"zones": []}))

    for member in (gm, player):
        assert [(d.token_id, d.conflates) for d in member.deliveries] == [
            ("t1", False),
            ("t1", True),
            (None, False),
        ]


async def test_a_map_switch_sends_each_audience_its_own_state_sync() -> None:
    session = session_of()
    gm, player = await table(session)
    await session.submit(gm, change("map.set", map_payload("m1")))
    await session.submit(gm, change("token.add", token_payload("h1", visible=False)))
    await session.submit(gm, change("map.set", map_payload("m2")))
    gm.take()
    player.take()

    await session.submit(gm, change("map.switch", {"map_id": "m1"}))

    gm_sync, player_sync = gm.take()[0], player.take()[0]
    assert gm_sync["type"] == player_sync["type"] == "state.sync"
    assert gm_sync["seq"] == player_sync["seq"] == gm_sync["payload"]["seq"]
    assert list(gm_sync["payload"]["tokens"]) == ["h1"]
    assert player_sync["payload"]["tokens"] == {}


async def test_a_refused_change_answers_the_sender_alone_and_takes_no_seq() -> None:
    session = session_of()
    gm, player = await table(session)

    await session.submit(player, change("scene.darkness", {"darkness_level": 1}))

    (error,) = player.take()
    assert error["type"] == "error"
    assert error["payload"]["code"] == "forbidden"
    assert "seq" not in error
    assert gm.take() == []
    assert session.state.seq == 0
    assert not session.dirty


async def test_a_pong_goes_to_the_pinging_member_alone_without_a_seq() -> None:
    session = session_of()
    gm, player = await table(session)

    session.pong(player)

    assert player.take() == [
        {"type": "pong", "campaign_id": "c1", "user_id": "pl-bo", "payload": {}}
    ]
    assert gm.take() == []


# --- resume -------------------------------------------------------------------------------------


async def played(session: Session, moves: int) -> FakeMember:
    """A GM who added `t1` (visible) and `h1` (hidden), then moved each `moves` times."""
    gm = await seated(session, FakeMember("gm-ada", "gm"))
    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.submit(gm, change("token.add", token_payload("h1", visible=False)))
    for step in range(moves):
        for token_id in ("t1", "h1"):
            move = {"token_id": token_id, "x": step, "y": step}
            await session.submit(gm, change("token.move", move))
    return gm


async def test_a_resume_within_the_history_gets_a_marker_then_exactly_the_missed_events() -> None:
    session = session_of()
    await played(session, moves=2)
    back = FakeMember("gm-ada", "gm")

    resumed = await session.join(back, since=2, epoch=session.epoch)

    assert resumed is True
    marker, *missed = back.received
    assert marker["type"] == "state.resume"
    assert marker["payload"] == {"from_seq": 3, "to_seq": 6, "epoch": session.epoch}
    assert [(m["type"], m["seq"]) for m in missed] == [("token.move", seq) for seq in range(3, 7)]
    assert [d.conflates for d in back.deliveries[1:]] == [True] * 4


async def test_a_players_resume_leaves_out_what_players_may_not_see() -> None:
    session = session_of()
    await played(session, moves=2)
    back = FakeMember("pl-bo")

    assert await session.join(back, since=1, epoch=session.epoch)

    marker, *missed = back.received
    assert marker["payload"]["to_seq"] == 6
    assert [(m["payload"]["token_id"], m["seq"]) for m in missed] == [("t1", 3), ("t1", 5)]


async def test_a_resume_with_nothing_missed_gets_an_empty_range_only() -> None:
    session = session_of()
    await played(session, moves=1)
    back = FakeMember("gm-ada", "gm")

    assert await session.join(back, since=4, epoch=session.epoch)

    assert back.received == [
        {
            "type": "state.resume",
            "campaign_id": "c1",
            "user_id": "gm-ada",
            "seq": 4,
            "payload": {"from_seq": 5, "to_seq": 4, "epoch": session.epoch},
        }
    ]


@pytest.mark.parametrize(
    ("since", "epoch"),
    [(2, "another"), (2, None), (7, "current"), (-1, "current"), (1, "current")],
    ids=["another epoch", "no epoch", "ahead of the seq", "negative", "past the history"],
)
async def test_a_resume_the_history_cannot_serve_gets_a_full_state_sync(
    since: int, epoch: str | None
) -> None:
    session = session_of(resume_buffer=4)
    await played(session, moves=2)
    back = FakeMember("gm-ada", "gm")

    resumed = await session.join(back, since, session.epoch if epoch == "current" else epoch)

    assert resumed is False
    assert [m["type"] for m in back.received] == ["state.sync", "map.list", "chat.history"]
    assert back.received[0]["seq"] == 6


async def test_the_history_keeps_no_more_bytes_of_frames_than_its_bound() -> None:
    session = session_of(resume_buffer_bytes=1000)
    gm = await seated(session, FakeMember("gm-ada", "gm"))
    # Fog of 5 zones: a frame of a few hundred bytes, the same for both audiences.
    fog = {"zones": [{"x": n, "y": n, "w": 1, "h": 1, "visible": False} for n in range(5)]}
    for _ in range(6):
        await session.submit(gm, change("fog.update", fog))

    sizes = [record.size for record in session.history]
    assert 1 < len(sizes) < 6
    assert session.history_bytes == sum(sizes) <= 1000
    assert sum(sizes) + sizes[0] > 1000, "one more would not have fitted"
    back = FakeMember("gm-ada", "gm")
    assert await session.join(back, session.state.seq - 6, session.epoch) is False
    assert await session.join(FakeMember("gm-ada", "gm"), session.state.seq - 1, session.epoch)


async def test_a_frame_bigger_than_the_bound_is_not_kept_and_a_resume_over_it_is_full() -> None:
    session = session_of(resume_buffer_bytes=100)
    gm = await seated(session, FakeMember("gm-ada", "gm"))
    await session.submit(gm, change("token.add", token_payload("t1")))

    assert not session.history
    assert session.history_bytes == 0
    assert await session.join(FakeMember("gm-ada", "gm"), 0, session.epoch) is False


async def test_a_resume_across_a_map_switch_gets_a_full_state_sync() -> None:
    session = session_of()
    gm = await seated(session, FakeMember("gm-ada", "gm"))
    await session.submit(gm, change("map.set", map_payload("m1")))
    since = session.state.seq
    await session.submit(gm, change("map.set", map_payload("m2")))
    await session.submit(gm, change("map.switch", {"map_id": "m1"}))
    back = FakeMember("gm-ada", "gm")

    assert not await session.join(back, since=since, epoch=session.epoch)

    assert [m["type"] for m in back.received] == ["state.sync", "map.list", "chat.history"]


# --- chat ---------------------------------------------------------------------------------------


def whisper(number: int, sender: str, recipient: str) -> ChatMessage:
    """A chat message from `sender` to `recipient` alone."""
    return ChatMessage(
        id=f"m{number}",
        campaign_id="c1",
        user_id=sender,
        recipient_id=recipient,
        message_type="text",
        content=msgspec.Raw(b'"psst"'),
        gm_only=False,
        created_at="2026-02-19T10:55:13Z",
    )


async def test_a_chat_message_takes_the_next_seq_and_reaches_and_replays_to_its_audience() -> None:
    session = session_of()
    gm, bo = await table(session)
    ana = await seated(session, FakeMember("pl-ana"))

    assert await session.publish_chat(whisper(1, "pl-ana", "pl-bo"))

    (to_ana,), (to_bo,) = ana.take(), bo.take()
    assert to_ana == to_bo
    assert (to_ana["type"], to_ana["seq"], to_ana["user_id"]) == ("chat.message", 1, "pl-ana")
    assert gm.take() == []
    assert session.dirty
    replays = {}
    returning: list[tuple[str, Role]] = [
        ("gm-ada", "gm"),
        ("pl-ana", "player"),
        ("pl-cy", "player"),
    ]
    for user, role in returning:
        back = FakeMember(user, role)
        assert await session.join(back, since=0, epoch=session.epoch)
        replays[user] = back.types
    assert replays == {
        "gm-ada": ["state.resume"],
        "pl-ana": ["state.resume", "chat.message"],
        "pl-cy": ["state.resume"],
    }


async def test_a_chat_message_the_log_holds_already_is_not_published_again() -> None:
    session = session_of()
    _, bo = await table(session)

    first = await session.publish_chat(whisper(1, "gm-ada", "pl-bo"))
    again = await session.publish_chat(whisper(1, "gm-ada", "pl-bo"))

    assert (first, again) == (True, True)
    assert [m["seq"] for m in bo.take()] == [1]
    assert session.state.seq == 1


# --- snapshots and saving -----------------------------------------------------------------------


async def test_a_snapshot_is_none_while_nothing_changed() -> None:
    session = session_of()
    await table(session)

    assert await session.snapshot() is None


async def test_a_snapshot_holds_the_stored_state_at_its_version_and_seq_without_the_epoch() -> None:
    session = session_of()
    gm, _ = await table(session)
    await session.submit(gm, change("token.add", token_payload("t1", x=4)))
    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 9, "y": 9}))

    snapshot = await session.snapshot()

    assert snapshot is not None
    assert (snapshot.campaign_id, snapshot.version, snapshot.seq) == ("c1", 2, 2)
    assert "epoch" not in msgspec.json.decode(snapshot.data)
    stored = decode_stored_state(snapshot.data, "c1")
    assert stored.tokens["t1"].x == 9
    assert stored.seq == 2


async def test_marking_a_snapshot_saved_cleans_the_session_and_tells_every_member_its_seq() -> None:
    session = session_of()
    gm, player = await table(session)
    await session.submit(gm, change("token.add", token_payload("t1")))
    gm.take()
    player.take()
    snapshot = await session.snapshot()
    assert snapshot is not None

    session.mark_saved(snapshot)

    assert not session.dirty
    for member in (gm, player):
        (saved,) = member.take()
        assert (saved["type"], saved["payload"]) == ("state.saved", {"seq": 1})
        assert "seq" not in saved


async def test_a_change_after_the_snapshot_keeps_the_session_dirty_once_that_one_is_saved() -> None:
    session = session_of()
    gm, _ = await table(session)
    await session.submit(gm, change("token.add", token_payload("t1")))
    first = await session.snapshot()
    await session.submit(gm, change("token.add", token_payload("t2")))
    second = await session.snapshot()
    assert first is not None
    assert second is not None

    session.mark_saved(first)
    assert session.dirty
    session.mark_saved(second)
    session.mark_saved(first)

    assert not session.dirty
    assert session.saved_version == 2
