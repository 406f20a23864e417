"""The scoring kernels against a naive reference, with and without the JIT.

Tests whose name contains ``reference`` run on both builds of the kernels
(the ``kernels`` fixture): the ones compiled ahead of time at install, which
the router runs whenever they are built, and the just-in-time ones; for the
build the router chose, on the very functions it calls. They run again in a
subprocess with ``NUMBA_DISABLE_JIT=1`` (:func:`test_kernels_with_jit_disabled`),
where the just-in-time kernels run as the plain Python they are written in.
The kernels compile once per session (the module-scoped ``warm`` fixture), not
once per example.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedgate
from fedgate import _core
from fedgate._core import codes
from fedgate.routing import _jit, arrays
from fedgate.routing import _kernels as kn
from fedgate.routing import scoring as sc
from fedgate.routing.kernels import routing_kernels

try:
    from fedgate.routing import _kernels_aot as aot
except ImportError:  # a checkout never built: the router compiles just in time
    aot = None

JIT_OFF = _jit.jit_disabled()
# Pure-Python kernels are ~1000× slower: fewer examples keep that run short.
EXAMPLES = 30 if JIT_OFF else 150
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INF = math.inf
NAN = math.nan


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Compile every kernel once for the whole module (a no-op without the JIT)."""
    _jit.warm_up()


@dataclass(frozen=True)
class Kernels:
    """One build of the two kernels: ``score`` and ``components``."""

    name: str
    score: Callable[..., Any]
    components: Callable[..., Any]


def kernels_named(name: str) -> Kernels:
    """The "aot" or "jit" kernels; for the build the router chose, its very functions."""
    how, score, components = routing_kernels()
    if how == name:
        return Kernels(name, score, components)
    if name == "jit":
        return Kernels(name, kn._score_kernel, kn._components_kernel)
    if aot is None:
        pytest.skip(
            "fedgate.routing._kernels_aot is not built (FEDGATE_NO_AOT=1, or the ahead-of-time "
            "build failed at install): the router runs the just-in-time kernels"
        )
    return Kernels(name, aot.score, aot.components)


@pytest.fixture(scope="module", params=["aot", "jit"])
def kernels(request: pytest.FixtureRequest) -> Kernels:
    """Each build of the kernels in turn (module-scoped: Hypothesis tests take it too)."""
    return kernels_named(request.param)


# ---------------------------------------------------------------- fleets


@dataclass
class Fleet:
    """One routing decision's inputs, as plain lists (reference) and arrays (kernel)."""

    health: list[int]
    p50: list[float]
    p99: list[float]
    region: list[int]
    cost: list[float]
    gpu: list[int]
    inflight: list[int]
    breaker: list[int]
    alive: list[int]
    mask: list[int]
    clearance: list[int]
    weights: list[float]
    privacy: int = 1
    max_latency: float = INF
    origin: int = -1
    prefer_gpu: bool = False
    cost_tolerance: float = 50.0
    latency_scale: float = 0.25
    cost_scale: float = 1.0
    load_penalty: float = 0.0

    seed: int | None = None

    @property
    def n(self) -> int:
        return len(self.health)

    def __repr__(self) -> str:
        # Hypothesis prints failing examples; 200-node columns would be 80 kB.
        if self.n > 20:
            request = {k: v for k, v in vars(self).items() if not isinstance(v, list)}
            return f"Fleet(n={self.n}, regions={len(self.clearance)}, {request})"
        return f"Fleet({vars(self)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis's pretty printer walks dataclass fields unless told otherwise.
        printer.text(repr(self))

    def params(self) -> np.ndarray:
        return arrays.make_params(
            privacy=self.privacy,
            max_latency=None if self.max_latency == INF else self.max_latency,
            origin=self.origin,
            prefer_gpu=self.prefer_gpu,
            cost_tolerance=self.cost_tolerance,
            latency_scale=self.latency_scale,
            cost_scale=self.cost_scale,
            load_penalty=self.load_penalty,
        )

    def arrays(self, capacity: int = 1) -> arrays.NodeArrays:
        a = arrays.NodeArrays(capacity=capacity)
        for level in self.clearance:
            a.add_region(level)
        for _ in range(self.n):
            a.add_node()
        n = self.n
        for name in ("health", "p50", "p99", "region", "cost", "gpu", "inflight", "breaker",
                     "alive"):  # fmt: skip
            getattr(a, name)[:n] = getattr(self, name)
        return a

    def mask_array(self) -> np.ndarray:
        # Longer than n, as the router's masks are (sized to capacity).
        m = np.zeros(self.n + 3, dtype=np.uint8)
        m[: self.n] = self.mask
        return m


