"""Lock-free circuit-breaker state table: one 64-bit word per node, one CAS per transition.

This is the storage under :class:`fedgate.breaker.CircuitBreaker`; it knows
integer slots, not node ids, and never reads a clock: every call that depends
on time takes ``now`` (float seconds from the owner's injected clock).

Time is kept in whole milliseconds since ``epoch`` (``ticks``, rounded half
away from zero, clamped to [0, 2^36 - 1], about 795 days): the owner should
pass its clock's reading at construction as ``epoch``. Durations are rounded to
milliseconds the same way, so ``open_timeout_of`` and ``reset_at`` report the
values the table actually uses.

States: ``CLOSED`` 0, ``OPEN`` 1, ``HALF_OPEN`` 2. Admission decisions:
``REJECT`` 0, ``ADMIT`` 1 (closed), ``PROBE`` 2 (a half-open probe).
Transition codes: ``NO_TRANSITION`` (-1) when the stored state did not change,
else ``old * 3 + new`` (see :func:`decode_transition`). The one code with
``old == new``, ``REOPENED_AND_PROBING`` (8, HALF_OPEN -> HALF_OPEN), says the
state left and came back in one step: a stuck probe's reopen whose open
timeout had also passed, so a new probe was admitted.

Time-driven changes are virtual until the next write commits them:

* an OPEN word whose deadline has passed reads as HALF_OPEN;
* a HALF_OPEN word with probes outstanding past their deadline reads as if the
  probe had failed *at that deadline*: OPEN one level higher until
  ``deadline + open timeout``, then HALF_OPEN. Anchoring the reopen at the
  probe deadline, rather than at the next write, keeps a node that nobody
  writes to (the router skips OPEN nodes) from reading OPEN forever.

The pure-Python twin, ``fedgate._breaker_table_py``, has identical behaviour.
"""

import math
import numbers
import operator

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport NAN, isfinite
from libc.stdint cimport int8_t, int64_t, uint64_t

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

CLOSED = FG_BRK_CLOSED
OPEN = FG_BRK_OPEN
HALF_OPEN = FG_BRK_HALF_OPEN

REJECT = 0
ADMIT = 1
PROBE = 2

NO_TRANSITION = -1
TRIPPED = 1                 # CLOSED -> OPEN
PROBING = 5                 # OPEN -> HALF_OPEN (first probe admitted)
RECOVERED = 6               # HALF_OPEN -> CLOSED
REOPENED = 7                # HALF_OPEN -> OPEN
REOPENED_AND_PROBING = 8    # HALF_OPEN -> OPEN -> HALF_OPEN in one step

OP_ALLOW = 0
OP_SUCCESS = 1
OP_FAILURE = 2

MAX_FAILURES = 1023

cdef enum:
    _REJECT = 0
    _ADMIT = 1
    _PROBE = 2
    _NONE = -1
    _TRIPPED = 1
    _PROBING = 5
    _RECOVERED = 6
    _REOPENED = 7
    _REOPENED_AND_PROBING = 8

_MAX_DURATION = 68719476.735   # (2^36 - 1) ms: the longest span a deadline can hold


def decode_transition(code):
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


# ---------------------------------------------------------------- the rules

cdef inline uint64_t _fail(uint64_t w, uint64_t at, const BreakerConfig *cfg) noexcept nogil:
    # A counted failure at tick `at` on a CLOSED or HALF_OPEN word.
    cdef unsigned failures = fg_brk_failures(w)
    cdef unsigned level
    if failures < FG_BRK_FAILURES_MAX:
        failures += 1
    if fg_brk_state(w) == FG_BRK_CLOSED:
        if failures < cfg.failure_threshold:
            return fg_brk_pack(FG_BRK_CLOSED, failures, 0, 0, 0, 0)
        return fg_brk_pack(FG_BRK_OPEN, failures, 0, 0, 0,
                           fg_brk_add_ticks(at, cfg.timeout_ticks[0]))
    level = fg_brk_level(w)
    if level < FG_BRK_LEVEL_MAX:
        level += 1
    return fg_brk_pack(FG_BRK_OPEN, failures, 0, 0, level,
                       fg_brk_add_ticks(at, cfg.timeout_ticks[level]))


