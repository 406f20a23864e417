"""The gateway: routes each request to a worker process over ZeroMQ and streams the answer back.

One request, top to bottom (everything below runs on the gateway's event loop)::

    Gateway.infer() / infer_stream()                           gateway.py
      └─ Call.run_unary() / Call.run()     the attempt loop; one Call per request   call.py
           ├─ router.route(request, exclude)  sovereignty first, then health, breaker, policy
           ├─ breaker.admit(node)             an OPEN breaker rejects locally
           ├─ Attempts.open()                 REQUEST frame → the worker's DEALER    attempt.py
           │     Pump.send_to()               first of the iteration now, the rest batched
           ├─ Attempt.next()                  frames arrive through Gateway._on_message
           │     Partial → tokens (fenced by attempt, deduplicated by token index)
           │     Final   → success: health, breaker, counters                       stats.py
           │     Error / node lost / deadline → failure (a LostCause says whether the
           │                                    node caused it and whether to retry)
           └─ retry on another node (backoff, budget, deadline), resuming a stream
              from the next token index, or an explicit error

The socket side is a ROUTER with ``ROUTER_MANDATORY``, driven by one
:class:`~fedgate.transport.pump.Pump` (``fedgate/transport/pump.py``: the read
loop on the loop's file-descriptor callback, wake-ups and send batching, the
same pump the worker uses). Frames are decoded here and pushed into the
waiting attempt's inbox, or dropped and counted when they belong to an
abandoned attempt; registration, heartbeats and lost workers are the
:class:`~fedgate.gateway.registry.Registry`'s. A monitor task declares workers
dead when their application heartbeats stop and fails their in-flight
attempts, which is what turns a crashed process into a failover.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, cast

import zmq

from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.federation.statemachine import TransitionHook
from fedgate.gateway.attempt import OVERFLOW, Attempts
from fedgate.gateway.call import Call, CallEnv
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.registry import Registry
from fedgate.gateway.stats import GatewayCounters, GatewayStats, RouteRecord
from fedgate.gateway.tenants import TenantBook
from fedgate.gateway.trust import Trust, TrustState
from fedgate.routing.router import Router
from fedgate.transport import curve
from fedgate.transport import protocol as wire
from fedgate.transport.bind import bind_router
from fedgate.transport.pump import Pump
from fedgate.types import InferenceRequest, InferenceResponse

__all__ = ["Gateway"]

log = logging.getLogger("fedgate.gateway")

# Messages read per pass: a flood of frames must not starve the callers' tasks.
_READ_BATCH = 4096
# How long after a dropped connection the monitor keeps checking the busy workers.
_DROP_WATCH = 0.5


class Gateway:
    """Routes inference requests to worker processes; use ``async with gateway``.

    Build one with :class:`~fedgate.gateway.builder.GatewayBuilder`. Workers
    connect to the bound endpoints (``fedgate worker --gateway …``) and
    register themselves.
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
        trust: Trust | None = None,
        tenants: TenantBook | None = None,
    ) -> None:
        self.config = config
        # Tenants: credentials → tenant, quotas, the fair queue (gateway/tenants.py).
        self.tenants = tenants if tenants is not None else TenantBook(
            max_queued=config.max_queued
        )
        # Keys are read now: a missing file is a construction error, not a start failure.
        self.trust = trust
        self._trust = trust.load() if trust is not None else None
        self._auth: Any = None
        self.audit: Any = None  # the AuditLog under [trust] audit_log
        self.catalog = catalog
        self.health = health
        self.breaker = breaker
        self.router = router
        self.gateway_id = gateway_id or f"gw-{os.getpid()}-{secrets.token_hex(3)}"
        self._binds = list(binds)
        self._endpoints: list[str] = []
        self._ctx: zmq.Context[Any] | None = None
        self._pump: Pump | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: asyncio.Task[None] | None = None
        # The ROUTER's socket monitor (dropped connections) and until when to re-check.
        self._drops: zmq.Socket[Any] | None = None
        self._drops_fd = -1
        self._suspect_until = 0.0
        self._drop_check: asyncio.TimerHandle | None = None
        self._breaker_trips_at_start = breaker.trips
        self._counters = counters = GatewayCounters()
        self._registry = registry = Registry(
            catalog, health, router, counters, self.gateway_id, config.dead_grace, self._trust
        )
        self._attempts = attempts = Attempts(
            config, router, registry, counters, self.tenants.fair
        )
        # Read per frame: one attribute each, not a chain.
        self._by_rid = attempts.by_rid
        self._max_frame_bytes = config.max_frame_bytes
        self._stream_buffer = config.stream_buffer
        self._stream_buffer_bytes = config.stream_buffer_bytes
        self.recent_routes: collections.deque[RouteRecord] = collections.deque(
            maxlen=config.recent_routes
        )
        self._env = CallEnv(
            config, router, health, breaker, registry, attempts, counters, self.recent_routes,
            self.tenants,
        )
        if trust is not None and trust.audit_log is not None:
            from fedgate.gateway.audit import AuditLog

            assert self._trust is not None
            self._env.audit = self.audit = AuditLog(trust.audit_log, self._trust.keys)

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoints(self) -> list[str]:
        """The endpoints actually bound (a ``:*`` port resolved)."""
        return list(self._endpoints)

    @property
    def running(self) -> bool:
        return self._pump is not None

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the ROUTER, start reading it, start the heartbeat monitor, warm the kernels."""
        if self._pump is not None:
            raise RuntimeError("gateway already started")
        if self.router.kernels == "jit":
            from fedgate.routing._jit import warm_up

            # Compiling the scoring kernels takes seconds (or a disk-cache load):
            # off the loop, before the first request would pay for it. Kernels
            # compiled ahead of time need none of it, nor Numba at all.
            await asyncio.to_thread(warm_up)
        loop = self._loop = asyncio.get_running_loop()
        ctx: zmq.Context[Any] = zmq.Context()
        hwm = self.config.send_hwm
        options: dict[Any, Any] = {
            zmq.ROUTER_MANDATORY: 1,
            zmq.LINGER: 0,
            zmq.SNDHWM: hwm,
            zmq.RCVHWM: hwm,
            zmq.MAXMSGSIZE: wire.socket_max_bytes(self.config.max_frame_bytes),
        }
        trust = self._trust
        if trust is not None:
            # The ZAP handler must be up before the socket binds: a connection
            # handshaking before it would be refused for want of one.
            self._auth = curve.start_authenticator(
                ctx, trust.keys, curve.WORKER_DOMAIN, self._refused_handshake
            )
            options.update(curve.server_options(trust.pair, curve.WORKER_DOMAIN))
        try:
            sock, self._endpoints = bind_router(
                ctx, self._binds, what="gateway", options=options
            )
        except BaseException:
            self._stop_auth()
            raise
        self._ctx = ctx
        pump = self._pump = Pump(
            loop,
            sock,
            self._on_message,
            self._malformed,
            routed=True,
            batch=_READ_BATCH,
            defer_lone=True,
            hold_per_iteration=True,
            on_unsent=self._attempts.unsent,
        )
        self._env.loop = self._attempts.loop = loop
        self._attempts.pump = self._registry.pump = pump
        pump.start()
        # A worker's dropped TCP connection is its death seen at once (its heartbeats
        # take interval × liveness): the socket monitor reports it.
        drops = self._drops = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        drops.setsockopt(zmq.LINGER, 0)
        self._drops_fd = cast(int, drops.getsockopt(zmq.FD))
        loop.add_reader(self._drops_fd, self._on_drops)
        self._on_drops()  # the descriptor is edge-triggered: take what is already there
        self._monitor = asyncio.create_task(self._monitor_loop(), name="fedgate-monitor")
        pump.on_readable()
        log.info("gateway %s listening on %s", self.gateway_id, ", ".join(self._endpoints))

    async def stop(self) -> None:
        """Fail in-flight attempts, stop reading, close the socket."""
        pump = self._pump
        if pump is None:
            return
        self._attempts.stop()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await asyncio.sleep(0)  # let callers observe their failed attempts
        self._attempts.clear()
        drops = self._drops
        if drops is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._drops_fd)
            with contextlib.suppress(zmq.ZMQError):
                pump.sock.disable_monitor()
            drops.close(0)
            self._drops = None
        if self._drop_check is not None:
            self._drop_check.cancel()
            self._drop_check = None
        pump.close(0)
        self._pump = self._attempts.pump = self._registry.pump = None
        self._stop_auth()
        if self.audit is not None:
            self.audit.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._endpoints.clear()

    @property
    def trust_state(self) -> TrustState | None:
        """The loaded ``[trust]`` keys and grants (None without trust): the ingress and
        telemetry read their client and operator keys here."""
        return self._trust

    def refused_handshake(self, endpoint: str) -> None:
        """Count a handshake refused on ``endpoint`` ("ingress", "telemetry") in :meth:`stats`."""
        self._counters.refused_handshakes_by[endpoint] += 1

    def _refused_handshake(self, key: bytes) -> None:
        counters = self._counters
        counters.refused_handshakes += 1
        counters.refused_handshakes_by["workers"] += 1
        # A refused client reconnects every few hundred ms: log its first few only.
        if counters.refused_handshakes <= 10:
            log.warning("refused a worker connection: key %s is not trusted",
                        curve.fingerprint(key))

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    # ---------------------------------------------------------------- public API
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one request to completion on the best node, failing over as needed.

        Raises
        ------
        ValueError, TypeError
            Malformed request (no worker is contacted).
        QuotaExceededError
            The request's tenant is over a quota (no worker is contacted).
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
        a resumable node is left, or continues on a continuable one from the
        text already delivered, or ends with :class:`StreamInterruptedError`
        naming the cause.
        Stopping the iteration cancels the work on the worker.
        """
        call = self._call(request, stream=True)
        async with contextlib.aclosing(self._chunks(call)) as chunks:
            async for chunk in chunks:
                for token in chunk:
                    yield token

    def stream_call(
        self, request: InferenceRequest
    ) -> tuple[Call, AsyncGenerator[list[bytes], None]]:
        """:meth:`infer_stream` for a front door: the call, and its chunks of tokens.

        The call says, once a chunk arrived, which node and region serve it and
        after how many attempts (``call.node``, ``call.region``, ``call.attempts``),
        which a front door reports before its body (the HTTP front's headers).
        Close the iterator (``aclose``) to cancel the work on the worker.
        """
        call = self._call(request, stream=True)
        return call, self._chunks(call)

    async def _chunks(self, call: Call) -> AsyncGenerator[list[bytes], None]:
        counters = self._counters
        counters.active_streams += 1
        # aclosing: a caller that stops reading closes this generator at its own
        # yield, not inside call.run(); without it the attempt (and the CANCEL to
        # the worker) would wait for the garbage collector to finalize run().
        try:
            async with contextlib.aclosing(call.run()) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            counters.active_streams -= 1

    def stats(self) -> GatewayStats:
        """Counters and latency percentiles since the gateway was built."""
        return self._counters.snapshot(
            breaker_trips=self.breaker.trips - self._breaker_trips_at_start,
            workers=self._registry.alive(),
            tenants=self.tenants.stats(),
        )

    def on_transition(self, hook: TransitionHook) -> Callable[[], None]:
        """Call ``hook(request_id, old, new, at)`` on every request lifecycle transition.

        Returns a function that removes the hook.
        """
        hooks = self._env.hooks
        hooks.append(hook)
        return lambda: hooks.remove(hook)

    def workers(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """The connected workers, for dashboards (``start``/``stop``: a slice of them)."""
        return self._registry.describe(start, stop)

    async def wait_for_workers(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` workers are registered and alive (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        registry = self._registry
        while registry.alive() < count:
            if time.monotonic() > deadline:
                alive = sorted(w.node for w in registry.by_node.values() if w.alive)
                raise TimeoutError(f"expected {count} live workers within {timeout}s, got {alive}")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ request path
    def _call(self, request: InferenceRequest, *, stream: bool) -> Call:
        if self._pump is None:
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
        deadline = request.deadline
        if deadline is not None and deadline > self.config.max_deadline:
            # Refused, not clamped (GatewayConfig.max_deadline says why).
            raise ValueError(
                f"deadline: expected at most {self.config.max_deadline:g} seconds "
                f"(the gateway's max_deadline), got {deadline!r}"
            )
        size = len(request.input)
        if size > self.config.max_input_bytes:
            raise ValueError(
                f"input: expected at most {self.config.max_input_bytes} bytes, got {size}"
            )
        return Call(self._env, request, stream)

    # ------------------------------------------------------------- socket side
    def _on_message(self, identity: bytes, payload: bytes) -> None:
        """One message from a worker (the pump's reader calls this)."""
        try:
            msg = wire.decode_worker_message(payload, self._max_frame_bytes)
        except wire.ProtocolError as exc:
            self._malformed(identity, str(exc))
            return
        kind = type(msg)
        if kind is wire.Partial or kind is wire.Final or kind is wire.Error:
            frame = cast("wire.Partial | wire.Final | wire.Error", msg)
            att = self._by_rid.get(frame.rid)
            # Fencing: a frame must come from the worker the attempt was sent to, for
            # the current attempt number; anything else belongs to an abandoned attempt.
            if att is None or att.number != frame.attempt or att.worker.identity != identity:
                counters = self._counters
                counters.stale += 1
                if kind is wire.Error and cast(wire.Error, frame).code == wire.ERR_CANCELLED:
                    counters.cancel_acks += 1
                return
            if kind is wire.Partial:
                if att.cancelled:  # overflowed: dropped until the worker answers the CANCEL
                    self._counters.stale += 1
                    return
                count = len(cast(wire.Partial, frame).tokens)
                # Bytes as received: the frame's size, not a sum over its tokens.
                size = len(payload)
                if (
                    att.buffered + count > self._stream_buffer
                    # One frame always fits an empty buffer (max_frame_bytes bounds it).
                    or (
                        att.buffered_bytes and att.buffered_bytes + size > self._stream_buffer_bytes
                    )
                ):
                    att.push(OVERFLOW)
                    # The worker stops now, not when the reader comes back, and
                    # its later tokens are dropped (an unread stream must not
                    # grow its inbox); its answer to the CANCEL frees the slot.
                    self._attempts.cancel(att)
                    self._counters.stale += 1
                    return
                att.buffered += count
                att.buffered_bytes += size
                att.sizes.append(size)
            att.push(frame)
            if kind is not wire.Partial:
                # The node is done with this attempt: its slot comes back now,
                # not when the caller gets round to reading the answer (a
                # stream nobody reads must not hold the node).
                self._attempts.close(att, cancel=False)
        elif kind is wire.Heartbeat:
            self._registry.heartbeat(identity, cast(wire.Heartbeat, msg))
        elif kind is wire.Ready:
            key = None
            pump = self._pump
            if self._trust is not None and pump is not None and pump.last_frame is not None:
                key = curve.user_id(pump.last_frame)
            self._registry.register(identity, cast(wire.Ready, msg), key)
        elif kind is wire.Disconnect:
            self._registry.disconnect(identity, cast(wire.Disconnect, msg))

    def _malformed(self, identity: bytes, why: str) -> None:
        counters = self._counters
        counters.malformed += 1
        if counters.malformed <= 10 or counters.malformed % 1000 == 0:
            log.warning(
                "dropped a malformed frame from %r (%d so far): %s",
                identity,
                counters.malformed,
                why,
            )

    def _on_drops(self) -> None:
        """The socket monitor reports dropped connections: check the busy workers now.

        The socket may still route to a dropped peer for a moment (libzmq
        retires the pipe after the event), so the monitor loop checks again
        for a short while after each drop.
        """
        drops = self._drops
        if drops is None:
            return
        dropped = 0
        try:
            # The descriptor is edge-triggered: read until nothing is left.
            while cast(int, drops.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                with contextlib.suppress(zmq.Again):
                    drops.recv_multipart(zmq.NOBLOCK)
                    dropped += 1
        except zmq.ZMQError as exc:  # closed under us (stopping): nothing to watch
            log.debug("socket monitor: %s", exc)
            return
        if dropped:
            self._counters.dropped_connections += dropped
            loop = self._loop
            assert loop is not None
            self._suspect_until = loop.time() + _DROP_WATCH
            self._check_drops()

    def _check_drops(self) -> None:
        """Check the busy workers' connections once every frame already received is read.

        A worker that sent its last frames and exited (a drained SIGTERM, a
        stream's Final) must have them delivered before its attempts are
        failed: a frame still unread when the check ran would turn a finished
        request into a failover. While frames are waiting, look again shortly
        (the pump reads them first), until the watch window ends.
        """
        pump, loop = self._pump, self._loop
        if pump is None or loop is None or loop.time() >= self._suspect_until:
            return
        try:
            pending = cast(int, pump.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN
        except zmq.ZMQError:
            return
        if pending:
            if self._drop_check is None:
                self._drop_check = loop.call_later(0.002, self._retry_drop_check)
        else:
            self._registry.check_connections()
        # Asking the socket (and the probes sent) may have consumed its
        # descriptor's notification: the pump looks again.
        pump.look()

    def _retry_drop_check(self) -> None:
        self._drop_check = None
        self._check_drops()

    async def _monitor_loop(self) -> None:
        interval = self.config.monitor_interval
        stall = self.config.stall_timeout
        loop = self._loop
        assert loop is not None
        while True:
            await asyncio.sleep(interval)
            try:
                self._check_drops()
                self._registry.expire()
                self.breaker.poll()
                if stall is not None:
                    self._attempts.check_stalls(loop.time(), stall)
            except Exception:  # the monitor must outlive any bug it trips over
                log.exception("gateway monitor error")
