"""The metrics registry in-process: names, label sets, rendering, the /metrics response."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from app.errors import ERROR_CODES, CloseCode
from app.metrics import MESSAGE_TYPES, UNKNOWN, Metrics
from tests.support.samples import Samples, parse_samples


def _samples(metrics: Metrics) -> Samples:
    return parse_samples(_render(metrics))


def _render(metrics: Metrics) -> str:
    app = Starlette(routes=[Route("/metrics", metrics.endpoint)])
    return _get(app, "/metrics").text


def _get(app: Starlette, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, headers=headers, timeout=5.0)

    return asyncio.run(asyncio.wait_for(fetch(), timeout=10))


def test_every_required_metric_is_exported() -> None:
    names = {family.name for family in text_string_to_metric_families(_render(Metrics()))}

    assert names >= {
        "vtt_open_connections",
        "vtt_live_sessions",
        "vtt_dirty_sessions",
        "vtt_messages_in",
        "vtt_messages_out",
        "vtt_errors",
        "vtt_handshake_refusals",
        "vtt_slow_client_closes",
        "vtt_broadcast_latency_seconds",
        "vtt_flush_duration_seconds",
        "vtt_flush_rows",
        "vtt_flush_failures",
    }


def test_two_instances_have_separate_registries() -> None:
    first, second = Metrics(), Metrics()

    first.open_connections.inc()
    first.message_in("token.move")

    assert _samples(first)[("vtt_open_connections", ())] == 1
    assert _samples(second)[("vtt_open_connections", ())] == 0
    assert _samples(second)[("vtt_messages_in_total", (("type", "token.move"),))] == 0


def test_messages_are_counted_by_type_and_unknown_types_share_one_label() -> None:
    metrics = Metrics()

    metrics.message_in("token.move")
    metrics.message_in("token.move")
    metrics.message_in("campaign-c1-secret-type")
    metrics.message_in("")
    metrics.message_out("token.move", 25)
    metrics.message_out("state.sync")

    samples = _samples(metrics)
    assert samples[("vtt_messages_in_total", (("type", "token.move"),))] == 2
    assert samples[("vtt_messages_in_total", (("type", UNKNOWN),))] == 2
    assert samples[("vtt_messages_out_total", (("type", "token.move"),))] == 25
    assert samples[("vtt_messages_out_total", (("type", "state.sync"),))] == 1
    in_labels = {labels for name, labels in samples if name == "vtt_messages_in_total"}
    assert in_labels == {(("type", t),) for t in (*MESSAGE_TYPES, UNKNOWN)}


def test_errors_are_counted_by_protocol_code_only() -> None:
    metrics = Metrics()

    metrics.error("rate_limited")
    metrics.error("user_2abc")

    samples = _samples(metrics)
    assert samples[("vtt_errors_total", (("code", "rate_limited"),))] == 1
    assert samples[("vtt_errors_total", (("code", UNKNOWN),))] == 1
    codes = {dict(labels)["code"] for name, labels in samples if name == "vtt_errors_total"}
    assert codes == {*ERROR_CODES, UNKNOWN}


@pytest.mark.parametrize(
    ("close_code", "reason"),
    [
        (4400, "bad_request"),
        (4401, "unauthorized"),
        (4403, "forbidden"),
        (4429, "too_many_connections"),
        (1009, "too_big"),
        (1012, "service_restart"),
        (1013, "try_again_later"),
        (4999, UNKNOWN),
    ],
)
def test_handshake_refusals_are_labelled_by_the_close_code_name(
    close_code: int, reason: str
) -> None:
    metrics = Metrics()

    metrics.handshake_refused(close_code)

    samples = _samples(metrics)
    assert samples[("vtt_handshake_refusals_total", (("reason", reason),))] == 1
    reasons = {
        dict(labels)["reason"] for name, labels in samples if name == "vtt_handshake_refusals_total"
    }
    assert reasons == {*(code.name.lower() for code in CloseCode), UNKNOWN}


def test_no_metric_has_a_campaign_or_user_label() -> None:
    metrics = Metrics()
    metrics.message_in("token.move")
    metrics.counts.observe_broadcast(0.0004)

    label_names = {name for _, labels in _samples(metrics) for name, _ in labels}

    assert label_names <= {"type", "code", "reason", "status", "le"}


def test_broadcast_latency_buckets_resolve_sub_millisecond_to_100_ms() -> None:
    metrics = Metrics()
    metrics.counts.observe_broadcast(0.0003)
    metrics.counts.observe_broadcast(0.08)

    samples = _samples(metrics)
    buckets = {
        float(dict(labels)["le"]): value
        for (name, labels), value in samples.items()
        if name == "vtt_broadcast_latency_seconds_bucket"
    }
    assert min(buckets) <= 0.0001
    assert 0.1 in buckets
    assert buckets[0.0005] == 1
    assert buckets[0.1] == 2
    assert samples[("vtt_broadcast_latency_seconds_count", ())] == 2


def test_the_flush_observer_hooks_record_duration_rows_failures_and_session_counts() -> None:
    metrics = Metrics()
    sessions = {"live": 4, "dirty": 3}

    metrics.flushed(0.012, 7, ok=True)
    metrics.flushed(2.0, 5, ok=False)
    metrics.watch_sessions(live=lambda: sessions["live"], dirty=lambda: sessions["dirty"])

    samples = _samples(metrics)
    assert samples[("vtt_flush_duration_seconds_count", ())] == 2
    assert samples[("vtt_flush_duration_seconds_sum", ())] == pytest.approx(2.012)
    assert samples[("vtt_flush_rows_total", ())] == 7
    assert samples[("vtt_flush_failures_total", ())] == 1
    assert samples[("vtt_live_sessions", ())] == 4
    assert samples[("vtt_dirty_sessions", ())] == 3
    sessions["dirty"] = 0
    assert _samples(metrics)[("vtt_dirty_sessions", ())] == 0, "read at each scrape"


def test_gauges_and_counters_without_labels_render_their_values() -> None:
    metrics = Metrics()

    metrics.open_connections.inc(3)
    metrics.open_connections.dec()
    metrics.slow_client_closes.inc()

    samples = _samples(metrics)
    assert samples[("vtt_open_connections", ())] == 2
    assert samples[("vtt_slow_client_closes_total", ())] == 1


def test_the_endpoint_serves_prometheus_text_by_default() -> None:
    app = Starlette(routes=[Route("/metrics", Metrics().endpoint)])

    response = _get(app, "/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert "charset=utf-8" in response.headers["content-type"]
    assert "# TYPE vtt_open_connections gauge" in response.text


def test_the_endpoint_serves_openmetrics_when_the_scraper_asks_for_it() -> None:
    app = Starlette(routes=[Route("/metrics", Metrics().endpoint)])

    response = _get(
        app, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
