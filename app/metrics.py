"""Prometheus metrics of one app instance, on a registry of its own.

Labels come from fixed sets (the protocol's message types and error codes, the names of
our close codes) so a client cannot grow the number of series, and no label ever names
a campaign or a user.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from app.errors import ERROR_CODES, CloseCode
from app.protocol import MESSAGES

UNKNOWN = "unknown"

MESSAGE_TYPES: frozenset[str] = MESSAGES.tags
# Every status POST /internal/broadcast answers (app.broadcast).
BROADCAST_STATUSES: tuple[int, ...] = (204, 400, 401, 404, 405, 413, 503)
SIGNAL_TYPES: tuple[str, ...] = tuple(row.tag for row in MESSAGES.rows if row.ephemeral)
# Why an ephemeral frame was dropped: a newer one of the same sender and channel replaced it
# (waiting for its turn, or queued for a recipient), a recipient's queue was full, or a pointer
# ping came over its sender's rate.
DROP_REASONS: tuple[str, ...] = ("coalesced", "backlog", "rate")

# A broadcast is frame received -> last recipient queued: in-memory work, so the low buckets
# are normal and the top ones mean the event loop is starved.
BROADCAST_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)

# A flush is one batched upsert over the network to Postgres (Neon): milliseconds
# normally, seconds when the database is cold or struggling.
FLUSH_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class PerMessageCounts(Collector):
    """The per-message series, kept as plain numbers and turned into metrics on scrape.

    prometheus_client's own counters take a lock on every increment; these run once per
    message received and once per audience of every broadcast, which is the server's hot
    path, so they are plain integers the single event loop updates, read when scraped.
    """

    def __init__(self) -> None:
        types = (*sorted(MESSAGE_TYPES), UNKNOWN)
        self.received = dict.fromkeys(types, 0)
        self.sent = dict.fromkeys(types, 0)
        self.errors = dict.fromkeys((*ERROR_CODES, UNKNOWN), 0)
        self.relayed = dict.fromkeys(SIGNAL_TYPES, 0)
        self.dropped = {(kind, reason): 0 for kind in SIGNAL_TYPES for reason in DROP_REASONS}
        self.latency_buckets = [0] * (len(BROADCAST_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe_broadcast(self, seconds: float) -> None:
        """Record one broadcast's latency."""
        self.latency_buckets[bisect_left(BROADCAST_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def collect(self) -> Iterator[Metric]:
        """The current values, as Prometheus metric families."""
        for name, doc, label, values in (
            ("vtt_messages_in", "Frames received, by type.", "type", self.received),
            ("vtt_messages_out", "Frames queued to clients, by type.", "type", self.sent),
            ("vtt_errors", "Error replies sent, by code.", "code", self.errors),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in values.items():
                family.add_metric([key], value)
            yield family
        relayed = CounterMetricFamily(
            "vtt_ephemeral_relayed",
            "Ephemeral frames (pings, cursors, rulers) handed to recipients, by type.",
            labels=["type"],
        )
        for kind, value in self.relayed.items():
            relayed.add_metric([kind], value)
        yield relayed
        dropped = CounterMetricFamily(
            "vtt_ephemeral_dropped",
            "Ephemeral frames dropped, by type and reason (coalesced, backlog, rate).",
            labels=["type", "reason"],
        )
        for (kind, reason), value in self.dropped.items():
            dropped.add_metric([kind, reason], value)
        yield dropped
        cumulative, running = [], 0
        bounds = (*BROADCAST_BUCKETS, float("inf"))
        for bound, count in zip(bounds, self.latency_buckets, strict=True):
            running += count
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
        yield HistogramMetricFamily(
            "vtt_broadcast_latency_seconds",
            "Time from a frame's arrival to its last recipient's queue.",
            buckets=cumulative,
            sum_value=self.latency_sum,
        )


class Metrics:
    """Every metric the server exports, registered on a registry created for this instance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # connections and sessions
        self.open_connections = Gauge(
            "vtt_open_connections", "Open WebSocket connections.", registry=registry
        )
        self.live_sessions = Gauge(
            "vtt_live_sessions", "Campaign sessions held in memory.", registry=registry
        )
        self.dirty_sessions = Gauge(
            "vtt_dirty_sessions", "Sessions with changes not yet written.", registry=registry
        )
        # traffic
        self.counts = PerMessageCounts()
        registry.register(self.counts)
        self.handshake_refusals = Counter(
            "vtt_handshake_refusals",
            "Connections closed during the handshake, by close code name.",
            ["reason"],
            registry=registry,
        )
        self.handshake_timeouts = Counter(
            "vtt_handshake_timeouts",
            "Connections dropped for not finishing their request headers within the deadline.",
            registry=registry,
        )
        self.handshake_bound_refusals = Counter(
            "vtt_handshake_bound_refusals",
            "Connections dropped at once because too many were still sending request headers.",
            registry=registry,
        )
        self.lock_refusals = Counter(
            "vtt_lock_refusals",
            "Grabs, moves, updates, removals and replacements refused: another user held the "
            "token's drag lock.",
            registry=registry,
        )
        self.slow_client_closes = Counter(
            "vtt_slow_client_closes",
            "Connections closed because their outbound queue overflowed.",
            registry=registry,
        )
        # chat (the per-type counters above count chat.send in and chat.message out)
        self.chat_rolls = Counter(
            "vtt_chat_rolls",
            "Dice rolls the server rolled and stored with a chat message.",
            registry=registry,
        )
        self.internal_broadcasts = Counter(
            "vtt_internal_broadcasts",
            "POST /internal/broadcast requests, by HTTP status answered.",
            ["status"],
            registry=registry,
        )
        # persistence
        self.flush_duration = Histogram(
            "vtt_flush_duration_seconds",
            "Duration of one batched write of dirty sessions.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.flush_rows = Counter(
            "vtt_flush_rows", "Session rows written by flushes.", registry=registry
        )
        self.flush_failures = Counter(
            "vtt_flush_failures", "Flushes that failed and will be retried.", registry=registry
        )
        self.fenced_out = Counter(
            "vtt_sessions_fenced_out",
            "Sessions dropped unsaved because another writer raised their row's fence.",
            registry=registry,
        )
        # scale-out (REDIS_URL set; they stay at zero on one machine)
        self.lease_renewals = Counter(
            "vtt_lease_renewals", "Node lease renewals Redis confirmed.", registry=registry
        )
        self.leases_lost = Counter(
            "vtt_leases_lost",
            "Times this machine lost its node lease (or reached its local deadline) and "
            "dropped every campaign it owned.",
            registry=registry,
        )
        self.claims = Counter(
            "vtt_campaign_claims", "Campaigns this machine claimed.", registry=registry
        )
        self.claim_refusals = Counter(
            "vtt_campaign_claim_refusals",
            "Claims refused because another machine's claim was alive.",
            registry=registry,
        )
        self.oplog_appends = Counter(
            "vtt_oplog_appends",
            "Op log entries appended (one per campaign per batch).",
            registry=registry,
        )
        self.oplog_append_seconds = Histogram(
            "vtt_oplog_append_seconds",
            "Round trip of one pipeline of op log appends: how long broadcasts were held.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.oplog_append_failures = Counter(
            "vtt_oplog_append_failures",
            "Op log pipelines that failed (Redis away) and were tried again.",
            registry=registry,
        )
        self.oplog_replay_failures = Counter(
            "vtt_oplog_replay_failures",
            "Catch-ups on a new owner that found the op log broken (a new epoch was minted).",
            registry=registry,
        )
        self.relays_open = Gauge(
            "vtt_relays_open",
            "Connections this machine relays to the campaign's owner.",
            registry=registry,
        )
        self.relay_failures = Counter(
            "vtt_relay_failures",
            "Relays that could not reach the campaign's owner (the client was told to retry).",
            registry=registry,
        )
        # Every known label value starts at zero, so rates and alerts work before
        # the first event of a kind.
        for close_code in CloseCode:
            self.handshake_refusals.labels(close_code.name.lower())
        self.handshake_refusals.labels(UNKNOWN)
        for status in BROADCAST_STATUSES:
            self.internal_broadcasts.labels(str(status))

    def message_in(self, message_type: str) -> None:
        """Count one received frame of `message_type` (anything unrecognised as unknown)."""
        received = self.counts.received
        key = message_type if message_type in received else UNKNOWN
        received[key] += 1

    def message_out(self, message_type: str, count: int = 1) -> None:
        """Count `count` frames of `message_type` queued to clients (one per recipient)."""
        sent = self.counts.sent
        key = message_type if message_type in sent else UNKNOWN
        sent[key] += count

    def relayed(self, message_type: str, count: int) -> None:
        """Count `count` ephemeral frames of `message_type` handed to recipients."""
        counts = self.counts
        counts.relayed[message_type] += count
        sent = counts.sent
        sent[message_type if message_type in sent else UNKNOWN] += count

    def dropped(self, message_type: str, reason: str) -> None:
        """Count one ephemeral frame of `message_type` dropped for `reason`."""
        self.counts.dropped[message_type, reason] += 1

    def error(self, code: str) -> None:
        """Count one error reply with `code`."""
        errors = self.counts.errors
        errors[code if code in errors else UNKNOWN] += 1

    def broadcast_answered(self, status: int) -> None:
        """Count one POST /internal/broadcast answered with `status`."""
        known = status if status in BROADCAST_STATUSES else UNKNOWN
        self.internal_broadcasts.labels(str(known)).inc()

    def handshake_refused(self, close_code: int) -> None:
        """Count one handshake closed with `close_code`, labelled by the code's name."""
        member = CloseCode.of(close_code)
        self.handshake_refusals.labels(member.name.lower() if member else UNKNOWN).inc()

    def flushed(self, seconds: float, rows: int, ok: bool) -> None:
        """Record one write attempt of the flusher: its duration, and its rows or its failure."""
        self.flush_duration.observe(seconds)
        if ok:
            self.flush_rows.inc(rows)
        else:
            self.flush_failures.inc()

    # --- scale-out: what the coordinator, the op log and the relay count ------------------

    def lease_renewed(self) -> None:
        """Redis confirmed a lease renewal."""
        self.lease_renewals.inc()

    def lease_lost(self) -> None:
        """The node lease is gone."""
        self.leases_lost.inc()

    def claimed(self) -> None:
        """A campaign was claimed here."""
        self.claims.inc()

    def claim_refused(self) -> None:
        """A claim found another machine's alive."""
        self.claim_refusals.inc()

    def appended(self, entries: int, seconds: float) -> None:
        """A pipeline of `entries` op log appends answered after `seconds`."""
        self.oplog_appends.inc(entries)
        self.oplog_append_seconds.observe(seconds)

    def append_failed(self) -> None:
        """A pipeline of op log appends failed."""
        self.oplog_append_failures.inc()

    def replay_failed(self) -> None:
        """A catch-up found the op log broken."""
        self.oplog_replay_failures.inc()

    def relay_opened(self) -> None:
        """A relay to the owner opened."""
        self.relays_open.inc()

    def relay_closed(self) -> None:
        """A relay to the owner ended."""
        self.relays_open.dec()

    def relay_failed(self) -> None:
        """A relay could not reach the owner."""
        self.relay_failures.inc()

    def watch_sessions(self, live: Callable[[], int], dirty: Callable[[], int]) -> None:
        """Count live and dirty sessions when scraped (an edit dirties a session silently)."""
        self.live_sessions.set_function(live)
        self.dirty_sessions.set_function(dirty)

    async def endpoint(self, request: Request) -> Response:
        """Serve the registry in the format the scraper asked for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self.registry), media_type=content_type)
