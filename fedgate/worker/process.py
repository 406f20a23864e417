"""One node: a worker that serves a backend to one or more gateways over ZeroMQ.

The worker connects one DEALER per gateway (the gateway binds a ROUTER),
announces itself with Ready until a Welcome comes back, and from then on sends
a Heartbeat every interval. Heartbeats are sent by a task on the worker's own
asyncio loop, on purpose: libzmq's transport heartbeat (also enabled, to notice
a dead TCP peer) is answered by libzmq's I/O thread even while the loop is
stuck, and a stuck loop serves nobody. A gateway that does not know the worker
(it restarted; the DEALER reconnected by itself) answers a heartbeat with
Reannounce, and the worker sends Ready again.

Each Request runs as its own task, up to ``max_concurrency`` at once (beyond
that: Error ``overloaded`` at once). The task drives the backend and sends one
Partial per chunk of tokens, then Final; every reply goes back on the socket
the request came from. Cancel and the attempt's deadline cancel the task, which
answers Error ``cancelled`` / ``deadline``. Exactly one Final or Error answers
every accepted Request — even a request cancelled before its task first ran.
A backend that can hand over its whole answer at once (``complete(req)``, as
the synthetic backend at full speed does) is answered inline, with the same
frames and no task: nothing is left to cancel or time out.

The sockets are plain pyzmq sockets, one :class:`~fedgate.worker.link.Link`
per gateway, each driven by the socket pump the gateway uses too
(``fedgate/transport/pump.py``): read from the loop's file-descriptor callback
(no future per message, no task per socket), written with non-blocking sends.
A frame the socket cannot take yet waits in the link's backlog, in order, and
the task that sent it waits until it has left (backpressure: a slow gateway
slows the backend down; the backlog holds at most one frame per task plus the
newest control frame).

Stopping (:meth:`Worker.stop`, SIGTERM/SIGINT in the CLI): send Disconnect,
accept nothing new (Error ``shutdown``), stop heartbeating, let in-flight
requests finish for up to ``drain_timeout`` seconds, fail the rest with Error
``shutdown``, close the sockets. :meth:`Worker.run` returns the exit status:
0 after a stop, 3 when a gateway refused the registration, 1 if an internal
loop died.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

import zmq
import zmq.asyncio

from fedgate._version import __version__
from fedgate.errors import WorkerError
from fedgate.transport import curve
from fedgate.transport.protocol import (
    ERR_BACKEND,
    ERR_BAD_INPUT,
    ERR_CANCELLED,
    ERR_DEADLINE,
    ERR_INTERNAL,
    ERR_OVERLOADED,
    ERR_SHUTDOWN,
    ERR_UNSUPPORTED,
    MAX_FRAME_BYTES,
    Cancel,
    Disconnect,
    Error,
    Final,
    Heartbeat,
    Partial,
    ProtocolError,
    Ready,
    Reannounce,
    Refuse,
    Request,
    Welcome,
    decode_gateway_message,
    encode,
    error,
    new_worker_id,
    peek_ids,
)
from fedgate.validation import (
    CapabilityNames,
    Concurrency,
    ConnectEndpoints,
    Cost,
    FrameBytes,
    Grace,
    HeartbeatInterval,
    Hwm,
    KeywordOptions,
    ModelNames,
    NodeName,
    NonEmpty,
    Switch,
    seconds,
    validate,
)
from fedgate.worker.backends import Backend, BackendRequest, create_backend
from fedgate.worker.link import Link, connect

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_REFUSED", "Worker", "WorkerConfig", "WorkerStats"]

log = logging.getLogger("fedgate.worker")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3
# Seconds of READYs without an answer before the worker says a gateway is silent.
SILENT_WARNING = 10.0

_MESSAGE_CHARS = 1024
_REQUEST_TAG = Request.__struct_config__.tag


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs; validated on construction (``ValueError`` names the field).

    Each field's bounds are declared by its annotation (:mod:`fedgate.validation`);
    lists are stored as tuples, capabilities in lower case.

    Parameters
    ----------
    gateways : sequence of str
        ZeroMQ endpoints of the gateways' ROUTER sockets (``tcp://host:port``,
        ``ipc://path``, ``inproc://name``); one DEALER connects to each.
    node : str
        This node's id (letters, digits, ``_.:@-``; at most 128 characters).
    region : str
        The region the node runs in (same characters). Its privacy clearance
        is the gateway's configuration, never the worker's claim.
    models : sequence of str
        Models served; a request that pins another model is ``unsupported``.
    capabilities : sequence of str
        Capabilities served (``transcribe``, ``generate``, custom names …).
    backend : str
        Backend name (``synthetic``, ``openai``, ``python`` or a registered one).
    backend_options : mapping
        Keyword options for the backend's factory.
    gpu : bool
        Announced as a GPU node.
    cost : float
        Announced cost (≥ 0).
    max_concurrency : int
        Requests served at once; more are answered ``overloaded``.
    heartbeat_interval : float
        Seconds between heartbeats (and between Ready repeats until Welcome).
    drain_timeout : float
        Seconds in-flight requests may take to finish after a stop.
    send_hwm, recv_hwm : int
        ZeroMQ high-water marks (messages queued per socket): bounded memory,
        and a slow gateway slows the backend down instead of growing a queue.
    max_frame_bytes : int
        Larger frames from a gateway are dropped unread.
    close_linger : float
        Seconds the last replies and Disconnect may take to leave at close.
    key : str or None
        This worker's CURVE secret key file (``fedgate keys generate``): the
        link runs CURVE, and the gateway knows the node by this key's grant.
    gateway_key : str or None
        The gateways' public key file (given with ``key``, never alone).
    """

    gateways: ConnectEndpoints
    node: NodeName
    region: NodeName
    models: ModelNames
    capabilities: CapabilityNames
    backend: NonEmpty = "synthetic"
    backend_options: KeywordOptions = field(default_factory=dict)
    gpu: Switch = False
    cost: Cost = 1.0
    max_concurrency: Concurrency = 64
    heartbeat_interval: HeartbeatInterval = 1.0
    drain_timeout: Grace = 5.0
    send_hwm: Hwm = 10_000
    recv_hwm: Hwm = 10_000
    max_frame_bytes: FrameBytes = MAX_FRAME_BYTES
    close_linger: Annotated[float, seconds(ge=0.0, le=60.0)] = 0.5
    key: NonEmpty | None = None
    gateway_key: NonEmpty | None = None

    def __post_init__(self) -> None:
        validate(self)
        if (self.key is None) != (self.gateway_key is None):
            raise ValueError(
                "key, gateway_key: expected both (a CURVE link) or neither, "
                f"got key={self.key!r}, gateway_key={self.gateway_key!r}"
            )


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker's life (read them any time; they only grow)."""

    requests: int = 0  # Request frames received
    completed: int = 0  # answered by Final
    errors: dict[str, int] = field(default_factory=dict)  # answered by Error, per code
    malformed_frames: int = 0  # dropped: not a valid gateway message
    undecodable_requests: int = 0  # of those, REQUESTs answered with Error bad_input
    unexpected_messages: int = 0  # valid but out of place (a Welcome for another node …)
    duplicate_requests: int = 0  # a (rid, attempt) already running on that gateway link
    unknown_cancels: int = 0  # Cancel for nothing running (it finished already)
    heartbeats_sent: int = 0
    readies_sent: int = 0
    tokens_sent: int = 0


