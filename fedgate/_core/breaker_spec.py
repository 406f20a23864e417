"""Circuit-breaker state table, one 64-bit word per node: the spec both twins follow.

This is the storage under :class:`fedgate.federation.breaker.CircuitBreaker`;
it knows integer slots, not node ids, and never reads a clock: every call that
depends on time takes ``now`` (float seconds from the owner's injected clock).

Time is kept in whole milliseconds since ``epoch`` (``ticks``, rounded half
away from zero, clamped to [0, 2^36 - 1], about 795 days): the owner should
pass its clock's reading at construction as ``epoch``. Durations are rounded to
milliseconds the same way, so ``open_timeout_of`` and ``reset_at`` report the
values the table actually uses.

States: ``CLOSED`` 0, ``OPEN`` 1, ``HALF_OPEN`` 2 (the routing codes
``BREAKER_*`` of :mod:`fedgate._core.codes`). Admission decisions: ``REJECT``
0, ``ADMIT`` 1 (closed), ``PROBE`` 2 (a half-open probe). Transition codes:
``NO_TRANSITION`` (-1) when the stored state did not change, else
``old * 3 + new`` of the *stored* states (see :func:`decode_transition`). The
two codes with ``old == new`` say the state left and came back in one step:
``REOPENED_AND_PROBING`` (8, HALF_OPEN -> HALF_OPEN), a stuck probe's reopen
whose open timeout had also passed, so a new probe was admitted; and
``REOPENED_UNPROBED`` (4, OPEN -> OPEN), a failure recorded after the open
timeout had passed (HALF_OPEN in effect) with no probe admitted yet, which
reopens the breaker one level higher.

Time-driven changes are virtual until the next write commits them:

* an OPEN word whose deadline has passed reads as HALF_OPEN;
* a HALF_OPEN word with probes outstanding past their deadline reads as if the
  probe had failed *at that deadline*: OPEN one level higher until
  ``deadline + open timeout``, then HALF_OPEN. Anchoring the reopen at the
  probe deadline, rather than at the next write, keeps a node that nobody
  writes to (the router skips OPEN nodes) from reading OPEN forever.

A failure recorded while the word is HALF_OPEN in effect counts, whether or
not a probe was admitted: an OPEN word past its deadline reopens one level
higher from ``now`` (SPEC §2 Circuit breaker: never ignored). Only a failure
recorded *before* the deadline, while OPEN in effect, is a late answer from a
call admitted before the trip, and is ignored.

Two twins implement this spec and differ only in how they apply the rules:

* ``fedgate._core._breaker_table`` (``_native/_breaker_table.pyx``): the word
  layout and atomics of ``_native/breaker_atomic.h``, one compare-and-swap per
  transition with the GIL released;
* ``fedgate._core._breaker_table_py``: the same words and rules in Python, a
  lock standing in for the CAS.

This module owns what they share: the codes and limits (the header's
``#define``\\ s must agree; the compiled module refuses to load otherwise),
the argument checks both call off the per-call path (constructor,
``run_batch``, ``states_into``), the error texts the per-call paths raise,
:func:`decode_transition` and the docstrings (:data:`DOCS`).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NamedTuple

from fedgate._core.codes import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN
from fedgate.clock import to_seconds

__all__ = [
    "ADMIT",
    "CLOSED",
    "HALF_OPEN",
    "MAX_FAILURES",
    "NO_TRANSITION",
    "OPEN",
    "OP_ALLOW",
    "OP_FAILURE",
    "OP_SUCCESS",
    "PROBE",
    "PROBING",
    "RECOVERED",
    "REJECT",
    "REOPENED",
    "REOPENED_AND_PROBING",
    "REOPENED_UNPROBED",
    "TRIPPED",
    "decode_transition",
]

CLOSED = BREAKER_CLOSED
OPEN = BREAKER_OPEN
HALF_OPEN = BREAKER_HALF_OPEN

REJECT = 0
ADMIT = 1
PROBE = 2

NO_TRANSITION = -1
TRIPPED = 1  # CLOSED -> OPEN
REOPENED_UNPROBED = 4  # OPEN -> OPEN: a failure after the open timeout, before any probe
PROBING = 5  # OPEN -> HALF_OPEN (first probe admitted)
RECOVERED = 6  # HALF_OPEN -> CLOSED
REOPENED = 7  # HALF_OPEN -> OPEN
REOPENED_AND_PROBING = 8  # HALF_OPEN -> OPEN -> HALF_OPEN in one step

OP_ALLOW = 0
OP_SUCCESS = 1
OP_FAILURE = 2

# The word's bit fields (breaker_atomic.h): failures saturate, probes and
# successes are bounded, the reopen level saturates, deadlines are 36 bits.
MAX_FAILURES = 1023
MAX_COUNT = 63
MAX_LEVEL = 15
LEVELS = MAX_LEVEL + 1
TICK_MAX = (1 << 36) - 1
MAX_DURATION = 68719476.735  # (2^36 - 1) ms: the longest span a deadline can hold
MIN_DURATION = 0.001  # one tick: anything shorter would round to 0

# The constructor's defaults (the case study's breaker).
DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_OPEN_TIMEOUT = 30.0
DEFAULT_MAX_OPEN_TIMEOUT = 300.0
DEFAULT_HALF_OPEN_MAX_PROBES = 1
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_PROBE_TIMEOUT = 10.0

REINIT_ERROR = "BreakerTable.__init__ may only run once"


def decode_transition(code: int) -> tuple[int, int]:
    if isinstance(code, bool) or not isinstance(code, numbers.Integral) or not 0 <= code <= 8:
        raise ValueError(f"code: expected a transition code in [0, 8], got {code!r}")
    return divmod(int(code), 3)


# ---------------------------------------------------------------- argument checks


class Settings(NamedTuple):
    """A table's validated configuration (durations in seconds)."""

    failure_threshold: int
    half_open_max_probes: int
    success_threshold: int
    open_timeout: float
    max_open_timeout: float
    probe_timeout: float
    epoch: float
    nodes: int

    @property
    def probe_ms(self) -> float:
        """``probe_timeout`` in milliseconds, before rounding to ticks."""
        return self.probe_timeout * 1000.0

    def open_ms(self) -> tuple[float, ...]:
        """The open timeout at each reopen level in milliseconds, before rounding."""
        base, cap = self.open_timeout, self.max_open_timeout
        return tuple(min(base * (2.0**level), cap) * 1000.0 for level in range(LEVELS))


