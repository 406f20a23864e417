"""The ingress: how clients in other processes reach a gateway process.

A program embeds :class:`~fedgate.gateway.gateway.Gateway` and awaits ``infer``
directly; other processes reach a gateway process through its ingress
(``fedgate gateway --ingress ENDPOINT``, off by default). It is a ZeroMQ
ROUTER: a DEALER (or REQ) client sends one MessagePack map per request and
gets MessagePack maps back, each with the
request's ``id``:

=====================  ======================================================
request                ``id`` (str, required), ``capability`` (str, required),
                       ``input`` (bytes), ``tenant``, ``model``, ``origin``
                       (str), ``privacy`` (PUBLIC … RESTRICTED, default
                       INTERNAL), ``stream`` (bool), ``deadline`` (seconds)
reply, stream chunk    ``{"id", "tokens": [bytes, …]}`` (``stream`` only)
reply, done            ``{"id", "done": true, "tokens"}``; without ``stream``
                       also ``node``, ``region``, ``attempts``, ``latency``
                       and ``output`` (the whole answer)
reply, error           ``{"id", "error": "<type>", "message"}``: the gateway's
                       typed errors (``PrivacyViolationError``,
                       ``StreamInterruptedError`` …) or ``BadRequest``;
                       ``QuotaExceededError`` adds ``tenant``, ``limit`` and
                       ``retry_after`` (seconds)
=====================  ======================================================

A client that disconnects cancels its requests (the worker is told to stop):
the ingress watches its socket's connections (a socket monitor) and, when
one closes, cancels every request that arrived on it. A message of more than
:data:`INGRESS_MAX_FRAMES` frames is dropped unread (``rejected``), and the
reader yields to the requests it serves every :data:`_YIELD_FRAMES` frames, so
a flood of frames cannot starve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from fedgate.errors import QuotaExceededError
from fedgate.transport.bind import bind_router
from fedgate.types import Capability, InferenceRequest, PrivacyLevel, QoSRequirements, RegionId

if TYPE_CHECKING:
    from fedgate.gateway.gateway import Gateway

__all__ = ["INGRESS_MAX_ACTIVE", "INGRESS_MAX_FRAMES", "Ingress"]

INGRESS_MAX_ACTIVE = 10_000
"""Requests an ingress runs at once; more are answered ``Overloaded``."""

INGRESS_MAX_FRAMES = 4
"""Frames per client message at most: identity, a REQ's empty delimiter, the payload (one spare)."""

# Frames read before the reader yields to the loop: an awaited receive that
# finds data ready completes without yielding, so a flood would otherwise
# hold the loop for as long as it lasts.
_YIELD_FRAMES = 256

log = logging.getLogger("fedgate.gateway.ingress")


