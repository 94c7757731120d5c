"""The session's unstored side on fake members: presence, drag locks, signals, the veil.

Timers run on the real loop with short settings (a 50 ms grace, a 100 ms idle timeout, 20
cursor frames a second), waited for by polling.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from app.config import Settings
from app.metrics import Metrics
from app.model import Role
from app.rules import new_state
from app.session import Session
from tests.support.fakes import FakeMember, campaign_chat, change, live
from tests.support.harness import map_payload, token_payload
from tests.support.poll import poll

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
SETTINGS = Settings(env="test", presence_grace=0.05, lock_idle_timeout=0.1)
EVERYTHING: frozenset[str] = frozenset()


def session_of(**overrides: Any) -> Session:
    """A session of a fresh campaign `c1` with short timers."""
    settings = replace(SETTINGS, **overrides)
    return Session(new_state("c1"), settings, Metrics(), campaign_chat("c1", settings))


def member(user: str, role: Role = "player", username: str | None = None) -> FakeMember:
    """A member that sees every frame, presence included."""
    return FakeMember(user, role, username, skip=EVERYTHING)


async def seated(session: Session, *members: FakeMember) -> None:
    """Join `members` in order, then forget everything each was handed."""
    for each in members:
        await session.join(each)
    for each in members:
        each.take()


async def after(seconds: float) -> None:
    """Wait until `seconds` have passed on the session's clock: the timers are what is tested."""
    until = time.monotonic() + seconds
    await poll(lambda: time.monotonic() >= until, TIMEOUT, f"{seconds} s to pass")


def refusals(session: Session) -> float:
    """The vtt_lock_refusals counter of `session`'s metrics."""
    value = session.metrics.registry.get_sample_value("vtt_lock_refusals_total")
    return value or 0.0


def of_type(who: FakeMember, *kinds: str) -> list[dict[str, Any]]:
    """The frames of `kinds` handed to `who` so far (since its last take)."""
    return [message for message in who.received if message["type"] in kinds]


async def locked_table(session: Session) -> tuple[FakeMember, FakeMember, FakeMember]:
    """A GM and two players, a visible token t1 and a hidden h1; everything handed taken."""
    gm, bob, cat = member("gm", "gm"), member("bob"), member("cat")
    await seated(session, gm, bob, cat)
    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.submit(gm, change("token.add", token_payload("h1", visible=False)))
    for each in (gm, bob, cat):
        each.take()
    return gm, bob, cat


# --- presence -----------------------------------------------------------------------------------


async def test_a_join_gets_presence_sync_after_its_greeting_and_everyone_hears_of_the_arrival() -> (
    None
):
    session = session_of()
    gm, bob = member("gm", "gm", "Ann"), member("bob")
    await session.join(gm)

    await session.join(bob)

    assert bob.types == ["state.sync", "map.list", "chat.history", "presence.sync", "presence.join"]
    sync = bob.received[3]
    assert "seq" not in sync
    assert sync["user_id"] == "bob"
    assert sync["payload"] == {
        "members": [
            {"user_id": "gm", "role": "gm", "username": "Ann", "connections": 1},
            {"user_id": "bob", "role": "player", "connections": 1},
        ]
    }
    arrivals = [m for m in gm.received if m["type"] == "presence.join"]
    assert [(m["user_id"], m["payload"]) for m in arrivals] == [
        ("gm", {"user_id": "gm", "role": "gm", "username": "Ann"}),
        ("bob", {"user_id": "bob", "role": "player"}),
    ]
    assert bob.received[4] == arrivals[1]
    assert all("seq" not in m for m in gm.received if m["type"].startswith("presence."))


async def test_a_users_second_connection_is_counted_not_announced() -> None:
    session = session_of()
    gm, bob, bob_again = member("gm", "gm"), member("bob"), member("bob")
    await seated(session, gm, bob)

    await session.join(bob_again)

    assert of_type(gm, "presence.join") == []
    (sync,) = of_type(bob_again, "presence.sync")
    assert [(m["user_id"], m["connections"]) for m in sync["payload"]["members"]] == [
        ("gm", 1),
        ("bob", 2),
    ]


