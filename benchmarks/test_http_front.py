"""The HTTP front door beside ``infer()`` and the load generator's ceiling, as a smoke test.

``python -m benchmarks.http_front`` measures for seconds per row over several
rounds; here one short round checks that every row is measured (the gateway,
the worker, the front door, the generator and the canned server all run) and
that the added latency is printed. ``pytest benchmarks/test_http_front.py -s``
shows the rows.
"""

from __future__ import annotations

from benchmarks.http_front import run


def test_http_front_measures_every_row_in_one_run() -> None:
    lines: list[str] = []
    rows = run(0.2, 1, out=lines.append)
    print("\n".join(lines))
    for path in ("infer() (library, same loop)", "HTTP /v1/chat/completions",
                 "generator ceiling (canned bytes)"):  # fmt: skip
        for conns in (1, 64):
            ((p50, p99, rate),) = rows[f"{path}/{conns}"]
            assert 0 < p50 <= p99 and rate > 0, (path, conns, p50, p99, rate)
    assert any(line.startswith("HTTP adds ") for line in lines), lines
