"""The routing kernels' inputs: struct-of-arrays node data and the vectors, with their checks.

The router keeps one :class:`NodeArrays` (one slot per node, updated in place
on every report) and, per routing decision, a ``uint8`` membership ``mask``
for the requested capability/model, a ``float64[6]`` weight vector (indexed by
the ``W_*`` constants) and a ``float64[8]`` request vector (``P_*``). One pass
of the score kernel (``fedgate.routing._kernels``, Numba; compiled ahead of time into
``fedgate.routing._kernels_aot`` at install) rules ineligible nodes out with a reason
code, scores the rest as a weighted mean of six components in [0, 1], and
picks the best node after a load penalty, without allocating. This module
imports neither Numba nor the kernels: a gateway with the ahead-of-time
kernels never loads Numba.

Eligibility, checked in this order (the first failing check is the reason):
``REASON_NOT_SERVING`` (mask 0 or not alive — liveness lost by missed
heartbeats or a lost connection, or at its concurrency limit),
``REASON_PRIVACY`` (the region's clearance is below the request's privacy
level — sovereignty before anything else), ``REASON_BREAKER_OPEN``,
``REASON_LATENCY`` (p50 above ``max_latency``; a node without samples is not
ruled out). The health code only scores (SPEC §2 Health, "Who excludes a
node"): an UNHEALTHY node scores 0 on health and stays eligible until its
breaker opens, so the kernel never returns ``REASON_UNHEALTHY``.

Inputs the SPEC does not cover are handled so that nothing can widen the
eligible set or push a score out of [0, 1]: a region id outside ``clearance``
counts as ``DEFAULT_CLEARANCE`` (INTERNAL); a health code the kernel does not
know scores as UNKNOWN; a NaN price (none announced) scores 0.5 on cheapness,
like a NaN latency; negative latencies, prices and in-flight counts count as 0.

Scores equal the SPEC's formulas up to rounding (``s / (s + x)`` for
``1 / (1 + x / s)``, weights divided by their sum once per call), so a
reference written the naive way agrees to ~1e-15 and may rank two nodes whose
load-discounted scores tie within an ulp either way; exact ties go to the
lowest slot.

Entry points
------------
:func:`fedgate.routing.scoring.score_nodes` / ``score_components`` validate
everything and call the kernels. A caller on the hot path may instead validate once — weights
with :func:`check_weights` when the policy is configured, the request vector
with :func:`check_params` (or build it with :func:`make_params`), the arrays
and buffers with :func:`check_buffers` whenever one of them is replaced
(``add_node`` may reallocate every column) — and then call the kernel itself::

    how, score, components = fedgate.routing.kernels.routing_kernels()
    best = score(*arrays.kernel_columns(), mask, arrays.clearance,
                 weights, params, out_scores, out_reasons)

Numba dispatch costs grow with the argument count (16 here); see
``benchmarks/test_scoring.py`` for what that costs next to the kernel.
The checks here are complete (dtype, shape, C layout, writeability, range), so
the wrappers can call the ahead-of-time entry points, which check dtypes only.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from fedgate._core.codes import (
    BREAKER_CLOSED,
    DEFAULT_CLEARANCE,
    HEALTH_UNKNOWN,
    MAX_LEVEL,
    N_PARAMS,
    N_WEIGHTS,
    P_COST_SCALE,
    P_COST_TOLERANCE,
    P_LATENCY_SCALE,
    P_LOAD_PENALTY,
    P_MAX_LATENCY,
    P_ORIGIN,
    P_PREFER_GPU,
    P_PRIVACY,
    PARAM_NAMES,
    WEIGHT_NAMES,
)

__all__ = [
    "KernelColumns",
    "NodeArrays",
    "check_buffers",
    "check_params",
    "check_weights",
    "make_params",
    "make_weights",
]

_MAX_LEVEL = MAX_LEVEL

_INF = float("inf")

# --------------------------------------------------------------------------
# Node data.

# The kernels' leading arguments: n and the node columns, in signature order.
KernelColumns = tuple[
    int,
    npt.NDArray[np.int8],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.int32],
    npt.NDArray[np.float64],
    npt.NDArray[np.uint8],
    npt.NDArray[np.int32],
    npt.NDArray[np.int8],
    npt.NDArray[np.uint8],
]

# name, dtype, value of a fresh slot
_COLUMNS: tuple[tuple[str, type[np.generic], float | int], ...] = (
    ("health", np.int8, HEALTH_UNKNOWN),
    ("p50", np.float64, math.nan),
    ("p99", np.float64, math.nan),
    ("region", np.int32, 0),
    ("cost", np.float64, 0.0),
    ("gpu", np.uint8, 0),
    ("inflight", np.int32, 0),
    ("breaker", np.int8, BREAKER_CLOSED),
    ("alive", np.uint8, 0),
)


def _check_level(level: object, what: str) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"{what}: expected an int clearance level 0-3, got {level!r}")
    if not 0 <= int(level) <= _MAX_LEVEL:
        raise ValueError(f"{what}: expected a clearance level 0-3, got {level!r}")
    return int(level)


class NodeArrays:
    """Node data as struct-of-arrays, one slot per node, grown by doubling.

    The router owns one and writes node columns in place on every report
    (``arrays.p50[slot] = 0.045``). The columns are read-only attributes so
    their dtypes cannot change under the kernels, but :meth:`add_node` may
    replace every column with a larger copy: re-read them after it.

    Columns (all of length :attr:`capacity`, slots ``0..n-1`` in use):
    ``health`` int8, ``p50`` / ``p99`` float64 seconds, ``region`` int32,
    ``cost`` float64, ``gpu`` uint8, ``inflight`` int32, ``breaker`` int8,
    ``alive`` uint8. ``clearance`` int8 is indexed by region id.

    Parameters
    ----------
    capacity : int
        Slots allocated up front (>= 1).
    """

    __slots__ = ("_alive", "_breaker", "_clearance", "_cost", "_gpu", "_health", "_inflight", "_n",
                 "_p50", "_p99", "_region")  # fmt: skip
    _n: int
    _health: npt.NDArray[np.int8]
    _p50: npt.NDArray[np.float64]
    _p99: npt.NDArray[np.float64]
    _region: npt.NDArray[np.int32]
    _cost: npt.NDArray[np.float64]
    _gpu: npt.NDArray[np.uint8]
    _inflight: npt.NDArray[np.int32]
    _breaker: npt.NDArray[np.int8]
    _alive: npt.NDArray[np.uint8]
    _clearance: npt.NDArray[np.int8]

    def __init__(self, capacity: int = 64) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected an int >= 1, got {capacity!r}")
        self._n = 0
        for name, dtype, fresh in _COLUMNS:
            setattr(self, "_" + name, np.full(capacity, fresh, dtype=dtype))
        self._clearance = np.zeros(0, dtype=np.int8)

    # Read-only column attributes (written element-wise, never rebound).
    @property
    def health(self) -> npt.NDArray[np.int8]:
        """``HEALTH_*`` code per slot."""
        return self._health

    @property
    def p50(self) -> npt.NDArray[np.float64]:
        """Median latency per slot, seconds (NaN: no samples)."""
        return self._p50

    @property
    def p99(self) -> npt.NDArray[np.float64]:
        """99th-percentile latency per slot, seconds (NaN: no samples)."""
        return self._p99

    @property
    def region(self) -> npt.NDArray[np.int32]:
        """Region id per slot."""
        return self._region

    @property
    def cost(self) -> npt.NDArray[np.float64]:
        """Price per slot (NaN: not announced)."""
        return self._cost

    @property
    def gpu(self) -> npt.NDArray[np.uint8]:
        """1 for a GPU node."""
        return self._gpu

    @property
    def inflight(self) -> npt.NDArray[np.int32]:
        """Requests in flight per slot."""
        return self._inflight

    @property
    def breaker(self) -> npt.NDArray[np.int8]:
        """``BREAKER_*`` state per slot."""
        return self._breaker

    @property
    def alive(self) -> npt.NDArray[np.uint8]:
        """1 while the node may take requests: connected, heartbeating, serving, not full."""
        return self._alive

    @property
    def clearance(self) -> npt.NDArray[np.int8]:
        """Clearance level (0-3) by region id."""
        return self._clearance

    @property
    def n(self) -> int:
        """Slots in use."""
        return self._n

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return int(self._health.shape[0])

    @property
    def n_regions(self) -> int:
        """Regions known (the length of :attr:`clearance`)."""
        return int(self._clearance.shape[0])

    def add_node(self) -> int:
        """Take the next slot, doubling every column when full.

        Returns
        -------
        int
            The new slot: health UNKNOWN, p50/p99 NaN, breaker CLOSED, not
            alive, no requests in flight, cost 0, no GPU, region 0.
        """
        slot = self._n
        if slot == self.capacity:
            grown = 2 * slot
            for name, dtype, fresh in _COLUMNS:
                old = getattr(self, "_" + name)
                new = np.full(grown, fresh, dtype=dtype)
                new[:slot] = old
                setattr(self, "_" + name, new)
        else:
            # Slots are never handed out twice, but a caller may have written
            # past n; a new node must not inherit that.
            for name, _dtype, fresh in _COLUMNS:
                getattr(self, "_" + name)[slot] = fresh
        self._n = slot + 1
        return slot

    def add_region(self, clearance: int = DEFAULT_CLEARANCE) -> int:
        """Register a region and give it a clearance level.

        Parameters
        ----------
        clearance : int
            0 (PUBLIC) .. 3 (RESTRICTED); INTERNAL unless configured.

        Returns
        -------
        int
            The new region id (ids count up from 0).
        """
        level = _check_level(clearance, "clearance")
        self._clearance = np.append(self._clearance, np.int8(level))
        return self.n_regions - 1

    def set_clearance(self, region_id: int, level: int) -> None:
        """Change a region's clearance level.

        Parameters
        ----------
        region_id : int
            An id returned by :meth:`add_region`.
        level : int
            0 (PUBLIC) .. 3 (RESTRICTED).
        """
        checked = _check_level(level, "level")
        if (
            isinstance(region_id, bool)
            or not isinstance(region_id, (int, np.integer))
            or not 0 <= region_id < self.n_regions
        ):
            raise ValueError(
                f"region_id: expected an int in 0..{self.n_regions - 1}, got {region_id!r}"
            )
        self._clearance[region_id] = checked

    def kernel_columns(self) -> KernelColumns:
        """``(n, health, p50, p99, region, cost, gpu, inflight, breaker, alive)``.

        The kernels' leading arguments, in order. The tuple holds the current
        column objects: take a new one after :meth:`add_node`.
        """
        return (self._n, self._health, self._p50, self._p99, self._region, self._cost,
                self._gpu, self._inflight, self._breaker, self._alive)  # fmt: skip

    def __repr__(self) -> str:
        return f"NodeArrays(n={self._n}, capacity={self.capacity}, regions={self.n_regions})"


# --------------------------------------------------------------------------
# Validation and public wrappers.

_F64 = np.dtype(np.float64)
_I8 = np.dtype(np.int8)
_U8 = np.dtype(np.uint8)
_BOOL = np.dtype(np.bool_)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        extra = "" if a.flags.c_contiguous else " (not C-contiguous)"
        if not a.flags.writeable:
            extra += " (read-only)"
        return f"{a.dtype} array of shape {a.shape}{extra}"
    return repr(a) if a is None else f"{type(a).__name__} {a!r}"[:120]


def _vector(
    name: str, a: object, dtype: np.dtype[Any], length: int, exact: bool, out: bool
) -> None:
    ok = (
        type(a) is np.ndarray
        and a.dtype == dtype
        and a.ndim == 1
        and (a.shape[0] == length if exact else a.shape[0] >= length)
        and a.flags.c_contiguous
        and (a.flags.writeable or not out)
    )
    if not ok:
        size = f"length {length}" if exact else f"length >= {length}"
        kind = "writeable C-contiguous" if out else "C-contiguous"
        raise ValueError(f"{name}: expected {kind} {dtype} array of {size}, got {_describe(a)}")


def _as_mask(mask: object) -> Any:
    # A bool mask is the same bytes as a uint8 one; viewing it is free.
    if type(mask) is np.ndarray and mask.dtype == _BOOL:
        return mask.view(np.uint8)
    return mask


def check_weights(weights: object) -> None:
    """Reject weights the kernels cannot use.

    Parameters
    ----------
    weights : ndarray of float64, shape (6,)
        Component weights in ``W_*`` order.

    Raises
    ------
    ValueError
        Wrong dtype/shape, or a weight that is NaN, infinite or negative
        (named by index and component), or all weights zero.
    """
    _vector("weights", weights, _F64, N_WEIGHTS, exact=True, out=False)
    values = cast("npt.NDArray[np.float64]", weights).tolist()
    for k, w in enumerate(values):
        if not 0.0 <= w < _INF:
            raise ValueError(
                f"weights[{k}] ({WEIGHT_NAMES[k]}): expected a finite number >= 0, got {w!r}"
            )
    if not any(values):
        raise ValueError(f"weights: expected at least one weight > 0, got {values!r}")
    if not sum(values) < _INF:
        raise ValueError(f"weights: expected a finite sum, got {values!r}")


def check_params(params: object) -> None:
    """Reject a request vector the kernels cannot use.

    Parameters
    ----------
    params : ndarray of float64, shape (8,)
        Request vector in ``P_*`` order (see :func:`make_params`).

    Raises
    ------
    ValueError
        Wrong dtype/shape, or an entry out of its range (named by index and field).
    """
    _vector("params", params, _F64, N_PARAMS, exact=True, out=False)
    (privacy, max_latency, origin, prefer_gpu, tolerance, latency_scale, cost_scale,
     load_penalty) = cast("npt.NDArray[np.float64]", params).tolist()  # fmt: skip

    def bad(k: int, expected: str, got: float) -> ValueError:
        return ValueError(f"params[{k}] ({PARAM_NAMES[k]}): expected {expected}, got {got!r}")

    if privacy not in (0.0, 1.0, 2.0, 3.0):
        raise bad(P_PRIVACY, "a privacy level 0, 1, 2 or 3", privacy)
    if not max_latency > 0.0:
        raise bad(P_MAX_LATENCY, "seconds > 0 (inf for no limit)", max_latency)
    if not (origin == -1.0 or (0.0 <= origin < 2.0**31 and origin == math.floor(origin))):
        raise bad(P_ORIGIN, "a region id >= 0, or -1 for none", origin)
    if prefer_gpu not in (0.0, 1.0):
        raise bad(P_PREFER_GPU, "0 or 1", prefer_gpu)
    if not 0.0 <= tolerance <= 100.0:
        raise bad(P_COST_TOLERANCE, "a number in 0..100", tolerance)
    if not 0.0 < latency_scale < _INF:
        raise bad(P_LATENCY_SCALE, "finite seconds > 0", latency_scale)
    if not 0.0 < cost_scale < _INF:
        raise bad(P_COST_SCALE, "a finite number > 0", cost_scale)
    if not 0.0 <= load_penalty < _INF:
        raise bad(P_LOAD_PENALTY, "a finite number >= 0", load_penalty)


def check_buffers(
    arrays: NodeArrays,
    mask: object,
    out_scores: object,
    out_reasons: object,
    out_components: object = None,
) -> None:
    """Check the per-call arrays against ``arrays.n``.

    The node columns themselves need no check: :class:`NodeArrays` fixes
    their dtypes and keeps them all of one length.

    Parameters
    ----------
    arrays : NodeArrays
        The node data.
    mask : ndarray of uint8
        Length >= ``arrays.n``.
    out_scores : ndarray of float64
        Writeable, length >= ``arrays.n``.
    out_reasons : ndarray of int8
        Writeable, length >= ``arrays.n``.
    out_components : ndarray of float64, shape (>= n, 6), optional
        Checked when given.

    Raises
    ------
    ValueError
        Naming the first array with the wrong dtype, shape or layout.
    """
    if not isinstance(arrays, NodeArrays):
        raise ValueError(f"arrays: expected a NodeArrays, got {type(arrays).__name__}")
    n = arrays._n
    _vector("mask", mask, _U8, n, exact=False, out=False)
    _vector("out_scores", out_scores, _F64, n, exact=False, out=True)
    _vector("out_reasons", out_reasons, _I8, n, exact=False, out=True)
    if out_components is not None:
        a = out_components
        if not (
            type(a) is np.ndarray
            and a.dtype == _F64
            and a.ndim == 2
            and a.shape[0] >= n
            and a.shape[1] == N_WEIGHTS
            and a.flags.c_contiguous
            and a.flags.writeable
        ):
            raise ValueError(
                "out_components: expected writeable C-contiguous float64 array of shape "
                f"(>= {n}, {N_WEIGHTS}), got {_describe(a)}"
            )


def make_weights(
    *,
    health: float = 2.0,
    latency: float = 1.0,
    privacy: float = 1.0,
    locality: float = 1.0,
    cost: float = 1.0,
    gpu: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Build and check a weight vector (defaults: the SPEC's ``enterprise_default()``).

    Returns
    -------
    ndarray of float64, shape (6,)

    Raises
    ------
    ValueError
        As :func:`check_weights`.
    """
    weights = np.array([health, latency, privacy, locality, cost, gpu], dtype=np.float64)
    check_weights(weights)
    return weights