cdef uint64_t brk_settle(uint64_t word, uint64_t now, const BreakerConfig *cfg) noexcept nogil:
    """The word with a stuck probe's failure applied (at the probe deadline)."""
    if (fg_brk_state(word) == FG_BRK_HALF_OPEN and fg_brk_probes(word) > 0
            and now >= fg_brk_deadline(word)):
        return _fail(word, fg_brk_deadline(word), cfg)
    return word


cdef int brk_effective_state(uint64_t word, uint64_t now, const BreakerConfig *cfg) noexcept nogil:
    cdef uint64_t w = brk_settle(word, now, cfg)
    cdef int state = fg_brk_state(w)
    if state == FG_BRK_OPEN and now >= fg_brk_deadline(w):
        return FG_BRK_HALF_OPEN
    return state


cdef int brk_step_allow(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                        uint64_t *new_word, int *transition) noexcept nogil:
    cdef uint64_t w = brk_settle(word, now, cfg)
    cdef bint reopened = w != word
    cdef int state = fg_brk_state(w)
    cdef unsigned probes
    transition[0] = _NONE
    new_word[0] = w
    if state == FG_BRK_CLOSED:
        return _ADMIT
    if state == FG_BRK_OPEN:
        if now < fg_brk_deadline(w):
            if reopened:
                transition[0] = _REOPENED
            return _REJECT
        new_word[0] = fg_brk_pack(FG_BRK_HALF_OPEN, fg_brk_failures(w), 1, 0, fg_brk_level(w),
                                  fg_brk_add_ticks(now, cfg.probe_ticks))
        transition[0] = _REOPENED_AND_PROBING if reopened else _PROBING
        return _PROBE
    probes = fg_brk_probes(w)
    if probes >= cfg.half_open_max_probes:
        return _REJECT
    # The deadline is set when the first outstanding probe goes out and kept
    # for later ones: it then bounds every outstanding probe's wait by
    # probe_timeout (a later probe may get less, never more).
    new_word[0] = fg_brk_pack(
        FG_BRK_HALF_OPEN, fg_brk_failures(w), probes + 1, fg_brk_successes(w), fg_brk_level(w),
        fg_brk_add_ticks(now, cfg.probe_ticks) if probes == 0 else fg_brk_deadline(w))
    return _PROBE


