"""asv: the scoring kernel over 1 000 and 10 000 nodes, beside its baselines.

``time_score`` is the Numba kernel through its thin public wrapper
(:func:`fedgate.routing.scoring.score_nodes`: validation, then the kernel);
``time_kernel`` the kernel called directly, as the router does after
validating once. The baselines compute exactly the same scores, reasons and
choice over the very same data: ``time_numpy`` with the best vectorised NumPy
we could write (preallocated buffers, in-place ufuncs, lookup tables, no
temporaries), ``time_python`` with a plain loop over lists.

The fleet builder and the baselines live here so that
``benchmarks/test_scoring.py`` (pytest-benchmark) measures the same things and
checks that all three agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedgate._core import codes
from fedgate.routing import _jit, arrays
from fedgate.routing import _kernels as kn
from fedgate.routing import scoring as sc

N_REGIONS = 8
# Clearance per region: a realistic mix, two regions cleared for RESTRICTED.
CLEARANCES = [3, 2, 1, 1, 2, 0, 1, 3]


@dataclass
class Case:
    """One routing decision's inputs, in every form the three scorers take."""

    arrays: arrays.NodeArrays
    mask: np.ndarray
    weights: np.ndarray
    params: np.ndarray
    out_scores: np.ndarray
    out_reasons: np.ndarray
    lists: dict[str, Any]

    @property
    def n(self) -> int:
        return self.arrays.n


def make_case(n: int, seed: int = 0) -> Case:
    """A fleet that looks like a busy federation, and one INTERNAL request."""
    rng = np.random.default_rng(seed)
    a = arrays.NodeArrays(capacity=max(n, 1))
    for level in CLEARANCES:
        a.add_region(level)
    for _ in range(n):
        a.add_node()
    a.health[:n] = rng.choice(
        [codes.HEALTH_HEALTHY, codes.HEALTH_DEGRADED, codes.HEALTH_UNKNOWN, codes.HEALTH_UNHEALTHY],
        n,
        p=[0.8, 0.1, 0.05, 0.05],
    )
    p50 = rng.lognormal(math.log(0.05), 0.6, n)
    p50[rng.random(n) < 0.03] = math.nan  # nodes without samples yet
    a.p50[:n] = p50
    a.p99[:n] = p50 * rng.uniform(1.5, 4.0, n)
    a.region[:n] = rng.integers(0, N_REGIONS, n)
    a.cost[:n] = rng.uniform(0.1, 3.0, n)
    a.gpu[:n] = rng.random(n) < 0.5
    a.inflight[:n] = rng.integers(0, 9, n)
    a.breaker[:n] = rng.choice(
        [codes.BREAKER_CLOSED, codes.BREAKER_OPEN, codes.BREAKER_HALF_OPEN], n, p=[0.95, 0.03, 0.02]
    )
    a.alive[:n] = rng.random(n) < 0.98
    mask = (rng.random(max(n, 1)) < 0.9).astype(np.uint8)
    weights = arrays.make_weights(gpu=0.5)
    params = arrays.make_params(
        privacy=1, max_latency=0.5, origin=2, prefer_gpu=True, cost_tolerance=50,
        load_penalty=0.1,
    )  # fmt: skip
    columns = ("health", "p50", "p99", "region", "cost", "gpu", "inflight", "breaker", "alive")
    lists = {name: getattr(a, name)[:n].tolist() for name in columns}
    lists["mask"] = mask[:n].tolist()
    lists["clearance"] = a.clearance.tolist()
    lists["weights"] = weights.tolist()
    lists["params"] = params.tolist()
    return Case(a, mask, weights, params, np.empty(n), np.empty(n, dtype=np.int8), lists)


# ---------------------------------------------------------------- NumPy baseline

# Health code -> component, for every int8 bit pattern (codes it does not
# know score as UNKNOWN, as in the kernel).
_HEALTH_LUT = np.full(256, 0.3)
_HEALTH_LUT[codes.HEALTH_HEALTHY] = 1.0
_HEALTH_LUT[codes.HEALTH_DEGRADED] = 0.5
_HEALTH_LUT[codes.HEALTH_UNHEALTHY] = 0.0


