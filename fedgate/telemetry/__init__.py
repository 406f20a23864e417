"""A running gateway's state, published for dashboards and Prometheus.

::

    Gateway ──read──► Telemetry.snapshot() ──► plain dict (schema below)
                         │                        │
                         │                        ├─► TelemetryServer: ZeroMQ ROUTER, b"snapshot"
                         │                        │     └─► TelemetryClient.fetch() ─► `fedgate top`
                         │                        └─► Prometheus collector (its own registry)
                         └─ keeps what the gateway forgets: the last breaker transitions
                            and a ring of counter samples (request rates, sparklines)

:class:`TelemetryServer` wraps a :class:`~fedgate.gateway.gateway.Gateway` from the
outside: it reads only the gateway's public surface (``stats()``,
``workers()``, ``recent_routes``, ``catalog``, ``health``, ``breaker``,
``router``), so a gateway needs no telemetry code of its own.

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
stats          every :class:`~fedgate.gateway.gateway.GatewayStats` field; ``per_node``
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

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import zmq
import zmq.asyncio

from fedgate.transport.bind import bind_router
from fedgate.types import Capability, InferenceRequest, QoSRequirements, RegionId

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from fedgate.federation.breaker import BreakerTransition
    from fedgate.gateway import Gateway

__all__ = [
    "DEFAULT_ENDPOINT",
    "PROBE_NOTE",
    "SCHEMA_VERSION",
    "Telemetry",
    "TelemetryClient",
    "TelemetryError",
    "TelemetryServer",
    "TelemetryTimeout",
    "snapshot",
    "telemetry_for",
]

log = logging.getLogger("fedgate.telemetry")

SCHEMA_VERSION = 1
"""Bumped when a key of the snapshot changes meaning or disappears."""

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where ``fedgate top`` looks for a gateway's telemetry by default."""

PROBE_NOTE = (
    "router's current view: candidates() for a representative request per capability "
    "(default QoS: INTERNAL privacy, prefer GPU, cost tolerance 50, no pinned model, "
    "no origin); real requests with other QoS may rank nodes differently"
)
"""What the routing breakdown is (it is not a record of a past decision)."""

_PROBE_ID = "fedgate-telemetry-probe"
_MAX_REQUEST_BYTES = 1024
_MAX_CANDIDATES = 64
_RECENT_ROUTES = 64


class TelemetryError(RuntimeError):
    """A telemetry endpoint answered with an error, or with something unreadable."""


