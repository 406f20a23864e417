"""The snapshot: one gateway's state as plain data, built from its public surface.

::

    Gateway ──read──► Telemetry.snapshot() ──► plain dict (schema below)
      stats(), workers(),        │  build(): the same, in slices of the event loop
      recent_routes, catalog,    └─ keeps what the gateway forgets: the last breaker
      health, breaker, router       transitions and a ring of counter samples (rates)

    SnapshotCache.get() ── one build at a time, shared by every reader, rebuilt
                           at most every max(min_interval, cost × (1 − share) / share)
    page(snapshot, offset, limit) ── every per-node table cut to one page

A snapshot's cost grows with the nodes (10 000 nodes: about 5 MB, 0.1–0.4 s
of CPU). :meth:`Telemetry.snapshot` pays it in one go, for in-process
callers with few nodes; :meth:`Telemetry.build` reads the nodes a chunk at a
time and yields to the event loop whenever a slice has run for its budget
(:data:`SLICE_BUDGET`), so traffic is served in between; the
:class:`SnapshotCache` bounds how often that happens whatever the number of
clients; :func:`page` is what a dashboard needs of it (:data:`PAGE_SIZE`
rows per table). Rows of nodes that did not change are the very objects of
the previous snapshot, so a build allocates little that outlives it.

:class:`Telemetry` reads only the gateway's public surface (``stats()``,
``workers()``, ``recent_routes``, ``catalog``, ``health``, ``breaker``,
``router``), so a gateway needs no telemetry code of its own; one per gateway
(:func:`telemetry_for`), shared by the ZeroMQ server, the Prometheus
exporter and the demo's in-process dashboard. This module does not import
ZeroMQ.

A snapshot is plain data (str, int, float, bool, None, list, dict with str
keys), identical over MessagePack and JSON. Durations are seconds; points in
time are given as *ages* (seconds before the snapshot), because the
components' clocks are monotonic and mean nothing to another process.

=============  ===============================================================
key            content
=============  ===============================================================
schema         :data:`SCHEMA_VERSION`
time           wall-clock seconds (``time.time()``) when it was taken
gateway        ``id``, ``endpoints`` (where workers connect), ``telemetry``,
               ``metrics`` (Prometheus URL or None), ``running``, ``uptime``
               (seconds since telemetry attached to the gateway)
catalog        ``models``: model → list of ``{node, region, capabilities}``;
               ``capabilities``; ``deployments`` (count)
workers        ``gateway.workers()``: node, region, worker_id, pid, gpu, cost,
               resumable, alive, inflight, models
health         per node: state, reported_state, p50/p95/p99 (None before any
               sample), samples, consecutive_failures/successes,
               last_check_age, heartbeat_age, alive
breakers       per node: state, failures, probes, trips, opened_age,
               open_timeout, time_to_reset, last_failure_age
transitions    the last breaker transitions, newest first: node, old, new, age
routing        ``recent``: the gateway's last routing decisions, newest first;
               ``breakdown``: capability → candidates from
               ``router.candidates()`` for a representative request (see
               :data:`PROBE_NOTE`); ``note``
stats          every :class:`~fedgate.gateway.stats.GatewayStats` field but
               ``tenants``; ``per_node`` and ``per_tenant`` as dicts of counters
tenants        one row per tenant, by name: tenant, weight, in_flight,
               max_concurrent (None: unlimited), waiting (in the fair queue),
               admitted, completed, failed, tokens, rejected (per limit:
               concurrency, requests, tokens)
rates          requests/ok/failed/tokens per second over the last
               ``window_s`` seconds, from counter deltas between samples
history        the sample ring, oldest first: ``t`` (seconds, <= 0, relative
               to the newest), total, ok, failed, tokens, p50, p99, rps, tps
policy         ``policies`` (name, weight, share, params), ``total_weight``,
               ``strategy``, ``origin``, ``regions`` (region, clearance, nodes)
config         the gateway's, health checker's and breaker's settings
=============  ===============================================================
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from fedgate.types import Capability, InferenceRequest, QoSRequirements, RegionId

if TYPE_CHECKING:
    from fedgate.federation.breaker import BreakerTransition
    from fedgate.gateway import Gateway

__all__ = [
    "PAGE_SIZE",
    "PROBE_NOTE",
    "SCHEMA_VERSION",
    "SLICE_BUDGET",
    "Built",
    "SnapshotCache",
    "Telemetry",
    "page",
    "snapshot",
    "telemetry_for",
]

SCHEMA_VERSION = 1
"""Bumped when a key of the snapshot changes meaning or disappears."""

PROBE_NOTE = (
    "router's current view: candidates() for a representative request per capability "
    "(default QoS: INTERNAL privacy, prefer GPU, cost tolerance 50, no pinned model, "
    "no origin); real requests with other QoS may rank nodes differently"
)
"""What the routing breakdown is (it is not a record of a past decision)."""

SLICE_BUDGET = 0.001
"""Seconds :meth:`Telemetry.build` runs before it lets the event loop serve others."""

PAGE_SIZE = 200
"""Rows per node table in a page (:func:`page`): what ``fedgate top`` asks for."""

_PROBE_ID = "fedgate-telemetry-probe"
_MAX_CANDIDATES = 64
_RECENT_ROUTES = 64
# Rows read between two looks at the slice's clock: a few hundred microseconds each.
_CHUNK = 128

_T = TypeVar("_T")
_Section = Generator[None, None, _T]


def _by_node(row: dict[str, Any]) -> str:
    node: str = row["node"]
    return node


def _num(x: float | None) -> float | None:
    """A float for the wire: NaN and infinities become None (JSON has neither)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _age(now: float, then: float | None) -> float | None:
    return None if then is None or not math.isfinite(then) else max(0.0, now - then)