class NumpyScorer:
    """The same computation as the kernel, vectorised with NumPy as well as we can.

    Every buffer is preallocated (sized to ``capacity``) and every ufunc
    writes in place, so a call allocates only views; per-request choices are
    folded into lookup tables and constants first, as the kernel does.
    """

    def __init__(self, capacity: int) -> None:
        self.f = [np.empty(capacity) for _ in range(3)]
        self.b = [np.empty(capacity, dtype=bool) for _ in range(2)]
        self.cleared = np.empty(capacity, dtype=bool)

    def __call__(self, case: Case) -> int:
        a, n = case.arrays, case.arrays.n
        privacy, max_latency, origin, prefer, tolerance, lscale, cscale, penalty = (
            case.params.tolist()
        )
        w = case.weights.tolist()
        weight_sum = w[0] + w[1] + w[2] + w[3] + w[4] + w[5]
        t = tolerance / 100.0
        f0, f1, f2 = (x[:n] for x in self.f)
        b0, b1 = (x[:n] for x in self.b)
        health, p50, p99, region, cost = (
            a.health[:n],
            a.p50[:n],
            a.p99[:n],
            a.region[:n],
            a.cost[:n],
        )

        # Privacy: one table lookup per node. Ids outside the table (negative
        # ones wrap to huge as uint32) clip onto the extra last entry, which
        # says what an unknown region (INTERNAL) may take.
        table = np.append(a.clearance >= privacy, privacy <= codes.DEFAULT_CLEARANCE)
        cleared = self.cleared[:n]
        np.take(table, region.view(np.uint32), out=cleared, mode="clip")

        # Reasons: lowest priority first, each higher one overwriting.
        reasons = case.out_reasons[:n]
        np.greater(p50, max_latency, out=b0)
        np.multiply(b0, codes.REASON_LATENCY, out=reasons, casting="unsafe")
        np.equal(a.breaker[:n], codes.BREAKER_OPEN, out=b0)
        np.copyto(reasons, codes.REASON_BREAKER_OPEN, where=b0)
        np.logical_not(cleared, out=b0)
        np.copyto(reasons, codes.REASON_PRIVACY, where=b0)
        np.logical_and(case.mask[:n], a.alive[:n], out=b0)
        np.logical_not(b0, out=b0)
        np.copyto(reasons, codes.REASON_NOT_SERVING, where=b0)

        # Latency component f0 = scale / (scale + max(lat, 0)), 0.5 when NaN.
        np.multiply(p50, 0.5, out=f0)
        np.multiply(p99, 0.5, out=f1)
        np.add(f0, f1, out=f0)
        np.isnan(f0, out=b1)
        np.maximum(f0, 0.0, out=f0)
        np.add(f0, lscale, out=f0)
        np.divide(lscale, f0, out=f0)
        np.copyto(f0, 0.5, where=b1)

        total = case.out_scores[:n]
        np.take(_HEALTH_LUT, health.view(np.uint8), out=total)
        np.multiply(total, w[0], out=total)
        np.multiply(f0, w[1], out=f1)
        np.add(total, f1, out=total)
        # Privacy scores 1.0 on every eligible node; the rest become NaN below.
        np.add(total, w[2], out=total)
        if origin < 0:
            np.add(total, w[3] * 0.5, out=total)
        else:
            np.equal(region, origin, out=b1)
            np.multiply(b1, w[3], out=f1)
            np.add(total, f1, out=total)
        # Cost component f2: cheapness blended with speed.
        np.isnan(cost, out=b1)
        np.maximum(cost, 0.0, out=f2)
        np.add(f2, cscale, out=f2)
        np.divide(cscale, f2, out=f2)
        np.copyto(f2, 0.5, where=b1)
        np.multiply(f2, 1.0 - t, out=f2)
        np.multiply(f0, t, out=f1)
        np.add(f2, f1, out=f2)
        np.minimum(f2, 1.0, out=f2)
        np.multiply(f2, w[4], out=f2)
        np.add(total, f2, out=total)
        if prefer:
            np.not_equal(a.gpu[:n], 0, out=b1)
            np.multiply(b1, w[5], out=f1)
            np.add(total, f1, out=total)
        else:
            np.add(total, w[5] * 0.5, out=total)
        np.divide(total, weight_sum, out=total)
        np.not_equal(reasons, codes.REASON_OK, out=b0)
        np.copyto(total, math.nan, where=b0)
        if n == 0:
            return -1

        # Choice: argmax of the load-discounted score, ineligible at -inf.
        np.maximum(a.inflight[:n], 0, out=f1, casting="unsafe")
        np.multiply(f1, penalty, out=f1)
        np.add(f1, 1.0, out=f1)
        np.divide(total, f1, out=f1)
        np.copyto(f1, -math.inf, where=b0)
        best = int(np.argmax(f1))
        return best if reasons[best] == codes.REASON_OK else -1


