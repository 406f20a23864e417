"""Node health: passive reports, latency percentiles and active heartbeats.

Each node has a state (SPEC §2 Health, the case study's defaults):

* UNKNOWN until its first report;
* a failure makes it DEGRADED, ``failure_threshold`` (3) in a row UNHEALTHY;
* a success slower than ``degraded_latency`` (1 s) makes it DEGRADED;
* a DEGRADED or UNHEALTHY node needs ``recovery_threshold`` (2) fast
  successes in a row to become HEALTHY again. A first report that is a fast
  success makes an UNKNOWN node HEALTHY at once: there is nothing to recover
  from, and the state must say something after the first report.

Health is also active (RELIABILITY rules 3, 9): a node that heartbeats —
once it has sent one, or was registered with ``expect_heartbeats=True`` — is
UNHEALTHY as soon as its last heartbeat is older than ``heartbeat_interval ×
heartbeat_liveness``, whatever its reports say, until the next heartbeat.

Who excludes a node (SPEC §2 Health, RELIABILITY R23): **liveness** is
health's — a node that missed its heartbeats is dead (:attr:`HealthChecker.dead`,
:meth:`~HealthChecker.is_alive`) and a router must not send it anything until
it heartbeats again. **Failures** are the circuit breaker's: a failure streak
still makes the node UNHEALTHY here (the seed's ``status(node).state``) and
the health policy scores it 0, but it stays eligible until its breaker opens;
the breaker then rejects it locally and probes it on its own growing
schedule. So a report-driven UNHEALTHY has no timer of its own: the node
leaves it by succeeding (``recovery_threshold`` fast successes), when its
breaker lets traffic through.

Latencies go into the compiled ring-buffer table (:mod:`fedgate._core`),
which gives exact p50/p95/p99 over the most recent ``window`` samples.

For the router the checker keeps its per-node state codes in a NumPy array
(:attr:`HealthChecker.codes`, the ``fedgate._core.codes.HEALTH_*`` codes) with a
:attr:`~HealthChecker.version` bumped on every change, and a per-node count
of recorded samples (:attr:`~HealthChecker.latency_seq`), so a router
refreshes only what changed, in bulk. Node registration, slot growth and the
listeners are the shared :class:`fedgate.federation._slots.NodeSlots`.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fedgate._core.codes import HEALTH_DEGRADED, HEALTH_HEALTHY, HEALTH_UNHEALTHY, HEALTH_UNKNOWN
from fedgate._core.latency_spec import MAX_WINDOW as _MAX_WINDOW
from fedgate.clock import Clock, to_seconds
from fedgate.federation._slots import NodeSlots, checked_clock, checked_config, optional
from fedgate.types import NodeId
from fedgate.validation import HeartbeatInterval, Latency, count, validate

__all__ = [
    "HealthChecker",
    "HealthConfig",
    "HealthListener",
    "HealthState",
    "HealthStatus",
    "HealthTransition",
]


class HealthState(enum.Enum):
    """A node's health. Values are the scoring kernel's ``HEALTH_*`` codes."""

    UNKNOWN = HEALTH_UNKNOWN
    HEALTHY = HEALTH_HEALTHY
    DEGRADED = HEALTH_DEGRADED
    UNHEALTHY = HEALTH_UNHEALTHY

    def __str__(self) -> str:
        return self.name


_STATES = tuple(HealthState)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health thresholds, validated on construction (durations in seconds).

    Each field's bounds are declared by its annotation (:mod:`fedgate.validation`).

    Parameters
    ----------
    failure_threshold : int
        Consecutive failures that make a node UNHEALTHY (>= 1): scored 0 by
        the health policy, excluded only once its circuit breaker opens.
    recovery_threshold : int
        Consecutive fast successes that make a degraded node HEALTHY (>= 1).
    degraded_latency : float or timedelta
        A success slower than this makes the node DEGRADED.
    window : int
        Latency samples kept per node for percentiles.
    heartbeat_interval : float or timedelta
        How often workers heartbeat.
    heartbeat_liveness : int
        Heartbeat intervals that may pass before a node is declared dead.
    """

    failure_threshold: Annotated[int, count(1, 1023)] = 3
    recovery_threshold: Annotated[int, count(1, 1023)] = 2
    degraded_latency: Latency = 1.0
    window: Annotated[int, count(1, _MAX_WINDOW)] = 1024
    heartbeat_interval: HeartbeatInterval = 1.0
    heartbeat_liveness: Annotated[int, count(1, 100)] = 3

    def __post_init__(self) -> None:
        validate(self)

    @property
    def liveness_timeout(self) -> float:
        """``heartbeat_interval × heartbeat_liveness``: silence longer than this is death."""
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """One node's health at one moment.

    Latencies are seconds over the sliding window, None before any sample.
    ``last_check`` is the clock reading of the last report, ``last_heartbeat``
    that of the last heartbeat (None when never). ``alive`` is False while a
    heartbeat-tracked node is overdue.
    """

    node_id: NodeId
    state: HealthState
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    consecutive_failures: int
    consecutive_successes: int
    last_check: float | None
    samples: int
    last_heartbeat: float | None
    alive: bool
    reported_state: HealthState


