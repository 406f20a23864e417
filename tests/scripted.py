"""Scripted fake workers on a real gateway socket, for tests of the gateway's guarantees.

A :class:`ScriptedWorker` is a real DEALER speaking the real wire protocol
(:mod:`fedgate.transport.protocol`) to a real :class:`Gateway`, but it sends only what
the test tells it to, when the test tells it to: a stale frame while a retry
streams, an overlapping or gapped PARTIAL, silence instead of a heartbeat.

The gateway's health checker runs on a :class:`ManualClock`: no node is
declared dead unless the test moves the clock, so nothing depends on how fast
a loaded machine runs the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from fedgate import Capability, InferenceRequest, NodeId
from fedgate.clock import ManualClock
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.tenants import Tenants
from fedgate.transport import protocol as wire

T = TypeVar("T")
WAIT = 5.0  # real seconds: how long any expected event may take on a loaded machine


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait for a state the gateway reaches asynchronously (a frame read, a counter moved)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.001)


class ScriptedWorker:
    """One fake worker process: registers, then sends exactly the frames it is told to."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        node: str,
        inbox: asyncio.Queue[tuple[ScriptedWorker, wire.GatewayMessage]],
        *,
        cost: float = 1.0,
        resumable: bool = True,
        continuable: bool = False,
        heartbeat_interval: float = 1.0,
        concurrency: int = 16,
    ) -> None:
        self.node = node
        self.concurrency = concurrency
        self.worker_id = wire.new_worker_id()
        self.cost = cost
        self.resumable = resumable
        self.continuable = continuable
        self.heartbeat_interval = heartbeat_interval
        self.received: list[wire.GatewayMessage] = []  # every frame the gateway sent, in order
        self._inbox = inbox
        self._seq = 0
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._reader = asyncio.create_task(self._read(), name=f"scripted-{node}")

    def __repr__(self) -> str:
        return f"<ScriptedWorker {self.node}>"

    @property
    def requests(self) -> list[wire.Request]:
        return [m for m in self.received if isinstance(m, wire.Request)]

    @property
    def cancels(self) -> list[wire.Cancel]:
        return [m for m in self.received if isinstance(m, wire.Cancel)]

    async def _read(self) -> None:
        while True:
            msg = wire.decode_gateway_message(await self._sock.recv())
            self.received.append(msg)
            if isinstance(msg, (wire.Request, wire.Cancel)):
                self._inbox.put_nowait((self, msg))

    async def send(self, msg: wire.WorkerMessage) -> None:
        await self._sock.send(wire.encode(msg))

    async def register(self) -> None:
        await self.send(
            wire.Ready(
                self.node,
                "us-west-2",
                self.worker_id,
                ["m"],
                ["generate"],
                False,
                self.cost,
                self.concurrency,
                self.resumable,
                self.heartbeat_interval,
                0,
                "scripted",
                self.continuable,
            )
        )
        await until(lambda: any(isinstance(m, wire.Welcome) for m in self.received), "Welcome")

    async def heartbeat(self) -> None:
        self._seq += 1
        await self.send(wire.Heartbeat(self.node, self.worker_id, self._seq, 0, 0))

    async def partial(self, req: wire.Request, index: int, tokens: list[bytes]) -> None:
        await self.send(wire.Partial(req.rid, req.attempt, index, tokens))

    async def final(self, req: wire.Request, tokens: int, output: bytes = b"") -> None:
        await self.send(wire.Final(req.rid, req.attempt, tokens, output))

    async def error(
        self, req: wire.Request, code: str = wire.ERR_BACKEND, message: str = ""
    ) -> None:
        await self.send(wire.error(req.rid, req.attempt, code, message or f"scripted {code}"))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
            await self._reader
        self._sock.close(0)


