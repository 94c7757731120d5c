"""Turning bench results into medians, one-line progress and the markdown summary."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

OURS, BASELINE = "ours", "baseline"
# Above this share of a pinned core used by other processes, a window is not trustworthy.
NOISE_WARNING = 0.10


_NAN = float("nan")


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _median_of(results: list[dict[str, Any]], key: str) -> float | None:
    """The median of `key` over the results that have it; None when none does."""
    values = [r[key] for r in results if isinstance(r.get(key), int | float)]
    return _median(values) if values else None


def _errors_total(result: dict[str, Any]) -> int:
    return int(sum(result.get("errors", {}).values()))


FIXED_FIGURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "delivered_per_s": lambda r: r["delivered_per_s"],
    "sent_per_s": lambda r: r["moves_sent"] / r["window_s"] if r.get("window_s") else _NAN,
    "cpu_per_msg_us": lambda r: r["cpu_per_msg_us"],
    "cpu_per_sent_us": lambda r: r.get("cpu_per_sent_us", _NAN),
    "server_cpu_share": lambda r: r["server_cpu_share"],
    "p50_ms": lambda r: r["latency_ms"]["p50"],
    "p95_ms": lambda r: r["latency_ms"]["p95"],
    "p99_ms": lambda r: r["latency_ms"]["p99"],
    "max_ms": lambda r: r["latency_ms"]["max"],
    "server_rss_mb": lambda r: r["server_rss_mb"],
    "lost": lambda r: r["lost"],
    "reordered": lambda r: r["reordered"],
    "errors": _errors_total,
    "generator_cpu_share": lambda r: r["generator"]["cpu_share"],
    "generator_lag_p99_ms": lambda r: r["generator"]["loop_lag_ms_p99"],
    "generator_missed_sends": lambda r: r["generator"]["missed_sends"],
    "noise_server_core": lambda r: r["noise_server_core"],
    "noise_generator_core": lambda r: r["noise_generator_core"],
}


def _fixed_like(mode: str) -> bool:
    """Whether `mode` is a fixed load (of moves, cursors or chat messages)."""
    return mode.startswith(("fixed", "cursor", "chat"))


def summarise(mode: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the medians of one mode's results for one server."""
    if _fixed_like(mode):
        out: dict[str, Any] = {
            k: _median([f(r) for r in results]) for k, f in FIXED_FIGURES.items()
        }
        out["generator_limited_runs"] = sum(bool(r["generator_limited"]) for r in results)
        return out
    if mode == "ramp":
        return {
            "capacity": _median([r["capacity"] for r in results]),
            "capacities": [r["capacity"] for r in results],
            "limit_reached_runs": sum(bool(r["limit_reached"]) for r in results),
            "generator_limited_steps": sum(
                bool(s["generator_limited"]) for r in results for s in r["steps"]
            ),
        }
    if mode == "idle":
        targets = sorted({rd["target"] for r in results for rd in r["readings"]})
        out = {"empty_rss_mb": _median([r["empty_rss_mb"] for r in results])}
        for target in targets:
            readings = [rd for r in results for rd in r["readings"] if rd["target"] == target]
            out[f"kb_per_connection_{target}"] = _median(
                [rd["kb_per_connection"] for rd in readings]
            )
            marginal = [
                rd["marginal_kb_per_connection"]
                for rd in readings
                if "marginal_kb_per_connection" in rd
            ]
            if marginal:
                out[f"marginal_kb_per_connection_{target}"] = _median(marginal)
            out[f"connected_{target}"] = min(rd["connected"] for rd in readings)
        out["errors"] = sum(_errors_total(r) for r in results)
        return out
    if mode == "storm":
        complete = [r["all_synced_ms"] for r in results if r["all_synced_ms"] is not None]
        return {
            "all_synced_ms": _median(complete) if len(complete) == len(results) else None,
            "p50_ms": _median([r["p50_ms"] for r in results]),
            "p99_ms": _median([r["p99_ms"] for r in results]),
            "clients": results[0]["clients"],
            "server_cpu_ms_per_connection": _median_of(results, "server_cpu_ms_per_connection"),
            "min_synced": min(r["synced"] for r in results),
            "errors": sum(_errors_total(r) for r in results),
        }
    if mode == "connect":
        rates = [r["connections_per_s"] for r in results]
        complete = [r for r in rates if r is not None]
        return {
            "connections_per_s": _median(complete) if len(complete) == len(results) else None,
            "rates": rates,
            "all_synced_ms": _median(
                [r["all_synced_ms"] for r in results if r["all_synced_ms"] is not None]
            ),
            "handshake_p50_ms": _median([r["handshake_p50_ms"] for r in results]),
            "handshake_p99_ms": _median([r["handshake_p99_ms"] for r in results]),
            "connections": results[0]["connections"],
            "server_cpu_ms_per_connection": _median_of(results, "server_cpu_ms_per_connection"),
            "concurrency": results[0]["concurrency"],
            "min_synced": min(r["synced"] for r in results),
            "errors": sum(_errors_total(r) for r in results),
            "generator_cpu_share": _median([r["generator"]["cpu_share"] for r in results]),
            "generator_limited_runs": sum(bool(r["generator_limited"]) for r in results),
        }
    return dict(results[-1])


