"""Pure-Python twin of :mod:`fedgate._core._breaker_table`: the same words, the same rules.

Each slot's state is packed into one 64-bit integer with exactly the compiled
layout (see ``_native/breaker_atomic.h``), times are rounded to milliseconds
the same way (half away from zero, as C's ``llround``), and every transition
is the same pure function of (word, now). A ``threading.Lock`` stands in for
compare-and-swap: a writer holds it from reading the word to storing the new
one, which is what a successful CAS guarantees. Readers take no lock (one list
element read is atomic).

Read the compiled module's docstring for the semantics; this file mirrors it
line for line so that a divergence shows up as a failing test on one backend.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

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
    "TRIPPED",
    "BreakerTable",
    "decode_transition",
]

CLOSED = 0
OPEN = 1
HALF_OPEN = 2

REJECT = 0
ADMIT = 1
PROBE = 2

NO_TRANSITION = -1
TRIPPED = 1  # CLOSED -> OPEN
PROBING = 5  # OPEN -> HALF_OPEN (first probe admitted)
RECOVERED = 6  # HALF_OPEN -> CLOSED
REOPENED = 7  # HALF_OPEN -> OPEN
REOPENED_AND_PROBING = 8  # HALF_OPEN -> OPEN -> HALF_OPEN in one step

OP_ALLOW = 0
OP_SUCCESS = 1
OP_FAILURE = 2

MAX_FAILURES = 1023
_COUNT_MAX = 63
_LEVEL_MAX = 15
_TICK_MAX = (1 << 36) - 1
_MAX_DURATION = 68719476.735  # (2^36 - 1) ms: the longest span a deadline can hold


def decode_transition(code: int) -> tuple[int, int]:
    """Split a transition code into ``(old_state, new_state)``.

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
    if isinstance(code, bool) or not isinstance(code, numbers.Integral) or not 0 <= code <= 8:
        raise ValueError(f"code: expected a transition code in [0, 8], got {code!r}")
    return divmod(int(code), 3)


# ---------------------------------------------------------------- the word


def _pack(state: int, failures: int, probes: int, successes: int, level: int, deadline: int) -> int:
    return (
        (state & 0x3)
        | (failures & 0x3FF) << 2
        | (probes & 0x3F) << 12
        | (successes & 0x3F) << 18
        | (level & 0xF) << 24
        | (deadline & _TICK_MAX) << 28
    )


def _state(w: int) -> int:
    return w & 0x3


def _failures(w: int) -> int:
    return (w >> 2) & 0x3FF


def _probes(w: int) -> int:
    return (w >> 12) & 0x3F


def _successes(w: int) -> int:
    return (w >> 18) & 0x3F


def _level(w: int) -> int:
    return (w >> 24) & 0xF


def _deadline(w: int) -> int:
    return w >> 28


def _ticks_of_ms(ms: float) -> int:
    # C's llround after the same clamp: x - trunc(x) is exact for doubles, so
    # the half-way test matches llround bit for bit (round() would go to even).
    if not ms > 0.0:
        return 0
    if ms >= _TICK_MAX:
        return _TICK_MAX
    whole = int(ms)
    return whole + 1 if ms - whole >= 0.5 else whole


def _add_ticks(a: int, b: int) -> int:
    return min(a + b, _TICK_MAX)


# ---------------------------------------------------------------- the rules


class _Config:
    __slots__ = ("max_probes", "probe_ticks", "success_threshold", "threshold", "timeout_ticks")

    def __init__(
        self,
        threshold: int,
        max_probes: int,
        success_threshold: int,
        probe_ticks: int,
        timeout_ticks: tuple[int, ...],
    ) -> None:
        self.threshold = threshold
        self.max_probes = max_probes
        self.success_threshold = success_threshold
        self.probe_ticks = probe_ticks
        self.timeout_ticks = timeout_ticks


def _fail(w: int, at: int, cfg: _Config) -> int:
    # A counted failure at tick `at` on a CLOSED or HALF_OPEN word.
    failures = min(_failures(w) + 1, MAX_FAILURES)
    if _state(w) == CLOSED:
        if failures < cfg.threshold:
            return _pack(CLOSED, failures, 0, 0, 0, 0)
        return _pack(OPEN, failures, 0, 0, 0, _add_ticks(at, cfg.timeout_ticks[0]))
    level = min(_level(w) + 1, _LEVEL_MAX)
    return _pack(OPEN, failures, 0, 0, level, _add_ticks(at, cfg.timeout_ticks[level]))