async def test_a_user_leaves_only_after_the_grace_once_their_last_connection_is_gone() -> None:
    session = session_of()
    gm, bob, bob_again = member("gm", "gm"), member("bob"), member("bob")
    await seated(session, gm, bob, bob_again)

    await session.leave(bob)
    await session.leave(bob_again)
    late = member("cat")
    await session.join(late)

    (sync,) = of_type(late, "presence.sync")
    listed = {m["user_id"]: m["connections"] for m in sync["payload"]["members"]}
    assert listed == {"gm": 1, "bob": 0, "cat": 1}, "within the grace bob is listed, with none"
    assert of_type(gm, "presence.leave") == []
    await poll(lambda: bool(of_type(gm, "presence.leave")), TIMEOUT, "bob's presence.leave")
    for each in (gm, late):
        (left,) = of_type(each, "presence.leave")
        assert (left["user_id"], left["payload"]) == ("bob", {"user_id": "bob"})
        assert "seq" not in left
    assert session.ephemeral.presence.get("bob") is None


async def test_a_reconnect_inside_the_grace_shows_the_others_nothing() -> None:
    session = session_of()
    gm, bob = member("gm", "gm"), member("bob")
    await seated(session, gm, bob)

    await session.leave(bob)
    back = member("bob")
    await session.join(back)
    await after(SETTINGS.presence_grace * 2)

    assert gm.take() == []
    assert of_type(back, "presence.join") == []
    (sync,) = of_type(back, "presence.sync")
    assert [(m["user_id"], m["connections"]) for m in sync["payload"]["members"]] == [
        ("gm", 1),
        ("bob", 1),
    ]


async def test_a_resume_gets_presence_sync_after_the_missed_events_and_none_of_it_is_replayed() -> (
    None
):
    session = session_of()
    gm, bob = member("gm", "gm"), member("bob")
    await seated(session, gm, bob)
    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.leave(bob)
    await session.submit(gm, change("token.move", {"token_id": "t1", "x": 1, "y": 1}))

    back = member("bob")
    assert await session.join(back, since=1, epoch=session.epoch)

    assert back.types == ["state.resume", "token.move", "presence.sync"]
    kinds = {out.kind for record in session.history for out in (record.gm, record.player) if out}
    assert kinds == {"token.add", "token.move"}


async def test_a_session_closed_while_a_departure_is_due_sends_nothing_and_stops_its_timer() -> (
    None
):
    session = session_of()
    gm, bob = member("gm", "gm"), member("bob")
    await seated(session, gm, bob)
    await session.leave(bob)

    session.close()
    await after(SETTINGS.presence_grace * 2)

    assert of_type(gm, "presence.leave") == []
    assert session.ephemeral.presence.get("bob") is not None, "nobody ran the departure"


# --- drag locks ---------------------------------------------------------------------------------


async def test_a_grab_tells_everyone_who_can_see_the_token_and_carries_no_seq() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)

    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))

    for each in (gm, bob, cat):
        (grabbed,) = each.take()
        assert grabbed["type"] == "token.grabbed"
        assert grabbed["user_id"] == "bob"
        assert grabbed["payload"] == {"token_id": "t1", "user_id": "bob"}
        assert "seq" not in grabbed
    assert session.state.seq == 2


async def test_a_hidden_tokens_grab_reaches_the_gms_only() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    other_gm = member("gm2", "gm")
    await seated(session, other_gm)

    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))

    assert [m["type"] for m in other_gm.take()] == ["token.grabbed"]
    assert of_type(bob, "token.grabbed") == []


@pytest.mark.parametrize(("token_id", "code"), [("h1", "not_found"), ("nope", "not_found")])
async def test_a_player_grabbing_a_hidden_or_unknown_token_gets_not_found(
    token_id: str, code: str
) -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)

    await session.submit_live(bob, live("token.grab", {"token_id": token_id}))

    (error,) = bob.take()
    assert (error["type"], error["payload"]["code"]) == ("error", code)
    assert gm.take() == []
    assert not session.ephemeral.locks


async def test_a_player_grabbing_a_token_they_may_not_touch_gets_forbidden() -> None:
    session = session_of(token_policy="owner")
    gm, bob, _ = await locked_table(session)

    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))

    assert [m["payload"]["code"] for m in of_type(bob, "error")] == ["forbidden"]
    assert of_type(gm, "token.grabbed") == []


