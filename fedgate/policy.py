"""The routing policies, importable as ``fedgate.policy`` (SPEC §1).

They live in :mod:`fedgate.federation.policy`; this module only re-exports them.
"""

from __future__ import annotations

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

__all__ = [
    "CompositePolicy",
    "CostPolicy",
    "GpuPolicy",
    "HealthPolicy",
    "LatencyPolicy",
    "LocalityPolicy",
    "Policy",
    "PrivacyPolicy",
]