class Federation:
    """A gateway, its manual health clock, and scripted workers by node."""

    def __init__(self, gateway: Gateway, clock: ManualClock, interval: float) -> None:
        self.gw = gateway
        self.clock = clock
        self.interval = interval
        self.workers: dict[str, ScriptedWorker] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.inbox: asyncio.Queue[tuple[ScriptedWorker, wire.GatewayMessage]] = asyncio.Queue()

    def __getitem__(self, node: str) -> ScriptedWorker:
        return self.workers[node]

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a caller concurrently with the script; cancelled at exit if still running."""
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    def stream(self, request: InferenceRequest) -> tuple[list[bytes], asyncio.Task[None]]:
        """Start reading ``infer_stream(request)``: the tokens so far, and the reading task."""
        got: list[bytes] = []

        async def read() -> None:
            async for token in self.gw.infer_stream(request):
                got.append(token)

        return got, self.spawn(read())

    async def next_request(self, timeout: float = WAIT) -> tuple[ScriptedWorker, wire.Request]:
        """The next REQUEST any worker receives (CANCELs are skipped: see ``received``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                worker, msg = await asyncio.wait_for(self.inbox.get(), deadline - time.monotonic())
            except asyncio.TimeoutError:  # not the builtin before Python 3.11
                raise AssertionError(f"no REQUEST reached any worker within {timeout}s") from None
            if isinstance(msg, wire.Request):
                return worker, msg

    async def beat(self, *nodes: str) -> None:
        """Heartbeats from ``nodes``, returning once the gateway has recorded them at clock()."""
        for node in nodes:
            await self.workers[node].heartbeat()
        now = self.clock()
        health = self.gw.health
        ids = [NodeId(node) for node in nodes]
        await until(
            lambda: all(health.status(n).last_heartbeat == now for n in ids),
            f"the heartbeats of {nodes} at {now}",
        )

    def alive(self, node: str) -> bool:
        """Whether the gateway still treats ``node`` as a live worker (its monitor's verdict)."""
        return any(w["alive"] for w in self.gw.workers() if w["node"] == node)


def req(request_id: str, **kw: Any) -> InferenceRequest:
    return InferenceRequest(Capability.GENERATE, b"x", request_id=request_id, **kw)


def tok(i: int) -> bytes:
    """Token ``i`` of the one generation every scripted worker produces."""
    return b"t%d" % i


def toks(start: int, stop: int) -> list[bytes]:
    return [tok(i) for i in range(start, stop)]


@contextlib.asynccontextmanager
async def scripted_federation(
    *nodes: str | tuple[str, dict[str, Any]],
    config: GatewayConfig | None = None,
    heartbeat_interval: float = 1.0,
    heartbeat_liveness: int = 4,
    breaker: BreakerConfig | None = None,
    tenants: Tenants | None = None,
) -> AsyncIterator[Federation]:
    """A gateway on a random loopback port with one registered scripted worker per node.

    A node is a name or ``(name, ScriptedWorker keyword arguments)``. The
    gateway's monitor looks often (real time), but health lives on the
    federation's manual clock. With ``breaker`` the circuit breaker does too
    (the default breaker, on real time, otherwise). The ``tenants``' quota
    buckets run on the manual clock too.
    """
    clock = ManualClock()
    health = HealthChecker(
        HealthConfig(heartbeat_interval=heartbeat_interval, heartbeat_liveness=heartbeat_liveness),
        clock,
    )
    builder = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(
            config or GatewayConfig(request_timeout=30.0, retry_delay=0.0, monitor_interval=0.005)
        )
        .health(health)
        .tenants(tenants, clock=clock)
    )
    if breaker is not None:
        builder = builder.circuit_breaker(CircuitBreaker(breaker, clock))
    gateway = builder.build()
    ctx = zmq.asyncio.Context()
    try:
        async with gateway:
            fed = Federation(gateway, clock, heartbeat_interval)
            try:
                for spec in nodes:
                    name, kw = (spec, {}) if isinstance(spec, str) else spec
                    worker = ScriptedWorker(
                        ctx,
                        gateway.endpoints[0],
                        name,
                        fed.inbox,
                        heartbeat_interval=heartbeat_interval,
                        **kw,
                    )
                    fed.workers[name] = worker
                    await worker.register()
                await gateway.wait_for_workers(len(nodes), timeout=WAIT)
                yield fed
            finally:
                for task in fed.tasks:
                    task.cancel()
                await asyncio.gather(*fed.tasks, return_exceptions=True)
                for worker in fed.workers.values():
                    await worker.close()
    finally:
        ctx.term()
