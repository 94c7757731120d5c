"""Pure figures the generator and the report share: percentiles, a latency histogram, connect rate.

No third-party imports, so the unit tests (and the report) can use it without the bench's
packages.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Sequence
from typing import Any

# Histogram buckets: 10 us wide below 100 ms, 1 ms wide from 100 ms to 10 s, then one last
# bucket for everything slower.
FINE_US = 10
FINE_LIMIT_US = 100_000
COARSE_US = 1_000
COARSE_LIMIT_US = 10_000_000
FINE_BUCKETS = FINE_LIMIT_US // FINE_US
COARSE_BUCKETS = (COARSE_LIMIT_US - FINE_LIMIT_US) // COARSE_US
BUCKETS = FINE_BUCKETS + COARSE_BUCKETS + 1


def percentile(sorted_values: Sequence[int] | Sequence[float], q: float) -> float:
    """Return the q-quantile (0..1) of an already sorted sequence by nearest rank."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


class Histogram:
    """Latencies in microseconds, counted in fixed buckets: adding is O(1), nothing is sorted.

    A soak window holds over a million samples; sorting them at every window boundary would
    stall the generator's loop for a large fraction of a second and be billed as latency.
    Percentiles are exact to a bucket: 10 us below 100 ms, 1 ms up to 10 s.
    """

    __slots__ = ("count", "counts", "max_us")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * BUCKETS))
        self.count = 0
        self.max_us = 0

    def add(self, us: int) -> None:
        """Count one latency of `us` microseconds (negative values count as zero)."""
        if us < FINE_LIMIT_US:
            index = us // FINE_US if us > 0 else 0
        elif us < COARSE_LIMIT_US:
            index = FINE_BUCKETS + (us - FINE_LIMIT_US) // COARSE_US
        else:
            index = BUCKETS - 1
        self.counts[index] += 1
        self.count += 1
        if us > self.max_us:
            self.max_us = us

    @staticmethod
    def bucket_top_us(index: int) -> int:
        """The upper edge of bucket `index`, in microseconds (the last bucket: its lower edge)."""
        if index < FINE_BUCKETS:
            return (index + 1) * FINE_US
        if index < BUCKETS - 1:
            return FINE_LIMIT_US + (index - FINE_BUCKETS + 1) * COARSE_US
        return COARSE_LIMIT_US

    def percentile_ms(self, q: float) -> float:
        """The q-quantile (0..1) by nearest rank, as its bucket's upper edge, in milliseconds.

        Never above the largest sample seen.
        """
        if not self.count:
            return 0.0
        rank = max(1, min(self.count, round(q * self.count + 0.5)))
        cumulative = list(itertools.accumulate(self.counts))
        index = bisect.bisect_left(cumulative, rank)
        return min(self.bucket_top_us(index), self.max_us) / 1000

    def figures(self) -> dict[str, float]:
        """p50, p95, p99 and max in milliseconds."""
        return {
            "p50": self.percentile_ms(0.50),
            "p95": self.percentile_ms(0.95),
            "p99": self.percentile_ms(0.99),
            "max": self.max_us / 1000,
        }


def connect_figures(
    t0_us: int, started_us: Sequence[int], synced_us: Sequence[int | None]
) -> dict[str, Any]:
    """Connect mode: how fast `len(started_us)` connections all got their state.sync.

    `t0_us` is when the first handshake began; `started_us[i]` when connection i began its
    handshake (inside the in-flight limit) and `synced_us[i]` when its state.sync arrived, or
    None when it never did. The rate is connections per second until the last state.sync, and
    only when every connection got one (a partial rate would flatter a server that refused
    some); otherwise it is None and `synced` says how many did.
    """
    total = len(started_us)
    done = [s for s in synced_us if s is not None]
    per_connection = sorted(
        (s - b) / 1000 for b, s in zip(started_us, synced_us, strict=True) if s is not None
    )
    all_synced = len(done) == total and total > 0
    elapsed_s = (max(done) - t0_us) / 1e6 if done else None
    rate = total / elapsed_s if all_synced and elapsed_s else None
    return {
        "connections": total,
        "synced": len(done),
        "all_synced_ms": round(elapsed_s * 1000, 1) if all_synced and elapsed_s else None,
        "connections_per_s": round(rate, 1) if rate is not None else None,
        "handshake_p50_ms": round(percentile(per_connection, 0.50), 1),
        "handshake_p99_ms": round(percentile(per_connection, 0.99), 1),
    }