class TelemetryTimeout(TelemetryError, TimeoutError):
    """A telemetry endpoint did not answer in time (is the gateway running?)."""


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
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 <= seconds < math.inf
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
    :class:`TelemetryServer` start) on. See the module docstring for the keys.
    """
    return telemetry_for(gateway).snapshot()


# ====================================================================== Prometheus


def _state_set(name: str, doc: str, rows: list[dict[str, Any]], states: tuple[str, ...]) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, doc, labels=["node", "state"])
    for row in rows:
        for state in states:
            family.add_metric([row["node"], state.lower()], 1.0 if row["state"] == state else 0.0)
    return family


class _GatewayCollector:
    """A prometheus_client collector reading the gateway at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._read()
        stats = snap["stats"]
        counters = (
            ("fedgate_requests", "Requests received", "total_requests"),
            ("fedgate_requests_succeeded", "Requests completed", "successful_requests"),
            ("fedgate_requests_failed", "Requests that ended in an error", "failed_requests"),
            ("fedgate_requests_cancelled", "Requests cancelled by the caller",
             "cancelled_requests"),
            ("fedgate_tokens", "Tokens delivered", "total_tokens"),
            ("fedgate_retries", "Retries (further attempts)", "retries"),
            ("fedgate_failovers", "Retries after a node-caused failure", "failovers"),
            ("fedgate_stream_resumes", "Streams continued on another node", "resumes"),
            ("fedgate_breaker_trips", "Breaker transitions into OPEN", "breaker_trips"),
            ("fedgate_local_rejections", "Attempts rejected by an open breaker",
             "local_rejections"),
            ("fedgate_stale_frames", "Frames of abandoned attempts dropped", "stale_frames"),
            ("fedgate_malformed_frames", "Malformed frames dropped", "malformed_frames"),
            ("fedgate_cancels_sent", "CANCEL frames sent to workers", "cancels_sent"),
            ("fedgate_refused_workers", "Workers refused: node id held", "refused_workers"),
        )  # fmt: skip
        for name, doc, key in counters:
            yield CounterMetricFamily(name, doc, value=float(stats[key]))
        gauges = (
            ("fedgate_active_requests", "Requests in flight", "active_requests"),
            ("fedgate_active_streams", "Streams in flight", "active_streams"),
            ("fedgate_workers", "Live workers", "workers"),
        )
        for name, doc, key in gauges:
            yield GaugeMetricFamily(name, doc, value=float(stats[key]))
        for name, doc, prefix in (
            ("fedgate_request_latency_seconds", "End-to-end latency percentiles", "latency"),
            ("fedgate_time_to_first_token_seconds", "Time to first token percentiles", "ttft"),
        ):
            family = GaugeMetricFamily(name, doc, labels=["quantile"])
            for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                value = _num(stats[f"{prefix}_{key}"])
                family.add_metric([q], math.nan if value is None else value)
            yield family

        per_node = stats["per_node"]
        for name, doc, key in (
            ("fedgate_node_requests", "Attempts sent to the node", "requests"),
            ("fedgate_node_successes", "Attempts the node completed", "successes"),
            ("fedgate_node_failures", "Node-caused failed attempts", "failures"),
            ("fedgate_node_tokens", "Tokens the node delivered", "tokens"),
        ):
            counter = CounterMetricFamily(name, doc, labels=["node"])
            for node, row in per_node.items():
                counter.add_metric([node], float(row[key]))
            yield counter
        per_tenant = CounterMetricFamily(
            "fedgate_tenant_requests", "Requests per tenant", labels=["tenant", "outcome"]
        )
        for tenant, row in stats["per_tenant"].items():
            per_tenant.add_metric([tenant, "total"], float(row["requests"]))
            per_tenant.add_metric([tenant, "ok"], float(row["successes"]))
            per_tenant.add_metric([tenant, "failed"], float(row["failures"]))
        yield per_tenant

        health = snap["health"]
        yield _state_set("fedgate_node_health_state", "Node health (1 for the current state)",
                         health, ("HEALTHY", "DEGRADED", "UNHEALTHY", "UNKNOWN"))  # fmt: skip
        latency = GaugeMetricFamily(
            "fedgate_node_latency_seconds", "Node latency percentiles (sliding window)",
            labels=["node", "quantile"],
        )  # fmt: skip
        for row in health:
            for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                value = row[key]
                latency.add_metric([row["node"], q], math.nan if value is None else value)
        yield latency
        breakers = snap["breakers"]
        yield _state_set("fedgate_node_breaker_state", "Node circuit breaker (1 for the current "
                         "state)", breakers, ("CLOSED", "OPEN", "HALF_OPEN"))  # fmt: skip
        failures = GaugeMetricFamily(
            "fedgate_node_breaker_failures", "Consecutive failures counted by the breaker",
            labels=["node"],
        )  # fmt: skip
        for row in breakers:
            failures.add_metric([row["node"]], float(row["failures"]))
        yield failures


# ====================================================================== server


