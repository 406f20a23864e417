"""``infer()`` p99 on a 10 000-node federation with dashboards polling, beside the same run without.

``pytest benchmarks/test_dashboard.py -s`` runs :mod:`benchmarks.dashboard` in
a fresh interpreter: 8 callers send ``infer()`` to a zero-delay synthetic
worker while, in alternating blocks, a poller asks the telemetry endpoint
four times a second for a page (as ``fedgate top`` does) and for the whole
snapshot (as ``fedgate top --once`` does), or stays quiet. It prints both
p99s and their ratio (target: at most 2×), the snapshot's size, its old
one-shot cost and the longest slice of a sliced build. With
``--benchmark-disable`` it runs a small scenario (500 nodes, 2 s) once, as a
smoke test.
"""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.dashboard import measure


def test_infer_p99_with_dashboards_polling(benchmark: BenchmarkFixture) -> None:
    nodes, seconds = (500, 2.0) if benchmark.disabled else (10_000, 8.0)
    results = []

    def once() -> None:
        results.append(measure(nodes, seconds=seconds))

    benchmark.group = f"infer() with dashboards polling ({nodes} nodes)"
    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    result = results[-1]
    benchmark.extra_info.update(result)
    quiet, polled = result["quiet"], result["polled"]
    assert result["nodes"] == nodes + 1 and result["polls"] > 0 and result["builds"] >= 1
    assert quiet["failures"] == polled["failures"] == result["poll_failures"] == 0
    ratio = polled["p99_ms"] / quiet["p99_ms"]
    print(
        f"\ninfer() on {result['nodes']} nodes, 8 concurrent: p99 {polled['p99_ms']:.2f} ms "
        f"with dashboards polling vs {quiet['p99_ms']:.2f} ms without = {ratio:.2f}× "
        f"(target ≤ 2×; p50 {polled['p50_ms']:.2f} vs {quiet['p50_ms']:.2f} ms; "
        f"{polled['calls']} and {quiet['calls']} calls)"
        f"\n  snapshot {result['snapshot_mb']} MB: one-shot {result['one_shot_ms']} ms of loop; "
        f"sliced {result['build_cost_ms']} ms in {result['slices']} slices, longest "
        f"{result['longest_slice_ms']} ms; {result['builds']} builds for {result['polls']} polls"
        f"\n  longest loop gap {polled['max_gap_ms']} vs {quiet['max_gap_ms']} ms; full "
        f"collections {polled['gc_full']} vs {quiet['gc_full']} (longest "
        f"{polled['gc_full_max_ms']} vs {quiet['gc_full_max_ms']} ms)"
    )
