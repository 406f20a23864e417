"""Issue 12's bounds: no request outlives its bound, no frame vanishes, every input
bounded by what it costs the gateway (RELIABILITY.md, "What we measured" 4 and 5).

Each attack the issue measured is replayed against an in-process gateway with
scripted workers (``scripted.py``: real sockets, health on a manual clock) or
in-process workers (``inproc.py``), and what it cost the gateway is printed.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from inproc import federation
from scripted import WAIT, Federation, req, scripted_federation, tok, toks, until

from fedgate import (
    BackpressureError,
    Capability,
    DeadlineExceededError,
    InferenceRequest,
    NodeId,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.breaker import CircuitState
from fedgate.gateway import GatewayConfig
from fedgate.gateway.attempt import LAGGING, OVERFLOW, Lost
from fedgate.gateway.ingress import Ingress
from fedgate.transport import protocol as wire
from fedgate.validation import InvalidParameterError

CONCURRENCY = 16  # a scripted worker's max_concurrency


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """A DEALER client of an ingress (one connection: closing it is a disconnect)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    async def send(self, **request: Any) -> None:
        await self.sock.send(msgspec.msgpack.encode(request))

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        reply: dict[str, Any] = msgspec.msgpack.decode(
            await asyncio.wait_for(self.sock.recv(), timeout)
        )
        return reply

    def close(self) -> None:
        self.sock.close(0)


def big(request_id: str, size: int) -> InferenceRequest:
    return InferenceRequest(Capability.GENERATE, b"y" * size, request_id=request_id)


def inflight(fed: Federation, node: str) -> int:
    return next(w["inflight"] for w in fed.gw.workers() if w["node"] == node)


# ------------------------------------------------------------ deadlines
def test_max_deadline_is_declared_and_bounds_the_default_timeout() -> None:
    assert GatewayConfig().max_deadline == 3600.0
    with pytest.raises(InvalidParameterError, match=r"GatewayConfig\.max_deadline"):
        GatewayConfig(max_deadline=0.0)
    with pytest.raises(InvalidParameterError, match="request_timeout: expected at most max_dead"):
        GatewayConfig(request_timeout=60.0, max_deadline=30.0)


async def test_a_deadline_beyond_the_gateways_maximum_is_refused_before_any_worker() -> None:
    config = GatewayConfig(request_timeout=5.0, max_deadline=60.0, retry_delay=0.0,
                           monitor_interval=0.005)  # fmt: skip
    async with scripted_federation("a", config=config) as fed:
        with pytest.raises(ValueError, match=r"deadline: expected at most 60 seconds"):
            await fed.gw.infer(req("long", deadline=60.001))
        with pytest.raises(ValueError, match=r"deadline: expected at most 60 seconds"):
            async for _ in fed.gw.infer_stream(req("long-stream", deadline=1e9)):
                pass
        # At the maximum it is sent, carrying the time it has left.
        call = fed.spawn(fed.gw.infer(req("ok", deadline=60.0)))
        worker, request = await fed.next_request()
        assert 59.0 < request.deadline <= 60.0
        assert [r.request_id for r in worker.requests] == ["ok"]
        await worker.final(request, 1, b"done")
        assert (await call).output == b"done"


