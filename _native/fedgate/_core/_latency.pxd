# Declarations of the compiled latency table, for other Cython modules to cimport.
#
# The selection kernels are exported so that any Cython code holding a scratch
# copy of latencies can compute numpy-identical percentiles without the GIL.

cimport cython

# Rearranges a[0:n] so that a[k] holds the k-th smallest value, with
# a[:k] <= a[k] <= a[k+1:] (introselect: median-of-3 quickselect, heapsort
# once the depth budget is spent). Requires 0 <= k < n and no NaN.
cdef void select_kth(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil

# numpy.percentile(a[:n], percents) with the default 'linear' method, written
# to out[0:nq]. Scrambles a. Requires n >= 1, no NaN, and percents ascending
# within [0, 100].
cdef void quantiles_inplace(double* a, Py_ssize_t n, const double* percents,
                            Py_ssize_t nq, double* out) noexcept nogil

# The same for src[:n], left intact: the copy into scratch[:n] doubles as the
# first partition pass.
cdef void quantiles_from(const double* src, double* scratch, Py_ssize_t n,
                         const double* percents, Py_ssize_t nq, double* out) noexcept nogil


@cython.final
cdef class LatencyTable:
    # All nodes' windows in one block, row `slot` at _data + slot * _window,
    # so that all_percentiles walks memory in order.
    cdef double* _data
    # Next write position and number of live samples in each node's window.
    cdef Py_ssize_t* _head
    cdef Py_ssize_t* _count
    # One window of workspace: selection permutes its input, and the samples
    # must keep their order for samples() and for the ring itself.
    cdef double* _scratch
    cdef Py_ssize_t _window
    cdef Py_ssize_t _nodes
    cdef Py_ssize_t _capacity

    cdef void _release(self) noexcept
    cdef int _reserve(self, Py_ssize_t nodes) except -1
    cdef int _check_slot(self, Py_ssize_t slot) except -1
    cdef void _push(self, Py_ssize_t slot, double seconds) noexcept nogil
    cdef void _slot_quantiles(self, Py_ssize_t slot, const double* percents,
                              Py_ssize_t nq, double* out) noexcept nogil
