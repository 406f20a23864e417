"""asv: ``infer()`` latency on a 10 000-node federation, with and without dashboards polling.

The scenario runs in a fresh interpreter (``python -m benchmarks.dashboard``),
so the gateway's loop is its own:

1. a gateway with a :class:`~fedgate.telemetry.TelemetryServer`, ``nodes``
   fake nodes registered through its own handling of Ready frames (as
   :mod:`benchmarks.memory` does; they serve ``embed`` and never answer), and
   one zero-delay synthetic worker process serving ``generate``;
2. **quiet**: ``concurrency`` callers send ``infer()`` to the real worker,
   one after the other each;
3. **polled**: the same, while a poller process asks the telemetry endpoint,
   every ``interval`` seconds (``fedgate top``'s rate), for a page as
   ``fedgate top`` does (``fetch_page``) and for the whole snapshot as
   ``fedgate top --once`` does (``fetch``).

Quiet and polled alternate in blocks of about a second (the poller is
stopped and continued), ``seconds`` of each in all, so that whatever else
the machine does weighs on both alike.

A ticker task on the gateway's loop records the longest gap between two of
its iterations in each phase. At the end one snapshot is taken the old way,
in one go (:meth:`~fedgate.telemetry.Telemetry.snapshot`), for comparison
with a sliced build's longest slice.

It prints one JSON line: ``nodes``, ``calls``/``failures``/``p50_ms``/
``p99_ms``/``max_gap_ms`` per phase (``quiet``, ``polled``), with the full
garbage collections in it (``gc_full``, ``gc_full_max_ms``), ``polls`` and
``poll_failures``, ``builds`` (snapshots built while polled),
``build_cost_ms`` and ``longest_slice_ms`` (the last build),
``one_shot_ms`` and ``snapshot_mb`` (the whole snapshot, encoded).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import time
from typing import Any

from benchmarks.scenario import REPO, run_scenario

__all__ = ["POLLER", "measure"]

_REPO = REPO

POLLER = """
import json, sys, time
import msgspec, zmq
from fedgate.telemetry import TelemetryClient, TelemetryError
endpoint, interval = sys.argv[1], float(sys.argv[2])
polls = failures = 0
client = TelemetryClient(endpoint, timeout=5.0)
ctx = zmq.Context()
raw = ctx.socket(zmq.REQ)
raw.setsockopt(zmq.LINGER, 0)
raw.connect(endpoint)
print("ready", flush=True)
try:
    while True:
        start = time.monotonic()
        try:
            page = client.request_sync(b"snapshot offset=0 limit=200")
            polls += page["page"]["limit"] == 200
        except TelemetryError:
            failures += 1
        # The whole snapshot, read but not decoded: decoding megabytes four times
        # a second is the client's CPU, which on a two-core machine is the gateway's.
        raw.send(b"snapshot")
        if raw.poll(5000):
            reply = raw.recv(copy=False)
            if len(reply) < 1 << 16:  # small enough to look at: an error, or few nodes
                good = "error" not in msgspec.msgpack.decode(reply.bytes)
            else:  # a MessagePack map (an error reply is small)
                first = reply.buffer[0]
                good = 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)
            polls += good
            failures += not good
        else:
            failures += 1
            raw.close(0)
            raw = ctx.socket(zmq.REQ)
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(endpoint)
        time.sleep(max(0.0, interval - (time.monotonic() - start)))
except KeyboardInterrupt:
    pass
finally:
    print(json.dumps({"polls": polls, "failures": failures}), flush=True)
