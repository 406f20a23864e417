"""Routing decision over 1 000 and 10 000 nodes: the router beside NumPy and pure Python.

``pytest benchmarks/test_router.py -s`` prints, per fleet size, the median of
one full :meth:`Router.route` decision (refresh check, request vector, Numba
kernel, pick, decision object) next to two baselines that score and pick over
the very same node arrays: vectorised NumPy and a plain Python loop. Both
baselines are first checked to choose the node the router chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.router import (
    Fleet,
    build_fleet,
    kernel_inputs,
    numpy_route,
    python_route,
    python_rows,
)
from fedgate.routing.router import STRATEGIES

OURS = "fedgate route()"
SIZES = [1000, 10000]

# case -> implementation -> median seconds per call
_FIGURES: dict[str, dict[str, float]] = {}
_FLEETS: dict[int, Fleet] = {}


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    yield
    if not _FIGURES:
        print("\nrouter benchmarks: timings disabled (--benchmark-disable), bodies ran once")
        return
    print("\nrouting decision (median per call):")
    for case, figures in _FIGURES.items():
        ours = figures.get(OURS)
        for name, seconds in figures.items():
            if name == OURS or ours is None:
                continue
            print(
                f"  {case}: ours {ours * 1e6:.1f} µs vs {name} {seconds * 1e6:.1f} µs"
                f" = {seconds / ours:.1f}×"
            )
        if ours is not None and len(figures) == 1:
            print(f"  {case}: ours {ours * 1e6:.1f} µs")


def fleet(nodes: int) -> Fleet:
    if nodes not in _FLEETS:
        _FLEETS[nodes] = build_fleet(nodes)
    return _FLEETS[nodes]


def run(benchmark: BenchmarkFixture, case: str, name: str, fn: Callable[[], object]) -> None:
    benchmark.group = case
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _FIGURES.setdefault(case, {})[name] = stats.stats.median


@pytest.mark.parametrize("nodes", SIZES)
def test_route(benchmark: BenchmarkFixture, nodes: int) -> None:
    f = fleet(nodes)
    decision = f.router.route(f.request)  # compiles the kernel outside the timing
    run(benchmark, f"route {nodes} nodes", OURS, lambda: f.router.route(f.request))
    assert f.router.route(f.request).node_id == decision.node_id


@pytest.mark.parametrize("nodes", SIZES)
def test_numpy_baseline(benchmark: BenchmarkFixture, nodes: int) -> None:
    f = fleet(nodes)
    inputs = kernel_inputs(f)
    assert numpy_route(inputs) == f.router.route(f.request).slot
    run(benchmark, f"route {nodes} nodes", "NumPy vectorised", lambda: numpy_route(inputs))


@pytest.mark.parametrize("nodes", SIZES)
def test_python_baseline(benchmark: BenchmarkFixture, nodes: int) -> None:
    f = fleet(nodes)
    inputs = kernel_inputs(f)
    rows = python_rows(inputs)
    assert python_route(inputs, rows) == f.router.route(f.request).slot
    run(benchmark, f"route {nodes} nodes", "pure-Python loop", lambda: python_route(inputs, rows))


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "least-latency"])
def test_route_strategy(benchmark: BenchmarkFixture, strategy: str) -> None:
    f = fleet(10000)
    f.router.set_strategy(strategy)
    try:
        f.router.route(f.request)  # builds the hash ring once, outside the timing
        run(benchmark, f"route 10000 nodes, {strategy}", OURS, lambda: f.router.route(f.request))
    finally:
        f.router.set_strategy("least-latency")
