"""Every error fedgate raises, in one hierarchy.

::

    FederationError
    ├── NoCapacityError          no registered node offers the capability / model
    ├── AllNodesUnhealthyError   nodes exist, but none is healthy or admitted by its breaker
    ├── QoSViolationError        nodes exist, but none meets the request's QoS (latency)
    ├── PrivacyViolationError    no region is cleared for the request's privacy level
    ├── NodeUnreachableError     the chosen node could not be reached or died mid-request
    ├── DeadlineExceededError    the request's deadline passed
    ├── CircuitOpenError         the node's breaker rejected the call locally
    ├── BackpressureError        a bounded queue is full: try again later
    ├── QuotaExceededError       the tenant is over one of its quotas: retry after a while
    ├── StreamInterruptedError   a stream that had started could not be continued
    ├── WorkerError              the worker reported a typed error for the request
    └── RegistrationError        a worker's claim (node id, key) was refused

Malformed arguments raise ``ValueError`` or ``TypeError`` as well (never a
``FederationError``): they are the caller's bug, not the federation's state.
Messages name what was expected and what was got.
"""

from __future__ import annotations

__all__ = [
    "NO_NODE_NOW",
    "AllNodesUnhealthyError",
    "BackpressureError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "FederationError",
    "NoCapacityError",
    "NodeUnreachableError",
    "PrivacyViolationError",
    "QoSViolationError",
    "QuotaExceededError",
    "RegistrationError",
    "StreamInterruptedError",
    "WorkerError",
]


class FederationError(Exception):
    """Base of every error about the federation's state (not the caller's arguments)."""


class NoCapacityError(FederationError):
    """No registered node offers the requested capability or model."""


class AllNodesUnhealthyError(FederationError):
    """Nodes offer the capability, but every one is unhealthy or has an open breaker."""


class QoSViolationError(FederationError):
    """Nodes are healthy, but none meets the request's QoS requirements."""


class PrivacyViolationError(FederationError):
    """No node sits in a region cleared for the request's privacy level (fails closed)."""


class NodeUnreachableError(FederationError):
    """The node could not be reached, or its worker died during the request."""


class DeadlineExceededError(FederationError):
    """The request's deadline passed before a response completed."""


class CircuitOpenError(FederationError):
    """The node's circuit breaker rejected the call without contacting the node."""


class BackpressureError(FederationError):
    """A bounded queue is full; nothing was dropped silently."""


class QuotaExceededError(FederationError):
    """The tenant is over a quota (``[tenants.NAME]``); no worker was contacted.

    ``tenant`` is the tenant, ``limit`` the quota it is over
    (``"concurrency"``, ``"requests"`` or ``"tokens"``) and ``retry_after``
    the seconds until that quota lets a request of this tenant in: exact for
    the request and token buckets, an estimate from the tenant's recent
    request times for concurrency (a slot frees when a request ends).
    """

    def __init__(self, message: str, *, tenant: str, limit: str, retry_after: float) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.limit = limit
        self.retry_after = retry_after


class StreamInterruptedError(FederationError):
    """A stream that already delivered tokens could not be continued on another node."""


class WorkerError(FederationError):
    """The worker answered with a typed error.

    ``code`` is the wire error code; ``node_caused`` says whether it counts
    against the node's health and breaker. ``retry_after`` (seconds, 0 when
    unknown) is how long the node asked not to be asked again, e.g. an
    upstream's ``Retry-After``. ``upstream_code`` is the error code the node's
    upstream gave (an OpenAI error body's ``code``), ``""`` when none.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "internal",
        node_caused: bool = True,
        retry_after: float = 0.0,
        upstream_code: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.node_caused = node_caused
        self.retry_after = retry_after
        self.upstream_code = upstream_code


class RegistrationError(FederationError):
    """A worker's registration was refused (e.g. a live node id claimed twice)."""


NO_NODE_NOW: tuple[type[FederationError], ...] = (
    NoCapacityError,
    AllNodesUnhealthyError,
    QoSViolationError,
    CircuitOpenError,
    BackpressureError,
    NodeUnreachableError,
)
"""The errors that say no node can take the request now (not that the request is bad):
the HTTP front's 503, and an alias's cue to try its next model."""