def _count(name: str, value: Any, lo: int, hi: int | None) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {bound}, got {value!r}")
    return v


def _duration(name: str, value: Any) -> float:
    v = to_seconds(value, name)
    if not (math.isfinite(v) and MIN_DURATION <= v <= MAX_DURATION):
        raise ValueError(
            f"{name}: expected finite seconds in [{MIN_DURATION}, {MAX_DURATION}] "
            f"(the table counts whole milliseconds), got {value!r}"
        )
    return v


def _epoch(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"epoch: expected a clock reading in seconds, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"epoch: expected a finite clock reading in seconds, got {value!r}")
    return v


def check_settings(
    failure_threshold: Any,
    open_timeout: Any,
    max_open_timeout: Any,
    half_open_max_probes: Any,
    success_threshold: Any,
    probe_timeout: Any,
    epoch: Any,
    nodes: Any,
) -> Settings:
    """The constructor's arguments, checked in the order the errors name them."""
    threshold = _count("failure_threshold", failure_threshold, 1, MAX_FAILURES)
    max_probes = _count("half_open_max_probes", half_open_max_probes, 1, MAX_COUNT)
    successes = _count("success_threshold", success_threshold, 1, MAX_COUNT)
    base = _duration("open_timeout", open_timeout)
    cap = _duration("max_open_timeout", max_open_timeout)
    probe = _duration("probe_timeout", probe_timeout)
    if cap < base:
        raise ValueError(
            f"max_open_timeout: expected >= open_timeout ({base!r}), got {max_open_timeout!r}"
        )
    start = _epoch(epoch)
    count = _count("nodes", nodes, 0, None)
    return Settings(threshold, max_probes, successes, base, cap, probe, start, count)


def check_array(name: str, a: Any, dtype: str, n: int | None, writable: bool) -> None:
    """TypeError or ValueError unless ``a`` is a 1-D C-contiguous ``dtype`` array."""
    if not (hasattr(a, "dtype") and hasattr(a, "flags")):
        raise TypeError(f"{name}: expected a numpy array of {dtype}, got {type(a).__name__}")
    if a.dtype != dtype or a.ndim != 1 or not a.flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a 1-D C-contiguous array of {dtype}, "
            f"got {a.dtype} with shape {a.shape}"
        )
    if writable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writable array, got a read-only one")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: expected length {n} (as ops), got {a.shape[0]}")