async def test_while_a_lock_is_held_another_users_changes_are_refused_as_locked() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    for each in (gm, bob, cat):
        each.take()
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("token.move", {"token_id": "t1", "x": 9, "y": 9}),
        ("token.update", {"token_id": "t1", "name": "Mine"}),
        ("token.remove", {"token_id": "t1"}),
        ("token.add", token_payload("t1", name="Replaced")),
    ]

    for sender in (cat, gm):
        for kind, payload in attempts:
            await session.submit(sender, change(kind, payload))

    for sender in (cat, gm):
        assert [m["payload"]["code"] for m in sender.take()] == ["locked"] * 4
    assert bob.take() == []
    token = session.state.tokens["t1"]
    assert (token.x, token.y, token.name) == (0, 0, "Token t1")
    assert session.state.seq == 2
    assert refusals(session) == 8


async def test_the_holders_moves_apply_and_renew_the_lock_until_it_idles_out() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    locks = session.ephemeral.locks
    granted = locks.next_expiry()

    await after(0.01)
    moved_at = time.monotonic()
    await session.submit(bob, change("token.move", {"token_id": "t1", "x": 5, "y": 5}))

    renewed = locks.next_expiry()
    assert granted is not None
    assert renewed is not None
    assert renewed >= moved_at + SETTINGS.lock_idle_timeout > granted
    assert [m["payload"]["x"] for m in of_type(gm, "token.move")] == [5]
    await poll(lambda: bool(of_type(gm, "token.released")), TIMEOUT, "the lock to idle out")
    (released,) = of_type(gm, "token.released")
    assert (released["user_id"], released["payload"]) == ("bob", {"token_id": "t1"})
    assert time.monotonic() >= renewed
    assert not locks


async def test_a_gm_takes_a_lock_from_a_player_but_a_player_takes_none() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))

    await session.submit_live(cat, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(gm, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))

    assert [m["payload"]["code"] for m in of_type(cat, "error")] == ["locked"]
    assert [m["payload"]["code"] for m in of_type(bob, "error")] == ["locked"]
    assert [m["payload"]["user_id"] for m in of_type(cat, "token.grabbed")] == ["bob", "gm"]
    holder = session.ephemeral.locks.holder("t1")
    assert holder is not None
    assert holder.user_id == "gm"


async def test_a_release_by_the_holder_tells_everyone_and_by_anyone_else_does_nothing() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))

    await session.submit_live(cat, live("token.release", {"token_id": "t1"}))
    await session.submit_live(cat, live("token.release", {"token_id": "nope"}))
    assert of_type(gm, "token.released", "error") == []
    await session.submit_live(bob, live("token.release", {"token_id": "t1"}))

    for each in (gm, bob, cat):
        (released,) = of_type(each, "token.released")
        assert "seq" not in released
    await session.submit(cat, change("token.move", {"token_id": "t1", "x": 3, "y": 3}))
    assert session.state.tokens["t1"].x == 3


async def test_a_disconnect_ends_the_locks_of_that_connection_only() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    bob_again = member("bob")
    await seated(session, bob_again)
    await session.submit(gm, change("token.add", token_payload("t2")))
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(bob_again, live("token.grab", {"token_id": "t2"}))

    await session.leave(bob)

    assert [m["payload"] for m in of_type(cat, "token.released")] == [{"token_id": "t1"}]
    assert set(session.ephemeral.locks.held()) == {"t2"}


async def test_removing_a_locked_token_ends_its_lock_before_the_removal_goes_out() -> None:
    session = session_of()
    gm, _, cat = await locked_table(session)
    await session.submit_live(gm, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))
    cat.take()

    await session.submit(gm, change("token.remove", {"token_id": "t1"}))
    await session.submit(gm, change("token.remove", {"token_id": "h1"}))

    assert [m["type"] for m in cat.take()] == ["token.released", "token.remove"]
    gm_kinds = [(m["type"], m["payload"]["token_id"]) for m in of_type(gm, "token.released")]
    assert gm_kinds == [("token.released", "t1"), ("token.released", "h1")]
    assert not session.ephemeral.locks


async def test_a_gm_hides_a_token_a_player_drags_only_after_taking_its_lock() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    hide = change("token.update", {"token_id": "t1", "visible": False})

    await session.submit(gm, hide)
    assert [m["payload"]["code"] for m in of_type(gm, "error")] == ["locked"]
    await session.submit_live(gm, live("token.grab", {"token_id": "t1"}))
    cat.take()
    await session.submit(gm, hide)

    assert [m["type"] for m in cat.take()] == ["token.remove"]
    holder = session.ephemeral.locks.holder("t1")
    assert holder is not None
    assert holder.user_id == "gm"


