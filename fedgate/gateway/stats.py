"""What the gateway reports: :class:`GatewayStats`, per-node counters, routing records."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from fedgate.types import NodeId, RegionId

__all__ = ["GatewayStats", "NodeStats", "RouteRecord"]


@dataclass(slots=True)
class NodeStats:
    """Per-node (or per-tenant) counters."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    tokens: int = 0


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