"""
"""``fedgate top`` (a page) and a script (the whole snapshot) polling; SIGINT prints counts."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _scenario(
    nodes: int, seconds: float, concurrency: int, interval: float
) -> dict[str, Any]:
    import signal

    import msgspec

    from fedgate.federation.health import HealthChecker, HealthConfig
    from fedgate.gateway import GatewayBuilder, GatewayConfig
    from fedgate.telemetry import TelemetryServer
    from fedgate.transport import protocol as wire
    from fedgate.types import Capability, InferenceRequest

    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=30.0))
        # The fake nodes never heartbeat: keep them registered and alive.
        .health(HealthChecker(HealthConfig(heartbeat_interval=3600.0)))
        .build()
    )
    await gateway.start()
    server = TelemetryServer(gateway, "tcp://127.0.0.1:0")
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        await server.start()
        for i in range(nodes):
            ready = wire.Ready(
                f"fake-{i:05d}", f"region-{i % 8}", f"{i:016x}", ["embedder"], ["embed"],
                i % 2 == 0, 1.0, 64, True, 3600.0, 1, "bench",
            )  # fmt: skip
            gateway._on_message(f"fake-{i}".encode(), wire.encode(ready))
        argv = [
            sys.executable, "-m", "fedgate", "worker", "--gateway", gateway.endpoints[0],
            "--node", "real-0", "--region", "us-west-2", "--model", "m",
            "--capability", "generate", "--tokens", "1", "--log-level", "WARNING",
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=_REPO))
        await gateway.wait_for_workers(1 + nodes, timeout=60.0)

        phases: dict[str, dict[str, Any]] = {
            name: {"latencies": [], "failures": 0, "gap": 0.0, "pauses": []}
            for name in ("quiet", "polled")
        }

        async def block(name: str, length: float) -> None:
            """``concurrency`` callers for ``length`` seconds, recorded under ``name``."""
            into = phases[name]
            done = asyncio.Event()

            async def ticker() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    into["gap"] = max(into["gap"], now - last)
                    last = now

            async def caller(c: int) -> None:
                n = 0
                end = time.perf_counter() + length
                while time.perf_counter() < end:
                    request = InferenceRequest(
                        Capability.GENERATE, b"x", request_id=f"{name}-{c}-{n}-{end}"
                    )
                    n += 1
                    start = time.perf_counter()
                    try:
                        await gateway.infer(request)
                    except Exception:
                        into["failures"] += 1
                        continue
                    into["latencies"].append(time.perf_counter() - start)

            def collector(event: str, info: dict[str, int]) -> None:
                pauses = into["pauses"]
                if info["generation"] == 2:
                    if event == "start":
                        pauses.append(-time.perf_counter())
                    elif pauses:
                        pauses[-1] += time.perf_counter()

            gc.callbacks.append(collector)
            tick = asyncio.create_task(ticker())
            counts = [g["collections"] for g in gc.get_stats()]
            try:
                await asyncio.gather(*(caller(c) for c in range(concurrency)))
            finally:
                done.set()
                await tick
                gc.callbacks.remove(collector)
                into["collections"] = [
                    a + g["collections"] - b
                    for a, g, b in zip(
                        into.get("collections", [0, 0, 0]), gc.get_stats(), counts, strict=True
                    )
                ]

        # Warm: the first calls pay for connecting.
        for i in range(50):
            await gateway.infer(InferenceRequest(Capability.GENERATE, b"x", request_id=f"w{i}"))

        poller = subprocess.Popen(
            [sys.executable, "-c", POLLER, server.endpoint, str(interval)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=_REPO,
        )  # fmt: skip
        procs.append(poller)
        assert poller.stdout is not None
        line = await asyncio.to_thread(poller.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"poller: expected 'ready', got {line!r}")
        poller.send_signal(signal.SIGSTOP)
        # Quiet and polled in alternating blocks, so that whatever else the
        # machine does weighs on both alike.
        blocks = max(1, round(seconds))
        builds = 0
        for _ in range(blocks):
            await block("quiet", seconds / blocks)
            before = server.cache.builds
            poller.send_signal(signal.SIGCONT)
            # Polling under way (a snapshot being built) before the clock starts.
            while not server.cache.building and server.cache.builds == before:
                await asyncio.sleep(0.005)
            await block("polled", seconds / blocks)
            poller.send_signal(signal.SIGSTOP)
            # Nothing of the polling may spill into the next quiet block.
            while server.cache.building or server.pending:
                await asyncio.sleep(0.005)
            builds += server.cache.builds - before
        result["builds"] = builds
        poller.send_signal(signal.SIGCONT)
        poller.send_signal(signal.SIGINT)
        out = await asyncio.to_thread(poller.communicate, None, 30.0)
        counts = json.loads(out[0].decode().strip().splitlines()[-1])
        result["polls"], result["poll_failures"] = counts["polls"], counts["failures"]
        for name, into in phases.items():
            latencies = into["latencies"]
            result[name] = {
                "calls": len(latencies) + into["failures"],
                "failures": into["failures"],
                "p50_ms": round(_percentile(latencies, 50) * 1000, 3),
                "p99_ms": round(_percentile(latencies, 99) * 1000, 3),
                "max_gap_ms": round(into["gap"] * 1000, 1),
                # Full collections: what pauses the loop besides the snapshots.
                "gc_full": len(into["pauses"]),
                "gc_full_max_ms": round(max(into["pauses"], default=0.0) * 1000, 1),
                "gc_collections": into["collections"],
            }
        latest = server.cache.latest
        assert latest is not None
        result["build_cost_ms"] = round(latest.cost * 1000, 1)
        result["longest_slice_ms"] = round(latest.longest * 1000, 1)
        result["slices"] = latest.slices
        start = time.perf_counter()
        whole = server.telemetry.snapshot()
        result["one_shot_ms"] = round((time.perf_counter() - start) * 1000, 1)
        result["snapshot_mb"] = round(len(msgspec.msgpack.encode(whole)) / 1e6, 1)
        result["nodes"] = len(whole["health"])
    finally:
        await server.stop()
        await gateway.stop()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return result


def _main(nodes: int, seconds: float, concurrency: int, interval: float) -> None:
    logging.basicConfig(level=logging.ERROR)
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(_scenario(nodes, seconds, concurrency, interval))
    print(json.dumps(result), flush=True)


def measure(
    nodes: int = 10_000, seconds: float = 8.0, concurrency: int = 8, interval: float = 0.25
) -> dict[str, Any]:
    """Run the scenario in a fresh interpreter; its JSON result as a dict."""
    args = [str(nodes), str(seconds), str(concurrency), str(interval)]
    return run_scenario("benchmarks.dashboard", args, timeout=120 + 4 * seconds)


# --------------------------------------------------------------------------- asv


class DashboardLoad:
    """``infer()`` p99 (ms) on a 10 000-node federation, polled by dashboards and quiet."""

    timeout = 300.0
    number = 1
    repeat = 1

    def setup_cache(self) -> dict[str, Any]:
        return measure()

    def track_p99_polled_ms(self, result: dict[str, Any]) -> float:
        return float(result["polled"]["p99_ms"])

    def track_p99_quiet_ms(self, result: dict[str, Any]) -> float:
        return float(result["quiet"]["p99_ms"])

    track_p99_polled_ms.unit = "ms"  # type: ignore[attr-defined]
    track_p99_quiet_ms.unit = "ms"  # type: ignore[attr-defined]


if __name__ == "__main__":
    _main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