async def test_hiding_a_token_a_gm_holds_keeps_the_lock_and_veils_the_gm() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    await session.submit_live(gm, live("cursor.move", {"x": 1, "y": 1}))
    await session.submit_live(gm, live("token.grab", {"token_id": "t1"}))
    bob.take()

    await session.submit(gm, change("token.update", {"token_id": "t1", "visible": False}))

    assert set(session.ephemeral.locks.held()) == {"t1"}
    assert [m["type"] for m in bob.take()] == ["cursor.hide", "token.remove"]


@pytest.mark.parametrize(
    ("kind", "payload", "event"),
    [
        ("map.set", map_payload("m3"), "map.set"),
        ("map.switch", {"map_id": "m2"}, "state.sync"),
    ],
)
async def test_changing_the_active_map_ends_every_lock_before_the_new_map_goes_out(
    kind: str, payload: dict[str, Any], event: str
) -> None:
    session = session_of()
    gm = member("gm", "gm")
    bob = member("bob")
    await seated(session, gm, bob)
    await session.submit(gm, change("map.set", map_payload("m2")))
    await session.submit(gm, change("map.set", map_payload("m1")))
    await session.submit(gm, change("token.add", token_payload("t1")))
    await session.submit(gm, change("token.add", token_payload("h1", visible=False)))
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))
    bob.take()
    gm.take()

    await session.submit(gm, change(kind, payload))

    assert [m["type"] for m in bob.take()][:2] == ["token.released", event]
    assert [m["payload"]["token_id"] for m in of_type(gm, "token.released")] == ["t1", "h1"]
    assert not session.ephemeral.locks


async def test_a_join_and_a_resume_get_one_token_grabbed_per_lock_they_may_see() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    await session.submit_live(bob, live("token.grab", {"token_id": "t1"}))
    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))

    late_player, late_gm = member("dan"), member("eve", "gm")
    await session.join(late_player)
    await session.join(late_gm, since=2, epoch=session.epoch)

    assert late_player.types[:5] == [
        "state.sync",
        "map.list",
        "chat.history",
        "presence.sync",
        "token.grabbed",
    ]
    assert [m["payload"] for m in of_type(late_player, "token.grabbed")] == [
        {"token_id": "t1", "user_id": "bob"}
    ]
    assert late_gm.types[:2] == ["state.resume", "presence.sync"]
    assert [m["payload"]["token_id"] for m in of_type(late_gm, "token.grabbed")] == ["t1", "h1"]
    assert late_gm.types.index("token.grabbed") < late_gm.types.index("presence.join")


# --- signals ------------------------------------------------------------------------------------


async def test_a_signal_reaches_every_other_user_as_sent_by_its_sender_and_never_its_own() -> None:
    session = session_of()
    gm, bob, cat = await locked_table(session)
    bob_again = member("bob")
    await seated(session, bob_again)

    await session.submit_live(bob, live("pointer.ping", {"x": 1, "y": 2}))

    assert bob.take() == []
    assert bob_again.take() == []
    for each in (gm, cat):
        (ping,) = each.take()
        assert ping == {
            "type": "pointer.ping",
            "campaign_id": "c1",
            "user_id": "bob",
            "payload": {"x": 1.0, "y": 2.0},
        }
    assert session.state.seq == 2
    assert len(session.history) == 2


async def test_cursor_moves_faster_than_the_rate_wait_and_only_the_latest_goes_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    # All five at one instant on the session's clock (a third would go 5 ms after the first).
    instant = time.monotonic()
    monkeypatch.setattr(session.ephemeral, "_now", lambda: instant)

    for x in range(5):
        await session.submit_live(bob, live("cursor.move", {"x": x, "y": 0}))

    # Two at once (within the pacer's tolerance of 1.9 intervals), then the latest in its turn.
    assert [m["payload"]["x"] for m in of_type(gm, "cursor.move")] == [0, 1]
    await poll(lambda: len(of_type(gm, "cursor.move")) == 3, TIMEOUT, "the waiting cursor")
    assert [m["payload"]["x"] for m in of_type(gm, "cursor.move")] == [0, 1, 4]
    metrics = session.metrics.counts
    assert metrics.dropped["cursor.move", "coalesced"] == 2
    assert metrics.relayed["cursor.move"] == 3 * 2


