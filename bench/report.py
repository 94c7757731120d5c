"""Turning bench results into medians, one-line progress and the markdown summary."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

OURS, BASELINE = "ours", "baseline"
# Above this share of a pinned core used by other processes, a window is not trustworthy.
NOISE_WARNING = 0.10


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _errors_total(result: dict[str, Any]) -> int:
    return int(sum(result.get("errors", {}).values()))


FIXED_FIGURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "delivered_per_s": lambda r: r["delivered_per_s"],
    "cpu_per_msg_us": lambda r: r["cpu_per_msg_us"],
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
    """Whether `mode` is a fixed load (of moves, or of cursors)."""
    return mode.startswith(("fixed", "cursor"))


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
            "min_synced": min(r["synced"] for r in results),
            "errors": sum(_errors_total(r) for r in results),
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
    ("delivered msgs/s", "delivered_per_s", 0),
    ("server CPU per delivered msg (us)", "cpu_per_msg_us", 2),
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


def targets(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Return (target, measured, baseline, verdict) for every target of issue 9 we can judge."""
    rows: list[tuple[str, str, str, str]] = []

    def get(mode: str, server: str, key: str) -> Any:
        return summary.get(mode, {}).get(server, {}).get(key)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "MISSED")

    fixed100 = next((m for m in summary if m.startswith("fixed 100x")), None)
    fixed300 = next((m for m in summary if m.startswith("fixed 300x")), None)
    if fixed100:
        ours, base = (
            get(fixed100, OURS, "cpu_per_msg_us"),
            get(fixed100, BASELINE, "cpu_per_msg_us"),
        )
        ratio = ours / base if ours and base else None
        rows.append(
            (
                "CPU per delivered msg <= 1.0x baseline (> 1.2x is a defect)",
                f"{_fmt(ours)} us ({_fmt(ratio)}x)",
                f"{_fmt(base)} us",
                verdict(None if ratio is None else ratio <= 1.0)
                + (" (DEFECT: > 1.2x)" if ratio and ratio > 1.2 else ""),
            )
        )
    for mode in (m for m in summary if m.startswith("cursor ")):
        moves = get("fixed " + mode.removeprefix("cursor "), OURS, "cpu_per_msg_us")
        cursors = get(mode, OURS, "cpu_per_msg_us")
        ratio = cursors / moves if cursors and moves else None
        rows.append(
            (
                f"cursor relay CPU per delivered frame <= token.move's, {mode.split()[1]} "
                "(issue 15.2)",
                f"{_fmt(cursors)} us ({_fmt(ratio)}x a move)",
                f"token.move: {_fmt(moves)} us (ours)",
                verdict(None if ratio is None else ratio <= 1.0),
            )
        )
    if fixed300:
        ours, base = get(fixed300, OURS, "p99_ms"), get(fixed300, BASELINE, "p99_ms")
        rows.append(
            (
                "p99 at 300 campaigns < 3 ms",
                f"{_fmt(ours)} ms",
                f"{_fmt(base)} ms",
                verdict(None if ours is None else ours < 3.0),
            )
        )
    if "ramp" in summary:
        ours, base = get("ramp", OURS, "capacity"), get("ramp", BASELINE, "capacity")
        rows.append(
            (
                "capacity (p99 <= 50 ms, no errors) >= baseline",
                f"{_fmt(ours, 0)} campaigns",
                f"{_fmt(base, 0)} campaigns",
                verdict(None if ours is None or base is None else ours >= base),
            )
        )
    if "idle" in summary:
        for key in sorted(
            k for k in summary["idle"].get(OURS, {}) if k.startswith("kb_per_connection_")
        ):
            ours, base = get("idle", OURS, key), get("idle", BASELINE, key)
            count = key.rsplit("_", 1)[1]
            rows.append(
                (
                    f"memory per idle connection at {count} <= 17 KB",
                    f"{_fmt(ours)} KB",
                    f"{_fmt(base)} KB",
                    verdict(None if ours is None else ours <= 17.0),
                )
            )
    if "storm" in summary:
        ours, base = get("storm", OURS, "all_synced_ms"), get("storm", BASELINE, "all_synced_ms")
        rows.append(
            (
                "500-client join storm fully synced < 500 ms",
                f"{_fmt(ours, 0)} ms",
                f"{_fmt(base, 0)} ms",
                verdict(None if ours is None else ours < 500),
            )
        )
    if "flush" in summary:
        flush = summary["flush"].get(OURS, {})
        seconds = flush.get("tick_s") or flush.get("seconds")
        rows.append(
            (
                "one flush tick of 10,000 dirty campaigns < 1 s",
                f"{_fmt(seconds, 3)} s",
                "",
                verdict(None if not isinstance(seconds, int | float) else seconds < 1.0),
            )
        )
    return rows


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
        lines += [
            "",
            "## Targets (issue 9)",
            "",
            "| target | ours | baseline | verdict |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t} | {o} | {b} | {v} |" for t, o, b, v in targets(summary)]
    for mode, by_server in summary.items():
        lines += ["", f"## {mode}", ""]
        reps = ", ".join(f"{s}: {by_server.get(s, {}).get('repeats', 0)}" for s in servers)
        failures = [f for s in servers for f in by_server.get(s, {}).get("failures", [])]
        if _fixed_like(mode):
            lines += _table(FIXED_ROWS, by_server, servers)
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
                f"| worst loop stall in a tick (ms) | {_fmt(flush.get('max_loop_lag_ms'), 1)} |",
            ]
            if flush.get("skipped"):
                lines.append(f"- skipped: {flush['skipped']}")
        lines += ["", f"repeats: {reps}"]
        lines += [f"- failed run: {f}" for f in failures]
    return "\n".join(lines) + "\n"
