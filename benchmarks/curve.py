"""``infer()`` with CURVE on the worker link beside the same run without it (issue 14).

Two gateways on this process's loop, one plain and one with ``[trust]``
(CURVE through ``zmq.auth``), each with one zero-delay synthetic worker
process (``--tokens 1``) over loopback TCP. Sequential ``infer()`` calls in
alternating rounds, so that the machine's load drifts over both alike; prints
p50 and p99 of each and their ratio.

    python -m benchmarks.curve [--calls 4000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.trust import Trust, WorkerGrant
from fedgate.transport import curve
from fedgate.types import Capability, InferenceRequest

_REQUEST = InferenceRequest(Capability.GENERATE, b"x" * 64, request_id="bench")


async def _gateway(trust: Trust | None) -> Gateway:
    gw = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=30.0))
        .trust(trust)
        .build()
    )
    await gw.start()
    return gw


def worker(gw: Gateway, node: str, *flags: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "fedgate", "worker", "--gateway", gw.endpoints[0],
            "--node", node, "--region", "us-west-2", "--model", "m", "--capability",
            "generate", "--tokens", "1", "--log-level", "WARNING", *flags]
    return subprocess.Popen(argv)


async def _round(gw: Gateway, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await gw.infer(_REQUEST)
        out.append(clock() - start)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def alternate(
    modes: dict[str, Callable[[int], Awaitable[list[float]]]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """``calls`` timed calls per mode, in ``rounds`` rounds whose order alternates."""
    got: dict[str, list[float]] = {name: [] for name in modes}
    per = calls // rounds
    order = list(modes.items())
    for i in range(rounds):
        # Alternating which goes first: neither always follows the other.
        for name, run in order if i % 2 == 0 else order[::-1]:
            got[name] += await run(per)
    return got


def report(got: dict[str, list[float]], what: str) -> None:
    """p50 and p99 of each mode, and CURVE's ratio to plain."""
    p50 = {k: statistics.median(v) * 1e6 for k, v in got.items()}
    p99 = {k: pct(v, 0.99) * 1e6 for k, v in got.items()}
    for k in got:
        print(f"{k:>6}: {what} p50 {p50[k]:7.1f} us  p99 {p99[k]:7.1f} us  ({len(got[k])} calls)")
    print(f"curve/plain: p50 {p50['curve'] / p50['plain']:.3f}x  "
          f"p99 {p99['curve'] / p99['plain']:.3f}x")


async def main(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp)
        curve.generate(keys / "keys", "gateway")
        curve.generate(keys / "trusted", "w")
        trust = Trust(
            key=str(keys / "keys" / "gateway.key_secret"),
            workers=str(keys / "trusted"),
            grants={"w": WorkerGrant(nodes=["secured"], region="us-west-2")},
        )
        plain, secured = await _gateway(None), await _gateway(trust)
        procs = [
            worker(plain, "plain"),
            worker(secured, "secured", "--key", str(keys / "trusted" / "w.key_secret"),
                    "--gateway-key", str(keys / "keys" / "gateway.key")),
        ]
        try:
            await plain.wait_for_workers(1, timeout=30.0)
            await secured.wait_for_workers(1, timeout=30.0)
            for gw in (plain, secured):
                await _round(gw, 200)  # warm: connections, kernels, caches
            got = await alternate(
                {"plain": lambda n: _round(plain, n), "curve": lambda n: _round(secured, n)},
                calls, rounds,
            )  # fmt: skip
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            await plain.stop()
            await secured.stop()
    report(got, "infer()")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
