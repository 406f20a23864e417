"""Gateway memory with 10 000 registered nodes and 1 000 streams in flight.

``pytest benchmarks/test_memory.py -s`` runs :mod:`benchmarks.memory` in a
fresh interpreter and prints the gateway's RSS beside its baseline: the same
interpreter after importing fedgate and compiling the routing kernels, before
any node or stream exists, split into the imports and the kernels (compiled,
or loaded from Numba's on-disk cache when an earlier run compiled them). With
``--benchmark-disable`` it runs a small scenario (100 nodes, 20 streams) once,
as a smoke test.
"""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.memory import measure


def test_gateway_rss_with_nodes_and_streams(benchmark: BenchmarkFixture) -> None:
    nodes, streams = (100, 20) if benchmark.disabled else (10_000, 1_000)
    results = []

    def once() -> None:
        results.append(measure(nodes, streams))

    benchmark.group = f"gateway memory ({nodes} nodes, {streams} streams)"
    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    result = results[-1]
    assert result["nodes"] >= nodes and result["streams"] == streams
    benchmark.extra_info.update(result)
    base, rss, imports = result["baseline_mb"], result["rss_mb"], result["imports_mb"]
    assert 0 < imports <= base <= result["peak_mb"]
    source = "loaded from Numba's disk cache" if result["kernels_from_cache"] else "compiled"
    print(
        f"\ngateway memory: {rss:.0f} MB RSS with {result['nodes']} nodes and "
        f"{result['streams']} streams in flight vs baseline (imports + kernels) "
        f"{base:.0f} MB = {rss / base:.2f}× (+{rss - base:.0f} MB; peak {result['peak_mb']:.0f} MB)"
        f"\n  baseline = imports {imports:.0f} MB + kernels {base - imports:.0f} MB "
        f"({source} in {result['warm_up_s']:.2f} s)"
    )