class TelemetryServer:
    """Serve a gateway's snapshots over ZeroMQ (and optionally Prometheus over HTTP).

    Runs as a task on the gateway's event loop. The socket is a ROUTER: a
    request is a message whose last frame is the command — ``b"snapshot"``
    (the reply is the MessagePack-encoded snapshot), ``b"ping"`` (``{"pong":
    True, "gateway": id}``). Anything else gets ``{"error": "..."}`` and the
    server carries on. The frames before the command (a REQ socket's empty
    delimiter, a DEALER's correlation id) are echoed back, so REQ and DEALER
    clients both work.

    Parameters
    ----------
    gateway : Gateway
        The gateway to publish.
    endpoint : str
        ZeroMQ endpoint to bind; ``tcp://127.0.0.1:0`` (or ``:*``) picks a
        free port, resolved in :attr:`endpoint` after :meth:`start`.
    prometheus_port : int, optional
        Serve Prometheus metrics on ``http://127.0.0.1:PORT/metrics`` (0:
        a free port, see :attr:`metrics_url`), from a registry of its own.
    sample_interval : float
        How often the counter ring is sampled while nobody asks.
    scrape_timeout : float
        How long a Prometheus scrape waits for the event loop.

    Examples
    --------
    >>> async with gateway, TelemetryServer(gateway, "tcp://127.0.0.1:5556"):  # doctest: +SKIP
    ...     await asyncio.Event().wait()
    """

    def __init__(
        self,
        gateway: Gateway,
        endpoint: str = DEFAULT_ENDPOINT,
        prometheus_port: int | None = None,
        *,
        sample_interval: float = 0.25,
        scrape_timeout: float = 2.0,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"endpoint: expected a ZeroMQ endpoint like {DEFAULT_ENDPOINT!r}, got {endpoint!r}"
            )
        if prometheus_port is not None and (
            isinstance(prometheus_port, bool)
            or not isinstance(prometheus_port, int)
            or not 0 <= prometheus_port <= 65535
        ):
            raise ValueError(
                f"prometheus_port: expected a port 0-65535 or None, got {prometheus_port!r}"
            )
        for name, seconds in (
            ("sample_interval", sample_interval),
            ("scrape_timeout", scrape_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 < seconds < math.inf
            ):
                raise ValueError(f"{name}: expected finite seconds > 0, got {seconds!r}")
        # ZeroMQ spells "any free port" as *, the rest of the world as 0.
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self._bind = endpoint
        self._gateway = gateway
        self._prometheus_port = prometheus_port
        self._sample_interval = float(sample_interval)
        self._scrape_timeout = float(scrape_timeout)
        self.telemetry = telemetry_for(gateway)
        self._endpoint: str | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        self.registry: CollectorRegistry | None = None
        self.requests = 0
        self.errors = 0

    @property
    def endpoint(self) -> str:
        """The bound endpoint, its port resolved (the requested one before :meth:`start`)."""
        return self._endpoint or self._bind

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while Prometheus is served, else None."""
        if self._http is None:
            return None
        return f"http://127.0.0.1:{self._http.server_port}/metrics"

    @property
    def running(self) -> bool:
        return self._sock is not None

    async def __aenter__(self) -> TelemetryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the socket, start serving and sampling (and the Prometheus server).

        Raises
        ------
        OSError
            The endpoint or the Prometheus port cannot be bound.
        RuntimeError
            Already started.
        """
        if self._sock is not None:
            raise RuntimeError("telemetry server already started")
        self._loop = asyncio.get_running_loop()
        ctx = zmq.asyncio.Context()
        # A request is a word; anything larger is not a request worth reading.
        options = {zmq.LINGER: 0, zmq.MAXMSGSIZE: 64 * 1024, zmq.SNDHWM: 1000}
        sock, (self._endpoint,) = bind_router(ctx, [self._bind], what="telemetry", options=options)
        self._ctx, self._sock = ctx, sock
        self.telemetry.telemetry_endpoint = self._endpoint
        if self._prometheus_port is not None:
            try:
                self._start_prometheus(self._prometheus_port)
            except OSError:
                await self.stop()
                raise
        self.telemetry.sample(force=True)
        self._tasks = [
            asyncio.create_task(self._serve(sock), name="fedgate-telemetry"),
            asyncio.create_task(self._sampler(), name="fedgate-telemetry-sampler"),
        ]
        log.info("telemetry for %s on %s", self._gateway.gateway_id, self._endpoint)

    async def stop(self) -> None:
        """Stop serving; close the socket and the Prometheus server. Idempotent."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._http is not None:
            http, thread = self._http, self._http_thread
            self._http = self._http_thread = None
            # shutdown() waits for serve_forever's poll loop: not on the event loop.
            await asyncio.to_thread(http.shutdown)
            http.server_close()
            if thread is not None:
                await asyncio.to_thread(thread.join, 5.0)
        self.telemetry.telemetry_endpoint = None
        self.telemetry.metrics_url = None

    # ------------------------------------------------------------ serving

    def reply_for(self, command: bytes) -> bytes:
        """The encoded reply to one command (never raises)."""
        try:
            if command == b"snapshot":
                return msgspec.msgpack.encode(self.telemetry.snapshot())
            if command == b"ping":
                return msgspec.msgpack.encode({"pong": True, "gateway": self._gateway.gateway_id})
            shown = command[:64]
            message = f"expected a command b'snapshot' or b'ping', got {shown!r}"
            if len(command) > 64:
                message += f" ({len(command)} bytes)"
        except Exception as exc:  # a bug in a snapshot must not take the server down
            log.exception("telemetry snapshot failed")
            message = f"snapshot failed: {type(exc).__name__}: {exc}"
        self.errors += 1
        return msgspec.msgpack.encode({"error": message, "schema": SCHEMA_VERSION})

    async def _serve(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:  # the socket is gone: nothing left to serve
                log.warning("telemetry socket closed: %s", exc)
                return
            self.requests += 1
            if len(frames) < 2:  # no identity: cannot be answered
                self.errors += 1
                continue
            envelope, command = frames[:-1], frames[-1]
            if len(command) > _MAX_REQUEST_BYTES:
                self.errors += 1
                reply = msgspec.msgpack.encode({
                    "error": f"expected a command of at most {_MAX_REQUEST_BYTES} bytes, "
                             f"got {len(command)} bytes",
                    "schema": SCHEMA_VERSION,
                })  # fmt: skip
            else:
                reply = self.reply_for(bytes(command))
            try:
                await sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # client gone or its queue full: drop the reply
                log.debug("telemetry reply dropped: %s", exc)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self._sample_interval)
            try:
                self.telemetry.sample()
            except ReferenceError:
                return
            except Exception:  # keep sampling whatever one sample tripped over
                log.exception("telemetry sample failed")

    # ------------------------------------------------------------ Prometheus

    def _read_on_loop(self) -> dict[str, Any]:
        """A snapshot taken on the gateway's loop, from the scrape thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("telemetry server is not running")
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.telemetry.snapshot(routing=False))
                except BaseException as exc:
                    future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(self._scrape_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TelemetryTimeout(
                f"gateway event loop did not answer a scrape within {self._scrape_timeout:g}s"
            ) from None

    def _start_prometheus(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_GatewayCollector(self._read_on_loop))
        self.registry = registry
        try:
            self._http, self._http_thread = start_http_server(port, "127.0.0.1", registry)
        except OSError as exc:
            raise OSError(f"cannot serve Prometheus metrics on 127.0.0.1:{port}: {exc}") from exc
        self.telemetry.metrics_url = self.metrics_url


# ====================================================================== client


class TelemetryClient:
    """Fetch snapshots from a :class:`TelemetryServer`.

    Uses a DEALER socket per call style (async and sync) and the lazy-pirate
    pattern: a request not answered within ``timeout`` raises
    :class:`TelemetryTimeout` and the socket is replaced, so a gateway that
    comes back later is not flooded with the requests queued while it was away.

    Parameters
    ----------
    endpoint : str
        The server's endpoint, e.g. ``tcp://127.0.0.1:5556``.
    timeout : float
        Seconds to wait for an answer.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 1.0) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"endpoint: expected a ZeroMQ endpoint like {DEFAULT_ENDPOINT!r}, got {endpoint!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            0 < timeout < math.inf
        ):
            raise ValueError(f"timeout: expected finite seconds > 0, got {timeout!r}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self._seq = 0
        self._actx: zmq.asyncio.Context | None = None
        self._asock: zmq.asyncio.Socket | None = None
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None

    def _next_id(self) -> bytes:
        self._seq += 1
        return self._seq.to_bytes(8, "big")

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            data = msgspec.msgpack.decode(payload)
        except msgspec.DecodeError as exc:
            raise TelemetryError(
                f"expected a MessagePack reply from {self.endpoint}, got {payload[:32]!r}: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise TelemetryError(f"expected a map from {self.endpoint}, got {type(data).__name__}")
        if "error" in data:
            raise TelemetryError(f"telemetry at {self.endpoint}: {data['error']}")
        return data

    def _timeout_error(self, command: bytes) -> TelemetryTimeout:
        return TelemetryTimeout(
            f"gateway telemetry at {self.endpoint} did not answer "
            f"{command.decode(errors='replace')!r} within {self.timeout:g}s "
            "(is the gateway running with telemetry on that endpoint?)"
        )

    async def request(self, command: bytes) -> dict[str, Any]:
        """Send one command and return the decoded reply.

        Raises
        ------
        TelemetryTimeout
            No answer within ``timeout``.
        TelemetryError
            An error reply or an unreadable one.
        """
        if self._asock is None:
            if self._actx is None:
                self._actx = zmq.asyncio.Context()
            self._asock = self._actx.socket(zmq.DEALER)
            self._asock.setsockopt(zmq.LINGER, 0)
            self._asock.connect(self.endpoint)
        sock = self._asock
        rid = self._next_id()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            await sock.send_multipart([rid, command], flags=zmq.NOBLOCK)
            while True:
                left = deadline - loop.time()
                if left <= 0 or not await sock.poll(max(1, int(left * 1000))):
                    raise self._timeout_error(command)
                frames = await sock.recv_multipart()
                if len(frames) == 2 and frames[0] == rid:
                    return self._decode(frames[1])
                # A late reply to a request that already timed out: not ours.
        except (TelemetryTimeout, zmq.ZMQError) as exc:
            self._asock = None
            sock.close(0)
            if isinstance(exc, zmq.ZMQError):
                raise TelemetryError(f"telemetry at {self.endpoint}: {exc}") from exc
            raise

    async def fetch(self) -> dict[str, Any]:
        """The gateway's current snapshot (see :mod:`fedgate.telemetry`)."""
        return await self.request(b"snapshot")

    def request_sync(self, command: bytes) -> dict[str, Any]:
        """:meth:`request` for code without an event loop."""
        if self._sock is None:
            if self._ctx is None:
                self._ctx = zmq.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.endpoint)
        sock = self._sock
        rid = self._next_id()
        deadline = time.monotonic() + self.timeout
        try:
            sock.send_multipart([rid, command], flags=zmq.NOBLOCK)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(max(1, int(left * 1000))):
                    raise self._timeout_error(command)
                frames = sock.recv_multipart()
                if len(frames) == 2 and frames[0] == rid:
                    return self._decode(frames[1])
        except (TelemetryTimeout, zmq.ZMQError) as exc:
            self._sock = None
            sock.close(0)
            if isinstance(exc, zmq.ZMQError):
                raise TelemetryError(f"telemetry at {self.endpoint}: {exc}") from exc
            raise

    def fetch_sync(self) -> dict[str, Any]:
        """:meth:`fetch` for code without an event loop."""
        return self.request_sync(b"snapshot")

    def close(self) -> None:
        """Close the sockets (the client may be used again afterwards)."""
        for sock in (self._asock, self._sock):
            if sock is not None:
                sock.close(0)
        self._asock = self._sock = None
        for ctx in (self._actx, self._ctx):
            if ctx is not None:
                ctx.term()
        self._actx = self._ctx = None

    async def __aenter__(self) -> TelemetryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __enter__(self) -> TelemetryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
