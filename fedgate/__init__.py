"""fedgate — a federation gateway for ML inference.

Import everything a user needs from here (policies also from
:mod:`fedgate.policy`). Nothing here compiles a Numba kernel, and the modules
that import Numba (the router and the gateway) load on first use of one of
their names, so ``import fedgate`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._accel import IMPLEMENTATION
from .breaker import (
    Admission,
    BreakerConfig,
    BreakerStatus,
    BreakerTransition,
    CircuitBreaker,
    CircuitState,
)
from .catalog import CatalogEvent, Deployment, ModelCatalog, ModelMetadata
from .clock import ManualClock
from .errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    PrivacyViolationError,
    QoSViolationError,
    RegistrationError,
    StreamInterruptedError,
    WorkerError,
)
from .health import HealthChecker, HealthConfig, HealthState, HealthStatus, HealthTransition
from .policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    Policy,
    PrivacyPolicy,
)
from .statemachine import InvalidTransitionError, RequestLifecycle, RequestState, TraceStep
from .types import (
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
    from .gateway import Gateway, GatewayBuilder, GatewayConfig, GatewayStats
    from .router import Candidate, RouteDecision, Router

__version__ = "0.1.0"

# Names whose modules import Numba: loaded on first access (PEP 562).
_LAZY = {
    "Gateway": "gateway",
    "GatewayBuilder": "gateway",
    "GatewayConfig": "gateway",
    "GatewayStats": "gateway",
    "Candidate": "router",
    "RouteDecision": "router",
    "Router": "router",
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
