"""The Numba routing kernels: composite score and per-component breakdown.

Written in Python, compiled by Numba. :mod:`fedgate.routing.scoring` holds what they
read (node columns, weight and request vectors) and documents their contract;
:mod:`fedgate._core` chooses how they run: ahead-of-time compiled into
``fedgate.routing._kernels_aot`` at install (``_native/build_kernels_aot.py``, the same
source through Numba's ``pycc``), so that a gateway never loads Numba, or
just-in-time from here when that module is missing or
``FEDGATE_NO_EXTENSIONS=1`` / ``NUMBA_DISABLE_JIT=1`` is set. The test suite
checks both against a naive reference. Numba settings live in
:mod:`fedgate.routing._jit`; nothing here compiles at import.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedgate._core.codes import (
    BREAKER_OPEN,
    DEFAULT_CLEARANCE,
    HEALTH_DEGRADED,
    HEALTH_HEALTHY,
    HEALTH_UNHEALTHY,
    N_WEIGHTS,
    P_COST_SCALE,
    P_COST_TOLERANCE,
    P_LATENCY_SCALE,
    P_LOAD_PENALTY,
    P_MAX_LATENCY,
    P_ORIGIN,
    P_PREFER_GPU,
    P_PRIVACY,
    REASON_BREAKER_OPEN,
    REASON_LATENCY,
    REASON_NOT_SERVING,
    REASON_OK,
    REASON_PRIVACY,
)
from fedgate.routing._jit import jit
from fedgate.routing.arrays import NodeArrays, make_params, make_weights

_INF = float("inf")

# Component values the SPEC fixes.
_HEALTHY_SCORE = 1.0
_DEGRADED_SCORE = 0.5
_UNKNOWN_SCORE = 0.3
# "No information" (no latency samples, no origin, no GPU preference, no
# price) scores mid-scale so it neither wins nor loses on that component.
_NEUTRAL = 0.5



# --------------------------------------------------------------------------
# Per-node math, shared by both kernels so they cannot drift.
#
# Written for LLVM's loop vectoriser (measured: ~3× faster than the same math
# with early exits), which dictates three habits:
# - helpers take scalars only: an array passed into a helper costs an atomic
#   reference-count increment and decrement per call;
# - every choice is a select (``a if c else b``) over values that are safe to
#   compute anyway, so the loop body has no branch to predict;
# - per-request choices (origin, GPU preference, which regions are cleared)
#   are folded into constants before the loop.
# Helpers are inlined at Numba IR level, so sharing them costs nothing.

# With at most this many regions, the regions cleared for a request fit in
# one int64 bit set and the privacy check is a shift (vectorisable); beyond
# it the kernel reads ``clearance`` per node (a gather, scalar).
_BITSET_REGIONS = 62
# Nodes scored (vectorised) before being scanned for the choice, so the scan
# reads scores that are still in L1: still one pass over the node columns.
_BLOCK = 512


@jit(inline=True)
def _request(weights: Any, params: Any, clearance: Any) -> tuple[Any, ...]:
    """Per-request constants, computed once before the loop.

    Parameters
    ----------
    weights : ndarray of float64, shape (6,)
        Validated weights, ``W_*`` order.
    params : ndarray of float64, shape (8,)
        Validated request vector, ``P_*`` order.
    clearance : ndarray of int8
        Clearance level by region id.

    Returns
    -------
    tuple
        (privacy, max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no,
        tolerance, latency_scale, cost_scale, load_penalty, weights divided by
        their sum, cleared-region bit set, whether an unknown region is cleared).
    """
    privacy = params[P_PRIVACY]
    origin = np.int64(params[P_ORIGIN])
    # Locality and GPU become "value if the node matches, value if not"; no
    # origin or no GPU preference scores every node the same.
    if origin < 0:
        loc_yes, loc_no = _NEUTRAL, _NEUTRAL
    else:
        loc_yes, loc_no = 1.0, 0.0
    if params[P_PREFER_GPU] != 0.0:
        gpu_yes, gpu_no = 1.0, 0.0
    else:
        gpu_yes, gpu_no = _NEUTRAL, _NEUTRAL
    # Normalised once here rather than dividing every node's sum by it: one
    # vector division fewer per node in the hot loop.
    weight_sum = weights[0] + weights[1] + weights[2] + weights[3] + weights[4] + weights[5]
    w = (
        weights[0] / weight_sum,
        weights[1] / weight_sum,
        weights[2] / weight_sum,
        weights[3] / weight_sum,
        weights[4] / weight_sum,
        weights[5] / weight_sum,
    )
    unknown_ok = privacy <= DEFAULT_CLEARANCE
    n_regions = clearance.shape[0]
    cleared = np.int64(0)
    if n_regions <= _BITSET_REGIONS:
        for k in range(_BITSET_REGIONS):
            ok = clearance[k] >= privacy if k < n_regions else unknown_ok
            if ok:
                cleared |= np.int64(1) << np.int64(k)
    return (
        privacy,
        params[P_MAX_LATENCY],
        origin,
        loc_yes,
        loc_no,
        gpu_yes,
        gpu_no,
        params[P_COST_TOLERANCE] / 100.0,
        params[P_LATENCY_SCALE],
        params[P_COST_SCALE],
        params[P_LOAD_PENALTY],
        w,
        cleared,
        unknown_ok,
    )


@jit(inline=True)
def _cleared_by_bitset(region: int, cleared: int, unknown_ok: bool) -> bool:
    """Whether a node's region may take the request, from the request's bit set.

    Parameters
    ----------
    region : int
        The node's region id.
    cleared : int
        Bit r set when region r's clearance is at least the request's privacy.
    unknown_ok : bool
        The answer for a region id outside the bit set (``DEFAULT_CLEARANCE``).

    Returns
    -------
    bool
    """
    inside = (region >= 0) & (region < _BITSET_REGIONS)
    # ``& 63`` keeps the shift defined for ids outside the set, whose bit is
    # then ignored.
    bit = (cleared >> np.int64(region & 63)) & 1
    return (bit != 0) if inside else unknown_ok


@jit(inline=True)
def _reason(
    mask: int,
    alive: int,
    cleared: bool,
    breaker: int,
    p50: float,
    max_latency: float,
) -> int:
    """Why a node cannot take the request (``REASON_OK`` if it can).

    Health does not exclude (SPEC §2 Health, "Who excludes a node"): liveness
    arrives as ``alive`` 0 (missed heartbeats, a lost connection), failures
    as the breaker's OPEN; an UNHEALTHY node otherwise only scores 0 on health.
    ``REASON_UNHEALTHY`` is therefore never returned.

    Parameters
    ----------
    mask, alive : int
        The node's membership and liveness flags.
    cleared : bool
        Whether its region's clearance covers the request's privacy level.
    breaker : int
        Its ``BREAKER_*`` code.
    p50 : float
        Its median latency, NaN without samples.
    max_latency : float
        Largest acceptable p50 in seconds (``inf`` for none, never NaN).

    Returns
    -------
    int
        One of the ``REASON_*`` codes; the first failing check in the
        documented order wins (checked last to first, each overriding).
    """
    # A NaN p50 (no samples yet) compares False, so an unmeasured node stays
    # eligible; an infinite max_latency rules nothing out.
    reason = REASON_LATENCY if p50 > max_latency else REASON_OK
    reason = REASON_BREAKER_OPEN if breaker == BREAKER_OPEN else reason
    reason = reason if cleared else REASON_PRIVACY
    return REASON_NOT_SERVING if (mask == 0) | (alive == 0) else reason


@jit(inline=True)
def _health_score(h: int) -> float:
    """Health component: HEALTHY 1.0, DEGRADED 0.5, UNHEALTHY 0.0, otherwise 0.3.

    Parameters
    ----------
    h : int
        ``HEALTH_*`` code; an unknown code scores as UNKNOWN.

    Returns
    -------
    float
        The component in [0, 1]. UNHEALTHY scores 0.0 and stays eligible:
        the breaker, not health, takes a failing node out.
    """
    s = _UNKNOWN_SCORE
    s = _HEALTHY_SCORE if h == HEALTH_HEALTHY else s
    s = _DEGRADED_SCORE if h == HEALTH_DEGRADED else s
    return 0.0 if h == HEALTH_UNHEALTHY else s


@jit(inline=True)
def _latency_score(p50: float, p99: float, scale: float) -> float:
    """Latency component ``1 / (1 + lat / scale)``, ``lat`` the mean of p50 and p99.

    Parameters
    ----------
    p50, p99 : float
        Latency percentiles in seconds; NaN when the node has no samples.
    scale : float
        Latency that scores 0.5, in seconds (> 0).

    Returns
    -------
    float
        The component in [0, 1]; 0.5 when either percentile is NaN.
    """
    lat = 0.5 * p50 + 0.5 * p99
    # scale / (scale + lat) is the same value with one division instead of
    # two; the clamp keeps a corrupt negative sample from scoring above 1.
    s = scale / (scale + max(lat, 0.0))
    return _NEUTRAL if math.isnan(lat) else s


@jit(inline=True)
def _cost_score(cost: float, latency_score: float, scale: float, tolerance: float) -> float:
    """Cost component: cheapness ``1 / (1 + cost / scale)`` blended with speed.

    Parameters
    ----------
    cost : float
        The node's price; NaN when it announced none (0.5 on cheapness).
    latency_score : float
        The node's latency component.
    scale : float
        Price that scores 0.5 on cheapness (> 0).
    tolerance : float
        ``cost_tolerance / 100``: 0 is pure cheapness, 1 pure speed.

    Returns
    -------
    float
        The component in [0, 1].
    """
    cheap = scale / (scale + max(cost, 0.0))
    cheap = _NEUTRAL if math.isnan(cost) else cheap
    # (1 - t) + t can round one ulp above 1.
    return min((1.0 - tolerance) * cheap + tolerance * latency_score, 1.0)


@jit(inline=True)
def _row(
    mask: int,
    alive: int,
    cleared: bool,
    health: int,
    breaker: int,
    p50: float,
    p99: float,
    region: int,
    cost: float,
    gpu: int,
    max_latency: float,
    origin: int,
    loc_yes: float,
    loc_no: float,
    gpu_yes: float,
    gpu_no: float,
    tolerance: float,
    latency_scale: float,
    cost_scale: float,
    w: tuple[float, float, float, float, float, float],
) -> tuple[int, tuple[float, float, float, float, float, float], float]:
    """Reason code, components and total score of one node.

    Parameters
    ----------
    mask, alive, health, breaker, p50, p99, region, cost, gpu
        The node's columns (``mask`` from the request).
    cleared : bool
        Whether its region's clearance covers the request's privacy level.
    max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no, tolerance, \
