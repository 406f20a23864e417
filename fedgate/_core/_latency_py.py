"""The latency table in pure Python: windows in NumPy rows, ``numpy.percentile`` itself.

The twin of the compiled :mod:`fedgate._core._latency`; what both must do, their
limits, argument checks, errors and docstrings are in
:mod:`fedgate._core.latency_spec`, and :mod:`fedgate._core` picks one.
``numpy.percentile`` is the definition the compiled selection kernel
reproduces to the bit.
"""

from __future__ import annotations

import math
import operator
import sys
from typing import SupportsFloat, SupportsIndex

import numpy as np
import numpy.typing as npt

from fedgate._core import latency_spec as spec
from fedgate._core._docs import document
from fedgate._core.latency_spec import MAX_WINDOW

__all__ = ["MAX_WINDOW", "LatencyTable"]

_SSIZE_MIN = -sys.maxsize - 1


def _as_ssize(value: SupportsIndex) -> int:
    # What Cython does for a Py_ssize_t argument: __index__, then a range check.
    result = operator.index(value)
    if not _SSIZE_MIN <= result <= sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return result


def _as_double(value: SupportsFloat) -> float:
    # What Cython does for a double argument (PyFloat_AsDouble): __float__ or
    # __index__ only, so strings and buffers are refused rather than parsed.
    if isinstance(value, float):
        return value
    kind = type(value)
    if not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"must be real number, not {kind.__name__}")
    return float(value)


class LatencyTable:
    def __init__(self, window: int = spec.DEFAULT_WINDOW, nodes: int = 0) -> None:
        w = spec.check_window(window)
        n = spec.check_nodes(nodes, w)
        self._window = w
        self._capacity = 0
        self._data: npt.NDArray[np.float64] = np.empty((0, w), dtype=np.float64)
        self._head: list[int] = []
        self._count: list[int] = []
        self._reserve(n)
        self._head = [0] * n
        self._count = [0] * n

    def _reserve(self, nodes: int) -> None:
        if nodes <= self._capacity:
            return
        cap = spec.grown_capacity(self._capacity, nodes)
        spec.check_room(cap, self._window)
        grown = np.empty((cap, self._window), dtype=np.float64)
        used = len(self._head)
        grown[:used] = self._data[:used]
        self._data = grown
        self._capacity = cap

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < len(self._head):
            raise spec.slot_error(slot, len(self._head))

    @property
    def window(self) -> int:
        return self._window

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._head)

    def __repr__(self) -> str:
        return spec.table_repr(self._window, len(self._head))

    def __reduce__(self) -> tuple[object, ...]:
        # The compiled table holds raw C buffers and cannot be pickled; the
        # twin refuses too rather than behave differently.
        raise TypeError(spec.PICKLE_ERROR)

    def add_node(self) -> int:
        slot = len(self._head)
        if slot == spec.SSIZE_MAX:
            raise MemoryError(spec.FULL_ERROR)
        self._reserve(slot + 1)
        self._head.append(0)
        self._count.append(0)
        return slot

    def reset(self, slot: SupportsIndex) -> None:
        s = _as_ssize(slot)
        self._check_slot(s)
        self._head[s] = 0
        self._count[s] = 0

    def record(self, slot: SupportsIndex, seconds: SupportsFloat) -> None:
        s = _as_ssize(slot)
        x = _as_double(seconds)
        self._check_slot(s)
        if not 0.0 <= x < math.inf:
            raise spec.latency_error(x)
        h = self._head[s]
        self._data[s, h] = x
        h += 1
        self._head[s] = 0 if h == self._window else h
        if self._count[s] < self._window:
            self._count[s] += 1

    def record_many(self, slot: SupportsIndex, values: npt.ArrayLike) -> None:
        s = _as_ssize(slot)
        self._check_slot(s)
        arr = spec.as_samples(values)
        bad = np.flatnonzero(~((arr >= 0.0) & (arr < np.inf)))
        if bad.size:
            i = int(bad[0])
            raise spec.latency_error(float(arr[i]), i)
        m = arr.shape[0]
        if m == 0:
            return
        w = self._window
        # Only the last `window` values survive; they land where the ring would
        # have put them one by one.
        kept = min(m, w)
        first = (self._head[s] + m - kept) % w
        self._data[s, (first + np.arange(kept)) % w] = arr[m - kept :]
        self._head[s] = (self._head[s] + m) % w
        self._count[s] = min(w, self._count[s] + m)

    def count(self, slot: SupportsIndex) -> int:
        s = _as_ssize(slot)
        self._check_slot(s)
        return self._count[s]

    def percentile(self, slot: SupportsIndex, q: SupportsFloat) -> float:
        s = _as_ssize(slot)
        p = _as_double(q)
        self._check_slot(s)
        if not 0.0 <= p <= 100.0:
            raise spec.percentile_error(p)
        n = self._count[s]
        if n == 0:
            return math.nan
        return float(np.percentile(self._data[s, :n], p))

    def percentiles(self, slot: SupportsIndex) -> tuple[float, float, float]:
        s = _as_ssize(slot)
        self._check_slot(s)
        n = self._count[s]
        if n == 0:
            return (math.nan, math.nan, math.nan)
        p50, p95, p99 = np.percentile(self._data[s, :n], spec.PERCENTILES).tolist()
        return (p50, p95, p99)

    def all_percentiles(
        self, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        nodes = len(self._head)
        out = spec.check_out(out, nodes)
        if nodes == 0:
            return out
        counts = np.asarray(self._count, dtype=np.intp)
        full = np.flatnonzero(counts == self._window)
        if full.size:
            # Full windows share a length, so numpy does them in one call.
            out[full] = np.percentile(self._data[full], spec.PERCENTILES, axis=1).T
        for s in np.flatnonzero(counts != self._window).tolist():
            n = self._count[s]
            out[s] = np.percentile(self._data[s, :n], spec.PERCENTILES) if n else math.nan
        return out

    def samples(self, slot: SupportsIndex) -> npt.NDArray[np.float64]:
        s = _as_ssize(slot)
        self._check_slot(s)
        n, h = self._count[s], self._head[s]
        row = self._data[s]
        if n < self._window:
            return row[:n].copy()
        return np.concatenate((row[h:], row[:h]))


document(LatencyTable, spec.DOCS)
