"""asv: one routing decision over 1 000 and 10 000 nodes, beside its baselines.

``time_route`` is the whole decision through :meth:`fedgate.routing.router.Router.route`
(refresh check, request vector, Numba kernel, load-balanced pick, the
decision object). The baselines score and pick over the very same node
arrays: ``time_numpy_baseline`` with vectorised NumPy, ``time_python_baseline``
with a plain Python loop. Both baselines are checked to choose the same node
as the router.

The fleet builders and baselines live here so that ``benchmarks/test_router.py``
(pytest-benchmark) measures exactly the same things.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedgate._core import codes
from fedgate.clock import ManualClock
from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.routing.router import Router
from fedgate.types import (
    Capability,
    InferenceRequest,
    ModelId,
    NodeId,
    PrivacyLevel,
    QoSRequirements,
    Region,
    RegionId,
)

REGIONS = [f"region-{i}" for i in range(8)]


@dataclass
class Fleet:
    clock: ManualClock
    router: Router
    request: InferenceRequest


def build_fleet(nodes: int, strategy: str = "least-latency", seed: int = 0) -> Fleet:
    """A realistic fleet: mixed health, a few open breakers, some CPU nodes, region costs."""
    rng = np.random.default_rng(seed)
    clock = ManualClock(1000.0)
    catalog = ModelCatalog()
    health = HealthChecker(clock=clock)
    breaker = CircuitBreaker(clock=clock)
    regions = [
        Region(
            RegionId(name), PrivacyLevel(int(rng.integers(0, 4))), cost=float(rng.uniform(0.1, 2))
        )
        for name in REGIONS
    ]
    router = Router(catalog, health, breaker, regions=regions, strategy=strategy, seed=seed)
    model = ModelId("llama-3-70b")
    latencies = rng.lognormal(np.log(0.08), 0.5, (nodes, 8))
    for i in range(nodes):
        node = NodeId(f"node-{i:05d}")
        region = RegionId(REGIONS[i % len(REGIONS)])
        caps = [Capability.GENERATE] if i % 10 else [Capability.GENERATE, Capability.EMBED]
        catalog.register_sync(model, node, region, caps)
        router.update_node(node, gpu=bool(i % 3), max_concurrency=64)
        if i % 7 == 0:
            continue  # never reported: UNKNOWN, no latency
        for x in latencies[i]:
            health.report_success(node, float(x))
        if i % 23 == 0:
            for _ in range(3):
                health.report_failure(node)
        if i % 31 == 0:
            for _ in range(5):
                breaker.record_failure(node)
    router.refresh(force=True)
    request = InferenceRequest(
        Capability.GENERATE,
        b"hello",
        QoSRequirements(privacy=PrivacyLevel.INTERNAL, max_latency=0.5),
        request_id="bench",
        tenant_id="acme-corp",
    )
    return Fleet(clock, router, request)


def kernel_inputs(fleet: Fleet) -> dict[str, Any]:
    """The node columns, mask, weights and request vector the router's kernel sees."""
    router = fleet.router
    a = router.arrays
    n = a.n
    req = fleet.request
    router.refresh(force=True)
    mask = router._masks[(req.model, req.capability)][:n]
    params = router._fill_params(req).copy()
    return {
        "n": n,
        "health": a.health[:n].copy(),
        "p50": a.p50[:n].copy(),
        "p99": a.p99[:n].copy(),
        "region": a.region[:n].copy(),
        "cost": a.cost[:n].copy(),
        "gpu": a.gpu[:n].copy(),
        "inflight": a.inflight[:n].copy(),
        "breaker": a.breaker[:n].copy(),
        "alive": a.alive[:n].copy(),
        "mask": mask.copy(),
        "clearance": a.clearance.copy(),
        "weights": router._weights.copy(),
        "params": params,
    }