class _Request(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    capability: str
    input: bytes = b""
    tenant: str | None = None
    model: str | None = None
    origin: str | None = None
    privacy: str = "INTERNAL"
    stream: bool = False
    deadline: float | None = None


class Ingress:
    """Serve a gateway's ``infer``/``infer_stream`` to clients over ZeroMQ (module docstring).

    Parameters
    ----------
    gateway : Gateway
        A started gateway.
    endpoint : str
        Where to bind; ``tcp://127.0.0.1:*`` picks a free port (see :attr:`endpoint`).
    max_active : int
        Requests run at once; beyond it a request is answered ``Overloaded``,
        unless its client runs fewer than an equal share of them.
    """

    def __init__(
        self, gateway: Gateway, endpoint: str, *, max_active: int = INGRESS_MAX_ACTIVE
    ) -> None:
        self._gateway = gateway
        self._bind = endpoint
        self._max_active = max_active
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._endpoint: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._active: dict[asyncio.Task[None], bytes] = {}
        # Each client's running requests, and the connection (descriptor) it came on.
        self._by_client: dict[bytes, set[asyncio.Task[None]]] = {}
        self._fd_of: dict[bytes, int] = {}
        self._on_fd: dict[int, set[bytes]] = {}
        self._decoder = msgspec.msgpack.Decoder(_Request)
        self._encoder = msgspec.msgpack.Encoder()
        self.served = 0
        self.rejected = 0
        self.disconnect_cancels = 0  # requests cancelled because their client went away

    @property
    def endpoint(self) -> str:
        """The bound endpoint, its port resolved."""
        return self._endpoint or self._bind

    async def start(self) -> None:
        """Bind and start serving.

        Raises
        ------
        OSError
            The endpoint cannot be bound.
        """
        ctx = zmq.asyncio.Context()
        sock, (self._endpoint,) = bind_router(
            ctx,
            [self._bind],
            what="ingress",
            options={
                zmq.LINGER: 0,
                # A client that went away must make the send fail (and cancel
                # its work), not vanish silently.
                zmq.ROUTER_MANDATORY: 1,
                zmq.MAXMSGSIZE: self._gateway.config.max_input_bytes + 65536,
            },
        )
        self._ctx, self._sock = ctx, sock
        monitor = self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._reader = asyncio.create_task(self._read(sock), name="fedgate-ingress")
        self._watcher = asyncio.create_task(self._watch(monitor), name="fedgate-ingress-watch")

    async def stop(self) -> None:
        """Cancel what runs, close the socket. Idempotent."""
        tasks = [t for t in (self._reader, self._watcher, *self._active) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reader = self._watcher = None
        if self._monitor is not None and self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        frames_read = 0
        while True:
            parts = await sock.recv_multipart(copy=False)
            frames_read += len(parts)
            if frames_read >= _YIELD_FRAMES:
                frames_read = 0
                await asyncio.sleep(0)
            if len(parts) < 2 or len(parts) > INGRESS_MAX_FRAMES:
                self.rejected += 1  # dropped unread: no envelope we could answer safely
                continue
            envelope = [p.bytes for p in parts[:-1]]
            try:
                req = self._decoder.decode(parts[-1].buffer)
            except msgspec.DecodeError as exc:
                self.rejected += 1
                await self._send(envelope, {"id": None, "error": "BadRequest", "message": str(exc)})
                continue
            if len(self._active) >= self._max_active and not self._below_share(envelope[0]):
                self.rejected += 1
                busy = f"{self._max_active} requests running"
                await self._send(envelope, {"id": req.id, "error": "Overloaded", "message": busy})
                continue
            task = asyncio.create_task(self._serve(envelope, req))
            client = envelope[0]
            self._active[task] = client
            self._track(client, parts[-1].get(zmq.SRCFD), task)
            task.add_done_callback(self._done)

    def _below_share(self, client: bytes) -> bool:
        """Whether ``client`` runs fewer than its share of ``max_active`` (fairness: R32).

        When the ingress is full, a client below an equal share may still
        start a request, so one client's flood cannot lock the others out
        (the ingress then runs at most about twice ``max_active``).
        """
        clients = self._by_client
        mine = len(clients.get(client, ()))
        return mine < self._max_active / (len(clients) + (client not in clients))

    def _track(self, client: bytes, fd: int, task: asyncio.Task[None]) -> None:
        self._by_client.setdefault(client, set()).add(task)
        if self._fd_of.get(client) != fd:
            old = self._fd_of.get(client)
            if old is not None:
                self._on_fd.get(old, set()).discard(client)
            self._fd_of[client] = fd
            self._on_fd.setdefault(fd, set()).add(client)

    def _done(self, task: asyncio.Task[None]) -> None:
        client = self._active.pop(task, None)
        if client is None:
            return
        tasks = self._by_client.get(client)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:  # the client's last request: forget it (bounded maps)
                del self._by_client[client]
                fd = self._fd_of.pop(client, None)
                if fd is not None:
                    on_fd = self._on_fd.get(fd)
                    if on_fd is not None:
                        on_fd.discard(client)
                        if not on_fd:
                            del self._on_fd[fd]

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        """Cancel the requests of every client whose connection closed.

        libzmq reports the closed connection's descriptor; each request's
        message carried the descriptor it arrived on (``SRCFD``). The
        DISCONNECTED event is emitted before the descriptor is closed, so a new
        connection reusing it comes later; only a request the reader maps to
        the reused descriptor before this task has read the event could be
        cancelled with the old client's (a window of one loop pass).
        """
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            fd = int(event["value"])
            for client in self._on_fd.pop(fd, set()):
                self._fd_of.pop(client, None)
                for task in list(self._by_client.get(client, ())):
                    if not task.done():
                        task.cancel()  # down to the worker: the attempt sends CANCEL
                        self.disconnect_cancels += 1

    async def _send(self, envelope: list[bytes], reply: dict[str, Any]) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            await sock.send_multipart([*envelope, self._encoder.encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:  # the client is gone or not reading: stop its work
            return False
        return True

    async def _serve(self, envelope: list[bytes], req: _Request) -> None:
        rid = req.id
        try:
            request = InferenceRequest(
                Capability.parse(req.capability),
                req.input,
                qos=QoSRequirements(privacy=PrivacyLevel.parse(req.privacy)),
                request_id=rid,
                tenant_id=req.tenant,
                model=req.model,  # type: ignore[arg-type]
                deadline=req.deadline,
                origin=RegionId(req.origin) if req.origin is not None else None,
            )
        except (TypeError, ValueError) as exc:
            self.rejected += 1
            await self._send(envelope, {"id": rid, "error": "BadRequest", "message": str(exc)})
            return
        gw = self._gateway
        try:
            if req.stream:
                count = 0
                # An async generator: closing it at once stops the work on the worker.
                stream = cast("AsyncGenerator[bytes, None]", gw.infer_stream(request))
                async with contextlib.aclosing(stream) as tokens:
                    async for token in tokens:
                        count += 1
                        if not await self._send(envelope, {"id": rid, "tokens": [token]}):
                            return  # closing the stream cancels it on the worker
                done: dict[str, Any] = {"id": rid, "done": True, "tokens": count}
            else:
                resp = await gw.infer(request)
                done = {
                    "id": rid,
                    "done": True,
                    "node": str(resp.node_id),
                    "region": str(resp.region_id),
                    "tokens": resp.tokens,
                    "attempts": resp.attempts,
                    "latency": resp.latency,
                    "output": resp.output,
                }
        except (TypeError, ValueError) as exc:
            await self._send(envelope, {"id": rid, "error": "BadRequest", "message": str(exc)})
            return
        except Exception as exc:  # the gateway's typed errors go back to the client by name
            reply: dict[str, Any] = {"id": rid, "error": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, QuotaExceededError):  # tenants: when to come back, and why
                reply.update(tenant=exc.tenant, limit=exc.limit, retry_after=exc.retry_after)
            await self._send(envelope, reply)
            return
        self.served += 1
        await self._send(envelope, done)
