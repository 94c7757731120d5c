"""bench.profile with perf: the kernel's share of the samples, read from `perf report`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.profile import per_sent_us, perf_rows, perf_summary, sampler_argv

# `perf report --stdio --no-children -g none --sort dso` (shortened), and by dso,sym.
BY_DSO = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 16K of event 'cpu-clock:ppp'
# Overhead  Shared Object
# ........  ....................
#
    51.21%  [kernel.kallsyms]
    38.42%  libpython3.11.so.1.0
    10.37%  loop.cpython-311-x86_64-linux-gnu.so

"""
BY_SYMBOL = """\
# Overhead  Shared Object         Symbol
    20.65%  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
    10.01%  [kernel.kallsyms]     [k] _raw_spin_unlock_irqrestore
"""


def test_the_rows_of_a_report_are_its_percentages_and_names_without_the_header() -> None:
    assert perf_rows(BY_DSO) == [
        (51.21, "[kernel.kallsyms]"),
        (38.42, "libpython3.11.so.1.0"),
        (10.37, "loop.cpython-311-x86_64-linux-gnu.so"),
    ]


def test_the_summary_splits_the_cpu_per_sent_frame_between_the_kernel_and_user_space() -> None:
    text = perf_summary(BY_DSO, BY_SYMBOL, top=10, sent_us=100.0)

    assert text.splitlines()[0] == "kernel 51.2% of the server's samples, user space 48.8%"
    assert text.splitlines()[1] == (
        "server CPU per sent frame 100.00 us: kernel 51.21 us, user space 48.79 us"
    )
    assert "   20.65%  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault" in text


def test_an_empty_report_says_so() -> None:
    assert perf_summary("", "", top=10) == "no samples\n"


def test_the_cpu_per_sent_frame_needs_both_the_window_and_a_count() -> None:
    result = {"moves_sent": 2000}

    assert per_sent_us({"result": result, "server_cpu_s": 0.18}) == pytest.approx(90.0)
    assert per_sent_us({"result": result, "server_cpu_s": None}) is None
    assert per_sent_us({"result": {}, "server_cpu_s": 0.18}) is None


def test_perf_samples_the_server_for_the_window_and_py_spy_otherwise() -> None:
    out = Path("/tmp/x")
    perf = argparse.Namespace(perf="perf", py_spy="py-spy")
    spy = argparse.Namespace(perf=None, py_spy="py-spy")

    assert sampler_argv(perf, 42, 15.0, out) == [
        *("perf", "record", "-F", "999", "-p", "42", "-o", "/tmp/x", "--", "sleep", "15"),
    ]
    assert sampler_argv(spy, 42, 15.0, out)[:2] == ["py-spy", "record"]
    assert sampler_argv(spy, 42, 15.0, out)[-2:] == ["--pid", "42"]
