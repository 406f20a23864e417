"""Latency table: record and p50/p95/p99, each against its baseline in the same run.

``pytest benchmarks/test_latency.py -s`` prints, per case, the table that
``fedgate._core`` chose (normally the compiled one) beside the baselines:
a ``deque`` append and the pure twin for ``record``; ``numpy.percentile`` on
the very same samples for the percentiles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from fedgate import _core
from fedgate._core._latency_py import LatencyTable as PureLatencyTable

WINDOW = 1024
NODES = 1000
TRIPLE = [50, 95, 99]
OURS = f"fedgate ({_core.IMPLEMENTATION})"

# case -> implementation -> median seconds per call
_FIGURES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    yield
    if not _FIGURES:
        print("\nlatency benchmarks: timings disabled (--benchmark-disable), bodies ran once")
        return
    print("\nlatency table (median per call):")
    for case, figures in _FIGURES.items():
        ours = figures.get(OURS)
        for name, seconds in figures.items():
            if name == OURS or ours is None:
                continue
            print(
                f"  {case}: ours {ours * 1e6:.3f} µs vs {name} {seconds * 1e6:.3f} µs"
                f" = {seconds / ours:.2f}×"
            )


def run(benchmark: BenchmarkFixture, case: str, name: str, fn: Callable[[], object]) -> None:
    benchmark.group = case
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _FIGURES.setdefault(case, {})[name] = stats.stats.median


def full_window(seed: int = 0) -> np.ndarray:
    # Latency-like: log-normal around 50 ms with a long tail.
    return np.random.default_rng(seed).lognormal(np.log(0.05), 0.6, WINDOW)


@pytest.mark.parametrize("impl", [OURS, "pure twin", "deque(maxlen=1024).append"])
def test_record(benchmark: BenchmarkFixture, impl: str) -> None:
    if impl == "deque(maxlen=1024).append":
        window: deque[float] = deque(full_window(), maxlen=WINDOW)
        append = window.append
        run(benchmark, "record", impl, lambda: append(0.045))
        assert len(window) == WINDOW
        return
    cls = _core.LatencyTable if impl == OURS else PureLatencyTable
    table = cls(window=WINDOW, nodes=1)
    table.record_many(0, full_window())
    record = table.record
    run(benchmark, "record", impl, lambda: record(0, 0.045))
    assert table.count(0) == WINDOW


@pytest.mark.parametrize("impl", [OURS, "numpy.percentile"])
def test_percentiles_full_window(benchmark: BenchmarkFixture, impl: str) -> None:
    table = _core.LatencyTable(window=WINDOW, nodes=1)
    table.record_many(0, full_window())
    samples = table.samples(0)
    expected = np.percentile(samples, TRIPLE)
    np.testing.assert_array_equal(table.percentiles(0), expected)
    case = f"p50/p95/p99 of a full {WINDOW}-sample window"
    if impl == OURS:
        run(benchmark, case, impl, lambda: table.percentiles(0))
    else:
        run(benchmark, case, impl, lambda: np.percentile(samples, TRIPLE))


@pytest.mark.parametrize(
    "impl", [OURS, "numpy.percentile(matrix, axis=1)", "numpy.percentile per node"]
)
def test_all_percentiles(benchmark: BenchmarkFixture, impl: str) -> None:
    table = _core.LatencyTable(window=WINDOW, nodes=NODES)
    for slot in range(NODES):
        table.record_many(slot, full_window(slot))
    matrix = np.stack([table.samples(slot) for slot in range(NODES)])
    out = np.empty((NODES, 3))
    np.testing.assert_array_equal(
        table.all_percentiles(out), np.percentile(matrix, TRIPLE, axis=1).T
    )
    case = f"all_percentiles of {NODES} nodes x {WINDOW}"
    if impl == OURS:
        run(benchmark, case, impl, lambda: table.all_percentiles(out))
    elif impl == "numpy.percentile(matrix, axis=1)":
        run(benchmark, case, impl, lambda: np.percentile(matrix, TRIPLE, axis=1))
    else:
        run(benchmark, case, impl, lambda: [np.percentile(row, TRIPLE) for row in matrix])