def fleet(n: int, **overrides: Any) -> Fleet:
    """A fleet of n identical healthy, serving, measured nodes in region 0."""
    base: dict[str, Any] = dict(
        health=[codes.HEALTH_HEALTHY] * n,
        p50=[0.05] * n,
        p99=[0.1] * n,
        region=[0] * n,
        cost=[1.0] * n,
        gpu=[0] * n,
        inflight=[0] * n,
        breaker=[codes.BREAKER_CLOSED] * n,
        alive=[1] * n,
        mask=[1] * n,
        clearance=[1],
        weights=[2.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    )
    base.update(overrides)
    return Fleet(**base)


# Special values every column must survive, mixed with ordinary ones.
LATENCIES = [NAN, 0.0, 0.01, 0.05, 0.25, 1.0, INF]
COSTS = [0.0, 0.5, 1.0, 2.0, NAN, INF]


@st.composite
def fleets(draw: st.DrawFn, max_nodes: int = 200, min_nodes: int = 0) -> Fleet:
    """Random fleets: Hypothesis picks the shape and the request, NumPy the columns.

    Drawing 200-element columns element by element through Hypothesis costs
    ~0.2 s an example; a seeded generator costs nothing and still hits the
    special values (NaN, inf, ties) often.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    # Mostly a handful of regions (the bit-set path); sometimes more than the
    # bit set holds (the per-node table path).
    n_regions = draw(st.one_of(st.integers(0, 8), st.integers(60, 70)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def mixed(special: list[float], high: float) -> list[float]:
        values = np.where(rng.random(n) < 0.5, rng.choice(special, n), rng.uniform(0.0, high, n))
        return values.tolist()

    def pick(values: list[Any]) -> list[Any]:
        return rng.choice(values, n).tolist()

    # No weights near the underflow range: with a total weight of 5e-324 the
    # naive reference's w * s underflows (5e-324 * 0.4 == 0.0) while the kernel,
    # which divides the weights by their sum first, is exact; the reference
    # would be the one that is wrong. Zero comes from the sampled values.
    weights = draw(
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(1e-9, 1e3), min_size=6,
                 max_size=6).filter(lambda w: sum(w) > 0)
    )  # fmt: skip
    return Fleet(
        health=pick([0, 1, 1, 1, 2, 2, 3, 4]),  # 4: a code the kernel does not know
        p50=mixed(LATENCIES, 10.0),
        p99=mixed(LATENCIES, 10.0),
        # -1 and n_regions: ids the clearance table does not know.
        region=rng.integers(-1, n_regions + 1, n).tolist(),
        cost=mixed(COSTS, 100.0),
        gpu=pick([0, 1]),
        # Negative counts (a bookkeeping bug upstream) must count as 0.
        inflight=np.where(
            rng.random(n) < 0.7, rng.integers(-1, 4, n), rng.integers(0, 999, n)
        ).tolist(),
        breaker=pick([0, 0, 1, 2]),
        alive=pick([1, 1, 1, 0]),
        mask=pick([1, 1, 1, 0]),
        clearance=rng.integers(0, 4, n_regions).tolist(),
        weights=weights,
        privacy=draw(st.integers(0, 3)),
        max_latency=draw(st.sampled_from([INF, 0.05, 0.25, 1.0])),
        origin=draw(st.integers(-1, max(n_regions, 1))),
        prefer_gpu=draw(st.booleans()),
        cost_tolerance=draw(st.sampled_from([0.0, 50.0, 100.0]) | st.floats(0.0, 100.0)),
        latency_scale=draw(st.sampled_from([0.25, 1.0]) | st.floats(1e-3, 10.0)),
        cost_scale=draw(st.sampled_from([1.0, 0.5]) | st.floats(1e-3, 100.0)),
        load_penalty=draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 10.0)),
        seed=seed,
    )


# ---------------------------------------------------------------- naive reference


def level_of(f: Fleet, i: int) -> int:
    r = f.region[i]
    if 0 <= r < len(f.clearance):
        return f.clearance[r]
    return 1  # a region without a configured clearance counts as INTERNAL


def reference(f: Fleet) -> tuple[list[float], list[int], list[list[float]], list[float], int]:
    """The SPEC's rules, one node at a time, written for clarity rather than speed.

    Returns scores (NaN when ineligible), reasons, components, effective
    scores (NaN when ineligible) and the chosen node.
    """
    scores: list[float] = []
    reasons: list[int] = []
    components: list[list[float]] = []
    effective: list[float] = []
    best, best_effective = -1, -INF
    t = f.cost_tolerance / 100.0
    for i in range(f.n):
        level = level_of(f, i)
        if not f.mask[i] or not f.alive[i]:
            reason = 1
        elif level < f.privacy:
            reason = 2
        # No health check: an UNHEALTHY node scores 0 on health and stays
        # eligible; liveness comes in as alive, failures as the breaker (SPEC §2).
        elif f.breaker[i] == 1:
            reason = 4
        elif f.max_latency != INF and not math.isnan(f.p50[i]) and f.p50[i] > f.max_latency:
            reason = 5
        else:
            reason = 0

        if f.health[i] == 1:
            health = 1.0
        elif f.health[i] == 2:
            health = 0.5
        elif f.health[i] == 3:
            health = 0.0
        else:
            health = 0.3
        lat = 0.5 * f.p50[i] + 0.5 * f.p99[i]  # NaN when either has no samples
        latency = 0.5 if math.isnan(lat) else 1.0 / (1.0 + max(lat, 0.0) / f.latency_scale)
        privacy = 1.0 if level >= f.privacy else 0.0
        if f.origin < 0:
            locality = 0.5
        elif f.region[i] == f.origin:
            locality = 1.0
        else:
            locality = 0.0
        price = f.cost[i]
        cheap = 0.5 if math.isnan(price) else 1.0 / (1.0 + max(price, 0.0) / f.cost_scale)
        cost = (1.0 - t) * cheap + t * latency
        if not f.prefer_gpu:
            gpu = 0.5
        elif f.gpu[i]:
            gpu = 1.0
        else:
            gpu = 0.0
        parts = [health, latency, privacy, locality, cost, gpu]
        total = sum(w * s for w, s in zip(f.weights, parts, strict=True)) / sum(f.weights)

        reasons.append(reason)
        components.append(parts)
        if reason != 0:
            scores.append(NAN)
            effective.append(NAN)
            continue
        scores.append(total)
        eff = total / (1.0 + f.load_penalty * max(f.inflight[i], 0))
        effective.append(eff)
        if eff > best_effective:
            best, best_effective = i, eff
    return scores, reasons, components, effective, best


def run_kernel(f: Fleet, kernels: Kernels) -> tuple[np.ndarray, np.ndarray, int]:
    """Score through ``kernels`` as the router does: validate, then call the kernel."""
    a = f.arrays()
    scores = np.full(f.n + 2, -7.0)
    reasons = np.full(f.n + 2, -7, dtype=np.int8)
    mask, weights, params = f.mask_array(), np.array(f.weights), f.params()
    arrays.check_buffers(a, mask, scores, reasons)
    arrays.check_weights(weights)
    arrays.check_params(params)
    best = int(kernels.score(*a.kernel_columns(), mask, a.clearance, weights, params, scores,
                             reasons))  # fmt: skip
    # Nothing past n is touched.
    assert (scores[f.n :] == -7.0).all() and (reasons[f.n :] == -7).all()
    return scores[: f.n], reasons[: f.n], best


def assert_same_choice(best: int, ref_best: int, ref_effective: list[float]) -> None:
    """The kernel's choice is the reference's, up to rounding on a near-tie.

    The kernel computes the same formulas in a form that vectorises
    (``s / (s + x)`` for ``1 / (1 + x / s)``, weights divided by their sum up
    front, the load discount compared by cross-multiplying), so two nodes
    whose effective scores differ by an ulp may rank either way; anything
    more is a bug. Exact ties are tested separately.
    """
    if ref_best < 0:
        assert best == -1
        return
    assert 0 <= best < len(ref_effective)
    if best != ref_best:
        assert math.isclose(
            ref_effective[best], ref_effective[ref_best], rel_tol=1e-12, abs_tol=1e-300
        ), (best, ref_best, ref_effective[best], ref_effective[ref_best])


# ---------------------------------------------------------------- properties


@PROPERTY
@given(fleets())
def test_reference_scores_reasons_and_choice(kernels: Kernels, f: Fleet) -> None:
    ref_scores, ref_reasons, _, ref_eff, ref_best = reference(f)
    scores, reasons, best = run_kernel(f, kernels)
    assert reasons.tolist() == ref_reasons
    np.testing.assert_allclose(scores, np.array(ref_scores), rtol=1e-12, atol=1e-15)
    assert np.array_equal(np.isnan(scores), reasons != codes.REASON_OK)
    eligible = scores[reasons == codes.REASON_OK]
    assert ((eligible >= 0.0) & (eligible <= 1.0)).all()
    assert_same_choice(best, ref_best, ref_eff)


@settings(PROPERTY, max_examples=5 if JIT_OFF else 20)
@given(fleets(min_nodes=3 * kn._BLOCK, max_nodes=4 * kn._BLOCK))
def test_reference_large_fleets_across_blocks(kernels: Kernels, f: Fleet) -> None:
    # The kernel scores in blocks of _BLOCK nodes: the choice must carry across.
    ref_scores, ref_reasons, _, ref_eff, ref_best = reference(f)
    scores, reasons, best = run_kernel(f, kernels)
    assert reasons.tolist() == ref_reasons
    np.testing.assert_allclose(scores, np.array(ref_scores), rtol=1e-12, atol=1e-15)
    assert_same_choice(best, ref_best, ref_eff)


# ---------------------------------------------------------------- ahead of time

def test_reference_tests_check_the_kernels_the_router_runs() -> None:
    # Whenever the ahead-of-time kernels are built and allowed, the router runs
    # them; and the "aot"/"jit" reference runs call exactly what it calls.
    how, score, components = routing_kernels()
    allowed = not _core.NO_EXTENSIONS and not JIT_OFF
    assert how == ("aot" if aot is not None and allowed else "jit")
    chosen = kernels_named(how)
    assert (chosen.score, chosen.components) == (score, components)
    if how == "aot":
        assert aot is not None and (score, components) == (aot.score, aot.components)
    else:
        assert (score, components) == (kn._score_kernel, kn._components_kernel)


@pytest.mark.skipif(aot is None or JIT_OFF, reason="needs fedgate.routing._kernels_aot and the JIT")
@PROPERTY
@given(fleets(max_nodes=3 * kn._BLOCK))
def test_aot_kernels_equal_the_jit_ones_bit_for_bit(f: Fleet) -> None:
    # The same source compiled twice (pycc at install, Numba at run time) must
    # give the same bits: the router uses whichever loaded.
    assert aot is not None
    a, mask, weights, params = f.arrays(), f.mask_array(), np.array(f.weights), f.params()
    columns = a.kernel_columns()
    size = a.capacity

    def outputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.full((size, codes.N_WEIGHTS), -7.0), np.full(size, -7.0),
                np.full(size, -7, dtype=np.int8))  # fmt: skip

    _, jit_scores, jit_reasons = jit_out = outputs()
    _, aot_scores, aot_reasons = aot_out = outputs()
    jit_best = kn._score_kernel(*columns, mask, a.clearance, weights, params, jit_scores,
                                jit_reasons)  # fmt: skip
    aot_best = aot.score(*columns, mask, a.clearance, weights, params, aot_scores, aot_reasons)
    assert aot_best == jit_best
    np.testing.assert_array_equal(aot_scores, jit_scores)
    np.testing.assert_array_equal(aot_reasons, jit_reasons)
    jit_out, aot_out = outputs(), outputs()
    jit_best = kn._components_kernel(*columns, mask, a.clearance, weights, params, *jit_out)
    aot_best = aot.components(*columns, mask, a.clearance, weights, params, *aot_out)
    assert aot_best == jit_best
    for ours, theirs in zip(aot_out, jit_out, strict=True):
        np.testing.assert_array_equal(ours, theirs)


@PROPERTY
@given(fleets())
def test_reference_choice_is_eligible_and_cleared(kernels: Kernels, f: Fleet) -> None:
    _, reasons, best = run_kernel(f, kernels)
    for i in np.flatnonzero(reasons == codes.REASON_OK).tolist():
        # Sovereignty: whatever else happens, an eligible node's region is cleared.
        assert level_of(f, i) >= f.privacy
        assert f.mask[i] and f.alive[i]
        assert f.breaker[i] != codes.BREAKER_OPEN
    if best >= 0:
        assert reasons[best] == codes.REASON_OK
    else:
        assert not (reasons == codes.REASON_OK).any()


@PROPERTY
@given(fleets())
def test_reference_components_agree_with_scores(kernels: Kernels, f: Fleet) -> None:
    _, ref_reasons, ref_components, _, _ = reference(f)
    a = f.arrays()
    weights, params, mask = np.array(f.weights), f.params(), f.mask_array()
    n, size = f.n, a.capacity
    components, scores = np.full((size, codes.N_WEIGHTS), -7.0), np.full(size, -7.0)
    reasons = np.full(size, -7, dtype=np.int8)
    best = kernels.components(*a.kernel_columns(), mask, a.clearance, weights, params, components,
                              scores, reasons)  # fmt: skip
    components, scores, reasons = components[:n], scores[:n], reasons[:n]
    np.testing.assert_allclose(
        components, np.array(ref_components).reshape(f.n, 6), rtol=1e-12, atol=1e-15
    )
    assert ((components >= 0.0) & (components <= 1.0)).all()
    assert reasons.tolist() == ref_reasons
    # The two kernels share their per-node code: identical bits, identical choice.
    s2, r2, best2 = run_kernel(f, kernels)
    assert best == best2
    assert np.array_equal(scores, s2, equal_nan=True)
    assert np.array_equal(reasons, r2)


@settings(PROPERTY, max_examples=max(EXAMPLES // 3, 10))
@given(fleets(max_nodes=40), st.integers(1, 5))
def test_reference_growth_preserves_data(f: Fleet, capacity: int) -> None:
    a = f.arrays(capacity=capacity)
    assert a.n == f.n and a.capacity >= max(f.n, 1)
    for name in ("health", "region", "gpu", "inflight", "breaker", "alive"):
        assert getattr(a, name)[: f.n].tolist() == getattr(f, name), name
    for name in ("p50", "p99", "cost"):
        np.testing.assert_array_equal(getattr(a, name)[: f.n], np.array(getattr(f, name)))
    assert a.clearance.tolist() == f.clearance


# ---------------------------------------------------------------- fixed cases


def test_reference_empty_and_all_ineligible_choose_nobody(kernels: Kernels) -> None:
    assert run_kernel(fleet(0), kernels)[2] == -1
    assert run_kernel(fleet(5, mask=[0] * 5), kernels)[2] == -1
    assert run_kernel(fleet(5, alive=[0] * 5), kernels)[2] == -1
    assert run_kernel(fleet(5, breaker=[codes.BREAKER_OPEN] * 5), kernels)[2] == -1
    scores, reasons, best = run_kernel(fleet(5, clearance=[1], privacy=2), kernels)
    assert best == -1 and reasons.tolist() == [codes.REASON_PRIVACY] * 5
    assert np.isnan(scores).all()



def test_r23_unhealthy_scores_zero_and_stays_eligible(kernels: Kernels) -> None:
    # SPEC §2 Health: failures are the breaker's; health only scores them.
    f = fleet(2, health=[codes.HEALTH_UNHEALTHY, codes.HEALTH_HEALTHY])
    scores, reasons, best = run_kernel(f, kernels)
    assert reasons.tolist() == [codes.REASON_OK, codes.REASON_OK] and best == 1
    assert scores[0] < scores[1]
    only = fleet(1, health=[codes.HEALTH_UNHEALTHY])
    assert run_kernel(only, kernels)[2] == 0  # the only node still gets the request
    # ... until its breaker opens (or it stops being alive).
    assert run_kernel(fleet(1, health=[codes.HEALTH_UNHEALTHY], breaker=[1]), kernels)[2] == -1
    assert run_kernel(fleet(1, health=[codes.HEALTH_UNHEALTHY], alive=[0]), kernels)[2] == -1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (dict(mask=[0], alive=[0], clearance=[0], health=[3], breaker=[1], p50=[9.0]), 1),
        (dict(alive=[0], clearance=[0], health=[3], breaker=[1], p50=[9.0]), 1),
        (dict(clearance=[0], health=[3], breaker=[1], p50=[9.0]), 2),
        (dict(health=[3], breaker=[1], p50=[9.0]), 4),  # health never excludes (R23)
        (dict(health=[3], p50=[9.0]), 5),
        (dict(health=[3]), 0),
        (dict(breaker=[1], p50=[9.0]), 4),
        (dict(p50=[9.0]), 5),
        (dict(p50=[NAN]), 0),  # no samples yet: not ruled out by max_latency
        (dict(breaker=[codes.BREAKER_HALF_OPEN], health=[codes.HEALTH_DEGRADED]), 0),
        (dict(region=[7]), 0),  # unknown region: INTERNAL, enough for privacy 1
    ],
)
def test_reference_reason_order(
    overrides: dict[str, list[Any]], reason: int, kernels: Kernels
) -> None:
    f = fleet(1, max_latency=1.0, **overrides)
    assert run_kernel(f, kernels)[1].tolist() == [reason] == reference(f)[1]


def test_reference_unknown_region_fails_closed(kernels: Kernels) -> None:
    unknown = [-(2**31), -1, 1, 61, 62, 63, 64, 10_000, 2**31 - 1]
    f = fleet(len(unknown), region=unknown, clearance=[3], privacy=2)
    assert run_kernel(f, kernels)[1].tolist() == [codes.REASON_PRIVACY] * len(unknown)
    # ... as INTERNAL, which is enough for INTERNAL data.
    f = fleet(len(unknown), region=unknown, clearance=[0], privacy=1)
    assert run_kernel(f, kernels)[1].tolist() == [codes.REASON_OK] * len(unknown)
    # Past the bit set: the per-node table path says the same.
    f = fleet(2, region=[64, 70], clearance=[3] * 65, privacy=2)
    assert run_kernel(f, kernels)[1].tolist() == [codes.REASON_OK, codes.REASON_PRIVACY]


def test_reference_ties_go_to_the_lowest_slot(kernels: Kernels) -> None:
    assert run_kernel(fleet(50), kernels)[2] == 0
    f = fleet(6, health=[2, 1, 2, 1, 1, 2])
    assert run_kernel(f, kernels)[2] == 1


def test_reference_load_penalty_spreads_requests(kernels: Kernels) -> None:
    f = fleet(2, p50=[0.01, 0.05], p99=[0.01, 0.05], inflight=[5, 0])
    assert run_kernel(f, kernels)[2] == 0  # no penalty: the faster node
    f.load_penalty = 0.2
    assert run_kernel(f, kernels)[2] == 1  # the idle node once in-flight work counts


def test_reference_component_values(kernels: Kernels) -> None:
    f = fleet(
        3,
        health=[1, 2, 0],
        p50=[0.25, NAN, 0.0],
        p99=[0.25, 0.1, 0.0],
        region=[0, 1, 0],
        cost=[1.0, NAN, 0.0],
        gpu=[1, 0, 1],
        clearance=[1, 3],
        origin=1,
        prefer_gpu=True,
        cost_tolerance=0.0,
    )
    a = f.arrays()
    components = np.full((a.capacity, codes.N_WEIGHTS), -7.0)
    scores, reasons = np.empty(a.capacity), np.empty(a.capacity, dtype=np.int8)
    kernels.components(*a.kernel_columns(), f.mask_array(), a.clearance, np.array(f.weights),
                       f.params(), components, scores, reasons)  # fmt: skip
    np.testing.assert_allclose(
        components[: f.n],
        [
            [1.0, 0.5, 1.0, 0.0, 0.5, 1.0],  # latency 0.25 s at scale 0.25 s, cost 1 at scale 1
            [0.5, 0.5, 1.0, 1.0, 0.5, 0.0],  # no samples, no price: neutral
            [0.3, 1.0, 1.0, 0.0, 1.0, 1.0],
        ],
    )


def test_reference_jit_mode() -> None:
    # In the NUMBA_DISABLE_JIT=1 rerun the kernels must really be plain Python.
    if os.environ.get("FEDGATE_EXPECT_NO_JIT") == "1":
        assert _jit.jit_disabled()
        assert not hasattr(kn._score_kernel, "signatures")
    else:
        assert _jit.jit_disabled() == (os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"))


# ---------------------------------------------------------------- validation


def good_call(**overrides: Any) -> dict[str, Any]:
    f = fleet(4)
    kwargs: dict[str, Any] = dict(
        arrays=f.arrays(),
        mask=f.mask_array(),
        weights=np.array(f.weights),
        params=f.params(),
        out_scores=np.empty(4),
        out_reasons=np.empty(4, dtype=np.int8),
    )
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(mask=np.ones(4, dtype=np.int64)), r"mask: expected .*uint8.*got int64"),
        (dict(mask=np.ones(3, dtype=np.uint8)), r"mask: expected .*length >= 4, got .*\(3,\)"),
        (dict(mask=np.ones((4, 1), dtype=np.uint8)), r"mask: .*got uint8 array of shape \(4, 1\)"),
        (dict(mask=np.ones(8, dtype=np.uint8)[::2]), r"mask: .*not C-contiguous"),
        (dict(mask=[1, 1, 1, 1]), r"mask: expected .*got list"),
        (dict(out_scores=np.empty(4, dtype=np.float32)), r"out_scores: expected .*float64"),
        (dict(out_scores=np.empty(3)), r"out_scores: expected .*length >= 4"),
        (dict(out_reasons=np.empty(4, dtype=np.int32)), r"out_reasons: expected .*int8"),
        (dict(weights=np.ones(5)), r"weights: expected .*float64 array of length 6"),
        (dict(weights=np.ones(6, dtype=np.float32)), r"weights: expected .*float64"),
        (dict(params=np.zeros(9)), r"params: expected .*length 8"),
        (dict(arrays=object()), r"arrays: expected a NodeArrays"),
    ],
)
def test_wrapper_rejects_bad_arrays(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sc.score_nodes(**good_call(**overrides))


def test_wrapper_rejects_read_only_outputs() -> None:
    out = np.empty(4)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"out_scores: expected writeable .*read-only"):
        sc.score_nodes(**good_call(out_scores=out))


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("bad", [NAN, INF, -INF, -1.0])
def test_wrapper_rejects_bad_weights(index: int, bad: float) -> None:
    weights = np.ones(6)
    weights[index] = bad
    name = codes.WEIGHT_NAMES[index]
    with pytest.raises(ValueError, match=rf"weights\[{index}\] \({name}\): expected .*got"):
        sc.score_nodes(**good_call(weights=weights))


def test_wrapper_rejects_all_zero_weights() -> None:
    with pytest.raises(ValueError, match="weights: expected at least one weight > 0"):
        sc.score_nodes(**good_call(weights=np.zeros(6)))
    with pytest.raises(ValueError, match="weights"):
        arrays.make_weights(health=0, latency=0, privacy=0, locality=0, cost=0, gpu=0)
    with pytest.raises(ValueError, match="weights: expected a finite sum"):
        sc.score_nodes(**good_call(weights=np.full(6, 1e308)))


@pytest.mark.parametrize(
    ("index", "bad"),
    [
        (codes.P_PRIVACY, 4.0), (codes.P_PRIVACY, 1.5), (codes.P_PRIVACY, -1.0),
        (codes.P_PRIVACY, NAN),
        (codes.P_MAX_LATENCY, 0.0), (codes.P_MAX_LATENCY, -1.0), (codes.P_MAX_LATENCY, NAN),
        (codes.P_ORIGIN, -2.0), (codes.P_ORIGIN, 0.5), (codes.P_ORIGIN, NAN), (codes.P_ORIGIN, INF),
        (codes.P_PREFER_GPU, 0.5), (codes.P_PREFER_GPU, 2.0),
        (codes.P_COST_TOLERANCE, -1.0), (codes.P_COST_TOLERANCE, 101.0),
        (codes.P_COST_TOLERANCE, NAN),
        (codes.P_LATENCY_SCALE, 0.0), (codes.P_LATENCY_SCALE, INF), (codes.P_LATENCY_SCALE, NAN),
        (codes.P_COST_SCALE, 0.0), (codes.P_COST_SCALE, -1.0), (codes.P_COST_SCALE, INF),
        (codes.P_LOAD_PENALTY, -0.1), (codes.P_LOAD_PENALTY, INF), (codes.P_LOAD_PENALTY, NAN),
    ],
)  # fmt: skip
def test_wrapper_rejects_bad_params(index: int, bad: float) -> None:
    params = arrays.make_params()
    params[index] = bad
    name = codes.PARAM_NAMES[index]
    with pytest.raises(ValueError, match=rf"params\[{index}\] \({name}\): expected .*got"):
        sc.score_nodes(**good_call(params=params))
    with pytest.raises(ValueError, match=rf"params\[{index}\]"):
        arrays.check_params(params)


def test_wrapper_accepts_bool_mask_and_allocates_outputs() -> None:
    f = fleet(4, p50=[0.3, 0.2, 0.1, 0.4], p99=[0.3, 0.2, 0.1, 0.4])
    assert sc.score_nodes(f.arrays(), np.ones(4, dtype=bool), np.array(f.weights), f.params()) == 2


def test_components_wrapper_checks_its_output() -> None:
    kwargs = good_call()
    del kwargs["out_scores"], kwargs["out_reasons"]
    for bad in (np.empty((4, 5)), np.empty((3, 6)), np.empty((4, 6), dtype=np.float32),
                np.empty((6, 4)).T):  # fmt: skip
        with pytest.raises(ValueError, match="out_components: expected"):
            sc.score_components(**kwargs, out_components=bad)
    out = np.full((5, 6), -1.0)
    components, _, _, best = sc.score_components(**kwargs, out_components=out)
    assert best == 0 and components.shape == (4, 6) and (out[4] == -1.0).all()


def test_kernel_can_be_called_directly_after_validation() -> None:
    # The router's hot path: validate once, then call the kernel with the columns.
    f = fleet(3, p50=[0.3, 0.1, 0.2], p99=[0.3, 0.1, 0.2])
    a, mask, weights, params = f.arrays(), f.mask_array(), np.array(f.weights), f.params()
    scores, reasons = np.empty(3), np.empty(3, dtype=np.int8)
    arrays.check_buffers(a, mask, scores, reasons)
    arrays.check_weights(weights)
    arrays.check_params(params)
    columns = a.kernel_columns()
    best = kn._score_kernel(*columns, mask, a.clearance, weights, params, scores, reasons)
    assert best == 1 == sc.score_nodes(a, mask, weights, params)


# ---------------------------------------------------------------- NodeArrays


def test_node_arrays_fresh_slots_and_growth() -> None:
    a = arrays.NodeArrays(capacity=2)
    assert (a.n, a.capacity, a.n_regions) == (0, 2, 0)
    slots = [a.add_node() for _ in range(2)]
    a.p50[1] = 0.5
    a.health[0] = codes.HEALTH_HEALTHY
    columns = a.kernel_columns()
    assert slots == [0, 1] and a.capacity == 2
    assert a.add_node() == 2 and a.capacity == 4  # doubled, copied
    assert a.kernel_columns()[2] is not columns[2]  # re-read after growth
    assert a.p50[1] == 0.5 and a.health[0] == codes.HEALTH_HEALTHY
    for _ in range(3):
        a.add_node()
    assert (a.n, a.capacity) == (6, 8)
    s = 5
    assert a.health[s] == codes.HEALTH_UNKNOWN and math.isnan(a.p50[s]) and math.isnan(a.p99[s])
    assert a.breaker[s] == codes.BREAKER_CLOSED and a.alive[s] == 0 and a.inflight[s] == 0
    assert a.cost[s] == 0.0 and a.gpu[s] == 0 and a.region[s] == 0
    dtypes = {name: getattr(a, name).dtype for name in ("health", "p50", "p99", "region", "cost",
              "gpu", "inflight", "breaker", "alive", "clearance")}  # fmt: skip
    assert dtypes == dict(health=np.int8, p50=np.float64, p99=np.float64, region=np.int32,
                          cost=np.float64, gpu=np.uint8, inflight=np.int32, breaker=np.int8,
                          alive=np.uint8, clearance=np.int8)  # fmt: skip


def test_node_arrays_new_slot_does_not_inherit_stray_writes() -> None:
    a = arrays.NodeArrays(capacity=4)
    a.alive[0] = 1  # written before the slot was handed out
    a.health[0] = codes.HEALTH_HEALTHY
    assert a.add_node() == 0
    assert a.alive[0] == 0 and a.health[0] == codes.HEALTH_UNKNOWN


def test_node_arrays_columns_cannot_be_rebound() -> None:
    a = arrays.NodeArrays()
    with pytest.raises(AttributeError):
        a.p50 = np.zeros(64, dtype=np.float32)  # type: ignore[misc]


def test_node_arrays_regions_and_clearance() -> None:
    a = arrays.NodeArrays()
    assert a.add_region() == 0 and a.add_region(3) == 1
    assert a.clearance.tolist() == [codes.DEFAULT_CLEARANCE, 3]
    a.set_clearance(0, 2)
    assert a.clearance.tolist() == [2, 3]
    for bad in (4, -1):
        with pytest.raises(ValueError, match=rf"expected a clearance level 0-3, got {bad}"):
            a.add_region(bad)
    with pytest.raises(TypeError, match="expected an int clearance level"):
        a.set_clearance(0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"region_id: expected an int in 0..1, got 2"):
        a.set_clearance(2, 1)
    with pytest.raises(ValueError, match="capacity"):
        arrays.NodeArrays(capacity=0)


# ---------------------------------------------------------------- Numba settings


def test_warm_up_compiles_each_kernel_once() -> None:
    if JIT_OFF:
        assert set(_jit.warm_up()) == set(_jit.kernels())
        return
    kernels = _jit.kernels()
    assert set(kernels) == {
        "fedgate.routing._kernels._score_kernel",
        "fedgate.routing._kernels._components_kernel",
    }
    _jit.warm_up()
    before = {name: list(k.signatures) for name, k in kernels.items()}
    assert all(len(sigs) == 1 for sigs in before.values())
    _jit.warm_up()
    assert {name: list(k.signatures) for name, k in kernels.items()} == before
    # The router's call types are the warmed ones: a routing call compiles nothing.
    f = fleet(3)
    sc.score_nodes(f.arrays(), f.mask_array(), np.array(f.weights), f.params())
    sc.score_components(fleet(2).arrays(), np.ones(2, np.uint8), arrays.make_weights(),
                        arrays.make_params())  # fmt: skip
    assert {name: list(k.signatures) for name, k in kernels.items()} == before


def test_jit_options() -> None:
    options = _jit.JIT_OPTIONS
    assert options["nogil"] and options["cache"] and not options["fastmath"]
    assert not options["boundscheck"]
    if not JIT_OFF:
        # The cache is warm_up()'s to enable (decorating with it would write at import).
        assert all("cache" not in k.targetoptions for k in _jit.kernels().values())


LAZY_CHECK = textwrap.dedent(
    """
    import os
    import fedgate
    import fedgate.routing._kernels as s
    from fedgate.routing import _jit
    assert s._score_kernel.signatures == [], s._score_kernel.signatures
    assert s._components_kernel.signatures == [], s._components_kernel.signatures
    compiled = {name: k.signatures for name, k in _jit.kernels().items()}
    assert "fedgate.routing._kernels._score_kernel" in compiled, compiled
    assert not any(compiled.values()), compiled
    # No on-disk cache yet: nothing was looked up, nothing written.
    paths = [k.stats.cache_path for k in _jit.kernels().values()]
    assert paths == [None, None], paths
    cache_dir = os.environ["NUMBA_CACHE_DIR"]
    assert not os.path.exists(cache_dir), os.listdir(cache_dir)
    """
)


def _without_jit_switch() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}


@pytest.mark.skipif(JIT_OFF, reason="checks lazy compilation, which needs the JIT")
def test_import_compiles_nothing(tmp_path: Path) -> None:
    env = {**_without_jit_switch(), "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    done = subprocess.run([sys.executable, "-c", LAZY_CHECK], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


# A gateway start in a fresh interpreter: warm_up(), then one routing decision
# through each kernel on a fixed fleet (NaN, inf, every health and breaker
# state), printed bit for bit with the kernels' cache statistics.
CACHE_PROBE = textwrap.dedent(
    """
    import json
    import numpy as np
    import fedgate
    from fedgate.routing import _jit, arrays
    from fedgate.routing import _kernels as kn

    _jit.warm_up()
    n = 40
    rng = np.random.default_rng(7)
    a = arrays.NodeArrays()
    a.add_region(1)
    a.add_region(3)
    for _ in range(n):
        a.add_node()
    a.health[:n] = rng.integers(0, 4, n)
    a.p50[:n] = rng.choice([np.nan, 0.0, 0.02, 0.3, np.inf], n)
    a.p99[:n] = a.p50[:n] * 2
    a.region[:n] = rng.integers(-1, 3, n)
    a.cost[:n] = rng.choice([np.nan, 0.0, 0.5, 2.0, np.inf], n)
    a.gpu[:n] = rng.integers(0, 2, n)
    a.inflight[:n] = rng.integers(0, 5, n)
    a.breaker[:n] = rng.integers(0, 3, n)
    a.alive[:n] = rng.random(n) < 0.9
    mask = (rng.random(n) < 0.9).astype(np.uint8)
    weights = arrays.make_weights(gpu=0.5)
    params = arrays.make_params(privacy=1, origin=0, prefer_gpu=True, load_penalty=0.1)
    # The just-in-time kernels themselves (score_nodes runs the ahead-of-time ones).
    scores, reasons = np.empty(n), np.empty(n, np.int8)
    components = np.empty((n, 6))
    best = kn._score_kernel(*a.kernel_columns(), mask, a.clearance, weights, params,
                            scores, reasons)
    best2 = kn._components_kernel(*a.kernel_columns(), mask, a.clearance, weights, params,
                                  components, scores, reasons)
    stats = {
        name: {"hits": sum(k.stats.cache_hits.values()),
               "misses": sum(k.stats.cache_misses.values()),
               "path": k.stats.cache_path}
        for name, k in _jit.kernels().items()
    }
    result = [int(best), int(best2), components.tobytes().hex(), scores.tobytes().hex(),
              reasons.tolist()]
    print(json.dumps({"file": fedgate.__file__, "stats": stats, "result": result}))
    """
)


def _probe(cache_dir: Path, cwd: Path | None = None, **env: str) -> tuple[dict[str, Any], str]:
    """Run CACHE_PROBE with its Numba cache in cache_dir; (its JSON line, its stderr)."""
    full_env = {**_without_jit_switch(), "NUMBA_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=110)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def _hits_misses(probe: dict[str, Any]) -> set[tuple[int, int]]:
    return {(k["hits"], k["misses"]) for k in probe["stats"].values()}


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A Numba cache directory a first process filled: (its path, that process's probe)."""
    cache = tmp_path_factory.mktemp("numba-cache")
    first, _ = _probe(cache)
    return cache, first


def _copy(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "numba-cache"
    shutil.copytree(cache, copy)
    return copy


@pytest.mark.skipif(JIT_OFF, reason="the on-disk cache needs the JIT")
def test_second_process_loads_kernels_from_the_disk_cache(
    filled_cache: tuple[Path, dict[str, Any]],
) -> None:
    cache, first = filled_cache
    assert set(first["stats"]) == {"fedgate.routing._kernels._score_kernel",
                                   "fedgate.routing._kernels._components_kernel"}  # fmt: skip
    assert _hits_misses(first) == {(0, 1)}
    for name, stats in first["stats"].items():
        assert stats["path"].startswith(str(cache)), (name, stats)
    assert len(list(cache.rglob("*.nbi"))) == 2 and len(list(cache.rglob("*.nbc"))) == 2
    second, _ = _probe(cache)
    assert _hits_misses(second) == {(1, 0)}
    assert second["result"] == first["result"]


@pytest.mark.skipif(JIT_OFF, reason="the on-disk cache needs the JIT")
def test_disk_cache_is_keyed_by_codegen_settings(
    filled_cache: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # Numba's own key ignores NUMBA_BOUNDSCHECK and the decorator options:
    # served from this cache, a process that asked for bounds checks would
    # run the unchecked code.
    cache = _copy(filled_cache[0], tmp_path)
    other, _ = _probe(cache, NUMBA_BOUNDSCHECK="1")
    assert _hits_misses(other) == {(0, 1)}
    assert other["result"] == filled_cache[1]["result"]
    # Both entries now live side by side.
    assert _hits_misses(_probe(cache, NUMBA_BOUNDSCHECK="1")[0]) == {(1, 0)}
    assert _hits_misses(_probe(cache)[0]) == {(1, 0)}


@pytest.mark.skipif(JIT_OFF, reason="the on-disk cache needs the JIT")
def test_corrupt_disk_cache_costs_a_compile_not_the_start(
    filled_cache: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cache = _copy(filled_cache[0], tmp_path)
    for data in cache.rglob("*.nbc"):
        data.write_bytes(data.read_bytes()[:100])
    after, stderr = _probe(cache)
    assert "unreadable Numba cache" in stderr
    assert _hits_misses(after) == {(0, 1)}
    assert after["result"] == filled_cache[1]["result"]
    # The compile replaced the bad entries.
    healed, stderr = _probe(cache)
    assert _hits_misses(healed) == {(1, 0)} and "Numba cache" not in stderr


@pytest.mark.skipif(JIT_OFF, reason="the on-disk cache needs the JIT")
def test_no_writable_cache_directory_compiles_in_memory(
    filled_cache: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # A copy of the package whose __pycache__ cannot be a directory, and every
    # other place Numba looks under a plain file: no cache location at all
    # (file modes would not stop root). Numba alone raises RuntimeError here.
    site = tmp_path / "site"
    shutil.copytree(Path(fedgate.__file__).parent, site / "fedgate",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (site / "fedgate" / "routing" / "__pycache__").write_bytes(b"")
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    before = sorted(tmp_path.rglob("*"))
    probe, stderr = _probe(blocker / "numba", cwd=tmp_path, PYTHONPATH=str(site),
                           XDG_CACHE_HOME=str(blocker / "xdg"), HOME=str(blocker))  # fmt: skip
    assert probe["file"] == str(site / "fedgate" / "__init__.py")
    assert "no usable Numba cache" in stderr
    assert {k["path"] for k in probe["stats"].values()} == {None}
    assert probe["result"] == filled_cache[1]["result"]
    assert sorted(tmp_path.rglob("*")) == before


def test_import_fedgate_is_fast() -> None:
    walls = []
    # Best of three: a loaded machine can stall one run; a kernel compiled at
    # import (seconds) fails all three.
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "import fedgate"], env=_without_jit_switch(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        walls.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
        if walls[-1] < 1.5:
            break
    assert min(walls) < 1.5, f"python -c 'import fedgate' took {walls} s"


@pytest.mark.skipif(JIT_OFF, reason="this is the test that starts the JIT-disabled run")
def test_kernels_with_jit_disabled() -> None:
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "FEDGATE_EXPECT_NO_JIT": "1"}
    command = [sys.executable, "-m", "pytest", __file__, "-k", "reference", "-q"]
    # No cache provider: the rerun must not write .pytest_cache or reorder tests.
    command += ["-p", "no:cacheprovider"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout, done.stdout[-2000:]