async def test_a_ruler_is_relayed_with_its_colour_and_label_and_cleared_on_the_same_lane() -> None:
    session = session_of(cursor_rate=1000.0)
    gm, bob, _ = await locked_table(session)
    ruler = {"points": [{"x": 0, "y": 0}, {"x": 3, "y": 4}], "color": "#0af", "label": "5 sq"}

    await session.submit_live(bob, live("ruler.update", ruler))
    await session.submit_live(bob, live("ruler.clear", {}))
    await poll(lambda: len(of_type(gm, "ruler.clear")) == 1, TIMEOUT, "the clear")

    update, clear = of_type(gm, "ruler.update", "ruler.clear")
    assert update["payload"] == {
        "points": [{"x": 0.0, "y": 0.0}, {"x": 3.0, "y": 4.0}],
        "color": "#0af",
        "label": "5 sq",
    }
    assert clear["payload"] == {}


async def test_pings_past_the_burst_are_dropped_and_answered_once_with_rate_limited() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)

    for x in range(8):
        await session.submit_live(bob, live("pointer.ping", {"x": x, "y": 0}))

    assert [m["payload"]["x"] for m in of_type(gm, "pointer.ping")] == [0, 1, 2, 3, 4]
    assert [m["payload"]["code"] for m in of_type(bob, "error")] == ["rate_limited"]
    assert session.metrics.counts.dropped["pointer.ping", "rate"] == 3


async def test_a_users_last_connection_leaving_hides_their_cursor_and_ruler_for_the_others() -> (
    None
):
    session = session_of(cursor_rate=1000.0)
    gm, bob, _ = await locked_table(session)
    await session.submit_live(bob, live("cursor.move", {"x": 1, "y": 1}))
    await session.submit_live(bob, live("ruler.update", {"points": [{"x": 1, "y": 1}]}))
    gm.take()

    await session.leave(bob)

    assert [(m["type"], m["user_id"]) for m in gm.take()] == [
        ("cursor.hide", "bob"),
        ("ruler.clear", "bob"),
    ]


async def test_a_user_who_never_showed_a_cursor_leaves_without_hides() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)

    await session.leave(bob)

    assert gm.take() == []


# --- the veil: a GM dragging a hidden token ----------------------------------------------------


async def test_while_a_gm_drags_a_hidden_token_players_get_none_of_that_gms_signals() -> None:
    session = session_of(cursor_rate=1000.0)
    gm, bob, _ = await locked_table(session)
    other_gm = member("gm2", "gm")
    await seated(session, other_gm)
    await session.submit_live(gm, live("cursor.move", {"x": 1, "y": 1}))
    bob.take()
    other_gm.take()

    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))
    signals: list[tuple[str, dict[str, Any]]] = [
        ("cursor.move", {"x": 50, "y": 50}),
        ("ruler.update", {"points": [{"x": 50, "y": 50}]}),
        ("pointer.ping", {"x": 50, "y": 50}),
    ]
    for kind, payload in signals:
        await session.submit_live(gm, live(kind, payload))
        await session.submit(gm, change("token.move", {"token_id": "h1", "x": 50, "y": 50}))
    kinds = [kind for kind, _ in signals]
    await poll(lambda: len(of_type(other_gm, *kinds)) == 3, TIMEOUT, "the GM's signals")

    assert sorted(m["type"] for m in of_type(other_gm, *kinds)) == sorted(kinds)
    assert [(m["type"], m["user_id"]) for m in bob.take()] == [("cursor.hide", "gm")]
    await session.submit_live(gm, live("token.release", {"token_id": "h1"}))
    await session.submit_live(gm, live("cursor.move", {"x": 60, "y": 60}))
    await poll(lambda: bool(of_type(bob, "cursor.move")), TIMEOUT, "the cursor after release")
    assert [m["type"] for m in bob.take()] == ["cursor.move"]


async def test_a_signal_still_waiting_when_the_veil_lifts_goes_to_the_gms_alone() -> None:
    session = session_of()
    gm, bob, _ = await locked_table(session)
    other_gm = member("gm2", "gm")
    await seated(session, other_gm)
    await session.submit_live(gm, live("token.grab", {"token_id": "h1"}))
    await session.submit_live(gm, live("cursor.move", {"x": 50, "y": 50}))
    await session.submit_live(gm, live("cursor.move", {"x": 51, "y": 51}))

    await session.submit_live(gm, live("token.release", {"token_id": "h1"}))
    await after(2 / SETTINGS.cursor_rate)

    assert [m["payload"]["x"] for m in of_type(other_gm, "cursor.move")] == [50, 51]
    assert of_type(bob, "cursor.move") == []
