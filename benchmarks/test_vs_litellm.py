"""fedgate's half of the LiteLLM comparison, as a smoke test (LiteLLM itself is not started).

``python -m benchmarks.vs_litellm`` measures every path, LiteLLM's proxy
included when it is installed; here one short round checks that the upstream,
the front door, the ``openai``-backend worker and the generator all serve,
and that the added latency is measured against the direct path.
"""

from __future__ import annotations

from benchmarks.vs_litellm import run


def test_fedgate_half_measures_direct_fedgate_and_the_ceiling() -> None:
    lines: list[str] = []
    rows = run(0.3, 1, litellm=False, out=lines.append)
    print("\n".join(lines))
    assert "LiteLLM: skipped (--no-litellm)" in lines
    assert set(rows) == {"direct (upstream)", "fedgate", "generator ceiling"}
    for name, ((by_conns),) in rows.items():
        for conns in (1, 64):
            p50, p99, rate = by_conns[conns]
            assert 0 < p50 <= p99 and rate > 0, (name, conns, by_conns)
    # fedgate's path ends at the same upstream: it cannot be faster than calling it.
    assert rows["fedgate"][0][1][0] > rows["direct (upstream)"][0][1][0]