def one_line(mode: str, result: dict[str, Any]) -> str:
    """A short progress line for one measurement."""
    if "failed" in result or "skipped" in result or "error" in result:
        return str(result.get("failed") or result.get("skipped") or result.get("error"))
    if _fixed_like(mode):
        return (
            f"{result['delivered_per_s']:.0f} msg/s, {result['cpu_per_msg_us']:.1f} us CPU/msg, "
            f"p99 {result['latency_ms']['p99']:.2f} ms, lost {result['lost']}, "
            f"errors {_errors_total(result)}, generator {result['generator']['cpu_share']:.0%}"
        )
    if mode == "ramp":
        return f"capacity {result['capacity']} campaigns (first failure {result['first_failure']})"
    if mode == "idle":
        return ", ".join(
            f"{rd['connected']} conns: {rd['kb_per_connection']:.1f} KB/conn"
            for rd in result["readings"]
        )
    if mode == "storm":
        return f"{result['synced']}/{result['clients']} synced, all by {result['all_synced_ms']} ms"
    if mode == "connect":
        return (
            f"{result['synced']}/{result['connections']} synced, "
            f"{result['connections_per_s']} connections/s, errors {_errors_total(result)}, "
            f"generator {result['generator']['cpu_share']:.0%}"
        )
    if mode == "flush":
        return f"one tick of {result['sessions']} dirty campaigns: {result['tick_s']:.3f} s"
    return str(result)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ratio(ours: Any, base: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(base, int | float) or not base:
        return ""
    if ours != ours or base != base:
        return ""
    return f"{ours / base:.2f}x"


def _table(
    rows: list[tuple[str, str, int]], summary: dict[str, dict[str, Any]], servers: list[str]
) -> list[str]:
    has_ours = OURS in servers
    head = "| figure | " + " | ".join(servers) + (" | ours / baseline |" if has_ours else " |")
    lines = [head, "|---" * (len(servers) + 1 + has_ours) + "|"]
    for label, key, digits in rows:
        cells = [_fmt(summary.get(s, {}).get(key), digits) for s in servers]
        ratio = _ratio(summary.get(OURS, {}).get(key), summary.get(BASELINE, {}).get(key))
        lines.append(f"| {label} | " + " | ".join(cells) + (f" | {ratio} |" if has_ours else " |"))
    return lines


FIXED_ROWS = [
    ("messages sent/s", "sent_per_s", 0),
    ("delivered msgs/s", "delivered_per_s", 0),
    ("server CPU per delivered msg (us)", "cpu_per_msg_us", 2),
    ("server CPU per sent msg (us)", "cpu_per_sent_us", 2),
    ("server CPU (share of its core)", "server_cpu_share", 2),
    ("latency p50 (ms)", "p50_ms", 2),
    ("latency p95 (ms)", "p95_ms", 2),
    ("latency p99 (ms)", "p99_ms", 2),
    ("latency max (ms)", "max_ms", 2),
    ("server RSS (MB)", "server_rss_mb", 1),
    ("lost", "lost", 0),
    ("reordered", "reordered", 0),
    ("errors (error frames, unexpected closes)", "errors", 0),
    ("generator CPU (share of its core)", "generator_cpu_share", 2),
    ("generator loop lag p99 (ms)", "generator_lag_p99_ms", 2),
    ("generator missed send slots", "generator_missed_sends", 0),
    ("other processes on the server's core (share)", "noise_server_core", 2),
    ("other processes on the generator's core (share)", "noise_generator_core", 2),
    ("runs where the generator was near its limit", "generator_limited_runs", 0),
]


def _idle_rows(by_server: dict[str, Any], servers: list[str]) -> list[tuple[str, str, int]]:
    counts = sorted(
        {int(k.rsplit("_", 1)[1]) for s in servers for k in by_server.get(s, {})
         if k.startswith("kb_per_connection_")}
    )  # fmt: skip
    rows = [("RSS with no connection (MB)", "empty_rss_mb", 1)]
    for count in counts:
        rows += [
            (f"KB per idle connection at {count:,}", f"kb_per_connection_{count}", 2),
            (f"connections open at {count:,}", f"connected_{count}", 0),
        ]
        if any(f"marginal_kb_per_connection_{count}" in by_server.get(s, {}) for s in servers):
            rows.append(
                (f"marginal KB per connection up to {count:,}",
                 f"marginal_kb_per_connection_{count}", 2)
            )  # fmt: skip
    rows.append(("errors", "errors", 0))
    return rows


Target = tuple[str, str, str, str, str]


def _get(summary: dict[str, Any], mode: str | None, server: str, key: str) -> Any:
    if mode is None:
        return None
    return summary.get(mode, {}).get(server, {}).get(key)


def _number(value: Any) -> float | None:
    """`value` as a float when it is a real number (not None, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return float(value)


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _repeats(summary: dict[str, Any], mode: str | None, servers: tuple[str, ...]) -> str:
    counts = [_get(summary, mode, s, "repeats") for s in servers]
    return " / ".join("0" if c is None else str(c) for c in counts)


def _caveat(summary: dict[str, Any], mode: str | None) -> str:
    limited = sum(
        int(_get(summary, mode, s, "generator_limited_runs") or 0) for s in (OURS, BASELINE)
    )
    return f" (generator near its limit in {limited} run(s))" if limited else ""


def issue16_targets(summary: dict[str, Any]) -> list[Target]:
    """(target, ours, baseline, verdict, repeats) for every target of issue 16 we can judge.

    Issue 16: CPU per delivered message at 100 x 6 x 20 Hz at most 0.9x the baseline's (above
    1.0x a defect); the 500-client join storm at most 1.3x the baseline's; the connect rate at
    2,000 at least 0.8x the baseline's; p99 at 300 campaigns within 1 ms of the baseline's;
    capacity at least the baseline's; a 10,000-campaign flush tick never stalls the event loop
    more than 5 ms. Issue 15.2's cursor figure is kept: the cursor relay costs no more CPU per
    delivered frame than token.move at the same load.
    """
    rows: list[Target] = []
    both = (OURS, BASELINE)
    fixed100 = next((m for m in summary if m.startswith("fixed 100x")), None)
    fixed300 = next((m for m in summary if m.startswith("fixed 300x")), None)
    if fixed100:
        ours = _number(_get(summary, fixed100, OURS, "cpu_per_msg_us"))
        base = _number(_get(summary, fixed100, BASELINE, "cpu_per_msg_us"))
        ratio = ours / base if ours is not None and base else None
        if ratio is None:
            verdict = "n/a"
        elif ratio > 1.0:
            verdict = "DEFECT (> 1.0x)"
        else:
            verdict = _verdict(ratio <= 0.9)
        rows.append(
            (
                "CPU per delivered msg at 100x6 @ 20 Hz <= 0.9x baseline (> 1.0x is a defect)",
                f"{_fmt(ours)} us ({_times(ratio)})",
                f"{_fmt(base)} us",
                verdict + _caveat(summary, fixed100),
                _repeats(summary, fixed100, both),
            )
        )
    if "storm" in summary:
        ours = _number(_get(summary, "storm", OURS, "all_synced_ms"))
        base = _number(_get(summary, "storm", BASELINE, "all_synced_ms"))
        ratio = ours / base if ours is not None and base else None
        incomplete = ours is None and bool(summary["storm"].get(OURS))
        rows.append(
            (
                "join storm of 500, all synced, <= 1.3x baseline",
                f"{_fmt(ours, 0)} ms ({_times(ratio)})",
                f"{_fmt(base, 0)} ms",
                "MISSED (not all synced)"
                if incomplete
                else _verdict(None if ratio is None else ratio <= 1.3),
                _repeats(summary, "storm", both),
            )
        )
    if "connect" in summary:
        ours = _number(_get(summary, "connect", OURS, "connections_per_s"))
        base = _number(_get(summary, "connect", BASELINE, "connections_per_s"))
        ratio = ours / base if ours is not None and base else None
        count = _get(summary, "connect", OURS, "connections") or 2000
        flight = _get(summary, "connect", OURS, "concurrency") or 200
        incomplete = ours is None and bool(summary["connect"].get(OURS))
        rows.append(
            (
                f"connect rate at {count:,} ({flight} in flight) >= 0.8x baseline",
                f"{_fmt(ours, 0)}/s ({_times(ratio)})",
                f"{_fmt(base, 0)}/s",
                (
                    "MISSED (not all synced)"
                    if incomplete
                    else _verdict(None if ratio is None else ratio >= 0.8)
                )
                + _caveat(summary, "connect"),
                _repeats(summary, "connect", both),
            )
        )
    if fixed300:
        ours = _number(_get(summary, fixed300, OURS, "p99_ms"))
        base = _number(_get(summary, fixed300, BASELINE, "p99_ms"))
        rows.append(
            (
                "p99 at 300 campaigns <= baseline p99 + 1 ms",
                f"{_fmt(ours)} ms",
                f"{_fmt(base)} ms",
                _verdict(None if ours is None or base is None else ours <= base + 1.0)
                + _caveat(summary, fixed300),
                _repeats(summary, fixed300, both),
            )
        )
    if "ramp" in summary:
        ours = _number(_get(summary, "ramp", OURS, "capacity"))
        base = _number(_get(summary, "ramp", BASELINE, "capacity"))
        rows.append(
            (
                "capacity (most campaigns at p99 <= 50 ms, no errors) >= baseline",
                f"{_fmt(ours, 0)} campaigns",
                f"{_fmt(base, 0)} campaigns",
                _verdict(None if ours is None or base is None else ours >= base),
                _repeats(summary, "ramp", both),
            )
        )
    if "flush" in summary:
        flush = summary["flush"].get(OURS, {})
        stall = _number(flush.get("stall_cpu_ms"))
        wall = _number(flush.get("stall_wall_ms"))
        sessions = flush.get("sessions") or 10_000
        rows.append(
            (
                f"flush tick of {sessions:,} campaigns: longest event-loop stall <= 5 ms",
                f"{_fmt(stall, 1)} ms of loop CPU ({_fmt(wall, 1)} ms wall)",
                "",
                _verdict(None if stall is None else stall <= 5.0),
                _repeats(summary, "flush", (OURS,)),
            )
        )
    for mode in (m for m in summary if m.startswith("cursor ")):
        fixed = "fixed " + mode.removeprefix("cursor ")
        moves = _number(_get(summary, fixed, OURS, "cpu_per_msg_us"))
        cursors = _number(_get(summary, mode, OURS, "cpu_per_msg_us"))
        ratio = cursors / moves if cursors is not None and moves else None
        rows.append(
            (
                f"cursor relay CPU per delivered frame <= token.move's, {mode.split()[1]} "
                "(issue 15.2)",
                f"{_fmt(cursors)} us ({_times(ratio)} a move)",
                f"token.move: {_fmt(moves)} us (ours)",
                _verdict(None if ratio is None else ratio <= 1.0),
                _repeats(summary, mode, (OURS,)),
            )
        )
    return rows


def issue9_targets(summary: dict[str, Any]) -> list[Target]:
    """The targets of issue 9 that issue 16 did not replace: idle memory and the flush tick.

    (Its CPU, p99, capacity and storm targets are issue 16's now, relative to the baseline.)
    """
    rows: list[Target] = []
    if "idle" in summary:
        for key in sorted(
            k for k in summary["idle"].get(OURS, {}) if k.startswith("kb_per_connection_")
        ):
            ours = _number(_get(summary, "idle", OURS, key))
            base = _number(_get(summary, "idle", BASELINE, key))
            count = key.rsplit("_", 1)[1]
            rows.append(
                (
                    f"memory per idle connection at {count} <= 17 KB",
                    f"{_fmt(ours)} KB",
                    f"{_fmt(base)} KB",
                    _verdict(None if ours is None else ours <= 17.0),
                    _repeats(summary, "idle", (OURS, BASELINE)),
                )
            )
    if "flush" in summary:
        flush = summary["flush"].get(OURS, {})
        seconds = _number(flush.get("tick_s") or flush.get("seconds"))
        rows.append(
            (
                "one flush tick of 10,000 dirty campaigns < 1 s",
                f"{_fmt(seconds, 3)} s",
                "",
                _verdict(None if seconds is None else seconds < 1.0),
                _repeats(summary, "flush", (OURS,)),
            )
        )
    return rows


def targets(summary: dict[str, Any]) -> list[Target]:
    """Every target we can judge: issue 16's, then what is left of issue 9's."""
    return issue16_targets(summary) + issue9_targets(summary)


def _target_table(title: str, rows: list[Target]) -> list[str]:
    lines = [
        "",
        f"## {title}",
        "",
        "| target | ours | baseline | verdict | repeats (ours / baseline) |",
        "|---|---|---|---|---|",
    ]
    return lines + [f"| {t} | {o} | {b} | {v} | {n} |" for t, o, b, v, n in rows]


def _mode_notes(mode: str) -> list[str]:
    """What to keep in mind reading a fixed-like table."""
    if mode.startswith("cursor"):
        return [
            "cursor.move instead of token.move. Ours relays a cursor to every member but its "
            "sender (5 deliveries per cursor at 6 clients), paced to 20 Hz per sender; the "
            "baseline relays it like any frame, to its sender too (6 deliveries), so compare "
            "CPU per delivered frame and per sent message side by side."
        ]
    if mode.startswith("chat"):
        return [
            "One sender per campaign sends chat.send; every client (the sender too) receives "
            "it: chat.message from ours, the relayed chat.send from the baseline. Ours checks "
            "the message, rolls its dice when it has a roll, and inserts it into Postgres "
            "(chat_messages, and vtt_chat_rolls for a roll) before anyone sees it; the "
            "database's own CPU is not counted in ours (it shows in the noise rows when it "
            "lands on a pinned core). The baseline does no insert and rolls nothing. Above 2 "
            "messages a second per sender (our default per-user chat rate) ours runs with the "
            "rate raised for the measurement."
        ]
    return []


def markdown(results: dict[str, Any]) -> str:
    """Render the whole run as a markdown summary."""
    m = results["machine"]
    servers: list[str] = results["servers"]
    summary: dict[str, Any] = results["summary"]
    setup = results["setup"]
    lines = [
        "# Benchmark results",
        "",
        f"- date: {m['date']}, commit {m['commit']}, profile `{results['profile']['name']}`, "
        f"took {results['duration_s']:.0f} s",
        f"- machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"kernel {m['kernel']}, load average at start {m['load_average_at_start']}",
        f"- command: `{results['command']}`",
        f"- our server: auth `{setup['auth']}`, database {setup['database']}; "
        "baseline: raw websockets relay (bench/baseline_relay.py)",
        "- server pinned to core 0, load generator to core 1; servers alternate per repeat; "
        "figures are medians across repeats",
    ]
    lines += [f"- note: {note}" for note in setup["notes"]]
    windows = [
        window
        for by_server in results["runs"].values()
        for runs in by_server.values()
        for r in runs
        for window in [r, *r.get("steps", [])]
    ]
    noise = [
        max(w.get("noise_server_core", 0.0), w.get("noise_generator_core", 0.0)) for w in windows
    ]
    if noise and max(noise) > NOISE_WARNING:
        lines.append(
            f"- WARNING: other processes used up to {max(noise):.0%} of a pinned core during "
            "measurement windows (see the noise rows); treat these figures as unreliable"
        )
    if OURS in servers:
        lines += _target_table("Targets (issue 16)", issue16_targets(summary))
        lines += [
            "",
            "Issue 16 asks for medians of at least 3 repeats per server; fewer is a partial run. "
            "The flush stall is bench/flush_bench.py's: the worst lateness of a 1 ms timer "
            "during a real tick (snapshots, upserts, state.saved) of the update ticks, in the "
            "loop's own CPU time (a shared machine's preemption left out), wall clock beside.",
        ]
        kept = issue9_targets(summary)
        if kept:
            lines += _target_table("Targets kept from issue 9", kept)
    for mode, by_server in summary.items():
        lines += ["", f"## {mode}", ""]
        reps = ", ".join(f"{s}: {by_server.get(s, {}).get('repeats', 0)}" for s in servers)
        failures = [f for s in servers for f in by_server.get(s, {}).get("failures", [])]
        if _fixed_like(mode):
            lines += _table(FIXED_ROWS, by_server, servers)
            lines += ["", *_mode_notes(mode)]
        elif mode == "connect":
            lines += _table(
                [
                    ("connections per second until all have state.sync", "connections_per_s", 0),
                    ("until all have state.sync (ms)", "all_synced_ms", 0),
                    ("per-connection handshake to state.sync p50 (ms)", "handshake_p50_ms", 1),
                    ("per-connection handshake to state.sync p99 (ms)", "handshake_p99_ms", 1),
                    ("server CPU per connection (ms)", "server_cpu_ms_per_connection", 2),
                    ("connections", "connections", 0),
                    ("handshakes in flight at most", "concurrency", 0),
                    ("fewest synced in a repeat", "min_synced", 0),
                    ("errors", "errors", 0),
                    ("generator CPU (share of its core)", "generator_cpu_share", 2),
                    ("runs where the generator was near its limit", "generator_limited_runs", 0),
                ],
                by_server,
                servers,
            )
            lines.append("")
            lines += [
                f"- {s}: connections/s per repeat {by_server.get(s, {}).get('rates')}"
                for s in servers
            ]
        elif mode == "ramp":
            lines += _table(
                [
                    ("capacity (campaigns x 6 at 20 Hz)", "capacity", 0),
                    ("runs that hit the ramp's ceiling", "limit_reached_runs", 0),
                    ("steps where the generator was near its limit", "generator_limited_steps", 0),
                ],
                by_server,
                servers,
            )
            lines.append("")
            lines += [
                f"- {s}: capacities per repeat {by_server.get(s, {}).get('capacities')}"
                for s in servers
            ]
        elif mode == "idle":
            lines += _table(_idle_rows(by_server, servers), by_server, servers)
        elif mode == "storm":
            lines += _table(
                [
                    ("until all have state.sync (ms)", "all_synced_ms", 0),
                    ("per-client p50 (ms)", "p50_ms", 0),
                    ("per-client p99 (ms)", "p99_ms", 0),
                    ("server CPU per connection (ms)", "server_cpu_ms_per_connection", 2),
                    ("clients", "clients", 0),
                    ("fewest synced in a repeat", "min_synced", 0),
                    ("errors", "errors", 0),
                ],
                by_server,
                servers,
            )
        elif mode == "flush":
            flush = by_server.get(OURS, {})
            lines += [
                "| figure | ours |",
                "|---|---|",
                f"| dirty campaigns per tick | {_fmt(flush.get('sessions'), 0)} |",
                f"| tokens per campaign | {_fmt(flush.get('tokens_per_session'), 0)} |",
                f"| one tick, median (s) | {_fmt(flush.get('tick_s'), 3)} |",
                f"| database round trips per tick | {_fmt(flush.get('round_trips_per_tick'), 0)} |",
                f"| worst loop stall, loop CPU (ms) | {_fmt(flush.get('stall_cpu_ms'), 1)} |",
                f"| worst loop stall, wall clock (ms) | {_fmt(flush.get('stall_wall_ms'), 1)} |",
            ]
            if flush.get("skipped"):
                lines.append(f"- skipped: {flush['skipped']}")
        lines += ["", f"repeats: {reps}"]
        lines += [f"- failed run: {f}" for f in failures]
    return "\n".join(lines) + "\n"


# --- soak (issue 16.4) ---------------------------------------------------------------------------

SOAK_RSS_GROWTH_LIMIT = 0.05
SOAK_P99_GROWTH_LIMIT = 2.0
# RSS is compared after the first 5 minutes of a 30-minute soak; shorter soaks settle for the
# same share of their length (at least one window), longer ones for 5 minutes.
SOAK_SETTLE_S = 300.0
SOAK_REFERENCE_S = 1800.0


def soak_settle_windows(windows: int, window_s: float) -> int:
    """How many windows the RSS reference comes after: 5 minutes, or 1/6 of a shorter soak."""
    duration = windows * window_s
    settle_s = min(SOAK_SETTLE_S, duration * SOAK_SETTLE_S / SOAK_REFERENCE_S)
    return max(1, round(settle_s / window_s))


def _total(window: dict[str, Any], key: str) -> int:
    return int(sum(window.get(key, {}).values()))


def soak_verdict(
    windows: list[dict[str, Any]],
    window_s: float,
    setup_errors: dict[str, int] | None = None,
    expected_windows: int | None = None,
) -> dict[str, Any]:
    """Issue 16.4's pass rule over a soak's windows.

    Pass = RSS growth under 5 % from the end of the settle windows (after minute 5) to the
    end; p99 of moves in the last window under 2x the first window's; zero errors (the
    set-up's included); zero lost and zero reordered messages. A check that cannot be judged
    (too few windows) fails the soak, and so does a soak that ended before its last window.
    A warm-up window (`warmup: true`) counts for errors, loss and order only.
    """
    every = windows
    windows = [w for w in every if not w.get("warmup")]
    count = len(windows)
    settle = soak_settle_windows(count, window_s)
    checks: list[dict[str, Any]] = []
    if expected_windows is not None and count < expected_windows:
        checks.append(
            {
                "check": "windows run",
                "rule": f"all {expected_windows}",
                "measured": count,
                "passed": False,
            }
        )
    if count > settle:
        reference = float(windows[settle - 1]["server_rss_mb"])
        end = float(windows[-1]["server_rss_mb"])
        growth = (end - reference) / reference if reference else None
        checks.append(
            {
                "check": "RSS growth after the settle windows",
                "rule": f"< {SOAK_RSS_GROWTH_LIMIT:.0%} from the end of window {settle} "
                f"({reference:.1f} MB) to the end ({end:.1f} MB)",
                "measured": None if growth is None else round(growth, 4),
                "passed": None if growth is None else growth < SOAK_RSS_GROWTH_LIMIT,
            }
        )
    else:
        checks.append(
            {
                "check": "RSS growth after the settle windows",
                "rule": f"needs more than {settle} window(s)",
                "measured": None,
                "passed": None,
            }
        )
    if count >= 2:
        first = float(windows[0]["latency_ms"]["p99"])
        last = float(windows[-1]["latency_ms"]["p99"])
        checks.append(
            {
                "check": "p99 of moves, last window vs first",
                "rule": f"< {SOAK_P99_GROWTH_LIMIT:g}x the first ({first:.2f} ms)",
                "measured": last,
                "passed": last < SOAK_P99_GROWTH_LIMIT * first,
            }
        )
    else:
        checks.append(
            {
                "check": "p99 of moves, last window vs first",
                "rule": "needs 2 windows",
                "measured": None,
                "passed": None,
            }
        )
    errors = sum(_total(w, "errors") for w in every) + sum((setup_errors or {}).values())
    lost = sum(_total(w, "lost") for w in every)
    reordered = sum(_total(w, "reordered") for w in every)
    for name, value in (("errors", errors), ("lost", lost), ("reordered", reordered)):
        checks.append({"check": name, "rule": "0", "measured": value, "passed": value == 0})
    return {
        "passed": all(c["passed"] is True for c in checks),
        "settle_windows": settle,
        "checks": checks,
    }


def soak_markdown(results: dict[str, Any]) -> str:
    """Render a soak run: its verdict and a row per window."""
    m = results["machine"]
    load = results["load"]
    verdict = results["verdict"]
    windows: list[dict[str, Any]] = results["windows"]
    minutes = results["duration_s"] / 60
    measured = [w for w in windows if not w.get("warmup")]
    warmup = load.get("warmup_s", 0)
    lines = [
        "# Soak results",
        "",
        f"- date: {m['date']}, commit {m['commit']}, {minutes:g} min in {len(measured)} "
        f"windows of {load['window_s']:g} s after a {warmup:g}-s warm-up, "
        f"took {results['wall_s']:.0f} s",
        f"- machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"load average at start {m['load_average_at_start']}",
        f"- command: `{results['command']}`",
        f"- our server: auth `{results['setup']['auth']}`, database "
        f"{results['setup']['database']}; pinned to core 0, the generator to core 1",
        f"- load: {load['campaigns']} campaigns x {load['clients']} clients; one mover at "
        f"{load['move_rate']:g} Hz (token.move), one cursor at {load['cursor_rate']:g} Hz, one "
        f"chat.send every {load['chat_interval']:g} s per campaign (1 in 4 with a roll); "
        f"{load['reconnects']} reconnects per campaign per window with resume, "
        f"{load['offline']:g} s away; each campaign starts with {load.get('chat_backlog', 0):,} "
        "stored chat messages (its in-memory chat log full)",
    ]
    lines += [f"- note: {note}" for note in results["setup"]["notes"]]
    if results.get("setup_errors"):
        lines.append(f"- set-up errors: {results['setup_errors']}")
    if results.get("failure"):
        lines.append(f"- cut short: {results['failure']}")
    limited = sum(bool(w.get("generator_limited")) for w in windows)
    if limited:
        lines.append(f"- the generator was near its limit in {limited} window(s)")
    noise = max(
        (max(w.get("noise_server_core", 0.0), w.get("noise_generator_core", 0.0)) for w in windows),
        default=0.0,
    )
    if noise > NOISE_WARNING:
        lines.append(
            f"- WARNING: other processes used up to {noise:.0%} of a pinned core in a window"
        )
    lines += [
        "",
        f"## Verdict (issue 16.4): {'PASS' if verdict['passed'] else 'FAIL'}",
        "",
        "| check | rule | measured | verdict |",
        "|---|---|---|---|",
    ]
    for check in verdict["checks"]:
        measured = check["measured"]
        if check["check"].startswith("RSS") and isinstance(measured, float):
            shown = f"{measured:+.2%}"
        elif check["check"].startswith("p99") and isinstance(measured, float):
            shown = f"{measured:.2f} ms"
        else:
            shown = _fmt(measured, 0)
        ok = check["passed"]
        lines.append(
            f"| {check['check']} | {check['rule']} | {shown} | "
            f"{'n/a (fails)' if ok is None else ('pass' if ok else 'FAIL')} |"
        )
    lines += [
        "",
        "## Windows",
        "",
        "| window | RSS (MB) | move p50 / p99 (ms) | chat p99 (ms) | cursor p99 (ms) "
        "| CPU per delivered msg (us) | server CPU share | delivered/s | moves | cursors "
        "| chat | replayed | lost | reordered | errors | reconnects (resumed / resynced) "
        "| generator CPU | noise (server / generator core) |",
        "|---" * 18 + "|",
    ]
    for w in windows:
        d = w["delivered"]
        lines.append(
            f"| {'warm-up' if w.get('warmup') else w['window'] + 1} | {w['server_rss_mb']:.1f} "
            f"| {w['latency_ms']['p50']:.2f} / {w['latency_ms']['p99']:.2f} "
            f"| {w['chat_latency_ms']['p99']:.2f} | {w['cursor_latency_ms']['p99']:.2f} "
            f"| {w['cpu_per_msg_us']:.2f} | {w['server_cpu_share']:.2f} "
            f"| {w['delivered_per_s']:,.0f} | {d['token.move']:,} | {d['cursor.move']:,} "
            f"| {d['chat.message']:,} "
            f"| {d['token.move (replayed)'] + d['chat.message (replayed)']:,} "
            f"| {_total(w, 'lost')} | {_total(w, 'reordered')} | {_total(w, 'errors')} "
            f"| {w['reconnects']} ({w['resumed']} / {w['resynced']}) "
            f"| {w['generator']['cpu_share']:.2f} "
            f"| {w['noise_server_core']:.2f} / {w['noise_generator_core']:.2f} |"
        )
    lines += [
        "",
        "The warm-up row is not judged for RSS or p99; its errors and losses count. "
        "Moves carry a per-campaign counter and chat messages one of their own; every client "
        "must see each exactly once and in order, across its reconnects (a resumed client gets "
        "what it missed replayed after state.resume: the 'replayed' column). A full state.sync "
        "instead of a resume counts as a resync, and what it skipped is not loss. Latency is "
        "of live frames only. Cursors are ephemeral (coalesced to 20 Hz per sender, never "
        "replayed): only their order is checked. CPU per delivered message is the server's "
        "CPU over every frame it delivered in the window (moves, cursors, chat, replays, "
        "state.saved, presence).",
    ]
    return "\n".join(lines) + "\n"
