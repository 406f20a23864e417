"""Prometheus metrics of a gateway: a collector over its snapshot, served over HTTP.

::

    scraper ──HTTP GET /metrics──► PrometheusExporter (prometheus_client's server thread,
                                     │                 a registry of its own)
                                     └─► _GatewayCollector.collect()
                                           └─ read(): the server's shared snapshot
                                              (SnapshotCache: built in slices on the
                                              gateway's event loop; TelemetryServer._read_on_loop)

Started by :class:`~fedgate.telemetry.server.TelemetryServer` when given a
``prometheus_port``. ``prometheus_client`` is imported only then.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fedgate.telemetry.snapshots import _num

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["PrometheusExporter", "render"]


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
            ("fedgate_refused_workers", "Worker READYs refused: node id held, or outside "
             "their key's grant", "refused_workers"),
            ("fedgate_refused_handshakes", "Worker connections refused: untrusted CURVE key",
             "refused_handshakes"),
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

        refused = CounterMetricFamily(
            "fedgate_refused_worker_reasons", "Worker READYs refused, per reason",
            labels=["reason"],
        )  # fmt: skip
        for reason, count in stats["refused_by_reason"].items():
            refused.add_metric([reason], float(count))
        yield refused
        handshakes = CounterMetricFamily(
            "fedgate_refused_endpoint_handshakes", "Connections refused at the CURVE handshake "
            "(no key, or an untrusted one), per endpoint", labels=["endpoint"],
        )  # fmt: skip
        for endpoint, count in stats.get("refused_handshakes_by_endpoint", {}).items():
            handshakes.add_metric([endpoint], float(count))
        yield handshakes
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
        tenants = snap.get("tenants", [])
        rejected = CounterMetricFamily(
            "fedgate_tenant_rejected", "Requests refused over a tenant quota, per limit",
            labels=["tenant", "limit"],
        )  # fmt: skip
        for metric, doc, key in (
            ("fedgate_tenant_in_flight", "Requests of the tenant in flight", "in_flight"),
            ("fedgate_tenant_waiting", "Requests of the tenant in the fair queue", "waiting"),
        ):
            gauge = GaugeMetricFamily(metric, doc, labels=["tenant"])
            for row in tenants:
                gauge.add_metric([row["tenant"]], float(row[key]))
            yield gauge
        for row in tenants:
            for limit, count in row["rejected"].items():
                rejected.add_metric([row["tenant"], limit], float(count))
        yield rejected

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


def render(snapshot: dict[str, Any]) -> bytes:
    """``snapshot`` in Prometheus's text format (the HTTP front's ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(lambda: snapshot))
    return generate_latest(registry)


class PrometheusExporter:
    """Serves ``read()``'s snapshots as Prometheus metrics on ``127.0.0.1:PORT/metrics``.

    Parameters
    ----------
    read : callable
        Returns a snapshot (without the routing section); called on the
        scrape thread, once per scrape.
    """

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        from prometheus_client import CollectorRegistry

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayCollector(read))
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while serving, else None."""
        if self._http is None:
            return None
        return f"http://127.0.0.1:{self._http.server_port}/metrics"

    def start(self, port: int) -> None:
        """Serve on ``port`` (0: a free one).

        Raises
        ------
        OSError
            The port cannot be bound.
        """
        from prometheus_client import start_http_server

        try:
            self._http, self._thread = start_http_server(port, "127.0.0.1", self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve Prometheus metrics on 127.0.0.1:{port}: {exc}") from exc

    async def stop(self) -> None:
        """Stop serving and close the port. Idempotent."""
        if self._http is not None:
            http, thread = self._http, self._thread
            self._http = self._thread = None
            # shutdown() waits for serve_forever's poll loop: not on the event loop.
            await asyncio.to_thread(http.shutdown)
            http.server_close()
            if thread is not None:
                await asyncio.to_thread(thread.join, 5.0)
