"""Per-node sliding windows of request latencies with exact p50/p95/p99: the spec.

The router reads every node's percentiles on each decision and the health
checker records a latency on every response. One table holds every node's
window of the most recent ``window`` samples; ``add_node`` appends a slot
(capacity doubles, so growth is amortised O(1)), and slots are never removed,
only emptied by ``reset``.

Percentiles are those of ``numpy.percentile`` with its default 'linear'
method, bit for bit; an empty window reads NaN. Latencies are finite seconds
>= 0; an invalid one is refused and nothing is recorded. The whole block must
stay addressable in bytes by a ``Py_ssize_t`` (``check_room``).

Two twins implement this spec and differ only in how they compute:

* ``fedgate._core._latency`` (``_native/_latency.pyx``): one contiguous C
  block (nodes x window float64) and selection on a scratch copy instead of a
  sort;
* ``fedgate._core._latency_py``: NumPy rows and ``numpy.percentile`` itself.

This module owns what they share: the limits and defaults, the argument checks
both call off the per-sample path (constructor, growth, ``all_percentiles``'
output, ``record_many``'s input), the error texts the per-sample paths raise,
and the docstrings (:data:`DOCS`). It imports nothing from fedgate, so the
compiled module can import it when it loads.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_WINDOW"]

MAX_WINDOW = 1 << 20
DEFAULT_WINDOW = 1024
PERCENTILES = (50.0, 95.0, 99.0)
# PY_SSIZE_T_MAX: the compiled block is indexed by Py_ssize_t.
SSIZE_MAX = sys.maxsize

PICKLE_ERROR = "LatencyTable: cannot pickle a latency table"
FULL_ERROR = "latency table: cannot add more node slots"


# ---------------------------------------------------------------- argument checks


def check_window(window: object) -> int:
    """``window`` as an int in [1, MAX_WINDOW] (ValueError otherwise)."""
    if (
        isinstance(window, bool)
        or not isinstance(window, (int, np.integer))
        or not 1 <= window <= MAX_WINDOW
    ):
        raise ValueError(f"window: expected an int in [1, {MAX_WINDOW}], got {window!r}")
    return int(window)


def check_nodes(nodes: object, window: int) -> int:
    """``nodes`` as an int >= 0 that fits the block with ``window`` samples each."""
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 0:
        raise ValueError(f"nodes: expected an int >= 0, got {nodes!r}")
    check_room(int(nodes), window)
    return int(nodes)


def check_room(nodes: int, window: int) -> None:
    """MemoryError unless ``nodes x window`` float64 stay addressable by a Py_ssize_t."""
    if nodes > SSIZE_MAX // (window * 8):
        raise MemoryError(f"latency table: cannot hold {nodes} nodes x {window} samples")


def grown_capacity(capacity: int, nodes: int) -> int:
    """The capacity after growing from ``capacity`` to hold ``nodes`` (doubling)."""
    if capacity == 0:
        return nodes
    while capacity < nodes:
        capacity = capacity * 2 if capacity < SSIZE_MAX // 2 else nodes
    return capacity


def as_samples(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``record_many``'s input as a C-contiguous 1-D float64 array (ValueError otherwise)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(
            f"values: expected a 1-D sequence of seconds, got an array of shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def check_out(out: Any, nodes: int) -> npt.NDArray[np.float64]:
    """``all_percentiles``' ``out``: a new array for None, else checked in place."""
    if out is None:
        return np.empty((nodes, 3), dtype=np.float64)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray or None, got {type(out).__name__}")
    if (
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
    return out


# ---------------------------------------------------------------- error texts
# The per-sample paths test their arguments inline (in C for the compiled
# twin) and only come here to word the error.


def slot_error(slot: int, nodes: int) -> IndexError:
    return IndexError(f"slot: expected 0 <= slot < {nodes}, got {slot}")


def latency_error(value: float, at: int | None = None) -> ValueError:
    where = "" if at is None else f" at values[{at}]"
    return ValueError(f"latency: expected finite seconds >= 0, got {value!r}{where}")


def percentile_error(q: float) -> ValueError:
    return ValueError(f"q: expected a percentile in [0, 100], got {q!r}")


def table_repr(window: int, nodes: int) -> str:
    return f"LatencyTable(window={window}, nodes={nodes})"


# ---------------------------------------------------------------- docstrings

DOCS: dict[str, str] = {
    "": """Sliding windows of the most recent latencies of each node, with percentiles.

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
    """,
    "window": "Samples kept per node.",
    "capacity": "Node slots the buffer holds before it must grow again.",
    "add_node": "Add an empty node slot and return its index (0, 1, 2, ...).",
    "reset": "Empty the window of `slot` (for reuse by another node).",
    "record": """Record one latency in seconds; the oldest sample leaves a full window.

    Raises
    ------
    IndexError
        If `slot` is not a node slot.
    ValueError
        If `seconds` is NaN, infinite or negative.
    """,
    "record_many": """\
Record a sequence of latencies in order; nothing is recorded if one is invalid.

    Raises
    ------
    IndexError
        If `slot` is not a node slot.
    ValueError
        If `values` is not one-dimensional or holds NaN, infinite or
        negative latencies.
    """,
    "count": "Samples currently in the window of `slot` (at most `window`).",
    "percentile": """The `q`-th percentile of the window, as ``numpy.percentile`` computes it.

    Returns NaN for an empty window.

    Raises
    ------
    IndexError
        If `slot` is not a node slot.
    ValueError
        If `q` is not within [0, 100].
    """,
    "percentiles": "``(p50, p95, p99)`` of the window of `slot`, NaN for an empty window.",
    "all_percentiles": """\
p50, p95 and p99 of every node, one row per slot (NaN rows for empty windows).

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
    """,
    "samples": "A copy of the window of `slot`, oldest sample first.",
}
