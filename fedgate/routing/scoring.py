"""The checked entry points to the routing kernels: score every node, or explain every score.

:func:`score_nodes` and :func:`score_components` validate every argument
(dtype, shape, layout, range: :mod:`fedgate.routing.arrays`), then call the
kernels the router runs (:func:`fedgate.routing.kernels.routing_kernels`: the
ahead-of-time module, or the just-in-time fallback). The router itself skips
these wrappers on its hot path: it validates its own arrays once when they
change and calls the chosen kernel directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fedgate._core.codes import N_PARAMS, N_WEIGHTS
from fedgate.routing.arrays import (
    _F64,
    _I8,
    _U8,
    NodeArrays,
    _as_mask,
    check_buffers,
    check_params,
    check_weights,
)
from fedgate.routing.kernels import routing_kernels

__all__ = ["score_components", "score_nodes"]

_INF = float("inf")
_LEVELS = frozenset((0.0, 1.0, 2.0, 3.0))
_FLAGS = frozenset((0.0, 1.0))


def _valid_call(
    n: int, mask: Any, weights: Any, params: Any, out_scores: Any, out_reasons: Any
) -> bool:
    """Everything :func:`score_nodes` must check, as one expression.

    The wrapper's fast path: False sends it to :func:`check_buffers`,
    :func:`check_weights` and :func:`check_params`, which say what is wrong.
    One expression instead of those three calls halves the wrapper's cost
    (still ~1-2 µs: the router validates once and calls the kernel itself).
    """
    if not (
        type(mask) is np.ndarray
        and type(out_scores) is np.ndarray
        and type(out_reasons) is np.ndarray
        and type(weights) is np.ndarray
        and type(params) is np.ndarray
        # Identity, not equality: builtin dtypes are singletons, and an equal
        # but distinct dtype object just takes the slow path.
        and mask.dtype is _U8
        and out_scores.dtype is _F64
        and out_reasons.dtype is _I8
        and weights.dtype is _F64
        and params.dtype is _F64
        and mask.ndim == 1
        and out_scores.ndim == 1
        and out_reasons.ndim == 1
        and mask.shape[0] >= n
        and out_scores.shape[0] >= n
        and out_reasons.shape[0] >= n
        and weights.shape == (N_WEIGHTS,)
        and params.shape == (N_PARAMS,)
        and mask.flags.c_contiguous
        and weights.flags.c_contiguous
        and params.flags.c_contiguous
    ):
        return False
    flags = out_scores.flags
    if not (flags.c_contiguous and flags.writeable):
        return False
    flags = out_reasons.flags
    if not (flags.c_contiguous and flags.writeable):
        return False
    w0, w1, w2, w3, w4, w5 = weights.tolist()
    if not (
        0.0 <= w0 < _INF
        and 0.0 <= w1 < _INF
        and 0.0 <= w2 < _INF
        and 0.0 <= w3 < _INF
        and 0.0 <= w4 < _INF
        and 0.0 <= w5 < _INF
        and 0.0 < w0 + w1 + w2 + w3 + w4 + w5 < _INF
    ):
        return False
    privacy, max_latency, origin, prefer_gpu, tolerance, lscale, cscale, penalty = params.tolist()
    return bool(
        privacy in _LEVELS
        and max_latency > 0.0
        and (origin == -1.0 or (0.0 <= origin < 2.0**31 and origin == math.floor(origin)))
        and prefer_gpu in _FLAGS
        and 0.0 <= tolerance <= 100.0
        and 0.0 < lscale < _INF
        and 0.0 < cscale < _INF
        and 0.0 <= penalty < _INF
    )


def score_nodes(
    arrays: NodeArrays,
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    weights: npt.NDArray[np.float64],
    params: npt.NDArray[np.float64],
    out_scores: npt.NDArray[np.float64] | None = None,
    out_reasons: npt.NDArray[np.int8] | None = None,
) -> int:
    """Score every node for one request and choose one.

    Parameters
    ----------
    arrays : NodeArrays
        The node data.
    mask : ndarray of uint8 (or bool)
        1 for nodes that serve the request's capability/model; length >= n.
    weights : ndarray of float64, shape (6,)
        Component weights (see :func:`make_weights`).
    params : ndarray of float64, shape (8,)
        Request vector (see :func:`make_params`).
    out_scores : ndarray of float64, optional
        Receives total scores (NaN when ineligible); allocated when omitted.
    out_reasons : ndarray of int8, optional
        Receives ``REASON_*`` codes; allocated when omitted.

    Returns
    -------
    int
        The chosen slot, or -1 when no node is eligible.

    Raises
    ------
    ValueError
        Any input of the wrong dtype, shape or range, before any scoring.
    """
    n = arrays.n if isinstance(arrays, NodeArrays) else 0
    if out_scores is None:
        out_scores = np.empty(n, dtype=np.float64)
    if out_reasons is None:
        out_reasons = np.empty(n, dtype=np.int8)
    mask = _as_mask(mask)
    if type(arrays) is not NodeArrays or not _valid_call(
        n, mask, weights, params, out_scores, out_reasons
    ):
        check_buffers(arrays, mask, out_scores, out_reasons)
        check_weights(weights)
        check_params(params)
    score = routing_kernels()[1]
    return int(score(*arrays.kernel_columns(), mask, arrays._clearance, weights, params,
                     out_scores, out_reasons))  # fmt: skip


def score_components(
    arrays: NodeArrays,
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.bool_],
    weights: npt.NDArray[np.float64],
    params: npt.NDArray[np.float64],
    out_components: npt.NDArray[np.float64] | None = None,
    out_scores: npt.NDArray[np.float64] | None = None,
    out_reasons: npt.NDArray[np.int8] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int8], int]:
    """Score every node with its per-component breakdown (``router.candidates()``).

    Parameters
    ----------
    arrays, mask, weights, params
        As in :func:`score_nodes`.
    out_components : ndarray of float64, shape (>= n, 6), optional
        Receives components in ``W_*`` order; allocated when omitted.
    out_scores, out_reasons : ndarray, optional
        As in :func:`score_nodes`.

    Returns
    -------
    components : ndarray of float64, shape (n, 6)
    scores : ndarray of float64, shape (n,)
        NaN for ineligible nodes.
    reasons : ndarray of int8, shape (n,)
    best : int
        The chosen slot (the same as :func:`score_nodes`), or -1.

    Raises
    ------
    ValueError
        Any input of the wrong dtype, shape or range, before any scoring.
    """
    n = arrays.n if isinstance(arrays, NodeArrays) else 0
    if out_components is None:
        out_components = np.empty((n, N_WEIGHTS), dtype=np.float64)
    if out_scores is None:
        out_scores = np.empty(n, dtype=np.float64)
    if out_reasons is None:
        out_reasons = np.empty(n, dtype=np.int8)
    mask = _as_mask(mask)
    check_buffers(arrays, mask, out_scores, out_reasons, out_components)
    check_weights(weights)
    check_params(params)
    components = routing_kernels()[2]
    best = int(components(*arrays.kernel_columns(), mask, arrays._clearance, weights, params,
                          out_components, out_scores, out_reasons))  # fmt: skip
    return out_components[:n], out_scores[:n], out_reasons[:n], best