def check_batch(ops: Any, slots: Any, nows: Any, decisions: Any, transitions: Any) -> int:
    """``run_batch``'s arrays checked; returns the number of operations."""
    check_array("ops", ops, "int8", None, False)
    n = int(ops.shape[0])
    check_array("slots", slots, "int64", n, False)
    check_array("nows", nows, "float64", n, False)
    check_array("decisions", decisions, "int8", n, True)
    check_array("transitions", transitions, "int8", n, True)
    return n


def check_states_out(out: Any, nodes: int) -> None:
    """``states_into``'s ``out``: writable int8, at least ``nodes`` long."""
    check_array("out", out, "int8", None, True)
    if out.shape[0] < nodes:
        raise ValueError(f"out: expected at least {nodes} elements, got {out.shape[0]}")


# ---------------------------------------------------------------- error texts
# The per-call paths test their arguments inline (in C for the compiled twin)
# and only come here to word the error.


def slot_error(slot: int, nodes: int) -> IndexError:
    return IndexError(f"slot: expected 0 <= slot < {nodes}, got {slot}")


def now_error(now: float) -> ValueError:
    return ValueError(f"now: expected a finite clock reading in seconds, got {now!r}")


def batch_error(i: int, op: int, slot: int, now: float, limit: int) -> Exception:
    """The error for ``run_batch``'s first invalid operation ``i``."""
    if not 0 <= op <= 2:
        return ValueError(f"ops[{i}]: expected 0, 1 or 2, got {op}")
    if not 0 <= slot < limit:
        return IndexError(f"slots[{i}]: expected 0 <= slot < {limit}, got {slot}")
    return ValueError(f"nows[{i}]: expected a finite clock reading in seconds, got {now!r}")


def table_repr(table: Any) -> str:
    return (
        f"BreakerTable(nodes={len(table)}, failure_threshold={table.failure_threshold}, "
        f"open_timeout={table.open_timeout!r}, max_open_timeout={table.max_open_timeout!r}, "
        f"half_open_max_probes={table.half_open_max_probes}, "
        f"success_threshold={table.success_threshold}, "
        f"probe_timeout={table.probe_timeout!r}, epoch={table.epoch!r})"
    )


# ---------------------------------------------------------------- docstrings

decode_transition.__doc__ = """Split a transition code into ``(old_state, new_state)``.

    Parameters
    ----------
    code : int
        A code returned by ``record_success``, ``record_failure``, ``admit``
        or ``run_batch``, other than ``NO_TRANSITION``.

    Returns
    -------
    tuple of int
        ``divmod(code, 3)``.
    """

