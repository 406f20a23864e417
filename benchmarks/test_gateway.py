"""End-to-end ``gateway.infer()`` to worker processes, each beside a bare pyzmq baseline.

``pytest benchmarks/test_gateway.py -s`` prints, measured in the same run:

- latency: p50 and p99 of one ``await gateway.infer()`` to a zero-delay
  synthetic worker process over loopback TCP, against one ``zmq.asyncio``
  DEALER round trip to a ROUTER echo process (a frame of the Request's size);
- throughput: 64 concurrent ``infer()`` over two zero-delay workers, against
  the same DEALER keeping 64 echo round trips in flight.

Per-call latencies are taken inside the event loop (``perf_counter`` around
each ``await``), so driving the loop from pytest-benchmark costs neither
side anything. With ``--benchmark-disable`` every body runs once, with small
counts, as a smoke test.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.gateway import Rig

# name -> list of per-call latencies (s), or requests per second per round
_LATENCY: dict[str, list[float]] = {}
_THROUGHPUT: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Rig(workers=2) as r:
        yield r
    _report()


def _report() -> None:
    if not _LATENCY and not _THROUGHPUT:
        return
    print("\ngateway end to end (loopback TCP, worker processes):")
    ours, raw = _LATENCY.get("infer"), _LATENCY.get("raw")
    if ours and raw:
        for q in (50, 99):
            a = float(np.percentile(ours, q)) * 1e6
            b = float(np.percentile(raw, q)) * 1e6
            print(f"  infer p{q} {a:.0f} µs vs raw round trip p{q} {b:.0f} µs = {a / b:.2f}×")
        print(f"  ({len(ours)} and {len(raw)} sequential calls)")
    ours_t, raw_t = _THROUGHPUT.get("infer"), _THROUGHPUT.get("raw")
    if ours_t and raw_t:
        a, b = float(np.median(ours_t)), float(np.median(raw_t))
        print(
            f"  throughput, 64 in flight: infer {a:,.0f} req/s vs raw pipelined {b:,.0f} msg/s "
            f"= {b / a:.2f}× slower (median of {len(ours_t)} rounds)"
        )


def _sizes(benchmark: BenchmarkFixture) -> tuple[int, int]:
    """(rounds, calls per round): modest when timings are disabled (a smoke test)."""
    return (1, 20) if benchmark.disabled else (20, 100)


def _latency(benchmark: BenchmarkFixture, rig: Rig, name: str) -> None:
    once = rig.infer_once if name == "infer" else rig.raw_once
    rounds, calls = _sizes(benchmark)
    samples = _LATENCY.setdefault(name, [])

    def batch() -> None:
        samples.extend(rig.run(rig.sequential(once, calls)))

    benchmark.group = "gateway latency (per call = time / calls)"
    benchmark.extra_info["calls_per_round"] = calls
    benchmark.pedantic(batch, rounds=rounds, iterations=1, warmup_rounds=0)
    assert len(samples) == rounds * calls
    benchmark.extra_info["p50_us"] = float(np.percentile(samples, 50)) * 1e6
    benchmark.extra_info["p99_us"] = float(np.percentile(samples, 99)) * 1e6


def test_raw_roundtrip_latency(benchmark: BenchmarkFixture, rig: Rig) -> None:
    _latency(benchmark, rig, "raw")


def test_infer_latency(benchmark: BenchmarkFixture, rig: Rig) -> None:
    _latency(benchmark, rig, "infer")


def _throughput(benchmark: BenchmarkFixture, rig: Rig, name: str) -> None:
    rounds = 1 if benchmark.disabled else 8
    total = 128 if benchmark.disabled else 64 * 32
    rates = _THROUGHPUT.setdefault(name, [])

    def batch() -> None:
        if name == "infer":
            rates.append(rig.run(rig.infer_concurrent(total, 64)))
        else:
            rates.append(rig.run(rig.raw_pipelined(total, 64)))

    benchmark.group = f"gateway throughput ({total} calls, 64 in flight)"
    benchmark.pedantic(batch, rounds=rounds, iterations=1, warmup_rounds=0)
    assert len(rates) == rounds and all(r > 0 for r in rates)
    benchmark.extra_info["per_second"] = float(np.median(rates))


def test_raw_pipelined_throughput(benchmark: BenchmarkFixture, rig: Rig) -> None:
    _throughput(benchmark, rig, "raw")


def test_infer_throughput_64_concurrent(benchmark: BenchmarkFixture, rig: Rig) -> None:
    _throughput(benchmark, rig, "infer")
    assert rig.gateway is not None
    stats = rig.gateway.stats()
    assert stats.failed_requests == 0
    # Both workers served: the load balancer spreads 64 concurrent requests.
    served = [s.requests for s in stats.per_node.values()]
    assert len(served) == 2 and min(served) > 0
