"""bench/cluster.py's pure parts: commandstats and metrics parsing, deltas, rates, medians,
the summary and the markdown table (no Redis, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import cluster
from bench.stats import percentile

COMMANDSTATS = (
    "# Commandstats\r\n"
    "cmdstat_evalsha:calls=120,usec=900,usec_per_call=7.50,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_get:calls=240,usec=100,usec_per_call=0.42,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_info:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_script|exists:calls=7,usec=7,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n"
)


def test_commandstats_are_parsed_to_calls_per_command() -> None:
    assert cluster.parse_commandstats(COMMANDSTATS) == {
        "evalsha": 120,
        "get": 240,
        "info": 3,
        "script|exists": 7,
    }


def test_an_empty_commandstats_section_has_no_commands() -> None:
    assert cluster.parse_commandstats("# Commandstats\r\n") == {}


def test_the_delta_keeps_only_commands_called_in_between() -> None:
    before = {"evalsha": 100, "get": 240, "info": 2}
    after = {"evalsha": 160, "get": 240, "info": 3, "xadd": 5}
    assert cluster.commandstats_delta(before, after) == {"evalsha": 60, "info": 1, "xadd": 5}


def test_rates_per_campaign_leave_out_the_benchs_own_info_and_ping() -> None:
    delta = {"evalsha": 400, "get": 800, "info": 2, "ping": 1}
    rates = cluster.per_campaign_rates(delta, seconds=2.0, campaigns=10)
    assert rates == {"evalsha": 20.0, "total": 60.0}


def test_rates_need_a_positive_window_and_campaign_count() -> None:
    with pytest.raises(ValueError, match="positive"):
        cluster.per_campaign_rates({"evalsha": 1}, seconds=0.0, campaigns=10)
    with pytest.raises(ValueError, match="positive"):
        cluster.per_campaign_rates({"evalsha": 1}, seconds=1.0, campaigns=0)


def test_metrics_are_summed_over_label_sets_and_comments_skipped() -> None:
    text = (
        "# HELP vtt_oplog_appends_total Op log entries appended.\n"
        "# TYPE vtt_oplog_appends_total counter\n"
        "vtt_oplog_appends_total 42.0\n"
        'vtt_oplog_append_seconds_bucket{le="0.001"} 3.0\n'
        'vtt_oplog_append_seconds_bucket{le="+Inf"} 5.0\n'
        "vtt_oplog_append_seconds_sum 0.0125\n"
        'vtt_messages_out_total{type="state.sync"} 2.0\n'
        'vtt_messages_out_total{type="token.move"} 10.0\n'
    )
    values = cluster.parse_metrics(text)
    assert values["vtt_oplog_appends_total"] == 42.0
    assert values["vtt_oplog_append_seconds_sum"] == 0.0125
    assert values["vtt_messages_out_total"] == 12.0
    before = {"vtt_oplog_appends_total": 40.0}
    assert cluster.metric_delta(before, values, "vtt_oplog_appends_total") == 2.0
    assert cluster.metric_delta(before, values, "absent") == 0.0


def test_quantiles_sort_their_samples_and_use_the_benchs_nearest_rank() -> None:
    samples = [0.003, 0.001, 0.002]
    assert cluster.quantile_ms(samples, 0.5) == 2.0
    assert cluster.quantile_ms(samples, 0.99) == 3.0
    many = [i / 1000 for i in range(100, 0, -1)]
    assert cluster.quantile_ms(many, 0.99) == percentile(sorted(many), 0.99) * 1000
    assert cluster.quantile_ms([], 0.99) == 0.0


def test_the_median_ignores_what_was_not_measured() -> None:
    assert cluster.median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert cluster.median_or_none([None, None]) is None
    assert cluster.fmt(None) == "-"
    assert cluster.fmt(1.234, 2) == "1.23"


def oplog_run(
    config: str, cpu: float, p99: float, rates: dict[str, float] | None
) -> dict[str, Any]:
    """One op log measurement with only what the summary reads."""
    return {
        "campaigns": 50,
        "config": config,
        "cpu_per_msg_us": cpu,
        "latency_ms": {"p50": p99 / 4, "p99": p99},
        "delivered_per_s": 6000.0,
        "lost": 0,
        "errors": {},
        "redis_per_campaign_per_s": rates,
        "redis_ping_rtt": {"direct_ms": 0.03, "via_url_ms": 1.1} if rates else None,
        "oplog_appends_per_s": 1000.0 if rates else 0.0,
        "oplog_mean_append_ms": 1.0 if rates else None,
        "redis_cpu_per_msg_us": 5.0 if rates else None,
        "noise_server_core": 0.1,
        "generator_limited": False,
    }


def test_the_summary_and_table_hold_every_figure() -> None:
    profile = cluster.QUICK
    rates = {"evalsha": 20.0, "total": 80.0}
    runs: dict[str, list[dict[str, Any]]] = {
        "oplog": [
            oplog_run("off", 30.0, 5.0, None),
            oplog_run("on", 70.0, 16.0, rates),
            oplog_run("on + 1 ms", 50.0, 40.0, rates),
        ],
        "failover": [{"ttl": 2, "seconds": s, "greeting": "state.resume"} for s in (1.9, 2.1, 1.7)]
        + [{"ttl": 2, "failed": "TimeoutError: no greeting"}],
        "relay": [
            {
                "direct": {"p50_ms": 2.0 + i, "p99_ms": 10.0, "connect_ms": 8.0},
                "relayed": {"p50_ms": 3.0 + i, "p99_ms": 12.0, "connect_ms": 12.0},
            }
            for i in range(3)
        ],
    }
    summary = cluster.summarise(runs, profile)
    off, on, delayed = summary["oplog"]
    assert (off["config"], off["cpu_per_msg_us"], off["evalsha_per_s"]) == ("off", 30.0, None)
    assert (on["commands_per_s"], on["redis_rtt_ms"], delayed["p99_ms"]) == (80.0, 1.1, 40.0)
    assert summary["failover"] == [
        {
            "ttl": 2,
            "repeats": 3,
            "median_s": 1.9,
            "min_s": 1.7,
            "max_s": 2.1,
            "greetings": "state.resume x3",
        }
    ]
    assert summary["relay"]["relayed"] == {"p50_ms": 4.0, "p99_ms": 12.0, "connect_ms": 12.0}
    result = {
        "command": "python -m bench.cluster --quick",
        "machine": {
            "date": "2026-12-02 16:00 UTC",
            "commit": "abc1234",
            "nproc": 2,
            "cpu_model": "test",
            "load_average_at_start": [1.0, 1.0, 1.0],
        },
        "profile": {"clients": 6, "rate": 20.0, "window": 20.0, "oplog_repeats": 1},
        "summary": summary,
        "notes": ["shared machine"],
    }
    text = cluster.markdown(result)
    assert "| 50 | off | - | 30.00 | 1.25 | 5.00 | 6000 | 0 | none | - | - | 0 | - | - |" in text
    assert "| 50 | on + 1 ms | 1.100 | 50.00 |" in text
    assert "| 2 | 3 | 1.90 | 1.70 | 2.10 | state.resume x3 |" in text
    assert "| relayed | 4.00 | 12.00 | 12.0 |" in text
    assert "- shared machine" in text
    header = next(line for line in text.splitlines() if line.startswith("| campaigns"))
    rule = text.splitlines()[text.splitlines().index(header) + 1]
    assert header.count("|") == rule.count("|")
