"""What the gateway counts and reports.

:class:`GatewayCounters` is the one mutable object every part of the request
path counts into (the calls, the attempt book, the worker registry, the frame
reader); :meth:`GatewayCounters.snapshot` turns it into the frozen
:class:`GatewayStats` that :meth:`Gateway.stats` returns.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import msgspec

from fedgate._core import LatencyTable
from fedgate.types import NodeId, RegionId

__all__ = ["GatewayCounters", "GatewayStats", "NodeStats", "RouteRecord", "TenantStats"]


@dataclass(slots=True)
class NodeStats:
    """Per-node (or per-tenant) counters."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class TenantStats:
    """One tenant's quotas and counters (gateway/tenants.py); a telemetry ``tenants`` row.

    ``admitted`` counts requests past the quotas, ``completed``/``failed``
    those that ended so (cancelled ones are neither), ``tokens`` the output
    tokens charged, ``rejected`` the refusals per limit.
    """

    tenant: str
    weight: float
    in_flight: int
    max_concurrent: int | None
    waiting: int
    admitted: int
    completed: int
    failed: int
    tokens: int
    rejected: dict[str, int]


class RouteRecord(msgspec.Struct, frozen=True, gc=False):
    """One routing decision, kept for the dashboard (a cheap frozen struct: one per attempt)."""

    at: float
    request_id: str
    tenant_id: str | None
    capability: str
    node_id: NodeId
    region_id: RegionId
    score: float
    attempt: int


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """A snapshot of :meth:`Gateway.stats` (latencies in seconds)."""

    total_requests: int
    successful_requests: int
    failed_requests: int
    cancelled_requests: int
    total_tokens: int
    avg_latency: float
    latency_p50: float
    latency_p95: float
    latency_p99: float
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    active_requests: int
    active_streams: int
    retries: int
    failovers: int
    resumes: int
    breaker_trips: int
    local_rejections: int
    stale_frames: int
    malformed_frames: int
    cancels_sent: int
    cancels_acknowledged: int
    workers: int
    per_node: dict[str, NodeStats] = field(default_factory=dict)
    per_tenant: dict[str, NodeStats] = field(default_factory=dict)
    # Worker processes refused for claiming a node id live with another one (R16).
    refused_workers: int = 0
    # Of those, per reason (gateway/trust.py REFUSALS: no_key, region, node, live …).
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    # Worker connections whose CURVE key is not trusted (refused at the handshake).
    refused_handshakes: int = 0
    # Handshakes refused per endpoint ("workers", "ingress", "telemetry"): on the
    # ingress and telemetry, a client without CURVE as well as an untrusted key.
    refused_handshakes_by_endpoint: dict[str, int] = field(default_factory=dict)
    # Nodes retired: lost for longer than GatewayConfig.dead_grace.
    retired_nodes: int = 0
    # Per tenant, by name (quotas, fair-queue waiters, refusals per limit).
    tenants: tuple[TenantStats, ...] = ()


class GatewayCounters:
    """The gateway's running counters (plain attributes: one increment each, no call)."""

    __slots__ = (
        "active",
        "active_streams",
        "cancel_acks",
        "cancelled",
        "cancels_sent",
        "dropped_connections",
        "failed",
        "failovers",
        "latency",
        "latency_sum",
        "local_rejections",
        "malformed",
        "ok",
        "per_node",
        "per_tenant",
        "refused",
        "refused_by",
        "refused_handshakes",
        "refused_handshakes_by",
        "resumes",
        "retired",
        "retries",
        "retrying",
        "stale",
        "tokens",
        "total",
    )

    def __init__(self) -> None:
        self.total = self.ok = self.failed = self.cancelled = 0
        self.tokens = 0
        self.latency_sum = 0.0
        self.active = self.active_streams = self.retrying = 0
        self.retries = self.failovers = self.resumes = self.local_rejections = 0
        self.stale = self.malformed = self.cancels_sent = self.cancel_acks = 0
        self.refused = 0
        self.refused_by: dict[str, int] = collections.defaultdict(int)
        self.refused_handshakes = 0
        self.refused_handshakes_by: dict[str, int] = collections.defaultdict(int)
        self.retired = 0
        # Worker connections the socket reported dropped (each triggers a liveness check).
        self.dropped_connections = 0
        self.per_node: dict[str, NodeStats] = collections.defaultdict(NodeStats)
        self.per_tenant: dict[str, NodeStats] = collections.defaultdict(NodeStats)
        # Slot 0: end-to-end latency, slot 1: time to first token (compiled ring).
        self.latency = LatencyTable(window=4096, nodes=2)

    def snapshot(
        self, *, breaker_trips: int, workers: int, tenants: tuple[TenantStats, ...] = ()
    ) -> GatewayStats:
        """The counters as :class:`GatewayStats`, with what the gateway adds itself."""
        p50, p95, p99 = self.latency.percentiles(0)
        t50, t95, t99 = self.latency.percentiles(1)
        done = self.ok
        return GatewayStats(
            total_requests=self.total,
            successful_requests=self.ok,
            failed_requests=self.failed,
            cancelled_requests=self.cancelled,
            total_tokens=self.tokens,
            avg_latency=self.latency_sum / done if done else 0.0,
            latency_p50=p50,
            latency_p95=p95,
            latency_p99=p99,
            ttft_p50=t50,
            ttft_p95=t95,
            ttft_p99=t99,
            active_requests=self.active,
            active_streams=self.active_streams,
            retries=self.retries,
            failovers=self.failovers,
            resumes=self.resumes,
            breaker_trips=breaker_trips,
            local_rejections=self.local_rejections,
            stale_frames=self.stale,
            malformed_frames=self.malformed,
            cancels_sent=self.cancels_sent,
            cancels_acknowledged=self.cancel_acks,
            workers=workers,
            per_node={
                k: NodeStats(v.requests, v.successes, v.failures, v.tokens)
                for k, v in self.per_node.items()
            },
            per_tenant={
                k: NodeStats(v.requests, v.successes, v.failures, v.tokens)
                for k, v in self.per_tenant.items()
            },
            refused_workers=self.refused,
            refused_by_reason=dict(self.refused_by),
            refused_handshakes=self.refused_handshakes,
            refused_handshakes_by_endpoint=dict(self.refused_handshakes_by),
            retired_nodes=self.retired,
            tenants=tenants,
        )
