"""What a deployment file does to a running gateway: build one, or reload one.

:mod:`fedgate.config` reads and checks the file into a :class:`FedgateConfig`;
this module applies it. :func:`build_gateway` turns a config into a
:class:`~fedgate.gateway.gateway.Gateway`; :func:`reload_gateway` applies a new
config to a running one (policy, strategy, origin, region clearances, tenants)
all or nothing, and says which settings wait for a restart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedgate.config import FedgateConfig
from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.health import HealthChecker
from fedgate.federation.policy import CompositePolicy
from fedgate.types import Region

if TYPE_CHECKING:
    from fedgate.gateway import Gateway

__all__ = ["build_gateway", "reload_gateway"]


def build_gateway(cfg: FedgateConfig) -> Gateway:
    """A :class:`~fedgate.gateway.gateway.Gateway` built from ``cfg`` (not started).

    The telemetry endpoint and Prometheus port are not the gateway's: serve
    them with ``TelemetryServer(gateway, cfg.telemetry, cfg.prometheus_port)``.
    """
    from fedgate.gateway import GatewayBuilder

    builder = (
        GatewayBuilder()
        .config(cfg.gateway)
        .health(HealthChecker(cfg.health))
        .circuit_breaker(CircuitBreaker(cfg.breaker))
        .policy(cfg.policy)
        .regions(*cfg.regions)
        .strategy(cfg.strategy)
        .origin(cfg.origin)
    )
    if cfg.gateway_id is not None:
        builder = builder.gateway_id(cfg.gateway_id)
    builder = builder.trust(cfg.trust).tenants(cfg.tenants)
    for endpoint in cfg.binds:
        builder = builder.bind(endpoint)
    return builder.build()


def reload_gateway(gateway: Gateway, current: FedgateConfig, new: FedgateConfig) -> list[str]:
    """Apply ``new`` to a running gateway built from ``current``; what changed, in words.

    Routing settings change in place: the policy, the strategy, the origin and
    region clearances (a region dropped from the file goes back to INTERNAL);
    so does ``[tenants]`` (API keys, quotas, weights).
    Settings that need a restart (binds, telemetry, ingress, Prometheus, gateway id,
    GatewayConfig, breaker and health settings) are left as they are and
    reported as such. ``new`` is already fully checked, so applying it cannot
    fail half-way.

    Returns
    -------
    list of str
        One line per change applied or left for a restart.
    """
    notes: list[str] = []
    router = gateway.router
    if new.policy != router.policy:
        router.set_policy(new.policy)
        notes.append("policy: " + _describe_policy(new.policy))
    if new.strategy != router.strategy:
        router.set_strategy(new.strategy)
        notes.append(f"strategy: {new.strategy}")
    if new.origin != current.origin:
        router.set_origin(new.origin)
        notes.append(f"origin: {new.origin or 'none'}")
    new_ids = {r.id for r in new.regions}
    for region in new.regions:
        if current.region(region.id) != region:
            router.set_region(region)
            notes.append(f"region {region.id}: clearance {region.clearance.name}")
    for region in current.regions:
        if region.id not in new_ids:
            router.set_region(Region(region.id))
            notes.append(f"region {region.id}: removed (clearance INTERNAL)")
    if new.tenants != current.tenants:  # keys, quotas, weights: at once
        notes.extend(gateway.tenants.reconfigure(new.tenants))
    for name in ("binds", "telemetry", "ingress", "prometheus_port", "gateway_id", "gateway",
                 "breaker", "health", "trust", "models"):  # fmt: skip
        if getattr(new, name) != getattr(current, name):
            notes.append(f"{name}: changed in the file; takes effect after a restart")
    return notes


def _describe_policy(policy: CompositePolicy) -> str:
    return ", ".join(f"{p.name} {p.weight:g}" for p in policy.policies) or "none"