def make_params(
    *,
    privacy: int = 1,
    max_latency: float | None = None,
    origin: int = -1,
    prefer_gpu: bool = False,
    cost_tolerance: float = 50.0,
    latency_scale: float = 0.25,
    cost_scale: float = 1.0,
    load_penalty: float = 0.0,
    out: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """Build and check a request vector.

    Parameters
    ----------
    privacy : int
        The request's privacy level, 0 (PUBLIC) .. 3 (RESTRICTED).
    max_latency : float, optional
        Largest acceptable p50 in seconds; None for no limit.
    origin : int
        The request's origin region id, -1 for none.
    prefer_gpu : bool
        Favour GPU nodes.
    cost_tolerance : float
        0 prefers the cheapest node, 100 the fastest.
    latency_scale : float
        Latency (seconds) that scores 0.5.
    cost_scale : float
        Price that scores 0.5 on cheapness.
    load_penalty : float
        Discount per in-flight request when choosing.
    out : ndarray of float64, shape (8,), optional
        Filled in place (reused per request) instead of allocating.

    Returns
    -------
    ndarray of float64, shape (8,)

    Raises
    ------
    ValueError
        As :func:`check_params`.
    """
    params = np.empty(N_PARAMS, dtype=np.float64) if out is None else out
    values = (privacy, _INF if max_latency is None else max_latency, origin, bool(prefer_gpu),
              cost_tolerance, latency_scale, cost_scale, load_penalty)  # fmt: skip
    for k, v in enumerate(values):
        params[k] = float(v)
    check_params(params)
    return params