# ---------------------------------------------------------------- pure-Python baseline


def python_score(case: Case, out_scores: list[float], out_reasons: list[int]) -> int:
    """The same computation as a plain Python loop over lists."""
    c = case.lists
    privacy, max_latency, origin, prefer, tolerance, lscale, cscale, penalty = c["params"]
    w0, w1, w2, w3, w4, w5 = c["weights"]
    weight_sum = w0 + w1 + w2 + w3 + w4 + w5
    t = tolerance / 100.0
    clearance = c["clearance"]
    n_regions = len(clearance)
    best, best_effective = -1, -1.0
    for i, (h, p50, p99, r, cost, gpu, inflight, breaker, alive, mask) in enumerate(
        zip(c["health"], c["p50"], c["p99"], c["region"], c["cost"], c["gpu"], c["inflight"],
            c["breaker"], c["alive"], c["mask"], strict=True)
    ):  # fmt: skip
        level = clearance[r] if 0 <= r < n_regions else codes.DEFAULT_CLEARANCE
        if not mask or not alive:
            reason = codes.REASON_NOT_SERVING
        elif level < privacy:
            reason = codes.REASON_PRIVACY
        elif breaker == codes.BREAKER_OPEN:
            reason = codes.REASON_BREAKER_OPEN
        elif p50 > max_latency:
            reason = codes.REASON_LATENCY
        else:
            reason = codes.REASON_OK
        out_reasons[i] = reason
        if reason != codes.REASON_OK:
            out_scores[i] = math.nan
            continue
        s_health = (
            1.0 if h == codes.HEALTH_HEALTHY
            else 0.5 if h == codes.HEALTH_DEGRADED
            else 0.0 if h == codes.HEALTH_UNHEALTHY
            else 0.3
        )  # fmt: skip
        lat = 0.5 * p50 + 0.5 * p99
        s_latency = 0.5 if lat != lat else lscale / (lscale + max(lat, 0.0))
        s_locality = 0.5 if origin < 0 else (1.0 if r == origin else 0.0)
        cheap = 0.5 if cost != cost else cscale / (cscale + max(cost, 0.0))
        s_cost = min((1.0 - t) * cheap + t * s_latency, 1.0)
        s_gpu = (1.0 if gpu else 0.0) if prefer else 0.5
        total = (
            w0 * s_health + w1 * s_latency + w2 * 1.0 + w3 * s_locality + w4 * s_cost + w5 * s_gpu
        ) / weight_sum
        out_scores[i] = total
        effective = total / (1.0 + penalty * max(inflight, 0))
        if effective > best_effective:
            best, best_effective = i, effective
    return best


# ---------------------------------------------------------------- asv


class ScoreNodes:
    """One scoring pass and choice, ours beside NumPy and pure Python on the same data."""

    params: ClassVar[list[int]] = [1000, 10000]
    param_names: ClassVar[list[str]] = ["nodes"]
    timeout = 180

    def setup(self, nodes: int) -> None:
        _jit.warm_up()
        self.case = make_case(nodes)
        self.numpy = NumpyScorer(nodes)
        self.py_scores = [0.0] * nodes
        self.py_reasons = [0] * nodes
        c = self.case
        self.kernel_args = (*c.arrays.kernel_columns(), c.mask, c.arrays.clearance, c.weights,
                            c.params, c.out_scores, c.out_reasons)  # fmt: skip

    def time_score(self, nodes: int) -> None:
        c = self.case
        sc.score_nodes(c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)

    def time_kernel(self, nodes: int) -> None:
        kn._score_kernel(*self.kernel_args)

    def time_numpy(self, nodes: int) -> None:
        self.numpy(self.case)

    def time_python(self, nodes: int) -> None:
        python_score(self.case, self.py_scores, self.py_reasons)

    def peakmem_score(self, nodes: int) -> None:
        c = self.case
        sc.score_nodes(c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)


class Dispatch:
    """Numba's fixed cost per call: the 16-argument kernel over no nodes."""

    def setup(self) -> None:
        _jit.warm_up()
        c = make_case(0)
        self.kernel_args = (*c.arrays.kernel_columns(), c.mask, c.arrays.clearance, c.weights,
                            c.params, c.out_scores, c.out_reasons)  # fmt: skip
        self.case = c

    def time_kernel_empty(self) -> None:
        kn._score_kernel(*self.kernel_args)

    def time_wrapper_empty(self) -> None:
        c = self.case
        sc.score_nodes(c.arrays, c.mask, c.weights, c.params, c.out_scores, c.out_reasons)
