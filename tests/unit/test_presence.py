"""Presence alone, on an injected clock: arrivals, counts across tabs, the grace on leaving."""

from __future__ import annotations

from app.presence import Presence

GRACE = 10.0


def test_a_users_first_connection_is_an_arrival_and_later_ones_are_counted() -> None:
    presence = Presence(GRACE)

    assert presence.connect("alice", "player", None)
    assert not presence.connect("alice", "player", None)
    assert [(p.user_id, p.connections) for p in presence.members()] == [("alice", 2)]


def test_a_user_leaves_only_when_the_last_connection_has_been_gone_for_the_grace() -> None:
    presence = Presence(GRACE)
    presence.connect("alice", "player", "Alice")
    presence.connect("alice", "player", "Alice")

    assert presence.disconnect("alice", 0.0) is None
    assert presence.disconnect("alice", 1.0) == 1.0 + GRACE
    assert presence.next_departure() == 1.0 + GRACE
    assert presence.depart(10.9) == []
    assert presence.get("alice") is not None
    assert presence.depart(11.0) == ["alice"]
    assert presence.members() == []
    assert presence.next_departure() is None


def test_a_reconnect_inside_the_grace_is_no_arrival_and_cancels_the_departure() -> None:
    presence = Presence(GRACE)
    presence.connect("bob", "player", None)
    presence.disconnect("bob", 0.0)

    assert not presence.connect("bob", "player", "Bob")
    assert presence.depart(100.0) == []
    member = presence.get("bob")
    assert member is not None
    assert (member.connections, member.username, member.leaves_at) == (1, "Bob", None)


def test_a_user_within_the_grace_is_still_listed_with_no_connections() -> None:
    presence = Presence(GRACE)
    presence.connect("gm", "gm", None)
    presence.connect("bob", "player", None)
    presence.disconnect("bob", 0.0)

    assert [(p.user_id, p.role, p.connections) for p in presence.members()] == [
        ("gm", "gm", 1),
        ("bob", "player", 0),
    ]


def test_a_disconnect_nobody_counted_changes_nothing() -> None:
    presence = Presence(GRACE)

    assert presence.disconnect("ghost", 0.0) is None
    presence.connect("bob", "player", None)
    presence.disconnect("bob", 0.0)
    assert presence.disconnect("bob", 1.0) is None
    assert presence.next_departure() == GRACE