class _Active:
    """One request attempt being served by a task."""

    __slots__ = ("deadline", "key", "link", "reason", "replied", "started", "task", "timer")

    def __init__(self, link: Link, key: tuple[int, str, int], deadline: float) -> None:
        self.link = link
        self.key = key
        self.deadline = deadline
        self.reason: str | None = None  # why WE cancelled it: cancelled / deadline / shutdown
        self.replied = False
        self.started = False  # produced its first chunk (else it counts as queued)
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class Worker:
    """A worker serving one backend to one or more gateways.

    Parameters
    ----------
    config : WorkerConfig
        What to serve and where.
    backend : Backend, optional
        A ready backend; by default one is built from ``config.backend`` and
        ``config.backend_options`` (now, so bad options fail before any socket).
    context : zmq.Context or zmq.asyncio.Context, optional
        Share a context (needed for ``inproc://`` gateways); by default the
        worker owns one and terminates it when it stops.

    Examples
    --------
    In-process, e.g. in a test::

        worker = Worker(WorkerConfig(["tcp://127.0.0.1:5555"], "n1", "r1",
                                     ["m"], ["generate"], heartbeat_interval=0.1))
        async with worker:                 # runs worker.run() in a task
            await worker.wait_welcomed(5.0)
            ...
        # leaving the block stops it (drain) and waits for run() to return
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        backend: Backend | None = None,
        context: zmq.Context[Any] | zmq.asyncio.Context | None = None,
    ) -> None:
        if not isinstance(config, WorkerConfig):
            raise TypeError(f"config: expected a WorkerConfig, got {type(config).__name__}")
        self.config = config
        self.backend: Backend = (
            backend
            if backend is not None
            else create_backend(config.backend, **config.backend_options)
        )
        self.worker_id = new_worker_id()
        # The gateway sends a node's requests to this identity: a random part
        # no dashboard shows keeps another process, whatever it read there,
        # from connecting as it once this process is gone.
        self.routing_id = f"{config.node}/{self.worker_id}/{secrets.token_hex(8)}".encode()
        self.stats = WorkerStats()
        self._context = context
        self._capabilities = frozenset(config.capabilities)
        self._models = frozenset(config.models)
        self._default_model = config.models[0]
        self._max_concurrency = config.max_concurrency
        self._links: list[Link] = []
        self._active: dict[tuple[int, str, int], _Active] = {}
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._welcomed = asyncio.Event()
        self._drain = True
        self._draining = False
        self._exit_code = EXIT_OK
        self._seq = 0
        self._ran = False
        self._task: asyncio.Task[int] | None = None
        self._last_malformed_log = -math.inf
        self._ready_frame = b""
        # A backend that can answer some requests without waiting (the synthetic
        # one at full speed) serves them inline, without a task (see _on_request).
        complete = getattr(self.backend, "complete", None)
        self._complete: Callable[[BackendRequest], list[list[bytes]] | None] | None = (
            complete if callable(complete) else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: asyncio.Future[None] | None = None
        # Continues a stream interrupted elsewhere from its delivered text (Backend docs).
        self._continuable = bool(getattr(self.backend, "continuable", False))

    def __repr__(self) -> str:
        return f"Worker(node={self.config.node!r}, worker_id={self.worker_id!r})"

    # --- public control ------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Requests being served now."""
        return len(self._active)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a gateway refused the registration)."""
        return self._stop.is_set()

    def welcomed_by(self) -> list[str | None]:
        """Per gateway (in ``config.gateways`` order): its id if it welcomed us, else None."""
        return [link.gateway_id if link.welcomed else None for link in self._links]

    async def wait_welcomed(self, timeout: float | None = None) -> None:
        """Wait until every gateway has welcomed this worker.

        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        await asyncio.wait_for(self._welcomed.wait(), timeout)

    def stop(self, drain: bool = True) -> None:
        """Ask :meth:`run` to stop: drain in-flight requests (``drain=False``: fail them now).

        Call from the worker's event loop thread (signal handlers installed with
        ``loop.add_signal_handler`` run there). Calling again with
        ``drain=False`` cuts a running drain short.
        """
        if not drain:
            self._drain = False
            if self._draining:
                for entry in list(self._active.values()):
                    self._cancel(entry, ERR_SHUTDOWN)
        self._stop.set()

    async def __aenter__(self) -> Worker:
        self._task = asyncio.get_running_loop().create_task(self.run())
        started = asyncio.ensure_future(self._started.wait())
        await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()  # raises what run() raised
            raise RuntimeError("worker stopped before it started")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    # --- the loop ------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; return the exit status (0 stopped, 3 refused, 1 failed)."""
        if self._ran:
            raise RuntimeError("a Worker runs once; make a new one")
        self._ran = True
        cfg = self.config
        own_context = self._context is None
        # Plain (synchronous) sockets read from the loop's file-descriptor
        # callback: no future per receive or send, no task per socket. A shared
        # asyncio context is shadowed, so inproc:// endpoints still meet.
        ctx: zmq.Context[Any] = (
            zmq.Context() if self._context is None else zmq.Context.shadow(self._context)
        )
        background: list[asyncio.Task[None]] = []
        loop = self._loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        try:
            curve_options: dict[Any, Any] | None = None
            if cfg.key is not None and cfg.gateway_key is not None:
                curve_options = curve.client_options(
                    curve.load_pair(cfg.key), curve.load_public(cfg.gateway_key)
                )
            for index, endpoint in enumerate(cfg.gateways):
                sock = connect(
                    ctx,
                    endpoint,
                    routing_id=self.routing_id,
                    send_hwm=cfg.send_hwm,
                    recv_hwm=cfg.recv_hwm,
                    max_frame_bytes=cfg.max_frame_bytes,
                    heartbeat_interval=cfg.heartbeat_interval,
                    curve=curve_options,
                )
                self._links.append(
                    Link(index, endpoint, loop, sock, self._reader, self._malformed, self._fail)
                )
            self._ready_frame = encode(
                Ready(
                    cfg.node,
                    cfg.region,
                    self.worker_id,
                    list(cfg.models),
                    list(cfg.capabilities),
                    cfg.gpu,
                    cfg.cost,
                    cfg.max_concurrency,
                    bool(self.backend.resumable),
                    cfg.heartbeat_interval,
                    os.getpid(),
                    __version__,
                    self._continuable,
                )
            )
            log.info(
                "worker %s (node %s, region %s) serving %s with %r; gateways %s",
                self.worker_id,
                cfg.node,
                cfg.region,
                ", ".join(cfg.models),
                self.backend,
                ", ".join(cfg.gateways),
            )
            for link in self._links:
                link.pump.start()
                link.fire(self._ready_frame)
                self.stats.readies_sent += 1
            background.append(loop.create_task(self._heartbeat()))
            self._started.set()
            stop_wait = loop.create_task(self._stop.wait())
            watched: list[asyncio.Future[Any]] = [stop_wait, self._failure, *background]
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if stop_wait not in done:
                for fut in done:
                    exc = None if fut.cancelled() else fut.exception()
                    log.error("worker loop ended unexpectedly: %r", exc, exc_info=exc)
                self._exit_code = EXIT_FAILED
                self._drain = False
            await self._shutdown()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            leftovers = [e.task for e in self._active.values() if e.task is not None]
            for task in leftovers:
                task.cancel()  # only when run() itself was cancelled or a drain overran
            if leftovers:
                await asyncio.wait(leftovers, timeout=1.0)
            linger = int(cfg.close_linger * 1000)
            for link in self._links:
                link.pump.close(linger)
            try:
                await self.backend.aclose()
            except Exception:
                log.exception("closing the backend failed")
            if own_context:
                ctx.term()
        log.info("worker %s stopped (exit status %d)", self.worker_id, self._exit_code)
        return self._exit_code

    async def _shutdown(self) -> None:
        self._draining = True
        reason = "refused" if self._exit_code == EXIT_REFUSED else "stopping"
        frame = encode(Disconnect(self.config.node, self.worker_id, reason))
        for link in self._links:
            if not link.refused:
                link.fire(frame)
        if self._active:
            log.info("draining %d in-flight request(s)", len(self._active))
        if self._active and self._drain and self.config.drain_timeout > 0:
            tasks = [e.task for e in self._active.values() if e.task is not None]
            # stop(drain=False) during the wait cancels the entries, ending it early.
            await asyncio.wait(tasks, timeout=self.config.drain_timeout)
        left = list(self._active.values())
        for entry in left:
            self._cancel(entry, ERR_SHUTDOWN)
        tasks = [e.task for e in left if e.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=max(1.0, self.config.close_linger))

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.heartbeat_interval
        next_at = loop.time() + interval
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            next_at += interval
            if next_at < now:
                # The loop was blocked past a beat: resume the rhythm, no burst.
                next_at = now + interval
            # A draining worker keeps beating while it finishes in-flight work:
            # silence would make the gateway declare it dead and move that work.
            if self._draining and not self._active:
                return
            self._beat()

    def _beat(self) -> None:
        self._seq += 1
        frame = None
        for link in self._links:
            if link.refused:
                continue
            if link.welcomed:
                if frame is None:
                    queued = sum(1 for e in self._active.values() if not e.started)
                    frame = encode(
                        Heartbeat(
                            self.config.node, self.worker_id, self._seq, len(self._active), queued
                        )
                    )
                link.fire(frame)
                self.stats.heartbeats_sent += 1
            else:
                link.fire(self._ready_frame)
                self.stats.readies_sent += 1
                link.unanswered += 1
                beats = max(3, math.ceil(SILENT_WARNING / self.config.heartbeat_interval))
                if link.unanswered == beats:
                    self._silent(link)

    def _silent(self, link: Link) -> None:
        keyed = self.config.key is not None
        log.warning(
            "gateway %s has not answered node %s for %gs: it is unreachable, or it refuses "
            "this worker's connection (%s)",
            link.endpoint,
            self.config.node,
            SILENT_WARNING,
            "this worker's --key is not in its trusted keys, or --gateway-key is not its key"
            if keyed
            else "a gateway under [trust] needs --key and --gateway-key",
        )

    # --- sending -------------------------------------------------------------

    def _reply_later(self, link: Link, msg: Error) -> None:
        """Send a reply from synchronous code (it may wait for the socket; never replaced)."""
        self.stats.errors[msg.code] = self.stats.errors.get(msg.code, 0) + 1
        link.pump.send(encode(msg))

    # --- receiving -----------------------------------------------------------

    def _reader(self, link: Link) -> Callable[[bytes, bytes], None]:
        """The pump's message handler for ``link``: decode, then serve or control."""
        max_bytes = self.config.max_frame_bytes
        on_request = self._on_request
        on_cancel = self._on_cancel
        on_control = self._on_control
        malformed = self._malformed
        undecodable = self._undecodable

        def on_message(_identity: bytes, payload: bytes) -> None:
            try:
                msg = decode_gateway_message(payload, max_bytes)
            except ProtocolError as exc:
                malformed(link, str(exc))
                undecodable(link, payload, exc)
                return
            try:
                kind = type(msg)
                if kind is Request:
                    on_request(link, msg)  # type: ignore[arg-type]
                elif kind is Cancel:
                    on_cancel(link, msg)  # type: ignore[arg-type]
                else:
                    on_control(link, msg)
            except Exception:  # a bug in a handler must not end the pass
                log.exception(
                    "worker failed to handle %s from %s", type(msg).__name__, link.endpoint
                )

        return on_message

    def _fail(self, exc: BaseException) -> None:
        """The receive side broke: run() ends with EXIT_FAILED."""
        failure = self._failure
        if failure is not None and not failure.done():
            failure.set_exception(exc)

    def _malformed(self, link: Link, why: str) -> None:
        self.stats.malformed_frames += 1
        now = asyncio.get_running_loop().time()
        if now - self._last_malformed_log >= 1.0:  # at most one line a second under a flood
            self._last_malformed_log = now
            log.warning(
                "dropped a malformed frame from gateway %s: %s (%d dropped so far)",
                link.endpoint,
                why,
                self.stats.malformed_frames,
            )

    def _undecodable(self, link: Link, payload: bytes, exc: ProtocolError) -> None:
        """Answer a REQUEST this worker cannot decode for its id, when the id is readable.

        Dropped in silence, it would hold the gateway's attempt (and a slot of
        this node) until its deadline. ``bad_input``: not the node's fault, and
        not retried elsewhere (the next node would most likely refuse it too).
        """
        ids = peek_ids(payload)
        if ids is None or ids[0] != _REQUEST_TAG:
            return
        _, rid, attempt = ids
        self.stats.undecodable_requests += 1
        self._reply_later(
            link,
            error(
                rid,
                attempt,
                ERR_BAD_INPUT,
                f"node {self.config.node} cannot decode this request: {exc}",
            ),
        )

    def _on_control(self, link: Link, msg: object) -> None:
        node = self.config.node
        if isinstance(msg, Welcome):
            if msg.node != node:
                self.stats.unexpected_messages += 1
                log.warning(
                    "gateway %s welcomed node %r, but this is node %r: ignored",
                    link.endpoint,
                    msg.node,
                    node,
                )
                return
            link.unanswered = 0
            if not link.welcomed:
                log.info("gateway %s (%s) welcomed node %s", msg.gateway_id, link.endpoint, node)
            link.welcomed = True
            link.gateway_id = msg.gateway_id
            if all(lk.welcomed for lk in self._links):
                self._welcomed.set()
        elif isinstance(msg, Reannounce):
            link.welcomed = False
            self._welcomed.clear()
            if not self._draining:
                log.info("gateway %s asked node %s to announce again", link.endpoint, node)
                link.fire(self._ready_frame)
                self.stats.readies_sent += 1
        elif isinstance(msg, Refuse):
            if msg.node != node:
                self.stats.unexpected_messages += 1
                return
            log.error("gateway %s refused node %s: %s", link.endpoint, node, msg.reason)
            link.refused = True
            self._exit_code = EXIT_REFUSED
            self.stop(drain=False)
        else:  # pragma: no cover - the gateway decoder admits nothing else
            self.stats.unexpected_messages += 1

    def _on_request(self, link: Link, msg: Request) -> None:
        self.stats.requests += 1
        rid = msg.rid
        attempt = msg.attempt
        if self._draining or self._stop.is_set():
            self._reply_later(link, error(rid, attempt, ERR_SHUTDOWN, "worker is shutting down"))
            return
        key = (link.index, rid, attempt)
        if key in self._active:
            self.stats.duplicate_requests += 1
            return
        if len(self._active) >= self._max_concurrency:
            self._reply_later(
                link,
                error(
                    rid,
                    attempt,
                    ERR_OVERLOADED,
                    f"node {self.config.node} is at max concurrency {self._max_concurrency}",
                ),
            )
            return
        why = self._unsupported(msg)
        if why is not None:
            self._reply_later(link, error(rid, attempt, ERR_UNSUPPORTED, why))
            return
        req = BackendRequest(
            msg.request_id,
            msg.capability,
            msg.input,
            msg.tenant,
            msg.model if msg.model is not None else self._default_model,
            msg.resume_from,
            msg.stream,
            msg.delivered,
        )
        # Inline when the backend has the whole answer now and the socket is not
        # backed up (then the reply must wait its turn, which takes a task):
        # nothing to cancel and no deadline to run, so no task, no timer.
        complete = self._complete
        if complete is not None and not link.pump.backlog:
            chunks = complete(req)
            if chunks is not None:
                self._answer_now(link, msg, chunks)
                return
        entry = _Active(link, key, msg.deadline)
        self._active[key] = entry
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        task = loop.create_task(self._serve(entry, msg, req))
        entry.task = task
        entry.timer = loop.call_later(msg.deadline, self._cancel, entry, ERR_DEADLINE)
        task.add_done_callback(functools.partial(self._finish, entry))

    def _answer_now(self, link: Link, msg: Request, chunks: list[list[bytes]]) -> None:
        """Reply to a request whose chunks are all known: the frames _serve would send."""
        rid = msg.rid
        attempt = msg.attempt
        index = msg.resume_from
        send = link.pump.send
        if msg.stream:
            for chunk in chunks:
                if chunk:
                    send(encode(Partial(rid, attempt, index, chunk)))
                    index += len(chunk)
            output = b""
        else:
            parts = [token for chunk in chunks for token in chunk]
            index += len(parts)
            output = b"".join(parts)
        self.stats.tokens_sent += index - msg.resume_from
        send(encode(Final(rid, attempt, index, output)))
        self.stats.completed += 1

    def _unsupported(self, msg: Request) -> str | None:
        if msg.capability not in self._capabilities:
            return (
                f"node {self.config.node} does not serve capability {msg.capability!r} "
                f"(serves {', '.join(self.config.capabilities)})"
            )
        if msg.model is not None and msg.model not in self._models:
            return (
                f"node {self.config.node} does not serve model {msg.model!r} "
                f"(serves {', '.join(self.config.models)})"
            )
        continues = self._continuable and msg.delivered
        if msg.resume_from and not self.backend.resumable and not continues:
            return f"node {self.config.node}'s backend cannot resume a generation"
        return None

    def _on_cancel(self, link: Link, msg: Cancel) -> None:
        entry = self._active.get((link.index, msg.rid, msg.attempt))
        if entry is None:
            self.stats.unknown_cancels += 1
            return
        self._cancel(entry, ERR_CANCELLED)

    def _cancel(self, entry: _Active, reason: str) -> None:
        if entry.reason is None and entry.task is not None and not entry.task.done():
            entry.reason = reason
            entry.task.cancel()

    # --- serving one request -------------------------------------------------

    async def _serve(self, entry: _Active, msg: Request, req: BackendRequest) -> None:
        rid = msg.rid
        attempt = msg.attempt
        link = entry.link
        pump = link.pump
        send = pump.send
        stats = self.stats
        index = msg.resume_from
        try:
            chunks = self.backend.generate(req)
            try:
                if msg.stream:
                    async for chunk in chunks:
                        if not chunk:
                            continue
                        entry.started = True
                        # Backpressure: a frame the socket cannot take yet is
                        # waited for before the backend produces the next.
                        out = send(encode(Partial(rid, attempt, index, chunk)))
                        if out is not None:
                            await pump.sent(out)
                        index += len(chunk)
                    output = b""
                else:
                    parts: list[bytes] = []
                    async for chunk in chunks:
                        entry.started = True
                        parts.extend(chunk)
                        index += len(chunk)
                    output = b"".join(parts)
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            # The deadline still runs while Final waits for the socket: past it the
            # gateway has given up on this attempt, and Error "deadline" says so
            # (the Final is withdrawn unsent).
            stats.tokens_sent += index - msg.resume_from
            out = send(encode(Final(rid, attempt, index, output)))
            if out is not None:
                await pump.sent(out)
            entry.replied = True
            stats.completed += 1
            return
        except asyncio.CancelledError:
            if entry.reason is None:
                raise  # not ours (the worker is being torn down)
            reply = error(rid, attempt, entry.reason, self._reason_text(entry))
        except WorkerError as exc:
            reply = Error(
                rid,
                attempt,
                exc.code,
                str(exc)[:_MESSAGE_CHARS],
                exc.node_caused,
                min(max(float(exc.retry_after), 0.0), 3600.0),
                str(getattr(exc, "upstream_code", "") or "")[:128],
            )
        except Exception as exc:
            reply = error(
                rid, attempt, ERR_BACKEND, f"{type(exc).__name__}: {exc}"[:_MESSAGE_CHARS]
            )
        stats.tokens_sent += index - msg.resume_from
        out = send(encode(reply))
        if out is not None:
            await pump.sent(out)
        entry.replied = True
        stats.errors[reply.code] = stats.errors.get(reply.code, 0) + 1

    def _reason_text(self, entry: _Active) -> str:
        if entry.reason == ERR_DEADLINE:
            return f"deadline of {entry.deadline:.3f}s exceeded on node {self.config.node}"
        if entry.reason == ERR_CANCELLED:
            return "cancelled by the gateway"
        return f"node {self.config.node} is shutting down"

    def _finish(self, entry: _Active, task: asyncio.Task[None]) -> None:
        self._active.pop(entry.key, None)
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.replied:
            return
        if task.cancelled():
            # Cancelled before its first step (the coroutine never ran), or while
            # sending its own error reply: answer from here so that every
            # accepted request gets exactly one Final or Error.
            if entry.reason is not None:
                self._reply_later(
                    entry.link,
                    error(entry.key[1], entry.key[2], entry.reason, self._reason_text(entry)),
                )
            return
        exc = task.exception()
        if exc is not None:
            log.error("request %s failed inside the worker", entry.key[1], exc_info=exc)
            self._reply_later(
                entry.link,
                error(entry.key[1], entry.key[2], ERR_INTERNAL, f"{type(exc).__name__}: {exc}"),
            )
