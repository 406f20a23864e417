"""Streaming through the gateway beside bare pyzmq streams (see :mod:`benchmarks.streaming`).

``pytest benchmarks/test_streaming.py -s`` prints, measured in the same run:

- aggregate tokens/s of 16 concurrent ``infer_stream()`` readers over two
  full-speed synthetic workers, against the same frames streamed by a bare
  ROUTER to 16 ``zmq.asyncio`` DEALER readers;
- per-token latency p50/p99 (emission in the worker → the caller's
  ``async for``) through the gateway, against the same stamped tokens sent by
  a bare ROUTER, and the latency the gateway ADDS (the difference of the
  p50s) against the bare DEALER/ROUTER round trip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.streaming import StreamRig, _percentile

_RATES: dict[str, list[float]] = {}
_LATENCY: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def rig() -> Iterator[StreamRig]:
    with StreamRig() as r:
        yield r
    _report()


def _report() -> None:
    print("\nstreaming (loopback TCP, worker processes):")
    ours, raw = _RATES.get("gateway"), _RATES.get("raw")
    if ours and raw:
        a, b = sorted(ours)[len(ours) // 2], sorted(raw)[len(raw) // 2]
        print(
            f"  tokens/s, 16 readers: gateway {a:,.0f} vs bare stream {b:,.0f} "
            f"= {a / b:.2f}× (median of {len(ours)} rounds)"
        )
    g, r, rt = _LATENCY.get("gateway"), _LATENCY.get("raw"), _LATENCY.get("roundtrip")
    if g and r and rt:
        for q in (50, 99):
            a, b = _percentile(g, q) * 1e6, _percentile(r, q) * 1e6
            print(
                f"  token latency p{q}: gateway {a:.0f} µs vs bare stream {b:.0f} µs = {a / b:.2f}×"
            )
        added = (_percentile(g, 50) - _percentile(r, 50)) * 1e6
        trip = _percentile(rt, 50) * 1e6
        print(
            f"  added per-token latency p50 {added:.0f} µs vs bare round trip p50 {trip:.0f} µs "
            f"= {added / trip:.2f}×"
        )


def _rate(benchmark: BenchmarkFixture, rig: StreamRig, name: str) -> None:
    rounds = 1 if benchmark.disabled else 5
    streams = 16 if benchmark.disabled else 32
    rates = _RATES.setdefault(name, [])

    def batch() -> None:
        if name == "gateway":
            rates.append(rig.run(rig.stream_tokens(streams, 16)))
        else:
            rates.append(rig.run(rig.raw_stream_tokens(streams, 16)))

    benchmark.group = f"streaming throughput ({streams} streams of {rig.tokens} tokens, 16 readers)"
    benchmark.pedantic(batch, rounds=rounds, iterations=1, warmup_rounds=0)
    assert len(rates) == rounds and all(r > 0 for r in rates)
    benchmark.extra_info["tokens_per_second"] = sorted(rates)[len(rates) // 2]


def test_raw_stream_tokens_per_second(benchmark: BenchmarkFixture, rig: StreamRig) -> None:
    _rate(benchmark, rig, "raw")


def test_gateway_stream_tokens_per_second(benchmark: BenchmarkFixture, rig: StreamRig) -> None:
    _rate(benchmark, rig, "gateway")
    assert rig.gateway is not None
    stats = rig.gateway.stats()
    assert stats.failed_requests == 0 and stats.active_streams == 0


def _latency(benchmark: BenchmarkFixture, rig: StreamRig, name: str) -> None:
    tokens = 20 if benchmark.disabled else 300
    samples = _LATENCY.setdefault(name, [])

    def batch() -> None:
        if name == "gateway":
            samples.extend(rig.run(rig.stream_latencies(tokens, 0.002)))
        elif name == "raw":
            samples.extend(rig.run(rig.raw_latencies(tokens, 0.002)))
        else:
            samples.extend(rig.run(rig.sequential(rig.raw_once, tokens)))

    benchmark.group = "per-token latency"
    benchmark.pedantic(batch, rounds=1, iterations=1, warmup_rounds=0)
    assert len(samples) >= tokens
    benchmark.extra_info["p50_us"] = _percentile(samples, 50) * 1e6


def test_raw_roundtrip_latency(benchmark: BenchmarkFixture, rig: StreamRig) -> None:
    _latency(benchmark, rig, "roundtrip")


def test_raw_token_latency(benchmark: BenchmarkFixture, rig: StreamRig) -> None:
    _latency(benchmark, rig, "raw")


def test_gateway_token_latency(benchmark: BenchmarkFixture, rig: StreamRig) -> None:
    _latency(benchmark, rig, "gateway")
