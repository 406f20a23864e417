"""fedgate — a federation gateway for ML inference.

Import everything a user needs from here (policies also from
:mod:`fedgate.policy`). Nothing here compiles a Numba kernel: kernels compile
on first use or when a gateway warms them at start.
"""

from __future__ import annotations

from ._accel import IMPLEMENTATION
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

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "AllNodesUnhealthyError",
    "BackpressureError",
    "Capability",
    "CircuitOpenError",
    "DeadlineExceededError",
    "FederationError",
    "InferenceRequest",
    "InferenceResponse",
    "ManualClock",
    "ModelId",
    "NoCapacityError",
    "NodeId",
    "NodeUnreachableError",
    "PrivacyLevel",
    "PrivacyViolationError",
    "QoSRequirements",
    "QoSViolationError",
    "Region",
    "RegionId",
    "RegistrationError",
    "StreamInterruptedError",
    "WorkerError",
    "__version__",
]
