"""Per-node circuit breakers over the lock-free state table (SPEC §2 Circuit breaker).

::

    CLOSED ──failure_threshold consecutive failures──► OPEN
    OPEN ──open timeout passes (by the clock alone)──► HALF_OPEN
    HALF_OPEN ──success_threshold probe successes──► CLOSED
    HALF_OPEN ──a failure (a probe's, or any recorded once the open timeout
                has passed), or a probe outliving probe_timeout──► OPEN (timeout ×2, capped)

The state lives in :class:`fedgate._core.BreakerTable` — one atomic 64-bit
word per node, readable from any thread — and every time-driven change is
*effective* there: ``state()`` reads HALF_OPEN the moment the open timeout has
passed, without anyone calling anything (RELIABILITY rules 6, 7).

Two ways in, one set of rules (RELIABILITY R22):

* :meth:`CircuitBreaker.is_open` is the seed's admission gate, and callers use
  it as the seed does — check it, call the node if it says False, report the
  outcome with :meth:`~CircuitBreaker.record_success` /
  :meth:`~CircuitBreaker.record_failure`. So it *admits*: in HALF_OPEN a False
  answer takes one of the ``half_open_max_probes`` probe slots, and once they
  are taken it answers True. A caller following the seed's pattern against a
  node that always fails makes at most ``half_open_max_probes`` calls per open
  period. :meth:`~CircuitBreaker.admit` / :meth:`~CircuitBreaker.allow` are the
  same decision with the probe made explicit (the gateway's way in), and
  :meth:`~CircuitBreaker.release` gives a probe back without a verdict.
* :meth:`CircuitBreaker.state` is the query: no admission, no probe slot taken.

A failure recorded while the breaker is HALF_OPEN in effect — its open timeout
has passed, whether or not anyone has asked since — reopens it at the next,
longer timeout; it is never ignored. Only a failure recorded while OPEN in
effect (before the timeout) is a late answer to a call admitted before the
trip, and changes nothing.

This module adds node ids, an injected clock and observability: every
transition, including the clock-driven ones, reaches the listeners as a
:class:`BreakerTransition` the first time it is observed — by :meth:`state`,
:meth:`allow`, :meth:`all_states`, :meth:`status` or :meth:`poll` (which the
gateway calls periodically). Time-driven transitions carry the time they
happened (the deadline), not the time they were noticed.

Only failures the node caused belong in :meth:`CircuitBreaker.record_failure`
(RELIABILITY rule 4): bad input, an unknown capability, an oversized request
or a client's cancel never reach it. Failures are the breaker's to act on
(SPEC §2 Health, "Who excludes a node"): health only scores them.

Node registration, slot growth and the listeners are the shared
:class:`fedgate.federation._slots.NodeSlots`, as for health.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from fedgate._core import breaker_spec
from fedgate._core.codes import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN
from fedgate.clock import Clock
from fedgate.federation._slots import NodeSlots, checked_clock, checked_config, optional
from fedgate.types import NodeId
from fedgate.validation import DAY, InvalidParameterError, count, seconds, validate

__all__ = [
    "Admission",
    "BreakerConfig",
    "BreakerListener",
    "BreakerStatus",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitState",
]

_ADMIT = breaker_spec.ADMIT
_NO_TRANSITION = breaker_spec.NO_TRANSITION
# The table's limits (counts live in bit fields of the 64-bit word).
_MAX_FAILURES = breaker_spec.MAX_FAILURES
_MAX_COUNT = breaker_spec.MAX_COUNT
# The table counts whole milliseconds, so a shorter duration would round to 0;
# it could hold (2^36 - 1) ms, but a breaker open for more than a day is a mistake.
_Duration: TypeAlias = Annotated[float, seconds(ge=0.001, le=DAY)]


class CircuitState(enum.Enum):
    """A breaker's state. Values are the scoring kernel's ``BREAKER_*`` codes."""

    CLOSED = BREAKER_CLOSED
    OPEN = BREAKER_OPEN
    HALF_OPEN = BREAKER_HALF_OPEN

    def __str__(self) -> str:
        return self.name


_STATES = tuple(CircuitState)


class Admission(enum.IntEnum):
    """The answer of :meth:`CircuitBreaker.admit`; falsy only for REJECT."""

    REJECT = breaker_spec.REJECT
    ADMIT = breaker_spec.ADMIT
    PROBE = breaker_spec.PROBE

    @property
    def probe(self) -> bool:
        """True for a half-open probe (its outcome decides the breaker)."""
        return self is Admission.PROBE


_ADMISSIONS = tuple(Admission)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker thresholds, validated on construction (durations in seconds).

    Each field's bounds are declared by its annotation (:mod:`fedgate.validation`).

    Parameters
    ----------
    failure_threshold : int
        Consecutive node-caused failures that open a closed breaker.
    open_timeout : float or timedelta
        How long a breaker stays OPEN the first time.
    max_open_timeout : float or timedelta
        Cap of the open timeout, which doubles on every failed probe.
    half_open_max_probes : int
        Probes admitted at once while HALF_OPEN.
    success_threshold : int
        Probe successes that close a HALF_OPEN breaker (the case study: 1).
    probe_timeout : float or timedelta
        A probe unanswered this long counts as failed (no stuck HALF_OPEN).
    """

    failure_threshold: Annotated[int, count(1, _MAX_FAILURES)] = 5
    open_timeout: _Duration = 30.0
    max_open_timeout: _Duration = 300.0
    half_open_max_probes: Annotated[int, count(1, _MAX_COUNT)] = 1
    success_threshold: Annotated[int, count(1, _MAX_COUNT)] = 1
    probe_timeout: _Duration = 10.0

    def __post_init__(self) -> None:
        validate(self)
        if self.max_open_timeout < self.open_timeout:
            raise InvalidParameterError(
                "BreakerConfig",
                "max_open_timeout",
                self.max_open_timeout,
                f"expected >= open_timeout ({self.open_timeout!r}), "
                f"got {self.max_open_timeout!r}",
            )