DOCS: dict[str, str] = {
    "": """Per-node circuit-breaker state, one 64-bit word per slot.

    Parameters
    ----------
    failure_threshold : int
        Consecutive failures that open a CLOSED breaker, in [1, 1023].
    open_timeout : float or timedelta
        How long OPEN lasts at reopen level 0, in seconds.
    max_open_timeout : float or timedelta
        Cap of the growing open timeout ``open_timeout * 2**level``.
    half_open_max_probes : int
        Probes in flight at once while HALF_OPEN, in [1, 63].
    success_threshold : int
        Probe successes that close a HALF_OPEN breaker, in [1, 63].
    probe_timeout : float or timedelta
        A probe unanswered this long counts as failed.
    epoch : float
        Clock reading that tick 0 stands for (pass the clock's reading now).
    nodes : int
        Slots to create up front (all CLOSED).

    Durations must lie in [0.001, 68719476.735] seconds.

    Notes
    -----
    Each writer (``allow``, ``record_*``) changes a slot's word in one atomic
    step: the compiled table by compare-and-swap with the GIL released, so
    threads really interleave inside the C code; the pure twin under a lock.
    Compiled storage grows in chunks that never move, so ``add_node`` (called
    by the owner) is safe while other threads are mid-CAS on existing slots.
    """,
    "add_node": "Add a CLOSED slot and return its index.",
    "reset": "Put ``slot`` back to CLOSED with zero counts and level 0.",
    "allow": """Admit or reject one call: ``REJECT`` 0, ``ADMIT`` 1, ``PROBE`` 2.

    CLOSED admits. OPEN rejects until its deadline, then admits one probe
    (HALF_OPEN). HALF_OPEN admits while fewer than ``half_open_max_probes``
    are in flight. A probe past ``probe_timeout`` counts as failed first.
    """,
    "admit": "Like :meth:`allow`, also returning the transition code it caused.",
    "record_success": """Record a successful call; return the transition code.

    CLOSED: failures reset. HALF_OPEN: closes after ``success_threshold``
    successes. OPEN: ignored (a late answer from before the trip).
    """,
    "record_failure": """Record a failure the node caused; return the transition code.

    CLOSED: opens at ``failure_threshold`` consecutive failures. HALF_OPEN,
    stored or in effect (an OPEN word whose deadline has passed): reopens one
    level higher from ``now``. OPEN before its deadline: ignored (a late
    answer from a call admitted before the trip).
    """,
    "release": """Give back a half-open probe slot without a verdict; return the transition code.

    For a probe that ended for a reason that says nothing about the node
    (a client's cancel, bad input). Anything but HALF_OPEN with probes in
    flight is left as it is.
    """,
    "run_batch": """Apply many operations in order, in one call.

    Parameters
    ----------
    ops : ndarray of int8
        ``OP_ALLOW`` 0, ``OP_SUCCESS`` 1 or ``OP_FAILURE`` 2.
    slots : ndarray of int64
    nows : ndarray of float64
    decisions : ndarray of int8, written
        The admission decision for ``OP_ALLOW``, -1 for the others.
    transitions : ndarray of int8, written
        The transition code of every operation.

    Everything is validated before any operation is applied (the compiled
    table then releases the GIL once for the whole batch).
    """,
    "state": "The effective state at ``now``: time-driven changes show without a write.",
    "states_into": """Write every slot's effective state at ``now`` into ``out[:len(self)]``.

    ``out`` must be a writable, C-contiguous int8 array of at least
    ``len(self)`` elements.
    """,
    "raw": "The stored 64-bit word (for debugging and tests).",
    "failures": "Stored consecutive failures (saturating at 1023).",
    "probes": "Stored half-open probes in flight.",
    "successes": "Stored half-open successes so far.",
    "level": "Stored reopen level (saturating at 15).",
    "open_timeout_of": (
        "The open timeout at the stored level: ``min(open_timeout * 2**level, max)``."
    ),
    "opened_at": "When the stored OPEN state began (clock seconds); NaN unless stored OPEN.",
    "reset_at": (
        "The stored deadline in clock seconds (open end or probe deadline); NaN when CLOSED."
    ),
    "snapshot": """The effective view at ``now`` from one read of the word.

    Returns
    -------
    tuple
        ``(state, failures, probes, opened_at, current_timeout, reset_at)``:
        ``opened_at`` is NaN unless effectively OPEN; ``reset_at`` is when
        the state next changes by time alone (OPEN: its end; HALF_OPEN with
        probes out: their deadline), else NaN.
    """,
}
