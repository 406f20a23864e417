"""The worker: against a bare ROUTER playing the gateway, in-process and as a real process.

In-process tests (unmarked) run a :class:`Worker` on this test's event loop over
TCP loopback. Process tests (``-m process``) start ``python -m fedgate worker``;
chaos tests (``-m chaos``) freeze it with signals or block its loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from fedgate.cli.worker import main as worker_main
from fedgate.transport.protocol import (
    Cancel,
    Disconnect,
    Error,
    Final,
    GatewayMessage,
    Heartbeat,
    Partial,
    Ready,
    Reannounce,
    Refuse,
    Request,
    Welcome,
    WorkerMessage,
    decode_worker_message,
    encode,
    new_rid,
)
from fedgate.worker import Worker, WorkerConfig
from fedgate.worker.backends.python import PythonBackend
from fedgate.worker.backends.synthetic import SyntheticBackend, synthetic_output, synthetic_tokens

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
M = TypeVar("M")
HB = 0.05  # heartbeat interval of in-process workers


class FakeGateway:
    """A bare ROUTER that speaks the protocol by hand (the gateway under test is not used)."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str = "tcp://127.0.0.1:*",
        transport_heartbeat: bool = False,
    ) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        if transport_heartbeat:
            self.sock.setsockopt(zmq.HEARTBEAT_IVL, 50)
            self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 250)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[tuple[float, bytes, WorkerMessage]] = []

    def close(self) -> None:
        self.sock.close(linger=0)

    async def recv(self, timeout: float = 5.0) -> tuple[bytes, WorkerMessage]:
        ident, frame = await asyncio.wait_for(self.sock.recv_multipart(), timeout)
        msg = decode_worker_message(frame)
        self.received.append((time.monotonic(), ident, msg))
        return ident, msg

    async def expect(
        self, kind: type[M], timeout: float = 5.0, where: Callable[[M], bool] = lambda m: True
    ) -> tuple[bytes, M]:
        """The next message of ``kind`` (matching ``where``), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind.__name__} within {timeout}s")
            ident, msg = await self.recv(left)
            if isinstance(msg, kind) and where(msg):
                return ident, msg

    async def send(self, ident: bytes, msg: GatewayMessage) -> None:
        await self.sock.send_multipart([ident, encode(msg)])

    async def welcome(self, gateway_id: str = "gw-test") -> tuple[bytes, Ready]:
        ident, ready = await self.expect(Ready)
        await self.send(ident, Welcome(ready.node, gateway_id))
        return ident, ready

    async def answer(self, rid: str, timeout: float = 5.0) -> tuple[list[Partial], Final | Error]:
        """Partials of ``rid`` up to its Final or Error."""
        partials: list[Partial] = []
        deadline = time.monotonic() + timeout
        while True:
            _, msg = await self.recv(max(0.001, deadline - time.monotonic()))
            if isinstance(msg, Partial) and msg.rid == rid:
                partials.append(msg)
            elif isinstance(msg, (Final, Error)) and msg.rid == rid:
                return partials, msg

    async def quiet_for(self, seconds: float, kinds: tuple[type, ...]) -> list[WorkerMessage]:
        """Messages of ``kinds`` received during ``seconds``."""
        got: list[WorkerMessage] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, msg = await self.recv(left)
            except TimeoutError:
                break
            if isinstance(msg, kinds):
                got.append(msg)
        return got


def request(
    data: bytes = b"",
    *,
    rid: str | None = None,
    attempt: int = 0,
    request_id: str = "req-1",
    capability: str = "generate",
    model: str | None = None,
    deadline: float = 10.0,
    resume_from: int = 0,
    stream: bool = True,
) -> Request:
    return Request(
        rid or new_rid(),
        attempt,
        request_id,
        "tenant-a",
        capability,
        model,
        data,
        deadline,
        resume_from,
        stream,
    )


def config(*gateways: str, **overrides: Any) -> WorkerConfig:
    options: dict[str, Any] = {
        "node": "test-node",
        "region": "test-region",
        "models": ["m1", "m2"],
        "capabilities": ["generate", "transcribe"],
        "heartbeat_interval": HB,
        "drain_timeout": 2.0,
        "close_linger": 0.1,
    }
    options.update(overrides)
    return WorkerConfig(gateways=list(gateways), **options)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
async def gw(ctx: zmq.asyncio.Context) -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway(ctx)
    yield gateway
    gateway.close()


async def welcomed(gw: FakeGateway, worker: Worker) -> bytes:
    ident, _ = await gw.welcome()
    await worker.wait_welcomed(5.0)
    return ident


# --- registration and heartbeats -----------------------------------------------


async def test_ready_repeats_until_welcome_then_heartbeats(gw: FakeGateway) -> None:
    cfg = config(gw.endpoint, gpu=True, cost=0.5, max_concurrency=7)
    async with Worker(cfg, backend=SyntheticBackend()) as worker:
        ident, first = await gw.expect(Ready)
        assert ident == worker.routing_id
        assert ident.startswith(f"test-node/{worker.worker_id}/".encode())
        assert first == Ready(
            "test-node",
            "test-region",
            worker.worker_id,
            ["m1", "m2"],
            ["generate", "transcribe"],
            True,
            0.5,
            7,
            True,
            HB,
            os.getpid(),
            first.version,
        )
        _, again = await gw.expect(Ready)  # no Welcome yet: announced again
        assert again == first
        await gw.send(ident, Welcome("test-node", "gw-1"))
        await worker.wait_welcomed(5.0)
        assert worker.welcomed_by() == ["gw-1"]
        beats = [(await gw.expect(Heartbeat))[1] for _ in range(4)]
        assert [b.seq for b in beats] == sorted({b.seq for b in beats})
        assert all(b.worker_id == worker.worker_id and b.inflight == 0 for b in beats)
        times = [t for t, _, m in gw.received if isinstance(m, Heartbeat)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g > HB * 0.3 for g in gaps)  # paced by the interval, not a burst


async def test_a_welcome_for_another_node_is_ignored(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend()) as worker:
        ident, _ = await gw.expect(Ready)
        await gw.send(ident, Welcome("someone-else", "gw-1"))
        await gw.expect(Ready)  # still announcing
        assert worker.welcomed_by() == [None]
        assert worker.stats.unexpected_messages == 1


async def test_reannounce_gets_a_fresh_ready(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend()) as worker:
        ident = await welcomed(gw, worker)
        await gw.expect(Heartbeat)
        await gw.send(ident, Reannounce())
        _, ready = await gw.expect(Ready, timeout=1.0)
        assert ready.worker_id == worker.worker_id
        await gw.send(ident, Welcome("test-node", "gw-2"))
        await worker.wait_welcomed(5.0)
        await gw.expect(Heartbeat)
        assert worker.welcomed_by() == ["gw-2"]


async def test_heartbeat_reports_inflight_and_queued(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=3, ttft=5.0)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        for _ in range(2):
            await gw.send(ident, request(b"", deadline=10.0))
        _, beat = await gw.expect(Heartbeat, where=lambda b: b.inflight == 2)
        assert beat.queue_depth == 2  # neither has produced a token yet
        worker.stop(drain=False)


async def test_worker_reconnects_after_a_gateway_restart(ctx: zmq.asyncio.Context) -> None:
    first = FakeGateway(ctx)
    endpoint = first.endpoint
    async with Worker(config(endpoint), backend=SyntheticBackend(tokens=2)) as worker:
        await welcomed(first, worker)
        await first.expect(Heartbeat)
        # The gateway dies: its listening socket closed (the monitor says when, so
        # that the port is free for the next one), then the whole socket.
        monitor = first.sock.get_monitor_socket(zmq.EVENT_CLOSED)
        try:
            first.sock.unbind(endpoint)
            event = parse_monitor_message(await asyncio.wait_for(monitor.recv_multipart(), 5.0))
            assert event["event"] == zmq.EVENT_CLOSED
        finally:
            first.sock.disable_monitor()
            monitor.close(linger=0)
        first.close()
        second = FakeGateway(ctx, endpoint)  # … and a new one starts on the same port
        try:
            ident, beat = await second.expect(Heartbeat)  # the DEALER reconnected by itself
            assert beat.worker_id == worker.worker_id
            await second.send(ident, Reannounce())  # "I do not know you"
            await second.welcome("gw-new")
            await worker.wait_welcomed(5.0)
            rid = new_rid()
            await second.send(ident, request(b"", rid=rid))
            _, final = await second.answer(rid)
            assert isinstance(final, Final) and final.tokens == 2
        finally:
            second.close()


# --- serving -------------------------------------------------------------------


async def test_request_streams_deterministic_tokens_then_final(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=40, token_rate=2000.0)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, attempt=3, request_id="req-det"))
        partials, final = await gw.answer(rid)
        assert isinstance(final, Final)
        assert final == Final(rid, 3, 40, b"")
        index = 0
        for p in partials:  # in order, contiguous, fenced by attempt
            assert p.attempt == 3 and p.index == index
            index += len(p.tokens)
        assert [t for p in partials for t in p.tokens] == synthetic_tokens("req-det", 0, 40)
        assert worker.inflight == 0
        assert worker.stats.completed == 1 and worker.stats.tokens_sent == 40


async def test_fast_backend_batches_tokens_into_few_frames(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend(tokens=600)) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, request_id="bulk"))
        partials, final = await gw.answer(rid)
        assert [len(p.tokens) for p in partials] == [256, 256, 88]
        assert isinstance(final, Final) and final.tokens == 600


async def test_non_stream_request_gets_the_whole_output_in_final(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend(tokens=12)) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, request_id="whole", stream=False))
        partials, final = await gw.answer(rid)
        assert partials == []
        assert final == Final(rid, 0, 12, synthetic_output("whole", 12))


async def test_resumed_attempt_continues_at_its_index(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend(tokens=20)) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, attempt=1, request_id="res", resume_from=8))
        partials, final = await gw.answer(rid)
        assert partials[0].index == 8
        assert [t for p in partials for t in p.tokens] == synthetic_tokens("res", 8, 20)
        assert final == Final(rid, 1, 20, b"")


async def test_concurrent_requests_each_get_their_own_tokens(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=25, token_rate=1000.0)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rids = {new_rid(): f"req-{i}" for i in range(20)}
        for rid, rq in rids.items():
            await gw.send(ident, request(b"", rid=rid, request_id=rq))
        tokens: dict[str, list[bytes]] = {rid: [] for rid in rids}
        finals = 0
        while finals < len(rids):
            _, msg = await gw.recv()
            if isinstance(msg, Partial):
                assert msg.index == len(tokens[msg.rid])
                tokens[msg.rid].extend(msg.tokens)
            elif isinstance(msg, Final):
                finals += 1
        for rid, rq in rids.items():
            assert tokens[rid] == synthetic_tokens(rq, 0, 25)


async def test_cancel_stops_the_task_and_is_acknowledged(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=10_000, token_rate=100.0)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, attempt=2))
        await gw.expect(Partial, where=lambda p: p.rid == rid and p.index >= 2)
        await gw.send(ident, Cancel(rid, 2))
        _, err = await gw.expect(Error, timeout=1.0)
        assert (err.rid, err.attempt, err.code, err.node_caused) == (rid, 2, "cancelled", False)
        assert worker.inflight == 0
        late = await gw.quiet_for(0.2, (Partial, Final, Error))
        assert late == []  # nothing after the acknowledgement
        assert worker.stats.errors == {"cancelled": 1}


async def test_cancel_that_arrives_with_its_request_is_still_answered_once(
    gw: FakeGateway,
) -> None:
    backend = SyntheticBackend(tokens=5, ttft=0.5)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid))
        await gw.send(ident, Cancel(rid, 0))
        # Hold the (shared) event loop while libzmq delivers both frames: the worker
        # then reads the Cancel before the request's task has taken a single step.
        # The acknowledgement must come all the same, exactly once.
        time.sleep(0.1)
        answers = await gw.quiet_for(0.3, (Partial, Final, Error))
        assert [(type(a), getattr(a, "code", None)) for a in answers] == [(Error, "cancelled")]
        assert worker.inflight == 0


async def test_cancel_for_something_not_running_is_counted(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend()) as worker:
        ident = await welcomed(gw, worker)
        await gw.send(ident, Cancel(new_rid(), 0))
        await gw.expect(Heartbeat)
        assert worker.stats.unknown_cancels == 1


async def test_deadline_stops_the_work_promptly(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=5, ttft=5.0)  # would take 5 s
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        started = time.monotonic()
        await gw.send(ident, request(b"", rid=rid, deadline=0.3))
        partials, err = await gw.answer(rid)
        elapsed = time.monotonic() - started
        assert isinstance(err, Error) and err.code == "deadline" and err.node_caused is True
        assert "0.300s" in err.message
        assert 0.29 <= elapsed < 1.0
        assert partials == [] and worker.inflight == 0


async def test_overloaded_beyond_max_concurrency(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=1, ttft=5.0)
    async with Worker(config(gw.endpoint, max_concurrency=2), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rids = [new_rid() for _ in range(3)]
        for rid in rids:
            await gw.send(ident, request(b"", rid=rid))
        _, err = await gw.expect(Error, timeout=1.0)
        assert (err.rid, err.code, err.node_caused) == (rids[2], "overloaded", False)
        assert worker.inflight == 2
        worker.stop(drain=False)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"capability": "embed"}, "capability 'embed'"),
        ({"model": "other-model"}, "model 'other-model'"),
    ],
)
async def test_unsupported_capability_or_model(
    gw: FakeGateway, kwargs: dict[str, Any], fragment: str
) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend()) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, **kwargs))
        _, err = await gw.answer(rid)
        assert isinstance(err, Error)
        assert (err.code, err.node_caused) == ("unsupported", False) and fragment in err.message


async def test_resume_on_a_backend_that_cannot_is_unsupported(gw: FakeGateway) -> None:
    backend = PythonBackend("pybackend_fixture:shout")
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"x", rid=rid, resume_from=3))
        _, err = await gw.answer(rid)
        assert isinstance(err, Error) and err.code == "unsupported" and "resume" in err.message


async def test_bad_input_and_backend_failures_are_typed(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=6, faults=["fail-after=2"])
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        bad, failing = new_rid(), new_rid()
        await gw.send(ident, request(b'{"max_tokens": -1}', rid=bad))
        _, err = await gw.answer(bad)
        assert isinstance(err, Error) and (err.code, err.node_caused) == ("bad_input", False)
        await gw.send(ident, request(b"", rid=failing, request_id="ff"))
        partials, err = await gw.answer(failing)
        assert [t for p in partials for t in p.tokens] == synthetic_tokens("ff", 0, 2)
        assert isinstance(err, Error) and (err.code, err.node_caused) == ("backend", True)


async def test_blocking_python_backend_keeps_heartbeats_going(gw: FakeGateway) -> None:
    backend = PythonBackend("pybackend_fixture:blocking")
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        rid = new_rid()
        await gw.send(ident, request(b"0.5", rid=rid, stream=False))
        beats = await gw.quiet_for(0.4, (Heartbeat,))
        assert len(beats) >= 3  # the call runs in a thread; the loop keeps beating
        _, final = await gw.answer(rid)
        assert isinstance(final, Final) and final.output == b"done"


async def test_duplicate_request_is_ignored(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=3, ttft=0.2)
    async with Worker(config(gw.endpoint), backend=backend) as worker:
        ident = await welcomed(gw, worker)
        msg = request(b"")
        await gw.send(ident, msg)
        await gw.send(ident, msg)
        _, final = await gw.answer(msg.rid)
        assert isinstance(final, Final)
        assert await gw.quiet_for(0.3, (Final, Error)) == []
        assert worker.stats.duplicate_requests == 1


async def test_malformed_frames_are_dropped_and_counted(gw: FakeGateway) -> None:
    async with Worker(config(gw.endpoint), backend=SyntheticBackend(tokens=3)) as worker:
        ident = await welcomed(gw, worker)
        garbage: list[list[bytes]] = [
            [ident, b""],
            [ident, b"\x07" + encode(Cancel("r", 0))[1:]],
            [ident, b"\x01\xff\xfe\xfd"],
            [ident, encode(Cancel("r", 0))[:-3]],
            [ident, encode(Heartbeat("n", "00000000", 0, 0, 0))],  # wrong direction
            [ident, b"\x01" + b"\x91" * 5000],
            [ident, encode(Cancel("r", 0)), b"extra frame"],
            [ident, os.urandom(64)],
        ]
        for frames in garbage:
            await gw.sock.send_multipart(frames)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid, request_id="after-garbage"))
        _, final = await gw.answer(rid)
        assert isinstance(final, Final) and final.tokens == 3
        assert worker.stats.malformed_frames == len(garbage)


async def test_oversized_frame_is_dropped(gw: FakeGateway) -> None:
    cfg = config(gw.endpoint, max_frame_bytes=1024)
    async with Worker(cfg, backend=SyntheticBackend(tokens=1)) as worker:
        ident = await welcomed(gw, worker)
        await gw.send(ident, request(b"x" * 2000))
        rid = new_rid()
        await gw.send(ident, request(b"small", rid=rid))
        _, final = await gw.answer(rid)
        assert isinstance(final, Final)
        assert worker.stats.malformed_frames == 1 and worker.stats.requests == 1


async def test_one_worker_serves_two_gateways(ctx: zmq.asyncio.Context) -> None:
    one, two = FakeGateway(ctx), FakeGateway(ctx)
    try:
        cfg = config(one.endpoint, two.endpoint)
        async with Worker(cfg, backend=SyntheticBackend(tokens=4)) as worker:
            ident1, _ = await one.welcome("gw-a")
            ident2, _ = await two.welcome("gw-b")
            await worker.wait_welcomed(5.0)
            assert worker.welcomed_by() == ["gw-a", "gw-b"]
            rid1, rid2 = new_rid(), new_rid()
            await two.send(ident2, request(b"", rid=rid2, request_id="via-b"))
            await one.send(ident1, request(b"", rid=rid1, request_id="via-a"))
            p2, _ = await two.answer(rid2)
            p1, _ = await one.answer(rid1)
            assert [t for p in p1 for t in p.tokens] == synthetic_tokens("via-a", 0, 4)
            assert [t for p in p2 for t in p.tokens] == synthetic_tokens("via-b", 0, 4)
            # Replies went only to the gateway that asked.
            assert all(m.rid != rid2 for _, _, m in one.received if isinstance(m, (Partial, Final)))
            assert all(m.rid != rid1 for _, _, m in two.received if isinstance(m, (Partial, Final)))
    finally:
        one.close()
        two.close()


async def test_inproc_gateway_with_a_shared_context(ctx: zmq.asyncio.Context) -> None:
    gw = FakeGateway(ctx, "inproc://gateway-under-test")
    try:
        cfg = config("inproc://gateway-under-test")
        async with Worker(cfg, backend=SyntheticBackend(tokens=2), context=ctx) as worker:
            ident = await welcomed(gw, worker)
            rid = new_rid()
            await gw.send(ident, request(b"", rid=rid, request_id="inproc"))
            partials, final = await gw.answer(rid)
            assert [t for p in partials for t in p.tokens] == synthetic_tokens("inproc", 0, 2)
            assert isinstance(final, Final)
    finally:
        gw.close()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gateways": []}, "gateways"),
        ({"gateways": ["localhost:5555"]}, "gateways"),
        ({"gateways": ["tcp://a:1", "tcp://a:1"]}, "distinct"),
        ({"node": ""}, "node"),
        ({"node": "has space"}, "node"),
        ({"region": "-r"}, "region"),
        ({"models": []}, "models"),
        ({"models": " padded"}, "models"),
        ({"capabilities": ["Not Valid"]}, "capability"),
        ({"cost": -1}, "cost"),
        ({"cost": float("nan")}, "cost"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"drain_timeout": -1}, "drain_timeout"),
        ({"gpu": "yes"}, "gpu"),
    ],
)
def test_worker_config_is_validated(overrides: dict[str, Any], field: str) -> None:
    options: dict[str, Any] = {
        "gateways": ["tcp://127.0.0.1:5555"],
        "node": "n",
        "region": "r",
        "models": ["m"],
        "capabilities": ["generate"],
    }
    options.update(overrides)
    with pytest.raises(ValueError, match=field):
        WorkerConfig(**options)


def test_worker_config_normalises() -> None:
    cfg = WorkerConfig(["tcp://127.0.0.1:5555"], "n", "r", ["m"], ["TRANSCRIBE"], cost=1)
    assert cfg.capabilities == ("transcribe",) and cfg.gateways == ("tcp://127.0.0.1:5555",)
    assert isinstance(cfg.cost, float)
    with pytest.raises(ValueError, match="backend: expected one of"):
        Worker(WorkerConfig(["tcp://127.0.0.1:5555"], "n", "r", ["m"], ["x"], backend="nope"))


# --- stopping ------------------------------------------------------------------


async def test_refuse_ends_the_worker_with_status_3(gw: FakeGateway) -> None:
    worker = Worker(config(gw.endpoint), backend=SyntheticBackend())
    run = asyncio.ensure_future(worker.run())
    ident, _ = await gw.expect(Ready)
    await gw.send(ident, Refuse("test-node", "node id already live"))
    assert await asyncio.wait_for(run, 5.0) == 3


async def test_stop_drains_in_flight_requests(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=10, token_rate=40.0)  # ~0.25 s
    worker = Worker(config(gw.endpoint, drain_timeout=5.0), backend=backend)
    run = asyncio.ensure_future(worker.run())
    ident = await welcomed(gw, worker)
    rid = new_rid()
    await gw.send(ident, request(b"", rid=rid, request_id="drain"))
    await gw.expect(Partial)
    worker.stop()
    _, bye = await gw.expect(Disconnect, timeout=1.0)
    assert bye.worker_id == worker.worker_id
    late = new_rid()
    await gw.send(ident, request(b"", rid=late))  # arrives while draining
    _, refused = await gw.expect(Error, where=lambda e: e.rid == late)
    assert (refused.code, refused.node_caused) == ("shutdown", False)
    _, final = await gw.expect(Final, where=lambda f: f.rid == rid)
    assert final.tokens == 10
    assert await asyncio.wait_for(run, 5.0) == 0
    await gw.quiet_for(0.2, ())
    kinds = [type(m) for _, _, m in gw.received]
    after = kinds[kinds.index(Disconnect) :]
    # It beats while it drains (so the gateway keeps waiting for it), and not after.
    assert Heartbeat in after[: after.index(Final)]
    assert Heartbeat not in after[after.index(Final) :]


async def test_drain_timeout_fails_the_rest_explicitly(gw: FakeGateway) -> None:
    backend = SyntheticBackend(tokens=1000, token_rate=20.0)
    worker = Worker(config(gw.endpoint, drain_timeout=0.2), backend=backend)
    run = asyncio.ensure_future(worker.run())
    ident = await welcomed(gw, worker)
    rid = new_rid()
    await gw.send(ident, request(b"", rid=rid))
    await gw.expect(Partial)
    started = time.monotonic()
    worker.stop()
    _, err = await gw.expect(Error, where=lambda e: e.rid == rid)
    assert (err.code, err.node_caused) == ("shutdown", False)
    assert 0.15 <= time.monotonic() - started < 2.0
    assert await asyncio.wait_for(run, 5.0) == 0


# --- the command line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--cost", "-1"], "--cost"),
        (["--heartbeat-interval", "0"], "--heartbeat-interval"),
        (["--fault", "explode"], "--fault"),
        (["--backend", "python"], "--callable"),
        (["--base-url", "http://x"], "--base-url"),
        (["--capability", "Not Valid"], "--capability"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "--gateway",
        "tcp://127.0.0.1:1",
        "--node",
        "n",
        "--region",
        "r",
        "--model",
        "m",
        "--capability",
        "generate",
    ]
    with pytest.raises(SystemExit) as info:
        worker_main([*base, *argv])
    assert info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        worker_main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--gateway",
        "--node",
        "--region",
        "--model",
        "--capability",
        "--backend",
        "--gpu",
        "--cpu",
        "--cost",
        "--max-concurrency",
        "--heartbeat-interval",
        "--drain-timeout",
        "--ttft",
        "--token-rate",
        "--tokens",
        "--fault",
        "--base-url",
        "--api-key-env",
        "--upstream-model",
        "--callable",
        "examples:",
    ):
        assert flag in text


def test_top_level_command_dispatches_to_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from fedgate.cli import main as fedgate_main

    assert fedgate_main([]) == 2
    assert "worker" in capsys.readouterr().out
    assert fedgate_main(["nope"]) == 2
    with pytest.raises(SystemExit) as info:
        fedgate_main(["worker", "--help"])
    assert info.value.code == 0
    assert "fedgate worker" in capsys.readouterr().out


# --- real processes ----------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))

    def start(endpoint: str, *args: str, node: str = "proc-node") -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedgate",
                "worker",
                "--gateway",
                endpoint,
                "--node",
                node,
                "--region",
                "test-region",
                "--model",
                "m1",
                "--capability",
                "generate",
                "--heartbeat-interval",
                "0.1",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            with_cont = proc.pid
            os.kill(with_cont, signal.SIGCONT)  # a frozen process cannot die of SIGKILL late
            proc.kill()
        proc.wait(10)


async def _exit_status(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return proc.poll()


@pytest.mark.process
@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_process_announces_serves_and_drains_on_sigterm(
    gw: FakeGateway, spawn: Callable[..., subprocess.Popen[bytes]], loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    extra = ["--uvloop"] if loop == "uvloop" else []
    proc = spawn(gw.endpoint, "--token-rate", "20", "--tokens", "10", "--gpu", *extra)
    ident, ready = await gw.expect(Ready, timeout=20.0)
    assert ready.pid == proc.pid and ready.gpu is True and ready.node == "proc-node"
    await gw.send(ident, Welcome("proc-node", "gw-p"))
    await gw.expect(Heartbeat)
    rid = new_rid()
    await gw.send(ident, request(b"", rid=rid, request_id="proc-req", model="m1"))
    await gw.expect(Partial, where=lambda p: p.rid == rid)
    proc.send_signal(signal.SIGTERM)
    await gw.expect(Disconnect, timeout=5.0)
    _, final = await gw.expect(Final, timeout=5.0, where=lambda f: f.rid == rid)
    assert final.tokens == 10
    tokens = [
        t for _, _, m in gw.received if isinstance(m, Partial) and m.rid == rid for t in m.tokens
    ]
    assert tokens == synthetic_tokens("proc-req", 0, 10)
    assert await _exit_status(proc, 10.0) == 0


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_process_crash_after_0_exits_on_accepting(
    gw: FakeGateway, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    proc = spawn(gw.endpoint, "--fault", "crash-after=0")
    ident, _ = await gw.welcome()
    rid = new_rid()
    await gw.send(ident, request(b"", rid=rid))
    assert await _exit_status(proc, 10.0) == 1
    answers = [m for _, _, m in gw.received if isinstance(m, (Partial, Final, Error))]
    assert answers == []


@pytest.mark.process
@pytest.mark.timeout(60)
async def test_process_refused_exits_3(
    gw: FakeGateway, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    proc = spawn(gw.endpoint)
    ident, _ = await gw.expect(Ready, timeout=20.0)
    await gw.send(ident, Refuse("proc-node", "node id already live with another worker"))
    assert await _exit_status(proc, 10.0) == 3


@pytest.mark.process
@pytest.mark.timeout(60)
def test_process_bad_flag_exits_2_without_connecting(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedgate",
            "worker",
            "--gateway",
            "tcp://127.0.0.1:1",
            "--node",
            "n",
            "--region",
            "r",
            "--model",
            "m",
            "--capability",
            "generate",
            "--cost",
            "-3",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"argument --cost" in result.stderr


@pytest.mark.process
@pytest.mark.chaos
@pytest.mark.timeout(60)
async def test_sigstop_stops_heartbeats_and_sigcont_resumes_them(
    gw: FakeGateway, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    proc = spawn(gw.endpoint)
    await gw.welcome()
    assert len(await gw.quiet_for(0.5, (Heartbeat,))) >= 3
    proc.send_signal(signal.SIGSTOP)
    await gw.quiet_for(0.15, (Heartbeat,))  # beats already on the wire
    assert await gw.quiet_for(0.6, (Heartbeat,)) == []  # frozen: silent
    proc.send_signal(signal.SIGCONT)
    _, beat = await gw.expect(Heartbeat, timeout=1.0)
    assert beat.seq > 0
    assert len(await gw.quiet_for(0.5, (Heartbeat,))) >= 3


@pytest.mark.process
@pytest.mark.chaos
@pytest.mark.timeout(60)
async def test_blocked_loop_stops_heartbeats_while_the_socket_stays_connected(
    ctx: zmq.asyncio.Context, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # The ROUTER runs libzmq's transport heartbeat (50 ms, 250 ms timeout): if the
    # connection dropped while the worker's loop is blocked, the monitor would say so.
    gw = FakeGateway(ctx, transport_heartbeat=True)
    monitor = gw.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED)
    events: list[int] = []

    async def watch() -> None:
        while True:
            events.append(parse_monitor_message(await monitor.recv_multipart())["event"])

    watcher = asyncio.ensure_future(watch())
    try:
        spawn(gw.endpoint, "--fault", "block-loop=1.5", "--tokens", "3")
        ident, _ = await gw.welcome()
        await gw.expect(Heartbeat)
        rid = new_rid()
        await gw.send(ident, request(b"", rid=rid))
        await gw.quiet_for(0.15, (Heartbeat,))
        assert await gw.quiet_for(0.9, (Heartbeat,)) == []  # blocked: no application beats
        _, final = await gw.expect(Final, timeout=5.0, where=lambda f: f.rid == rid)
        assert final.tokens == 3
        await gw.expect(Heartbeat, timeout=1.0)  # beats again
        assert events.count(zmq.EVENT_ACCEPTED) == 1
        assert zmq.EVENT_DISCONNECTED not in events  # libzmq kept the connection alive
    finally:
        watcher.cancel()
        gw.sock.disable_monitor()
        monitor.close(linger=0)
        gw.close()
