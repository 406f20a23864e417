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

With ``[trust] clients = DIR`` the ingress is a CURVE server (SPEC §5, R31):
a client connects with a key of that directory (:class:`IngressClient`'s
``key`` and ``gateway_key``), or not at all — a client without CURVE, or with
an unknown key, is refused at the handshake, before one byte of a request is
read, and counted per endpoint in ``stats().refused_handshakes_by_endpoint``.
A request's tenant is then its client key's name (the authenticator's
``User-Id`` of the message), whatever its ``tenant`` field says.

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
import os
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

import msgspec
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from fedgate.errors import QuotaExceededError
from fedgate.transport import curve
from fedgate.transport.bind import bind_router
from fedgate.types import Capability, InferenceRequest, PrivacyLevel, QoSRequirements, RegionId

if TYPE_CHECKING:
    from fedgate.gateway.gateway import Gateway

__all__ = ["INGRESS_MAX_ACTIVE", "INGRESS_MAX_FRAMES", "Ingress", "IngressClient", "IngressError"]

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
        self.refused_handshakes = 0  # connections refused at the CURVE handshake
        trust = gateway.trust_state
        # CURVE when the gateway trusts client keys: the gateway's own key pair serves.
        self._clients = trust.clients if trust is not None else None
        self._pair = trust.pair if trust is not None else None
        self._auth: Any = None

    @property
    def secured(self) -> bool:
        """Whether clients must present a trusted CURVE key (``[trust] clients``)."""
        return self._clients is not None

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
        options: dict[Any, Any] = {
            zmq.LINGER: 0,
            # A client that went away must make the send fail (and cancel
            # its work), not vanish silently.
            zmq.ROUTER_MANDATORY: 1,
            zmq.MAXMSGSIZE: self._gateway.config.max_input_bytes + 65536,
        }
        events = zmq.EVENT_DISCONNECTED
        if self._clients is not None:
            assert self._pair is not None
            # Up before the bind: a handshake without a ZAP handler would be let in.
            self._auth = curve.start_authenticator(
                ctx, self._clients, curve.CLIENT_DOMAIN, names=True
            )
            options.update(curve.server_options(self._pair, curve.CLIENT_DOMAIN))
            events |= curve.HANDSHAKE_REFUSED
        try:
            sock, (self._endpoint,) = bind_router(ctx, [self._bind], what="ingress",
                                                  options=options)  # fmt: skip
        except BaseException:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            ctx.term()
            raise
        self._ctx, self._sock = ctx, sock
        monitor = self._monitor = sock.get_monitor_socket(events)
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
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        frames_read = 0
        secured = self._clients is not None
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
            if secured:
                # The credential's tenant, never the request's (R31): the ZAP
                # handler set the User-Id to the key's name at the handshake.
                req.tenant = cast(str, parts[-1].get("User-Id"))
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
            if event["event"] & curve.HANDSHAKE_REFUSED:
                self.refused_handshakes += 1
                self._gateway.refused_handshake("ingress")
                # A refused client reconnects every few hundred ms: log its first few only.
                if self.refused_handshakes <= 10:
                    log.warning("ingress %s refused a connection: no CURVE key or an "
                                "untrusted one (%s)", self.endpoint, zmq.Event(event["event"]).name)
                continue
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


class IngressError(RuntimeError):
    """An ingress answered a request with an error (``kind``: the gateway's error type name)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class IngressClient:
    """A client of a gateway's :class:`Ingress` (asyncio; requests may run concurrently).

    One DEALER connection; replies are matched to requests by ``id``. Against
    an ingress that runs CURVE (``[trust] clients``) pass ``key`` (this
    client's ``NAME.key_secret``, its public half in the gateway's clients
    directory: NAME is the tenant) and ``gateway_key`` (the gateway's public
    ``.key`` file). Without them, or with a key the gateway does not trust,
    the handshake is refused and no request leaves: each one times out.

    Parameters
    ----------
    endpoint : str
        The ingress endpoint (``fedgate gateway --ingress``).
    key, gateway_key : str or path, optional
        CURVE key files (both or neither).
    timeout : float
        Seconds a request waits for its answer (``TimeoutError`` after).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        key: str | os.PathLike[str] | None = None,
        gateway_key: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"endpoint: expected a ZeroMQ endpoint, got {endpoint!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self._options = curve.client_options_from_files(key, gateway_key)
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self._seq = 0

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            self._ctx = zmq.asyncio.Context()
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            for option, value in self._options.items():
                sock.setsockopt(option, value)
            sock.connect(self.endpoint)
            self._sock = sock
            self._reader = asyncio.create_task(self._read(sock), name="fedgate-ingress-client")
        return self._sock

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            reply = msgspec.msgpack.decode(await sock.recv())
            if isinstance(reply, dict):
                queue = self._waiting.get(str(reply.get("id")))
                if queue is not None:
                    queue.put_nowait(reply)

    async def _exchange(self, fields: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        if "id" not in fields or fields["id"] is None:
            self._seq += 1
            fields["id"] = f"c{os.getpid()}-{self._seq}"
        rid = fields["id"]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiting[rid] = queue
        try:
            await self._socket().send(self._encoder.encode(fields))
            while True:
                try:
                    reply = await asyncio.wait_for(queue.get(), self.timeout)
                except asyncio.TimeoutError:
                    raise TimeoutError(
                        f"ingress {self.endpoint} did not answer request {rid!r} within "
                        f"{self.timeout:g}s (is the gateway running? does it need a client "
                        "key: key= and gateway_key=?)"
                    ) from None
                if "error" in reply:
                    raise IngressError(str(reply["error"]), str(reply.get("message", "")))
                yield reply
                if reply.get("done"):
                    return
        finally:
            del self._waiting[rid]

    async def infer(self, capability: str, input: bytes = b"", **fields: Any) -> dict[str, Any]:
        """Run one request; return the ingress's ``done`` reply (``output``, ``node`` …).

        ``fields``: the request's other keys (``privacy``, ``model``, ``id`` …,
        :mod:`fedgate.gateway.ingress`). Raises :class:`IngressError` for an
        error reply, ``TimeoutError`` without an answer.
        """
        request = {"capability": capability, "input": input, **fields, "stream": False}
        async with contextlib.aclosing(self._exchange(request)) as replies:
            async for reply in replies:
                if reply.get("done"):
                    return reply
        raise IngressError("BadReply", "the ingress ended the request without a done reply")

    async def stream(
        self, capability: str, input: bytes = b"", **fields: Any
    ) -> AsyncGenerator[bytes, None]:
        """Run one request as a stream: yields each token as it arrives."""
        request = {"capability": capability, "input": input, **fields, "stream": True}
        async with contextlib.aclosing(self._exchange(request)) as replies:
            async for reply in replies:
                for token in reply.get("tokens", ()) if not reply.get("done") else ():
                    yield token

    async def close(self) -> None:
        """Close the connection (the ingress cancels what it still runs for this client)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def __aenter__(self) -> IngressClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
