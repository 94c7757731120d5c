"""The inbound token bucket, judged on an injected clock: burst, rate, tells and flood closes."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from app.ratelimit import TokenBucket, Verdict


def offered(
    bucket: TokenBucket, start: float, seconds: float, per_second: float
) -> list[tuple[float, Verdict]]:
    """Offer messages evenly at `per_second` for `seconds` from `start`; each with its verdict."""
    count = round(seconds * per_second)
    times = [start + index / per_second for index in range(count)]
    return [(now, bucket.take(now)) for now in times]


def verdicts(judged: list[tuple[float, Verdict]]) -> Counter[Verdict]:
    """How many messages got each verdict."""
    return Counter(verdict for _, verdict in judged)


def test_a_full_burst_is_accepted_at_once_and_the_next_message_is_dropped_and_told() -> None:
    bucket = TokenBucket(rate=60, burst=120, flood_seconds=10, now=100.0)

    burst = [bucket.take(100.0) for _ in range(120)]

    assert burst == [Verdict.ACCEPT] * 120
    assert bucket.take(100.0) is Verdict.DROP_AND_TELL
    assert bucket.take(100.0) is Verdict.DROP


def test_messages_at_the_sustained_rate_are_all_accepted_however_long_they_last() -> None:
    # 64 a second: binary-exact intervals, so the test is about the bucket, not float rounding.
    bucket = TokenBucket(rate=64, burst=128, flood_seconds=10, now=0.0)
    for _ in range(128):
        bucket.take(0.0)

    judged = offered(bucket, start=1 / 64, seconds=60, per_second=64)

    assert verdicts(judged) == {Verdict.ACCEPT: 64 * 60}


def test_a_sender_at_twice_the_rate_gets_the_rate_through_and_the_rest_dropped() -> None:
    bucket = TokenBucket(rate=60, burst=120, flood_seconds=1000, now=0.0)

    judged = offered(bucket, start=0.0, seconds=20, per_second=120)

    accepted = verdicts(judged)[Verdict.ACCEPT]
    assert 120 + 60 * 20 - 2 <= accepted <= 120 + 60 * 20 + 2


def test_the_bucket_refills_to_the_burst_and_no_further_after_a_quiet_spell() -> None:
    bucket = TokenBucket(rate=10, burst=5, flood_seconds=10, now=0.0)
    for _ in range(5):
        bucket.take(0.0)

    after_an_hour = [bucket.take(3600.0) for _ in range(6)]

    assert after_an_hour == [Verdict.ACCEPT] * 5 + [Verdict.DROP_AND_TELL]


def test_a_flood_is_told_at_most_once_a_second() -> None:
    bucket = TokenBucket(rate=60, burst=120, flood_seconds=1000, now=0.0)

    judged = offered(bucket, start=0.0, seconds=5.5, per_second=5000)

    told = [now for now, verdict in judged if verdict is Verdict.DROP_AND_TELL]
    assert Verdict.CLOSE not in verdicts(judged)
    assert all(later - earlier >= 1.0 for earlier, later in pairwise(told))
    assert 5 <= len(told) <= 6, "a sustained flood should still be told about once a second"


def test_the_first_dropped_message_of_a_flood_is_told() -> None:
    bucket = TokenBucket(rate=1, burst=1, flood_seconds=10, now=0.0)

    assert bucket.take(0.0) is Verdict.ACCEPT
    assert bucket.take(0.0) is Verdict.DROP_AND_TELL


def test_drops_continuing_for_the_flood_duration_close_and_not_a_moment_before() -> None:
    bucket = TokenBucket(rate=60, burst=120, flood_seconds=10, now=0.0)

    judged = offered(bucket, start=0.0, seconds=12, per_second=1000)

    first_drop = next(now for now, verdict in judged if verdict is not Verdict.ACCEPT)
    closes = [now for now, verdict in judged if verdict is Verdict.CLOSE]
    assert closes, "a flood longer than flood_seconds must close"
    assert closes[0] - first_drop >= 10.0
    assert closes[0] - first_drop < 10.0 + 0.01


def test_messages_accepted_within_a_flood_do_not_interrupt_it() -> None:
    bucket = TokenBucket(rate=10, burst=1, flood_seconds=3, now=0.0)

    judged = offered(bucket, start=0.0, seconds=4, per_second=100)

    counted = verdicts(judged)
    assert counted[Verdict.ACCEPT] >= 30, "the bucket keeps letting the rate through"
    assert counted[Verdict.CLOSE] > 0


def test_a_pause_of_more_than_a_second_ends_the_flood_and_the_next_one_starts_from_zero() -> None:
    bucket = TokenBucket(rate=10, burst=1, flood_seconds=3, now=0.0)

    first = offered(bucket, start=0.0, seconds=2.5, per_second=100)
    second = offered(bucket, start=2.5 + 1.1, seconds=2.5, per_second=100)

    assert Verdict.CLOSE not in verdicts(first + second)
    third = offered(bucket, start=3.6 + 2.5, seconds=1.0, per_second=100)
    assert Verdict.CLOSE in verdicts(third), "3 s of drops since the pause must close"


def test_a_second_of_well_behaved_traffic_ends_the_flood() -> None:
    bucket = TokenBucket(rate=10, burst=1, flood_seconds=3, now=0.0)

    flood = offered(bucket, start=0.0, seconds=2.5, per_second=100)
    calm = offered(bucket, start=2.6, seconds=1.5, per_second=5)
    again = offered(bucket, start=4.2, seconds=2.5, per_second=100)

    assert verdicts(calm) == {Verdict.ACCEPT: len(calm)}
    assert Verdict.CLOSE not in verdicts(flood + calm + again)


def test_a_pause_shorter_than_a_second_does_not_end_the_flood() -> None:
    bucket = TokenBucket(rate=10, burst=1, flood_seconds=3, now=0.0)

    first = offered(bucket, start=0.0, seconds=2.0, per_second=100)
    second = offered(bucket, start=2.0 + 0.5, seconds=1.0, per_second=100)

    first_drop = next(now for now, verdict in first if verdict is not Verdict.ACCEPT)
    closes = [now for now, verdict in second if verdict is Verdict.CLOSE]
    assert closes, "drops 0.5 s apart are one flood"
    assert closes[0] - first_drop >= 3.0


def test_try_take_takes_what_is_there_and_its_refusals_never_count_towards_a_flood() -> None:
    bucket = TokenBucket(rate=10, burst=2, flood_seconds=5, now=0.0)

    assert [bucket.try_take(0.0) for _ in range(3)] == [True, True, False]
    assert not any(bucket.try_take(t / 1000) for t in range(1, 100))
    refusals = [bucket.try_take(t / 1000) for t in range(100, 20_000, 1)]

    assert refusals.count(True) == 199, "one token every 100 ms, the rest refused"
    assert bucket.take(20.0) is Verdict.DROP_AND_TELL, "20 s of refusals were no flood"


def test_the_delay_is_how_long_until_the_bucket_takes_one_more() -> None:
    bucket = TokenBucket(rate=8, burst=1, flood_seconds=5, now=0.0)
    assert bucket.delay(0.0) == 0.0
    assert bucket.try_take(0.0)

    assert bucket.delay(0.0) == 0.125
    assert bucket.delay(0.0625) == 0.0625
    assert not bucket.try_take(0.0625)
    assert bucket.try_take(0.125)
    assert bucket.delay(10.0) == 0.0
