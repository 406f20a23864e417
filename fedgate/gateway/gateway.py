"""The gateway: routes each request to a worker process over ZeroMQ and streams the answer back.

One request, top to bottom (everything below runs on the gateway's event loop)::

    infer() / infer_stream()
      └─ _Call.run_unary() / _Call.run()     the attempt loop; one _Call per request
           ├─ router.route(request, exclude)  sovereignty first, then health, breaker, policy
           ├─ breaker.admit(node)             an OPEN breaker rejects locally
           ├─ _Gateway._open()                REQUEST frame → the worker's DEALER
           ├─ _Attempt.next()                 frames arrive through _on_readable
           │     Partial → tokens (fenced by attempt, deduplicated by token index)
           │     Final   → success: health, breaker, stats
           │     Error / node lost / deadline → failure: health & breaker only if
           │                                    the node caused it
           └─ retry on another node (backoff, budget, deadline), resuming a stream
              from the next token index, or an explicit error

The socket side is a ROUTER with ``ROUTER_MANDATORY`` read from the loop's
file-descriptor callback (no task per message): frames are decoded and pushed
into the waiting attempt's inbox, or dropped and counted when they belong to
an abandoned attempt. A monitor task declares workers dead when their
application heartbeats stop and fails their in-flight attempts, which is what
turns a crashed process into a failover.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, NamedTuple, cast

import zmq

from fedgate._core import LatencyTable
from fedgate.errors import (
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.breaker import Admission, CircuitBreaker
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.federation.policy import CompositePolicy
from fedgate.federation.statemachine import RequestLifecycle, RequestState, TransitionHook
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.stats import GatewayStats, NodeStats, RouteRecord
from fedgate.routing.router import Router
from fedgate.transport import protocol as wire
from fedgate.types import InferenceRequest, InferenceResponse, ModelId, NodeId, Region, RegionId

__all__ = ["Gateway", "GatewayBuilder", "GatewayConfig", "GatewayStats", "NodeStats", "RouteRecord"]

log = logging.getLogger("fedgate.gateway")

_S = RequestState
# Plain ints: zmq's flag enums cost an enum construction per operation.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class _Worker:
    """What the gateway knows of one connected worker process."""

    __slots__ = (
        "alive",
        "attempts",
        "cost",
        "gpu",
        "identity",
        "max_concurrency",
        "models",
        "node",
        "pid",
        "region",
        "resumable",
        "worker_id",
    )

    def __init__(self, identity: bytes, msg: wire.Ready) -> None:
        self.identity = identity
        self.node = NodeId(msg.node)
        self.region = RegionId(msg.region)
        self.worker_id = msg.worker_id
        self.models = [ModelId(m) for m in msg.models]
        self.gpu = msg.gpu
        self.cost = msg.cost
        self.max_concurrency = msg.max_concurrency
        self.resumable = msg.resumable
        self.pid = msg.pid
        self.alive = True
        self.attempts: dict[str, _Attempt] = {}


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Lost:
    """A local event pushed into an attempt's inbox: the node failed it without a frame."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


_TIMEOUT = _Lost("deadline", "deadline")
_BACKPRESSURE = "backpressure"  # a full send queue: not the node's fault
_OVERFLOW = _Lost("overflow", "overflow")


class _Attempt:
    """One attempt of one request on one worker: its inbox of frames and its waiter."""

    __slots__ = (
        "buffered",
        "closed",
        "deadline",
        "inbox",
        "last_frame",
        "number",
        "rid",
        "sent",
        "started",
        "timer",
        "waiter",
        "worker",
    )

    def __init__(self, rid: str, number: int, worker: _Worker) -> None:
        self.rid = rid
        self.number = number
        self.worker = worker
        self.inbox: collections.deque[Any] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffered = 0
        self.last_frame = 0.0
        self.started = 0.0
        self.deadline = 0.0
        self.closed = False
        self.sent = False  # its REQUEST has left (see Gateway._queue)

    def push(self, event: Any) -> None:
        self.inbox.append(event)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, loop: asyncio.AbstractEventLoop) -> Any:
        inbox = self.inbox
        while not inbox:
            self.waiter = waiter = loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        event = inbox.popleft()
        if type(event) is wire.Partial:
            self.buffered -= len(event.tokens)
        return event


class GatewayBuilder:
    """Assemble a :class:`Gateway` step by step (the case study's builder).

    Every part has a default: a fresh catalog, health checker and breaker,
    the enterprise policy, and ``tcp://127.0.0.1:5555``.
    """

    def __init__(self) -> None:
        self._config = GatewayConfig()
        self._catalog: ModelCatalog | None = None
        self._health: HealthChecker | None = None
        self._breaker: CircuitBreaker | None = None
        self._policy: CompositePolicy | None = None
        self._regions: list[Region] = []
        self._binds: list[str] = []
        self._strategy = "least-latency"
        self._origin: RegionId | None = None
        self._gateway_id: str | None = None

    def config(self, config: GatewayConfig) -> GatewayBuilder:
        if not isinstance(config, GatewayConfig):
            raise TypeError(f"config: expected GatewayConfig, got {config!r}")
        self._config = config
        return self

    def catalog(self, catalog: ModelCatalog) -> GatewayBuilder:
        self._catalog = catalog
        return self

    def health(self, health: HealthChecker) -> GatewayBuilder:
        self._health = health
        return self

    def circuit_breaker(self, breaker: CircuitBreaker) -> GatewayBuilder:
        self._breaker = breaker
        return self

    def policy(self, policy: CompositePolicy) -> GatewayBuilder:
        self._policy = policy
        return self

    def regions(self, *regions: Region) -> GatewayBuilder:
        for region in regions:
            if not isinstance(region, Region):
                raise TypeError(f"regions: expected Region objects, got {region!r}")
        self._regions.extend(regions)
        return self

    def bind(self, endpoint: str) -> GatewayBuilder:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"bind: expected a ZeroMQ endpoint like 'tcp://127.0.0.1:5555', got {endpoint!r}"
            )
        self._binds.append(endpoint)
        return self

    def strategy(self, name: str) -> GatewayBuilder:
        self._strategy = name
        return self

    def origin(self, region: RegionId | None) -> GatewayBuilder:
        self._origin = region
        return self

    def gateway_id(self, name: str) -> GatewayBuilder:
        self._gateway_id = name
        return self

    def build(self) -> Gateway:
        catalog = self._catalog if self._catalog is not None else ModelCatalog()
        health = self._health if self._health is not None else HealthChecker()
        breaker = self._breaker if self._breaker is not None else CircuitBreaker()
        policy = self._policy if self._policy is not None else CompositePolicy.enterprise_default()
        router = Router(
            catalog,
            health,
            breaker,
            policy=policy,
            regions=self._regions,
            strategy=self._strategy,
            origin=self._origin,
        )
        return Gateway(
            self._config,
            catalog,
            health,
            breaker,
            router,
            self._binds or ["tcp://127.0.0.1:5555"],
            gateway_id=self._gateway_id,
        )


