"""fedgate — a federation gateway for ML inference.

Import everything a user needs from here (policies also from
:mod:`fedgate.federation.policy`). Nothing here compiles a Numba kernel, and the modules
that import Numba (the router and the gateway) load on first use of one of
their names, so ``import fedgate`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedgate._core import IMPLEMENTATION
from fedgate.clock import ManualClock
from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    PrivacyViolationError,
    QoSViolationError,
    QuotaExceededError,
    RegistrationError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.breaker import (
    Admission,
    BreakerConfig,
    BreakerStatus,
    BreakerTransition,
    CircuitBreaker,
    CircuitState,
)
from fedgate.federation.catalog import CatalogEvent, Deployment, ModelCatalog, ModelMetadata
from fedgate.federation.health import (
    HealthChecker,
    HealthConfig,
    HealthState,
    HealthStatus,
    HealthTransition,
)
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    Policy,
    PrivacyPolicy,
)
from fedgate.federation.statemachine import (
    InvalidTransitionError,
    RequestLifecycle,
    RequestState,
    TraceStep,
)
from fedgate.types import (
    Capability,
    InferenceRequest,
    InferenceResponse,
    ModelId,
    NodeId,
    PrivacyLevel,
    QoSRequirements,
    Region,
    RegionId,
)

if TYPE_CHECKING:
    from fedgate.gateway import Gateway, GatewayBuilder, GatewayConfig, GatewayStats
    from fedgate.routing.router import Candidate, RouteDecision, Router

from fedgate._version import __version__

# Names whose modules import Numba: loaded on first access (PEP 562).
_LAZY = {
    "Gateway": "gateway",
    "GatewayBuilder": "gateway",
    "GatewayConfig": "gateway",
    "GatewayStats": "gateway",
    "Candidate": "routing.router",
    "RouteDecision": "routing.router",
    "Router": "routing.router",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedgate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "IMPLEMENTATION",
    "Admission",
    "AllNodesUnhealthyError",
    "BackpressureError",
    "BreakerConfig",
    "BreakerStatus",
    "BreakerTransition",
    "Candidate",
    "Capability",
    "CatalogEvent",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "CompositePolicy",
    "CostPolicy",
    "DeadlineExceededError",
    "Deployment",
    "FederationError",
    "Gateway",
    "GatewayBuilder",
    "GatewayConfig",
    "GatewayStats",
    "GpuPolicy",
    "HealthChecker",
    "HealthConfig",
    "HealthPolicy",
    "HealthState",
    "HealthStatus",
    "HealthTransition",
    "InferenceRequest",
    "InferenceResponse",
    "InvalidTransitionError",
    "LatencyPolicy",
    "LocalityPolicy",
    "ManualClock",
    "ModelCatalog",
    "ModelId",
    "ModelMetadata",
    "NoCapacityError",
    "NodeId",
    "NodeUnreachableError",
    "Policy",
    "PrivacyLevel",
    "PrivacyPolicy",
    "PrivacyViolationError",
    "QoSRequirements",
    "QoSViolationError",
    "QuotaExceededError",
    "Region",
    "RegionId",
    "RegistrationError",
    "RequestLifecycle",
    "RequestState",
    "RouteDecision",
    "Router",
    "StreamInterruptedError",
    "TraceStep",
    "WorkerError",
    "__version__",
]