def numpy_route(x: dict[str, Any]) -> int:
    """The same scoring and choice as the kernel, vectorised with NumPy."""
    p, w = x["params"], x["weights"]
    privacy, max_latency, origin = (
        p[codes.P_PRIVACY],
        p[codes.P_MAX_LATENCY],
        p[codes.P_ORIGIN],
    )
    tolerance = p[codes.P_COST_TOLERANCE] / 100.0
    health, p50, p99, region = x["health"], x["p50"], x["p99"], x["region"]
    clearance = x["clearance"][region]
    eligible = (
        (x["mask"] != 0)
        & (x["alive"] != 0)
        & (clearance >= privacy)
        & (x["breaker"] != codes.BREAKER_OPEN)
        & ~(p50 > max_latency)
    )
    if not eligible.any():
        return -1
    s_health = np.select(
        [
            health == codes.HEALTH_HEALTHY,
            health == codes.HEALTH_DEGRADED,
            health == codes.HEALTH_UNHEALTHY,
        ],
        [1.0, 0.5, 0.0],
        0.3,
    )
    lat = 0.5 * p50 + 0.5 * p99
    s_latency = np.where(
        np.isnan(lat), 0.5, 1.0 / (1.0 + np.maximum(lat, 0.0) / p[codes.P_LATENCY_SCALE])
    )
    s_privacy = (clearance >= privacy).astype(np.float64)
    s_locality = np.full(x["n"], 0.5) if origin < 0 else (region == origin).astype(np.float64)
    cost = x["cost"]
    cheap = np.where(
        np.isnan(cost), 0.5, 1.0 / (1.0 + np.maximum(cost, 0.0) / p[codes.P_COST_SCALE])
    )
    s_cost = (1.0 - tolerance) * cheap + tolerance * s_latency
    s_gpu = (x["gpu"] != 0).astype(np.float64) if p[codes.P_PREFER_GPU] else np.full(x["n"], 0.5)
    total = (
        w[0] * s_health
        + w[1] * s_latency
        + w[2] * s_privacy
        + w[3] * s_locality
        + w[4] * s_cost
        + w[5] * s_gpu
    ) / w.sum()
    effective = np.where(eligible, total / (1.0 + p[codes.P_LOAD_PENALTY] * x["inflight"]), -1.0)
    return int(np.argmax(effective))


def python_rows(x: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Per-node tuples for the plain-Python baseline (built once, outside the timing)."""
    cols = ("mask", "alive", "region", "health", "breaker", "p50", "p99", "cost", "gpu", "inflight")
    return list(zip(*(x[c].tolist() for c in cols), strict=True))


def python_route(x: dict[str, Any], rows: list[tuple[Any, ...]]) -> int:
    """The same scoring and choice as the kernel, one node at a time in Python."""
    p, w = x["params"].tolist(), x["weights"].tolist()
    privacy, max_latency, origin, prefer_gpu, tolerance, lat_scale, cost_scale, penalty = p
    tolerance /= 100.0
    wsum = sum(w)
    clearance = x["clearance"].tolist()
    best, best_eff = -1, -1.0
    for i, (mask, alive, region, health, brk, p50, p99, cost, gpu, inflight) in enumerate(rows):
        if not mask or not alive:
            continue
        clear = clearance[region]
        if clear < privacy or health == 3 or brk == 1 or p50 > max_latency:
            continue
        s_health = 1.0 if health == 1 else 0.5 if health == 2 else 0.3
        lat = 0.5 * p50 + 0.5 * p99
        s_lat = 0.5 if math.isnan(lat) else 1.0 / (1.0 + max(lat, 0.0) / lat_scale)
        s_loc = 0.5 if origin < 0 else (1.0 if region == origin else 0.0)
        cheap = 0.5 if math.isnan(cost) else 1.0 / (1.0 + max(cost, 0.0) / cost_scale)
        s_cost = (1.0 - tolerance) * cheap + tolerance * s_lat
        s_gpu = (1.0 if gpu else 0.0) if prefer_gpu else 0.5
        total = (
            w[0] * s_health + w[1] * s_lat + w[2] + w[3] * s_loc + w[4] * s_cost + w[5] * s_gpu
        ) / wsum
        eff = total / (1.0 + penalty * max(inflight, 0))
        if eff > best_eff:
            best, best_eff = i, eff
    return best


class RouteDecision:
    """One routing decision for 1 000 and 10 000 nodes, with its baselines."""

    params: ClassVar[list[int]] = [1000, 10000]
    param_names: ClassVar[list[str]] = ["nodes"]
    timeout = 300

    def setup(self, nodes: int) -> None:
        self.fleet = build_fleet(nodes)
        self.inputs = kernel_inputs(self.fleet)
        self.rows = python_rows(self.inputs)
        slot = self.fleet.router.route(self.fleet.request).slot  # compiles the kernel
        if numpy_route(self.inputs) != slot or python_route(self.inputs, self.rows) != slot:
            raise RuntimeError("the baselines disagree with the router")

    def time_route(self, nodes: int) -> None:
        self.fleet.router.route(self.fleet.request)

    def time_numpy_baseline(self, nodes: int) -> None:
        numpy_route(self.inputs)

    def time_python_baseline(self, nodes: int) -> None:
        python_route(self.inputs, self.rows)

    def peakmem_route(self, nodes: int) -> None:
        self.fleet.router.route(self.fleet.request)


class RouteStrategies:
    """route() under each load-balancing strategy, 10 000 nodes."""

    params: ClassVar[list[str]] = [
        "least-latency",
        "round-robin",
        "least-connections",
        "weighted-random",
        "consistent-hash",
    ]
    param_names: ClassVar[list[str]] = ["strategy"]
    timeout = 300

    def setup(self, strategy: str) -> None:
        self.fleet = build_fleet(10000, strategy=strategy)
        self.fleet.router.route(self.fleet.request)

    def time_route(self, strategy: str) -> None:
        self.fleet.router.route(self.fleet.request)
