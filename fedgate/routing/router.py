"""Choose a node for each request: policy scoring plus load balancing.

The router keeps the whole fleet as struct-of-arrays
(:class:`fedgate.routing.scoring.NodeArrays`: health codes, latency percentiles,
region ids, costs, GPU flags, in-flight counts, breaker states) and updates
it incrementally:

* catalog changes arrive as events and flip one node's bit in the
  per-capability (and per-model) ``uint8`` masks;
* health states and breaker states are gathered in bulk, and only when the
  health checker's / breaker's version counter moved;
* latency percentiles are refreshed for the nodes with new samples only, at
  most every ``refresh_interval`` seconds;
* the gateway reports node facts (:meth:`Router.update_node`), liveness
  (:meth:`Router.set_alive`) and in-flight requests (:meth:`Router.acquire` /
  :meth:`Router.release`).

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
serve the capability (and model, when pinned), be alive, sit in a region
cleared for ``qos.privacy`` (unconfigured regions are INTERNAL), be
not UNHEALTHY, have a breaker that is not OPEN (nor HALF_OPEN with every
probe slot taken), and meet ``qos.max_latency``. When none is left the error
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
import threading
from collections.abc import Iterable
from typing import Any

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
from fedgate.federation.catalog import CatalogEvent, ModelCatalog
from fedgate.federation.health import HealthChecker, HealthState
from fedgate.federation.policy import CompositePolicy
from fedgate.routing import arrays as _arrays
from fedgate.routing.arrays import NodeArrays
from fedgate.routing.explain import Candidate, Explain
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
    Capability,
    InferenceRequest,
    ModelId,
    NodeId,
    PrivacyLevel,
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
        if not isinstance(catalog, ModelCatalog):
            raise TypeError(f"catalog: expected a ModelCatalog, got {catalog!r}")
        if not isinstance(health, HealthChecker):
            raise TypeError(f"health: expected a HealthChecker, got {health!r}")
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker: expected a CircuitBreaker, got {breaker!r}")
        if (
            isinstance(refresh_interval, bool)
            or not isinstance(refresh_interval, (int, float))
            or not 0.0 <= refresh_interval < math.inf
        ):
            raise ValueError(
                f"refresh_interval: expected finite seconds >= 0, got {refresh_interval!r}"
            )
        if clock is not None and not callable(clock):
            raise TypeError(f"clock: expected a callable returning seconds, got {clock!r}")
        self._catalog = catalog
        self._health = health
        self._breaker = breaker
        self._clock: Clock = clock if clock is not None else health.clock
        self._refresh_interval = float(refresh_interval)
        self._lock = threading.RLock()
        # "aot" (compiled at install: Numba is never loaded) or "jit"; see routing.kernels.
        self.kernels, self._score, self._components = routing_kernels()

        self._arrays = NodeArrays(capacity=64)
        self._ids: list[NodeId] = []
        self._slot_of: dict[NodeId, int] = {}
        self._region_name: list[RegionId | None] = []
        self._models_of: list[dict[ModelId, tuple[Capability, ...]]] = []
        self._alive_flag: list[bool] = []
        self._max_concurrency: list[int] = []
        self._explicit_cost: list[float | None] = []
        self._saturated: set[int] = set()

        self._region_ids: dict[RegionId, int] = {}
        self._regions: dict[RegionId, Region] = {}

        cap = self._arrays.capacity
        self._masks: dict[tuple[ModelId | None, Capability], npt.NDArray[np.uint8]] = {}
        self._mask_counts: dict[tuple[ModelId | None, Capability], int] = {}
        self._hmap = np.zeros(cap, dtype=np.intp)
        self._bmap = np.zeros(cap, dtype=np.intp)
        self._seen_seq = np.zeros(cap, dtype=np.uint64)
        self._scores = np.empty(cap, dtype=np.float64)
        self._reasons = np.empty(cap, dtype=np.int8)
        self._scratch_mask = np.zeros(cap, dtype=np.uint8)
        self._pbuf = np.empty((0, 3), dtype=np.float64)
        self._columns: tuple[Any, ...] = self._arrays.kernel_columns()

        self._health_version = -1
        self._breaker_version = -1
        self._latency_version = -1
        self._last_latency_refresh = -math.inf

        # One picker per strategy for the router's lifetime: a switch back
        # resumes the round-robin cursor, the seeded draw and the ring.
        self._round_robin = RoundRobin()
        self._ring = ConsistentHash(self._ids, self._arrays)
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

    @property
    def arrays(self) -> NodeArrays:
        """The node arrays (read-only use: benchmarks, dashboards)."""
        return self._arrays

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

    def set_region(self, region: Region) -> None:
        """Configure (or reconfigure) a region's clearance and default node cost."""
        if not isinstance(region, Region):
            raise TypeError(f"region: expected a Region, got {region!r}")
        with self._lock:
            self._regions[region.id] = region
            rid = self._region_index(region.id)
            self._arrays.set_clearance(rid, int(region.clearance))
            for s, name in enumerate(self._region_name):
                if name == region.id:
                    self._apply_cost(s)

    def clearance_of(self, region: RegionId) -> PrivacyLevel:
        """A region's clearance (INTERNAL unless configured)."""
        configured = self._regions.get(region)
        return configured.clearance if configured is not None else PrivacyLevel.INTERNAL

    def _region_index(self, region: RegionId) -> int:
        rid = self._region_ids.get(region)
        if rid is None:
            configured = self._regions.get(region)
            level = (
                int(configured.clearance) if configured is not None else int(PrivacyLevel.INTERNAL)
            )
            rid = self._arrays.add_region(level)
            self._region_ids[region] = rid
            self._params_qos = None
        return rid

    # ================================================================ nodes

    def _ensure(self, node: NodeId) -> int:
        s = self._slot_of.get(node)
        if s is not None:
            return s
        if not isinstance(node, str) or not node:
            raise ValueError(f"node: expected a non-empty node id, got {node!r}")
        arrays = self._arrays
        old_cap = arrays.capacity
        s = arrays.add_node()
        if arrays.capacity != old_cap:
            self._grow(arrays.capacity)
        self._columns = arrays.kernel_columns()
        self._ids.append(node)
        self._slot_of[node] = s
        self._region_name.append(None)
        self._models_of.append({})
        self._alive_flag.append(True)
        self._max_concurrency.append(0)
        self._explicit_cost.append(None)
        arrays.cost[s] = math.nan
        hs = self._health.slot(node)
        bs = self._breaker.slot(node)
        self._hmap[s] = hs
        self._bmap[s] = bs
        arrays.health[s] = self._health.codes[hs]
        arrays.breaker[s] = self._breaker.routable_codes[bs]
        p50, _p95, p99 = self._health.latency_table.percentiles(hs)
        arrays.p50[s] = p50
        arrays.p99[s] = p99
        self._seen_seq[s] = self._health.latency_seq[hs]
        self._ring.invalidate()
        return s

    def _grow(self, cap: int) -> None:
        def grown(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            new = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            new[: a.shape[0]] = a
            return new

        self._hmap = grown(self._hmap)
        self._bmap = grown(self._bmap)
        self._seen_seq = grown(self._seen_seq)
        self._scores = np.empty(cap, dtype=np.float64)
        self._reasons = np.empty(cap, dtype=np.int8)
        self._scratch_mask = np.zeros(cap, dtype=np.uint8)
        for key, mask in self._masks.items():
            self._masks[key] = grown(mask)

    def _apply_alive(self, s: int) -> None:
        serving = bool(self._models_of[s])
        ok = serving and self._alive_flag[s] and s not in self._saturated
        self._arrays.alive[s] = 1 if ok else 0

    def _apply_cost(self, s: int) -> None:
        cost = self._explicit_cost[s]
        if cost is None:
            name = self._region_name[s]
            region = self._regions.get(name) if name is not None else None
            cost = region.cost if region is not None and region.cost is not None else math.nan
        self._arrays.cost[s] = cost

    def _set_region_of(self, s: int, region: RegionId) -> None:
        if self._region_name[s] != region:
            self._region_name[s] = region
            self._arrays.region[s] = self._region_index(region)
            self._apply_cost(s)

    def _on_catalog(self, event: CatalogEvent) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: CatalogEvent) -> None:
        s = self._ensure(event.node_id)
        models = self._models_of[s]
        before = self._keys(models)
        if event.kind == "deregistered":
            models.pop(event.model_id, None)
        else:
            models[event.model_id] = event.capabilities
            self._set_region_of(s, event.region_id)
        after = self._keys(models)
        for key in before - after:
            self._masks[key][s] = 0
            left = self._mask_counts[key] - 1
            if left:
                self._mask_counts[key] = left
            else:
                del self._masks[key], self._mask_counts[key]
                self._round_robin.forget(key)
        for key in after - before:
            mask = self._masks.get(key)
            if mask is None:
                mask = self._masks[key] = np.zeros(self._arrays.capacity, dtype=np.uint8)
                self._mask_counts[key] = 0
            mask[s] = 1
            self._mask_counts[key] += 1
        self._apply_alive(s)

    @staticmethod
    def _keys(
        models: dict[ModelId, tuple[Capability, ...]],
    ) -> set[tuple[ModelId | None, Capability]]:
        keys: set[tuple[ModelId | None, Capability]] = set()
        for model, caps in models.items():
            for cap in caps:
                keys.add((model, cap))
                keys.add((None, cap))
        return keys

    def update_node(
        self,
        node: NodeId,
        *,
        region: RegionId | None = None,
        gpu: bool | None = None,
        cost: float | None = None,
        max_concurrency: int | None = None,
    ) -> int:
        """Record what a node announced (arguments left None are unchanged).

        Parameters
        ----------
        node : NodeId
            Added to the router if new (it serves nothing until the catalog says so).
        region : RegionId, optional
            Its region (the catalog's registration sets it too).
        gpu : bool, optional
            Whether it runs on a GPU.
        cost : float, optional
            Its price (finite >= 0); without one the region's configured cost applies.
        max_concurrency : int, optional
            Requests it takes at once (>= 1; 0 for no limit). A node at its
            limit is not routable until a request is released.

        Returns
        -------
        int
            The node's slot.
        """
        if region is not None and (not isinstance(region, str) or not region):
            raise ValueError(f"region: expected a non-empty region id, got {region!r}")
        if gpu is not None and not isinstance(gpu, bool):
            raise TypeError(f"gpu: expected a bool, got {gpu!r}")
        if cost is not None and (
            isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < math.inf
        ):
            raise ValueError(f"cost: expected a finite number >= 0, got {cost!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 0
        ):
            raise ValueError(
                f"max_concurrency: expected an int >= 0 (0: no limit), got {max_concurrency!r}"
            )
        with self._lock:
            s = self._ensure(node)
            if region is not None:
                self._set_region_of(s, region)
            if gpu is not None:
                self._arrays.gpu[s] = 1 if gpu else 0
            if cost is not None:
                self._explicit_cost[s] = float(cost)
                self._apply_cost(s)
            if max_concurrency is not None:
                self._max_concurrency[s] = max_concurrency
                self._update_saturation(s)
            return s

    def set_alive(self, node: NodeId, alive: bool) -> None:
        """Mark a node connected (True) or gone (False); a gone node is never routed to."""
        if not isinstance(alive, bool):
            raise TypeError(f"alive: expected a bool, got {alive!r}")
        with self._lock:
            s = self._ensure(node)
            self._alive_flag[s] = alive
            self._apply_alive(s)

    def _update_saturation(self, s: int) -> None:
        limit = self._max_concurrency[s]
        full = limit > 0 and int(self._arrays.inflight[s]) >= limit
        if full != (s in self._saturated):
            if full:
                self._saturated.add(s)
            else:
                self._saturated.discard(s)
            self._apply_alive(s)

    def acquire(self, node: NodeId) -> int:
        """Count one more request in flight on ``node``; returns the new count."""
        with self._lock:
            s = self._slot_of.get(node)
            if s is None:
                raise ValueError(f"node: expected a node known to the router, got {node!r}")
            inflight = self._arrays.inflight
            count = int(inflight[s]) + 1
            inflight[s] = count
            limit = self._max_concurrency[s]
            # Saturation changes only when the count crosses the limit.
            if limit and (count >= limit) != (s in self._saturated):
                self._update_saturation(s)
            return count

    def release(self, node: NodeId) -> int:
        """Count one request fewer in flight on ``node``; returns the new count.

        Raises
        ------
        ValueError
            Nothing was in flight on ``node`` (an unpaired release).
        """
        with self._lock:
            s = self._slot_of.get(node)
            inflight = self._arrays.inflight
            count = -1 if s is None else int(inflight[s]) - 1
            if s is None or count < 0:
                raise ValueError(f"release: expected a request in flight on {node!r}, got none")
            inflight[s] = count
            limit = self._max_concurrency[s]
            if limit and (count >= limit) != (s in self._saturated):
                self._update_saturation(s)
            return count

    def inflight(self, node: NodeId) -> int:
        """Requests in flight on ``node`` (0 for an unknown node)."""
        s = self._slot_of.get(node)
        return 0 if s is None else int(self._arrays.inflight[s])

    def nodes(self) -> list[NodeId]:
        """Every node the router knows, in slot order."""
        return list(self._ids)

    def slot_of(self, node: NodeId) -> int:
        """The node's slot in :attr:`arrays`, or -1."""
        return self._slot_of.get(node, -1)

    def close(self) -> None:
        """Stop listening to the catalog."""
        self._unsubscribe()

    # ================================================================ refresh

    def refresh(self, *, force: bool = False) -> None:
        """Bring health, breaker and latency columns up to date (routing does this itself).

        ``force`` refreshes latency percentiles regardless of ``refresh_interval``.
        """
        with self._lock:
            self._refresh(force)

    def _refresh(self, force: bool = False) -> None:
        n = self._arrays.n
        health = self._health
        health.expire()
        if health.version != self._health_version:
            self._health_version = health.version
            np.take(health.codes, self._hmap[:n], out=self._arrays.health[:n])
        breaker = self._breaker
        if breaker.clock() >= breaker.next_deadline:
            breaker.poll()
        if breaker.version != self._breaker_version:
            self._breaker_version = breaker.version
            np.take(breaker.routable_codes, self._bmap[:n], out=self._arrays.breaker[:n])
        if health.latency_version != self._latency_version:
            now = self._clock()
            if force or now - self._last_latency_refresh >= self._refresh_interval:
                self._latency_version = health.latency_version
                self._last_latency_refresh = now
                self._refresh_latency(n)

    def _refresh_latency(self, n: int) -> None:
        hmap = self._hmap[:n]
        current = self._health.latency_seq[hmap]
        changed = np.flatnonzero(current != self._seen_seq[:n])
        if not changed.size:
            return
        table = self._health.latency_table
        p50, p99 = self._arrays.p50, self._arrays.p99
        if changed.size * 4 > n:
            rows = len(self._health)
            if self._pbuf.shape[0] < rows:
                self._pbuf = np.empty((max(rows, 2 * self._pbuf.shape[0]), 3), dtype=np.float64)
            table.all_percentiles(self._pbuf)
            picked = self._pbuf[hmap[changed]]
            p50[changed] = picked[:, 0]
            p99[changed] = picked[:, 2]
        else:
            for s in changed.tolist():
                a, _b, c = table.percentiles(int(hmap[s]))
                p50[s] = a
                p99[s] = c
        self._seen_seq[:n] = current

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

    # ================================================================ introspection
    # candidates() and the routing errors' explanations: routing/explain.py

    def node_health(self, node: NodeId) -> HealthState:
        """The health state the router scores ``node`` with."""
        s = self._slot_of.get(node)
        if s is None:
            return HealthState.UNKNOWN
        return tuple(HealthState)[int(self._arrays.health[s])]

    def capabilities(self) -> list[Capability]:
        """Capabilities some node serves."""
        return sorted({cap for (model, cap) in self._masks if model is None})

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
