"""The HTTP front door's cost: an HTTP round trip through fedgate beside ``infer()``.

Same run, same zero-delay synthetic worker process (``benchmarks/gateway.py``'s
:class:`Rig`, one worker, one token), several rounds:

- ``infer()``: :meth:`Gateway.infer` on the gateway's loop with the request the
  front door builds from the HTTP body (same input, model, a fresh id), one call
  after the other, then 64 in flight;
- HTTP: ``POST /v1/chat/completions`` (non-streaming) from the load generator
  of ``benchmarks/http_servers.py`` in another process, keep-alive, 1 and 64
  connections;
- the generator's own ceiling: the same generator, same body, against a
  trivial asyncio server that answers canned bytes (no HTTP parsing).

The figure is the HTTP path's added p50 at one connection: HTTP − ``infer()``,
per round and the median over rounds.

    python -m benchmarks.http_front [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable

from benchmarks.gateway import Rig
from benchmarks.http_servers import load_in_child, start_raw_server, summary
from fedgate.gateway.http import HttpConfig, HttpFront
from fedgate.types import Capability, InferenceRequest, ModelId

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
).encode()
PATH = b"/v1/chat/completions"


class FrontRig(Rig):
    """:class:`Rig` whose worker has room above the 64 connections (never "overloaded")."""

    def worker_flags(self, index: int) -> list[str]:
        return [*super().worker_flags(index), "--max-concurrency", "256"]


def _request() -> InferenceRequest:
    # What HttpFront._request builds from BODY.
    rid = f"chatcmpl-{random.getrandbits(96):024x}"
    return InferenceRequest(Capability.GENERATE, BODY, request_id=rid, model=ModelId("m"))


async def _infer_load(rig: Rig, conns: int, seconds: float) -> tuple[list[float], float]:
    """``conns`` lanes calling ``infer()`` back to back for ``seconds``."""
    gateway = rig.gateway
    assert gateway is not None
    clock = time.perf_counter
    latencies: list[float] = []
    stop = clock() + seconds

    async def lane() -> None:
        while clock() < stop:
            t = clock()
            await gateway.infer(_request())
            latencies.append(clock() - t)

    t0 = clock()
    await asyncio.gather(*(lane() for _ in range(conns)))
    return latencies, clock() - t0


Row = tuple[float, float, float]


def _row(name: str, conns: int, row: Row) -> str:
    p50, p99, rate = row
    return f"{name:34} {conns:>5} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f}"


def run(seconds: float, rounds: int, out: Callable[[str], None] = print) -> dict[str, list[Row]]:
    """Measure; print each round's rows; return every row by name."""
    rows: dict[str, list[Row]] = {}

    def record(name: str, conns: int, lat: list[float], took: float) -> None:
        row = summary(lat, took)
        rows.setdefault(f"{name}/{conns}", []).append(row)
        out(_row(name, conns, row))

    raw, raw_port = start_raw_server(BODY)
    try:
        with FrontRig(workers=1) as rig:
            front = HttpFront(rig.gateway, HttpConfig(listen="127.0.0.1:0"))  # type: ignore[arg-type]
            rig.run(front.start())
            try:
                port = int(front.url.rsplit(":", 1)[1])
                rig.run(load_in_child(port, 4, 0.3, BODY, PATH))  # warm-up
                out(f"loop: {'uvloop' if rig.uvloop else 'asyncio'}; one zero-delay worker")
                for r in range(rounds):
                    out(f"-- round {r + 1}/{rounds}")
                    out(f"{'path':34} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
                    for conns in (1, 64):
                        lat, took = rig.run(_infer_load(rig, conns, seconds))
                        record("infer() (library, same loop)", conns, lat, took)
                        lat, took = rig.run(load_in_child(port, conns, seconds, BODY, PATH))
                        record("HTTP /v1/chat/completions", conns, lat, took)
                        lat, took = rig.run(load_in_child(raw_port, conns, seconds, BODY, PATH))
                        record("generator ceiling (canned bytes)", conns, lat, took)
                    added = rows["HTTP /v1/chat/completions/1"][-1][0]
                    added -= rows["infer() (library, same loop)/1"][-1][0]
                    out(f"HTTP adds {added:.3f} ms at p50 over infer() (1 connection)")
            finally:
                rig.run(front.stop())
    finally:
        raw.kill()
        raw.wait()
    http1, infer1 = rows["HTTP /v1/chat/completions/1"], rows["infer() (library, same loop)/1"]
    added_all = [h[0] - i[0] for h, i in zip(http1, infer1, strict=True)]
    out(f"-- median over {rounds} rounds")
    for key, values in rows.items():
        name, conns = key.rsplit("/", 1)
        med = tuple(statistics.median(v[k] for v in values) for k in range(3))
        out(_row(name, int(conns), med))  # type: ignore[arg-type]
    out(f"HTTP adds {statistics.median(added_all):.3f} ms at p50 over infer() "
        f"(per round: {', '.join(f'{a:.3f}' for a in added_all)}; target <= 0.3)")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run(args.seconds, args.rounds)


if __name__ == "__main__":
    main()
