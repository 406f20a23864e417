"""Choose a node for each request: policy scoring plus load balancing.

The router's copy of the fleet — struct-of-arrays kept in step with the
catalog, the health checker, the breaker and the gateway's reports — is its
base class :class:`~fedgate.routing.fleet.Fleet` (routing/fleet.py).

A decision is then one pass of the Numba scoring kernel over the arrays
(compiled ahead of time at install, or just in time: :attr:`Router.kernels`)
and a pick by the load-balancing strategy among the eligible nodes::

    route(request) ──► _refresh() ──► mask of (model, capability) ──► scoring kernel
                                                                      │ scores, best
                       RouteDecision ◄── pick (routing/strategies.py) ◄┘
                                          none eligible ──► error (routing/explain.py)

The strategies (``least-latency``, the default, ``round-robin``,
``least-connections``, ``weighted-random``, ``consistent-hash``) are
described in :mod:`fedgate.routing.strategies`; :meth:`Router.candidates`
(:mod:`fedgate.routing.explain`) shows every node's standing for a request.

Eligibility comes before any strategy and is never widened: a node must
serve the capability (and model, when pinned), be alive (connected, and not
declared dead by health for missed heartbeats), sit in a region cleared for
``qos.privacy`` (unconfigured regions are INTERNAL), have a breaker that is
not OPEN (nor HALF_OPEN with every probe slot taken), and meet
``qos.max_latency``. A node UNHEALTHY by failure reports is eligible, scored
0 on health: failures exclude it through its breaker (SPEC §2 Health). When none is left the error
says why, in this order: no node serves it → :class:`NoCapacityError`; none
of those is in a cleared region → :class:`PrivacyViolationError`; all of the
cleared ones excluded (already tried) → :class:`NoCapacityError`; one that
fails only for being at its concurrency limit → :class:`BackpressureError`;
one that fails only the latency bound → :class:`QoSViolationError`;
otherwise :class:`AllNodesUnhealthyError`.

``route()`` does not count the request as in flight: the caller brackets each
attempt with :meth:`Router.acquire` / :meth:`Router.release`, so a decision
that is never used (a rejected probe, a cancelled request) leaves no trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import numpy as np
import numpy.typing as npt

from fedgate._core import codes
from fedgate._core.codes import (
    P_COST_SCALE,
    P_COST_TOLERANCE,
    P_LATENCY_SCALE,
    P_LOAD_PENALTY,
    P_MAX_LATENCY,
    P_ORIGIN,
    P_PREFER_GPU,
    P_PRIVACY,
)
from fedgate.clock import Clock
from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    FederationError,
    NoCapacityError,
    PrivacyViolationError,
    QoSViolationError,
)
from fedgate.federation.breaker import Admission, CircuitBreaker
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker
from fedgate.federation.policy import CompositePolicy
from fedgate.routing import arrays as _arrays
from fedgate.routing.explain import Candidate, Explain
from fedgate.routing.fleet import MaskKey
from fedgate.routing.kernels import routing_kernels
from fedgate.routing.strategies import (
    STRATEGIES,
    ConsistentHash,
    LeastConnections,
    Picker,
    RoundRobin,
    WeightedRandom,
)
from fedgate.types import (
    InferenceRequest,
    NodeId,
    QoSRequirements,
    Region,
    RegionId,
)

__all__ = ["ROUTING_ERRORS", "STRATEGIES", "Candidate", "RouteDecision", "Router"]

# An origin region no node is in: every node scores 0 on locality, as it should.
_NO_SUCH_REGION = 2**31 - 1


class RouteDecision(msgspec.Struct, frozen=True, gc=False):
    """The node chosen for one request.

    A frozen msgspec struct, built once per routed request: a frozen dataclass
    costs ten times as much to construct.

    ``score`` is its composite score in [0, 1]; ``slot`` its index in the
    router's arrays; ``probe`` is True when ``route(..., admit=True)`` got a
    half-open probe admission (report its outcome to the breaker).
    """

    node_id: NodeId
    region_id: RegionId
    score: float
    slot: int
    probe: bool = False


class Router(Explain):
    """Routes requests over the nodes of a catalog, by policy and strategy.

    Parameters
    ----------
    catalog : ModelCatalog
        Source of which node serves what (the router subscribes to it).
    health : HealthChecker
        Node health and latency.
    breaker : CircuitBreaker
        Node circuit breakers.
    policy : CompositePolicy, optional
        Scoring weights (default ``CompositePolicy.enterprise_default()``).
    regions : iterable of Region
        Region clearances (and default node costs). Any other region counts
        as INTERNAL.
    strategy : str
        One of :data:`STRATEGIES`.
    origin : RegionId, optional
        The gateway's own region, for the locality policy (a request's
        ``origin`` and a ``LocalityPolicy.origin`` take precedence).
    clock : callable, optional
        Times the latency refresh; default the health checker's clock.
    seed : int, optional
        Seed of the ``weighted-random`` draw.
    refresh_interval : float
        Minimum seconds between latency-percentile refreshes (0: on every
        decision after new samples).
    load_penalty : float
        In-flight discount of the ``least-latency`` choice (>= 0).
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        policy: CompositePolicy | None = None,
        regions: Iterable[Region] = (),
        strategy: str = "least-latency",
        origin: RegionId | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        refresh_interval: float = 0.05,
        load_penalty: float = 1.0,
    ) -> None:
        super().__init__(catalog, health, breaker, clock, refresh_interval)
        # "aot" (compiled at install: Numba is never loaded) or "jit"; see routing.kernels.
        self.kernels, self._score, self._components = routing_kernels()

        # One picker per strategy for the router's lifetime: a switch back
        # resumes the round-robin cursor, the seeded draw and the ring.
        self._round_robin = RoundRobin()
        self._ring = ConsistentHash(self._ids, self._arrays)  # the router's own list: it grows
        self._pickers: dict[str, Picker | None] = {
            "least-latency": None,  # the kernel's choice stands
            "round-robin": self._round_robin,
            "least-connections": LeastConnections(self._arrays),
            "weighted-random": WeightedRandom(seed),
            "consistent-hash": self._ring,
        }
        self._picker: Picker | None = None

        self._params = np.zeros(codes.N_PARAMS, dtype=np.float64)
        # The request QoS and origin the per-request part of _params was filled for.
        self._params_qos: QoSRequirements | None = None
        self._params_origin: RegionId | None = None
        self._strategy = ""
        self.set_strategy(strategy)
        self._load_penalty = 0.0
        self._set_load_penalty(load_penalty)
        self._origin_setting: RegionId | None = None
        for region in regions:
            self.set_region(region)
        self.set_origin(origin)
        self._policy = CompositePolicy.enterprise_default()
        self._weights = self._policy.weights()
        self._policy_origin = -1
        self.set_policy(policy if policy is not None else CompositePolicy.enterprise_default())

        self._unsubscribe = catalog.subscribe(self._on_catalog, replay=True)

    # ================================================================ config

    @property
    def policy(self) -> CompositePolicy:
        """The composite policy in force."""
        return self._policy

    @property
    def strategy(self) -> str:
        """The load-balancing strategy in force."""
        return self._strategy

    def set_policy(self, policy: CompositePolicy) -> None:
        """Replace the scoring policy, all or nothing.

        Raises
        ------
        TypeError, ValueError
            Not a composite, or one that cannot score (all weights 0); the
            policy in force is unchanged.
        """
        if not isinstance(policy, CompositePolicy):
            raise TypeError(f"policy: expected a CompositePolicy, got {policy!r}")
        weights = policy.weights()
        _arrays.check_weights(weights)
        with self._lock:
            origin = -1 if policy.origin is None else self._region_index(policy.origin)
            self._policy = policy
            self._weights = weights
            self._policy_origin = origin
            self._params_qos = None
            self._params[P_LATENCY_SCALE] = policy.latency_scale
            self._params[P_COST_SCALE] = policy.cost_scale

    def with_policy(self, policy: CompositePolicy) -> Router:
        """:meth:`set_policy`, returning the router (for chaining)."""
        self.set_policy(policy)
        return self

    def set_strategy(self, strategy: str) -> None:
        """Switch the load-balancing strategy (one of :data:`STRATEGIES`)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self._strategy = strategy
        self._picker = self._pickers[strategy]

    def _set_load_penalty(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 <= value < math.inf
        ):
            raise ValueError(f"load_penalty: expected a finite number >= 0, got {value!r}")
        self._load_penalty = float(value)
        self._params[P_LOAD_PENALTY] = float(value)

    def set_origin(self, origin: RegionId | None) -> None:
        """Set the gateway's own region (None: no locality preference)."""
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ValueError(f"origin: expected a non-empty region id or None, got {origin!r}")
        with self._lock:
            self._origin_setting = origin
            self._origin_default = -1 if origin is None else self._region_index(origin)
            self._params_qos = None

    def close(self) -> None:
        """Stop listening to the catalog."""
        self._unsubscribe()

    # ================================================================ fleet hooks

    def _key_gone(self, key: MaskKey) -> None:
        self._round_robin.forget(key)

    def _region_added(self) -> None:
        self._params_qos = None  # a request origin may map to the new region id

    # ================================================================ routing

    def _fill_params(self, request: InferenceRequest) -> npt.NDArray[np.float64]:
        qos = request.qos
        params = self._params
        # Most traffic shares one QoS object (the default) and origin: five
        # NumPy scalar writes skipped. Anything that changes what they map to
        # (policy, origin, a new region) clears the key.
        if qos is self._params_qos and request.origin == self._params_origin:
            return params
        self._params_qos = qos
        self._params_origin = request.origin
        params[P_PRIVACY] = int(qos.privacy)
        params[P_MAX_LATENCY] = math.inf if qos.max_latency is None else qos.max_latency
        if request.origin is not None:
            rid = self._region_ids.get(request.origin, _NO_SUCH_REGION)
        elif self._policy_origin >= 0:
            rid = self._policy_origin
        else:
            rid = self._origin_default
        params[P_ORIGIN] = rid
        params[P_PREFER_GPU] = 1.0 if qos.prefer_gpu else 0.0
        params[P_COST_TOLERANCE] = qos.cost_tolerance
        return params

    def route(
        self,
        request: InferenceRequest,
        exclude: Iterable[NodeId] = (),
        *,
        admit: bool = False,
    ) -> RouteDecision:
        """Choose the node for ``request``.

        Parameters
        ----------
        request : InferenceRequest
            What to route (capability, optional pinned model, QoS, keys).
        exclude : iterable of NodeId
            Nodes not to choose (those already tried for this request).
        admit : bool
            Also ask the chosen node's breaker to admit the call, choosing
            again without it while it rejects (a half-open node whose probe
            slot was just taken). The admission is counted: report the
            outcome to the breaker.

        Returns
        -------
        RouteDecision

        Raises
        ------
        NoCapacityError, PrivacyViolationError, QoSViolationError,
        AllNodesUnhealthyError, BackpressureError
            No eligible node, by the first cause that applies (module docstring).
        TypeError
            ``request`` is not an :class:`InferenceRequest`.
        """
        if not isinstance(request, InferenceRequest):
            raise TypeError(f"request: expected an InferenceRequest, got {type(request).__name__}")
        excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
        with self._lock:
            while True:
                decision = self._route(request, excluded)
                if not admit:
                    return decision
                verdict = self._breaker.admit(decision.node_id)
                if verdict is not Admission.REJECT:
                    if verdict is Admission.PROBE:
                        return RouteDecision(decision.node_id, decision.region_id,
                                             decision.score, decision.slot, True)  # fmt: skip
                    return decision
                excluded = excluded | {decision.node_id}
                self._breaker_version = -1  # its routable code just changed

    def _route(
        self, request: InferenceRequest, excluded: set[NodeId] | frozenset[NodeId]
    ) -> RouteDecision:
        self._refresh()
        key = (request.model, request.capability)
        base = self._masks.get(key)
        if base is None:
            raise self._no_capacity(request)
        n = self._arrays.n
        mask = base
        if excluded:
            mask = self._scratch_mask
            np.copyto(mask[:n], base[:n])
            for node in excluded:
                s = self._slot_of.get(node)
                if s is not None:
                    mask[s] = 0
        params = self._fill_params(request)
        scores = self._scores
        best = int(
            self._score(*self._columns, mask, self._arrays.clearance, self._weights, params,
                        scores, self._reasons)
        )  # fmt: skip
        if best < 0:
            raise self._explain(request, base, excluded)
        picker = self._picker
        if picker is not None:
            best = picker.pick(request, key, scores[:n], best)
        region = self._region_name[best]
        return RouteDecision(self._ids[best], RegionId(region or ""), float(scores[best]), best)

    def __repr__(self) -> str:
        return (
            f"Router(nodes={self._arrays.n}, strategy={self._strategy!r}, policy={self._policy!r})"
        )


ROUTING_ERRORS: tuple[type[FederationError], ...] = (
    NoCapacityError,
    PrivacyViolationError,
    QoSViolationError,
    AllNodesUnhealthyError,
    BackpressureError,
)
"""Every error :meth:`Router.route` raises when no node is eligible."""
