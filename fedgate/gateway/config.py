"""The gateway's own settings: :class:`GatewayConfig` (retries, deadlines, queue bounds)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedgate.clock import to_seconds
from fedgate.transport import protocol as wire

__all__ = ["GatewayConfig"]


def _finite(name: str, value: Any, *, positive: bool = True, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    seconds = to_seconds(value, name)
    ok = math.isfinite(seconds) and (seconds > 0 if positive else seconds >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"GatewayConfig.{name}: expected a finite duration {bound}, got {value!r}")
    return seconds


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GatewayConfig.{name}: expected an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How the gateway retries, times out and bounds its queues (durations in seconds).

    Parameters
    ----------
    max_retries : int
        Further attempts after the first, each on a node not yet tried.
    retry_delay : float
        Base backoff before a retry; doubles per retry, with ±50 % jitter.
    request_timeout : float
        Deadline of a request that sets none itself.
    retry_budget_ratio, retry_budget_min : float, int
        Requests retrying at once may be at most ``max(min, ratio × active)``,
        so a failing fleet gets no retry storm.
    max_input_bytes : int
        Larger inputs are rejected before any worker is contacted.
    max_frame_bytes : int
        Larger frames from workers are dropped and counted.
    send_hwm : int
        Bound of the ROUTER's per-worker send queue (a full queue is a typed
        :class:`BackpressureError`, never a silent drop).
    stream_buffer : int
        Tokens buffered per stream for a slow reader before the stream ends
        with :class:`BackpressureError` (bounded memory).
    stall_timeout : float, optional
        An attempt that receives no frame for this long fails as a stall.
    monitor_interval : float
        How often heartbeats and stalls are checked.
    recent_routes : int
        Routing decisions kept for the dashboard.
    max_queued : int
        Requests that may wait for a free node slot when every eligible node
        is at its concurrency limit; one more is a :class:`BackpressureError`.
    """

    max_retries: int = 3
    retry_delay: float = 0.1
    request_timeout: float = 30.0
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 3
    max_input_bytes: int = 8 * 1024 * 1024
    max_frame_bytes: int = wire.MAX_FRAME_BYTES
    send_hwm: int = 100_000
    stream_buffer: int = 65_536
    stall_timeout: float | None = None
    monitor_interval: float = 0.05
    recent_routes: int = 256
    max_queued: int = 10_000

    def __post_init__(self) -> None:
        _count("max_retries", self.max_retries)
        object.__setattr__(
            self, "retry_delay", _finite("retry_delay", self.retry_delay, positive=False)
        )
        object.__setattr__(
            self, "request_timeout", _finite("request_timeout", self.request_timeout)
        )
        r = self.retry_budget_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 <= r <= 1):
            raise ValueError(
                f"GatewayConfig.retry_budget_ratio: expected a number in [0, 1], got {r!r}"
            )
        _count("retry_budget_min", self.retry_budget_min)
        _count("max_input_bytes", self.max_input_bytes, 1)
        _count("max_frame_bytes", self.max_frame_bytes, 64)
        _count("send_hwm", self.send_hwm, 1)
        _count("stream_buffer", self.stream_buffer, 1)
        _count("recent_routes", self.recent_routes, 0)
        _count("max_queued", self.max_queued, 0)
        object.__setattr__(
            self, "stall_timeout", _finite("stall_timeout", self.stall_timeout, allow_none=True)
        )
        object.__setattr__(
            self, "monitor_interval", _finite("monitor_interval", self.monitor_interval)
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