cdef int brk_step_success(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil:
    cdef uint64_t w = brk_settle(word, now, cfg)
    cdef int state = fg_brk_state(w)
    cdef unsigned probes, successes
    new_word[0] = w
    if state == FG_BRK_CLOSED:
        new_word[0] = 0     # CLOSED, no failures
        return _NONE
    if state == FG_BRK_OPEN:
        # An answer to a call admitted before the trip: not evidence either way.
        return _REOPENED if w != word else _NONE
    successes = fg_brk_successes(w) + 1
    if successes >= cfg.success_threshold:
        new_word[0] = 0
        return _RECOVERED
    probes = fg_brk_probes(w)
    if probes > 0:
        probes -= 1
    new_word[0] = fg_brk_pack(FG_BRK_HALF_OPEN, 0, probes, successes, fg_brk_level(w),
                              fg_brk_deadline(w))
    return _NONE


cdef int brk_step_failure(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil:
    cdef uint64_t w = brk_settle(word, now, cfg)
    cdef int state = fg_brk_state(w)
    if state == FG_BRK_OPEN:
        new_word[0] = w
        return _REOPENED if w != word else _NONE
    new_word[0] = _fail(w, now, cfg)
    if state == FG_BRK_HALF_OPEN:
        return _REOPENED
    return _TRIPPED if fg_brk_state(new_word[0]) == FG_BRK_OPEN else _NONE


cdef int brk_step_release(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil:
    # A probe that ends with no verdict on the node (the client cancelled, the
    # input was bad): give its slot back so the next call can probe instead of
    # waiting for probe_timeout to count it as a failure.
    cdef uint64_t w = brk_settle(word, now, cfg)
    cdef unsigned probes = fg_brk_probes(w)
    new_word[0] = w
    if fg_brk_state(w) != FG_BRK_HALF_OPEN or probes == 0:
        return _REOPENED if w != word else _NONE
    new_word[0] = fg_brk_pack(FG_BRK_HALF_OPEN, fg_brk_failures(w), probes - 1,
                              fg_brk_successes(w), fg_brk_level(w), fg_brk_deadline(w))
    return _NONE


# A step that leaves the word unchanged writes nothing, so a rejected call on
# an OPEN node is a single load.

cdef int brk_allow(fg_brk_atomic *word, uint64_t now, const BreakerConfig *cfg,
                   int *transition) noexcept nogil:
    cdef uint64_t old = fg_brk_load(word)
    cdef uint64_t new
    cdef int decision
    while True:
        decision = brk_step_allow(old, now, cfg, &new, transition)
        if new == old or fg_brk_cas(word, &old, new):
            return decision


cdef int brk_record_success(fg_brk_atomic *word, uint64_t now,
                            const BreakerConfig *cfg) noexcept nogil:
    cdef uint64_t old = fg_brk_load(word)
    cdef uint64_t new
    cdef int transition
    while True:
        transition = brk_step_success(old, now, cfg, &new)
        if new == old or fg_brk_cas(word, &old, new):
            return transition


cdef int brk_record_failure(fg_brk_atomic *word, uint64_t now,
                            const BreakerConfig *cfg) noexcept nogil:
    cdef uint64_t old = fg_brk_load(word)
    cdef uint64_t new
    cdef int transition
    while True:
        transition = brk_step_failure(old, now, cfg, &new)
        if new == old or fg_brk_cas(word, &old, new):
            return transition


cdef int brk_release(fg_brk_atomic *word, uint64_t now, const BreakerConfig *cfg) noexcept nogil:
    cdef uint64_t old = fg_brk_load(word)
    cdef uint64_t new
    cdef int transition
    while True:
        transition = brk_step_release(old, now, cfg, &new)
        if new == old or fg_brk_cas(word, &old, new):
            return transition


# ---------------------------------------------------------------- validation

def _count(name, value, lo, hi):
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


def _duration(name, value):
    v = to_seconds(value, name)
    if not (math.isfinite(v) and 0.001 <= v <= _MAX_DURATION):
        raise ValueError(
            f"{name}: expected finite seconds in [0.001, {_MAX_DURATION}] "
            f"(the table counts whole milliseconds), got {value!r}"
        )
    return v


def _epoch(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"epoch: expected a clock reading in seconds, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"epoch: expected a finite clock reading in seconds, got {value!r}")
    return v


def _check_array(name, a, dtype, n, writable):
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


# ---------------------------------------------------------------- the table

cdef class BreakerTable:
    """Per-node circuit-breaker state, one lock-free 64-bit word per slot.

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
    Writers (``allow``, ``record_*``) release the GIL around their CAS loops,
    so threads really interleave inside the C code. Storage grows in chunks
    that never move, so ``add_node`` (called with the GIL, by the owner) is
    safe while other threads are mid-CAS on existing slots; it is the only
    operation that allocates.
    """

    def __init__(self, failure_threshold=5, open_timeout=30.0, max_open_timeout=300.0,
                 half_open_max_probes=1, success_threshold=1, probe_timeout=10.0,
                 epoch=0.0, nodes=0):
        cdef int level
        threshold = _count("failure_threshold", failure_threshold, 1, FG_BRK_FAILURES_MAX)
        max_probes = _count("half_open_max_probes", half_open_max_probes, 1, FG_BRK_COUNT_MAX)
        successes = _count("success_threshold", success_threshold, 1, FG_BRK_COUNT_MAX)
        base = _duration("open_timeout", open_timeout)
        cap = _duration("max_open_timeout", max_open_timeout)
        probe = _duration("probe_timeout", probe_timeout)
        if cap < base:
            raise ValueError(
                f"max_open_timeout: expected >= open_timeout ({base!r}), got {max_open_timeout!r}"
            )
        start = _epoch(epoch)
        count = _count("nodes", nodes, 0, None)
        if self._ready:
            # Other threads may be reading the configuration without the GIL.
            raise RuntimeError("BreakerTable.__init__ may only run once")
        self._ready = True
        self.failure_threshold = threshold
        self.half_open_max_probes = max_probes
        self.success_threshold = successes
        self.open_timeout = base
        self.max_open_timeout = cap
        self.probe_timeout = probe
        self.epoch = start
        self._cfg.failure_threshold = threshold
        self._cfg.half_open_max_probes = max_probes
        self._cfg.success_threshold = successes
        self._cfg.probe_ticks = fg_brk_ticks_of_ms(probe * 1000.0)
        for level in range(16):
            self._cfg.timeout_ticks[level] = fg_brk_ticks_of_ms(
                min(base * (2.0 ** level), cap) * 1000.0
            )
        for _ in range(count):
            self.add_node()

    def __dealloc__(self):
        cdef int c
        for c in range(FG_BRK_CHUNKS):
            PyMem_Free(<void *>self._chunks[c])
            self._chunks[c] = NULL

    def __len__(self):
        return self._n

    def __repr__(self):
        return (
            f"BreakerTable(nodes={self._n}, failure_threshold={self.failure_threshold}, "
            f"open_timeout={self.open_timeout!r}, max_open_timeout={self.max_open_timeout!r}, "
            f"half_open_max_probes={self.half_open_max_probes}, "
            f"success_threshold={self.success_threshold}, "
            f"probe_timeout={self.probe_timeout!r}, epoch={self.epoch!r})"
        )

    cdef fg_brk_atomic *_word(self, Py_ssize_t slot) except NULL:
        if slot < 0 or slot >= self._n:
            raise IndexError(f"slot: expected 0 <= slot < {self._n}, got {slot}")
        return fg_brk_slot(self._chunks, <uint64_t>slot)

    cdef uint64_t _now(self, double now) except? 0:
        if not isfinite(now):
            raise ValueError(f"now: expected a finite clock reading in seconds, got {now!r}")
        return fg_brk_ticks(now, self.epoch)

    # ------------------------------------------------------------ growth

    def add_node(self):
        """Add a CLOSED slot and return its index."""
        cdef Py_ssize_t slot = self._n
        cdef uint64_t offset
        cdef int chunk = fg_brk_chunk_of(<uint64_t>slot, &offset)
        cdef size_t length, i
        cdef fg_brk_atomic *words
        if chunk >= FG_BRK_CHUNKS:
            raise OverflowError(f"add_node: the table is full ({slot} slots)")
        if self._chunks[chunk] == NULL:
            length = fg_brk_chunk_len(chunk)
            words = <fg_brk_atomic *>PyMem_Malloc(length * sizeof(fg_brk_atomic))
            if words == NULL:
                raise MemoryError()
            for i in range(length):
                fg_brk_init(&words[i], 0)
            self._chunks[chunk] = words
        self._n = slot + 1
        return slot

    def reset(self, Py_ssize_t slot):
        """Put ``slot`` back to CLOSED with zero counts and level 0."""
        fg_brk_store(self._word(slot), 0)

    # ------------------------------------------------------------ writers

    def allow(self, Py_ssize_t slot, double now):
        """Admit or reject one call: ``REJECT`` 0, ``ADMIT`` 1, ``PROBE`` 2.

        CLOSED admits. OPEN rejects until its deadline, then admits one probe
        (HALF_OPEN). HALF_OPEN admits while fewer than ``half_open_max_probes``
        are in flight. A probe past ``probe_timeout`` counts as failed first.
        """
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int decision, transition
        with nogil:
            decision = brk_allow(word, t, &self._cfg, &transition)
        return decision

    def admit(self, Py_ssize_t slot, double now):
        """Like :meth:`allow`, also returning the transition code it caused."""
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int decision, transition
        with nogil:
            decision = brk_allow(word, t, &self._cfg, &transition)
        return decision, transition

    def record_success(self, Py_ssize_t slot, double now):
        """Record a successful call; return the transition code.

        CLOSED: failures reset. HALF_OPEN: closes after ``success_threshold``
        successes. OPEN: ignored (a late answer from before the trip).
        """
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_record_success(word, t, &self._cfg)
        return transition

    def record_failure(self, Py_ssize_t slot, double now):
        """Record a failure the node caused; return the transition code.

        CLOSED: opens at ``failure_threshold`` consecutive failures. HALF_OPEN:
        reopens one level higher. OPEN: ignored (a late answer).
        """
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_record_failure(word, t, &self._cfg)
        return transition

    def release(self, Py_ssize_t slot, double now):
        """Give back a half-open probe slot without a verdict; return the transition code.

        For a probe that ended for a reason that says nothing about the node
        (a client's cancel, bad input). Anything but HALF_OPEN with probes in
        flight is left as it is.
        """
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_release(word, t, &self._cfg)
        return transition

    def run_batch(self, ops, slots, nows, decisions, transitions):
        """Apply many operations in order, in one call that releases the GIL once.

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

        Everything is validated before any operation is applied.
        """
        cdef Py_ssize_t n, i, bad = -1
        cdef uint64_t t
        cdef int transition
        cdef fg_brk_atomic *word
        _check_array("ops", ops, "int8", None, False)
        n = ops.shape[0]
        _check_array("slots", slots, "int64", n, False)
        _check_array("nows", nows, "float64", n, False)
        _check_array("decisions", decisions, "int8", n, True)
        _check_array("transitions", transitions, "int8", n, True)
        cdef const int8_t[::1] op_v = ops
        cdef const int64_t[::1] slot_v = slots
        cdef const double[::1] now_v = nows
        cdef int8_t[::1] dec_v = decisions
        cdef int8_t[::1] tr_v = transitions
        cdef int64_t limit = self._n
        with nogil:
            for i in range(n):
                if (op_v[i] < 0 or op_v[i] > 2 or slot_v[i] < 0 or slot_v[i] >= limit
                        or not isfinite(now_v[i])):
                    bad = i
                    break
        if bad >= 0:
            if not 0 <= op_v[bad] <= 2:
                raise ValueError(f"ops[{bad}]: expected 0, 1 or 2, got {op_v[bad]}")
            if not 0 <= slot_v[bad] < limit:
                raise IndexError(f"slots[{bad}]: expected 0 <= slot < {limit}, got {slot_v[bad]}")
            raise ValueError(
                f"nows[{bad}]: expected a finite clock reading in seconds, got {now_v[bad]!r}"
            )
        with nogil:
            for i in range(n):
                word = fg_brk_slot(self._chunks, <uint64_t>slot_v[i])
                t = fg_brk_ticks(now_v[i], self.epoch)
                if op_v[i] == 0:
                    dec_v[i] = <int8_t>brk_allow(word, t, &self._cfg, &transition)
                    tr_v[i] = <int8_t>transition
                else:
                    dec_v[i] = -1
                    if op_v[i] == 1:
                        tr_v[i] = <int8_t>brk_record_success(word, t, &self._cfg)
                    else:
                        tr_v[i] = <int8_t>brk_record_failure(word, t, &self._cfg)

    # ------------------------------------------------------------ readers

    def state(self, Py_ssize_t slot, double now):
        """The effective state at ``now``: time-driven changes show without a write."""
        cdef fg_brk_atomic *word = self._word(slot)
        return brk_effective_state(fg_brk_load(word), self._now(now), &self._cfg)

    def states_into(self, double now, out):
        """Write every slot's effective state at ``now`` into ``out[:len(self)]``.

        ``out`` must be a writable, C-contiguous int8 array of at least
        ``len(self)`` elements.
        """
        cdef Py_ssize_t i, n = self._n
        cdef uint64_t t = self._now(now)
        _check_array("out", out, "int8", None, True)
        if out.shape[0] < n:
            raise ValueError(f"out: expected at least {n} elements, got {out.shape[0]}")
        cdef int8_t[::1] view = out
        with nogil:
            for i in range(n):
                view[i] = <int8_t>brk_effective_state(
                    fg_brk_load(fg_brk_slot(self._chunks, <uint64_t>i)), t, &self._cfg)

    def raw(self, Py_ssize_t slot):
        """The stored 64-bit word (for debugging and tests)."""
        return fg_brk_load(self._word(slot))

    def failures(self, Py_ssize_t slot):
        """Stored consecutive failures (saturating at 1023)."""
        return fg_brk_failures(fg_brk_load(self._word(slot)))

    def probes(self, Py_ssize_t slot):
        """Stored half-open probes in flight."""
        return fg_brk_probes(fg_brk_load(self._word(slot)))

    def successes(self, Py_ssize_t slot):
        """Stored half-open successes so far."""
        return fg_brk_successes(fg_brk_load(self._word(slot)))

    def level(self, Py_ssize_t slot):
        """Stored reopen level (saturating at 15)."""
        return fg_brk_level(fg_brk_load(self._word(slot)))

    def open_timeout_of(self, Py_ssize_t slot):
        """The open timeout at the stored level: ``min(open_timeout * 2**level, max)``."""
        return self._cfg.timeout_ticks[fg_brk_level(fg_brk_load(self._word(slot)))] / 1000.0

    def opened_at(self, Py_ssize_t slot):
        """When the stored OPEN state began (clock seconds); NaN unless stored OPEN."""
        return self._opened_at(fg_brk_load(self._word(slot)))

    def reset_at(self, Py_ssize_t slot):
        """The stored deadline in clock seconds (open end or probe deadline); NaN when CLOSED."""
        cdef uint64_t w = fg_brk_load(self._word(slot))
        if fg_brk_state(w) == FG_BRK_CLOSED:
            return NAN
        return self.epoch + fg_brk_deadline(w) / 1000.0

    def snapshot(self, Py_ssize_t slot, double now):
        """The effective view at ``now`` from one load.

        Returns
        -------
        tuple
            ``(state, failures, probes, opened_at, current_timeout, reset_at)``:
            ``opened_at`` is NaN unless effectively OPEN; ``reset_at`` is when
            the state next changes by time alone (OPEN: its end; HALF_OPEN with
            probes out: their deadline), else NaN.
        """
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef uint64_t w = brk_settle(fg_brk_load(word), t, &self._cfg)
        cdef int state = brk_effective_state(w, t, &self._cfg)
        cdef double opened = NAN, reset = NAN
        if state == FG_BRK_OPEN:
            opened = self._opened_at(w)
        if state == FG_BRK_OPEN or (state == FG_BRK_HALF_OPEN and fg_brk_probes(w) > 0):
            reset = self.epoch + fg_brk_deadline(w) / 1000.0
        return (state, fg_brk_failures(w), fg_brk_probes(w), opened,
                self._cfg.timeout_ticks[fg_brk_level(w)] / 1000.0, reset)

    cdef double _opened_at(self, uint64_t w) noexcept:
        if fg_brk_state(w) != FG_BRK_OPEN:
            return NAN
        return self.epoch + (<double>fg_brk_deadline(w)
                             - <double>self._cfg.timeout_ticks[fg_brk_level(w)]) / 1000.0
