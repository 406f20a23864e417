"""The router's copy of the fleet, as struct-of-arrays, kept in step incrementally.

::

    ModelCatalog ─events─► _apply(): per-(model, capability) masks, node regions ─┐
    HealthChecker, CircuitBreaker ─version counters─► _refresh(): health, breaker, │
                                                      latency columns              ├─► NodeArrays
    Gateway ─► update_node(), set_alive(), acquire() / release(): gpu, cost,       │   ─► kernel
                                                      alive, in flight ────────────┘

The columns (:class:`fedgate.routing.arrays.NodeArrays`: health codes, latency
percentiles, region ids, costs, GPU flags, in-flight counts, breaker states)
are updated incrementally:

* catalog changes arrive as events and flip one node's bit in the
  per-capability (and per-model) ``uint8`` masks;
* health states and breaker states are gathered in bulk, and only when the
  health checker's / breaker's version counter moved;
* liveness is health's (SPEC §2 Health, "Who excludes a node"): a node the
  health checker declared dead (missed heartbeats) has ``alive`` 0, like a
  node the gateway lost, and is never routed to. A node UNHEALTHY by failure
  reports is *not* excluded here: the kernel scores its health 0, and its
  circuit breaker (the ``breaker`` column) rejects it once failures trip it;
* latency percentiles are refreshed for the nodes with new samples only, at
  most every ``refresh_interval`` seconds;
* the gateway reports node facts (:meth:`Fleet.update_node`), liveness
  (:meth:`Fleet.set_alive`) and in-flight requests (:meth:`Fleet.acquire` /
  :meth:`Fleet.release`).

:class:`Fleet` is the base of :class:`~fedgate.routing.router.Router`, not
a collaborator it calls through: the decision path reads these arrays as
its own attributes, with no extra lookup per request. A node keeps its slot
for the router's lifetime (a deregistered node serves nothing, it is not
removed).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from fedgate.clock import Clock
from fedgate.federation.breaker import CircuitBreaker
from fedgate.federation.catalog import CatalogEvent, ModelCatalog
from fedgate.federation.health import HealthChecker, HealthState
from fedgate.routing.arrays import NodeArrays
from fedgate.types import Capability, ModelId, NodeId, PrivacyLevel, Region, RegionId

__all__ = ["Fleet", "MaskKey"]

MaskKey = tuple[ModelId | None, Capability]
"""What a request is routed over: (pinned model or None, capability)."""


class Fleet:
    """Every node the router knows, as arrays the scoring kernel reads.

    Parameters
    ----------
    catalog : ModelCatalog
        Source of which node serves what (subscribed to by the router, once
        it is fully built).
    health : HealthChecker
        Node health and latency.
    breaker : CircuitBreaker
        Node circuit breakers.
    clock : callable, optional
        Times the latency refresh; default the health checker's clock.
    refresh_interval : float
        Minimum seconds between latency-percentile refreshes (0: on every
        decision after new samples).
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        health: HealthChecker,
        breaker: CircuitBreaker,
        clock: Clock | None = None,
        refresh_interval: float = 0.05,
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
        self._masks: dict[MaskKey, npt.NDArray[np.uint8]] = {}
        self._mask_counts: dict[MaskKey, int] = {}
        self._hmap = np.zeros(cap, dtype=np.intp)
        self._bmap = np.zeros(cap, dtype=np.intp)
        self._seen_seq = np.zeros(cap, dtype=np.uint64)
        # Health's liveness verdict per slot, as last gathered (folded into alive).
        self._dead = np.zeros(cap, dtype=np.bool_)
        # One decision's outputs (the router's), sized with the arrays.
        self._scores = np.empty(cap, dtype=np.float64)
        self._reasons = np.empty(cap, dtype=np.int8)
        self._scratch_mask = np.zeros(cap, dtype=np.uint8)
        self._pbuf = np.empty((0, 3), dtype=np.float64)
        self._columns: tuple[Any, ...] = self._arrays.kernel_columns()

        self._health_version = -1
        self._breaker_version = -1
        self._latency_version = -1
        self._last_latency_refresh = -math.inf

    # ================================================================ for the router above

    def _key_gone(self, key: MaskKey) -> None:
        """No node serves ``key`` any more."""

    def _region_added(self) -> None:
        """A region got its id (a request origin may map to it now)."""

    # ================================================================ regions

    @property
    def arrays(self) -> NodeArrays:
        """The node arrays (read-only use: benchmarks, dashboards)."""
        return self._arrays

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
            self._region_added()
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
        self._dead[s] = self._health.dead[hs]
        return s

    def _grow(self, cap: int) -> None:
        def grown(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            new = np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            new[: a.shape[0]] = a
            return new

        self._hmap = grown(self._hmap)
        self._bmap = grown(self._bmap)
        self._seen_seq = grown(self._seen_seq)
        self._dead = grown(self._dead)
        self._scores = np.empty(cap, dtype=np.float64)
        self._reasons = np.empty(cap, dtype=np.int8)
        self._scratch_mask = np.zeros(cap, dtype=np.uint8)
        for key, mask in self._masks.items():
            self._masks[key] = grown(mask)

    def _apply_alive(self, s: int) -> None:
        serving = bool(self._models_of[s])
        ok = serving and self._alive_flag[s] and not self._dead[s] and s not in self._saturated
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
                self._key_gone(key)
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
    ) -> set[MaskKey]:
        keys: set[MaskKey] = set()
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
            hmap = self._hmap[:n]
            np.take(health.codes, hmap, out=self._arrays.health[:n])
            dead = health.dead[hmap]
            for s in np.flatnonzero(dead != self._dead[:n]).tolist():
                self._dead[s] = dead[s]
                self._apply_alive(s)
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

    def node_health(self, node: NodeId) -> HealthState:
        """The health state the router scores ``node`` with."""
        s = self._slot_of.get(node)
        if s is None:
            return HealthState.UNKNOWN
        return tuple(HealthState)[int(self._arrays.health[s])]

    def capabilities(self) -> list[Capability]:
        """Capabilities some node serves."""
        return sorted({cap for (model, cap) in self._masks if model is None})
