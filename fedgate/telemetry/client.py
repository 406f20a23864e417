"""Fetch a gateway's snapshots from its telemetry endpoint (what ``fedgate top`` polls).

::

    TelemetryClient ──DEALER: [request id, b"snapshot" | b"ping"]──► TelemetryServer (ROUTER)
        fetch() / fetch_sync()  ◄──[request id, MessagePack reply]──┘
        fetch_page(offset, limit): b"snapshot offset=N limit=M", per-node tables cut to a page
          no answer in time: TelemetryTimeout, and a fresh socket (lazy pirate)

Also :class:`TelemetryError` and :class:`TelemetryTimeout`, the errors of the
telemetry endpoint on either side.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from fedgate.telemetry import DEFAULT_ENDPOINT
from fedgate.telemetry.snapshots import PAGE_SIZE
from fedgate.transport import curve

__all__ = ["TelemetryClient", "TelemetryError", "TelemetryTimeout"]


class TelemetryError(RuntimeError):
    """A telemetry endpoint answered with an error, or with something unreadable."""


class TelemetryTimeout(TelemetryError, TimeoutError):
    """A telemetry endpoint did not answer in time (is the gateway running?)."""


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
    key, gateway_key : str or path, optional
        CURVE key files, both or neither: this operator's ``NAME.key_secret``
        (its public half in the gateway's ``[trust] operators`` directory)
        and the gateway's public ``.key``. A gateway with operators refuses a
        client without them at the handshake: every request times out.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: float = 1.0,
        *,
        key: str | os.PathLike[str] | None = None,
        gateway_key: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"endpoint: expected a ZeroMQ endpoint like {DEFAULT_ENDPOINT!r}, got {endpoint!r}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (0 < timeout < math.inf)
        ):
            raise ValueError(f"timeout: expected finite seconds > 0, got {timeout!r}")
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self._options = curve.client_options_from_files(key, gateway_key)
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
            "(is the gateway running with telemetry on that endpoint? does it need an "
            "operator key: --key and --gateway-key?)"
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
            for option, value in self._options.items():
                self._asock.setsockopt(option, value)
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
        """The gateway's current snapshot (see :mod:`fedgate.telemetry.snapshots`)."""
        return await self.request(b"snapshot")

    async def fetch_page(self, offset: int = 0, limit: int = PAGE_SIZE) -> dict[str, Any]:
        """One page of the snapshot: every per-node table cut to rows ``[offset, offset + limit)``.

        What ``fedgate top`` polls: its size does not grow with the federation.
        The ``page`` key gives the totals (see :func:`fedgate.telemetry.snapshots.page`).
        """
        for name, value, least in (("offset", offset, 0), ("limit", limit, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: expected an int >= {least}, got {value!r}")
        return await self.request(f"snapshot offset={offset} limit={limit}".encode())

    def request_sync(self, command: bytes) -> dict[str, Any]:
        """:meth:`request` for code without an event loop."""
        if self._sock is None:
            if self._ctx is None:
                self._ctx = zmq.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            for option, value in self._options.items():
                self._sock.setsockopt(option, value)
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
