"""A worker's link to one gateway: its DEALER socket, the pump that drives it, its registration.

The worker connects one DEALER per gateway (the gateway binds a ROUTER). The
socket is read and written by a :class:`~fedgate.transport.pump.Pump`
(``fedgate/transport/pump.py``: the read loop on the event loop's
file-descriptor callback, wake-ups, send batching and the backlog of frames
the socket cannot take yet — the same pump the gateway uses). Replies made
while the pump reads leave together at the end of its pass; a frame the
socket cannot take waits in the backlog, in order, and the task that sent it
waits until it has left (backpressure: a slow gateway slows the backend down;
the backlog holds at most one frame per task plus the newest control frame).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from fedgate.transport.protocol import MAX_FRAME_BYTES, socket_max_bytes
from fedgate.transport.pump import Out, Pump

__all__ = ["RECV_BATCH", "Link", "connect"]

# Receive batch per pass: a flood of requests must not starve the tasks
# already serving (nor the heartbeat).
RECV_BATCH = 512


def connect(
    ctx: zmq.Context[Any],
    endpoint: str,
    *,
    routing_id: bytes,
    send_hwm: int,
    recv_hwm: int,
    heartbeat_interval: float,
    max_frame_bytes: int,
    curve: Mapping[Any, Any] | None = None,
) -> zmq.Socket[Any]:
    """A DEALER connected to a gateway's ROUTER (``curve``: its CURVE client options)."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    for option, value in (curve or {}).items():
        sock.setsockopt(option, value)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, send_hwm)
    sock.setsockopt(zmq.RCVHWM, recv_hwm)
    # Bounded, but never below the default frame bound's: the peer is our own
    # gateway, and a REQUEST over this worker's own bound must be read to be
    # answered (bad_input, for its id) rather than cut the connection.
    sock.setsockopt(zmq.MAXMSGSIZE, socket_max_bytes(max(max_frame_bytes, MAX_FRAME_BYTES)))
    # Queue only to live connections: a reply for a gateway that is gone
    # waits (bounded by the deadline) instead of filling a dead pipe.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    ivl = max(1, int(heartbeat_interval * 1000))
    # A gateway restarted on its port has this worker back within two
    # heartbeat intervals (R26): the reconnect backoff never grows past half
    # an interval, and the heartbeat waiting for the connection leaves as
    # soon as it is up (the gateway answers it with Reannounce).
    sock.setsockopt(zmq.RECONNECT_IVL, min(100, max(10, ivl // 4)))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, min(1000, max(10, ivl // 2)))
    # Transport heartbeats only notice a dead TCP peer so the DEALER
    # reconnects; liveness towards the gateway is the application heartbeat.
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
    sock.connect(endpoint)
    return sock


class Link:
    """One gateway: its pump (socket and send backlog) and registration state.

    ``on_message(link, payload)``, ``on_malformed(link, why)`` and
    ``on_error(exc)`` are the worker's; the pump calls them.
    """

    __slots__ = (
        "endpoint",
        "fire_pending",
        "gateway_id",
        "index",
        "pump",
        "refused",
        "unanswered",
        "welcomed",
    )

    def __init__(
        self,
        index: int,
        endpoint: str,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[Any],
        on_message: Callable[[Link], Callable[[bytes, bytes], object]],
        on_malformed: Callable[[Link, str], object],
        on_error: Callable[[BaseException], object],
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self.welcomed = False
        self.refused = False
        # READYs sent since the last Welcome: a gateway silent for long is
        # unreachable, or refusing this worker's CURVE handshake (which says nothing).
        self.unanswered = 0
        self.gateway_id: str | None = None
        self.fire_pending: Out | None = None
        self.pump = Pump(
            loop,
            sock,
            on_message(self),
            lambda _identity, why: on_malformed(self, why),
            routed=False,
            batch=RECV_BATCH,
            on_error=on_error,
        )

    @property
    def closed(self) -> bool:
        return self.pump.closed

    def fire(self, frame: bytes) -> None:
        """Send a periodic or control frame without waiting.

        Only the newest one may wait for the socket: a heartbeat queued behind a
        blocked pipe is replaced by the next, so an unreachable gateway costs
        one pending frame, not one per interval. It waits ahead of the replies
        the socket could not take yet (never behind a stream's tokens): these
        frames say nothing about any request, so order does not bind them.
        """
        pending = self.fire_pending
        if pending is not None:
            pending.frame = None
        self.fire_pending = self.pump.send_first(frame)
