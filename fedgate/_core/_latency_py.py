"""Per-node sliding windows of request latencies with exact p50/p95/p99 (pure Python).

The twin of the compiled :mod:`fedgate._core._latency`, with the same behaviour,
errors and capacity policy; :mod:`fedgate._core` picks one. Percentiles come
from ``numpy.percentile`` itself (default 'linear' method), which is the
definition the compiled selection kernel reproduces to the bit.
"""

from __future__ import annotations

import math
import operator
import sys
from typing import SupportsFloat, SupportsIndex

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_WINDOW", "LatencyTable"]

MAX_WINDOW = 1 << 20
_TRIPLE = (50.0, 95.0, 99.0)
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


def _check_window(window: object) -> int:
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, np.integer))
        or not 1 <= window <= MAX_WINDOW
    ):
        raise ValueError(f"window: expected an int in [1, {MAX_WINDOW}], got {window!r}")
    return int(window)


def _check_nodes(nodes: object, window: int) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 0:
        raise ValueError(f"nodes: expected an int >= 0, got {nodes!r}")
    _check_room(int(nodes), window)
    return int(nodes)


def _check_room(nodes: int, window: int) -> None:
    # Same limit as the compiled block: its size in bytes fits a Py_ssize_t.
    if nodes > sys.maxsize // (window * 8):
        raise MemoryError(f"latency table: cannot hold {nodes} nodes x {window} samples")


def _latency_error(value: float) -> str:
    return f"latency: expected finite seconds >= 0, got {value!r}"