async def test_ingress_clients_cannot_hold_a_node_past_their_own_connection() -> None:
    # The attack: one ingress client sends requests with huge deadlines
    # until the node is full, then goes away. Deadlines above the gateway's
    # maximum are refused at the door; those within it hold slots only while
    # their client is connected: its disconnect cancels them down to the worker.
    config = GatewayConfig(request_timeout=5.0, max_deadline=600.0, retry_delay=0.0,
                           monitor_interval=0.005)  # fmt: skip
    async with scripted_federation("a", config=config) as fed:
        ingress = Ingress(fed.gw, "tcp://127.0.0.1:*")
        await ingress.start()
        ctx = zmq.asyncio.Context()
        attacker, other = Client(ctx, ingress.endpoint), Client(ctx, ingress.endpoint)
        try:
            cpu0, t0 = cpu(), time.perf_counter()
            for i in range(64):
                await attacker.send(id=f"huge-{i}", capability="generate", input=b"x",
                                    deadline=1e10 if i % 2 else 1e9)  # fmt: skip
            refused = [await attacker.recv() for _ in range(64)]
            assert {r["error"] for r in refused} == {"BadRequest"}
            assert fed["a"].requests == []
            for i in range(CONCURRENCY):
                await attacker.send(
                    id=f"hold-{i}", capability="generate", deadline=600.0, stream=i % 2 == 0
                )
            held = [await fed.next_request() for _ in range(CONCURRENCY)]
            assert inflight(fed, "a") == CONCURRENCY
            attacker.close()
            await until(lambda: inflight(fed, "a") == 0, "the attacker's slots to come back")
            await until(lambda: len(fed["a"].cancels) == CONCURRENCY, "a CANCEL per request")
            assert {c.rid for c in fed["a"].cancels} == {r.rid for _, r in held}
            assert ingress.disconnect_cancels == CONCURRENCY
            # Everyone else is served at once.
            for i in range(CONCURRENCY + 1):
                await other.send(id=f"other-{i}", capability="generate")
                worker, request = await fed.next_request()
                await worker.final(request, 1, b"ok")
                assert (await other.recv())["done"] is True
            print(
                f"\ndeadline attack: 64 refused, {CONCURRENCY} held then cancelled on "
                f"disconnect; {CONCURRENCY + 1}/{CONCURRENCY + 1} other requests served; "
                f"gateway CPU {cpu() - cpu0:.3f}s over {time.perf_counter() - t0:.3f}s"
            )
        finally:
            attacker.close()
            other.close()
            await ingress.stop()
            ctx.term()


# ------------------------------------------------------- undecodable requests
async def test_a_request_the_worker_cannot_decode_is_answered_for_its_id() -> None:
    # The gateway's frame is larger than this worker takes: the worker answers
    # bad_input for the request's id at once instead of dropping it in silence
    # (the gateway would have waited out the 30 s deadline, its slot held).
    config = GatewayConfig(request_timeout=30.0, retry_delay=0.0)
    async with federation({"node": "small", "max_frame_bytes": 1024}, config=config) as (gw, ws):
        t0 = time.perf_counter()
        with pytest.raises(WorkerError, match="cannot decode this request") as caught:
            await asyncio.wait_for(gw.infer(big("too-big", 4096)), WAIT)
        assert caught.value.code == wire.ERR_BAD_INPUT
        assert ws["small"].stats.undecodable_requests == 1
        assert gw.stats().failed_requests == 1
        assert all(w["inflight"] == 0 for w in gw.workers())
        print(f"\nundecodable REQUEST answered in {time.perf_counter() - t0:.3f}s (deadline 30 s)")


# ---------------------------------------------------------- cheap bytes, dear CPU
WID = "0123456789abcdef"


def huge_ready(size: int) -> bytes:
    """A Ready of ``size`` bytes whose model list fails validation (too many items)."""
    n = (size - 200) // 2
    fields = [7, "n", "r", WID, ["m"] * n, ["generate"], False, 1.0, 1, False, 1.0, 1, "v"]
    return b"\x01" + msgspec.msgpack.encode(fields)


def test_a_rejected_frame_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    untyped: list[object] = []
    real = msgspec.msgpack.decode
    monkeypatch.setattr(
        msgspec.msgpack, "decode", lambda *a, **k: untyped.append(1) or real(*a, **k)
    )
    typed: list[object] = []
    real_typed = wire._DECODE_FROM_WORKER
    monkeypatch.setattr(wire, "_DECODE_FROM_WORKER", lambda b: typed.append(1) or real_typed(b))
    frame = huge_ready(1 << 20)
    with pytest.raises(wire.ProtocolError, match=r"malformed Ready: field 'models'"):
        wire.decode_worker_message(frame)
    assert (len(typed), len(untyped)) == (1, 0)


async def test_huge_invalid_readies_cost_the_gateway_little() -> None:
    # The attack: 48 READYs of 16 MiB that fail validation, each decoded a
    # second time untyped to word the error (342 ms and 1.2 GB peak in all).
    async with scripted_federation("a") as fed:
        ctx = zmq.asyncio.Context()
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(fed.gw.endpoints[0])
        frame = huge_ready(wire.MAX_FRAME_BYTES)
        try:
            rss0, cpu0, t0 = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                cpu(),
                time.perf_counter(),
            )
            for _ in range(48):
                await rogue.send(frame, copy=False)
            await until(lambda: fed.gw.stats().malformed_frames == 48, "48 READYs rejected", 60.0)
            spent = cpu() - cpu0
            call = fed.spawn(fed.gw.infer(req("after")))
            worker, request = await fed.next_request()
            await worker.final(request, 1, b"ok")
            assert (await call).output == b"ok"
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
            print(
                f"\n48 invalid 16 MiB READYs: test process CPU {spent:.2f}s (sending included) "
                f"over {time.perf_counter() - t0:.2f}s, peak RSS +{grown / 1024:.0f} MiB"
            )
        finally:
            rogue.close(0)
            ctx.term()