class BreakerTransition(NamedTuple):
    """One breaker transition: ``node_id`` went from ``old`` to ``new`` at ``at``."""

    node_id: NodeId
    old: CircuitState
    new: CircuitState
    at: float


BreakerListener = Callable[[BreakerTransition], None]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """One breaker at one moment (clock seconds; None where it does not apply).

    ``opened_at`` is set while OPEN; ``reset_at`` is when the state next
    changes by time alone (OPEN: its end; HALF_OPEN with probes out: the probe
    deadline) and ``time_to_reset`` the seconds until then.
    """

    node_id: NodeId
    state: CircuitState
    failures: int
    probes: int
    opened_at: float | None
    open_timeout: float
    reset_at: float | None
    time_to_reset: float | None
    last_failure: float | None
    trips: int


class CircuitBreaker(NodeSlots[BreakerConfig, BreakerTransition]):
    """Per-node circuit breakers (nodes register on first use).

    Parameters
    ----------
    config : BreakerConfig, optional
        Thresholds (defaults when omitted).
    clock : callable
        Monotonic seconds (default :func:`time.monotonic`); its reading at
        construction is the table's epoch.
    table_factory : callable, optional
        Builds the state table from the config's fields plus ``epoch``;
        default the selected core's ``BreakerTable`` (compiled or pure).
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        clock: Clock = time.monotonic,
        *,
        table_factory: Callable[..., Any] | None = None,
    ) -> None:
        config = checked_config(config, BreakerConfig)
        clock = checked_clock(clock)
        if table_factory is None:
            from fedgate._core import BreakerTable

            table_factory = BreakerTable
        table = table_factory(
            failure_threshold=config.failure_threshold,
            open_timeout=config.open_timeout,
            max_open_timeout=config.max_open_timeout,
            half_open_max_probes=config.half_open_max_probes,
            success_threshold=config.success_threshold,
            probe_timeout=config.probe_timeout,
            epoch=float(clock()),
            nodes=0,
        )
        # The table is lock-free; the lock only orders the bookkeeping below
        # (what was last observed per node), so events come out in order.
        super().__init__(config, clock, table)
        self._max_probes = config.half_open_max_probes
        self._last_failure: list[float] = []
        self._trips_of: list[int] = []
        # Last observed effective state, probes and deadline per slot.
        self._codes = self._array("_codes", np.int8, BREAKER_CLOSED)
        self._routable = self._array("_routable", np.int8, BREAKER_CLOSED)
        self._probes = self._array("_probes", np.int16, 0)
        self._deadline = self._array("_deadline", np.float64, np.nan)
        self._scratch = self._array("_scratch", np.int8, 0)
        self._next_deadline = math.inf
        self._transitions = 0
        self._trips = 0

    _TABLE = "breaker table"

    def _add_slot(self) -> None:
        self._last_failure.append(math.nan)
        self._trips_of.append(0)

    # ------------------------------------------------------------ plumbing

    @property
    def table(self) -> Any:
        """The underlying lock-free state table, indexed by :meth:`slot`."""
        return self._table

    @property
    def codes(self) -> npt.NDArray[np.int8]:
        """Last observed state code per slot (``BREAKER_*``)."""
        return self._codes[: len(self._ids)]

    @property
    def routable_codes(self) -> npt.NDArray[np.int8]:
        """:attr:`codes`, with a HALF_OPEN breaker whose probe slots are all taken as OPEN.

        What a router should score with: such a node would reject the call.
        """
        return self._routable[: len(self._ids)]

    @property
    def next_deadline(self) -> float:
        """No time-driven transition can happen before this clock reading.

        A router calls :meth:`poll` once the clock passes it.
        """
        return self._next_deadline

    @property
    def transitions(self) -> int:
        """Transitions observed so far."""
        return self._transitions

    @property
    def trips(self) -> int:
        """Transitions into OPEN so far (trips and reopens)."""
        return self._trips

    # ------------------------------------------------------------ observation

    def _emit(self, s: int, old: int, new: int, at: float) -> None:
        self._transitions += 1
        if new == BREAKER_OPEN:
            self._trips += 1
            self._trips_of[s] += 1
        if self._listeners:
            self._notify(BreakerTransition(self._ids[s], _STATES[old], _STATES[new], at))

    def _observe(self, s: int, now: float) -> int:
        """Compare the table's effective view of slot ``s`` with what was last seen.

        Emits every transition in between (at most two: a stuck probe's reopen
        followed by the end of that open period) and records the new view.
        Call with the lock held. Returns the effective state.
        """
        state, _failures, probes, opened_at, timeout, reset_at = self._table.snapshot(s, now)
        known = int(self._codes[s])
        known_probes = int(self._probes[s])
        known_deadline = float(self._deadline[s])
        half_open = BREAKER_HALF_OPEN
        if known == half_open and known_probes > 0 and state == half_open and probes == 0:
            # Nobody looked while a stuck probe reopened the breaker and the
            # new open period ran out: both transitions happened.
            self._emit(s, BREAKER_HALF_OPEN, BREAKER_OPEN, min(known_deadline, now))
            self._emit(s, BREAKER_OPEN, BREAKER_HALF_OPEN, min(known_deadline + timeout, now))
        elif state != known:
            if state == BREAKER_OPEN:
                at = opened_at if opened_at == opened_at else now
            elif known == BREAKER_OPEN and state == BREAKER_HALF_OPEN and known_deadline <= now:
                at = known_deadline
            else:
                at = now
            self._emit(s, known, state, min(at, now))
        saturated = state == BREAKER_HALF_OPEN and probes >= self._max_probes
        routable = BREAKER_OPEN if saturated else state
        if state != known or routable != self._routable[s] or probes != known_probes:
            self._codes[s] = state
            self._routable[s] = routable
            self._probes[s] = probes
            self._version += 1
        self._deadline[s] = reset_at
        if reset_at < self._next_deadline:
            self._next_deadline = reset_at
        return int(state)

    # ------------------------------------------------------------ decisions

    def admit(self, node: NodeId) -> Admission:
        """Decide whether a call to ``node`` may go ahead, and count it.

        Returns
        -------
        Admission
            ``ADMIT`` (closed), ``PROBE`` (a half-open probe: report its
            outcome with :meth:`record_success` / :meth:`record_failure`) or
            ``REJECT`` (open, or every probe slot taken) — falsy.
        """
        s = self._slots.get(node)
        if s is None:
            s = self.slot(node)
        with self._lock:
            now = self._clock()
            if self._codes[s] == BREAKER_CLOSED:
                # CLOSED changes only by a recorded failure: nothing time-driven to observe.
                decision = self._table.allow(s, now)
                if decision != _ADMIT:
                    self._observe(s, now)
                return _ADMISSIONS[decision]
            self._observe(s, now)
            decision = self._table.allow(s, now)
            self._observe(s, now)
            return _ADMISSIONS[decision]

    def allow(self, node: NodeId) -> bool:
        """:meth:`admit` as a bool (True: go ahead)."""
        return self.admit(node) != Admission.REJECT

    def record_success(self, node: NodeId) -> None:
        """Record a successful call to ``node`` (closes a half-open breaker)."""
        s = self._slots.get(node)
        if s is None:
            s = self.slot(node)
        with self._lock:
            now = self._clock()
            if self._codes[s] == BREAKER_CLOSED:
                if self._table.record_success(s, now) == _NO_TRANSITION:
                    return
            else:
                self._observe(s, now)
                self._table.record_success(s, now)
            self._observe(s, now)

    def record_failure(self, node: NodeId) -> None:
        """Record a failure ``node`` caused (timeout, crash, worker error).

        Never call this for bad input, an unknown capability, an oversized
        request or a client's cancel.
        """
        s = self._slots.get(node)
        if s is None:
            s = self.slot(node)
        with self._lock:
            now = self._clock()
            self._last_failure[s] = now
            if self._codes[s] == BREAKER_CLOSED:
                if self._table.record_failure(s, now) == _NO_TRANSITION:
                    return
            else:
                self._observe(s, now)
                self._table.record_failure(s, now)
            self._observe(s, now)

    def release(self, node: NodeId) -> None:
        """Give back a half-open probe that ended without a verdict on ``node``.

        For a probe the client cancelled, or one that failed for a reason that
        is not the node's (bad input, overload, shutdown): the next call may
        probe at once instead of waiting for ``probe_timeout`` to count the
        abandoned probe as a failure. No effect unless ``node`` is HALF_OPEN
        with probes in flight.
        """
        s = self._slots.get(node)
        if s is None:
            return
        with self._lock:
            now = self._clock()
            self._observe(s, now)
            self._table.release(s, now)
            self._observe(s, now)

    def reset(self, node: NodeId) -> None:
        """Force ``node``'s breaker CLOSED with no failures (an operator's action)."""
        s = self._slots.get(node)
        if s is None:
            return
        with self._lock:
            now = self._clock()
            self._observe(s, now)
            self._table.reset(s)
            self._observe(s, now)

    # ------------------------------------------------------------ reads

    def state(self, node: NodeId) -> CircuitState:
        """The breaker's state now, driven by the clock (CLOSED for an unknown node).

        A pure query: it admits nothing and takes no probe slot (transitions
        time made are announced to the listeners, as by every read).
        """
        s = self._slots.get(node)
        if s is None:
            return CircuitState.CLOSED
        with self._lock:
            return _STATES[self._observe(s, self._clock())]

    def is_open(self, node: NodeId) -> bool:
        """The seed's admission gate: True means do not call ``node`` now.

        False admits the call, as :meth:`allow` does: CLOSED answers False; OPEN
        answers True; HALF_OPEN answers False while a probe slot is free and
        *takes it* — report the call's outcome with :meth:`record_success` or
        :meth:`record_failure` (an unanswered probe fails by ``probe_timeout``)
        — and True once every slot is taken. For the state without admitting
        anything, use :meth:`state`. An unknown node answers False and is not
        registered.
        """
        if node not in self._slots:
            return False
        return self.admit(node) is Admission.REJECT

    def poll(self, now: float | None = None) -> list[BreakerTransition]:
        """Observe every breaker at ``now`` and emit the time-driven transitions due.

        The gateway calls this periodically so OPEN → HALF_OPEN (and a stuck
        probe's reopen) is announced even when no request touches the node.

        Returns
        -------
        list of BreakerTransition
            The transitions emitted by this call.
        """
        emitted: list[BreakerTransition] = []

        def collect(event: BreakerTransition) -> None:
            emitted.append(event)

        with self._lock:
            if now is None:
                now = self._clock()
            n = len(self._ids)
            if n == 0:
                self._next_deadline = math.inf
                return emitted
            self._listeners.append(collect)
            try:
                current = self._scratch
                self._table.states_into(now, current)
                codes = self._codes[:n]
                probing = (codes == BREAKER_HALF_OPEN) & (self._probes[:n] > 0)
                due = (current[:n] != codes) | (probing & (self._deadline[:n] <= now))
                for s in np.flatnonzero(due).tolist():
                    self._observe(s, now)
                # After the observations above: codes and probes have moved.
                probing = (codes == BREAKER_HALF_OPEN) & (self._probes[:n] > 0)
                pending = (codes == BREAKER_OPEN) | probing
                self._next_deadline = (
                    float(self._deadline[:n][pending].min()) if pending.any() else math.inf
                )
            finally:
                self._listeners.remove(collect)
        return emitted

    def all_states(self) -> dict[NodeId, CircuitState]:
        """Every breaker's state now (observing, and emitting, what time changed)."""
        with self._lock:
            self.poll()
            return {node: _STATES[self._codes[s]] for node, s in self._slots.items()}

    def status(self, node: NodeId) -> BreakerStatus:
        """``node``'s breaker in detail (a fresh CLOSED status for an unknown node)."""
        s = self._slots.get(node)
        if s is None:
            return BreakerStatus(NodeId(node), CircuitState.CLOSED, 0, 0, None,
                                 self._config.open_timeout, None, None, None, 0)  # fmt: skip
        with self._lock:
            now = self._clock()
            self._observe(s, now)
            return self._status(s, now)

    def _status(self, s: int, now: float) -> BreakerStatus:
        state, failures, probes, opened_at, timeout, reset_at = self._table.snapshot(s, now)
        reset = optional(reset_at)
        return BreakerStatus(
            node_id=self._ids[s],
            state=_STATES[state],
            failures=int(failures),
            probes=int(probes),
            opened_at=optional(opened_at),
            open_timeout=float(timeout),
            reset_at=reset,
            time_to_reset=None if reset is None else max(0.0, reset - now),
            last_failure=optional(self._last_failure[s]),
            trips=self._trips_of[s],
        )

    def all_statuses(self, start: int = 0, stop: int | None = None) -> list[BreakerStatus]:
        """Every breaker in detail, in registration order.

        ``start``/``stop`` select registration positions ``[start, stop)``, so
        a reader of 10 000 nodes can take them a slice at a time.
        """
        with self._lock:
            now = self._clock()
            self.poll(now)
            return [self._status(s, now) for s in range(len(self._ids))[start:stop]]

    def __repr__(self) -> str:
        return f"CircuitBreaker(nodes={len(self._ids)}, config={self._config!r})"
