"""The gateway's own settings: :class:`GatewayConfig` (retries, deadlines, queue bounds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

from fedgate.transport import protocol as wire
from fedgate.validation import (
    DAY,
    Backoff,
    Fraction,
    FrameBytes,
    Grace,
    Hwm,
    InputBytes,
    InvalidParameterError,
    Parsed,
    Period,
    Timeout,
    count,
    seconds,
    validate,
)

__all__ = ["GatewayConfig", "HttpConfig", "listen_address", "parse_listen"]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How the gateway retries, times out and bounds its queues (durations in seconds).

    Each field's bounds are declared by its annotation (:mod:`fedgate.validation`);
    a value outside them is an :class:`~fedgate.validation.InvalidParameterError`
    naming the field and the value.

    Parameters
    ----------
    max_retries : int
        Further attempts after the first, each on a node not yet tried.
    retry_delay : float
        Base backoff before a retry; doubles per retry, with ±50 % jitter.
    request_timeout : float
        Deadline of a request that sets none itself.
    max_deadline : float
        The longest deadline a request may set (at least ``request_timeout``).
        A request asking for more is refused with ``ValueError`` before any
        worker is contacted, not clamped: a caller that needs a week learns
        it at once instead of failing after an hour, and a client cannot hold
        a node's slot for the wire's 31 years.
    retry_budget_ratio, retry_budget_min : float, int
        Requests retrying at once may be at most ``max(min, ratio × active)``,
        so a failing fleet gets no retry storm.
    max_input_bytes : int
        Larger inputs are rejected before any worker is contacted.
    max_frame_bytes : int
        Larger frames from workers are dropped and counted; it is also the
        socket's ``MAXMSGSIZE``, so a peer sending a larger frame is
        disconnected by libzmq before the frame is buffered.
    send_hwm : int
        Bound of the ROUTER's per-worker send queue (a full queue is a typed
        :class:`BackpressureError`, never a silent drop).
    stream_buffer : int
        Tokens buffered per stream for a slow reader before the stream ends
        with :class:`BackpressureError` (bounded memory).
    stream_buffer_bytes : int
        The same bound in bytes (frames as received; one frame always fits an
        empty buffer): 4 096 tokens of 256 KiB must not hold 1 GB.
    stall_timeout : float, optional
        An attempt that receives no frame for this long fails as a stall.
    monitor_interval : float
        How often heartbeats and stalls are checked.
    recent_routes : int
        Routing decisions kept for the dashboard.
    dead_grace : float
        A worker lost (missed heartbeats, connection gone) for this long is
        retired: its node leaves the catalog and the router and is no longer
        listed. Until then it is listed as not alive, and routed around.
    max_queued : int
        Requests that may wait for a free node slot when every eligible node
        is at its concurrency limit; one more is a :class:`BackpressureError`.
    """

    max_retries: Annotated[int, count(0, 100)] = 3
    retry_delay: Backoff = 0.1
    request_timeout: Timeout = 30.0
    max_deadline: Timeout = 3600.0
    retry_budget_ratio: Fraction = 0.2
    retry_budget_min: Annotated[int, count(0, 100_000)] = 3
    max_input_bytes: InputBytes = 8 * 1024 * 1024
    max_frame_bytes: FrameBytes = wire.MAX_FRAME_BYTES
    send_hwm: Hwm = 100_000
    stream_buffer: Annotated[int, count(1, 10_000_000)] = 65_536
    stream_buffer_bytes: Annotated[int, count(1024, 1 << 40)] = 32 * 1024 * 1024
    stall_timeout: Timeout | None = None
    monitor_interval: Period = 0.05
    recent_routes: Annotated[int, count(0, 100_000)] = 256
    max_queued: Annotated[int, count(0, 10_000_000)] = 10_000
    dead_grace: Grace = 60.0

    def __post_init__(self) -> None:
        validate(self)
        if self.request_timeout > self.max_deadline:
            raise InvalidParameterError(
                "GatewayConfig",
                "request_timeout",
                self.request_timeout,
                f"expected at most max_deadline ({self.max_deadline:g}s), "
                f"got {self.request_timeout!r}",
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GatewayConfig:
        """Build from a config file's table; an unknown key is rejected by name."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(
                    f"GatewayConfig: unknown key {key!r}; expected one of {sorted(known)}"
                )
        return cls(**data)


def parse_listen(value: Any) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), port 0-65535; returned as given."""
    if not isinstance(value, str):
        raise TypeError(value)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(value)
    return value


def listen_address(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), IPv6 brackets removed."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


Listen = Annotated[str, Parsed(parse_listen, what="HOST:PORT, e.g. '127.0.0.1:8080'")]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The ``[http]`` table: where the front door listens and what it bounds.

    Parameters
    ----------
    listen : str
        ``HOST:PORT`` (port 0: a free one).
    max_body_bytes : int
        Largest request body; a larger one is refused with 413.
    idle_timeout : float
        Seconds a connection may sit idle between requests, and the most a
        client may take to send a request's head (from connecting) or its
        body: a slowloris client is dropped after it (the body: 408).
    """

    listen: Listen = "127.0.0.1:8080"
    max_body_bytes: Annotated[int, count(1024, 1 << 30)] = 4 << 20
    idle_timeout: Annotated[float, seconds(gt=0.0, le=DAY)] = 75.0

    def __post_init__(self) -> None:
        validate(self)