def _settle(w: int, now: int, cfg: _Config) -> int:
    """The word with a stuck probe's failure applied (at the probe deadline)."""
    if _state(w) == HALF_OPEN and _probes(w) > 0 and now >= _deadline(w):
        return _fail(w, _deadline(w), cfg)
    return w


def _effective_state(word: int, now: int, cfg: _Config) -> int:
    w = _settle(word, now, cfg)
    state = _state(w)
    if state == OPEN and now >= _deadline(w):
        return HALF_OPEN
    return state


def _step_allow(word: int, now: int, cfg: _Config) -> tuple[int, int, int]:
    """(new word, decision, transition)."""
    w = _settle(word, now, cfg)
    reopened = w != word
    state = _state(w)
    if state == CLOSED:
        return w, ADMIT, NO_TRANSITION
    if state == OPEN:
        if now < _deadline(w):
            return w, REJECT, REOPENED if reopened else NO_TRANSITION
        new = _pack(HALF_OPEN, _failures(w), 1, 0, _level(w), _add_ticks(now, cfg.probe_ticks))
        return new, PROBE, REOPENED_AND_PROBING if reopened else PROBING
    probes = _probes(w)
    if probes >= cfg.max_probes:
        return w, REJECT, NO_TRANSITION
    # The deadline is set when the first outstanding probe goes out and kept
    # for later ones, so it bounds every outstanding probe's wait.
    deadline = _add_ticks(now, cfg.probe_ticks) if probes == 0 else _deadline(w)
    new = _pack(HALF_OPEN, _failures(w), probes + 1, _successes(w), _level(w), deadline)
    return new, PROBE, NO_TRANSITION


def _step_success(word: int, now: int, cfg: _Config) -> tuple[int, int]:
    """(new word, transition)."""
    w = _settle(word, now, cfg)
    state = _state(w)
    if state == CLOSED:
        return 0, NO_TRANSITION
    if state == OPEN:
        # An answer to a call admitted before the trip: not evidence either way.
        return w, REOPENED if w != word else NO_TRANSITION
    successes = _successes(w) + 1
    if successes >= cfg.success_threshold:
        return 0, RECOVERED
    probes = max(_probes(w) - 1, 0)
    return _pack(HALF_OPEN, 0, probes, successes, _level(w), _deadline(w)), NO_TRANSITION


def _step_failure(word: int, now: int, cfg: _Config) -> tuple[int, int]:
    """(new word, transition)."""
    w = _settle(word, now, cfg)
    state = _state(w)
    if state == OPEN:
        return w, REOPENED if w != word else NO_TRANSITION
    new = _fail(w, now, cfg)
    if state == HALF_OPEN:
        return new, REOPENED
    return new, TRIPPED if _state(new) == OPEN else NO_TRANSITION


def _step_release(word: int, now: int, cfg: _Config) -> tuple[int, int]:
    """(new word, transition): give back a half-open probe slot without a verdict."""
    w = _settle(word, now, cfg)
    probes = _probes(w)
    if _state(w) != HALF_OPEN or probes == 0:
        return w, REOPENED if w != word else NO_TRANSITION
    return _pack(HALF_OPEN, _failures(w), probes - 1, _successes(w), _level(w), _deadline(w)), (
        NO_TRANSITION
    )


