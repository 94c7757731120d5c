"""bench.acks: reading each socket's segment counters from `ss -tinH`."""

from __future__ import annotations

from bench.acks import Segments, parse_ss

# Two sockets as `ss -tinH state established '( sport = :8080 )'` prints them (shortened).
SS = """\
0      0      127.0.0.1:8080 127.0.0.1:50712
\t cubic rto:204 segs_out:212 segs_in:203 data_segs_out:12 data_segs_in:201 send 1bps
0      0      127.0.0.1:8080 127.0.0.1:50714
\t cubic wscale:7,7 rto:204 segs_out:205 segs_in:9 data_segs_out:204 data_segs_in:3 lastsnd:4
"""


def test_each_socket_is_keyed_by_its_peers_port_with_its_counters() -> None:
    sockets = parse_ss(SS)

    assert sockets == {50712: Segments(212, 12, 203, 201), 50714: Segments(205, 204, 9, 3)}
    assert sockets[50712].bare_out == 200


def test_a_difference_of_counters_is_taken_field_by_field() -> None:
    later = Segments(out=412, data_out=12, into=403, data_in=401)

    assert later - Segments(212, 12, 203, 201) == Segments(200, 0, 200, 200)


def test_no_socket_reads_as_none() -> None:
    assert parse_ss("") == {}