latency_scale, cost_scale, w
        Per-request constants from :func:`_request` (``w``: weights divided by
        their sum).

    Returns
    -------
    reason : int
        ``REASON_*`` code.
    components : tuple of float
        (health, latency, privacy, locality, cost, gpu), each in [0, 1].
    total : float
        Their weighted mean, in [0, 1] (meaningful only when eligible).
    """
    reason = _reason(mask, alive, cleared, breaker, p50, max_latency)
    s_latency = _latency_score(p50, p99, latency_scale)
    s = (
        _health_score(health),
        s_latency,
        1.0 if cleared else 0.0,
        loc_yes if region == origin else loc_no,
        _cost_score(cost, s_latency, cost_scale, tolerance),
        gpu_yes if gpu != 0 else gpu_no,
    )
    total = w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3] + w[4] * s[4] + w[5] * s[5]
    # Normalised weights can sum to an ulp over 1.
    return reason, s, min(total, 1.0)


@jit(inline=True)
def _load_divisor(inflight: int, load_penalty: float) -> float:
    """``1 + load_penalty * inflight``: the choice ranks ``total / divisor``.

    Parameters
    ----------
    inflight : int
        Requests in flight on the node (a negative count is taken as 0).
    load_penalty : float
        Discount per in-flight request (>= 0).

    Returns
    -------
    float
        The divisor, >= 1.
    """
    return 1.0 + load_penalty * max(inflight, 0)


@jit(inline=True)
def _ranks_higher(total: float, divisor: float, best_total: float, best_divisor: float) -> bool:
    """Whether ``total / divisor`` beats the best so far, without dividing.

    Parameters
    ----------
    total, divisor : float
        The candidate's total score and load divisor.
    best_total, best_divisor : float
        The best node's so far (-1.0 and 1.0 before any).

    Returns
    -------
    bool
        True when strictly higher: a tie keeps the earlier (lower) slot.
    """
    # Cross-multiplied (both divisors are >= 1): a division per eligible node
    # was most of the choice scan's time. Two nodes with the same total and
    # divisor give the same products, so ties stay exact.
    return total * best_divisor > best_total * divisor


# --------------------------------------------------------------------------
# Kernels.


def _warm_examples(components: bool) -> list[tuple[Any, ...]]:
    # Zero nodes, but exactly the types the router passes (NodeArrays' own
    # columns): warm_up() compiles and primes without scoring anything.
    arrays = NodeArrays(capacity=1)
    arrays.add_region()
    inputs = (*arrays.kernel_columns(), np.zeros(1, np.uint8), arrays.clearance, make_weights(),
              make_params())  # fmt: skip
    outputs: tuple[Any, ...] = (np.empty(1), np.empty(1, np.int8))
    if components:
        outputs = (np.empty((1, N_WEIGHTS)), *outputs)
    return [inputs + outputs]


@jit(warm=lambda: _warm_examples(components=False))
def _score_kernel(
    n: int,
    health: Any,
    p50: Any,
    p99: Any,
    region: Any,
    cost: Any,
    gpu: Any,
    inflight: Any,
    breaker: Any,
    alive: Any,
    mask: Any,
    clearance: Any,
    weights: Any,
    params: Any,
    out_scores: Any,
    out_reasons: Any,
) -> int:
    """Score nodes ``0..n-1`` and pick the best, in one pass without allocating.

    Inputs must have been validated (:func:`check_buffers`,
    :func:`check_weights`, :func:`check_params`): bounds are not checked.

    Parameters
    ----------
    n : int
        Number of node slots in use.
    health : ndarray of int8
        ``HEALTH_*`` code per node.
    p50, p99 : ndarray of float64
        Latency percentiles in seconds, NaN without samples.
    region : ndarray of int32
        Region id per node.
    cost : ndarray of float64
        Price per node.
    gpu : ndarray of uint8
        1 for a GPU node.
    inflight : ndarray of int32
        Requests in flight per node.
    breaker : ndarray of int8
        ``BREAKER_*`` state per node.
    alive : ndarray of uint8
        1 while the node may take requests: connected, heartbeating (health's
        liveness), serving and below its concurrency limit.
    mask : ndarray of uint8
        1 for nodes that serve the requested capability/model.
    clearance : ndarray of int8
        Clearance level by region id; an id outside it counts as
        ``DEFAULT_CLEARANCE`` (INTERNAL).
    weights : ndarray of float64, shape (6,)
        Component weights, ``W_*`` order.
    params : ndarray of float64, shape (8,)
        Request vector, ``P_*`` order.
    out_scores : ndarray of float64
        Receives each node's total score (NaN when ineligible).
    out_reasons : ndarray of int8
        Receives each node's ``REASON_*`` code.

    Returns
    -------
    int
        The eligible node with the highest load-discounted score (lowest slot
        on ties), or -1 when none is eligible.
    """
    (privacy, max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no, tolerance, latency_scale,
     cost_scale, load_penalty, w, cleared, unknown_ok) = _request(
        weights, params, clearance)  # fmt: skip
    n_regions = clearance.shape[0]
    bitset = n_regions <= _BITSET_REGIONS
    best = -1
    # Every total is >= 0, so the first eligible node beats this.
    best_total, best_divisor = -1.0, 1.0
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        if bitset:
            # Unsigned indices: with a signed one Numba adds a negative-index
            # wrap-around to every load, which keeps LLVM from vectorising
            # (measured 8× slower). A name of its own: the ahead-of-time
            # compile would unify it with the signed ``i`` below into float64.
            for u in range(np.uint64(start), np.uint64(stop)):
                r = region[u]
                ok = _cleared_by_bitset(r, cleared, unknown_ok)
                reason, _, total = _row(
                    mask[u], alive[u], ok, health[u], breaker[u], p50[u], p99[u], r, cost[u],
                    gpu[u], max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no, tolerance,
                    latency_scale, cost_scale, w,
                )  # fmt: skip
                out_reasons[u] = reason
                out_scores[u] = total if reason == REASON_OK else np.nan
        else:
            for i in range(start, stop):
                r = region[i]
                # Range-checked because bounds checks are off: an id the table
                # does not know fails closed to INTERNAL.
                level = clearance[r] if r >= 0 and r < n_regions else DEFAULT_CLEARANCE
                reason, _, total = _row(
                    mask[i], alive[i], level >= privacy, health[i], breaker[i], p50[i], p99[i],
                    r, cost[i], gpu[i], max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no,
                    tolerance, latency_scale, cost_scale, w,
                )  # fmt: skip
                out_reasons[i] = reason
                out_scores[i] = total if reason == REASON_OK else np.nan
        for i in range(start, stop):
            if out_reasons[i] == REASON_OK:
                total = out_scores[i]
                divisor = _load_divisor(inflight[i], load_penalty)
                if _ranks_higher(total, divisor, best_total, best_divisor):
                    best, best_total, best_divisor = i, total, divisor
    return best


@jit(warm=lambda: _warm_examples(components=True))
def _components_kernel(
    n: int,
    health: Any,
    p50: Any,
    p99: Any,
    region: Any,
    cost: Any,
    gpu: Any,
    inflight: Any,
    breaker: Any,
    alive: Any,
    mask: Any,
    clearance: Any,
    weights: Any,
    params: Any,
    out_components: Any,
    out_scores: Any,
    out_reasons: Any,
) -> int:
    """:func:`_score_kernel` plus every node's component breakdown.

    For ``router.candidates()``, not the hot path. Components are written for
    every node, eligible or not (an ineligible node's privacy component is 0.0
    when its region is not cleared; an UNHEALTHY node's health component is 0.0);
    scores, reasons and the choice are exactly those of :func:`_score_kernel`.

    Parameters
    ----------
    n, health, p50, p99, region, cost, gpu, inflight, breaker, alive, mask, clearance, \
weights, params
        As in :func:`_score_kernel`.
    out_components : ndarray of float64, shape (>= n, 6)
        Receives each node's components in ``W_*`` order.
    out_scores, out_reasons : ndarray
        As in :func:`_score_kernel`.

    Returns
    -------
    int
        The chosen node, or -1 when none is eligible.
    """
    (privacy, max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no, tolerance, latency_scale,
     cost_scale, load_penalty, w, _, _) = _request(
        weights, params, clearance)  # fmt: skip
    n_regions = clearance.shape[0]
    best = -1
    best_total, best_divisor = -1.0, 1.0
    for i in range(n):
        r = region[i]
        level = clearance[r] if r >= 0 and r < n_regions else DEFAULT_CLEARANCE
        reason, s, total = _row(
            mask[i], alive[i], level >= privacy, health[i], breaker[i], p50[i], p99[i], r,
            cost[i], gpu[i], max_latency, origin, loc_yes, loc_no, gpu_yes, gpu_no, tolerance,
            latency_scale, cost_scale, w,
        )  # fmt: skip
        for k in range(N_WEIGHTS):
            out_components[i, k] = s[k]
        out_reasons[i] = reason
        if reason != REASON_OK:
            out_scores[i] = np.nan
            continue
        out_scores[i] = total
        divisor = _load_divisor(inflight[i], load_penalty)
        if _ranks_higher(total, divisor, best_total, best_divisor):
            best, best_total, best_divisor = i, total, divisor
    return best
