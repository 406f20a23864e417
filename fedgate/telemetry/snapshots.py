"""The snapshot: one gateway's state as plain data, built from its public surface.

::

    Gateway ──read──► Telemetry.snapshot() ──► plain dict (schema below)
      stats(), workers(),        │
      recent_routes, catalog,    └─ keeps what the gateway forgets: the last breaker
      health, breaker, router       transitions and a ring of counter samples (rates)

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
stats          every :class:`~fedgate.gateway.stats.GatewayStats` field; ``per_node``
               and ``per_tenant`` as dicts of counters
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

import collections
import dataclasses
import enum
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from fedgate.types import Capability, InferenceRequest, QoSRequirements, RegionId

if TYPE_CHECKING:
    from fedgate.federation.breaker import BreakerTransition
    from fedgate.gateway import Gateway

__all__ = [
    "PROBE_NOTE",
    "SCHEMA_VERSION",
    "Telemetry",
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

_PROBE_ID = "fedgate-telemetry-probe"
_MAX_CANDIDATES = 64
_RECENT_ROUTES = 64


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

    def _catalog(self, gw: Gateway) -> dict[str, Any]:
        models: dict[str, list[dict[str, Any]]] = {}
        count = 0
        for model, dep in gw.catalog.deployments():
            models.setdefault(str(model), []).append(
                {"node": str(dep.node_id), "region": str(dep.region_id),
                 "capabilities": [str(c) for c in dep.capabilities]}
            )  # fmt: skip
            count += 1
        for deployments in models.values():
            deployments.sort(key=lambda d: d["node"])  # registration order is a race
        return {
            "models": dict(sorted(models.items())),
            "capabilities": sorted(str(c) for c in gw.catalog.capabilities()),
            "deployments": count,
        }

    def _workers(self, gw: Gateway) -> list[dict[str, Any]]:
        return [
            {key: _plain(value) for key, value in worker.items()}
            for worker in sorted(gw.workers(), key=lambda w: str(w["node"]))
        ]

    def _health(self, gw: Gateway) -> list[dict[str, Any]]:
        health = gw.health
        now = health.clock()
        return [
            {
                "node": str(st.node_id),
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
            }
            for st in health.all_statuses()
        ]

    def _breakers(self, gw: Gateway) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        breaker = gw.breaker
        statuses = breaker.all_statuses()  # polls: due time-driven transitions land first
        now = breaker.clock()
        rows = [
            {
                "node": str(st.node_id),
                "state": st.state.name,
                "failures": st.failures,
                "probes": st.probes,
                "trips": st.trips,
                "opened_age": _age(now, st.opened_at),
                "open_timeout": _num(st.open_timeout),
                "time_to_reset": _num(st.time_to_reset),
                "last_failure_age": _age(now, st.last_failure),
            }
            for st in statuses
        ]
        transitions = [
            {"node": str(t.node_id), "old": t.old.name, "new": t.new.name, "age": _age(now, t.at)}
            for t in reversed(list(self._transitions))
        ]
        return rows, transitions

    def _routing(self, gw: Gateway, wall_now: float) -> dict[str, Any]:
        recent = list(gw.recent_routes)[-_RECENT_ROUTES:]
        recent.reverse()
        breakdown: dict[str, list[dict[str, Any]]] = {}
        for cap in sorted(gw.catalog.capabilities()):
            probe = InferenceRequest(
                Capability.parse(cap), b"", qos=QoSRequirements(), request_id=_PROBE_ID
            )
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
                for c in gw.router.candidates(probe)[:_MAX_CANDIDATES]
            ]
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

    def _stats(self, gw: Gateway) -> dict[str, Any]:
        stats = gw.stats()
        out: dict[str, Any] = {}
        for f in dataclasses.fields(stats):
            value = getattr(stats, f.name)
            if isinstance(value, dict):
                out[f.name] = {str(k): _fields(v) for k, v in sorted(value.items())}
            else:
                out[f.name] = _plain(value)
        return out

    def _policy(self, gw: Gateway) -> dict[str, Any]:
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
        nodes_in: dict[str, list[str]] = {}
        for node in gw.catalog.nodes():
            region = gw.catalog.region_of(node)
            if region is not None:
                nodes_in.setdefault(str(region), []).append(str(node))
        for worker in gw.workers():
            nodes = nodes_in.setdefault(str(worker["region"]), [])
            if str(worker["node"]) not in nodes:
                nodes.append(str(worker["node"]))
        regions = [
            {"region": region, "clearance": router.clearance_of(RegionId(region)).name,
             "nodes": sorted(nodes)}
            for region, nodes in sorted(nodes_in.items())
        ]  # fmt: skip
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

    def snapshot(self, *, routing: bool = True) -> dict[str, Any]:
        """The gateway's state now, as plain data (the module docstring's schema).

        Call it on the gateway's event loop (the gateway's counters are
        plain attributes). Takes a counter sample first when one is due.

        Parameters
        ----------
        routing : bool
            Include the routing section (the per-capability breakdown runs
            the scoring kernel once per capability; Prometheus skips it).
        """
        gw = self.gateway
        self.sample()
        wall_now = self._wall()
        breakers, transitions = self._breakers(gw)
        history, rates = self._history()
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
            "catalog": self._catalog(gw),
            "workers": self._workers(gw),
            "health": self._health(gw),
            "breakers": breakers,
            "transitions": transitions,
            "routing": self._routing(gw, wall_now) if routing else None,
            "stats": self._stats(gw),
            "rates": rates,
            "history": history,
            "policy": self._policy(gw),
            "config": self._config(gw),
        }


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
