"""Serve a gateway's snapshots over ZeroMQ (and Prometheus over HTTP) from its event loop.

::

    TelemetryClient ──[envelope…, b"snapshot" | b"ping"]──► ROUTER ── _serve() task
      (`fedgate top`) ◄──[envelope…, MessagePack reply]───┘         └─► reply_for()
                                                                          └─► Telemetry.snapshot()
    _sampler() task ── every sample_interval ──► Telemetry.sample()   (the counter ring)
    prometheus_port ──► PrometheusExporter ── scrape thread ──► _read_on_loop() ──► snapshot

Wraps a :class:`~fedgate.gateway.gateway.Gateway` from the outside, through
its one :class:`~fedgate.telemetry.snapshots.Telemetry`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from fedgate.telemetry import DEFAULT_ENDPOINT
from fedgate.telemetry.client import TelemetryTimeout
from fedgate.telemetry.prometheus import PrometheusExporter
from fedgate.telemetry.snapshots import SCHEMA_VERSION, telemetry_for
from fedgate.transport.bind import bind_router

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fedgate.gateway import Gateway

__all__ = ["TelemetryServer"]

log = logging.getLogger("fedgate.telemetry")

_MAX_REQUEST_BYTES = 1024


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
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not (0 < seconds < math.inf)
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
        self._metrics: PrometheusExporter | None = None
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
        return None if self._metrics is None else self._metrics.url

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
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            await metrics.stop()
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
        metrics = PrometheusExporter(self._read_on_loop)
        self.registry = metrics.registry
        metrics.start(port)
        self._metrics = metrics
        self.telemetry.metrics_url = self.metrics_url