async def test_sockets_bound_message_size_and_drop_larger_frames_unread() -> None:
    limit = 4096
    config = GatewayConfig(request_timeout=5.0, retry_delay=0.0, monitor_interval=0.005,
                           max_frame_bytes=limit)  # fmt: skip
    async with scripted_federation("a", config=config) as fed:
        assert fed.gw._pump is not None
        assert fed.gw._pump.sock.getsockopt(zmq.MAXMSGSIZE) == wire.socket_max_bytes(limit)
        ingress = Ingress(fed.gw, "tcp://127.0.0.1:*")
        await ingress.start()
        ctx = zmq.asyncio.Context()
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 0)
        rogue.connect(fed.gw.endpoints[0])
        try:
            assert ingress._sock is not None and ingress._sock.getsockopt(zmq.MAXMSGSIZE) > 0
            await rogue.send(b"\x01" + b"x" * (8 * limit))  # far over: never read
            beat = wire.encode(wire.Heartbeat("rogue", WID, 1, 0, 0))
            answered = False
            while not answered:  # the connection was dropped; the DEALER reconnects
                await rogue.send(beat)
                answered = await rogue.poll(100) != 0
            assert isinstance(wire.decode_gateway_message(await rogue.recv()), wire.Reannounce)
            assert fed.gw.stats().malformed_frames == 0
        finally:
            rogue.close(0)
            await ingress.stop()
            ctx.term()


async def test_a_flood_of_many_frame_messages_does_not_starve_ingress_clients() -> None:
    async with scripted_federation("a") as fed:
        ingress = Ingress(fed.gw, "tcp://127.0.0.1:*")
        await ingress.start()
        ctx = zmq.asyncio.Context()
        flooder, other = Client(ctx, ingress.endpoint), Client(ctx, ingress.endpoint)

        async def serve() -> None:
            while True:
                worker, request = await fed.next_request(60.0)
                await worker.final(request, 1, b"ok")

        fed.spawn(serve())
        try:
            cpu0, t0 = cpu(), time.perf_counter()
            frames = [b"f"] * 999
            body = msgspec.msgpack.encode({"id": "flood", "capability": "generate"})

            async def flood() -> None:
                for _ in range(500):
                    await flooder.sock.send_multipart([*frames, body])

            async def normal(i: int) -> dict[str, Any]:
                await other.send(id=f"n{i}", capability="generate")
                return await other.recv(30.0)

            sending = asyncio.create_task(flood())
            replies = [await normal(i) for i in range(32)]
            await sending
            await flooder.send(id="last", capability="generate")
            assert (await flooder.recv(30.0))["id"] == "last"  # after every flood message
            assert all(r.get("done") for r in replies), replies
            assert ingress.rejected == 500
            print(
                f"\n500 messages of 1000 frames: 32/32 normal requests served, "
                f"test process CPU {cpu() - cpu0:.2f}s over {time.perf_counter() - t0:.2f}s"
            )
        finally:
            flooder.close()
            other.close()
            await ingress.stop()
            ctx.term()


# ------------------------------------------------- a caller's slowness is its own
def node_failures(fed: Federation, node: str) -> int:
    return fed.gw._counters.per_node[NodeId(node)].failures