class LatencyTable:
    """Sliding windows of the most recent latencies of each node, with percentiles.

    Parameters
    ----------
    window : int
        Samples kept per node (the most recent ones), 1 to ``MAX_WINDOW``.
    nodes : int
        Node slots to create up front (more come from :meth:`add_node`).

    Raises
    ------
    ValueError
        If `window` or `nodes` is not an int in range.
    """

    def __init__(self, window: int = 1024, nodes: int = 0) -> None:
        w = _check_window(window)
        n = _check_nodes(nodes, w)
        self._window = w
        self._capacity = 0
        self._data: npt.NDArray[np.float64] = np.empty((0, w), dtype=np.float64)
        self._head: list[int] = []
        self._count: list[int] = []
        self._reserve(n)
        self._head = [0] * n
        self._count = [0] * n

    def _reserve(self, nodes: int) -> None:
        # Doubling, as the compiled block does, so `capacity` agrees.
        cap = self._capacity
        if nodes <= cap:
            return
        if cap == 0:
            cap = nodes
        else:
            while cap < nodes:
                cap = cap * 2 if cap < sys.maxsize // 2 else nodes
        _check_room(cap, self._window)
        grown = np.empty((cap, self._window), dtype=np.float64)
        used = len(self._head)
        grown[:used] = self._data[:used]
        self._data = grown
        self._capacity = cap

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < len(self._head):
            raise IndexError(f"slot: expected 0 <= slot < {len(self._head)}, got {slot}")

    @property
    def window(self) -> int:
        """Samples kept per node."""
        return self._window

    @property
    def capacity(self) -> int:
        """Node slots the buffer holds before it must grow again."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._head)

    def __repr__(self) -> str:
        return f"LatencyTable(window={self._window}, nodes={len(self._head)})"

    def __reduce__(self) -> tuple[object, ...]:
        # The compiled table holds raw C buffers and cannot be pickled; the
        # twin refuses too rather than behave differently.
        raise TypeError("LatencyTable: cannot pickle a latency table")

    def add_node(self) -> int:
        """Add an empty node slot and return its index (0, 1, 2, ...)."""
        slot = len(self._head)
        if slot == sys.maxsize:
            raise MemoryError("latency table: cannot add more node slots")
        self._reserve(slot + 1)
        self._head.append(0)
        self._count.append(0)
        return slot

    def reset(self, slot: SupportsIndex) -> None:
        """Empty the window of `slot` (for reuse by another node)."""
        s = _as_ssize(slot)
        self._check_slot(s)
        self._head[s] = 0
        self._count[s] = 0

    def record(self, slot: SupportsIndex, seconds: SupportsFloat) -> None:
        """Record one latency in seconds; the oldest sample leaves a full window.

        Raises
        ------
        IndexError
            If `slot` is not a node slot.
        ValueError
            If `seconds` is NaN, infinite or negative.
        """
        s = _as_ssize(slot)
        x = _as_double(seconds)
        self._check_slot(s)
        if not 0.0 <= x < math.inf:
            raise ValueError(_latency_error(x))
        h = self._head[s]
        self._data[s, h] = x
        h += 1
        self._head[s] = 0 if h == self._window else h
        if self._count[s] < self._window:
            self._count[s] += 1

    def record_many(self, slot: SupportsIndex, values: npt.ArrayLike) -> None:
        """Record a sequence of latencies in order; nothing is recorded if one is invalid.

        Raises
        ------
        IndexError
            If `slot` is not a node slot.
        ValueError
            If `values` is not one-dimensional or holds NaN, infinite or
            negative latencies.
        """
        s = _as_ssize(slot)
        self._check_slot(s)
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(
                f"values: expected a 1-D sequence of seconds, got an array of shape {arr.shape}"
            )
        arr = np.ascontiguousarray(arr)
        bad = np.flatnonzero(~((arr >= 0.0) & (arr < np.inf)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{_latency_error(float(arr[i]))} at values[{i}]")
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
        """Samples currently in the window of `slot` (at most `window`)."""
        s = _as_ssize(slot)
        self._check_slot(s)
        return self._count[s]

    def percentile(self, slot: SupportsIndex, q: SupportsFloat) -> float:
        """The `q`-th percentile of the window, as ``numpy.percentile`` computes it.

        Returns NaN for an empty window.

        Raises
        ------
        IndexError
            If `slot` is not a node slot.
        ValueError
            If `q` is not within [0, 100].
        """
        s = _as_ssize(slot)
        p = _as_double(q)
        self._check_slot(s)
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"q: expected a percentile in [0, 100], got {p!r}")
        n = self._count[s]
        if n == 0:
            return math.nan
        return float(np.percentile(self._data[s, :n], p))

    def percentiles(self, slot: SupportsIndex) -> tuple[float, float, float]:
        """``(p50, p95, p99)`` of the window of `slot`, NaN for an empty window."""
        s = _as_ssize(slot)
        self._check_slot(s)
        n = self._count[s]
        if n == 0:
            return (math.nan, math.nan, math.nan)
        p50, p95, p99 = np.percentile(self._data[s, :n], _TRIPLE).tolist()
        return (p50, p95, p99)

    def all_percentiles(
        self, out: npt.NDArray[np.float64] | None = None
    ) -> npt.NDArray[np.float64]:
        """p50, p95 and p99 of every node, one row per slot (NaN rows for empty windows).

        Parameters
        ----------
        out : numpy.ndarray, optional
            Writeable C-contiguous float64 array of shape ``(>= len(self), 3)``
            to fill in place (rows past ``len(self)`` are left alone).

        Returns
        -------
        numpy.ndarray
            `out`, or a new ``(len(self), 3)`` float64 array.

        Raises
        ------
        TypeError
            If `out` is neither None nor an ndarray.
        ValueError
            If `out` has the wrong dtype, shape, layout or is read-only.
        """
        nodes = len(self._head)
        if out is None:
            out = np.empty((nodes, 3), dtype=np.float64)
        elif not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray or None, got {type(out).__name__}")
        elif (
            out.dtype != np.float64
            or out.ndim != 2
            or out.shape[0] < nodes
            or out.shape[1] != 3
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                "out: expected a writeable C-contiguous float64 array of shape "
                f"(>={nodes}, 3), got {out.dtype} array of shape {out.shape}"
            )
        if nodes == 0:
            return out
        counts = np.asarray(self._count, dtype=np.intp)
        full = np.flatnonzero(counts == self._window)
        if full.size:
            # Full windows share a length, so numpy does them in one call.
            out[full] = np.percentile(self._data[full], _TRIPLE, axis=1).T
        for s in np.flatnonzero(counts != self._window).tolist():
            n = self._count[s]
            out[s] = np.percentile(self._data[s, :n], _TRIPLE) if n else math.nan
        return out

    def samples(self, slot: SupportsIndex) -> npt.NDArray[np.float64]:
        """A copy of the window of `slot`, oldest sample first."""
        s = _as_ssize(slot)
        self._check_slot(s)
        n, h = self._count[s], self._head[s]
        row = self._data[s]
        if n < self._window:
            return row[:n].copy()
        return np.concatenate((row[h:], row[:h]))
