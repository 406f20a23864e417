"""The gateway against in-process workers on loopback TCP: routing, failover, streams, errors.

Workers here run on the test's own event loop (real DEALER/ROUTER sockets,
real frames); the tests with separate processes and signals are in
``test_gateway_process.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq
import zmq.asyncio
from inproc import federation
from procs import wait_until

from fedgate import (
    AllNodesUnhealthyError,
    BackpressureError,
    Capability,
    DeadlineExceededError,
    InferenceRequest,
    NoCapacityError,
    PrivacyLevel,
    PrivacyViolationError,
    QoSRequirements,
    Region,
    StreamInterruptedError,
)
from fedgate.clock import ManualClock
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker, CircuitState
from fedgate.federation.statemachine import RequestState
from fedgate.gateway.gateway import GatewayConfig
from fedgate.worker.backends.base import BackendRequest, backend_failure
from fedgate.worker.backends.synthetic import synthetic_token
from fedgate.worker.process import Worker, WorkerConfig

GEN = Capability.GENERATE


def req(rid: str, **kw: Any) -> InferenceRequest:
    return InferenceRequest(GEN, kw.pop("input", b"x"), request_id=rid, **kw)


def expected(rid: str, n: int, start: int = 0) -> list[bytes]:
    return [synthetic_token(rid, i) for i in range(start, n)]


def served(worker: Worker) -> int:
    return int(worker.stats.requests)


async def test_seed_flow_infer_and_stream() -> None:
    async with federation({"node": "a"}, {"node": "b"}) as (gw, _):
        response = await gw.infer(req("req-001", tenant_id="acme-corp"))
        assert response.node_id in ("a", "b")
        assert response.output == b"".join(expected("req-001", 8))
        assert response.tokens == 8 and response.attempts == 1 and response.latency > 0
        assert 0 < response.score <= 1
        tokens = [t async for t in gw.infer_stream(req("req-002", tenant_id="acme-corp"))]
        assert tokens == expected("req-002", 8)
        stats = gw.stats()
        assert (stats.total_requests, stats.successful_requests, stats.failed_requests) == (2, 2, 0)
        assert stats.total_tokens == 16 and stats.active_streams == 0 and stats.avg_latency > 0
        assert stats.per_tenant["acme-corp"].successes == 2
        assert stats.latency_p50 > 0 and stats.ttft_p50 > 0


async def test_failover_before_first_token_is_transparent() -> None:
    async with federation(
        {"node": "bad", "options": {"tokens": 8, "faults": ["fail-after=0"]}, "cost": 0.0},
        {"node": "good", "cost": 5.0},
    ) as (gw, workers):
        for i in range(10):
            tokens = [t async for t in gw.infer_stream(req(f"s{i}"))]
            assert tokens == expected(f"s{i}", 8)
        assert served(workers["good"]) == 10
        stats = gw.stats()
        assert stats.failed_requests == 0 and stats.successful_requests == 10
        assert stats.failovers == served(workers["bad"]) >= 1
        assert gw.health.status("bad").consecutive_failures >= 1


async def test_stream_resumes_after_the_first_token_without_duplicates() -> None:
    async with federation(
        {"node": "flaky", "options": {"tokens": 12, "faults": ["fail-after=5"]}},
        {"node": "steady", "options": {"tokens": 12}},
    ) as (gw, _):
        # Pin the first attempt to the flaky node by opening its competitor's breaker briefly.
        for _ in range(5):
            gw.breaker.record_failure("steady")
        agen = gw.infer_stream(req("resume-1"))
        got = [await agen.__anext__() for _ in range(5)]
        gw.breaker.reset("steady")
        got += [t async for t in agen]
        assert got == expected("resume-1", 12)
        assert gw.stats().resumes == 1


class _NoResume:
    """A backend that cannot continue a generation: it fails after three tokens."""

    resumable = False

    async def generate(self, request: BackendRequest) -> AsyncIterator[list[bytes]]:
        for i in range(3):
            yield [synthetic_token(request.request_id, i)]
            await asyncio.sleep(0)
        raise backend_failure("model crashed")

    async def aclose(self) -> None:
        return None


async def test_stream_past_commit_point_without_resumable_node_ends_with_explicit_error() -> None:
    async with federation(
        {"node": "a", "backend_obj": _NoResume()}, {"node": "b", "backend_obj": _NoResume()}
    ) as (gw, _):
        got: list[bytes] = []
        with pytest.raises(StreamInterruptedError, match="after 3 tokens"):
            async for token in gw.infer_stream(req("nr-1")):
                got.append(token)
        assert got == expected("nr-1", 3)  # nothing duplicated, nothing silently cut
        assert gw.stats().failed_requests == 1 and gw.stats().active_streams == 0


async def test_bad_input_contacts_no_worker_and_leaves_breakers_closed() -> None:
    config = GatewayConfig(max_input_bytes=16, request_timeout=2.0)
    async with federation({"node": "a"}, config=config) as (gw, workers):
        with pytest.raises(ValueError, match="at most 16 bytes, got 17"):
            await gw.infer(req("big", input=b"x" * 17))
        with pytest.raises(NoCapacityError, match="sentiment"):
            await gw.infer(InferenceRequest(Capability.custom("sentiment"), b"x", request_id="c"))
        with pytest.raises(ValueError, match="request_id"):
            InferenceRequest(GEN, b"x", request_id="")
        with pytest.raises(TypeError):
            await gw.infer("not a request")  # type: ignore[arg-type]
        assert served(workers["a"]) == 0
        assert gw.breaker.state("a") is CircuitState.CLOSED
        assert gw.breaker.status("a").failures == 0
        assert gw.health.status("a").consecutive_failures == 0


async def test_open_breaker_rejects_locally_without_frames() -> None:
    async with federation({"node": "only"}) as (gw, workers):
        for _ in range(5):
            gw.breaker.record_failure("only")
        for i in range(50):
            with pytest.raises(AllNodesUnhealthyError):
                await gw.infer(req(f"r{i}"))
        assert served(workers["only"]) == 0


async def test_privacy_fails_closed_and_goes_only_to_cleared_regions() -> None:
    regions = (Region("eu-west-1", clearance=PrivacyLevel.RESTRICTED),)
    async with federation(
        {"node": "us", "region": "us-west-2", "cost": 0.0},
        {"node": "eu", "region": "eu-west-1", "cost": 9.0},
        regions=regions,
    ) as (gw, workers):
        restricted = QoSRequirements(privacy=PrivacyLevel.RESTRICTED)
        for i in range(20):
            r = await gw.infer(req(f"p{i}", qos=restricted))
            assert r.region_id == "eu-west-1"
        assert served(workers["us"]) == 0
        # Every cleared node unavailable: a clear error, never a fallback to "us".
        for _ in range(5):
            gw.breaker.record_failure("eu")
        with pytest.raises((PrivacyViolationError, AllNodesUnhealthyError)):
            await gw.infer(req("p-x", qos=restricted))
        assert served(workers["us"]) == 0
    async with federation({"node": "us", "region": "us-west-2"}) as (gw, workers):
        with pytest.raises(PrivacyViolationError, match="RESTRICTED"):
            await gw.infer(req("p-y", qos=QoSRequirements(privacy=PrivacyLevel.RESTRICTED)))
        assert served(workers["us"]) == 0


async def test_cancelled_stream_sends_cancel_and_active_streams_returns_to_zero() -> None:
    async with federation({"node": "a", "options": {"tokens": 10_000, "token_rate": 2000}}) as (
        gw,
        workers,
    ):
        agen = gw.infer_stream(req("cancel-me"))
        got = [await agen.__anext__() for _ in range(5)]
        assert got == expected("cancel-me", 5)
        assert gw.stats().active_streams == 1
        await agen.aclose()
        assert gw.stats().active_streams == 0
        await wait_until(lambda: gw.stats().cancels_acknowledged >= 1, 2.0, "CANCEL acked")
        assert gw.stats().cancels_sent == 1 and gw.stats().cancels_acknowledged == 1
        assert workers["a"].inflight == 0
        assert gw.stats().cancelled_requests == 1 and gw.stats().failed_requests == 0
        assert gw.breaker.status("a").failures == 0  # a client's cancel never counts


async def test_deadline_propagates_and_fails_on_time() -> None:
    async with federation({"node": "slow", "options": {"tokens": 4, "ttft": 5.0}}) as (gw, workers):
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await gw.infer(req("late", deadline=0.3))
        elapsed = time.monotonic() - start
        # Never early; the upper bound leaves a loaded machine room and is still far
        # from the 5 s the worker would take.
        assert 0.3 <= elapsed < 1.0
        await wait_until(lambda: workers["slow"].inflight == 0, 2.0, "the worker stopped the work")


async def test_malformed_frames_are_dropped_and_counted() -> None:
    async with federation({"node": "a"}) as (gw, _):
        ctx = zmq.asyncio.Context()
        rogue = ctx.socket(zmq.DEALER)
        rogue.connect(gw.endpoints[0])
        try:
            for frame in (b"", b"\x07junk", b"\x01\xff\xff", b"\x01" + b"\x93" * 50, b"x" * 100):
                await rogue.send(frame)
            await rogue.send_multipart([b"a", b"b", b"c"])
            await wait_until(lambda: gw.stats().malformed_frames >= 6, 2.0, "6 frames counted")
            assert gw.stats().malformed_frames == 6
            response = await gw.infer(req("after-garbage"))
            assert response.output == b"".join(expected("after-garbage", 8))
        finally:
            rogue.close(0)
            ctx.term()


class _FailingSocket:
    """The gateway's socket, but the next send fails with an unexpected ZMQError."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.armed = False
        self.failed: list[bytes] = []

    def send(self, data: Any, *args: Any, **kw: Any) -> Any:
        if self.armed:
            self.armed = False
            self.failed.append(bytes(data))
            raise zmq.ZMQError(zmq.EPROTONOSUPPORT)
        return self._sock.send(data, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_an_unexpected_send_error_counts_against_the_node_and_fails_over() -> None:
    async with federation({"node": "a", "cost": 0.0}, {"node": "b", "cost": 5.0}) as (gw, _):
        pump = gw._pump
        assert pump is not None
        failing = _FailingSocket(pump.sock)
        pump.sock = failing  # type: ignore[assignment]
        failing.armed = True
        response = await gw.infer(req("zmq-error"))
        assert len(failing.failed) == 1
        first = failing.failed[0].split(b"/")[0].decode()  # the identity: node/worker_id
        # Not "shutdown": retried elsewhere, and the node that failed is charged with it.
        assert response.node_id != first and response.attempts == 2
        stats = gw.stats()
        assert stats.failovers == 1 and stats.failed_requests == 0
        assert stats.per_node[first].failures == 1
        pump.sock = failing._sock


async def test_second_worker_claiming_a_live_node_id_is_refused() -> None:
    async with federation({"node": "dup"}) as (gw, _):
        twin = Worker(WorkerConfig([gw.endpoints[0]], "dup", "other", ["m"], ["generate"],
                                   heartbeat_interval=0.1, close_linger=0.0))
        assert gw.stats().refused_workers == 0
        code = await asyncio.wait_for(twin.run(), 5.0)
        assert code == 3
        assert [w["region"] for w in gw.workers()] == ["us-west-2"]
        # Its Ready repeats until the Refuse arrives: at least one refusal, reported.
        assert gw.stats().refused_workers >= 1


async def test_lifecycle_trace_reaches_completed_through_the_hook() -> None:
    async with federation({"node": "a"}) as (gw, _):
        seen: list[tuple[str, RequestState, RequestState]] = []
        gw.on_transition(lambda rid, old, new, at: seen.append((rid, old, new)))
        await gw.infer(req("traced"))
        path = [new for rid, _, new in seen if rid == "traced"]
        assert path == [RequestState.ROUTING, RequestState.INFERRING, RequestState.COMPLETED]


async def test_concurrent_requests_spread_over_equal_nodes() -> None:
    opts = {"tokens": 4, "ttft": 0.02}
    async with federation(*({"node": f"n{i}", "options": opts} for i in range(3))) as (gw, w):
        results = await asyncio.gather(*(gw.infer(req(f"c{i}")) for i in range(90)))
        assert all(r.tokens == 4 for r in results)
        counts = [served(x) for x in w.values()]
        assert max(counts) <= 2 * 90 / 3, counts



async def test_saturated_nodes_queue_requests_until_a_slot_frees() -> None:
    opts = {"tokens": 2, "ttft": 0.01}
    async with federation({"node": "a", "options": opts, "max_concurrency": 2}) as (gw, workers):
        results = await asyncio.gather(*(gw.infer(req(f"q{i}")) for i in range(20)))
        assert [r.tokens for r in results] == [2] * 20
        assert served(workers["a"]) == 20 and gw.stats().failed_requests == 0
        assert "overloaded" not in workers["a"].stats.errors


async def test_admission_queue_is_bounded() -> None:
    config = GatewayConfig(max_queued=0, request_timeout=5.0)
    opts = {"tokens": 2, "ttft": 0.2}
    async with federation({"node": "a", "options": opts, "max_concurrency": 1}, config=config) as (
        gw,
        workers,
    ):
        outcomes = await asyncio.gather(
            *(gw.infer(req(f"b{i}")) for i in range(3)), return_exceptions=True
        )
        assert sum(isinstance(o, BackpressureError) for o in outcomes) == 2
        assert served(workers["a"]) == 1


async def test_a_cancelled_half_open_probe_frees_its_slot_without_a_verdict() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerConfig(open_timeout=0.2, probe_timeout=30.0), clock=clock)
    opts = {"tokens": 10_000, "token_rate": 2000}
    async with federation({"node": "a", "options": opts}, breaker=breaker) as (gw, _):
        for _ in range(5):
            gw.breaker.record_failure("a")
        assert gw.breaker.state("a") is CircuitState.OPEN
        clock.advance(0.2)
        assert gw.breaker.state("a") is CircuitState.HALF_OPEN
        agen = gw.infer_stream(req("probe-1"))
        await agen.__anext__()  # this stream is the probe
        assert gw.breaker.status("a").probes == 1
        await agen.aclose()  # the client goes away: not the node's fault
        status = gw.breaker.status("a")
        assert (status.state, status.probes) == (CircuitState.HALF_OPEN, 0)
        # Probes again at once (a short answer), and the success closes the breaker.
        response = await gw.infer(req("probe-2", input=b'{"max_tokens": 2}'))
        assert response.node_id == "a"
        assert gw.breaker.state("a") is CircuitState.CLOSED
