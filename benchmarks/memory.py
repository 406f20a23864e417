"""asv: gateway memory with 10 000 registered nodes and 1 000 streams in flight.

The scenario runs in a fresh interpreter (``python -m benchmarks.memory``), so
its resident set is the gateway's alone:

1. import fedgate (``imports_mb``) and load the routing kernels as a gateway
   does (``kernels``: ``"aot"``, compiled at install, or ``"jit"``: Numba
   compiles them, ``warm_up_s``, or loads them from its on-disk cache,
   ``kernels_from_cache``): the **baseline** RSS (the floor any gateway
   process pays before it knows a single node);
2. start a gateway and register ``nodes`` nodes through the gateway's own
   handling of Ready frames (as if that many workers had announced
   themselves: catalog, health, breaker, router arrays, worker records), in
   eight regions, serving ``embed``;
3. start two real synthetic worker processes serving ``generate`` (slow
   streams: 2 tokens/s, up to 1 000 at once each) and open ``streams``
   concurrent ``infer_stream()`` calls, each reading its tokens as they come;
4. once every stream has delivered its first token, read the process's RSS
   (``VmRSS``) and its peak (``VmHWM``).

It prints one JSON line: ``{"baseline_mb", "rss_mb", "peak_mb", "private_mb",
"libraries_mb", "nodes", "streams", "imports_mb", "kernels", "warm_up_s",
"kernels_from_cache"}`` (``private_mb``: the part of the RSS no other process
shares; ``libraries_mb``: pages of mapped ``.so`` files in it). With
``trace=N`` (``python -m benchmarks.memory NODES STREAMS N``) tracemalloc
follows every allocation after the baseline: ``"traced_mb"`` is what those
allocations still hold at step 4 (after a garbage collection), and
``"top_sites"`` the N fedgate (or scenario) source lines holding the most of
it. Each allocation is charged to the innermost frame in fedgate or this
file, so a dict grown inside the stdlib counts against the fedgate line that
grew it. Tracing costs time and memory of its own: RSS figures of a traced
run are not comparable, and the fake nodes get a long heartbeat interval so
that the slower registration does not expire them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from benchmarks.scenario import REPO, run_scenario

__all__ = ["GatewayMemory", "measure", "private_mb", "rss_mb"]

_REPO = REPO
_FEDGATE = str(_REPO / "fedgate")


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc (Linux)."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def private_mb() -> tuple[float, float]:
    """(private memory, shared-library pages) of this process's RSS in MB (Linux).

    Private: pages only this process maps (``Private_Clean + Private_Dirty``
    of ``/proc/self/smaps_rollup``), what a second gateway process would add.
    Library pages: resident pages of mapped ``.so`` files (LLVM's and NumPy's,
    mostly); their relocated data pages are private, so the two overlap.
    """
    rollup: dict[str, float] = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                rollup[key] = int(value.split()[0]) / 1024
    libraries = 0.0
    current = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                current = head[5] if len(head) > 5 else ""
            elif head and head[0] == "Rss:" and ".so" in current:
                libraries += int(head[1]) / 1024
    return rollup["Private_Clean"] + rollup["Private_Dirty"], libraries


def _top_sites(snapshot: tracemalloc.Snapshot, limit: int) -> list[dict[str, Any]]:
    """The source lines in fedgate (or this scenario) that hold the most traced memory."""
    sites: dict[str, list[int]] = {}
    for trace in snapshot.traces:
        frames = trace.traceback[::-1]  # innermost first
        owner = next(
            (f for f in frames if f.filename.startswith(_FEDGATE) or f.filename == __file__),
            frames[0],
        )
        where = f"{os.path.relpath(owner.filename, _REPO)}:{owner.lineno}"
        site = sites.setdefault(where, [0, 0])
        site[0] += trace.size
        site[1] += 1
    top = sorted(sites.items(), key=lambda item: -item[1][0])[:limit]
    return [
        {"site": where, "mb": round(size / 2**20, 2), "blocks": blocks}
        for where, (size, blocks) in top
    ]


async def _scenario(nodes: int, streams: int, baseline: float, trace: int = 0) -> dict[str, Any]:
    from fedgate.federation.health import HealthChecker, HealthConfig
    from fedgate.gateway import GatewayBuilder, GatewayConfig
    from fedgate.transport import protocol as wire
    from fedgate.types import Capability, InferenceRequest

    builder = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=600.0, monitor_interval=0.5))
    )
    if trace:
        # The fake nodes never heartbeat: untraced, the workers start well inside
        # the default 3 s liveness; tracing slows registration past it.
        builder.health(HealthChecker(HealthConfig(heartbeat_interval=3600.0)))
    gateway = builder.build()
    procs: list[subprocess.Popen[bytes]] = []
    await gateway.start()
    try:
        for i in range(nodes):
            ready = wire.Ready(
                f"fake-{i:05d}", f"region-{i % 8}", f"{i:016x}", ["embedder"], ["embed"],
                i % 2 == 0, 1.0, 64, True, 3600.0, 1, "bench",
            )  # fmt: skip
            # Through the gateway's own frame handling, as if the Ready had arrived.
            gateway._on_message(f"fake-{i}".encode(), wire.encode(ready))
        for i in range(2):
            argv = [
                sys.executable, "-m", "fedgate", "worker", "--gateway", gateway.endpoints[0],
                "--node", f"slow{i}", "--region", "us-west-2", "--model", "m",
                "--capability", "generate", "--tokens", "65536", "--token-rate", "2",
                "--max-concurrency", "1000", "--log-level", "WARNING",
            ]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=_REPO))
        await gateway.wait_for_workers(2 + nodes, timeout=60.0)

        first = 0
        all_started = asyncio.Event()
        stop = asyncio.Event()

        async def reader(i: int) -> None:
            nonlocal first
            request = InferenceRequest(Capability.GENERATE, b"", request_id=f"m{i}")
            started = False
            async for _token in gateway.infer_stream(request):
                if not started:
                    started = True
                    first += 1
                    if first == streams:
                        all_started.set()
                if stop.is_set():
                    break

        tasks = [asyncio.create_task(reader(i)) for i in range(streams)]
        await asyncio.wait_for(all_started.wait(), timeout=120.0)
        in_flight = gateway.stats().active_streams
        rss, peak = rss_mb()
        private, libraries = private_mb()
        top = traced = None
        if trace:
            # Cyclic garbage (exceptions and their frames) is not state.
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] / 2**20
            top = _top_sites(tracemalloc.take_snapshot(), trace)
            tracemalloc.stop()  # the teardown need not crawl
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        registered = len(gateway.router.nodes())
    finally:
        await gateway.stop()
        for proc in procs:
            proc.kill()
            proc.wait()
    result: dict[str, Any] = {
        "baseline_mb": round(baseline, 1),
        "rss_mb": round(rss, 1),
        "peak_mb": round(peak, 1),
        "private_mb": round(private, 1),
        "libraries_mb": round(libraries, 1),
        "nodes": registered,
        "streams": in_flight,
    }
    if top is not None:
        result["traced_mb"] = round(traced or 0.0, 1)
        result["top_sites"] = top
    return result


def _main(nodes: int, streams: int, trace: int = 0) -> None:
    logging.basicConfig(level=logging.ERROR)
    import fedgate.gateway.gateway  # noqa: F401  (the imports every gateway pays)
    from fedgate.routing.kernels import routing_kernels

    imports, _ = rss_mb()
    start = time.perf_counter()
    # What a gateway's start loads: the kernels compiled ahead of time, or
    # Numba and its just-in-time kernels (from its disk cache when warm).
    how = routing_kernels()[0]
    from_cache = False
    if how == "jit":
        from fedgate.routing._jit import kernels, warm_up

        warm_up()
        from_cache = all(sum(k.stats.cache_hits.values()) > 0 for k in kernels().values())
    warm_up_s = time.perf_counter() - start
    baseline, _ = rss_mb()
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    if trace:
        # Deep enough to reach a fedgate frame from inside the stdlib; each
        # extra frame slows every traced allocation.
        tracemalloc.start(6)
    result = run(_scenario(nodes, streams, baseline, trace))
    result.update(
        imports_mb=round(imports, 1),
        kernels=how,
        warm_up_s=round(warm_up_s, 2),
        kernels_from_cache=from_cache,
    )
    print(json.dumps(result), flush=True)


def measure(nodes: int = 10_000, streams: int = 1_000, trace: int = 0) -> dict[str, Any]:
    """Run the scenario in a fresh interpreter; its JSON result as a dict.

    ``trace`` > 0 adds ``"top_sites"``: that many allocation sites, largest first.
    """
    return run_scenario("benchmarks.memory", [str(nodes), str(streams), str(trace)], timeout=300)


# --------------------------------------------------------------------------- asv


class GatewayMemory:
    """RSS (MB) of a gateway with 10 000 nodes and 1 000 streams, its baseline, its imports."""

    timeout = 300.0
    number = 1
    repeat = 1

    def setup_cache(self) -> dict[str, Any]:
        return measure()

    def track_gateway_rss_mb(self, result: dict[str, Any]) -> float:
        return float(result["rss_mb"])

    def track_baseline_rss_mb(self, result: dict[str, Any]) -> float:
        return float(result["baseline_mb"])

    def track_imports_rss_mb(self, result: dict[str, Any]) -> float:
        return float(result["imports_mb"])

    track_gateway_rss_mb.unit = "MB"  # type: ignore[attr-defined]
    track_baseline_rss_mb.unit = "MB"  # type: ignore[attr-defined]
    track_imports_rss_mb.unit = "MB"  # type: ignore[attr-defined]


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
