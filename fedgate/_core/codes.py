"""Every code the routing kernels share with the rest of fedgate: one leaf module.

Health, breaker and reason codes, the weight and request-vector indices, and
the default clearance. The kernels (``_kernels.py``, and the ahead-of-time
module compiled from it), the node arrays, the router, health, the breaker and
the dashboard all read these names; nothing here imports anything, so the
kernels can be compiled from this module and ``_kernels.py`` alone.
"""

from __future__ import annotations

__all__ = [
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "DEFAULT_CLEARANCE",
    "HEALTH_DEGRADED",
    "HEALTH_HEALTHY",
    "HEALTH_UNHEALTHY",
    "HEALTH_UNKNOWN",
    "N_PARAMS",
    "N_WEIGHTS",
    "PARAM_NAMES",
    "P_COST_SCALE",
    "P_COST_TOLERANCE",
    "P_LATENCY_SCALE",
    "P_LOAD_PENALTY",
    "P_MAX_LATENCY",
    "P_ORIGIN",
    "P_PREFER_GPU",
    "P_PRIVACY",
    "REASON_BREAKER_OPEN",
    "REASON_LATENCY",
    "REASON_NAMES",
    "REASON_NOT_SERVING",
    "REASON_OK",
    "REASON_PRIVACY",
    "REASON_UNHEALTHY",
    "WEIGHT_NAMES",
    "W_COST",
    "W_GPU",
    "W_HEALTH",
    "W_LATENCY",
    "W_LOCALITY",
    "W_PRIVACY",
]

HEALTH_UNKNOWN = 0
HEALTH_HEALTHY = 1
HEALTH_DEGRADED = 2
HEALTH_UNHEALTHY = 3

BREAKER_CLOSED = 0
BREAKER_OPEN = 1
BREAKER_HALF_OPEN = 2

REASON_OK = 0
REASON_NOT_SERVING = 1
REASON_PRIVACY = 2
# Not returned by the kernels since health stopped excluding (SPEC §2 Health,
# "Who excludes a node"); its number stays so the codes after it keep theirs.
REASON_UNHEALTHY = 3
REASON_BREAKER_OPEN = 4
REASON_LATENCY = 5
REASON_NAMES = ("ok", "not_serving", "privacy", "unhealthy", "breaker_open", "latency")

W_HEALTH = 0
W_LATENCY = 1
W_PRIVACY = 2
W_LOCALITY = 3
W_COST = 4
W_GPU = 5
N_WEIGHTS = 6
WEIGHT_NAMES = ("health", "latency", "privacy", "locality", "cost", "gpu")

P_PRIVACY = 0
P_MAX_LATENCY = 1
P_ORIGIN = 2
P_PREFER_GPU = 3
P_COST_TOLERANCE = 4
P_LATENCY_SCALE = 5
P_COST_SCALE = 6
P_LOAD_PENALTY = 7
N_PARAMS = 8
PARAM_NAMES = (
    "privacy",
    "max_latency",
    "origin",
    "prefer_gpu",
    "cost_tolerance",
    "latency_scale",
    "cost_scale",
    "load_penalty",
)

# A region without an explicit clearance counts as INTERNAL (SPEC §2 Privacy):
# CONFIDENTIAL and RESTRICTED data only go where a gateway cleared them.
DEFAULT_CLEARANCE = 1
MAX_LEVEL = 3
