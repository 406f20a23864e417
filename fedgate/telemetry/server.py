"""Serve a gateway's snapshots over ZeroMQ (and Prometheus over HTTP) from its event loop.

::

    TelemetryClient ──[envelope…, command]──► ROUTER ── _serve() task
      (`fedgate top`) ◄──[envelope…, MessagePack reply]──┘   └─► one task per snapshot request
                                                                  └─► reply_for()
                               SnapshotCache.get() ◄────────────────┘
                                 └─ one Telemetry.build() at a time, in slices of the loop,
                                    shared by every client; encodings kept per snapshot
    _sampler() task ── every sample_interval ──► Telemetry.sample()   (the counter ring)
    prometheus_port ──► PrometheusExporter ── scrape thread ──► _read_on_loop() ──► the cache

Commands: ``b"ping"``; ``b"snapshot"`` (the whole snapshot);
``b"snapshot offset=N limit=M"`` (a page: every per-node table cut to rows
``[N, N + M)``, see :func:`~fedgate.telemetry.snapshots.page`; either key may
be left out, ``limit`` defaults to :data:`~fedgate.telemetry.snapshots.PAGE_SIZE`).

Wraps a :class:`~fedgate.gateway.gateway.Gateway` from the outside, through
its one :class:`~fedgate.telemetry.snapshots.Telemetry`.

With ``[trust] operators = DIR`` the socket is a CURVE server (SPEC §5, R31):
only a dashboard holding an operator key of that directory completes the
handshake (``TelemetryClient(key=…, gateway_key=…)``, ``fedgate top --key``);
any other is refused before a command is read, gets nothing, and is counted
in ``stats().refused_handshakes_by_endpoint["telemetry"]``. An ``inproc://``
endpoint (only this process reaches it) runs without CURVE. Prometheus binds
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from fedgate.telemetry import DEFAULT_ENDPOINT
from fedgate.telemetry.client import TelemetryTimeout
from fedgate.telemetry.prometheus import PrometheusExporter
from fedgate.telemetry.snapshots import (
    PAGE_SIZE,
    SCHEMA_VERSION,
    SnapshotCache,
    page,
    telemetry_for,
)
from fedgate.transport import curve
from fedgate.transport.bind import bind_router

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from fedgate.gateway import Gateway

__all__ = ["TelemetryServer"]

log = logging.getLogger("fedgate.telemetry")

_MAX_REQUEST_BYTES = 1024
# Snapshot requests waiting for a build at once; more are told the server is busy.
_MAX_PENDING = 256
# Encoded replies (whole, pages) kept per snapshot.
_MEMO = 32
_ZERO_COPY = 64 * 1024
_COMMANDS = "expected a command b'snapshot' [offset=N] [limit=M] or b'ping'"


def _parse(command: bytes) -> tuple[int, int] | str | None:
    """``b"snapshot …"`` → None (whole) or (offset, limit); anything else → an error text."""
    words = command.split()
    if not words or words[0] != b"snapshot":
        shown = command[:64]
        message = f"{_COMMANDS}, got {shown!r}"
        if len(command) > 64:
            message += f" ({len(command)} bytes)"
        return message
    if len(words) == 1:
        return None
    options = {"offset": 0, "limit": PAGE_SIZE}
    for word in words[1:]:
        key, sep, value = word.decode(errors="replace").partition("=")
        least = 0 if key == "offset" else 1
        if not sep or key not in options or not value.isdigit() or int(value) < least:
            return f"{_COMMANDS}: offset an int >= 0, limit an int >= 1, got {word[:64]!r}"
        options[key] = int(value)
    return options["offset"], options["limit"]


def _header(n: int, small: int, short: int) -> bytes:
    """A MessagePack array (``small=0x90, short=0xDC``) or map (0x80, 0xDE) header of ``n``."""
    if n < 16:
        return bytes([small | n])
    if n < 1 << 16:
        return bytes([short]) + n.to_bytes(2, "big")
    return bytes([short + 1]) + n.to_bytes(4, "big")


async def encode_sliced(value: Any, budget: float, rows: int = 256) -> bytes:
    """``msgspec.msgpack.encode(value)``, the same bytes, yielding to the loop between pieces.

    A whole snapshot of 10 000 nodes is megabytes: encoded in one call it
    would hold the loop for tens of milliseconds. Maps and long lists are
    encoded a piece at a time (MessagePack is a concatenation of its parts:
    a header, then each key and value, each item) and the loop gets a turn
    whenever ``budget`` seconds have gone by.
    """
    parts: list[bytes] = []
    began = time.perf_counter()

    async def turn() -> None:
        nonlocal began
        if time.perf_counter() - began >= budget:
            await asyncio.sleep(0)
            began = time.perf_counter()

    async def walk(item: Any) -> None:
        if isinstance(item, dict) and all(isinstance(k, str) for k in item):
            parts.append(_header(len(item), 0x80, 0xDE))
            for key, sub in item.items():
                parts.append(msgspec.msgpack.encode(key))
                await walk(sub)
        elif isinstance(item, list) and len(item) > rows:
            parts.append(_header(len(item), 0x90, 0xDC))
            for i in range(0, len(item), rows):
                chunk = item[i : i + rows]
                encoded = msgspec.msgpack.encode(chunk)
                parts.append(encoded[len(_header(len(chunk), 0x90, 0xDC)) :])  # items only
                await turn()
        else:
            parts.append(msgspec.msgpack.encode(item))
            await turn()

    await walk(value)
    return b"".join(parts)


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
    min_interval, share : float
        Snapshot freshness (:class:`~fedgate.telemetry.snapshots.SnapshotCache`):
        one snapshot serves every client for at least ``min_interval``
        seconds, and building snapshots takes at most about ``share`` of the
        event loop, however many clients poll.

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
        min_interval: float = 0.25,
        share: float = 0.1,
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
        self.cache = SnapshotCache(self.telemetry, min_interval=min_interval, share=share)
        self._pending: set[asyncio.Task[None]] = set()
        self._endpoint: str | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics: PrometheusExporter | None = None
        self.registry: CollectorRegistry | None = None
        self.requests = 0
        self.errors = 0
        self.refused_handshakes = 0  # connections refused at the CURVE handshake
        trust = gateway.trust_state
        self._operators = trust.operators if trust is not None else None
        self._pair = trust.pair if trust is not None else None
        self._auth: Any = None

    @property
    def secured(self) -> bool:
        """Whether dashboards must present an operator key (``[trust] operators``)."""
        return self._operators is not None and not self._bind.startswith("inproc://")

    @property
    def endpoint(self) -> str:
        """The bound endpoint, its port resolved (the requested one before :meth:`start`)."""
        return self._endpoint or self._bind

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT/metrics`` while Prometheus is served, else None."""
        return None if self._metrics is None else self._metrics.url

    @property
    def pending(self) -> int:
        """Snapshot requests received and not yet answered."""
        return len(self._pending)

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
        options: dict[Any, Any] = {zmq.LINGER: 0, zmq.MAXMSGSIZE: 64 * 1024, zmq.SNDHWM: 1000}
        if self.secured:
            assert self._operators is not None and self._pair is not None
            # Up before the bind: a handshake without a ZAP handler would be let in.
            self._auth = curve.start_authenticator(ctx, self._operators, curve.OPERATOR_DOMAIN)
            options.update(curve.server_options(self._pair, curve.OPERATOR_DOMAIN))
        try:
            sock, (self._endpoint,) = bind_router(ctx, [self._bind], what="telemetry",
                                                  options=options)  # fmt: skip
        except BaseException:
            self._stop_auth()
            ctx.term()
            raise
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
        if self.secured:
            monitor = sock.get_monitor_socket(curve.HANDSHAKE_REFUSED)
            self._tasks.append(
                asyncio.create_task(self._refusals(monitor), name="fedgate-telemetry-refusals")
            )
        log.info("telemetry for %s on %s", self._gateway.gateway_id, self._endpoint)

    async def stop(self) -> None:
        """Stop serving; close the socket and the Prometheus server. Idempotent."""
        tasks = [*self._tasks, *self._pending]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._pending.clear()
        await self.cache.close()
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None
        self._stop_auth()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._metrics is not None:
            metrics, self._metrics = self._metrics, None
            await metrics.stop()
        self.telemetry.telemetry_endpoint = None
        self.telemetry.metrics_url = None

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    async def _refusals(self, monitor: zmq.asyncio.Socket) -> None:
        """Count the handshakes refused: a dashboard without an operator key gets nothing."""
        try:
            while True:
                await monitor.recv_multipart()  # every event asked for is a refusal
                self.refused_handshakes += 1
                self._gateway.refused_handshake("telemetry")
                # A refused dashboard reconnects every few hundred ms: log the first few.
                if self.refused_handshakes <= 10:
                    log.warning("telemetry %s refused a connection: no operator key or an "
                                "untrusted one", self._endpoint)  # fmt: skip
        finally:
            monitor.close(0)

    # ------------------------------------------------------------ serving

    async def reply_for(self, command: bytes) -> bytes:
        """The encoded reply to one command (never raises).

        A snapshot comes from :attr:`cache`: built in slices, shared with
        every client asking meanwhile, encoded once per snapshot and page.
        """
        if command == b"ping":
            return msgspec.msgpack.encode({"pong": True, "gateway": self._gateway.gateway_id})
        parsed = _parse(command)
        if isinstance(parsed, str):
            self.errors += 1
            return msgspec.msgpack.encode({"error": parsed, "schema": SCHEMA_VERSION})
        try:
            built = await self.cache.get()
            memo = built.memo.get(parsed)
            if memo is None:
                if parsed is None:
                    # One encoding for every client asking meanwhile, in slices too.
                    memo = asyncio.ensure_future(encode_sliced(built.data, self.cache.budget))
                else:
                    memo = msgspec.msgpack.encode(page(built.data, *parsed))
                if len(built.memo) < _MEMO or parsed is None:
                    built.memo[parsed] = memo
            if isinstance(memo, bytes):
                return memo
            reply: bytes = await asyncio.shield(memo)
            return reply
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a snapshot must not take the server down
            log.exception("telemetry snapshot failed")
            self.errors += 1
            message = f"snapshot failed: {type(exc).__name__}: {exc}"
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
            envelope, command = frames[:-1], bytes(frames[-1])
            if len(command) > _MAX_REQUEST_BYTES:
                self.errors += 1
                self._send(sock, envelope, msgspec.msgpack.encode({
                    "error": f"expected a command of at most {_MAX_REQUEST_BYTES} bytes, "
                             f"got {len(command)} bytes",
                    "schema": SCHEMA_VERSION,
                }))  # fmt: skip
            elif len(self._pending) >= _MAX_PENDING:
                self.errors += 1
                self._send(sock, envelope, msgspec.msgpack.encode({
                    "error": f"busy: {len(self._pending)} snapshot requests waiting; retry",
                    "schema": SCHEMA_VERSION,
                }))  # fmt: skip
            else:
                # Off the receive loop: a build in progress must not hold up pings,
                # nor one slow build be repeated for each request queued behind it.
                task = asyncio.create_task(self._answer(sock, envelope, command))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _answer(
        self, sock: zmq.asyncio.Socket, envelope: list[bytes], command: bytes
    ) -> None:
        self._send(sock, envelope, await self.reply_for(command))

    def _send(self, sock: zmq.asyncio.Socket, envelope: list[bytes], reply: bytes) -> None:
        if self._sock is not sock:
            return  # stopped meanwhile
        try:
            # Zero-copy for a whole snapshot (megabytes): copying it for each of the
            # clients woken by the same build would hold the loop that much longer.
            copy = len(reply) < _ZERO_COPY
            sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK, copy=copy)
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
        """The shared snapshot (built in slices on the gateway's loop), from the scrape thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("telemetry server is not running")

        async def read() -> dict[str, Any]:
            return (await self.cache.get()).data

        future = asyncio.run_coroutine_threadsafe(read(), loop)
        try:
            return future.result(self._scrape_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TelemetryTimeout(
                f"gateway event loop did not answer a scrape within {self._scrape_timeout:g}s"
            ) from None

    async def prometheus_text(self) -> bytes:
        """The Prometheus exposition of the shared snapshot, read on the loop (HTTP front)."""
        from fedgate.telemetry.prometheus import render

        return render((await self.cache.get()).data)

    def _start_prometheus(self, port: int) -> None:
        metrics = PrometheusExporter(self._read_on_loop)
        self.registry = metrics.registry
        metrics.start(port)
        self._metrics = metrics
        self.telemetry.metrics_url = self.metrics_url
