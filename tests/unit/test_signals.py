"""Signal pacing alone, on an injected clock: lanes, turns, latest-wins, the ping rate."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.protocol import MESSAGES, CursorHideMsg, CursorMoveMsg, Empty, Spot
from app.ratelimit import Verdict
from app.signals import CHANNELS, HIDES, Pacer, PingLimits, lane

RATE = 20.0
KEY = lane("cursor", "alice")


def move(x: float) -> CursorMoveMsg:
    """A cursor.move to (x, 0)."""
    return CursorMoveMsg(payload=Spot(x=x, y=0.0))


def test_every_signal_type_of_the_message_table_has_a_channel_and_every_channel_a_hide() -> None:
    assert set(CHANNELS) == {row.tag for row in MESSAGES.rows if row.ephemeral}
    assert set(HIDES) == set(CHANNELS.values()) - {"ping"}
    assert all(CHANNELS[hide] == channel for channel, hide in HIDES.items())


def test_lanes_of_different_users_or_channels_never_share_a_key() -> None:
    keys = {lane(channel, user) for channel in ("cursor", "ruler") for user in ("a", "b", "a b")}
    assert len(keys) == 6


def test_the_first_signal_of_a_lane_goes_at_once_and_one_too_soon_waits_for_its_turn() -> None:
    pacer = Pacer(RATE)

    assert pacer.offer(KEY, move(1), 0.0).now
    assert pacer.offer(KEY, move(2), 0.01).now, "back to back: within the tolerance"
    assert pacer.offer(KEY, move(3), 0.02).now, "and a third: 1.9 intervals' tolerance"
    waiting = pacer.offer(KEY, move(4), 0.03)

    assert (waiting.now, waiting.replaced) == (False, None)
    assert pacer.due(KEY) == pytest.approx((3 - Pacer.TOLERANCE) / RATE)


def test_a_sender_at_the_rate_with_jitter_is_never_held_back() -> None:
    # Each frame off its schedule by up to a fifth of the interval, either way.
    pacer = Pacer(RATE)
    jitter = [0.0, -0.01, 0.01, -0.01, 0.01, -0.01, 0.0, 0.01, 0.005, -0.01]

    offered = [pacer.offer(KEY, move(n), n / RATE + j) for n, j in enumerate(jitter)]

    assert all(offer.now for offer in offered)


def test_one_late_signal_does_not_hold_back_a_sender_at_the_rate_for_good() -> None:
    # One frame 40 ms late (most of an interval), the rest exactly on their schedule: with
    # half an interval's tolerance every frame after the late one used to wait for a timer.
    pacer = Pacer(RATE)
    late = {3: 0.04}

    offered = [pacer.offer(KEY, move(n), n / RATE + late.get(n, 0.0)) for n in range(40)]

    assert all(offer.now for offer in offered)


def test_a_pause_of_almost_two_intervals_does_not_hold_back_a_sender_at_the_rate_for_good() -> None:
    # The server pauses: frame 3 is read 90 ms late, together with frame 4 (40 ms late); the
    # rest on their schedule. With one interval's tolerance every frame after the pair waited.
    pacer = Pacer(RATE)
    read_at = {n: n / RATE for n in range(40)}
    read_at[3] = read_at[4] = 3 / RATE + 0.09

    offered = [pacer.offer(KEY, move(n), read_at[n]) for n in range(40)]

    assert all(offer.now for offer in offered)


def test_a_newer_signal_replaces_the_waiting_one_and_the_latest_is_let_through() -> None:
    pacer = Pacer(RATE)
    for n, at in enumerate((0.0, 0.005, 0.008)):
        assert pacer.offer(KEY, move(n), at).now
    waiting = move(3)
    pacer.offer(KEY, waiting, 0.01)

    newer = move(4)
    offered = pacer.offer(KEY, newer, 0.02)

    assert offered.replaced is waiting
    assert pacer.take(KEY, 0.1) is newer
    assert pacer.take(KEY, 0.1) is None


def test_a_signal_after_the_interval_goes_at_once_but_not_past_one_still_waiting() -> None:
    pacer = Pacer(RATE)
    pacer.offer(KEY, move(1), 0.0)

    assert pacer.offer(KEY, move(2), 0.1).now
    pacer.offer(KEY, move(3), 0.1)
    pacer.offer(KEY, move(4), 0.1)
    assert not pacer.offer(KEY, move(5), 1.0).now, "the waiting one keeps its place"


def test_a_sender_flat_out_gets_the_rate_and_no_more() -> None:
    pacer = Pacer(RATE)
    sent = 0
    for step in range(10_000):
        now = step / 10_000
        if step and pacer.due(KEY) <= now:
            sent += pacer.take(KEY, now) is not None
        sent += pacer.offer(KEY, move(step), now).now

    assert RATE <= sent <= RATE + 2


def test_lanes_are_paced_independently() -> None:
    pacer = Pacer(RATE)
    pacer.offer(KEY, move(1), 0.0)

    assert pacer.offer(lane("cursor", "bob"), move(1), 0.0).now
    assert pacer.offer(lane("ruler", "alice"), move(1), 0.0).now


def test_a_lane_shows_after_a_move_and_not_after_a_hide() -> None:
    pacer = Pacer(RATE)
    assert not pacer.showing(KEY)

    pacer.offer(KEY, move(1), 0.0)
    assert pacer.showing(KEY)
    pacer.offer(KEY, CursorHideMsg(payload=Empty()), 1.0)
    assert not pacer.showing(KEY)


def test_hiding_a_lane_drops_what_waits_and_says_whether_something_showed() -> None:
    pacer = Pacer(RATE)
    assert not pacer.hide(KEY)
    pacer.offer(KEY, move(1), 0.0)
    pacer.offer(KEY, move(2), 0.01)

    assert pacer.hide(KEY)
    assert pacer.take(KEY, 1.0) is None
    assert not pacer.showing(KEY)
    assert not pacer.hide(KEY)


def test_a_forgotten_lane_starts_afresh() -> None:
    pacer = Pacer(RATE)
    pacer.offer(KEY, move(1), 0.0)

    pacer.forget(KEY)

    assert not pacer.showing(KEY)
    assert pacer.offer(KEY, move(2), 0.001).now


@given(times=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60))
def test_a_lane_lets_through_at_most_its_rate_and_always_ends_on_the_latest(
    times: list[float],
) -> None:
    pacer = Pacer(RATE)
    sent: list[tuple[float, float]] = []
    waiting_since: float | None = None
    for index, now in enumerate(sorted(times)):
        # A waiting signal whose turn came before this one arrives is let through first.
        if waiting_since is not None and pacer.due(KEY) <= now:
            due = pacer.due(KEY)
            signal = pacer.take(KEY, due)
            assert signal is not None
            sent.append((due, signal.payload.x))
            waiting_since = None
        offered = pacer.offer(KEY, move(index), now)
        if offered.now:
            sent.append((now, index))
        elif waiting_since is None:
            waiting_since = now
    if waiting_since is not None:
        due = pacer.due(KEY)
        signal = pacer.take(KEY, due)
        assert signal is not None
        sent.append((due, signal.payload.x))

    assert sent[-1][1] == len(times) - 1, "the last signal always goes out"
    interval = 1 / RATE
    for (i, (earlier, _)), (j, (later, _)) in itertools.combinations(enumerate(sent), 2):
        assert later - earlier >= (j - i - Pacer.TOLERANCE) * interval - 1e-9
    for start, _ in sent:
        assert sum(start <= at < start + 1.0 for at, _ in sent) <= RATE + 2, "a second's worth"


def test_pings_pass_up_to_the_burst_then_drop_telling_once_a_second() -> None:
    limits = PingLimits(2.0, 5)

    verdicts = [limits.take("alice", 0.0) for _ in range(8)]

    assert verdicts == [Verdict.ACCEPT] * 5 + [Verdict.DROP_AND_TELL, Verdict.DROP, Verdict.DROP]
    assert limits.take("bob", 0.0) is Verdict.ACCEPT, "each user has their own allowance"
    assert limits.take("alice", 0.5) is Verdict.ACCEPT, "two a second come back"
    assert limits.take("alice", 0.5) is Verdict.DROP, "told less than a second ago"
    assert [limits.take("alice", 1.0) for _ in range(2)] == [Verdict.ACCEPT, Verdict.DROP_AND_TELL]


def test_pings_never_close_however_long_they_flood() -> None:
    limits = PingLimits(2.0, 5)

    verdicts = {limits.take("alice", step / 100) for step in range(10_000)}

    assert Verdict.CLOSE not in verdicts


def test_a_forgotten_user_starts_with_a_full_allowance() -> None:
    limits = PingLimits(2.0, 1)
    limits.take("alice", 0.0)

    limits.forget("alice")

    assert limits.take("alice", 0.0) is Verdict.ACCEPT
