# The circuit-breaker state table: C declarations other Cython modules can cimport.
#
# The word layout and the atomics are in breaker_atomic.h; the transition
# rules are the noexcept nogil functions below (one CAS loop each), so a
# compiled caller can drive a breaker without touching Python objects.

from libc.stdint cimport int8_t, int64_t, uint64_t


cdef extern from "breaker_atomic.h" nogil:
    # The C type is `_Atomic uint64_t`, which Cython cannot spell; declaring it
    # as an integer is safe because it is only ever handled through pointers
    # passed to the fg_brk_* functions (and C11 makes even a plain access to an
    # _Atomic object atomic).
    ctypedef uint64_t fg_brk_atomic

    enum:
        FG_BRK_CLOSED
        FG_BRK_OPEN
        FG_BRK_HALF_OPEN
        FG_BRK_CHUNKS

    const unsigned FG_BRK_FAILURES_MAX
    const unsigned FG_BRK_COUNT_MAX
    const unsigned FG_BRK_LEVEL_MAX
    const uint64_t FG_BRK_TICK_MAX

    uint64_t fg_brk_load(fg_brk_atomic *word)
    void fg_brk_store(fg_brk_atomic *word, uint64_t value)
    bint fg_brk_cas(fg_brk_atomic *word, uint64_t *expected, uint64_t desired)
    void fg_brk_init(fg_brk_atomic *word, uint64_t value)

    unsigned fg_brk_state(uint64_t w)
    unsigned fg_brk_failures(uint64_t w)
    unsigned fg_brk_probes(uint64_t w)
    unsigned fg_brk_successes(uint64_t w)
    unsigned fg_brk_level(uint64_t w)
    uint64_t fg_brk_deadline(uint64_t w)
    uint64_t fg_brk_pack(unsigned state, unsigned failures, unsigned probes,
                         unsigned successes, unsigned level, uint64_t deadline)

    uint64_t fg_brk_ticks_of_ms(double ms)
    uint64_t fg_brk_ticks(double now, double epoch)
    uint64_t fg_brk_add_ticks(uint64_t a, uint64_t b)

    int fg_brk_chunk_of(uint64_t slot, uint64_t *offset)
    size_t fg_brk_chunk_len(int chunk)
    fg_brk_atomic *fg_brk_slot(fg_brk_atomic **chunks, uint64_t slot)


# Everything a transition needs to know about the configuration, in ticks.
cdef struct BreakerConfig:
    unsigned failure_threshold
    unsigned half_open_max_probes
    unsigned success_threshold
    uint64_t probe_ticks
    uint64_t timeout_ticks[16]     # open timeout at each reopen level


# Pure functions of a word (no memory access): the table's semantics.
cdef uint64_t brk_settle(uint64_t word, uint64_t now, const BreakerConfig *cfg) noexcept nogil
cdef int brk_effective_state(uint64_t word, uint64_t now, const BreakerConfig *cfg) noexcept nogil
cdef int brk_step_allow(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                        uint64_t *new_word, int *transition) noexcept nogil
cdef int brk_step_success(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil
cdef int brk_step_failure(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil
cdef int brk_step_release(uint64_t word, uint64_t now, const BreakerConfig *cfg,
                          uint64_t *new_word) noexcept nogil

# The same, applied to a shared word by a CAS loop.
cdef int brk_allow(fg_brk_atomic *word, uint64_t now, const BreakerConfig *cfg,
                   int *transition) noexcept nogil
cdef int brk_record_success(fg_brk_atomic *word, uint64_t now,
                            const BreakerConfig *cfg) noexcept nogil
cdef int brk_record_failure(fg_brk_atomic *word, uint64_t now,
                            const BreakerConfig *cfg) noexcept nogil
cdef int brk_release(fg_brk_atomic *word, uint64_t now, const BreakerConfig *cfg) noexcept nogil


cdef class BreakerTable:
    cdef fg_brk_atomic *_chunks[FG_BRK_CHUNKS]
    cdef Py_ssize_t _n
    cdef bint _ready
    cdef BreakerConfig _cfg
    cdef readonly double epoch
    cdef readonly int failure_threshold
    cdef readonly double open_timeout
    cdef readonly double max_open_timeout
    cdef readonly int half_open_max_probes
    cdef readonly int success_threshold
    cdef readonly double probe_timeout

    cdef fg_brk_atomic *_word(self, Py_ssize_t slot) except NULL
    cdef uint64_t _now(self, double now) except? 0
    cdef double _opened_at(self, uint64_t w) noexcept
