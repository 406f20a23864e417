"""Router: eligibility, typed errors, strategies, concurrency, and a property over random fleets."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import types
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate import _core
from fedgate.clock import ManualClock
from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    NoCapacityError,
    PrivacyViolationError,
    QoSViolationError,
)
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker, CircuitState
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker, HealthConfig, HealthState
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    PrivacyPolicy,
)
from fedgate.routing.kernels import routing_kernels
from fedgate.routing.router import STRATEGIES, Router
from fedgate.types import (
    Capability,
    InferenceRequest,
    ModelId,
    NodeId,
    PrivacyLevel,
    QoSRequirements,
    Region,
    RegionId,
)


def _expected_kernels() -> str:
    try:
        from fedgate.routing import _kernels_aot  # noqa: F401
    except ImportError:
        return "jit"
    jit_off = os.environ.get("NUMBA_DISABLE_JIT", "") not in ("", "0")
    return "jit" if _core.NO_EXTENSIONS or jit_off else "aot"


EXPECTED_KERNELS = _expected_kernels()
T = Capability.TRANSCRIBE
G = Capability.GENERATE
MODEL = ModelId("whisper-large-v3")
P = PrivacyLevel


@dataclass
class Fleet:
    clock: ManualClock
    catalog: ModelCatalog
    health: HealthChecker
    breaker: CircuitBreaker
    router: Router

    def add(self, node: str, region: str, caps: Sequence[str] = (T,), model: str = MODEL) -> None:
        self.catalog.register_sync(ModelId(model), NodeId(node), RegionId(region), caps)


def build(
    nodes: Iterable[tuple[str, str]] = (),
    *,
    regions: Iterable[Region] = (),
    core: types.SimpleNamespace | None = None,
    health_config: HealthConfig | None = None,
    breaker_config: BreakerConfig | None = None,
    **router_kw: object,
) -> Fleet:
    clock = ManualClock(1000.0)
    catalog = ModelCatalog()
    lat = {"table_factory": core.LatencyTable} if core is not None else {}
    brk = {"table_factory": core.BreakerTable} if core is not None else {}
    health = HealthChecker(health_config, clock=clock, **lat)
    breaker = CircuitBreaker(breaker_config, clock=clock, **brk)
    router_kw.setdefault("refresh_interval", 0.0)
    router = Router(catalog, health, breaker, regions=regions, **router_kw)  # type: ignore[arg-type]
    # Which kernels every test here runs: the ahead-of-time ones whenever they are
    # built and allowed (test_scoring.py checks both builds against a reference).
    assert (router.kernels, router._score, router._components) == routing_kernels()
    assert router.kernels == EXPECTED_KERNELS
    fleet = Fleet(clock, catalog, health, breaker, router)
    for node, region in nodes:
        fleet.add(node, region)
    return fleet


def req(
    cap: str = T,
    *,
    privacy: PrivacyLevel = P.INTERNAL,
    max_latency: float | None = None,
    rid: str = "r",
    **kw: object,
) -> InferenceRequest:
    qos = QoSRequirements(privacy=privacy, max_latency=max_latency, **kw.pop("qos", {}))  # type: ignore[arg-type]
    return InferenceRequest(Capability.parse(cap), b"x", qos, request_id=rid, **kw)  # type: ignore[arg-type]


def healthy(fleet: Fleet, node: str, latency: float = 0.05, times: int = 2) -> None:
    for _ in range(times):
        fleet.health.report_success(NodeId(node), latency)


def trip(fleet: Fleet, node: str) -> None:
    for _ in range(fleet.breaker.config.failure_threshold):
        fleet.breaker.record_failure(NodeId(node))


def kill(fleet: Fleet, *nodes: str) -> None:
    """Take ``nodes`` out by liveness: heartbeat tracking, then silence past its limit.

    Advances the shared clock by the liveness timeout and a bit; other nodes
    are untracked and stay alive.
    """
    for node in nodes:
        fleet.health.register_node(NodeId(node), expect_heartbeats=True)
    fleet.clock.advance(fleet.health.config.liveness_timeout + 0.5)


SEED_REGIONS = [
    Region(RegionId("us-west-2"), PrivacyLevel.INTERNAL),
    Region(RegionId("eu-west-1"), PrivacyLevel.RESTRICTED),
]


# ================================================================ basics


def test_routes_to_the_best_scoring_node() -> None:
    fleet = build([("fast", "r1"), ("slow", "r1"), ("new", "r1")])
    healthy(fleet, "fast", 0.02)
    healthy(fleet, "slow", 0.8)
    decision = fleet.router.route(req())
    assert decision.node_id == "fast" and decision.region_id == "r1"
    assert 0.0 < decision.score <= 1.0
    assert decision.slot == fleet.router.slot_of(NodeId("fast"))


def test_catalog_changes_after_construction_are_followed_incrementally() -> None:
    fleet = build()
    with pytest.raises(NoCapacityError):
        fleet.router.route(req())
    fleet.add("a", "r1")
    assert fleet.router.route(req()).node_id == "a"
    fleet.add("a", "r1", caps=(G,))  # re-registration moves the node to another capability
    with pytest.raises(NoCapacityError):
        fleet.router.route(req())
    assert fleet.router.route(req(G)).node_id == "a"
    fleet.catalog.deregister_sync(MODEL, NodeId("a"))
    with pytest.raises(NoCapacityError):
        fleet.router.route(req(G))
    assert fleet.router.capabilities() == []


def test_router_built_over_a_populated_catalog_replays_it() -> None:
    fleet = build([("a", "r1")])
    late = Router(fleet.catalog, fleet.health, fleet.breaker, refresh_interval=0.0)
    assert late.route(req()).node_id == "a"


def test_pinned_model_routes_only_to_its_nodes() -> None:
    fleet = build()
    fleet.add("big", "r1", model="whisper-large-v3")
    fleet.add("small", "r1", model="whisper-small")
    healthy(fleet, "small", 0.001)
    assert fleet.router.route(req()).node_id == "small"
    assert fleet.router.route(req(model=ModelId("whisper-large-v3"))).node_id == "big"
    with pytest.raises(NoCapacityError, match="model 'nope' with capability 'transcribe'"):
        fleet.router.route(req(model=ModelId("nope")))


# ================================================================ privacy (rule 10)


def test_restricted_traffic_only_reaches_cleared_regions() -> None:
    fleet = build([("us", "us-west-2"), ("eu", "eu-west-1")], regions=SEED_REGIONS)
    healthy(fleet, "us", 0.001)
    for i in range(20):
        assert fleet.router.route(req(privacy=P.RESTRICTED, rid=f"r{i}")).node_id == "eu"


def test_unconfigured_regions_count_as_internal() -> None:
    fleet = build([("x", "nowhere-1")])
    assert fleet.router.clearance_of(RegionId("nowhere-1")) is P.INTERNAL
    assert fleet.router.route(req(privacy=P.PUBLIC)).node_id == "x"
    assert fleet.router.route(req(privacy=P.INTERNAL)).node_id == "x"
    for level in (P.CONFIDENTIAL, P.RESTRICTED):
        with pytest.raises(PrivacyViolationError, match=level.name):
            fleet.router.route(req(privacy=level))


def test_privacy_is_never_widened_by_failures_or_exclusion() -> None:
    fleet = build([("us", "us-west-2"), ("eu", "eu-west-1")], regions=SEED_REGIONS)
    healthy(fleet, "us")
    trip(fleet, "eu")
    with pytest.raises(AllNodesUnhealthyError):
        fleet.router.route(req(privacy=P.RESTRICTED))
    fleet.breaker.reset(NodeId("eu"))
    with pytest.raises(NoCapacityError, match="excluded"):
        fleet.router.route(req(privacy=P.RESTRICTED), exclude={NodeId("eu")})
    for _ in range(3):
        fleet.health.report_failure(NodeId("eu"))
    # UNHEALTHY by reports: still the only cleared node, and still eligible.
    assert fleet.router.route(req(privacy=P.RESTRICTED)).node_id == "eu"
    kill(fleet, "eu")
    with pytest.raises(AllNodesUnhealthyError):
        fleet.router.route(req(privacy=P.RESTRICTED))


def test_privacy_violation_is_reported_before_anything_else() -> None:
    fleet = build([("us", "us-west-2")], regions=SEED_REGIONS)
    trip(fleet, "us")
    fleet.router.set_alive(NodeId("us"), False)
    with pytest.raises(PrivacyViolationError, match=r"RESTRICTED.*us-west-2"):
        fleet.router.route(req(privacy=P.RESTRICTED), exclude={NodeId("us")})


def test_region_clearance_can_be_reconfigured() -> None:
    fleet = build([("x", "lab")])
    with pytest.raises(PrivacyViolationError):
        fleet.router.route(req(privacy=P.CONFIDENTIAL))
    fleet.router.set_region(Region(RegionId("lab"), P.CONFIDENTIAL))
    assert fleet.router.route(req(privacy=P.CONFIDENTIAL)).node_id == "x"


# ================================================================ typed errors


def test_unknown_capability_is_no_capacity_naming_it() -> None:
    fleet = build([("a", "r1")])
    with pytest.raises(NoCapacityError, match="no node serves capability 'embed'"):
        fleet.router.route(req(Capability.EMBED))


def test_all_excluded_is_no_capacity() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    with pytest.raises(NoCapacityError, match="excluded"):
        fleet.router.route(req(), exclude=[NodeId("a"), NodeId("b")])
    assert fleet.router.route(req(), exclude=[NodeId("a")]).node_id == "b"


def test_latency_bound_gives_qos_violation() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    healthy(fleet, "a", 0.3)
    healthy(fleet, "b", 0.5)
    with pytest.raises(QoSViolationError, match=r"max_latency 200\.0 ms.*fastest p50 300\.0 ms"):
        fleet.router.route(req(max_latency=0.2))
    assert fleet.router.route(req(max_latency=0.4)).node_id == "a"


def test_dead_and_open_nodes_give_all_nodes_unhealthy() -> None:
    fleet = build([("a", "r1"), ("b", "r1"), ("c", "r1")])
    trip(fleet, "b")
    fleet.router.set_alive(NodeId("c"), False)
    kill(fleet, "a")
    with pytest.raises(
        AllNodesUnhealthyError,
        match="1 missed heartbeats, 1 with an open breaker, 1 not alive",
    ):
        fleet.router.route(req())
    reasons = {c.node_id: c.reason for c in fleet.router.candidates(req())}
    assert reasons == {
        "a": "not serving: node is not alive (heartbeat missed)",
        "b": "breaker: OPEN",
        "c": "not serving: node is not alive (disconnected)",
    }


def test_r23_unhealthy_by_failures_is_scored_zero_not_excluded() -> None:
    # SPEC §2 Health, "Who excludes a node": failures are the breaker's.
    fleet = build([("sick", "r1"), ("well", "r1")])
    healthy(fleet, "well", 0.05)
    for _ in range(3):
        fleet.health.report_failure(NodeId("sick"))
    standing = {c.node_id: c for c in fleet.router.candidates(req())}
    assert fleet.router.node_health(NodeId("sick")) is HealthState.UNHEALTHY
    assert standing["sick"].eligible and standing["sick"].breakdown["health"] == 0.0
    assert standing["sick"].total < standing["well"].total
    assert fleet.router.route(req()).node_id == "well"
    assert fleet.router.route(req(), exclude={NodeId("well")}).node_id == "sick"
    trip(fleet, "sick")  # the breaker takes it out
    with pytest.raises(AllNodesUnhealthyError, match="1 with an open breaker"):
        fleet.router.route(req(), exclude={NodeId("well")})


def test_r23_liveness_loss_excludes_at_once_and_comes_back_with_a_heartbeat() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    healthy(fleet, "a", 0.001)
    for _ in range(3):
        fleet.health.report_failure(NodeId("b"))  # UNHEALTHY by reports: not dead
    fleet.health.register_node(NodeId("a"), expect_heartbeats=True)
    assert fleet.router.route(req()).node_id == "a"
    fleet.clock.advance(3.001)  # one millisecond past 1 s x 3 of silence
    assert fleet.router.route(req()).node_id == "b"
    fleet.health.heartbeat(NodeId("a"))
    assert fleet.router.route(req()).node_id == "a"


def test_max_concurrency_gives_backpressure_then_recovers() -> None:
    fleet = build([("a", "r1")])
    fleet.router.update_node(NodeId("a"), max_concurrency=2)
    for _ in range(2):
        fleet.router.acquire(fleet.router.route(req()).node_id)
    with pytest.raises(BackpressureError, match="1 at its concurrency limit"):
        fleet.router.route(req())
    fleet.router.release(NodeId("a"))
    assert fleet.router.route(req()).node_id == "a"


def test_backpressure_only_when_a_full_node_would_otherwise_serve() -> None:
    fleet = build([("full", "r1"), ("sick", "r1")])
    fleet.router.update_node(NodeId("full"), max_concurrency=1)
    fleet.router.acquire(NodeId("full"))
    trip(fleet, "sick")
    with pytest.raises(BackpressureError, match="1 at its concurrency limit, 1 unavailable"):
        fleet.router.route(req())
    trip(fleet, "full")
    # Full *and* its breaker open: waiting for a free slot would not help.
    with pytest.raises(AllNodesUnhealthyError):
        fleet.router.route(req())


# ================================================================ R3 / rule 3: alive is not serving


def test_a_node_with_missed_heartbeats_is_not_routed_to() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    healthy(fleet, "a", 0.001)
    fleet.health.heartbeat(NodeId("a"))
    fleet.health.heartbeat(NodeId("b"))
    assert fleet.router.route(req()).node_id == "a"
    fleet.clock.advance(2.0)
    fleet.health.heartbeat(NodeId("b"))
    fleet.clock.advance(1.5)  # a: 3.5 s of silence > 1 s x 3
    assert fleet.router.route(req()).node_id == "b"
    assert fleet.router.node_health(NodeId("a")) is HealthState.UNHEALTHY
    fleet.health.heartbeat(NodeId("a"))
    assert fleet.router.route(req()).node_id == "a"


def test_set_alive_false_takes_a_node_out() -> None:
    fleet = build([("a", "r1")])
    fleet.router.set_alive(NodeId("a"), False)
    with pytest.raises(AllNodesUnhealthyError, match="1 not alive"):
        fleet.router.route(req())
    fleet.router.set_alive(NodeId("a"), True)
    assert fleet.router.route(req()).node_id == "a"


def test_an_open_breaker_takes_a_node_out_until_half_open() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    healthy(fleet, "a", 0.001)
    trip(fleet, "a")
    assert fleet.router.route(req()).node_id == "b"
    fleet.clock.advance(30.0)  # HALF_OPEN by the clock: routable for a probe
    decision = fleet.router.route(req(), admit=True)
    assert decision.node_id == "a" and decision.probe
    # Its one probe slot is taken: the next request goes elsewhere.
    assert fleet.router.route(req(), admit=True).node_id == "b"
    fleet.breaker.record_success(NodeId("a"))
    assert fleet.router.route(req()).node_id == "a"


def test_admit_skips_a_node_whose_breaker_rejects() -> None:
    fleet = build([("a", "r1"), ("b", "r1")])
    healthy(fleet, "a", 0.001)
    trip(fleet, "a")
    fleet.clock.advance(30.0)
    fleet.router.refresh()  # the router has seen HALF_OPEN ...
    assert fleet.breaker.admit(NodeId("a")).probe  # ... then someone takes the probe slot
    decision = fleet.router.route(req(), admit=True)
    assert decision.node_id == "b" and not decision.probe


# ================================================================ R5 at unit level


@pytest.mark.parametrize(
    "bad",
    [
        lambda: req(Capability.EMBED),
        lambda: req(privacy=P.RESTRICTED),
        lambda: req(max_latency=1e-6),
    ],
)
def test_routing_errors_never_touch_breakers_or_health(bad) -> None:  # type: ignore[no-untyped-def]
    fleet = build([("a", "r1"), ("b", "r2")])
    healthy(fleet, "a", 0.01)
    healthy(fleet, "b", 0.01)
    before = [(s.state, s.consecutive_failures, s.samples) for s in fleet.health.all_statuses()]
    for _ in range(10):
        with pytest.raises((NoCapacityError, PrivacyViolationError, QoSViolationError)):
            fleet.router.route(bad(), admit=True)
    for node in ("a", "b"):
        status = fleet.breaker.status(NodeId(node))
        assert status.state is CircuitState.CLOSED and status.failures == 0 and status.probes == 0
    after = [(s.state, s.consecutive_failures, s.samples) for s in fleet.health.all_statuses()]
    assert after == before


def test_malformed_requests_fail_before_the_router() -> None:
    fleet = build([("a", "r1")])
    with pytest.raises(ValueError, match="request_id"):
        fleet.router.route(req(rid=""))
    with pytest.raises(TypeError, match="InferenceRequest"):
        fleet.router.route("transcribe")  # type: ignore[arg-type]
    assert fleet.breaker.status(NodeId("a")).failures == 0


# ================================================================ node facts and scoring


def test_latency_refresh_honours_the_interval() -> None:
    fleet = build([("a", "r1"), ("b", "r1")], refresh_interval=0.05)
    healthy(fleet, "a", 0.01)
    healthy(fleet, "b", 0.02)
    assert fleet.router.route(req()).node_id == "a"
    for _ in range(50):
        fleet.health.report_success(NodeId("a"), 0.9)
    # Within the interval the old percentiles still stand ...
    assert fleet.router.route(req()).node_id == "a"
    fleet.clock.advance(0.04)
    assert fleet.router.route(req()).node_id == "a"
    fleet.clock.advance(0.02)
    # ... after it the new ones do.
    assert fleet.router.route(req()).node_id == "b"
    slot = fleet.router.slot_of(NodeId("a"))
    assert fleet.router.arrays.p50[slot] == pytest.approx(0.9)


def test_gpu_preference_needs_a_gpu_policy() -> None:
    fleet = build([("cpu", "r1"), ("gpu", "r1")])
    fleet.router.update_node(NodeId("gpu"), gpu=True)
    fleet.router.update_node(NodeId("cpu"), gpu=False)
    # enterprise_default has no GPU policy: equal nodes, lowest slot wins.
    assert fleet.router.route(req()).node_id == "cpu"
    fleet.router.set_policy(CompositePolicy.enterprise_default().with_policy(GpuPolicy(weight=0.5)))
    assert fleet.router.route(req()).node_id == "gpu"
    assert fleet.router.route(req(qos={"prefer_gpu": False})).node_id == "cpu"


def test_cost_tolerance_trades_price_for_speed() -> None:
    fleet = build(
        [("cheap-slow", "r1"), ("dear-fast", "r2")],
        regions=[Region(RegionId("r1"), cost=0.1), Region(RegionId("r2"), cost=5.0)],
        policy=CompositePolicy([CostPolicy(weight=1.0)]),
    )
    healthy(fleet, "cheap-slow", 0.9)
    healthy(fleet, "dear-fast", 0.01)
    assert fleet.router.route(req(qos={"cost_tolerance": 0})).node_id == "cheap-slow"
    assert fleet.router.route(req(qos={"cost_tolerance": 100})).node_id == "dear-fast"
    fleet.router.update_node(NodeId("dear-fast"), cost=0.0)  # an explicit price beats the region's
    assert fleet.router.route(req(qos={"cost_tolerance": 0})).node_id == "dear-fast"


def test_locality_prefers_the_origin_region() -> None:
    fleet = build([("us", "us-west-2"), ("eu", "eu-west-1")], origin=RegionId("eu-west-1"))
    assert fleet.router.route(req()).node_id == "eu"
    assert fleet.router.route(req(origin=RegionId("us-west-2"))).node_id == "us"
    fleet.router.set_policy(
        CompositePolicy.enterprise_default().with_policy(
            LocalityPolicy(origin=RegionId("us-west-2"))
        )
    )
    assert fleet.router.route(req()).node_id == "us"


def test_a_failed_policy_reload_changes_nothing() -> None:
    fleet = build([("a", "r1")])
    before = fleet.router.policy
    with pytest.raises(ValueError, match="weight > 0"):
        fleet.router.set_policy(CompositePolicy([HealthPolicy(weight=0.0)]))
    with pytest.raises(TypeError):
        fleet.router.set_policy({"health": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy"):
        fleet.router.set_strategy("fastest")
    assert fleet.router.policy is before
    assert fleet.router.strategy == "least-latency"
    assert fleet.router.route(req()).node_id == "a"


def test_update_node_validates_its_arguments() -> None:
    fleet = build([("a", "r1")])
    with pytest.raises(ValueError, match="cost"):
        fleet.router.update_node(NodeId("a"), cost=math.nan)
    with pytest.raises(TypeError, match="gpu"):
        fleet.router.update_node(NodeId("a"), gpu=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        fleet.router.update_node(NodeId("a"), max_concurrency=-1)
    with pytest.raises(ValueError, match="release"):
        fleet.router.release(NodeId("a"))
    with pytest.raises(ValueError, match="ghost"):
        fleet.router.acquire(NodeId("ghost"))


# ================================================================ candidates


def test_candidates_explain_every_node() -> None:
    fleet = build(
        [("us", "us-west-2"), ("eu", "eu-west-1"), ("eu2", "eu-west-1")], regions=SEED_REGIONS
    )
    healthy(fleet, "eu", 0.02)
    trip(fleet, "eu2")
    found = {c.node_id: c for c in fleet.router.candidates(req(privacy=P.RESTRICTED))}
    assert found["us"].reason == "privacy: region us-west-2 cleared for INTERNAL < RESTRICTED"
    assert found["eu2"].reason == "breaker: OPEN"
    assert found["eu"].eligible and found["eu"].reason is None
    assert not found["us"].eligible and math.isnan(found["us"].total)
    assert set(found["eu"].breakdown) == {"health", "latency", "privacy", "locality", "cost"}
    assert found["eu"].breakdown["health"] == 1.0
    assert found["us"].breakdown["privacy"] == 0.0
    ordered = fleet.router.candidates(req(privacy=P.RESTRICTED))
    assert ordered[0].node_id == "eu"
    assert fleet.router.candidates(req(Capability.EMBED)) == []


def test_candidate_total_is_the_weighted_mean_of_its_breakdown() -> None:
    policy = CompositePolicy(
        [HealthPolicy(weight=2.0), LatencyPolicy(weight=1.0), PrivacyPolicy(weight=0.5)]
    )
    fleet = build([("a", "r1")], policy=policy)
    healthy(fleet, "a", 0.25)
    (cand,) = fleet.router.candidates(req())
    assert cand.breakdown == {"health": 1.0, "latency": pytest.approx(0.5), "privacy": 1.0}
    assert cand.total == pytest.approx((2.0 * 1.0 + 1.0 * 0.5 + 0.5 * 1.0) / 3.5)


# ================================================================ strategies


def test_round_robin_cycles_over_eligible_nodes() -> None:
    fleet = build([("a", "r"), ("b", "r"), ("c", "r")], strategy="round-robin")
    healthy(fleet, "a", 0.001)  # scores do not matter to round robin
    picks = [fleet.router.route(req()).node_id for _ in range(7)]
    assert picks == ["a", "b", "c", "a", "b", "c", "a"]
    trip(fleet, "b")
    picks = [fleet.router.route(req()).node_id for _ in range(4)]
    assert picks == ["c", "a", "c", "a"]


def test_least_connections_picks_the_least_loaded() -> None:
    fleet = build([("a", "r"), ("b", "r"), ("c", "r")], strategy="least-connections")
    for node, n in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(n):
            fleet.router.acquire(NodeId(node))
    assert fleet.router.route(req()).node_id == "b"
    fleet.router.acquire(NodeId("b"))
    fleet.router.acquire(NodeId("b"))
    healthy(fleet, "c", 0.001)  # ties on in-flight go to the better score
    assert fleet.router.route(req()).node_id == "c"


def test_weighted_random_is_score_proportional_and_seeded() -> None:
    fleet = build([("good", "r"), ("meh", "r")], strategy="weighted-random", seed=42)
    healthy(fleet, "good", 0.01)
    scores = {c.node_id: c.total for c in fleet.router.candidates(req())}
    draws = Counter(fleet.router.route(req()).node_id for _ in range(4000))
    expected = scores["good"] / (scores["good"] + scores["meh"])
    assert draws["good"] / 4000 == pytest.approx(expected, abs=0.03)
    # The same seed gives the same draws.
    one = build([("good", "r"), ("meh", "r")], strategy="weighted-random", seed=7)
    two = build([("good", "r"), ("meh", "r")], strategy="weighted-random", seed=7)
    for f in (one, two):
        healthy(f, "good", 0.01)
    draws_one = [one.router.route(req()).node_id for _ in range(50)]
    assert draws_one == [two.router.route(req()).node_id for _ in range(50)]
    assert len(set(draws_one)) == 2


def _reference_ring(key: str, nodes: Sequence[str]) -> str:
    """The node nearest clockwise from the key on a 64-point-per-node ring (naive)."""

    def points(node: str) -> list[int]:
        out = []
        for i in range(8):
            digest = hashlib.blake2b(f"{node}#{i}".encode(), digest_size=64).digest()
            out += [int.from_bytes(digest[j : j + 8], "little") for j in range(0, 64, 8)]
        return out

    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    best = min((((p - h) % 2**64), node) for node in nodes for p in points(node))
    return best[1]


def test_consistent_hash_is_stable_and_matches_a_naive_ring() -> None:
    names = [f"n{i}" for i in range(8)]
    fleet = build([(n, "r") for n in names], strategy="consistent-hash")
    keys = [f"tenant-{i}" for i in range(40)]
    first = {k: fleet.router.route(req(tenant_id=k)).node_id for k in keys}
    assert first == {k: fleet.router.route(req(tenant_id=k)).node_id for k in keys}
    assert first == {k: _reference_ring(k, names) for k in keys}
    # affinity_key wins over tenant_id
    assert (
        fleet.router.route(req(tenant_id="tenant-1", affinity_key="tenant-2")).node_id
        == first["tenant-2"]
    )
    # Another router over the same fleet (a restart, a replica) agrees.
    other = Router(fleet.catalog, fleet.health, fleet.breaker, strategy="consistent-hash")
    assert first == {k: other.route(req(tenant_id=k)).node_id for k in keys}


def test_consistent_hash_moves_only_the_keys_of_a_changed_node() -> None:
    fleet = build([(f"n{i}", "r") for i in range(10)], strategy="consistent-hash")
    keys = [f"session-{i}" for i in range(2000)]
    before = {k: fleet.router.route(req(affinity_key=k)).node_id for k in keys}
    load = Counter(before.values())
    assert min(load.values()) > 0.4 * 200 and max(load.values()) < 2.0 * 200
    fleet.catalog.deregister_node_sync(NodeId("n3"))
    after = {k: fleet.router.route(req(affinity_key=k)).node_id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert set(moved) == {k for k in keys if before[k] == "n3"}
    fleet.add("n10", "r")
    grown = {k: fleet.router.route(req(affinity_key=k)).node_id for k in keys}
    moved = [k for k in keys if grown[k] != after[k]]
    assert all(grown[k] == "n10" for k in moved)
    assert 0.03 < len(moved) / len(keys) < 0.2


def test_consistent_hash_with_few_eligible_nodes_uses_the_same_ring() -> None:
    names = [f"us{i}" for i in range(300)]
    fleet = build(
        [(n, "us-west-2") for n in names], regions=SEED_REGIONS, strategy="consistent-hash"
    )
    fleet.add("eu-a", "eu-west-1")
    fleet.add("eu-b", "eu-west-1")
    for k in (f"k{i}" for i in range(20)):
        got = fleet.router.route(req(privacy=P.RESTRICTED, tenant_id=k)).node_id
        assert got == _reference_ring(k, ["eu-a", "eu-b"])


def test_consistent_hash_without_a_key_falls_back_to_the_best_node() -> None:
    fleet = build([("a", "r"), ("b", "r")], strategy="consistent-hash")
    healthy(fleet, "b", 0.001)
    assert fleet.router.route(req()).node_id == "b"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_respects_eligibility(strategy: str) -> None:
    fleet = build(
        [("us", "us-west-2"), ("eu", "eu-west-1"), ("eu-bad", "eu-west-1")],
        regions=SEED_REGIONS,
        strategy=strategy,
        seed=1,
    )
    trip(fleet, "eu-bad")
    for i in range(30):
        assert fleet.router.route(req(privacy=P.RESTRICTED, tenant_id=f"t{i}")).node_id == "eu"


# ================================================================ concurrency


async def test_default_strategy_does_not_herd_under_concurrency() -> None:
    fleet = build([(f"n{i}", "r") for i in range(4)])

    async def one(i: int) -> NodeId:
        await asyncio.sleep(0)
        decision = fleet.router.route(req(rid=f"r{i}"))
        fleet.router.acquire(decision.node_id)
        return decision.node_id

    chosen = await asyncio.gather(*(one(i) for i in range(1000)))
    counts = Counter(chosen)
    assert len(counts) == 4
    assert max(counts.values()) <= 2 * 1000 / 4
    assert sum(fleet.router.inflight(n) for n in counts) == 1000


async def test_a_better_node_gets_more_but_not_everything() -> None:
    fleet = build([(f"n{i}", "r") for i in range(4)])
    healthy(fleet, "n0", 0.01)
    chosen = []
    for i in range(1000):
        decision = fleet.router.route(req(rid=f"r{i}"))
        fleet.router.acquire(decision.node_id)
        chosen.append(decision.node_id)
    counts = Counter(chosen)
    assert counts["n0"] == max(counts.values())
    assert counts["n0"] <= 2 * 1000 / 4


def test_routing_from_threads_spreads_and_counts_exactly() -> None:
    fleet = build([(f"n{i}", "r") for i in range(4)])
    barrier = threading.Barrier(4)
    chosen: list[NodeId] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(250):
            decision = fleet.router.route(req())
            fleet.router.acquire(decision.node_id)
            with lock:
                chosen.append(decision.node_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(chosen)
    assert max(counts.values()) <= 500
    assert sum(fleet.router.inflight(NodeId(f"n{i}")) for i in range(4)) == 1000


# ================================================================ both cores


def test_failure_and_recovery_on_each_core(core: types.SimpleNamespace) -> None:
    fleet = build([("a", "r1"), ("b", "r1")], core=core)
    healthy(fleet, "a", 0.01)
    healthy(fleet, "b", 0.2)
    assert fleet.router.route(req()).node_id == "a"
    trip(fleet, "a")
    assert fleet.router.route(req()).node_id == "b"
    fleet.clock.advance(30)
    decision = fleet.router.route(req(), admit=True)
    assert decision.node_id == "a" and decision.probe
    fleet.breaker.record_success(NodeId("a"))
    fleet.health.report_success(NodeId("a"), 0.01)
    assert fleet.router.route(req()).node_id == "a"


# ================================================================ property over random fleets

REGION_NAMES = ["r0", "r1", "r2", "r3"]

node_spec = st.tuples(
    st.sampled_from(REGION_NAMES),
    st.sampled_from(["unknown", "healthy", "degraded", "unhealthy", "dead"]),
    st.floats(0.001, 2.0),  # latency of its successes
    st.booleans(),  # breaker open
    st.booleans(),  # alive
    st.booleans(),  # serves the capability (else another one)
    st.booleans(),  # excluded
)
weights = st.lists(st.floats(0.0, 5.0), min_size=6, max_size=6).filter(lambda w: sum(w) > 0)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(node_spec, max_size=10),
    clearances=st.lists(st.one_of(st.none(), st.sampled_from(list(P))), min_size=4, max_size=4),
    privacy=st.sampled_from(list(P)),
    max_latency=st.one_of(st.none(), st.floats(0.005, 2.0)),
    strategy=st.sampled_from(STRATEGIES),
    w=weights,
    tenant=st.one_of(st.none(), st.text("abc", min_size=1, max_size=4)),
)
def test_property_chosen_node_is_always_eligible(
    specs: list[tuple[str, str, float, bool, bool, bool, bool]],
    clearances: list[PrivacyLevel | None],
    privacy: PrivacyLevel,
    max_latency: float | None,
    strategy: str,
    w: list[float],
    tenant: str | None,
) -> None:
    regions = [
        Region(RegionId(r), c)
        for r, c in zip(REGION_NAMES, clearances, strict=True)
        if c is not None
    ]
    kinds = (HealthPolicy, LatencyPolicy, PrivacyPolicy, LocalityPolicy, CostPolicy, GpuPolicy)
    policy = CompositePolicy([k(weight=x) for k, x in zip(kinds, w, strict=True)])
    fleet = build(
        regions=regions, strategy=strategy, policy=policy, seed=0,
        health_config=HealthConfig(degraded_latency=10.0),
    )  # fmt: skip
    clearance = {r.id: r.clearance for r in regions}
    eligible: set[str] = set()
    serving: list[int] = []
    excluded: set[NodeId] = set()
    facts = []
    for i, (region, state, latency, open_, alive, serves, skip) in enumerate(specs):
        node = NodeId(f"n{i}")
        fleet.add(node, region, caps=(T,) if serves else (G,))
        p50 = None
        if state in ("healthy", "degraded"):
            fleet.health.report_success(node, latency)
            p50 = latency
        if state == "degraded":
            fleet.health.report_failure(node)
        if state in ("unhealthy", "dead"):
            for _ in range(3):
                fleet.health.report_failure(node)
        if state == "dead":
            fleet.health.register_node(node, expect_heartbeats=True)
        if open_:
            trip(fleet, node)
        fleet.router.set_alive(node, alive)
        if skip:
            excluded.add(node)
        cleared = clearance.get(RegionId(region), P.INTERNAL) >= privacy
        fits = p50 is None or max_latency is None or p50 <= max_latency
        # Failures exclude through the breaker, liveness through health (R23).
        ok_health = state != "dead" and not open_
        facts.append((serves, cleared, skip, alive, ok_health, fits))
        if serves:
            serving.append(i)
        if serves and cleared and not skip and alive and ok_health and fits:
            eligible.add(node)

    fleet.clock.advance(fleet.health.config.liveness_timeout + 0.5)  # the "dead" die
    request = req(privacy=privacy, max_latency=max_latency, tenant_id=tenant)
    try:
        decision = fleet.router.route(request, exclude=excluded)
    except (
        NoCapacityError,
        PrivacyViolationError,
        QoSViolationError,
        AllNodesUnhealthyError,
    ) as exc:
        assert not eligible
        if not serving:
            assert type(exc) is NoCapacityError
        elif not any(facts[i][1] for i in serving):
            assert type(exc) is PrivacyViolationError
        elif all(facts[i][2] for i in serving if facts[i][1]):
            assert type(exc) is NoCapacityError
        elif any(f[0] and f[1] and not f[2] and f[3] and f[4] and not f[5] for f in facts):
            assert type(exc) is QoSViolationError
        else:
            assert type(exc) is AllNodesUnhealthyError
        return
    assert decision.node_id in eligible
    cleared_for = clearance.get(decision.region_id, P.INTERNAL)
    assert cleared_for >= privacy
    if privacy is P.RESTRICTED:
        assert cleared_for is P.RESTRICTED
    listed = {c.node_id for c in fleet.router.candidates(request) if c.eligible}
    assert listed - excluded == eligible
