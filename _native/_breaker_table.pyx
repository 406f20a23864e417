"""The circuit-breaker state table in C: one 64-bit word per node, one CAS per transition.

The semantics, codes, limits, argument checks, errors and docstrings are in
:mod:`fedgate._core.breaker_spec`; the pure-Python twin is
:mod:`fedgate._core._breaker_table_py`. The word layout and the atomics are in
``breaker_atomic.h``; the transition rules below are ``noexcept nogil`` (one
CAS loop each), so every writer releases the GIL and a rejected call on an
OPEN node is a single load.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport NAN, isfinite
from libc.stdint cimport int8_t, int64_t, uint64_t

from fedgate._core import breaker_spec as spec
from fedgate._core._docs import document
from fedgate._core.breaker_spec import *

__all__ = [*spec.__all__, "BreakerTable"]

# The rules below run without the GIL and need C constants; they must be
# the spec's values, as must the header's (see _check_constants).
cdef enum:
    _REJECT = 0
    _ADMIT = 1
    _PROBE = 2
    _NONE = -1
    _TRIPPED = 1
    _REOPENED_UNPROBED = 4
    _PROBING = 5
    _RECOVERED = 6
    _REOPENED = 7
    _REOPENED_AND_PROBING = 8


def _check_constants():
    compiled = (FG_BRK_CLOSED, FG_BRK_OPEN, FG_BRK_HALF_OPEN, FG_BRK_FAILURES_MAX,
                FG_BRK_COUNT_MAX, FG_BRK_LEVEL_MAX, FG_BRK_TICK_MAX,
                _REJECT, _ADMIT, _PROBE, _NONE, _TRIPPED, _PROBING, _RECOVERED, _REOPENED,
                _REOPENED_AND_PROBING, _REOPENED_UNPROBED)
    specified = (CLOSED, OPEN, HALF_OPEN, MAX_FAILURES, spec.MAX_COUNT, spec.MAX_LEVEL,
                 spec.TICK_MAX, REJECT, ADMIT, PROBE, NO_TRANSITION, TRIPPED, PROBING,
                 RECOVERED, REOPENED, REOPENED_AND_PROBING, REOPENED_UNPROBED)
    if compiled != specified:
        raise ImportError(
            f"fedgate._core._breaker_table: compiled constants {compiled} "
            f"differ from breaker_spec's {specified}; rebuild the extension"
        )


_check_constants()


# ---------------------------------------------------------------- the rules

cdef inline uint64_t _fail(uint64_t w, uint64_t at, const BreakerConfig *cfg) noexcept nogil:
    # A counted failure at tick `at` on a CLOSED, HALF_OPEN or expired OPEN word.
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
        if now < fg_brk_deadline(w):
            # A late answer from a call admitted before the trip.
            new_word[0] = w
            return _REOPENED if w != word else _NONE
        # HALF_OPEN in effect, no probe yet: the failure still reopens, one level up.
        new_word[0] = _fail(w, now, cfg)
        return _REOPENED if w != word else _REOPENED_UNPROBED
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


# ---------------------------------------------------------------- the table

cdef class BreakerTable:
    """Per-node circuit-breaker state, one 64-bit word per slot."""

    def __init__(self, failure_threshold=spec.DEFAULT_FAILURE_THRESHOLD,
                 open_timeout=spec.DEFAULT_OPEN_TIMEOUT,
                 max_open_timeout=spec.DEFAULT_MAX_OPEN_TIMEOUT,
                 half_open_max_probes=spec.DEFAULT_HALF_OPEN_MAX_PROBES,
                 success_threshold=spec.DEFAULT_SUCCESS_THRESHOLD,
                 probe_timeout=spec.DEFAULT_PROBE_TIMEOUT, epoch=0.0, nodes=0):
        cdef int level
        settings = spec.check_settings(failure_threshold, open_timeout, max_open_timeout,
                                       half_open_max_probes, success_threshold, probe_timeout,
                                       epoch, nodes)
        if self._ready:
            # Other threads may be reading the configuration without the GIL.
            raise RuntimeError(spec.REINIT_ERROR)
        self._ready = True
        self.failure_threshold = settings.failure_threshold
        self.half_open_max_probes = settings.half_open_max_probes
        self.success_threshold = settings.success_threshold
        self.open_timeout = settings.open_timeout
        self.max_open_timeout = settings.max_open_timeout
        self.probe_timeout = settings.probe_timeout
        self.epoch = settings.epoch
        self._cfg.failure_threshold = settings.failure_threshold
        self._cfg.half_open_max_probes = settings.half_open_max_probes
        self._cfg.success_threshold = settings.success_threshold
        self._cfg.probe_ticks = fg_brk_ticks_of_ms(settings.probe_ms)
        for level, ms in enumerate(settings.open_ms()):
            self._cfg.timeout_ticks[level] = fg_brk_ticks_of_ms(ms)
        for _ in range(settings.nodes):
            self.add_node()

    def __dealloc__(self):
        cdef int c
        for c in range(FG_BRK_CHUNKS):
            PyMem_Free(<void *>self._chunks[c])
            self._chunks[c] = NULL

    def __len__(self):
        return self._n

    def __repr__(self):
        return spec.table_repr(self)

    cdef fg_brk_atomic *_word(self, Py_ssize_t slot) except NULL:
        if slot < 0 or slot >= self._n:
            raise spec.slot_error(slot, self._n)
        return fg_brk_slot(self._chunks, <uint64_t>slot)

    cdef uint64_t _now(self, double now) except? 0:
        if not isfinite(now):
            raise spec.now_error(now)
        return fg_brk_ticks(now, self.epoch)

    # ------------------------------------------------------------ growth

    def add_node(self):
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
        fg_brk_store(self._word(slot), 0)

    # ------------------------------------------------------------ writers

    def allow(self, Py_ssize_t slot, double now):
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int decision, transition
        with nogil:
            decision = brk_allow(word, t, &self._cfg, &transition)
        return decision

    def admit(self, Py_ssize_t slot, double now):
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int decision, transition
        with nogil:
            decision = brk_allow(word, t, &self._cfg, &transition)
        return decision, transition

    def record_success(self, Py_ssize_t slot, double now):
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_record_success(word, t, &self._cfg)
        return transition

    def record_failure(self, Py_ssize_t slot, double now):
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_record_failure(word, t, &self._cfg)
        return transition

    def release(self, Py_ssize_t slot, double now):
        cdef fg_brk_atomic *word = self._word(slot)
        cdef uint64_t t = self._now(now)
        cdef int transition
        with nogil:
            transition = brk_release(word, t, &self._cfg)
        return transition

    def run_batch(self, ops, slots, nows, decisions, transitions):
        cdef Py_ssize_t n, i, bad = -1
        cdef uint64_t t
        cdef int transition
        cdef fg_brk_atomic *word
        n = spec.check_batch(ops, slots, nows, decisions, transitions)
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
            raise spec.batch_error(bad, op_v[bad], slot_v[bad], now_v[bad], limit)
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
        cdef fg_brk_atomic *word = self._word(slot)
        return brk_effective_state(fg_brk_load(word), self._now(now), &self._cfg)

    def states_into(self, double now, out):
        cdef Py_ssize_t i, n = self._n
        cdef uint64_t t = self._now(now)
        spec.check_states_out(out, n)
        cdef int8_t[::1] view = out
        with nogil:
            for i in range(n):
                view[i] = <int8_t>brk_effective_state(
                    fg_brk_load(fg_brk_slot(self._chunks, <uint64_t>i)), t, &self._cfg)

    def raw(self, Py_ssize_t slot):
        return fg_brk_load(self._word(slot))

    def failures(self, Py_ssize_t slot):
        return fg_brk_failures(fg_brk_load(self._word(slot)))

    def probes(self, Py_ssize_t slot):
        return fg_brk_probes(fg_brk_load(self._word(slot)))

    def successes(self, Py_ssize_t slot):
        return fg_brk_successes(fg_brk_load(self._word(slot)))

    def level(self, Py_ssize_t slot):
        return fg_brk_level(fg_brk_load(self._word(slot)))

    def open_timeout_of(self, Py_ssize_t slot):
        return self._cfg.timeout_ticks[fg_brk_level(fg_brk_load(self._word(slot)))] / 1000.0

    def opened_at(self, Py_ssize_t slot):
        return self._opened_at(fg_brk_load(self._word(slot)))

    def reset_at(self, Py_ssize_t slot):
        cdef uint64_t w = fg_brk_load(self._word(slot))
        if fg_brk_state(w) == FG_BRK_CLOSED:
            return NAN
        return self.epoch + fg_brk_deadline(w) / 1000.0

    def snapshot(self, Py_ssize_t slot, double now):
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


document(BreakerTable, spec.DOCS)
