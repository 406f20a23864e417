"""A node's death under load moves its requests, it does not fail them (R20, R21, R26).

Real worker processes (:class:`procs.Fleet`) against a gateway on loopback,
real SIGKILLs. The gateway runs with its default :class:`GatewayConfig` — the
retry budget of 20 % of active requests, minimum 3 — because the budget is
what used to turn one node's death into client errors: 30 requests stranded
on the dead node, 12 allowed to retry, 18 failed although the survivor was
idle.

Run with ``pytest -m "process or chaos" tests/test_failover_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import REPO, TESTS, Fleet, free_port, wait_until

from fedgate import (
    Capability,
    FederationError,
    Gateway,
    GatewayBuilder,
    GatewayConfig,
    HealthChecker,
    HealthConfig,
    InferenceRequest,
    PrivacyLevel,
    QoSRequirements,
    Region,
    RegionId,
)
from fedgate.routing._jit import warm_up
from fedgate.worker.backends.synthetic import synthetic_output, synthetic_token

pytestmark = [pytest.mark.process]

GEN = Capability.GENERATE
HB = 0.1
LIVENESS = 3
CLEARED = "eu-west-1"  # cleared for INTERNAL data
PUBLIC = "ap-south-1"  # cleared for PUBLIC only: never a candidate for the traffic below
INTERNAL = QoSRequirements(privacy=PrivacyLevel.INTERNAL)


@pytest.fixture(scope="module", autouse=True)
def _quiet_heap() -> Iterator[None]:
    """Compile the kernels once and keep the collector off the long-lived heap (see
    test_gateway_process: a long collection pauses the gateway past 0.3 s liveness)."""
    warm_up()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def req(rid: str, **kw: Any) -> InferenceRequest:
    return InferenceRequest(GEN, kw.pop("input", b"x"), request_id=rid, qos=INTERNAL, **kw)


@contextlib.asynccontextmanager
async def federation(
    tmp_path: Path, config: GatewayConfig | None = None, endpoint: str = "tcp://127.0.0.1:*"
) -> AsyncIterator[tuple[Gateway, Fleet]]:
    gateway = (
        GatewayBuilder()
        .bind(endpoint)
        .config(config or GatewayConfig())  # the defaults: the budget is part of the test
        .health(HealthChecker(HealthConfig(heartbeat_interval=HB, heartbeat_liveness=LIVENESS)))
        .regions(
            Region(RegionId(CLEARED), clearance=PrivacyLevel.INTERNAL),
            Region(RegionId(PUBLIC), clearance=PrivacyLevel.PUBLIC),
        )
        .build()
    )
    async with gateway:
        with Fleet(gateway.endpoints[0], heartbeat_interval=HB, log_dir=tmp_path) as fleet:
            try:
                yield gateway, fleet
            except BaseException:
                print(fleet.logs())
                raise


def inflight(gw: Gateway, node: str) -> int:
    return sum(w["inflight"] for w in gw.workers() if w["node"] == node and w["alive"])


# --------------------------------------------------------------------------- R20


@pytest.mark.chaos
@pytest.mark.timeout(150)
async def test_r20_node_death_under_load_fails_no_request(tmp_path: Path) -> None:
    """3 workers (2 cleared), 60 concurrent infer(), one cleared worker SIGKILLed mid-flight.

    20 rounds against one gateway. The busier cleared worker is the victim;
    a fresh cleared worker (a new node id) takes its place before the next
    round, since the victim's crash rightly opened its breaker (crashes
    count against a node) and a restart under the same id would be kept out
    of rotation for the breaker's open timeout.
    """
    rounds, n, tokens = 20, 60, 10
    flags = ("--tokens", str(tokens), "--token-rate", "20")  # in flight about half a second
    async with federation(tmp_path) as (gw, fleet):
        cleared = ["c0", "c1"]
        for node in cleared:
            fleet.start(node, CLEARED, *flags)
        fleet.start("p0", PUBLIC, *flags)
        await fleet.wait_registered(gw)
        per_round: list[tuple[int, int, int]] = []  # (stranded, failed, max attempts)
        failures: list[str] = []
        started = time.monotonic()
        for rnd in range(rounds):
            rids = [f"r20-{rnd}-{i}" for i in range(n)]
            tasks = [asyncio.create_task(asyncio.wait_for(gw.infer(req(r)), 20.0)) for r in rids]
            try:
                # Kill when a cleared worker holds its share of the load: those are stranded.
                await wait_until(
                    lambda: max(inflight(gw, c) for c in cleared) >= n // 3, 10.0, "a loaded node"
                )
                victim = max(cleared, key=lambda c: inflight(gw, c))
                stranded = inflight(gw, victim)
                fleet.kill(victim, signal.SIGKILL)
            finally:
                results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            for rid, r in zip(rids, results, strict=True):
                if isinstance(r, BaseException):
                    failures.append(f"round {rnd} {rid}: {type(r).__name__}: {r}")
                else:
                    assert r.output == synthetic_output(rid, tokens)
                    assert r.node_id in cleared  # sovereignty held through the failover
            attempts = max(
                (r.attempts for r in results if not isinstance(r, BaseException)), default=0
            )
            per_round.append((stranded, len(errors), attempts))
            print(f"R20 round {rnd}: {stranded} stranded on {victim}, {len(errors)} failed")
            await fleet.async_wait_exit(victim)
            cleared.remove(victim)
            fresh = f"c{rnd + 2}"
            fleet.start(fresh, CLEARED, *flags)
            await fleet.wait_registered(gw, fresh)
            cleared.append(fresh)
        elapsed = time.monotonic() - started
        stats = gw.stats()
        print(
            f"\nR20: {rounds} rounds of {n} in {elapsed:.1f}s; per round (stranded, failed, "
            f"max attempts): {per_round}; retries {stats.retries}, failovers {stats.failovers}"
        )
        assert not failures, failures[:5]
        assert all(failed == 0 for _, failed, _ in per_round)
        assert all(stranded >= n // 3 for stranded, _, _ in per_round)  # the test did strand
        assert stats.failed_requests == 0
        assert stats.successful_requests == rounds * n
        assert stats.failovers >= rounds * (n // 3)


# --------------------------------------------------------------------------- R21


@pytest.mark.chaos
async def test_r21_streams_under_node_death_complete_in_order(tmp_path: Path) -> None:
    """16 resumable streams on one node, SIGKILLed mid-stream: 16 complete, token-exact."""
    n, tokens = 16, 40
    async with federation(tmp_path) as (gw, fleet):
        fleet.start("s0", CLEARED, "--tokens", str(tokens), "--token-rate", "40")
        await fleet.wait_registered(gw, "s0")
        got: dict[str, list[bytes]] = {f"r21-{i}": [] for i in range(n)}
        outcome: Counter[str] = Counter()

        async def stream(rid: str) -> None:
            try:
                async for token in gw.infer_stream(req(rid)):
                    i = len(got[rid])
                    assert token == synthetic_token(rid, i), f"{rid}: token {i} is wrong"
                    got[rid].append(token)
            except FederationError as exc:
                outcome[type(exc).__name__] += 1
            else:
                outcome["completed"] += 1

        tasks = [asyncio.create_task(asyncio.wait_for(stream(rid), 20.0)) for rid in got]
        # Every stream past its first tokens on s0 (the only node), then a survivor, then the kill.
        await wait_until(lambda: all(len(g) >= 3 for g in got.values()), 10.0, "16 streams going")
        fleet.start("s1", CLEARED, "--tokens", str(tokens), "--token-rate", "40")
        await fleet.wait_registered(gw, "s1")
        assert all(len(g) < tokens for g in got.values())  # still mid-stream
        at_kill = sorted(len(g) for g in got.values())
        fleet.kill("s0", signal.SIGKILL)
        await asyncio.gather(*tasks)
        stats = gw.stats()
        print(
            f"\nR21: {dict(outcome)}; tokens at the kill {at_kill[0]}..{at_kill[-1]}; "
            f"resumes {stats.resumes}, stale frames {stats.stale_frames}"
        )
        assert outcome == Counter(completed=n)
        for rid, g in got.items():
            assert g == [synthetic_token(rid, i) for i in range(tokens)], rid
        assert stats.resumes >= n


# --------------------------------------------------------------------------- R26


class GatewayProc:
    """A gateway in its own process (tests/gateway_replica.py), reporting on stdout."""

    def __init__(self, endpoint: str, log: Path) -> None:
        self.endpoint = endpoint
        self.log = log
        self.popen: subprocess.Popen[str] | None = None
        self._log: Any = None
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self._log = self.log.open("ab")
        self.popen = subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "gateway_replica.py"),
                self.endpoint,
                str(HB),
                str(LIVENESS),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        stdout = self.popen.stdout
        while True:
            line = await asyncio.to_thread(stdout.readline)
            if not line:
                return
            await self.lines.put(json.loads(line))

    async def next(self, event: str, timeout: float) -> dict[str, Any]:
        while True:
            msg = await asyncio.wait_for(self.lines.get(), timeout)
            if msg["event"] == event:
                return msg

    async def kill(self) -> None:
        """SIGKILL the process (if running) and close what it left open."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5.0)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5.0)  # its stdout is at EOF
            self._reader = None
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.mark.chaos
async def test_r26_gateway_replica_death_loses_nothing_and_its_workers_come_back(
    tmp_path: Path,
) -> None:
    """Workers serve two gateways; one is SIGKILLed under load and restarted on its port."""
    n_workers, tokens = 2, 6
    other = GatewayProc(f"tcp://127.0.0.1:{free_port()}", tmp_path / "replica.log")
    async with federation(tmp_path) as (gw, fleet):
        try:
            await other.start()
            await other.next("listening", 30.0)
            for i in range(n_workers):
                fleet.start(f"w{i}", CLEARED, "--tokens", str(tokens), "--token-rate", "60",
                            gateways=[gw.endpoints[0], other.endpoint])  # fmt: skip
            await fleet.wait_registered(gw)
            await other.next(f"workers {n_workers}", 15.0)

            # Steady load on this gateway, 16 at a time, while the replica dies and comes back.
            stop = asyncio.Event()
            outcome: Counter[str] = Counter()

            async def client(k: int) -> None:
                i = 0
                while not stop.is_set():
                    rid = f"r26-{k}-{i}"
                    i += 1
                    try:
                        r = await asyncio.wait_for(gw.infer(req(rid)), 10.0)
                    except (FederationError, TimeoutError) as exc:
                        outcome[type(exc).__name__] += 1
                    else:
                        assert r.output == synthetic_output(rid, tokens)
                        outcome["ok"] += 1

            clients = [asyncio.create_task(client(k)) for k in range(16)]
            await wait_until(lambda: outcome["ok"] >= 50, 10.0, "traffic flowing")
            await other.kill()
            before = outcome["ok"]
            await wait_until(lambda: outcome["ok"] >= before + 100, 10.0, "traffic after the kill")
            await other.start()
            listening = await other.next("listening", 30.0)
            back = await other.next(f"workers {n_workers}", 10.0)
            took = back["at"] - listening["at"]
            await wait_until(lambda: outcome["ok"] >= before + 200, 10.0, "traffic after restart")
            stop.set()
            await asyncio.gather(*clients)
            stats = gw.stats()
            print(
                f"\nR26: this gateway {dict(outcome)} (failed {stats.failed_requests}); the "
                f"restarted replica had its {n_workers} workers back {took:.3f}s after binding "
                f"(2 heartbeat intervals: {2 * HB:.3f}s)"
            )
            assert set(outcome) == {"ok"}
            assert stats.failed_requests == 0
            assert all(fleet.proc(f"w{i}").running for i in range(n_workers))
            assert took <= 2 * HB
        finally:
            await other.kill()
            print((tmp_path / "replica.log").read_text(errors="replace")[-3000:])
