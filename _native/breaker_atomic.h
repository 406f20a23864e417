/*
 * breaker_atomic.h: one circuit breaker's whole state in one 64-bit word.
 *
 * Every transition of a breaker is a single compare-and-swap on this word, so
 * a reader can never see a torn state (say, OPEN with the previous episode's
 * deadline) and no lock is ever taken. The transition rules themselves live in
 * _breaker_table.pyx; this header only holds the atomics, the bit layout and
 * the slot -> storage arithmetic, so that any Cython module can share them.
 *
 * Layout, low bits first (2 + 10 + 6 + 6 + 4 + 36 = 64):
 *
 *   bits  0..1   state            0 CLOSED, 1 OPEN, 2 HALF_OPEN
 *   bits  2..11  failures         consecutive failures, saturating at 1023
 *   bits 12..17  probes           half-open probes in flight (<= 63)
 *   bits 18..23  successes        half-open successes so far (<= 63)
 *   bits 24..27  level            reopen level, saturating at 15
 *   bits 28..63  deadline         milliseconds since the table's epoch
 *
 * 36 bits of milliseconds cover 2^36 ms, about 795 days after the epoch.
 */
#ifndef FEDGATE_BREAKER_ATOMIC_H
#define FEDGATE_BREAKER_ATOMIC_H

#include <math.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef _Atomic uint64_t fg_brk_atomic;

/* The states are the routing codes BREAKER_* of fedgate/_core/codes.py and the
 * limits those of fedgate/_core/breaker_spec.py: tests/test_twins.py parses
 * these lines, and the compiled module refuses to load if they disagree. */
#define FG_BRK_CLOSED 0
#define FG_BRK_OPEN 1
#define FG_BRK_HALF_OPEN 2

#define FG_BRK_FAILURES_MAX 1023u
#define FG_BRK_COUNT_MAX 63u
#define FG_BRK_LEVEL_MAX 15u
#define FG_BRK_TICK_MAX ((UINT64_C(1) << 36) - 1)

/* Storage is a list of chunks that never move: chunk c holds 64 << c words.
 * Growing the table allocates a new chunk instead of realloc'ing, because
 * other threads may be inside a CAS loop (GIL released) on an existing word
 * while the owner adds a node. 32 chunks hold 64 * (2^32 - 1) slots. */
#define FG_BRK_CHUNK0_BITS 6
#define FG_BRK_CHUNKS 32

/* acquire/acq_rel rather than relaxed: a writer's earlier stores (the owner's
 * statistics, say) become visible to whoever reads the word it published. The
 * word is self-contained, so nothing stronger (seq_cst) is needed. */
static inline uint64_t fg_brk_load(fg_brk_atomic *word) {
    return atomic_load_explicit(word, memory_order_acquire);
}

static inline void fg_brk_store(fg_brk_atomic *word, uint64_t value) {
    atomic_store_explicit(word, value, memory_order_release);
}

/* The weak form may fail spuriously; every caller loops, and the loop is
 * cheaper than the strong form's internal retry on LL/SC machines. On failure
 * *expected receives the current word. */
static inline int fg_brk_cas(fg_brk_atomic *word, uint64_t *expected, uint64_t desired) {
    return atomic_compare_exchange_weak_explicit(word, expected, desired, memory_order_acq_rel,
                                                 memory_order_acquire);
}

static inline void fg_brk_init(fg_brk_atomic *word, uint64_t value) { atomic_init(word, value); }

static inline unsigned fg_brk_state(uint64_t w) { return (unsigned)(w & 0x3u); }
static inline unsigned fg_brk_failures(uint64_t w) { return (unsigned)((w >> 2) & 0x3FFu); }
static inline unsigned fg_brk_probes(uint64_t w) { return (unsigned)((w >> 12) & 0x3Fu); }
static inline unsigned fg_brk_successes(uint64_t w) { return (unsigned)((w >> 18) & 0x3Fu); }
static inline unsigned fg_brk_level(uint64_t w) { return (unsigned)((w >> 24) & 0xFu); }
static inline uint64_t fg_brk_deadline(uint64_t w) { return w >> 28; }

/* Callers keep every field within its width; the masks only stop a bug in
 * one field from corrupting its neighbours. */
static inline uint64_t fg_brk_pack(unsigned state, unsigned failures, unsigned probes,
                                   unsigned successes, unsigned level, uint64_t deadline) {
    return ((uint64_t)(state & 0x3u)) | ((uint64_t)(failures & 0x3FFu) << 2) |
           ((uint64_t)(probes & 0x3Fu) << 12) | ((uint64_t)(successes & 0x3Fu) << 18) |
           ((uint64_t)(level & 0xFu) << 24) | ((deadline & FG_BRK_TICK_MAX) << 28);
}

/* Milliseconds -> ticks: round half away from zero (llround), clamped to the
 * 36-bit range first so llround never sees a value it cannot represent.
 * The pure-Python twin reproduces exactly this rounding. */
static inline uint64_t fg_brk_ticks_of_ms(double ms) {
    if (!(ms > 0.0)) return 0; /* also catches NaN, which callers exclude anyway */
    if (ms >= (double)FG_BRK_TICK_MAX) return FG_BRK_TICK_MAX;
    return (uint64_t)llround(ms);
}

/* A clock reading -> ticks since the epoch. */
static inline uint64_t fg_brk_ticks(double now, double epoch) {
    return fg_brk_ticks_of_ms((now - epoch) * 1000.0);
}

static inline uint64_t fg_brk_add_ticks(uint64_t a, uint64_t b) {
    uint64_t sum = a + b; /* both <= 2^36, no wrap */
    return sum > FG_BRK_TICK_MAX ? FG_BRK_TICK_MAX : sum;
}

static inline int fg_brk_high_bit(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return 63 - __builtin_clzll(x);
#else
    int bit = 0;
    while (x >>= 1) ++bit;
    return bit;
#endif
}

/* Which chunk holds `slot`, and where in it. */
static inline int fg_brk_chunk_of(uint64_t slot, uint64_t *offset) {
    uint64_t pos = slot + (UINT64_C(1) << FG_BRK_CHUNK0_BITS);
    int bit = fg_brk_high_bit(pos);
    *offset = pos - (UINT64_C(1) << bit);
    return bit - FG_BRK_CHUNK0_BITS;
}

static inline size_t fg_brk_chunk_len(int chunk) {
    return (size_t)1 << (FG_BRK_CHUNK0_BITS + chunk);
}

static inline fg_brk_atomic *fg_brk_slot(fg_brk_atomic *const *chunks, uint64_t slot) {
    uint64_t offset;
    int chunk = fg_brk_chunk_of(slot, &offset);
    return chunks[chunk] + offset;
}

#endif /* FEDGATE_BREAKER_ATOMIC_H */