def _plain(value: Any) -> Any:
    """Config values as wire data (enums by name, durations as floats)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value if not isinstance(value, str) else str(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, enum.Enum):
        return str(value.name)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


class _Sample(NamedTuple):
    t: float
    total: int
    ok: int
    failed: int
    tokens: int
    p50: float | None
    p99: float | None


class Telemetry:
    """Collects one gateway's state into snapshots; keeps transitions and a sample ring.

    Usually obtained with :func:`telemetry_for` (one per gateway) rather than
    built directly. It subscribes to the gateway's breaker at construction, so
    transitions from then on are kept.

    Parameters
    ----------
    gateway : Gateway
        The gateway to read (held by weak reference).
    transitions : int
        Breaker transitions kept.
    history : int
        Counter samples kept for rates and sparklines.
    sample_interval : float
        Minimum seconds between two samples.
    rate_window : float
        Rates are averaged over about this many seconds of samples.
    clock : callable
        Monotonic seconds, for sample times and uptime.
    wall : callable
        Wall-clock seconds, for the snapshot's ``time`` and route ages.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        transitions: int = 100,
        history: int = 120,
        sample_interval: float = 0.25,
        rate_window: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("transitions", transitions), ("history", history)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name}: expected an int >= 2, got {value!r}")
        for name, seconds in (("sample_interval", sample_interval), ("rate_window", rate_window)):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not (0 <= seconds < math.inf)
            ):
                raise ValueError(f"{name}: expected finite seconds >= 0, got {seconds!r}")
        self._gateway = weakref.ref(gateway)
        self._clock = clock
        self._wall = wall
        self._sample_interval = float(sample_interval)
        self._rate_window = float(rate_window)
        self._attached = clock()
        self._transitions: collections.deque[BreakerTransition] = collections.deque(
            maxlen=transitions
        )
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=history)
        # Samples are taken by the server's task and by snapshot() callers,
        # possibly from a scrape thread: one lock keeps the ring ordered.
        self._lock = threading.Lock()
        # Per table, the last finished snapshot's rows by their values (_reuse).
        self._rows: dict[str, dict[tuple[Any, ...], Any]] = {"catalog": {}, "workers": {}}
        self._next_rows: dict[str, dict[tuple[Any, ...], Any]] = {"catalog": {}, "workers": {}}
        self.telemetry_endpoint: str | None = None
        self.metrics_url: str | None = None
        # The listener runs under the breaker's lock, maybe off the loop: a
        # deque append is atomic and cheap, which is all it does.
        self._unsubscribe = gateway.breaker.subscribe(self._transitions.append)

    @property
    def gateway(self) -> Gateway:
        """The gateway read (raises ``ReferenceError`` once it is gone)."""
        gw = self._gateway()
        if gw is None:
            raise ReferenceError("the gateway of this Telemetry no longer exists")
        return gw

    def close(self) -> None:
        """Stop listening to the breaker."""
        self._unsubscribe()

    # ------------------------------------------------------------ sampling

    def sample(self, *, force: bool = False) -> bool:
        """Record the gateway's counters into the ring (if ``sample_interval`` has passed).

        Returns True when a sample was taken.
        """
        now = self._clock()
        with self._lock:
            last = self._samples[-1].t if self._samples else -math.inf
            if not force and now - last < self._sample_interval:
                return False
            s = self.gateway.stats()
            self._samples.append(
                _Sample(now, s.total_requests, s.successful_requests, s.failed_requests,
                        s.total_tokens, _num(s.latency_p50), _num(s.latency_p99))
            )  # fmt: skip
            return True

    def _history(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        with self._lock:
            samples = list(self._samples)
        history: list[dict[str, Any]] = []
        newest = samples[-1].t if samples else 0.0
        prev: _Sample | None = None
        for smp in samples:
            dt = smp.t - prev.t if prev is not None else 0.0
            rps = (smp.total - prev.total) / dt if prev is not None and dt > 0 else 0.0
            tps = (smp.tokens - prev.tokens) / dt if prev is not None and dt > 0 else 0.0
            history.append(
                {"t": smp.t - newest, "total": smp.total, "ok": smp.ok, "failed": smp.failed,
                 "tokens": smp.tokens, "p50": smp.p50, "p99": smp.p99, "rps": rps, "tps": tps}
            )  # fmt: skip
            prev = smp
        rates = {"requests_per_s": 0.0, "ok_per_s": 0.0, "failed_per_s": 0.0,
                 "tokens_per_s": 0.0, "window_s": 0.0}  # fmt: skip
        if len(samples) >= 2:
            last = samples[-1]
            # The oldest sample inside the window, but never the newest itself.
            first = samples[-2]
            for smp in samples[:-1]:
                if last.t - smp.t <= self._rate_window:
                    first = smp
                    break
            dt = last.t - first.t
            if dt > 0:
                rates = {
                    "requests_per_s": (last.total - first.total) / dt,
                    "ok_per_s": (last.ok - first.ok) / dt,
                    "failed_per_s": (last.failed - first.failed) / dt,
                    "tokens_per_s": (last.tokens - first.tokens) / dt,
                    "window_s": dt,
                }
        return history, rates

    # ------------------------------------------------------------ sections
    #
    # Each section is a generator: it yields after every ``chunk`` rows and
    # returns its value. snapshot() runs them straight through; build() pauses
    # whenever a slice has used its budget, so 10 000 nodes never hold the
    # event loop for longer than one chunk (plus the one call that reads them).

    def _reuse(self, table: str, key: tuple[Any, ...], make: Callable[[], _T]) -> _T:
        """The row the last snapshot had for ``key`` (same values), else a new one.

        Rows of 10 000 nodes that did not change are the same objects from one
        snapshot to the next: a snapshot allocates (and the collector then
        traverses, and the next snapshot frees) only what changed. Snapshots
        are read-only data; a row must not be modified.
        """
        row: _T | None = self._rows[table].get(key)
        if row is None:
            row = make()
        self._next_rows[table][key] = row
        return row

    def _catalog(self, gw: Gateway, chunk: int) -> _Section[dict[str, Any]]:
        models: dict[str, list[dict[str, Any]]] = {}
        deps = gw.catalog.deployments()
        for i, (model, dep) in enumerate(deps, 1):
            node, region = str(dep.node_id), str(dep.region_id)
            caps = tuple(str(c) for c in dep.capabilities)
            models.setdefault(str(model), []).append(self._reuse(
                "catalog", (model, node, region, caps),
                lambda: {"node": node, "region": region, "capabilities": list(caps)},  # noqa: B023
            ))  # fmt: skip
            if i % chunk == 0:
                yield
        for deployments in models.values():
            deployments.sort(key=_by_node)  # registration order is a race
            yield
        return {
            "models": dict(sorted(models.items())),
            "capabilities": sorted(str(c) for c in gw.catalog.capabilities()),
            "deployments": len(deps),
        }

    def _workers(self, gw: Gateway, chunk: int) -> _Section[list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        start = 0
        while True:
            found = gw.workers(start, start + chunk)
            if not found:
                break
            start += len(found)
            for worker in found:
                values = tuple(
                    tuple(v) if isinstance(v, list) else v for v in worker.values()
                )
                row = self._reuse(
                    "workers", (*worker, *values),
                    lambda: {key: _plain(value) for key, value in worker.items()},  # noqa: B023
                )  # fmt: skip
                if row["node"] not in seen:  # the workers moved between two slices
                    seen.add(row["node"])
                    rows.append(row)
            yield
        rows.sort(key=_by_node)
        return rows

    def _health(self, gw: Gateway, chunk: int) -> _Section[list[dict[str, Any]]]:
        health = gw.health
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        start = 0
        while True:
            statuses = health.all_statuses(start, start + chunk)
            if not statuses:
                break
            start += len(statuses)
            now = health.clock()
            for st in statuses:
                node = str(st.node_id)
                if node in seen:  # registration moved slots between two slices
                    continue
                seen.add(node)
                rows.append({
                    "node": node,
                    "state": st.state.name,
                    "reported_state": st.reported_state.name,
                    "p50": _num(st.latency_p50),
                    "p95": _num(st.latency_p95),
                    "p99": _num(st.latency_p99),
                    "samples": st.samples,
                    "consecutive_failures": st.consecutive_failures,
                    "consecutive_successes": st.consecutive_successes,
                    "last_check_age": _age(now, st.last_check),
                    "heartbeat_age": _age(now, st.last_heartbeat),
                    "alive": bool(st.alive),
                })  # fmt: skip
            yield
        rows.sort(key=_by_node)
        return rows

    def _breakers(
        self, gw: Gateway, chunk: int
    ) -> _Section[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        breaker = gw.breaker
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        start = 0
        while True:
            statuses = breaker.all_statuses(start, start + chunk)  # polls: due transitions land
            if not statuses:
                break
            start += len(statuses)
            now = breaker.clock()
            for st in statuses:
                node = str(st.node_id)
                if node in seen:
                    continue
                seen.add(node)
                rows.append({
                    "node": node,
                    "state": st.state.name,
                    "failures": st.failures,
                    "probes": st.probes,
                    "trips": st.trips,
                    "opened_age": _age(now, st.opened_at),
                    "open_timeout": _num(st.open_timeout),
                    "time_to_reset": _num(st.time_to_reset),
                    "last_failure_age": _age(now, st.last_failure),
                })  # fmt: skip
            yield
        rows.sort(key=_by_node)
        now = breaker.clock()
        transitions = [
            {"node": str(t.node_id), "old": t.old.name, "new": t.new.name, "age": _age(now, t.at)}
            for t in reversed(list(self._transitions))
        ]
        return rows, transitions

    def _routing(self, gw: Gateway, wall_now: float) -> _Section[dict[str, Any]]:
        recent = list(gw.recent_routes)[-_RECENT_ROUTES:]
        recent.reverse()
        breakdown: dict[str, list[dict[str, Any]]] = {}
        for cap in sorted(gw.catalog.capabilities()):
            probe = InferenceRequest(
                Capability.parse(cap), b"", qos=QoSRequirements(), request_id=_PROBE_ID
            )
            # limit: the router ranks every node but builds rows for the shown ones only.
            breakdown[str(cap)] = [
                {
                    "node": str(c.node_id),
                    "region": str(c.region_id),
                    "eligible": bool(c.eligible),
                    "total": _num(c.total),
                    "reason": c.reason,
                    "inflight": int(c.inflight),
                    "scores": {name: _num(v) for name, v in c.breakdown.items()},
                }
                for c in gw.router.candidates(probe, limit=_MAX_CANDIDATES)
            ]
            yield
        return {
            "recent": [
                {
                    "age": _age(wall_now, r.at),
                    "request_id": r.request_id,
                    "tenant": r.tenant_id,
                    "capability": str(r.capability),
                    "node": str(r.node_id),
                    "region": str(r.region_id),
                    "score": _num(r.score),
                    "attempt": r.attempt,
                }
                for r in recent
            ],
            "breakdown": breakdown,
            "note": PROBE_NOTE,
        }

    def _stats(self, gw: Gateway, chunk: int) -> _Section[dict[str, Any]]:
        stats = gw.stats()
        out: dict[str, Any] = {}
        for f in dataclasses.fields(stats):
            value = getattr(stats, f.name)
            if f.name == "tenants":  # a top-level section of its own (_tenants)
                continue
            if isinstance(value, dict):
                table: dict[str, Any] = {}
                for i, (k, v) in enumerate(sorted(value.items()), 1):
                    # Rows (per node, per tenant) or plain counts (refusals per reason).
                    table[str(k)] = _fields(v) if dataclasses.is_dataclass(v) else _plain(v)
                    if i % chunk == 0:
                        yield
                out[f.name] = table
            else:
                out[f.name] = _plain(value)
        return out

    def _tenants(self, gw: Gateway, chunk: int) -> _Section[list[dict[str, Any]]]:
        rows = []
        for i, t in enumerate(gw.tenants.stats(), 1):
            rows.append(
                {
                    "tenant": t.tenant,
                    "weight": _num(t.weight),
                    "in_flight": t.in_flight,
                    "max_concurrent": t.max_concurrent,
                    "waiting": t.waiting,
                    "admitted": t.admitted,
                    "completed": t.completed,
                    "failed": t.failed,
                    "tokens": t.tokens,
                    "rejected": dict(t.rejected),
                }
            )
            if i % chunk == 0:
                yield
        return rows

    def _policy(
        self, gw: Gateway, workers: list[dict[str, Any]], chunk: int
    ) -> _Section[dict[str, Any]]:
        router = gw.router
        policy = router.policy
        total = policy.total_weight
        policies = []
        for p in policy.policies:
            params = {k: _plain(v) for k, v in p.to_mapping().items() if k != "weight"}
            policies.append(
                {"name": p.name, "weight": p.weight,
                 "share": p.weight / total if total > 0 else 0.0, "params": params}
            )  # fmt: skip
        nodes_in: dict[str, set[str]] = {}
        for i, node in enumerate(gw.catalog.nodes(), 1):
            region = gw.catalog.region_of(node)
            if region is not None:
                nodes_in.setdefault(str(region), set()).add(str(node))
            if i % chunk == 0:
                yield
        for worker in workers:
            nodes_in.setdefault(str(worker["region"]), set()).add(str(worker["node"]))
        regions = []
        for name, nodes in sorted(nodes_in.items()):
            regions.append(
                {"region": name, "clearance": router.clearance_of(RegionId(name)).name,
                 "nodes": sorted(nodes)}
            )  # fmt: skip
            yield
        return {
            "policies": policies,
            "total_weight": total,
            "strategy": router.strategy,
            "origin": policy.origin,
            "regions": regions,
        }

    def _config(self, gw: Gateway) -> dict[str, Any]:
        return {
            "gateway": _fields(gw.config),
            "health": _fields(gw.health.config),
            "breaker": _fields(gw.breaker.config),
        }

    # ------------------------------------------------------------ snapshot

    def _sections(self, routing: bool, chunk: int) -> _Section[dict[str, Any]]:
        """The whole snapshot as one generator of slices (see :meth:`build`)."""
        gw = self.gateway
        # Two builds at once (snapshot() during a build()) share this: a row is
        # reused only for identical values, so they can cost each other reuse,
        # never correctness.
        self._next_rows = {table: {} for table in self._rows}
        self.sample()
        wall_now = self._wall()
        workers = yield from self._workers(gw, chunk)
        catalog = yield from self._catalog(gw, chunk)
        health = yield from self._health(gw, chunk)
        breakers, transitions = yield from self._breakers(gw, chunk)
        routes = (yield from self._routing(gw, wall_now)) if routing else None
        stats = yield from self._stats(gw, chunk)
        tenants = yield from self._tenants(gw, chunk)
        policy = yield from self._policy(gw, workers, chunk)
        history, rates = self._history()
        self._rows = self._next_rows  # only a finished snapshot's rows are reused
        return {
            "schema": SCHEMA_VERSION,
            "time": wall_now,
            "gateway": {
                "id": gw.gateway_id,
                "endpoints": list(gw.endpoints),
                "telemetry": self.telemetry_endpoint,
                "metrics": self.metrics_url,
                "running": bool(gw.running),
                "uptime": max(0.0, self._clock() - self._attached),
            },
            "catalog": catalog,
            "workers": workers,
            "health": health,
            "breakers": breakers,
            "transitions": transitions,
            "routing": routes,
            "stats": stats,
            "tenants": tenants,
            "rates": rates,
            "history": history,
            "policy": policy,
            "config": self._config(gw),
        }

    def snapshot(self, *, routing: bool = True) -> dict[str, Any]:
        """The gateway's state now, as plain data (the module docstring's schema), in one go.

        Call it on the gateway's event loop (the gateway's counters are
        plain attributes). Takes a counter sample first when one is due.
        Its cost grows with the nodes and it never yields: a server (or any
        code sharing the loop with traffic) should ``await`` :meth:`build`.

        Parameters
        ----------
        routing : bool
            Include the routing section (the per-capability breakdown runs
            the scoring kernel once per capability; Prometheus skips it).
        """
        sections = self._sections(routing, _CHUNK)
        while True:
            try:
                next(sections)
            except StopIteration as done:
                result: dict[str, Any] = done.value
                return result

    async def build(
        self,
        *,
        routing: bool = True,
        budget: float = SLICE_BUDGET,
        chunk: int = _CHUNK,
        clock: Callable[[], float] = time.perf_counter,
    ) -> Built:
        """:meth:`snapshot`, taken in slices between iterations of the event loop.

        The sections are read ``chunk`` rows at a time; once a slice has run
        for ``budget`` seconds (by ``clock``), the build yields to the loop
        (``await asyncio.sleep(0)``) so requests go on being served. The
        snapshot is therefore not atomic: a node that registers or leaves
        meanwhile may be in one table and not in another (never twice in one).

        Returns
        -------
        Built
            The snapshot, with ``cost`` (seconds of ``clock`` spent in its
            slices), ``slices`` and ``longest`` (the longest slice).
        """
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk: expected an int >= 1, got {chunk!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (
            0 <= budget < math.inf
        ):
            raise ValueError(f"budget: expected finite seconds >= 0, got {budget!r}")
        sections = self._sections(routing, chunk)
        cost = longest = 0.0
        slices = 1
        began = clock()
        while True:
            try:
                next(sections)
            except StopIteration as done:
                now = clock()
                cost += now - began
                longest = max(longest, now - began)
                return Built(done.value, self._clock(), cost, slices, longest)
            now = clock()
            if now - began >= budget:
                cost += now - began
                longest = max(longest, now - began)
                await asyncio.sleep(0)
                slices += 1
                began = clock()


@dataclasses.dataclass(eq=False)
class Built:
    """One snapshot from :meth:`Telemetry.build`, and what building it cost."""

    data: dict[str, Any]
    """The snapshot (the module docstring's schema)."""
    at: float
    """When it was finished, by the telemetry's monotonic clock."""
    cost: float
    """Seconds spent building it, slices only (not the time the loop served others)."""
    slices: int
    """How many times the build ran (it yielded ``slices - 1`` times)."""
    longest: float
    """The longest slice, in seconds."""
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)
    """Derived replies (encodings, pages) of this snapshot, kept by whoever serves it."""


def page(snap: Mapping[str, Any], offset: int = 0, limit: int = PAGE_SIZE) -> dict[str, Any]:
    """``snap`` with every per-node table cut to rows ``[offset, offset + limit)``.

    The tables cut are ``workers``, ``health``, ``breakers``, the catalog's
    deployments (counted across models, in model order), ``stats.per_node``
    and ``stats.per_tenant``; each region of ``policy.regions`` lists at most
    ``limit`` nodes and gains ``node_count``. Everything else is shared with
    ``snap``, not copied. A ``page`` key says what was cut: ``offset``,
    ``limit``, ``total`` (rows in each table before the cut: ``workers``,
    ``health``, ``breakers``, ``catalog``, ``per_node``, ``per_tenant``),
    ``nodes`` (the largest of those) and ``live_workers``.
    """
    for name, value, least in (("offset", offset, 0), ("limit", limit, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
    end = offset + limit
    out = dict(snap)
    total: dict[str, int] = {}
    for key in ("workers", "health", "breakers"):
        rows = snap[key]
        total[key] = len(rows)
        out[key] = rows[offset:end]
    catalog = snap["catalog"]
    models: dict[str, list[dict[str, Any]]] = {}
    seen = 0
    for model, deployments in catalog["models"].items():
        lo, hi = max(offset - seen, 0), min(end - seen, len(deployments))
        if lo < hi:
            models[model] = deployments[lo:hi]
        seen += len(deployments)
    total["catalog"] = seen
    out["catalog"] = {**catalog, "models": models}
    stats = dict(snap["stats"])
    for key in ("per_node", "per_tenant"):
        table = stats[key]
        total[key] = len(table)
        stats[key] = dict(itertools.islice(table.items(), offset, end))
    out["stats"] = stats
    policy = snap["policy"]
    out["policy"] = {
        **policy,
        "regions": [
            {**r, "nodes": r["nodes"][:limit], "node_count": len(r["nodes"])}
            for r in policy["regions"]
        ],
    }
    out["page"] = {
        "offset": offset,
        "limit": limit,
        "total": total,
        "nodes": max(total.values()),
        "live_workers": sum(1 for w in snap["workers"] if w.get("alive")),
    }
    return out


class SnapshotCache:
    """One snapshot shared by every reader, rebuilt in slices at a bounded rate.

    :meth:`get` returns the last snapshot while it is fresh; otherwise it
    starts one :meth:`Telemetry.build` and every caller meanwhile waits for
    that same build. A snapshot stays fresh for ``min_interval`` seconds, or
    longer when building it cost more (:meth:`max_age`): however many
    dashboards poll, building snapshots takes at most about ``share`` of the
    event loop, and each slice of a build at most ``budget`` seconds.

    Parameters
    ----------
    telemetry : Telemetry
        What to build from.
    min_interval : float
        Seconds a snapshot is served before a newer one is built.
    share : float
        The most of the loop's time building snapshots may take, in (0, 1].
    budget : float
        Seconds per slice (:meth:`Telemetry.build`).
    clock : callable
        Monotonic seconds, for freshness.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        min_interval: float = 0.25,
        share: float = 0.1,
        budget: float = SLICE_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(min_interval, bool) or not isinstance(min_interval, (int, float)) or not (
            0 <= min_interval < math.inf
        ):
            raise ValueError(f"min_interval: expected finite seconds >= 0, got {min_interval!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not (
            0 < share <= 1
        ):
            raise ValueError(f"share: expected a fraction in (0, 1], got {share!r}")
        self.telemetry = telemetry
        self.min_interval = float(min_interval)
        self.share = float(share)
        self.budget = float(budget)
        self._clock = clock
        self._latest: Built | None = None
        self._done_at = -math.inf
        self._task: asyncio.Task[Built] | None = None
        self.builds = 0

    @property
    def latest(self) -> Built | None:
        """The last snapshot built (None before the first)."""
        return self._latest

    @property
    def building(self) -> bool:
        """Whether a build is in progress."""
        return self._task is not None and not self._task.done()

    def max_age(self) -> float:
        """Seconds the current snapshot is served before a newer one is built.

        Building takes ``cost`` seconds of the loop; waiting ``cost * (1 - share)
        / share`` before the next keeps building to ``share`` of it (``share=1``
        with ``min_interval=0``: every request builds anew).
        """
        cost = self._latest.cost if self._latest is not None else 0.0
        return max(self.min_interval, cost * (1.0 - self.share) / self.share)

    async def get(self) -> Built:
        """The current snapshot: the cached one while fresh, else the next build's."""
        task = self._task
        if task is None or task.done():
            latest = self._latest
            if latest is not None and self._clock() - self._done_at < self.max_age():
                return latest
            task = self._task = asyncio.ensure_future(self._build())
        # shield: one impatient caller must not cancel the build the others await.
        return await asyncio.shield(task)

    async def _build(self) -> Built:
        built = await self.telemetry.build(budget=self.budget)
        self._latest, self._done_at = built, self._clock()
        self.builds += 1
        return built

    async def close(self) -> None:
        """Cancel a build in progress (a server stopping)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


_TELEMETRY: weakref.WeakKeyDictionary[Gateway, Telemetry] = weakref.WeakKeyDictionary()
_TELEMETRY_LOCK = threading.Lock()


def telemetry_for(gateway: Gateway) -> Telemetry:
    """The one :class:`Telemetry` of ``gateway``, created (and subscribed) on first use.

    It lives as long as the gateway: it holds the gateway only weakly.
    """
    with _TELEMETRY_LOCK:
        found = _TELEMETRY.get(gateway)
        if found is None:
            found = _TELEMETRY[gateway] = Telemetry(gateway)
        return found


def snapshot(gateway: Gateway) -> dict[str, Any]:
    """``telemetry_for(gateway).snapshot()``: the gateway's state as plain data.

    Rates and transitions accumulate from the first call (or from the
    :class:`~fedgate.telemetry.server.TelemetryServer` start) on. See the
    module docstring for the keys.
    """
    return telemetry_for(gateway).snapshot()