async def test_stream_buffers_are_bounded_in_bytes() -> None:
    # 4 096 tokens of 256 KiB held 1 GB for one unread stream: bounded in bytes
    # too, the stream ends with BackpressureError, and the node is not blamed.
    config = GatewayConfig(request_timeout=30.0, retry_delay=0.0, monitor_interval=0.005,
                           max_frame_bytes=64 * 1024, stream_buffer_bytes=256 * 1024)  # fmt: skip
    async with scripted_federation("a", config=config) as fed:
        stream = fed.gw.infer_stream(req("hoard"))
        first = asyncio.ensure_future(stream.__anext__())
        worker, request = await fed.next_request()
        token = b"x" * (32 * 1024)
        for i in range(16):  # 512 KiB the caller does not read, 16 tokens only
            await worker.partial(request, i, [token])
        assert await first == token
        att = fed.gw._attempts.by_rid[request.rid]
        # Cancelled by the gateway while the caller still sleeps.
        await until(lambda: len(fed["a"].cancels) == 1, "the overflow to cancel the attempt")
        assert att.inbox[-1] is OVERFLOW
        assert att.buffered_bytes <= config.stream_buffer_bytes
        held = len(att.inbox)
        for i in range(16, 32):  # the worker's late frames are stale, never buffered
            await worker.partial(request, i, [token])
        # Each of the 32 frames was read by the caller, is buffered, or was dropped (stale).
        await until(
            lambda: 1 + len(att.sizes) + fed.gw.stats().stale_frames == 32, "the late frames"
        )
        assert len(att.inbox) == held
        # The slot comes back when the worker says it stopped.
        assert inflight(fed, "a") == 1
        await worker.error(request, wire.ERR_CANCELLED)
        await until(lambda: inflight(fed, "a") == 0, "the slot after the worker's answer")
        got = 1
        with pytest.raises(BackpressureError, match="bytes buffered"):
            async for _ in stream:
                got += 1
        assert 1 < got < 16 and att.buffered_bytes == 0
        assert len(fed["a"].cancels) == 1
        assert node_failures(fed, "a") == 0
        assert fed.gw.breaker.state(NodeId("a")) is CircuitState.CLOSED


async def test_a_deadline_that_passes_while_the_reader_lags_is_not_the_nodes() -> None:
    config = GatewayConfig(request_timeout=30.0, retry_delay=0.0, monitor_interval=0.005)
    async with scripted_federation("a", config=config) as fed:
        stream = fed.gw.infer_stream(req("slow-reader", deadline=0.5))
        first = asyncio.ensure_future(stream.__anext__())
        worker, request = await fed.next_request()
        for i in range(3):
            await worker.partial(request, i, [tok(i)])
        assert await first == tok(0)
        # The node has sent everything; the caller sits on it past its deadline.
        att = fed.gw._attempts.by_rid[request.rid]
        await until(lambda: bool(att.inbox) and isinstance(att.inbox[-1], Lost), "the deadline")
        assert att.inbox[-1] is LAGGING
        got = []
        with pytest.raises(StreamInterruptedError, match="while its reader lagged"):
            async for t in stream:
                got.append(t)
        assert got == toks(1, 3)
        assert node_failures(fed, "a") == 0
        assert fed.gw.health.status(NodeId("a")).consecutive_failures == 0
        # A node that is itself late still is.
        call = fed.spawn(fed.gw.infer(req("late-node", deadline=0.2)))
        await fed.next_request()
        with pytest.raises(DeadlineExceededError, match="exceeded its deadline on node a"):
            await call
        assert node_failures(fed, "a") == 1


# ------------------------------------------------------------- dead nodes leave
async def test_a_node_dead_past_the_grace_period_leaves_the_catalog_and_the_router() -> None:
    config = GatewayConfig(request_timeout=5.0, retry_delay=0.0, monitor_interval=0.005,
                           dead_grace=30.0)  # fmt: skip
    async with scripted_federation("a", "b", config=config) as fed:
        gw = fed.gw
        fed.clock.advance(3.0)
        await fed.beat("a")
        fed.clock.advance(2.0)  # b silent for 5 s: liveness is 4 × 1 s
        await until(lambda: not fed.alive("b"), "b to be declared dead")
        assert NodeId("b") in gw.catalog.nodes()  # listed, not alive, within the grace
        for _ in range(9):  # 36 s more: past the 30 s grace
            fed.clock.advance(4.0)
            await fed.beat("a")
        await until(lambda: NodeId("b") not in gw.catalog.nodes(), "b to leave the catalog")
        assert [w["node"] for w in gw.workers()] == ["a"]
        assert gw.stats().retired_nodes == 1
        call = fed.spawn(gw.infer(req("after")))
        worker, request = await fed.next_request()
        assert worker is fed["a"]
        await worker.final(request, 1, b"ok")
        await call
        # A node that comes back registers afresh.
        await fed["b"].register()
        await until(lambda: NodeId("b") in gw.catalog.nodes(), "b to come back")


