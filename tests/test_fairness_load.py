"""R32 fairness under load: a tenant flooding at 10× capacity leaves another at 100 % and 2× p99.

One slow synthetic worker process (8 slots; a request takes 0.2-0.5 s,
0.35 s on average, so the fleet serves about 23 requests/s). Tenant B sends
at its normal rate (3 requests/s, open loop, the same seeded request sizes
in every round); tenant A floods at about 250 requests/s, more than 10× the
fleet's capacity. Rounds alternate B alone and B beside A's flood, so that
load from elsewhere on the machine falls on both alike; B's latencies of
all rounds of one kind are pooled.

The gateway's fair queue grants each freed slot to B's waiting request
before A's backlog, so B waits at most for the next slot to free (the slots'
end times spread out because request sizes differ): B's p99 stays within 2×
its p99 alone, and none of B's requests fails. A's surplus is refused once
its share of the bounded queue (``max_queued``) is full.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import pytest
from procs import Fleet

from fedgate import (
    BackpressureError,
    Capability,
    DeadlineExceededError,
    FederationError,
    GatewayBuilder,
    GatewayConfig,
    HealthChecker,
    HealthConfig,
    InferenceRequest,
)

pytestmark = [pytest.mark.load, pytest.mark.timeout(240)]

SLOTS = 8
TTFT, RATE = 0.1, 100.0  # a request of N tokens takes TTFT + N / RATE seconds
SIZES = (10, 40)  # tokens per request: 0.2-0.5 s
B_RATE = 3.0  # requests per second
A_RATE, A_TICK = 250.0, 0.02  # requests per second, sent every tick as they fall due
ROUND = 7.0  # seconds of B's traffic per round
ROUNDS = 2


def request(rid: str, tenant: str, tokens: int, deadline: float) -> InferenceRequest:
    body = json.dumps({"max_tokens": tokens}).encode()
    return InferenceRequest(
        Capability.GENERATE, body, request_id=rid, tenant_id=tenant, deadline=deadline
    )


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_r32_a_flooding_tenant_leaves_another_at_full_success_and_2x_p99(
    tmp_path: Path,
) -> None:
    gateway = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(GatewayConfig(request_timeout=10.0, retry_delay=0.01, max_queued=64))
        .health(HealthChecker(HealthConfig(heartbeat_interval=0.2, heartbeat_liveness=10)))
        .build()
    )
    async with gateway:
        with Fleet(gateway.endpoints[0], heartbeat_interval=0.2, log_dir=tmp_path) as fleet:
            fleet.start("slow", "us-west-2", "--max-concurrency", str(SLOTS), "--ttft",
                        str(TTFT), "--token-rate", str(RATE))  # fmt: skip
            await fleet.wait_registered(gateway, "slow")
            gw = gateway
            alone: list[float] = []
            flooded: list[float] = []
            b_failed: list[str] = []
            a_sent = a_ok = a_refused = a_late = a_other = 0
            flood_seconds = 0.0

            async def one_b(rid: str, tokens: int, into: list[float]) -> None:
                t0 = time.perf_counter()
                try:
                    await gw.infer(request(rid, "b", tokens, 10.0))
                except FederationError as exc:
                    b_failed.append(f"{rid}: {type(exc).__name__}: {exc}")
                    return
                into.append(time.perf_counter() - t0)

            async def one_a(rid: str, tokens: int) -> None:
                nonlocal a_ok, a_refused, a_late, a_other
                try:
                    await gw.infer(request(rid, "a", tokens, 5.0))
                    a_ok += 1
                except BackpressureError:
                    a_refused += 1
                except DeadlineExceededError:
                    a_late += 1
                except FederationError:
                    a_other += 1

            async def b_traffic(name: str, into: list[float]) -> None:
                sizes = random.Random(7)  # the same B requests in every round
                tasks = []
                for i in range(int(ROUND * B_RATE)):
                    tasks.append(asyncio.create_task(
                        one_b(f"{name}-b{i}", sizes.randint(*SIZES), into)))  # fmt: skip
                    await asyncio.sleep(1.0 / B_RATE)
                await asyncio.gather(*tasks)

            async def flood(name: str, stop: asyncio.Event) -> list[asyncio.Task[None]]:
                nonlocal a_sent, flood_seconds
                sizes = random.Random(11)
                tasks: list[asyncio.Task[None]] = []
                start = time.perf_counter()
                while not stop.is_set():
                    due = int((time.perf_counter() - start) * A_RATE) - len(tasks)
                    for _ in range(due):
                        a_sent += 1
                        tasks.append(asyncio.create_task(
                            one_a(f"{name}-a{a_sent}", sizes.randint(*SIZES))))  # fmt: skip
                    await asyncio.sleep(A_TICK)
                flood_seconds += time.perf_counter() - start
                return tasks

            async def settle() -> None:
                while gw.stats().active_requests:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)

            await b_traffic("warm", [])  # warm the path (and the worker) once
            for r in range(ROUNDS):
                await b_traffic(f"r{r}-alone", alone)
                await settle()
                stop = asyncio.Event()
                flooding = asyncio.create_task(flood(f"r{r}", stop))
                await asyncio.sleep(1.0)  # A's backlog is there before B's first request
                await b_traffic(f"r{r}-flood", flooded)
                stop.set()
                a_tasks = await flooding
                await asyncio.gather(*a_tasks)
                await settle()

            sent_b = 2 * ROUNDS * int(ROUND * B_RATE)
            a_rate = a_sent / flood_seconds
            capacity = SLOTS / (TTFT + sum(SIZES) / 2 / RATE)
            ratio = p(flooded, 0.99) / p(alone, 0.99)
            print(
                f"\nR32 fairness: {SLOTS} slots, about {capacity:.0f} requests/s of capacity\n"
                f"  B alone:        {len(alone)} requests, p50 {p(alone, 0.5) * 1000:.0f} ms, "
                f"p99 {p(alone, 0.99) * 1000:.0f} ms\n"
                f"  B beside flood: {len(flooded)} requests, p50 "
                f"{p(flooded, 0.5) * 1000:.0f} ms, p99 {p(flooded, 0.99) * 1000:.0f} ms "
                f"({ratio:.2f}x alone), mean {statistics.fmean(flooded) * 1000:.0f} ms\n"
                f"  B success: {sent_b - len(b_failed)}/{sent_b}\n"
                f"  A flood: {a_sent} requests at {a_rate:.0f}/s ({a_rate / capacity:.1f}x "
                f"capacity): {a_ok} ok ({a_ok / a_sent:.1%}), {a_refused} refused (queue "
                f"share full), {a_late} past their deadline, {a_other} other errors"
            )
            assert not b_failed, b_failed[:5]
            assert len(alone) == len(flooded) == sent_b // 2
            assert a_rate >= 10 * capacity * 0.9, "the flood was not 10x capacity"
            assert a_ok > 0
            assert ratio <= 2.0, f"B's p99 beside the flood is {ratio:.2f}x its p99 alone"
