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
                       ``StreamInterruptedError`` …) or ``BadRequest``
=====================  ======================================================

A client that disconnects cancels its requests (the worker is told to stop).
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

from fedgate.transport.bind import bind_router
from fedgate.types import Capability, InferenceRequest, PrivacyLevel, QoSRequirements, RegionId

if TYPE_CHECKING:
    from fedgate.gateway.gateway import Gateway

__all__ = ["INGRESS_MAX_ACTIVE", "Ingress"]

INGRESS_MAX_ACTIVE = 10_000
"""Requests an ingress runs at once; more are answered ``Overloaded``."""

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
        Requests run at once; beyond it a request is answered ``Overloaded``.
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
        self._active: dict[asyncio.Task[None], bytes] = {}
        self._decoder = msgspec.msgpack.Decoder(_Request)
        self._encoder = msgspec.msgpack.Encoder()
        self.served = 0
        self.rejected = 0

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
        self._reader = asyncio.create_task(self._read(sock), name="fedgate-ingress")

    async def stop(self) -> None:
        """Cancel what runs, close the socket. Idempotent."""
        tasks = [t for t in (self._reader, *self._active) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            if len(frames) < 2:
                continue
            envelope, payload = frames[:-1], frames[-1]
            try:
                req = self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                self.rejected += 1
                await self._send(envelope, {"id": None, "error": "BadRequest", "message": str(exc)})
                continue
            if len(self._active) >= self._max_active:
                self.rejected += 1
                busy = f"{self._max_active} requests running"
                await self._send(envelope, {"id": req.id, "error": "Overloaded", "message": busy})
                continue
            task = asyncio.create_task(self._serve(envelope, req))
            self._active[task] = envelope[0]
            task.add_done_callback(self._active.pop)

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
            await self._send(
                envelope, {"id": rid, "error": type(exc).__name__, "message": str(exc)}
            )
            return
        self.served += 1
        await self._send(envelope, done)
