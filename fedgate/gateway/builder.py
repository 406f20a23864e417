"""GatewayBuilder: assemble a :class:`~fedgate.gateway.gateway.Gateway` step by step."""

from __future__ import annotations

from fedgate.clock import Clock, monotonic
from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.federation.policy import CompositePolicy
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.gateway import Gateway
from fedgate.gateway.tenants import TenantBook, Tenants
from fedgate.gateway.trust import Trust
from fedgate.routing.router import Router
from fedgate.types import Region, RegionId

__all__ = ["GatewayBuilder"]


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
        self._trust: Trust | None = None
        self._tenants: Tenants | None = None
        self._tenant_clock: Clock = monotonic
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

    def trust(self, trust: Trust | None) -> GatewayBuilder:
        """CURVE on the worker link, and the grants READYs are checked against."""
        self._trust = trust
        return self

    def tenants(self, tenants: Tenants | None, *, clock: Clock = monotonic) -> GatewayBuilder:
        """Per-tenant API keys, quotas and weights (``clock``: for the quota buckets)."""
        if tenants is not None and not isinstance(tenants, Tenants):
            raise TypeError(f"tenants: expected Tenants, got {tenants!r}")
        if not callable(clock):
            raise TypeError(f"clock: expected a callable returning seconds, got {clock!r}")
        self._tenants = tenants
        self._tenant_clock = clock
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
            trust=self._trust,
            tenants=TenantBook(
                self._tenants, clock=self._tenant_clock, max_queued=self._config.max_queued
            ),
        )
