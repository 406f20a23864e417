"""The circuit-breaker state table in pure Python: the same words, the same rules.

The twin of the compiled :mod:`fedgate._core._breaker_table`; the semantics,
codes, limits, argument checks, errors and docstrings are in
:mod:`fedgate._core.breaker_spec`. Each slot's state is packed into one 64-bit
integer with exactly the compiled layout (see ``_native/breaker_atomic.h``),
times are rounded to milliseconds the same way (half away from zero, as C's
``llround``), and every transition is the same pure function of (word, now),
written line for line after the compiled rules so that a divergence shows up
as a failing test on one backend. A ``threading.Lock`` stands in for
compare-and-swap: a writer holds it from reading the word to storing the new
one, which is what a successful CAS guarantees. Readers take no lock (one list
element read is atomic).
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

from fedgate._core import breaker_spec as spec
from fedgate._core._docs import document
from fedgate._core.breaker_spec import (
    ADMIT,
    CLOSED,
    HALF_OPEN,
    MAX_FAILURES,
    NO_TRANSITION,
    OP_ALLOW,
    OP_SUCCESS,
    OPEN,
    PROBE,
    PROBING,
    RECOVERED,
    REJECT,
    REOPENED,
    REOPENED_AND_PROBING,
    REOPENED_UNPROBED,
    TRIPPED,
)
from fedgate._core.breaker_spec import OP_FAILURE as OP_FAILURE  # re-exported
from fedgate._core.breaker_spec import decode_transition as decode_transition  # re-exported

__all__ = [*spec.__all__, "BreakerTable"]

_TICK_MAX = spec.TICK_MAX
_LEVEL_MAX = spec.MAX_LEVEL


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
    # A counted failure at tick `at` on a CLOSED, HALF_OPEN or expired OPEN word.
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
        if now < _deadline(w):
            # A late answer from a call admitted before the trip.
            return w, REOPENED if w != word else NO_TRANSITION
        # HALF_OPEN in effect, no probe yet: the failure still reopens, one level up.
        return _fail(w, now, cfg), REOPENED if w != word else REOPENED_UNPROBED
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


# ---------------------------------------------------------------- arguments


def _as_float(name: str, value: Any) -> float:
    # Mirrors Cython's `double` argument: any real number, never a string.
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: must be real number, not {type(value).__name__}")
    return float(value)


# ---------------------------------------------------------------- the table


class BreakerTable:
    def __init__(
        self,
        failure_threshold: int = spec.DEFAULT_FAILURE_THRESHOLD,
        open_timeout: float | timedelta = spec.DEFAULT_OPEN_TIMEOUT,
        max_open_timeout: float | timedelta = spec.DEFAULT_MAX_OPEN_TIMEOUT,
        half_open_max_probes: int = spec.DEFAULT_HALF_OPEN_MAX_PROBES,
        success_threshold: int = spec.DEFAULT_SUCCESS_THRESHOLD,
        probe_timeout: float | timedelta = spec.DEFAULT_PROBE_TIMEOUT,
        epoch: float = 0.0,
        nodes: int = 0,
    ) -> None:
        settings = spec.check_settings(
            failure_threshold,
            open_timeout,
            max_open_timeout,
            half_open_max_probes,
            success_threshold,
            probe_timeout,
            epoch,
            nodes,
        )
        if hasattr(self, "_words"):
            raise RuntimeError(spec.REINIT_ERROR)
        self._settings = settings
        self._epoch = settings.epoch
        self._cfg = _Config(
            settings.failure_threshold,
            settings.half_open_max_probes,
            settings.success_threshold,
            _ticks_of_ms(settings.probe_ms),
            tuple(_ticks_of_ms(ms) for ms in settings.open_ms()),
        )
        self._words: list[int] = [0] * settings.nodes
        self._lock = threading.Lock()

    # The compiled table keeps these as read-only C attributes.
    @property
    def failure_threshold(self) -> int:
        return self._settings.failure_threshold

    @property
    def open_timeout(self) -> float:
        return self._settings.open_timeout

    @property
    def max_open_timeout(self) -> float:
        return self._settings.max_open_timeout

    @property
    def half_open_max_probes(self) -> int:
        return self._settings.half_open_max_probes

    @property
    def success_threshold(self) -> int:
        return self._settings.success_threshold

    @property
    def probe_timeout(self) -> float:
        return self._settings.probe_timeout

    @property
    def epoch(self) -> float:
        return self._epoch

    def __len__(self) -> int:
        return len(self._words)

    def __repr__(self) -> str:
        return spec.table_repr(self)

    def _slot(self, slot: int) -> int:
        i = operator.index(slot)
        n = len(self._words)
        if not 0 <= i < n:
            raise spec.slot_error(i, n)
        return i

    def _now(self, now: float) -> int:
        t = _as_float("now", now)
        if not math.isfinite(t):
            raise spec.now_error(t)
        return _ticks_of_ms((t - self._epoch) * 1000.0)

    # ------------------------------------------------------------ growth

    def add_node(self) -> int:
        with self._lock:
            self._words.append(0)
            return len(self._words) - 1

    def reset(self, slot: int) -> None:
        i = self._slot(slot)
        with self._lock:
            self._words[i] = 0

    # ------------------------------------------------------------ writers

    def admit(self, slot: int, now: float) -> tuple[int, int]:
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, decision, transition = _step_allow(self._words[i], t, self._cfg)
            self._words[i] = new
        return decision, transition

    def allow(self, slot: int, now: float) -> int:
        return self.admit(slot, now)[0]

    def record_success(self, slot: int, now: float) -> int:
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, transition = _step_success(self._words[i], t, self._cfg)
            self._words[i] = new
        return transition

    def record_failure(self, slot: int, now: float) -> int:
        i = self._slot(slot)
        t = self._now(now)
        with self._lock:
            new, transition = _step_failure(self._words[i], t, self._cfg)
            self._words[i] = new
        return transition

    def release(self, slot: int, now: float) -> int:
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
        n = spec.check_batch(ops, slots, nows, decisions, transitions)
        limit = len(self._words)
        op_list, slot_list, now_list = ops.tolist(), slots.tolist(), nows.tolist()
        for i in range(n):
            op, slot, now = op_list[i], slot_list[i], now_list[i]
            if not (0 <= op <= 2 and 0 <= slot < limit and math.isfinite(now)):
                raise spec.batch_error(i, op, slot, now, limit)
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
        i = self._slot(slot)
        return _effective_state(self._words[i], self._now(now), self._cfg)

    def states_into(self, now: float, out: npt.NDArray[np.int8]) -> None:
        t = self._now(now)
        words = self._words[:]
        spec.check_states_out(out, len(words))
        cfg = self._cfg
        out[: len(words)] = [_effective_state(w, t, cfg) for w in words]

    def raw(self, slot: int) -> int:
        return self._words[self._slot(slot)]

    def failures(self, slot: int) -> int:
        return _failures(self._words[self._slot(slot)])

    def probes(self, slot: int) -> int:
        return _probes(self._words[self._slot(slot)])

    def successes(self, slot: int) -> int:
        return _successes(self._words[self._slot(slot)])

    def level(self, slot: int) -> int:
        return _level(self._words[self._slot(slot)])

    def open_timeout_of(self, slot: int) -> float:
        return self._cfg.timeout_ticks[_level(self._words[self._slot(slot)])] / 1000.0

    def opened_at(self, slot: int) -> float:
        return self._opened_at(self._words[self._slot(slot)])

    def reset_at(self, slot: int) -> float:
        w = self._words[self._slot(slot)]
        if _state(w) == CLOSED:
            return math.nan
        return self._epoch + _deadline(w) / 1000.0

    def snapshot(self, slot: int, now: float) -> tuple[int, int, int, float, float, float]:
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


document(BreakerTable, spec.DOCS)