# ---------------------------------------------------------------- validation


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
    if not (math.isfinite(v) and 0.001 <= v <= _MAX_DURATION):
        raise ValueError(
            f"{name}: expected finite seconds in [0.001, {_MAX_DURATION}] "
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


def _check_array(name: str, a: Any, dtype: str, n: int | None, writable: bool) -> None:
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


def _as_float(name: str, value: Any) -> float:
    # Mirrors Cython's `double` argument: any real number, never a string.
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be real number, not {type(value).__name__}")
    return float(value)


# ---------------------------------------------------------------- the table


class BreakerTable:
    """Per-node circuit-breaker state, one packed 64-bit word per slot.

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
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        open_timeout: float | timedelta = 30.0,
        max_open_timeout: float | timedelta = 300.0,
        half_open_max_probes: int = 1,
        success_threshold: int = 1,
        probe_timeout: float | timedelta = 10.0,
        epoch: float = 0.0,
        nodes: int = 0,
    ) -> None:
        threshold = _count("failure_threshold", failure_threshold, 1, MAX_FAILURES)
        max_probes = _count("half_open_max_probes", half_open_max_probes, 1, _COUNT_MAX)
        successes = _count("success_threshold", success_threshold, 1, _COUNT_MAX)
        base = _duration("open_timeout", open_timeout)
        cap = _duration("max_open_timeout", max_open_timeout)
        probe = _duration("probe_timeout", probe_timeout)
        if cap < base:
            raise ValueError(
                f"max_open_timeout: expected >= open_timeout ({base!r}), got {max_open_timeout!r}"
            )
        start = _epoch(epoch)
        count = _count("nodes", nodes, 0, None)
        if hasattr(self, "_words"):
            raise RuntimeError("BreakerTable.__init__ may only run once")
        self._failure_threshold = threshold
        self._half_open_max_probes = max_probes
        self._success_threshold = successes
        self._open_timeout = base
        self._max_open_timeout = cap
        self._probe_timeout = probe
        self._epoch = start
        self._cfg = _Config(
            threshold,
            max_probes,
            successes,
            _ticks_of_ms(probe * 1000.0),
            tuple(_ticks_of_ms(min(base * (2.0**level), cap) * 1000.0) for level in range(16)),
        )
        self._words: list[int] = [0] * count
        self._lock = threading.Lock()

    @property
    def failure_threshold(self) -> int:
        return self._failure_threshold

    @property
    def open_timeout(self) -> float:
        return self._open_timeout

    @property
    def max_open_timeout(self) -> float:
        return self._max_open_timeout

    @property
    def half_open_max_probes(self) -> int:
        return self._half_open_max_probes

    @property
    def success_threshold(self) -> int:
        return self._success_threshold

    @property
    def probe_timeout(self) -> float:
        return self._probe_timeout

    @property
    def epoch(self) -> float:
        return self._epoch

    def __len__(self) -> int:
        return len(self._words)

    def __repr__(self) -> str:
        return (
            f"BreakerTable(nodes={len(self._words)}, failure_threshold={self._failure_threshold}, "
            f"open_timeout={self._open_timeout!r}, max_open_timeout={self._max_open_timeout!r}, "
            f"half_open_max_probes={self._half_open_max_probes}, "
            f"success_threshold={self._success_threshold}, "
            f"probe_timeout={self._probe_timeout!r}, epoch={self._epoch!r})"
        )

    def _slot(self, slot: int) -> int:
        i = operator.index(slot)
        n = len(self._words)
        if not 0 <= i < n:
            raise IndexError(f"slot: expected 0 <= slot < {n}, got {i}")
        return i

    def _now(self, now: float) -> int:
        t = _as_float("now", now)
        if not math.isfinite(t):
            raise ValueError(f"now: expected a finite clock reading in seconds, got {t!r}")
        return _ticks_of_ms((t - self._epoch) * 1000.0)

    # ------------------------------------------------------------ growth

    def add_node(self) -> int:
        """Add a CLOSED slot and return its index."""
        with self._lock:
            self._words.append(0)
            return len(self._words) - 1

    def reset(self, slot: int) -> None:
        """Put ``slot`` back to CLOSED with zero counts and level 0."""
        i = self._slot(slot)
        with self._lock:
            self._words[i] = 0

    # ------------------------------------------------------------ writers

    def admit(self, slot: int, now: float) -> tuple[int, int]:
        """Like :meth:`allow`, also returning the transition code it caused."""
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, decision, transition = _step_allow(self._words[i], t, self._cfg)
            self._words[i] = new
        return decision, transition

    def allow(self, slot: int, now: float) -> int:
        """Admit or reject one call: ``REJECT`` 0, ``ADMIT`` 1, ``PROBE`` 2."""
        return self.admit(slot, now)[0]

    def record_success(self, slot: int, now: float) -> int:
        """Record a successful call; return the transition code."""
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, transition = _step_success(self._words[i], t, self._cfg)
            self._words[i] = new
        return transition

    def record_failure(self, slot: int, now: float) -> int:
        """Record a failure the node caused; return the transition code."""
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, transition = _step_failure(self._words[i], t, self._cfg)
            self._words[i] = new
        return transition

    def release(self, slot: int, now: float) -> int:
        """Give back a half-open probe slot without a verdict; return the transition code."""
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, transition = _step_release(self._words[i], t, self._cfg)
            self._words[i] = new
        return transition

    def run_batch(
        self,
        ops: npt.NDArray[np.int8],
        slots: npt.NDArray[np.int64],
        nows: npt.NDArray[np.float64],
        decisions: npt.NDArray[np.int8],
        transitions: npt.NDArray[np.int8],
    ) -> None:
        """Apply many operations in order (see the compiled module's docstring)."""
        _check_array("ops", ops, "int8", None, False)
        n = ops.shape[0]
        _check_array("slots", slots, "int64", n, False)
        _check_array("nows", nows, "float64", n, False)
        _check_array("decisions", decisions, "int8", n, True)
        _check_array("transitions", transitions, "int8", n, True)
        limit = len(self._words)
        op_list, slot_list, now_list = ops.tolist(), slots.tolist(), nows.tolist()
        for i in range(n):
            if not 0 <= op_list[i] <= 2:
                raise ValueError(f"ops[{i}]: expected 0, 1 or 2, got {op_list[i]}")
            if not 0 <= slot_list[i] < limit:
                raise IndexError(f"slots[{i}]: expected 0 <= slot < {limit}, got {slot_list[i]}")
            if not math.isfinite(now_list[i]):
                raise ValueError(
                    f"nows[{i}]: expected a finite clock reading in seconds, got {now_list[i]!r}"
                )
        words, cfg, epoch = self._words, self._cfg, self._epoch
        for i in range(n):
            t = _ticks_of_ms((now_list[i] - epoch) * 1000.0)
            slot = slot_list[i]
            with self._lock:
                if op_list[i] == OP_ALLOW:
                    words[slot], decisions[i], transitions[i] = _step_allow(words[slot], t, cfg)
                    continue
                step = _step_success if op_list[i] == OP_SUCCESS else _step_failure
                words[slot], transitions[i] = step(words[slot], t, cfg)
            decisions[i] = -1

    # ------------------------------------------------------------ readers

    def state(self, slot: int, now: float) -> int:
        """The effective state at ``now``: time-driven changes show without a write."""
        i = self._slot(slot)
        return _effective_state(self._words[i], self._now(now), self._cfg)

    def states_into(self, now: float, out: npt.NDArray[np.int8]) -> None:
        """Write every slot's effective state at ``now`` into ``out[:len(self)]``."""
        t = self._now(now)
        _check_array("out", out, "int8", None, True)
        words = self._words[:]
        if out.shape[0] < len(words):
            raise ValueError(f"out: expected at least {len(words)} elements, got {out.shape[0]}")
        cfg = self._cfg
        out[: len(words)] = [_effective_state(w, t, cfg) for w in words]

    def raw(self, slot: int) -> int:
        """The stored 64-bit word (for debugging and tests)."""
        return self._words[self._slot(slot)]

    def failures(self, slot: int) -> int:
        """Stored consecutive failures (saturating at 1023)."""
        return _failures(self._words[self._slot(slot)])

    def probes(self, slot: int) -> int:
        """Stored half-open probes in flight."""
        return _probes(self._words[self._slot(slot)])

    def successes(self, slot: int) -> int:
        """Stored half-open successes so far."""
        return _successes(self._words[self._slot(slot)])

    def level(self, slot: int) -> int:
        """Stored reopen level (saturating at 15)."""
        return _level(self._words[self._slot(slot)])

    def open_timeout_of(self, slot: int) -> float:
        """The open timeout at the stored level: ``min(open_timeout * 2**level, max)``."""
        return self._cfg.timeout_ticks[_level(self._words[self._slot(slot)])] / 1000.0

    def opened_at(self, slot: int) -> float:
        """When the stored OPEN state began (clock seconds); NaN unless stored OPEN."""
        return self._opened_at(self._words[self._slot(slot)])

    def reset_at(self, slot: int) -> float:
        """The stored deadline in clock seconds (open end or probe deadline); NaN when CLOSED."""
        w = self._words[self._slot(slot)]
        if _state(w) == CLOSED:
            return math.nan
        return self._epoch + _deadline(w) / 1000.0

    def snapshot(self, slot: int, now: float) -> tuple[int, int, int, float, float, float]:
        """The effective view at ``now``: ``(state, failures, probes, opened_at,
        current_timeout, reset_at)`` (see the compiled module)."""
        i = self._slot(slot)
        t = self._now(now)
        w = _settle(self._words[i], t, self._cfg)
        state = _effective_state(w, t, self._cfg)
        opened = self._opened_at(w) if state == OPEN else math.nan
        reset = math.nan
        if state == OPEN or (state == HALF_OPEN and _probes(w) > 0):
            reset = self._epoch + _deadline(w) / 1000.0
        timeout = self._cfg.timeout_ticks[_level(w)] / 1000.0
        return state, _failures(w), _probes(w), opened, timeout, reset

    def _opened_at(self, w: int) -> float:
        if _state(w) != OPEN:
            return math.nan
        return self._epoch + (_deadline(w) - self._cfg.timeout_ticks[_level(w)]) / 1000.0