class HealthTransition(NamedTuple):
    """A change of a node's effective state.

    ``cause`` is ``"report"``, ``"heartbeat_missed"``, ``"heartbeat"`` (a dead
    node came back) or ``"reset"``.
    """

    node_id: NodeId
    old: HealthState
    new: HealthState
    at: float
    cause: str


HealthListener = Callable[[HealthTransition], None]


class HealthChecker(NodeSlots[HealthConfig, HealthTransition]):
    """Tracks every node's health; all calls are plain (non-async) and thread-safe.

    Parameters
    ----------
    config : HealthConfig, optional
        Thresholds (defaults when omitted).
    clock : callable
        Monotonic seconds (default :func:`time.monotonic`); tests pass a
        :class:`~fedgate.clock.ManualClock`.
    table_factory : callable, optional
        ``table_factory(window=..., nodes=0)`` building the latency table;
        default the selected core's ``LatencyTable`` (compiled or pure). Tests
        pass either implementation explicitly.
    """

    def __init__(
        self,
        config: HealthConfig | None = None,
        clock: Clock = time.monotonic,
        *,
        table_factory: Callable[..., Any] | None = None,
    ) -> None:
        config = checked_config(config, HealthConfig)
        clock = checked_clock(clock)
        if table_factory is None:
            from fedgate._core import LatencyTable

            table_factory = LatencyTable
        super().__init__(config, clock, table_factory(window=config.window, nodes=0))
        self._liveness = config.liveness_timeout
        # Scalar per-node state in lists: a report touches a few of them, and
        # list element access is several times cheaper than NumPy scalar access.
        self._reported: list[int] = []
        self._failures: list[int] = []
        self._successes: list[int] = []
        self._fast_streak: list[int] = []
        self._last_check: list[float] = []
        # Bulk-read state in arrays (the router gathers them; expire() scans them).
        self._codes = self._array("_codes", np.int8, HEALTH_UNKNOWN)
        self._latency_seq = self._array("_latency_seq", np.uint64, 0)
        self._last_hb = self._array("_last_hb", np.float64, np.nan)
        self._tracked = self._array("_tracked", np.bool_, False)
        self._dead = self._array("_dead", np.bool_, False)
        self._next_expiry = math.inf
        self._latency_version = 0

    _TABLE = "latency table"

    def _add_slot(self) -> None:
        self._reported.append(HEALTH_UNKNOWN)
        self._failures.append(0)
        self._successes.append(0)
        self._fast_streak.append(0)
        self._last_check.append(math.nan)

    # ------------------------------------------------------------ plumbing

    @property
    def latency_table(self) -> Any:
        """The latency ring-buffer table, indexed by :meth:`slot`."""
        return self._table

    @property
    def codes(self) -> npt.NDArray[np.int8]:
        """Effective state code per slot (``HEALTH_*``), as of the last change or expiry."""
        return self._codes[: len(self._ids)]

    @property
    def dead(self) -> npt.NDArray[np.bool_]:
        """True per slot while a heartbeat-tracked node is overdue (liveness lost).

        As of the last :meth:`expire`; :attr:`version` moves whenever it changes.
        A router excludes these nodes; a report-driven UNHEALTHY is not here.
        """
        return self._dead[: len(self._ids)]

    @property
    def latency_seq(self) -> npt.NDArray[np.uint64]:
        """Samples recorded per slot since registration (a change counter)."""
        return self._latency_seq[: len(self._ids)]

    @property
    def latency_version(self) -> int:
        """Bumped on every latency sample."""
        return self._latency_version

    @property
    def next_expiry(self) -> float:
        """No heartbeat-tracked node can be declared dead before this clock reading."""
        return self._next_expiry

    def _emit(self, slot: int, old: int, new: int, at: float, cause: str) -> None:
        self._version += 1
        if self._listeners:
            self._notify(HealthTransition(self._ids[slot], _STATES[old], _STATES[new], at, cause))

    def _set_reported(self, slot: int, new: int, at: float) -> None:
        old_effective = int(self._codes[slot])
        self._reported[slot] = new
        if self._dead[slot]:
            return  # stays UNHEALTHY until a heartbeat
        if new != old_effective:
            self._codes[slot] = new
            self._emit(slot, old_effective, new, at, "report")

    # ------------------------------------------------------------ registration

    def register_node(self, node: NodeId, *, expect_heartbeats: bool = False) -> int:
        """Start tracking ``node`` (UNKNOWN); idempotent.

        Parameters
        ----------
        node : NodeId
            The node.
        expect_heartbeats : bool
            Track its liveness from now on: without a heartbeat within
            ``heartbeat_interval × heartbeat_liveness`` it is UNHEALTHY.

        Returns
        -------
        int
            The node's slot.
        """
        with self._lock:
            s = self.slot(node)
            if expect_heartbeats and not self._tracked[s]:
                now = self._clock()
                self._tracked[s] = True
                self._last_hb[s] = now
                self._next_expiry = min(self._next_expiry, now + self._liveness)
            return s

    def deregister_node(self, node: NodeId) -> bool:
        """Forget ``node``'s history: back to UNKNOWN, no samples, no heartbeat tracking.

        The slot is kept (routers may hold it). Returns False for an unknown node.
        """
        with self._lock:
            s = self._slots.get(node)
            if s is None:
                return False
            now = self._clock()
            self._table.reset(s)
            self._latency_seq[s] += 1
            self._latency_version += 1
            self._failures[s] = self._successes[s] = self._fast_streak[s] = 0
            self._last_check[s] = math.nan
            self._tracked[s] = False
            self._last_hb[s] = math.nan
            was_dead = bool(self._dead[s])
            self._dead[s] = False
            self._reported[s] = HEALTH_UNKNOWN
            old = int(self._codes[s])
            if old != HEALTH_UNKNOWN:
                self._codes[s] = HEALTH_UNKNOWN
                self._emit(s, old, HEALTH_UNKNOWN, now, "reset")
            elif was_dead:
                self._version += 1  # liveness changed (routers read dead)
            return True

    # ------------------------------------------------------------ reports

    def report_success(self, node: NodeId, latency: float | timedelta) -> None:
        """Record a successful request on ``node`` that took ``latency``.

        Parameters
        ----------
        node : NodeId
            Registered on first use.
        latency : float or timedelta
            Finite seconds >= 0.

        Raises
        ------
        TypeError, ValueError
            A latency that is not a finite duration >= 0 (nothing is recorded).
        """
        seconds = to_seconds(latency, "latency")
        if not (seconds >= 0.0 and seconds != math.inf):
            raise ValueError(
                f"latency: expected finite seconds >= 0, got {latency!r} (node {node!r})"
            )
        with self._lock:
            s = self._slots.get(node)
            if s is None:
                s = self.slot(node)
            now = self._clock()
            self._table.record(s, seconds)
            self._latency_seq[s] += 1
            self._latency_version += 1
            self._failures[s] = 0
            self._successes[s] += 1
            self._last_check[s] = now
            reported = self._reported[s]
            if seconds > self._config.degraded_latency:
                self._fast_streak[s] = 0
                new = HEALTH_DEGRADED
            else:
                streak = self._fast_streak[s] + 1
                self._fast_streak[s] = streak
                # From UNKNOWN there is nothing to recover from; HEALTHY stays HEALTHY.
                recovered = streak >= self._config.recovery_threshold
                if reported in (HEALTH_UNKNOWN, HEALTH_HEALTHY) or recovered:
                    new = HEALTH_HEALTHY
                else:
                    new = reported
            if new != reported or self._codes[s] != new:
                self._set_reported(s, new, now)

    def report_failure(self, node: NodeId) -> None:
        """Record a failed request the node caused (timeout, crash, worker error).

        Only node-caused failures belong here (RELIABILITY rule 4): bad input,
        an unknown capability or a client's cancel are not the node's fault.
        """
        with self._lock:
            s = self._slots.get(node)
            if s is None:
                s = self.slot(node)
            now = self._clock()
            failures = self._failures[s] + 1
            self._failures[s] = failures
            self._successes[s] = 0
            self._fast_streak[s] = 0
            self._last_check[s] = now
            down = failures >= self._config.failure_threshold
            # UNHEALTHY here scores the node 0 but does not exclude it: its
            # breaker does, when failures reach its own threshold.
            new = HEALTH_UNHEALTHY if down else HEALTH_DEGRADED
            if new != self._reported[s] or self._codes[s] != new:
                self._set_reported(s, new, now)

    # ------------------------------------------------------------ heartbeats

    def heartbeat(self, node: NodeId) -> None:
        """Record a heartbeat from ``node`` now; a node declared dead comes back.

        The first heartbeat starts tracking the node's liveness.
        """
        with self._lock:
            s = self._slots.get(node)
            if s is None:
                s = self.slot(node)
            now = self._clock()
            self._last_hb[s] = now
            if not self._tracked[s]:
                self._tracked[s] = True
                self._next_expiry = min(self._next_expiry, now + self._liveness)
            if self._dead[s]:
                self._dead[s] = False
                self._next_expiry = min(self._next_expiry, now + self._liveness)
                new = self._reported[s]
                if new != HEALTH_UNHEALTHY:
                    self._codes[s] = new
                    self._emit(s, HEALTH_UNHEALTHY, new, now, "heartbeat")
                else:
                    self._version += 1  # alive again, though still reported UNHEALTHY

    def expire(self, now: float | None = None) -> list[NodeId]:
        """Declare dead every tracked node whose heartbeat is overdue at ``now``.

        Cheap when nothing can be due (one comparison); the gateway calls it
        periodically and the router before each refresh.

        Parameters
        ----------
        now : float, optional
            Clock reading (default: the clock).

        Returns
        -------
        list of NodeId
            Nodes newly declared dead (now UNHEALTHY), in slot order.
        """
        if now is None:
            now = self._clock()
        if not now > self._next_expiry:
            return []
        with self._lock:
            n = len(self._ids)
            live = self._tracked[:n] & ~self._dead[:n]
            deadline = self._last_hb[:n] + self._liveness
            overdue = np.flatnonzero(live & (now > deadline))
            for s in overdue.tolist():
                self._dead[s] = True
                old = int(self._codes[s])
                if old != HEALTH_UNHEALTHY:
                    self._codes[s] = HEALTH_UNHEALTHY
                    # The node died when its deadline passed, not when we looked.
                    self._emit(s, old, HEALTH_UNHEALTHY, float(deadline[s]), "heartbeat_missed")
                else:
                    self._version += 1  # already UNHEALTHY by reports; now dead too
            live[overdue] = False
            self._next_expiry = float(deadline[live].min()) if live.any() else math.inf
            return [self._ids[s] for s in overdue.tolist()]

    def is_alive(self, node: NodeId) -> bool:
        """False while a heartbeat-tracked node is overdue; True for untracked nodes."""
        s = self._slots.get(node)
        if s is None:
            return True
        self.expire()
        return not self._dead[s]

    # ------------------------------------------------------------ reads

    def state(self, node: NodeId) -> HealthState:
        """The node's effective state now (UNKNOWN for a node never seen)."""
        s = self._slots.get(node)
        if s is None:
            return HealthState.UNKNOWN
        self.expire()
        return _STATES[int(self._codes[s])]

    def _status(self, s: int) -> HealthStatus:
        p50, p95, p99 = self._table.percentiles(s)
        hb = float(self._last_hb[s])
        return HealthStatus(
            node_id=self._ids[s],
            state=_STATES[int(self._codes[s])],
            latency_p50=optional(p50),
            latency_p95=optional(p95),
            latency_p99=optional(p99),
            consecutive_failures=self._failures[s],
            consecutive_successes=self._successes[s],
            last_check=optional(self._last_check[s]),
            samples=int(self._table.count(s)),
            last_heartbeat=optional(hb),
            alive=not self._dead[s],
            reported_state=_STATES[self._reported[s]],
        )

    def status(self, node: NodeId) -> HealthStatus:
        """The node's full status now.

        Raises
        ------
        KeyError
            The node was never registered or reported on.
        """
        s = self._slots.get(node)
        if s is None:
            raise KeyError(f"node: expected a node known to the health checker, got {node!r}")
        self.expire()
        with self._lock:
            return self._status(s)

    def all_statuses(self, start: int = 0, stop: int | None = None) -> list[HealthStatus]:
        """Every node's status, in registration order.

        ``start``/``stop`` select registration positions ``[start, stop)``, so
        a reader of 10 000 nodes can take them a slice at a time.
        """
        self.expire()
        with self._lock:
            return [self._status(s) for s in range(len(self._ids))[start:stop]]

    def counts(self) -> dict[HealthState, int]:
        """Nodes per effective state."""
        self.expire()
        found = np.bincount(self.codes, minlength=4)
        return {state: int(found[state.value]) for state in HealthState}

    def __repr__(self) -> str:
        return f"HealthChecker(nodes={len(self._ids)}, config={self._config!r})"