async def test_hundreds_of_fakes_that_stop_heartbeating_disappear() -> None:
    # The 10 000 fakes, scaled to the default run and to one connection each
    # (one link announces one node: test_one_connection_cannot_announce_a_second_node):
    # 400 DEALERs announce a node each and never beat for it.
    fakes = 400
    config = GatewayConfig(request_timeout=5.0, retry_delay=0.0, monitor_interval=0.005,
                           dead_grace=10.0)  # fmt: skip
    async with scripted_federation("a", config=config) as fed:
        ctx = zmq.asyncio.Context()
        rogues = []
        try:
            cpu0 = cpu()
            for i in range(fakes):
                rogue = ctx.socket(zmq.DEALER)
                rogue.setsockopt(zmq.LINGER, 0)
                rogue.connect(fed.gw.endpoints[0])
                rogues.append(rogue)
                await rogue.send(wire.encode(wire.Ready(
                    f"fake-{i}", "us-west-2", wire.new_worker_id(), ["m"], ["generate"],
                    False, 1.0, 1, False, 1.0, 0, "fake")))  # fmt: skip
            await until(lambda: len(fed.gw.catalog.nodes()) == fakes + 1, "the fakes", 60.0)
            fed.clock.advance(3.0)
            await fed.beat("a")
            fed.clock.advance(2.0)
            await until(lambda: fed.gw.stats().workers == 1, "the fakes declared dead", 60.0)
            assert len(fed.gw.catalog.nodes()) == fakes + 1  # within the grace
            for _ in range(3):  # 12 s more: past the 10 s grace
                fed.clock.advance(4.0)
                await fed.beat("a")
            await until(lambda: fed.gw.catalog.nodes() == [NodeId("a")], "the fakes gone", 60.0)
            assert [w["node"] for w in fed.gw.workers()] == ["a"]
            assert fed.gw.stats().retired_nodes == fakes
            print(f"\n{fakes} silent fakes registered and retired: gateway CPU {cpu() - cpu0:.2f}s")
        finally:
            for rogue in rogues:
                rogue.close(0)
            ctx.term()


# ------------------------------------------------- heartbeats ahead of tokens
class _Flood:
    """A backend streaming 256 KiB tokens for as long as it is read."""

    resumable = False

    async def generate(self, req: Any) -> Any:
        token = b"x" * (256 * 1024)
        while True:
            yield [token]

    async def aclose(self) -> None:
        pass


@pytest.mark.chaos
async def test_heartbeats_never_queue_behind_tokens() -> None:
    # 200 streams of 256 KiB tokens to a gateway that stops reading: every
    # serving task leaves one frame in the worker's backlog (50 MB). A heartbeat
    # fired meanwhile must leave ahead of them, not after all 200.
    from fedgate.worker.process import Worker, WorkerConfig

    streams = 200
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, 4)
    router.bind("tcp://127.0.0.1:*")
    cfg = WorkerConfig(
        [router.getsockopt_string(zmq.LAST_ENDPOINT)], "node", "region", ["m"], ["generate"],
        heartbeat_interval=0.05, close_linger=0.0, send_hwm=4, max_concurrency=streams,
    )  # fmt: skip
    try:
        async with Worker(cfg, backend=_Flood()) as worker:
            ident, ready = await asyncio.wait_for(router.recv_multipart(), WAIT)
            assert isinstance(wire.decode_worker_message(ready), wire.Ready)
            await router.send_multipart([ident, wire.encode(wire.Welcome("node", "gw"))])
            await worker.wait_welcomed(WAIT)
            for i in range(streams):
                request = wire.Request(f"{i:032x}", 0, f"r{i}", None, "generate", None, b"",
                                       60.0, 0, True)  # fmt: skip
                await router.send_multipart([ident, wire.encode(request)])
            await until(lambda: worker.inflight == streams, "every stream to start")
            # Not reading: the pipe and the backlog fill, one frame per task.
            await until(lambda: len(worker._links[0].pump.backlog) >= streams // 2, "the backlog")
            sent = worker.stats.heartbeats_sent
            await until(lambda: worker.stats.heartbeats_sent > sent + 1, "a heartbeat fired")
            partials_first = 0
            while True:
                _, frame = await asyncio.wait_for(router.recv_multipart(), WAIT)
                msg = wire.decode_worker_message(frame)
                if isinstance(msg, wire.Heartbeat):
                    break
                partials_first += 1
            print(f"\nheartbeat after {partials_first} token frames ({streams} streams backed up)")
            assert partials_first < streams // 2
            worker.stop(drain=False)
    finally:
        router.close(0)
        ctx.term()


async def test_a_fired_frame_leaves_ahead_of_the_backlog() -> None:
    # The pump-level rule behind the test above, in the default run: frames the
    # socket cannot take wait in order, and a heartbeat goes to the head.
    from fedgate.transport.pump import Pump

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IMMEDIATE, 1)  # no peer yet: every send is refused
    with socket.socket() as probe:  # a free port, nobody listening yet
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    dealer.setsockopt(zmq.RECONNECT_IVL, 10)
    dealer.connect(endpoint)
    pump = Pump(asyncio.get_running_loop(), dealer, lambda *_: None, lambda *_: None,
                routed=False, batch=16)  # fmt: skip
    pump.start()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        assert pump.send(b"token-0") is not None and pump.send(b"token-1") is not None
        assert pump.send_first(b"heartbeat") is not None
        assert [o.frame for o in pump.backlog] == [b"heartbeat", b"token-0", b"token-1"]
        router.bind(endpoint)
        got = []
        deadline = time.monotonic() + WAIT
        while len(got) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            while router.poll(0):
                got.append(router.recv_multipart()[1])
        assert got == [b"heartbeat", b"token-0", b"token-1"]
    finally:
        pump.close(0)
        router.close(0)
        ctx.term()