class Gateway:
    """Routes inference requests to worker processes; use ``async with gateway``.

    Build one with :class:`GatewayBuilder`. Workers connect to the bound
    endpoints (``fedgate worker --gateway …``) and register themselves.
    """

    def __init__(
        self,
        config: GatewayConfig,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        router: Router,
        binds: Iterable[str],
        *,
        gateway_id: str | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.router = router
        self.gateway_id = gateway_id or f"gw-{os.getpid()}-{secrets.token_hex(3)}"
        self._binds = list(binds)
        self._endpoints: list[str] = []
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._drain_pending = False
        self._check_pending = False
        self._by_identity: dict[bytes, _Worker] = {}
        self._by_node: dict[NodeId, _Worker] = {}
        self._attempts: dict[str, _Attempt] = {}
        # REQUEST frames queued in this loop iteration (see _queue).
        self._out: list[tuple[bytes, bytes, _Attempt]] = []
        self._batch_open = False
        # The last read pass found a lone message (see _on_readable).
        self._lone = False
        # Open attempts in deadline order (see _watch_deadline).
        self._deadlines: collections.deque[_Attempt] = collections.deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf  # when _deadline_timer fires
        self._rng = random.Random()
        self._breaker_trips_at_start = breaker.trips
        # Counters (read by stats()).
        self._total = self._ok = self._failed = self._cancelled = 0
        self._tokens = 0
        self._latency_sum = 0.0
        self._active = self._active_streams = self._retrying = 0
        self._retries = self._failovers = self._resumes = self._local_rejections = 0
        self._stale = self._malformed = self._cancels_sent = self._cancel_acks = 0
        self._refused = 0
        self._hooks: list[TransitionHook] = []
        self._capacity_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._per_node: dict[str, NodeStats] = collections.defaultdict(NodeStats)
        self._per_tenant: dict[str, NodeStats] = collections.defaultdict(NodeStats)
        # Slot 0: end-to-end latency, slot 1: time to first token (compiled ring).
        self._lat = LatencyTable(window=4096, nodes=2)
        self.recent_routes: collections.deque[RouteRecord] = collections.deque(
            maxlen=config.recent_routes
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoints(self) -> list[str]:
        """The endpoints actually bound (a ``:*`` port resolved)."""
        return list(self._endpoints)

    @property
    def running(self) -> bool:
        return self._sock is not None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the ROUTER, start reading it, start the heartbeat monitor, warm the kernels."""
        if self._sock is not None:
            raise RuntimeError("gateway already started")
        if self.router.kernels == "jit":
            from fedgate.routing._jit import warm_up

            # Compiling the scoring kernels takes seconds (or a disk-cache load):
            # off the loop, before the first request would pay for it. Kernels
            # compiled ahead of time need none of it, nor Numba at all.
            await asyncio.to_thread(warm_up)
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.send_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, -1)
        try:
            for endpoint in self._binds:
                sock.bind(endpoint)
                self._endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as exc:
            sock.close(0)
            self._ctx.term()
            self._ctx = None
            raise OSError(f"cannot bind {endpoint!r}: {exc}") from exc
        self._sock = sock
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)  # type: ignore[arg-type]
        self._monitor = asyncio.create_task(self._monitor_loop(), name="fedgate-monitor")
        self._on_readable()
        log.info("gateway %s listening on %s", self.gateway_id, ", ".join(self._endpoints))

    async def stop(self) -> None:
        """Fail in-flight attempts, stop reading, close the socket."""
        sock = self._sock
        if sock is None:
            return
        for att in list(self._attempts.values()):
            att.push(_Lost("shutdown", "gateway stopping"))
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await asyncio.sleep(0)  # let callers observe their failed attempts
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        self._out.clear()
        assert self._loop is not None
        self._loop.remove_reader(sock.getsockopt(zmq.FD))  # type: ignore[arg-type]
        sock.close(0)
        self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._endpoints.clear()

    # ---------------------------------------------------------------- public API
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request to completion on the best node, failing over as needed.

        Raises
        ------
        ValueError, TypeError
            Malformed request (no worker is contacted).
        FederationError
            No eligible node (typed: privacy, capacity, health, QoS), the
            deadline passed, or every attempt failed.
        """
        call = self._call(request, stream=False)
        await call.run_unary()
        return call.response()

    async def infer_stream(self, request: InferenceRequest) -> AsyncIterator[bytes]:
        """Yield the tokens of one request as the worker produces them.

        Before the first token a failed node is replaced transparently; after
        it, the stream resumes on another node from the next token index when
        a resumable node is left, or ends with :class:`StreamInterruptedError`.
        Stopping the iteration cancels the work on the worker.
        """
        call = self._call(request, stream=True)
        self._active_streams += 1
        # aclosing: a caller that stops reading closes this generator at its own
        # yield, not inside call.run(); without it the attempt (and the CANCEL to
        # the worker) would wait for the garbage collector to finalize run().
        try:
            async with contextlib.aclosing(call.run()) as chunks:
                async for chunk in chunks:
                    for token in chunk:
                        yield token
        finally:
            self._active_streams -= 1

    def stats(self) -> GatewayStats:
        """Counters and latency percentiles since the gateway was built."""
        p50, p95, p99 = self._lat.percentiles(0)
        t50, t95, t99 = self._lat.percentiles(1)
        done = self._ok
        return GatewayStats(
            total_requests=self._total,
            successful_requests=self._ok,
            failed_requests=self._failed,
            cancelled_requests=self._cancelled,
            total_tokens=self._tokens,
            avg_latency=self._latency_sum / done if done else 0.0,
            latency_p50=p50,
            latency_p95=p95,
            latency_p99=p99,
            ttft_p50=t50,
            ttft_p95=t95,
            ttft_p99=t99,
            active_requests=self._active,
            active_streams=self._active_streams,
            retries=self._retries,
            failovers=self._failovers,
            resumes=self._resumes,
            breaker_trips=self.breaker.trips - self._breaker_trips_at_start,
            local_rejections=self._local_rejections,
            stale_frames=self._stale,
            malformed_frames=self._malformed,
            cancels_sent=self._cancels_sent,
            cancels_acknowledged=self._cancel_acks,
            workers=sum(1 for w in self._by_node.values() if w.alive),
            per_node={
                k: NodeStats(v.requests, v.successes, v.failures, v.tokens)
                for k, v in self._per_node.items()
            },
            per_tenant={
                k: NodeStats(v.requests, v.successes, v.failures, v.tokens)
                for k, v in self._per_tenant.items()
            },
        )

    def on_transition(self, hook: TransitionHook) -> Callable[[], None]:
        """Call ``hook(request_id, old, new, at)`` on every request lifecycle transition.

        Returns a function that removes the hook.
        """
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)

    def _fire(self, request_id: str, old: RequestState, new: RequestState, at: float) -> None:
        for hook in list(self._hooks):
            hook(request_id, old, new, at)

    def workers(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """The connected workers, for dashboards (``start``/``stop``: a slice of them)."""
        return [
            {
                "node": w.node,
                "region": w.region,
                "worker_id": w.worker_id,
                "pid": w.pid,
                "gpu": w.gpu,
                "cost": w.cost,
                "resumable": w.resumable,
                "alive": w.alive,
                "inflight": len(w.attempts),
                "models": list(w.models),
            }
            for w in itertools.islice(self._by_node.values(), start, stop)
        ]

    async def wait_for_workers(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` workers are registered and alive (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while sum(1 for w in self._by_node.values() if w.alive) < count:
            if time.monotonic() > deadline:
                alive = sorted(w.node for w in self._by_node.values() if w.alive)
                raise TimeoutError(f"expected {count} live workers within {timeout}s, got {alive}")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ request path
    def _call(self, request: InferenceRequest, *, stream: bool) -> _Call:
        if self._sock is None:
            raise RuntimeError(
                "gateway not started: use `async with gateway:` or `await gateway.start()`"
            )
        if not isinstance(request, InferenceRequest):
            raise TypeError(f"request: expected InferenceRequest, got {type(request).__name__}")
        # The wire's own limits, checked here so a bad request never reaches a worker.
        if len(request.request_id) > 1024:
            raise ValueError(
                f"request_id: expected at most 1024 characters, got {len(request.request_id)}"
            )
        for name in ("tenant_id", "model"):
            value = getattr(request, name)
            if value is not None and len(value) > 256:
                raise ValueError(f"{name}: expected at most 256 characters, got {len(value)}")
        size = len(request.input)
        if size > self.config.max_input_bytes:
            raise ValueError(
                f"input: expected at most {self.config.max_input_bytes} bytes, got {size}"
            )
        return _Call(self, request, stream)

    def _open(self, call: _Call, worker: _Worker, number: int) -> _Attempt:
        """Register one attempt (fenced by attempt number) and queue its REQUEST."""
        if self._sock is None:
            raise NodeUnreachableError("gateway is not running")
        att = _Attempt(call.rid, number, worker)
        loop = self._loop
        assert loop is not None
        now = loop.time()
        remaining = call.deadline - now
        req = call.request
        frame = wire.encode(
            wire.Request(
                call.rid,
                number,
                req.request_id,
                req.tenant_id,
                str(req.capability),
                req.model,
                req.input,
                remaining,
                call.next_index,
                call.stream,
            )
        )
        att.started = att.last_frame = now
        att.deadline = call.deadline
        # The REQUEST first, the bookkeeping after: no reply is read before this
        # task yields, and the bookkeeping then overlaps the round trip instead
        # of delaying it.
        unsent = self._queue(worker.identity, frame, att)
        self._watch_deadline(att)
        self._attempts[call.rid] = att
        worker.attempts[call.rid] = att
        self.router.acquire(worker.node)
        self._per_node[worker.node].requests += 1
        if unsent is not None:
            self._unsent(att, unsent)
        return att

    def _close(self, att: _Attempt, *, cancel: bool) -> None:
        """Forget an attempt; later frames for it are stale. Optionally tell the worker to stop."""
        if self._attempts.get(att.rid) is att:
            del self._attempts[att.rid]
        worker = att.worker
        if worker.attempts.pop(att.rid, None) is not None:
            self.router.release(worker.node)
            self._wake_one()
        att.closed = True  # the deadline watch skips it from now on
        if att.timer is not None:
            att.timer.cancel()
            att.timer = None
        # A REQUEST still queued is simply never sent (the flush skips closed
        # attempts): there is nothing to cancel.
        if cancel and att.sent and worker.alive and self._sock is not None:
            # Now, not queued: its REQUEST has left, so order holds, and the
            # worker should stop as soon as possible.
            with contextlib.suppress(FederationError):
                self._send(worker.identity, wire.encode(wire.Cancel(att.rid, att.number)))
                self._cancels_sent += 1

    def _watch_deadline(self, att: _Attempt) -> None:
        """Fail ``att`` with a timeout at its deadline, unless it is closed first.

        Deadlines mostly arrive in order (one request_timeout for all), so the
        open attempts wait in one FIFO behind a single loop timer: no timer
        handle per request, and no heap of cancelled ones. An attempt whose
        deadline is earlier than the newest watched one gets a timer of its own.
        """
        loop = self._loop
        assert loop is not None
        watched = self._deadlines
        while watched and watched[0].closed:
            watched.popleft()
        if watched and att.deadline < watched[-1].deadline:
            att.timer = loop.call_at(att.deadline, att.push, _TIMEOUT)
            return
        if len(watched) > 64 and len(watched) > 2 * len(self._attempts):
            # Closed attempts stuck behind a long-lived one at the head: bounded
            # memory, at most twice the attempts in flight.
            watched = self._deadlines = collections.deque(a for a in watched if not a.closed)
        watched.append(att)
        # The head holds the earliest deadline; the timer may still be set for a
        # later one (its attempts closed and were pruned): bring it forward.
        head = watched[0].deadline
        timer = self._deadline_timer
        if timer is None or head < self._deadline_at:
            if timer is not None:
                timer.cancel()
            self._deadline_at = head
            self._deadline_timer = loop.call_at(head, self._expire_deadlines)

    def _expire_deadlines(self) -> None:
        loop = self._loop
        assert loop is not None
        self._deadline_timer = None
        watched = self._deadlines
        # The loop may run a timer up to its clock resolution early.
        now = loop.time() + 1e-6
        while watched:
            att = watched[0]
            if att.closed:
                watched.popleft()
            elif att.deadline <= now:
                watched.popleft()
                att.push(_TIMEOUT)
            else:
                self._deadline_at = att.deadline
                self._deadline_timer = loop.call_at(att.deadline, self._expire_deadlines)
                return

    async def _wait_for_capacity(self, deadline: float) -> bool:
        """Queue until a node slot is released (True) or the deadline / queue bound hits (False)."""
        waiters = self._capacity_waiters
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if len(waiters) >= self.config.max_queued or now >= deadline:
            return False
        fut: asyncio.Future[None] = loop.create_future()
        waiters.append(fut)
        # A released slot may suit another capability than this request's: re-check
        # on a short timer too, so a mismatched wake-up never strands a waiter.
        timer = loop.call_at(min(deadline, now + 0.05), _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
        return loop.time() < deadline

    def _wake_one(self) -> None:
        waiters = self._capacity_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _queue(self, identity: bytes, frame: bytes, att: _Attempt) -> zmq.ZMQError | None:
        """Send the REQUEST of ``att`` now, or with the others at the end of this loop iteration.

        The first request of an iteration leaves at once (a lone caller waits
        for nothing); the requests of the callers that run after it in the same
        iteration leave together at its end, so libzmq's I/O thread wakes once
        and writes them in one go instead of one wake-up and one TCP write per
        request (the worker does the same with its replies). A failed send
        reaches the attempt through its inbox, as a lost node does: returns the
        error of a send made now, for the caller to pass on once ``att`` is
        registered.
        """
        if self._batch_open:
            self._out.append((identity, frame, att))
            return None
        self._batch_open = True
        assert self._loop is not None
        self._loop.call_soon(self._flush_out)
        sock = self._sock
        assert sock is not None  # _open checked
        return self._send_request(sock, identity, frame, att)

    def _flush_out(self) -> None:
        self._batch_open = False
        out = self._out
        sock = self._sock
        if sock is None:
            out.clear()
            return  # stopped: stop() has failed every attempt
        if out:
            self._out = []
            for identity, frame, att in out:
                if att.closed:
                    continue  # ended before it left (the caller went away)
                unsent = self._send_request(sock, identity, frame, att)
                if unsent is not None:
                    self._unsent(att, unsent)
        # The sends may have consumed the socket's edge-triggered read notification.
        self._schedule_drain()

    def _send_request(
        self, sock: zmq.Socket[Any], identity: bytes, frame: bytes, att: _Attempt
    ) -> zmq.ZMQError | None:
        try:
            # Two plain sends with precomputed int flags: send_multipart builds
            # flag enums per frame. ROUTER_MANDATORY and a full pipe both fail on
            # the identity frame, before anything is queued; once it is accepted
            # the message is atomic.
            sock.send(identity, _SNDMORE_NOBLOCK)
            sock.send(frame, _NOBLOCK)
        except zmq.ZMQError as exc:
            return exc
        att.sent = True
        return None

    def _unsent(self, att: _Attempt, exc: zmq.ZMQError) -> None:
        """A REQUEST could not be handed to libzmq: fail its attempt like the gateway's own loss."""
        worker = att.worker
        if isinstance(exc, zmq.Again):
            att.push(
                _Lost(
                    _BACKPRESSURE,
                    f"send queue to worker {worker.node} is full ({self.config.send_hwm} frames)",
                )
            )
        elif exc.errno == zmq.EHOSTUNREACH:
            self._lose(worker, "not connected")  # fails this attempt too, and fails it over
        else:
            log.error("cannot send to worker %s: %s", worker.node, exc)
            att.push(_Lost("shutdown", f"cannot send to node {worker.node}: {exc}"))

    def _send(self, identity: bytes, frame: bytes) -> None:
        """Send a control frame now (registration, heartbeats): errors are the caller's."""
        sock = self._sock
        if sock is None:
            raise NodeUnreachableError("gateway is not running")
        try:
            # Two plain sends with precomputed int flags: send_multipart builds
            # flag enums per frame. ROUTER_MANDATORY and a full pipe both fail on
            # the identity frame, before anything is queued; once it is accepted
            # the message is atomic.
            sock.send(identity, _SNDMORE_NOBLOCK)
            sock.send(frame, _NOBLOCK)
        except zmq.Again:
            raise BackpressureError(
                f"send queue to worker {identity!r} is full ({self.config.send_hwm} frames)"
            ) from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise NodeUnreachableError(f"worker {identity!r} is not connected") from None
            raise
        # A send can consume the socket's edge-triggered read notification: look
        # at the socket once before the loop next sleeps (one look for all the
        # sends of this iteration, not one getsockopt per send).
        if not self._check_pending:
            self._check_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._after_sends)

    # ------------------------------------------------------------- socket side
    def _after_sends(self) -> None:
        self._check_pending = False
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        sock = self._sock
        if not self._drain_pending and sock is not None and (
            cast(int, sock.getsockopt(_EVENTS)) & _POLLIN
        ):
            self._lone = False  # more came in: read in batches again
            self._drain_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._drain_pending = False
        sock = self._sock
        if sock is None:
            return
        recv = sock.recv
        decode = wire.decode_worker_message
        dispatch = self._dispatch
        max_bytes = self.config.max_frame_bytes
        getsockopt = sock.getsockopt
        # Bounded batch: a flood of frames must not starve the callers' tasks.
        for n in range(4096):
            if n == 1:
                # A lone message is the common case at low load. Asking the socket
                # (ZMQ_EVENTS) re-arms its notification as an empty receive would,
                # at a third of the cost (no exception raised). When the last
                # pass was lone too, ask after the caller that message wakes has
                # run, not before: that look is off the request's latency path.
                if self._lone:
                    assert self._loop is not None
                    self._loop.call_soon(self._schedule_drain)
                    return
                if not cast(int, getsockopt(_EVENTS)) & _POLLIN:
                    self._lone = True
                    return
                self._lone = False
            try:
                identity = recv(_NOBLOCK)
            except zmq.Again:
                return
            # A ROUTER message is [identity, payload, ...] with at least one part
            # after the identity. The payload comes as a zmq.Frame only to read
            # its "more" flag without a getsockopt call.
            part = recv(_NOBLOCK, copy=False)
            if part.more:
                while recv(_NOBLOCK, copy=False).more:
                    pass  # read and drop the rest, so the next message starts clean
                self._malformed += 1
                continue
            try:
                msg = decode(part.bytes, max_bytes)
            except wire.ProtocolError as exc:
                self._malformed += 1
                if self._malformed <= 10 or self._malformed % 1000 == 0:
                    log.warning(
                        "dropped a malformed frame from %r (%d so far): %s",
                        identity,
                        self._malformed,
                        exc,
                    )
                continue
            dispatch(identity, msg)
        self._schedule_drain()
        if not self._drain_pending:
            self._drain_pending = True
            assert self._loop is not None
            self._loop.call_soon(self._on_readable)

    def _dispatch(self, identity: bytes, msg: wire.WorkerMessage) -> None:
        kind = type(msg)
        if kind is wire.Partial or kind is wire.Final or kind is wire.Error:
            frame = cast("wire.Partial | wire.Final | wire.Error", msg)
            att = self._attempts.get(frame.rid)
            # Fencing: a frame must come from the worker the attempt was sent to, for
            # the current attempt number; anything else belongs to an abandoned attempt.
            if att is None or att.number != frame.attempt or att.worker.identity != identity:
                self._stale += 1
                if kind is wire.Error and cast(wire.Error, frame).code == wire.ERR_CANCELLED:
                    self._cancel_acks += 1
                return
            if kind is wire.Partial:
                att.buffered += len(cast(wire.Partial, frame).tokens)
                if att.buffered > self.config.stream_buffer:
                    att.push(_OVERFLOW)
                    return
            att.push(frame)
        elif isinstance(msg, wire.Heartbeat):
            worker = self._by_identity.get(identity)
            if worker is None or worker.worker_id != msg.worker_id or not worker.alive:
                self._try_send(identity, wire.Reannounce())
                return
            self.health.heartbeat(worker.node)
        elif isinstance(msg, wire.Ready):
            self._register(identity, msg)
        elif isinstance(msg, wire.Disconnect):
            worker = self._by_identity.get(identity)
            if worker is not None and worker.worker_id == msg.worker_id:
                # Draining: no new work; its in-flight requests still finish or fail explicitly.
                self.router.set_alive(worker.node, False)
                log.info(
                    "worker %s (%s) disconnecting: %s", worker.node, worker.worker_id, msg.reason
                )

    def _try_send(self, identity: bytes, msg: wire.Message) -> None:
        with contextlib.suppress(FederationError):
            self._send(identity, wire.encode(msg))

    def _connected(self, worker: _Worker) -> bool:
        """Whether the worker's connection still exists (ROUTER_MANDATORY tells at once).

        A process restarted right after a SIGKILL announces itself before its
        predecessor's heartbeats have expired; the old connection, though, is
        already gone, and refusing the new process would keep the node down.
        """
        try:
            self._send(worker.identity, wire.encode(wire.Reannounce()))
        except NodeUnreachableError:
            return False
        except FederationError:
            return True
        return True

    def _register(self, identity: bytes, msg: wire.Ready) -> None:
        node = NodeId(msg.node)
        current = self._by_node.get(node)
        if (
            current is not None
            and current.worker_id != msg.worker_id
            and current.alive
            and self.health.is_alive(node)
            and self._connected(current)
        ):
            # R16: a second process claiming a live node id is refused, not merged.
            self._refused += 1
            log.warning(
                "refused worker %s claiming live node %s (held by %s)",
                msg.worker_id,
                node,
                current.worker_id,
            )
            self._try_send(
                identity, wire.Refuse(node, f"node id {node!r} is live with another worker")
            )
            return
        if current is not None and (
            current.worker_id != msg.worker_id or current.identity != identity
        ):
            self._lose(current, "replaced by a new worker process")
            self._by_identity.pop(current.identity, None)
        worker = _Worker(identity, msg)
        if (
            current is not None
            and current.worker_id == msg.worker_id
            and current.identity == identity
        ):
            worker.attempts = current.attempts  # a re-announce keeps its in-flight work
        self._by_identity[identity] = worker
        self._by_node[node] = worker
        stale_models = set(self.catalog.models_on(node)) - set(worker.models)
        for model in stale_models:
            self.catalog.deregister_sync(model, node)
        for model in worker.models:
            self.catalog.register_sync(model, node, worker.region, msg.capabilities)
        if current is not None and current.worker_id != msg.worker_id:
            # A new process: the old one's failures must not exile it. Reported
            # UNHEALTHY has no way back without traffic (an UNHEALTHY node gets
            # none); the breaker keeps its state and probes it on its own schedule.
            self.health.deregister_node(node)
        self.health.register_node(node, expect_heartbeats=True)
        self.health.heartbeat(node)
        self.router.update_node(
            node,
            region=worker.region,
            gpu=worker.gpu,
            cost=worker.cost,
            max_concurrency=worker.max_concurrency,
        )
        self.router.set_alive(node, True)
        self._try_send(identity, wire.Welcome(node, self.gateway_id))
        log.info(
            "worker %s registered: node %s region %s models %s",
            msg.worker_id,
            node,
            worker.region,
            worker.models,
        )

    def _lose(self, worker: _Worker, why: str) -> None:
        """A worker is gone: no new dispatch, and its in-flight attempts fail over."""
        if worker.alive:
            worker.alive = False
            self.router.set_alive(worker.node, False)
            log.warning("node %s lost: %s", worker.node, why)
        for att in list(worker.attempts.values()):
            att.push(_Lost(wire.ERR_CRASH, f"node {worker.node} lost: {why}"))

    async def _monitor_loop(self) -> None:
        interval = self.config.monitor_interval
        stall = self.config.stall_timeout
        loop = self._loop
        assert loop is not None
        while True:
            await asyncio.sleep(interval)
            try:
                self.health.expire()
                # Ask every live worker rather than use expire()'s list: whoever calls
                # expire() first gets that list (the router does, on each route), and a
                # dead node missed here would keep its in-flight attempts until deadline.
                for worker in list(self._by_node.values()):
                    if worker.alive and not self.health.is_alive(worker.node):
                        self._lose(worker, "missed heartbeats")
                self.breaker.poll()
                if stall is not None:
                    now = loop.time()
                    for att in list(self._attempts.values()):
                        if now - att.last_frame > stall:
                            att.last_frame = now
                            att.push(_Lost(wire.ERR_STALL, f"no frame for {stall:g}s"))
            except Exception:  # the monitor must outlive any bug it trips over
                log.exception("gateway monitor error")


class _Failure(NamedTuple):
    """Why an attempt ended without an answer, and what that means for the node and the request."""

    error: Exception
    node_caused: bool  # counts against the node's health and breaker
    retryable: bool  # another node may still serve the request


class _Call:
    """One request's attempt loop: routing, dispatch, failover, resume.

    :meth:`run_unary` (``infer``) and :meth:`run` (``infer_stream``, an async
    generator of token chunks) are the same loop; the steps they share are the
    methods below. The unary loop is a plain coroutine because an async
    generator costs every call a registration with the loop's shutdown set and
    an extra frame per resumption, which ``infer`` never needs.
    """

    __slots__ = (
        "attempts",
        "deadline",
        "first_token_at",
        "gw",
        "last_error",
        "lifecycle",
        "next_index",
        "node",
        "output",
        "region",
        "request",
        "retrying",
        "rid",
        "score",
        "started",
        "stream",
        "tenant",
        "tried",
    )

    def __init__(self, gw: Gateway, request: InferenceRequest, stream: bool) -> None:
        self.gw = gw
        self.request = request
        self.stream = stream
        self.rid = wire.new_rid()
        loop = gw._loop
        assert loop is not None
        self.started = loop.time()
        timeout = request.deadline if request.deadline is not None else gw.config.request_timeout
        self.deadline = self.started + timeout
        self.lifecycle = RequestLifecycle(
            request.request_id,
            clock=loop.time,
            start=_S.READY,
            trace=False,
            hook=gw._fire if gw._hooks else None,
        )
        self.next_index = 0
        self.attempts = 0
        self.tried: set[NodeId] = set()
        self.last_error: Exception | None = None
        self.first_token_at = -1.0
        self.output = b""
        self.node = NodeId("")
        self.region = RegionId("")
        self.score = 0.0
        self.retrying = False
        self.tenant: NodeStats | None = None

    def response(self) -> InferenceResponse:
        gw = self.gw
        assert gw._loop is not None
        return InferenceResponse(
            output=self.output,
            node_id=self.node,
            region_id=self.region,
            score=self.score,
            latency=gw._loop.time() - self.started,
            tokens=self.next_index,
            attempts=self.attempts,
            request_id=self.request.request_id,
        )

    # ------------------------------------------------------------- the two loops
    async def run_unary(self) -> None:
        """Run the request to its answer (``self.output``), failing over as needed."""
        loop = self.gw._loop
        assert loop is not None
        outcome = self._begin()
        try:
            self.lifecycle.to(_S.ROUTING)
            while True:
                choice = self._choose()
                while isinstance(choice, BackpressureError):
                    # Every eligible node is at its concurrency limit.
                    await self._wait_for_capacity(choice)
                    choice = self._choose()
                worker, score, admission = choice
                att = self._send_attempt(worker, score)
                failure: _Failure | None = None
                if isinstance(att, _Attempt):
                    finished = False
                    try:
                        while True:
                            step = self._step(await att.next(loop), att)
                            if step is None:
                                finished = True
                                break
                            if isinstance(step, _Failure):
                                failure = step
                                break
                    finally:
                        self._end_attempt(att, admission, finished, failure)
                    if finished:
                        outcome = self._completed(att)
                        return
                else:
                    failure = att
                assert failure is not None
                await self._after_failure(worker.node, admission, failure)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._end(outcome)

    async def run(self) -> AsyncGenerator[list[bytes], None]:
        """Run the request as a stream: yields each chunk of new tokens, in order."""
        loop = self.gw._loop
        assert loop is not None
        outcome = self._begin()
        try:
            self.lifecycle.to(_S.ROUTING)
            while True:
                choice = self._choose()
                while isinstance(choice, BackpressureError):
                    await self._wait_for_capacity(choice)
                    choice = self._choose()
                worker, score, admission = choice
                att = self._send_attempt(worker, score)
                failure: _Failure | None = None
                if isinstance(att, _Attempt):
                    finished = False
                    try:
                        while True:
                            step = self._step(await att.next(loop), att)
                            if step is None:
                                finished = True
                                break
                            if isinstance(step, _Failure):
                                failure = step
                                break
                            if step:
                                yield step
                    finally:
                        # Reached on success, failure, and when the caller stops reading.
                        self._end_attempt(att, admission, finished, failure)
                    if finished:
                        outcome = self._completed(att)
                        return
                else:
                    failure = att
                assert failure is not None
                await self._after_failure(worker.node, admission, failure)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self._end(outcome)

    # ------------------------------------------------------------ shared steps
    def _begin(self) -> str:
        gw = self.gw
        req = self.request
        gw._total += 1
        gw._active += 1
        if req.tenant_id:
            self.tenant = tenant = gw._per_tenant[req.tenant_id]
            tenant.requests += 1
        return "failed"  # the outcome until the request completes or is cancelled

    def _end(self, outcome: str) -> None:
        gw = self.gw
        tenant = self.tenant
        gw._active -= 1
        if self.retrying:
            gw._retrying -= 1
        if outcome == "ok":
            gw._ok += 1
            if tenant is not None:
                tenant.successes += 1
                tenant.tokens += self.next_index
        elif outcome == "cancelled":
            gw._cancelled += 1
        else:
            gw._failed += 1
            if tenant is not None:
                tenant.failures += 1

    def _exclude(self) -> set[NodeId]:
        if not self.stream or self.next_index == 0:
            return self.tried
        # Past the commit point only a node that can continue the generation may serve.
        return self.tried | {w.node for w in self.gw._by_node.values() if not w.resumable}

    def _choose(self) -> tuple[_Worker, float, Admission] | BackpressureError:
        """The next node to try, admitted by its breaker, or the router's
        BackpressureError when every eligible node is full (wait for capacity).

        Raises the caller's error when no node is left.
        """
        gw = self.gw
        req = self.request
        tried = self.tried
        while True:
            try:
                decision = gw.router.route(req, exclude=self._exclude())
            except BackpressureError as exc:
                return exc
            except FederationError as exc:
                self.lifecycle.to(_S.FAILED)
                raise self._final_error(exc) from exc
            node = decision.node_id
            worker = gw._by_node.get(node)
            if worker is None or not worker.alive:
                tried.add(node)
                continue
            admission = gw.breaker.admit(node)
            if admission is Admission.REJECT:
                gw._local_rejections += 1
                tried.add(node)
                if self.last_error is None:
                    self.last_error = CircuitOpenError(f"node {node}: circuit breaker open")
                continue
            self.lifecycle.to(_S.INFERRING)
            self.attempts += 1
            tried.add(node)
            return worker, decision.score, admission

    async def _wait_for_capacity(self, full: BackpressureError) -> None:
        """Wait in the bounded admission queue for a slot, within the deadline.

        Raises the caller's error (``full``) when the queue is full or the deadline passes.
        """
        if not await self.gw._wait_for_capacity(self.deadline):
            self.lifecycle.to(_S.FAILED)
            raise self._final_error(full) from full

    def _send_attempt(self, worker: _Worker, score: float) -> _Attempt | _Failure:
        """Start the attempt on ``worker`` (a failed send arrives in its inbox)."""
        gw = self.gw
        try:
            att = gw._open(self, worker, self.attempts)
        except NodeUnreachableError as exc:  # the gateway stopped under this request
            return _Failure(exc, False, False)
        self.node, self.region, self.score = worker.node, worker.region, score
        if gw.recent_routes.maxlen:  # for the dashboard; after the send, off the latency path
            req = self.request
            gw.recent_routes.append(
                RouteRecord(
                    time.time(),
                    req.request_id,
                    req.tenant_id,
                    str(req.capability),
                    worker.node,
                    worker.region,
                    score,
                    self.attempts,
                )
            )
        return att

    def _step(self, event: Any, att: _Attempt) -> list[bytes] | _Failure | None:
        """Apply one inbox event: new tokens to pass on, None when done, or the failure."""
        kind = type(event)
        if kind is wire.Final:
            if not self.stream:
                self.output = event.output
                self.next_index = event.tokens
                return None
            if event.tokens != self.next_index:
                return _Failure(
                    NodeUnreachableError(
                        f"node {self.node} ended the stream at {self.next_index} "
                        f"tokens but reported {event.tokens}"
                    ),
                    True,
                    True,
                )
            return None
        if kind is wire.Partial:
            loop = self.gw._loop
            assert loop is not None
            att.last_frame = loop.time()
            fresh = self._accept(event)
            if fresh is None:  # a gap: the node broke the stream
                return _Failure(
                    NodeUnreachableError(
                        f"node {self.node} skipped tokens (expected index "
                        f"{self.next_index}, got {event.index})"
                    ),
                    True,
                    True,
                )
            if fresh and self.first_token_at < 0:
                self.first_token_at = loop.time()
                self.lifecycle.to(_S.STREAMING)
            return fresh
        if kind is wire.Error:
            return self._worker_error(event)
        return self._local_error(event, self.node)  # crash, stall, deadline, overflow, shutdown

    def _end_attempt(
        self, att: _Attempt, admission: Admission, finished: bool, failure: _Failure | None
    ) -> None:
        gw = self.gw
        gw._close(att, cancel=not finished and att.worker.alive)
        if failure is None and not finished and admission is Admission.PROBE:
            # The caller stopped: no verdict on the node, free the probe.
            gw.breaker.release(att.worker.node)

    def _completed(self, att: _Attempt) -> str:
        self._succeeded(att.worker.node, att.started)
        self.lifecycle.to(_S.COMPLETED)
        return "ok"

    async def _after_failure(self, node: NodeId, admission: Admission, failure: _Failure) -> None:
        """Book a failed attempt, then back off for the next one or raise the caller's error."""
        gw = self.gw
        loop = gw._loop
        assert loop is not None
        lc = self.lifecycle
        error = failure.error
        self.last_error = error
        if failure.node_caused:
            gw.health.report_failure(node)
            gw.breaker.record_failure(node)
            gw._per_node[node].failures += 1
        elif admission is Admission.PROBE:
            gw.breaker.release(node)
        if not (failure.retryable and self._may_retry(self.retrying)):
            lc.to(_S.FAILED)
            raise self._final_error(error)
        lc.to(_S.RETRYING)
        if not self.retrying:
            self.retrying = True
            gw._retrying += 1
        gw._retries += 1
        if failure.node_caused:
            gw._failovers += 1
        if self.next_index:
            gw._resumes += 1
        delay = gw.config.retry_delay * (2 ** (self.attempts - 1)) * (0.5 + gw._rng.random())
        if loop.time() + delay >= self.deadline:
            lc.to(_S.FAILED)
            raise DeadlineExceededError(
                f"request {self.request.request_id!r}: deadline passed while retrying "
                f"after {self.attempts} attempt(s): {error}"
            ) from error
        if delay > 0:
            await asyncio.sleep(delay)
        lc.to(_S.ROUTING)

    def _accept(self, msg: wire.Partial) -> list[bytes] | None:
        """New tokens of a Partial, in order; [] for a duplicate, None for a gap."""
        start = msg.index
        if start > self.next_index:
            return None
        tokens = msg.tokens
        end = start + len(tokens)
        if end <= self.next_index:
            return []
        if start < self.next_index:
            tokens = tokens[self.next_index - start :]
        self.next_index = end
        return tokens

    def _succeeded(self, node: NodeId, attempt_started: float) -> None:
        gw = self.gw
        assert gw._loop is not None
        now = gw._loop.time()
        latency = now - self.started
        # The node's health sees its own attempt's latency, not the backoffs before it.
        gw.health.report_success(node, now - attempt_started)
        gw.breaker.record_success(node)
        stats = gw._per_node[node]
        stats.successes += 1
        stats.tokens += self.next_index
        gw._tokens += self.next_index
        gw._latency_sum += latency
        gw._lat.record(0, latency)
        if self.first_token_at >= 0:
            gw._lat.record(1, self.first_token_at - self.started)

    def _worker_error(self, msg: wire.Error) -> _Failure:
        """The failure a worker's Error frame reports."""
        code = msg.code
        text = f"node {self.node} failed request {self.request.request_id!r}: {code}: {msg.message}"
        if code == wire.ERR_BAD_INPUT:
            # The caller's input: never the node's fault, and no other node will like it more.
            return _Failure(WorkerError(text, code=code, node_caused=False), False, False)
        node_caused = msg.node_caused or wire.is_node_caused(code)
        if code == wire.ERR_DEADLINE:
            return _Failure(DeadlineExceededError(text), node_caused, False)
        return _Failure(WorkerError(text, code=code, node_caused=node_caused), node_caused, True)

    def _local_error(self, event: _Lost, node: NodeId) -> _Failure:
        """The failure the gateway observed itself (no frame from the node)."""
        rid = self.request.request_id
        if event is _TIMEOUT:
            # It counts against the node: it took longer than the request allowed.
            return _Failure(
                DeadlineExceededError(f"request {rid!r} exceeded its deadline on node {node}"),
                True,
                False,
            )
        if event is _OVERFLOW:
            return _Failure(
                BackpressureError(
                    f"request {rid!r}: reader too slow, more than {self.gw.config.stream_buffer} "
                    "tokens buffered"
                ),
                False,
                False,
            )
        if event.code == _BACKPRESSURE:
            return _Failure(BackpressureError(f"request {rid!r}: {event.message}"), False, True)
        if event.code == "shutdown":
            return _Failure(NodeUnreachableError(f"request {rid!r}: {event.message}"), False, False)
        return _Failure(
            NodeUnreachableError(f"request {rid!r} on node {node}: {event.message}"), True, True
        )

    def _may_retry(self, already_retrying: bool) -> bool:
        """Attempts left, time left, and room in the gateway's retry budget."""
        gw = self.gw
        if gw._sock is None or self.attempts > gw.config.max_retries:
            return False
        assert gw._loop is not None
        if gw._loop.time() >= self.deadline:
            return False
        budget = max(gw.config.retry_budget_min, int(gw.config.retry_budget_ratio * gw._active))
        others = gw._retrying - (1 if already_retrying else 0)
        return others < budget

    def _final_error(self, error: Exception) -> Exception:
        """The error a caller sees: past the commit point, an explicit stream interruption."""
        # Backpressure is the reader's own doing, not the node's: it stays typed as such.
        if (
            self.stream
            and self.next_index > 0
            and not isinstance(error, (StreamInterruptedError, BackpressureError))
        ):
            out = StreamInterruptedError(
                f"stream {self.request.request_id!r} interrupted after {self.next_index} tokens: "
                f"{self.last_error or error}"
            )
            out.__cause__ = error
            return out
        if isinstance(error, NoCapacityError) and self.last_error is not None:
            # Every node was tried: report why the last one failed, not "no capacity".
            return self.last_error
        return error
