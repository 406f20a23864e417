"""pytest-benchmark: the breaker state table against its baselines, in one run.

Each case runs on the compiled table ("ours"), its pure-Python twin and the
hand-written dict+lock breaker (benchmarks/breaker.py); the module prints
``ours X µs vs baseline Y µs = Z×`` per case at the end (``pytest -s``). With
``--benchmark-disable`` every case runs once as a smoke test.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Loaded by path: benchmarks/ is not a package and the asv module must not be
# shadowed by, or shadow, anything on sys.path.
_spec = importlib.util.spec_from_file_location(
    "_fedgate_bench_breaker", Path(__file__).with_name("breaker.py")
)
assert _spec is not None and _spec.loader is not None
asv_breaker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(asv_breaker)

NOW = asv_breaker.NOW
IMPLS = asv_breaker.IMPLS
RESULTS: dict[str, dict[str, float]] = {}


def setup_case(case: str, impl: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The call to time and its arguments (bound methods are passed directly, so
    single calls carry no wrapper overhead)."""
    make = asv_breaker.make_table
    try:
        if case == "allow on a CLOSED slot":
            table = make(impl, nodes=1)
            return table.allow, (0, NOW)
        if case == "allow on an OPEN slot":
            table = make(impl, nodes=1, failure_threshold=1)
            table.record_failure(0, NOW)
            return table.allow, (0, NOW + 1.0)
        if case == "record_failure + record_success":
            table = make(impl, nodes=1)

            def pair() -> None:
                table.record_failure(0, NOW)
                table.record_success(0, NOW)

            return pair, ()
        if case == "trip + probe + close":
            table = make(impl, nodes=1, failure_threshold=1, open_timeout=0.001)

            def cycle() -> None:
                table.record_failure(0, NOW)
                table.allow(0, NOW + 0.001)
                table.record_success(0, NOW + 0.001)

            return cycle, ()
        if case == "states_into, 1000 nodes":
            table = make(impl, nodes=1000, failure_threshold=1)
            for slot in range(0, 1000, 3):
                table.record_failure(slot, NOW)
            out = np.zeros(1000, dtype=np.int8)
            return table.states_into, (NOW + 1.0, out)
    except NotImplementedError as exc:
        pytest.fail(f"{impl}: {exc}")
    raise AssertionError(case)


CASES = [
    "allow on a CLOSED slot",
    "allow on an OPEN slot",
    "record_failure + record_success",
    "trip + probe + close",
    "states_into, 1000 nodes",
]


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    if not RESULTS:
        print("\nbreaker table: benchmarks disabled (smoke run), no figures")
        return
    print("\nbreaker table: ours = compiled; median per call")
    for case in CASES:
        row = RESULTS.get(case, {})
        ours = row.get("compiled")
        if ours is None:
            continue
        for base in ("pure", "dict"):
            if base in row:
                print(
                    f"  {case:34s} ours {ours * 1e6:8.3f} µs vs {base:4s} baseline "
                    f"{row[base] * 1e6:8.3f} µs = {row[base] / ours:6.1f}×"
                )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_breaker_table(benchmark: Any, case: str, impl: str) -> None:
    run, args = setup_case(case, impl)
    benchmark.group = f"breaker: {case}"
    benchmark.extra_info["impl"] = impl
    # Sub-microsecond calls: time 200 per round so the timer's own cost and
    # resolution vanish from the figure (pedantic reports the per-call mean).
    iterations = 5 if case.startswith("states_into") else 200
    benchmark.pedantic(run, args, rounds=200, iterations=iterations, warmup_rounds=3)
    if benchmark.stats is not None:  # None under --benchmark-disable
        RESULTS.setdefault(case, {})[impl] = benchmark.stats.stats.median