async def test_an_answered_attempt_gives_its_slot_back_before_the_caller_reads() -> None:
    async with scripted_federation("a") as fed:
        stream = fed.gw.infer_stream(req("unread"))
        first = asyncio.ensure_future(stream.__anext__())
        worker, request = await fed.next_request()
        await worker.partial(request, 0, toks(0, 3))
        await worker.final(request, 3)
        assert await first == tok(0)
        # The caller sits on two tokens and the Final: the node is free already.
        await until(lambda: inflight(fed, "a") == 0, "the answered attempt's slot")
        assert [t async for t in stream] == toks(1, 3)
        assert fed["a"].cancels == []


@pytest.mark.chaos
async def test_a_client_that_never_reads_its_streams_does_not_take_the_node() -> None:
    # The attack, scaled: one tenant opens many streams and never reads
    # past the first token. Each stream ends at its buffer bound (the gateway
    # cancels it on the worker at once), its slot comes back, and the other
    # tenant's requests are all served; the worker keeps its heartbeats.
    hogs, others = 500, 40
    config = GatewayConfig(request_timeout=60.0, retry_delay=0.01, stream_buffer=256)
    spec = {"node": "w", "options": {"tokens": 65_536}, "max_concurrency": 64}
    async with federation(spec, config=config) as (gw, workers):
        cpu0, t0 = cpu(), time.perf_counter()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        opened: list[Any] = []

        async def hog(i: int) -> None:
            stream = gw.infer_stream(req(f"hog-{i}", tenant_id="hog"))
            opened.append(stream)
            await stream.__anext__()
            await asyncio.Event().wait()  # never reads again

        async def other(i: int) -> bool:
            r = await gw.infer(req(f"other-{i}", tenant_id="other"))
            return r.tokens == 65_536

        hog_tasks = [asyncio.create_task(hog(i)) for i in range(hogs)]
        try:
            await asyncio.sleep(0)
            served = await asyncio.wait_for(
                asyncio.gather(*(other(i) for i in range(others))), 120.0
            )
            assert all(served)
            assert gw.stats().workers == 1  # never declared dead
            assert workers["w"].stats.errors.get(wire.ERR_CANCELLED, 0) > 0
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
            print(
                f"\n{hogs} unread streams: {others}/{others} other requests served in "
                f"{time.perf_counter() - t0:.1f}s; process CPU {cpu() - cpu0:.1f}s "
                f"(worker included), peak RSS +{grown / 1024:.0f} MiB"
            )
        finally:
            for task in hog_tasks:
                task.cancel()
            await asyncio.gather(*hog_tasks, return_exceptions=True)
            for stream in opened:
                await stream.aclose()
