"""Scoring kernel over 1 000 and 10 000 nodes, beside NumPy and pure Python.

``pytest benchmarks/test_scoring.py -s`` prints, per fleet size, the median
of one scoring pass and choice through the thin wrapper
(:func:`fedgate.routing.scoring.score_nodes`) next to the best vectorised NumPy
version of the same computation and a plain Python loop over lists, all on
the very same data and checked first to agree (scores, reasons, choice). It
also prints Numba's fixed cost per call (the kernel over no nodes, and a
no-op kernel with 1 and with 16 array arguments), to show how much of the
1 000-node figure is dispatch.

Targets (issue 2): at 10 000 nodes, ≥ 5× faster than NumPy and ≥ 100× faster
than pure Python. They are printed, not asserted: timings are not tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numba
import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.scoring import Case, NumpyScorer, make_case, python_score
from fedgate._core import codes
from fedgate.routing import _jit
from fedgate.routing import _kernels as kn
from fedgate.routing import scoring as sc

OURS = "fedgate score_nodes()"
DIRECT = "kernel called directly"
NUMPY = "best NumPy"
PYTHON = "pure-Python loop"
SIZES = [1000, 10000]
TARGETS = {NUMPY: 5.0, PYTHON: 100.0}

# case -> implementation -> median seconds per call
_FIGURES: dict[str, dict[str, float]] = {}
_CASES: dict[int, Case] = {}


@pytest.fixture(scope="module", autouse=True)
def print_figures() -> Iterator[None]:
    _jit.warm_up()  # compile outside every timing
    yield
    if not _FIGURES:
        print("\nscoring benchmarks: timings disabled (--benchmark-disable), bodies ran once")
        return
    print("\nscoring pass and choice (median = p50 per call):")
    for group, figures in _FIGURES.items():
        ours = figures.get(OURS)
        if group == "dispatch" or ours is None:
            continue
        print(f"  {group}: ours (thin wrapper) p50 {ours * 1e6:.1f} µs")
        direct = figures.get(DIRECT)
        if direct is not None:
            print(f"    kernel called directly {direct * 1e6:.1f} µs (wrapper adds "
                  f"{(ours - direct) * 1e6:.1f} µs)")  # fmt: skip
        for name in (NUMPY, PYTHON):
            if name not in figures:
                continue
            ratio = figures[name] / ours
            verdict = ""
            if group.startswith("10000"):
                met = "met" if ratio >= TARGETS[name] else "NOT met"
                verdict = f"  (target ≥ {TARGETS[name]:.0f}×: {met})"
            print(
                f"    ours {ours * 1e6:.1f} µs vs {name} {figures[name] * 1e6:.1f} µs"
                f" = {ratio:.1f}×{verdict}"
            )
    dispatch = _FIGURES.get("dispatch", {})
    if dispatch:
        print("  numba's fixed cost per call (median):")
        for name, seconds in dispatch.items():
            print(f"    {name}: {seconds * 1e6:.2f} µs")
        empty = dispatch.get("kernel, 0 nodes")
        direct_1000 = _FIGURES.get("1000 nodes", {}).get(DIRECT)
        if empty is not None and direct_1000 is not None:
            print(f"    = {empty / direct_1000:.0%} of the direct 1 000-node call")


def case(nodes: int) -> Case:
    if nodes not in _CASES:
        _CASES[nodes] = make_case(nodes)
    return _CASES[nodes]


def run(benchmark: BenchmarkFixture, group: str, name: str, fn: Callable[[], object]) -> None:
    benchmark.group = group
    benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _FIGURES.setdefault(group, {})[name] = stats.stats.median


@pytest.mark.parametrize("nodes", SIZES)
def test_all_three_agree(nodes: int) -> None:
    c = case(nodes)
    best = sc.score_nodes(c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)
    scores, reasons = c.out_scores.copy(), c.out_reasons.copy()
    assert best >= 0 and (reasons == codes.REASON_OK).sum() > nodes // 2  # a realistic fleet

    assert NumpyScorer(nodes)(c) == best
    np.testing.assert_array_equal(c.out_reasons, reasons)
    np.testing.assert_allclose(c.out_scores, scores, rtol=1e-12, atol=0)

    py_scores, py_reasons = [0.0] * nodes, [0] * nodes
    assert python_score(c, py_scores, py_reasons) == best
    assert py_reasons == reasons.tolist()
    np.testing.assert_allclose(py_scores, scores, rtol=1e-12, atol=0)


@pytest.mark.parametrize("nodes", SIZES)
def test_score_nodes(benchmark: BenchmarkFixture, nodes: int) -> None:
    c = case(nodes)
    score = sc.score_nodes
    args = (c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)
    best = score(*args)
    run(benchmark, f"{nodes} nodes", OURS, lambda: score(*args))
    assert score(*args) == best >= 0


@pytest.mark.parametrize("nodes", SIZES)
def test_kernel_direct(benchmark: BenchmarkFixture, nodes: int) -> None:
    c = case(nodes)
    kernel = kn._score_kernel
    args = (*c.arrays.kernel_columns(), c.mask, c.arrays.clearance, c.weights, c.params,
            c.out_scores, c.out_reasons)  # fmt: skip
    run(benchmark, f"{nodes} nodes", DIRECT, lambda: kernel(*args))
    assert kernel(*args) == sc.score_nodes(c.arrays, c.mask, c.weights, c.params)


@pytest.mark.parametrize("nodes", SIZES)
def test_numpy_baseline(benchmark: BenchmarkFixture, nodes: int) -> None:
    c = case(nodes)
    scorer = NumpyScorer(nodes)
    run(benchmark, f"{nodes} nodes", NUMPY, lambda: scorer(c))
    assert scorer(c) == sc.score_nodes(c.arrays, c.mask, c.weights, c.params)


@pytest.mark.parametrize("nodes", SIZES)
def test_python_baseline(benchmark: BenchmarkFixture, nodes: int) -> None:
    c = case(nodes)
    scores, reasons = [0.0] * nodes, [0] * nodes
    run(benchmark, f"{nodes} nodes", PYTHON, lambda: python_score(c, scores, reasons))
    assert python_score(c, scores, reasons) == sc.score_nodes(c.arrays, c.mask, c.weights, c.params)


# ---------------------------------------------------------------- dispatch cost


@numba.njit(**_jit.JIT_OPTIONS)
def _noop1(a: np.ndarray) -> int:
    return 0


@numba.njit(**_jit.JIT_OPTIONS)
def _noop16(
    n: int, a1: np.ndarray, a2: np.ndarray, a3: np.ndarray, a4: np.ndarray, a5: np.ndarray,
    a6: np.ndarray, a7: np.ndarray, a8: np.ndarray, a9: np.ndarray, a10: np.ndarray,
    a11: np.ndarray, a12: np.ndarray, a13: np.ndarray, a14: np.ndarray, a15: np.ndarray,
) -> int:  # fmt: skip
    return 0


def test_dispatch_empty_kernel(benchmark: BenchmarkFixture) -> None:
    c = case(0)
    kernel = kn._score_kernel
    args = (*c.arrays.kernel_columns(), c.mask, c.arrays.clearance, c.weights, c.params,
            c.out_scores, c.out_reasons)  # fmt: skip
    run(benchmark, "dispatch", "kernel, 0 nodes", lambda: kernel(*args))
    assert kernel(*args) == -1


def test_dispatch_empty_wrapper(benchmark: BenchmarkFixture) -> None:
    c = case(0)
    args = (c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)
    run(benchmark, "dispatch", "score_nodes(), 0 nodes", lambda: sc.score_nodes(*args))


@pytest.mark.parametrize("arity", [1, 16])
def test_dispatch_noop(benchmark: BenchmarkFixture, arity: int) -> None:
    a = np.zeros(4)
    if arity == 1:
        run(benchmark, "dispatch", "no-op, 1 array argument", lambda: _noop1(a))
        return
    args = (4, *([a] * 15))
    run(benchmark, "dispatch", "no-op, 1 int + 15 array arguments", lambda: _noop16(*args))
