"""A gateway and in-process workers on loopback TCP, for the fast tests.

The workers run on the test's own event loop with real DEALER/ROUTER sockets
and real frames; ``procs.py`` is the same for real worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fedgate import RegionId
from fedgate.clock import Clock, monotonic
from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.health import HealthChecker, HealthConfig
from fedgate.federation.policy import CompositePolicy
from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig
from fedgate.gateway.tenants import Tenants
from fedgate.types import Region
from fedgate.worker.process import Worker, WorkerConfig


@contextlib.asynccontextmanager
async def federation(
    *nodes: Mapping[str, Any],
    config: GatewayConfig | None = None,
    breaker: CircuitBreaker | None = None,
    policy: CompositePolicy | None = None,
    regions: tuple[Region, ...] = (),
    origin: str | None = None,
    model: str = "m",
    options: Mapping[str, Any] | None = None,
    tenants: Tenants | None = None,
    tenant_clock: Clock | None = None,
) -> AsyncIterator[tuple[Gateway, dict[str, Worker]]]:
    """A gateway on a random loopback port and one in-process worker per node spec.

    A spec names ``node`` and optionally ``region``, ``models``,
    ``capabilities``, ``options`` (synthetic backend options, default
    ``options``), ``backend_obj`` (a ready backend) and any other
    :class:`WorkerConfig` field. ``tenants`` and ``tenant_clock`` set the
    tenants' quotas and their buckets' clock. Yields the gateway and the
    workers by node.
    """
    builder = (
        GatewayBuilder()
        .bind("tcp://127.0.0.1:*")
        .config(config or GatewayConfig(request_timeout=5.0, retry_delay=0.01))
        # Generous liveness: these workers share the test's loop (and a Textual app
        # may hold it for a while); death detection is tested with real processes.
        .health(HealthChecker(HealthConfig(heartbeat_interval=0.1, heartbeat_liveness=30)))
        .regions(*regions)
        .origin(RegionId(origin) if origin else None)
    )
    if tenants is not None or tenant_clock is not None:
        builder = builder.tenants(tenants, clock=tenant_clock or monotonic)
    if breaker is not None:
        builder = builder.circuit_breaker(breaker)
    if policy is not None:
        builder = builder.policy(policy)
    gateway = builder.build()
    workers: dict[str, Worker] = {}
    async with gateway:
        try:
            for spec in nodes:
                spec = dict(spec)
                backend = spec.pop("backend_obj", None)
                cfg = WorkerConfig(
                    [gateway.endpoints[0]],
                    spec.pop("node"),
                    spec.pop("region", "us-west-2"),
                    spec.pop("models", [model]),
                    spec.pop("capabilities", ["generate"]),
                    heartbeat_interval=0.1,
                    drain_timeout=0.5,
                    close_linger=0.0,
                    backend_options=spec.pop("options", options or {"tokens": 8}),
                    **spec,
                )
                worker = Worker(cfg, backend=backend)
                await worker.__aenter__()
                workers[cfg.node] = worker
            await gateway.wait_for_workers(len(nodes), timeout=5.0)
            yield gateway, workers
        finally:
            for worker in workers.values():
                worker.stop(drain=False)
            for worker in workers.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.__aexit__(None, None, None), 5.0)
