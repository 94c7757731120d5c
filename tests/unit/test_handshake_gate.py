"""The handshake gate alone, on an injected clock: the bound, the counts, one warning a minute."""

from __future__ import annotations

import logging

import pytest

from app.transport.handshake import WARN_EVERY, HandshakeGate


def gate(bound: int = 2) -> tuple[HandshakeGate, list[str]]:
    seen: list[str] = []
    return (
        HandshakeGate(
            10.0,
            bound,
            on_timeout=lambda: seen.append("timeout"),
            on_refused=lambda: seen.append("refused"),
        ),
        seen,
    )


def test_connections_are_admitted_up_to_the_bound_and_refused_past_it() -> None:
    handshakes, seen = gate(bound=2)

    assert handshakes.admit(0.0)
    assert handshakes.admit(0.0)
    assert not handshakes.admit(0.0)
    assert handshakes.in_progress == 2
    assert seen == ["refused"]


def test_a_released_slot_admits_the_next_connection() -> None:
    handshakes, _ = gate(bound=1)
    assert handshakes.admit(0.0)

    handshakes.release()

    assert handshakes.in_progress == 0
    assert handshakes.admit(1.0)


def test_a_timeout_is_counted_once_per_connection() -> None:
    handshakes, seen = gate()

    handshakes.timed_out(0.0)
    handshakes.timed_out(0.5)

    assert seen == ["timeout", "timeout"]


def test_under_attack_the_gate_warns_once_a_minute_never_once_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handshakes, _ = gate(bound=0)
    caplog.set_level(logging.WARNING, logger="vtt.handshake")

    for second in range(int(WARN_EVERY) * 2 + 1):
        for _ in range(100):
            assert not handshakes.admit(float(second))
            handshakes.timed_out(float(second))

    warnings = [r for r in caplog.records if r.name == "vtt.handshake"]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING for r in warnings)
