"""The latency table in C: one contiguous block, percentiles by selection (compiled core).

What the table must do, its limits, argument checks, errors and docstrings are
in :mod:`fedgate._core.latency_spec`; the pure-Python twin is
:mod:`fedgate._core._latency_py`. Recording and reading percentiles stay in C:
one contiguous block holds all windows (nodes x window float64), and
percentiles come from selection on a preallocated scratch copy rather than a
sort, bit for bit those of ``numpy.percentile``.
"""

from libc.math cimport INFINITY, NAN, floor
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

import numpy as np

from fedgate._core import latency_spec as spec
from fedgate._core._docs import document
from fedgate._core.latency_spec import MAX_WINDOW

__all__ = ["MAX_WINDOW", "LatencyTable"]

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

# Below this many elements insertion sort beats another partition step.
cdef Py_ssize_t _SMALL = 16
cdef double[3] _TRIPLE
_TRIPLE[0], _TRIPLE[1], _TRIPLE[2] = spec.PERCENTILES


# ---------------------------------------------------------------- selection


cdef inline void _swap(double* a, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef double t = a[i]
    a[i] = a[j]
    a[j] = t


cdef void _insertion_sort(double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(1, n):
        v = a[i]
        j = i
        while j > 0 and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


cdef void _sift_down(double* a, Py_ssize_t root, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t child
    cdef double v = a[root]
    while True:
        child = 2 * root + 1
        if child >= n:
            break
        if child + 1 < n and a[child + 1] > a[child]:
            child += 1
        if a[child] <= v:
            break
        a[root] = a[child]
        root = child
    a[root] = v


cdef void _heapsort(double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = n // 2
    while i > 0:
        i -= 1
        _sift_down(a, i, n)
    i = n
    while i > 1:
        i -= 1
        _swap(a, 0, i)
        _sift_down(a, 0, i)


cdef void _introselect(double* a, Py_ssize_t n, Py_ssize_t k, int depth) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n - 1, mid, i, s, t, equal
    cdef double pivot, v
    while hi - lo >= _SMALL:
        if depth <= 0:
            # Median-of-3 has adversarial inputs; a bounded number of partition
            # rounds followed by heapsort keeps the worst case O(n log n).
            _heapsort(a + lo, hi - lo + 1)
            return
        depth -= 1
        mid = lo + ((hi - lo) >> 1)
        if a[mid] < a[lo]:
            _swap(a, mid, lo)
        if a[hi] < a[mid]:
            _swap(a, hi, mid)
            if a[mid] < a[lo]:
                _swap(a, mid, lo)
        _swap(a, mid, hi)
        pivot = a[hi]
        # Branchless Lomuto: latencies put each comparison at a coin flip, and
        # a mispredicted branch per element costs more than the unconditional
        # swap. a[lo:s] < pivot <= a[s:i] throughout.
        s = lo
        equal = 0
        for i in range(lo, hi):
            v = a[i]
            a[i] = a[s]
            a[s] = v
            s += v < pivot
            equal += v == pivot
        a[hi] = a[s]
        a[s] = pivot
        if k < s:
            hi = s - 1
        elif k == s:
            return
        else:
            lo = s + 1
            if equal:
                # Copies of the pivot (runs of identical latencies) go right
                # after it and are never partitioned again; without this an
                # all-equal window would cost quadratic time.
                t = lo
                for i in range(lo, hi + 1):
                    v = a[i]
                    a[i] = a[t]
                    a[t] = v
                    t += v == pivot
                if k < t:
                    return
                lo = t
    _insertion_sort(a + lo, hi - lo + 1)


cdef inline int _depth_budget(Py_ssize_t n) noexcept nogil:
    cdef int depth = 0
    while n > 1:
        depth += 2
        n >>= 1
    return depth


cdef void select_kth(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    _introselect(a, n, k, _depth_budget(n))


cdef inline Py_ssize_t _rank(Py_ssize_t n, double percent, double* gamma) noexcept nogil:
    # numpy's 'linear' method: virtual index (n - 1) * (q / 100), where an
    # index at or past the last element takes the last element.
    cdef double h = <double>(n - 1) * (percent / 100.0)
    cdef double f
    if h >= <double>(n - 1):
        gamma[0] = 0.0
        return n - 1
    f = floor(h)
    gamma[0] = h - f
    return <Py_ssize_t>f


cdef void _quantiles_split(double* a, Py_ssize_t n, Py_ssize_t split, const double* percents,
                           Py_ssize_t nq, double* out) noexcept nogil:
    # `split` is -1 or a position already holding its order statistic, with
    # everything before it smaller and everything after it not smaller.
    cdef Py_ssize_t t, u, r, ru, nxt, i, lo, hi, done = -1
    cdef double g, gu, low, high, d
    # Ascending ranks: each selection runs only between the positions fixed so
    # far, so p95 and p99 cost a fraction of p50.
    for t in range(nq):
        r = _rank(n, percents[t], &g)
        if r != done and r != split:
            lo = done + 1
            hi = n - 1
            if split > r:
                hi = split - 1
            elif split >= lo:
                lo = split + 1
            _introselect(a + lo, hi - lo + 1, r - lo, _depth_budget(hi - lo + 1))
        done = r
    for t in range(nq):
        r = _rank(n, percents[t], &g)
        low = a[r]
        if g == 0.0:
            # numpy computes low + (high - low) * 0, which is low exactly.
            out[t] = low
            continue
        # a[r+1 .. next fixed position] holds order statistics r+1 .. that
        # position in some order, so their minimum is the (r+1)-th smallest.
        nxt = split if split > r else n - 1
        for u in range(t + 1, nq):
            ru = _rank(n, percents[u], &gu)
            if ru > r:
                if ru < nxt:
                    nxt = ru
                break
        high = a[r + 1]
        for i in range(r + 2, nxt + 1):
            if a[i] < high:
                high = a[i]
        # Same two-sided form as numpy's _lerp, so results match to the bit.
        d = high - low
        if g >= 0.5:
            out[t] = high - d * (1.0 - g)
        else:
            out[t] = low + d * g


cdef void quantiles_inplace(double* a, Py_ssize_t n, const double* percents,
                            Py_ssize_t nq, double* out) noexcept nogil:
    _quantiles_split(a, n, -1, percents, nq, out)


cdef inline Py_ssize_t _median3_index(const double* a, Py_ssize_t i, Py_ssize_t j,
                                      Py_ssize_t k) noexcept nogil:
    if a[i] < a[j]:
        if a[j] < a[k]:
            return j
        return k if a[i] < a[k] else i
    if a[i] < a[k]:
        return i
    return k if a[j] < a[k] else j


cdef void quantiles_from(const double* src, double* scratch, Py_ssize_t n,
                         const double* percents, Py_ssize_t nq, double* out) noexcept nogil:
    cdef Py_ssize_t p, i, front = 0, back = n - 1, at
    cdef double pivot, v
    cdef int smaller
    if n < 64:
        memcpy(scratch, src, <size_t>n * sizeof(double))
        _quantiles_split(scratch, n, -1, percents, nq, out)
        return
    # The copy is also the first partition: smaller values fill scratch from
    # the front, the others from the back, and both stores are unconditional
    # so that no branch depends on the data. That saves a whole pass over the
    # window compared with memcpy followed by an in-place partition.
    p = _median3_index(src, 0, n >> 1, n - 1)
    pivot = src[p]
    for i in range(p):
        v = src[i]
        smaller = v < pivot
        scratch[front] = v
        scratch[back] = v
        front += smaller
        back += smaller - 1
    # src[p] is the pivot itself and lands at the back position now current;
    # later stores stay below it.
    at = back
    for i in range(p, n):
        v = src[i]
        smaller = v < pivot
        scratch[front] = v
        scratch[back] = v
        front += smaller
        back += smaller - 1
    scratch[at] = scratch[front]
    scratch[front] = pivot
    _quantiles_split(scratch, n, front, percents, nq, out)


cdef inline Py_ssize_t _first_invalid(const double* v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        # One comparison pair rejects NaN, negatives and both infinities.
        if not (v[i] >= 0.0 and v[i] < INFINITY):
            return i
    return -1


def _nth_element(double[::1] values not None, Py_ssize_t k, int depth=-1):
    """Run the selection kernel in place on `values` (tests only).

    ``depth`` overrides the partition budget (0 forces the heapsort fallback).
    """
    cdef Py_ssize_t n = values.shape[0]
    if not 0 <= k < n:
        raise IndexError(f"k: expected 0 <= k < {n}, got {k}")
    if _first_invalid(&values[0], n) >= 0:
        raise ValueError("values: expected finite numbers >= 0")
    _introselect(&values[0], n, k, _depth_budget(n) if depth < 0 else depth)


# ---------------------------------------------------------------- the table


cdef class LatencyTable:
    """Sliding windows of the most recent latencies of each node, with percentiles."""

    def __cinit__(self):
        self._data = NULL
        self._head = NULL
        self._count = NULL
        self._scratch = NULL
        self._window = 0
        self._nodes = 0
        self._capacity = 0

    def __init__(self, window=spec.DEFAULT_WINDOW, nodes=0):
        window = spec.check_window(window)
        nodes = spec.check_nodes(nodes, window)
        self._release()
        self._window = window
        self._scratch = <double*>malloc(<size_t>self._window * sizeof(double))
        if self._scratch == NULL:
            raise MemoryError(f"latency table: cannot allocate a window of {window} samples")
        self._reserve(nodes)
        cdef Py_ssize_t s
        for s in range(nodes):
            self._head[s] = 0
            self._count[s] = 0
        self._nodes = nodes

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        free(self._data)
        free(self._head)
        free(self._count)
        free(self._scratch)
        self._data = NULL
        self._head = NULL
        self._count = NULL
        self._scratch = NULL
        self._nodes = 0
        self._capacity = 0

    cdef int _reserve(self, Py_ssize_t nodes) except -1:
        # The per-node arrays grow with the block, and capacity moves only
        # once all three have grown.
        cdef Py_ssize_t cap
        cdef void* p
        if nodes <= self._capacity:
            return 0
        cap = spec.grown_capacity(self._capacity, nodes)
        spec.check_room(cap, self._window)
        p = realloc(self._data, <size_t>cap * <size_t>self._window * sizeof(double))
        if p == NULL:
            raise MemoryError(f"latency table: cannot grow to {cap} nodes x {self._window} samples")
        self._data = <double*>p
        p = realloc(self._head, <size_t>cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError(f"latency table: cannot grow to {cap} nodes")
        self._head = <Py_ssize_t*>p
        p = realloc(self._count, <size_t>cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError(f"latency table: cannot grow to {cap} nodes")
        self._count = <Py_ssize_t*>p
        self._capacity = cap
        return 0

    cdef int _check_slot(self, Py_ssize_t slot) except -1:
        if slot < 0 or slot >= self._nodes:
            raise spec.slot_error(slot, self._nodes)
        return 0

    cdef void _push(self, Py_ssize_t slot, double seconds) noexcept nogil:
        cdef Py_ssize_t h = self._head[slot]
        self._data[slot * self._window + h] = seconds
        h += 1
        if h == self._window:
            h = 0
        self._head[slot] = h
        if self._count[slot] < self._window:
            self._count[slot] += 1

    cdef void _slot_quantiles(self, Py_ssize_t slot, const double* percents,
                              Py_ssize_t nq, double* out) noexcept nogil:
        cdef Py_ssize_t n = self._count[slot], t
        if n == 0:
            for t in range(nq):
                out[t] = NAN
            return
        # Until the ring wraps, its samples are exactly the first `count`
        # cells; after, all cells. Either way a prefix, in any order.
        quantiles_from(self._data + slot * self._window, self._scratch, n, percents, nq, out)

    # Compiled properties take their docstrings from source only; the twins'
    # test holds these equal to latency_spec.DOCS.
    @property
    def window(self):
        """Samples kept per node."""
        return self._window

    @property
    def capacity(self):
        """Node slots the buffer holds before it must grow again."""
        return self._capacity

    def __len__(self):
        return self._nodes

    def __repr__(self):
        return spec.table_repr(self._window, self._nodes)

    def __reduce__(self):
        # Raw C buffers have no pickled form; say so plainly (the twin agrees).
        raise TypeError(spec.PICKLE_ERROR)

    def add_node(self):
        cdef Py_ssize_t slot = self._nodes
        if slot == PY_SSIZE_T_MAX:
            raise MemoryError(spec.FULL_ERROR)
        self._reserve(slot + 1)
        self._head[slot] = 0
        self._count[slot] = 0
        self._nodes = slot + 1
        return slot

    def reset(self, Py_ssize_t slot):
        self._check_slot(slot)
        self._head[slot] = 0
        self._count[slot] = 0

    def record(self, Py_ssize_t slot, double seconds):
        self._check_slot(slot)
        if not (seconds >= 0.0 and seconds < INFINITY):
            raise spec.latency_error(seconds)
        self._push(slot, seconds)

    def record_many(self, Py_ssize_t slot, values):
        self._check_slot(slot)
        cdef const double[::1] v = spec.as_samples(values)
        cdef Py_ssize_t n = v.shape[0], i
        if n == 0:
            return
        i = _first_invalid(&v[0], n)
        if i >= 0:
            raise spec.latency_error(v[i], i)
        for i in range(n):
            self._push(slot, v[i])

    def count(self, Py_ssize_t slot):
        self._check_slot(slot)
        return self._count[slot]

    def percentile(self, Py_ssize_t slot, double q):
        cdef double result
        self._check_slot(slot)
        if not (q >= 0.0 and q <= 100.0):
            raise spec.percentile_error(q)
        self._slot_quantiles(slot, &q, 1, &result)
        return result

    def percentiles(self, Py_ssize_t slot):
        cdef double[3] result
        self._check_slot(slot)
        self._slot_quantiles(slot, _TRIPLE, 3, result)
        return (result[0], result[1], result[2])

    def all_percentiles(self, out=None):
        out = spec.check_out(out, self._nodes)
        cdef double[:, ::1] view = out
        cdef Py_ssize_t s
        if self._nodes == 0:
            return out
        # The GIL stays held: releasing it would let add_node realloc the
        # block under this loop.
        for s in range(self._nodes):
            self._slot_quantiles(s, _TRIPLE, 3, &view[s, 0])
        return out

    def samples(self, Py_ssize_t slot):
        self._check_slot(slot)
        cdef Py_ssize_t n = self._count[slot], h = self._head[slot], w = self._window
        cdef const double* row = self._data + slot * w
        result = np.empty(n, dtype=np.float64)
        cdef double[::1] view = result
        if n == 0:
            return result
        if n < w:
            memcpy(&view[0], row, <size_t>n * sizeof(double))
        else:
            memcpy(&view[0], row + h, <size_t>(w - h) * sizeof(double))
            if h:
                memcpy(&view[w - h], row, <size_t>h * sizeof(double))
        return result


document(LatencyTable, spec.DOCS)
