"""The case study's snippets (SPEC §1) and its request state machine, as tests."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fedgate.clock import ManualClock
from fedgate.federation.breaker import BreakerConfig, CircuitBreaker, CircuitState
from fedgate.federation.catalog import ModelCatalog
from fedgate.federation.health import HealthChecker, HealthState
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    PrivacyPolicy,
)
from fedgate.federation.statemachine import (
    ALLOWED_TRANSITIONS,
    InvalidTransitionError,
    RequestLifecycle,
    RequestState,
)
from fedgate.routing.router import Router
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

S = RequestState


async def test_seed_catalog_registers_a_model_in_two_regions() -> None:
    catalog = ModelCatalog()
    await catalog.register(
        ModelId("whisper-large-v3"),
        NodeId("us-west-gpu-01"),
        RegionId("us-west-2"),
        [Capability.TRANSCRIBE],
    )
    await catalog.register(
        ModelId("whisper-large-v3"),
        NodeId("eu-west-gpu-01"),
        RegionId("eu-west-1"),
        [Capability.TRANSCRIBE],
    )
    assert await catalog.find_by_capability(Capability.TRANSCRIBE) == [
        ("us-west-gpu-01", "us-west-2"),
        ("eu-west-gpu-01", "eu-west-1"),
    ]
    assert await catalog.list_all() == ["whisper-large-v3"]
    assert len((await catalog.get_metadata(ModelId("whisper-large-v3"))).deployments) == 2


def test_seed_health_report_of_45ms() -> None:
    health = HealthChecker()
    health.register_node(NodeId("us-west-gpu-01"))
    health.report_success(NodeId("us-west-gpu-01"), 0.045)
    (status,) = health.all_statuses()
    assert status.node_id == "us-west-gpu-01"
    assert status.state is HealthState.HEALTHY
    assert status.latency_p50 == pytest.approx(0.045)
    assert status.latency_p99 == pytest.approx(0.045)


def test_seed_health_transitions() -> None:
    checker = HealthChecker()
    node = NodeId("test-node")
    checker.register_node(node)
    assert checker.status(node).state is HealthState.UNKNOWN
    for _ in range(3):
        checker.report_success(node, timedelta(milliseconds=50))
    assert checker.status(node).state is HealthState.HEALTHY

    slow = NodeId("slow-node")
    checker.register_node(slow)
    checker.report_success(slow, timedelta(seconds=2))
    assert checker.status(slow).state is HealthState.DEGRADED

    failing = NodeId("failing-node")
    checker.register_node(failing)
    for _ in range(3):
        checker.report_failure(failing)
    assert checker.status(failing).state is HealthState.UNHEALTHY


def test_seed_circuit_breaker_opens_then_a_probe_closes_it() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(clock=clock)
    node = NodeId("problem-node")
    assert not cb.is_open(node) and cb.state(node) is CircuitState.CLOSED
    for _ in range(5):
        cb.record_failure(node)
    assert cb.is_open(node)  # node excluded from routing
    clock.advance(30)  # after the timeout the circuit is half-open
    assert cb.state(node) is CircuitState.HALF_OPEN
    assert cb.allow(node)
    cb.record_success(node)  # a successful probe closes it
    assert cb.state(node) is CircuitState.CLOSED


def test_seed_breaker_config_and_success_reset() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3))
    node = NodeId("failing-node")
    for _ in range(3):
        breaker.record_failure(node)
    assert breaker.is_open(node) and breaker.state(node) is CircuitState.OPEN
    flaky = NodeId("flaky-node")
    breaker.record_failure(flaky)
    breaker.record_failure(flaky)
    breaker.record_success(flaky)
    assert breaker.status(flaky).failures == 0


def test_seed_policy_table_and_customisation() -> None:
    policy = CompositePolicy.enterprise_default()
    table = {p.name: p.weight for p in policy.policies}
    assert table == {"health": 2.0, "latency": 1.0, "privacy": 1.0, "locality": 1.0, "cost": 1.0}
    custom = (
        CompositePolicy()
        .with_policy(HealthPolicy(weight=3.0))
        .with_policy(LatencyPolicy())
        .with_policy(PrivacyPolicy())
    )
    assert [(p.name, p.weight) for p in custom.policies] == [
        ("health", 3.0),
        ("latency", 1.0),
        ("privacy", 1.0),
    ]
    assert not any(isinstance(p, (LocalityPolicy, CostPolicy)) for p in custom.policies)


def test_seed_three_region_federation_routes_by_policy() -> None:
    clock = ManualClock()
    catalog = ModelCatalog()
    model = ModelId("whisper-large-v3")
    for node, region in (
        ("us-west-gpu-01", "us-west-2"),
        ("eu-west-gpu-01", "eu-west-1"),
        ("ap-south-cpu-01", "ap-south-1"),
    ):
        catalog.register_sync(model, NodeId(node), RegionId(region), [Capability.TRANSCRIBE])
    health = HealthChecker(clock=clock)
    breaker = CircuitBreaker(clock=clock)
    router = Router(
        catalog,
        health,
        breaker,
        CompositePolicy.enterprise_default(),
        regions=[Region(RegionId("eu-west-1"), PrivacyLevel.RESTRICTED)],
        refresh_interval=0.0,
    )
    for node, latency in (
        ("us-west-gpu-01", 0.045),
        ("eu-west-gpu-01", 0.060),
        ("ap-south-cpu-01", 0.4),
    ):
        for _ in range(2):
            health.report_success(NodeId(node), latency)
    request = InferenceRequest(
        capability=Capability.TRANSCRIBE,
        input=b"...",
        qos=QoSRequirements(),
        request_id="req-001",
        tenant_id="acme-corp",
    )
    assert router.route(request).node_id == "us-west-gpu-01"
    for _ in range(5):
        breaker.record_failure(NodeId("us-west-gpu-01"))
    assert router.route(request).node_id == "eu-west-gpu-01"
    secret = InferenceRequest(
        Capability.TRANSCRIBE, b"...", QoSRequirements(privacy=PrivacyLevel.RESTRICTED), "req-002"
    )
    assert router.route(secret).node_id == "eu-west-gpu-01"


# ---------------------------------------------------------------- the state machine


def test_the_seed_happy_paths() -> None:
    clock = ManualClock(0.0)
    life = RequestLifecycle("req-001", clock=clock)
    for state in (S.READY, S.ROUTING, S.INFERRING, S.STREAMING, S.COMPLETED, S.READY):
        clock.advance(1)
        life.to(state)
    assert life.path() == [
        S.INITIALIZING,
        S.READY,
        S.ROUTING,
        S.INFERRING,
        S.STREAMING,
        S.COMPLETED,
        S.READY,
    ]
    assert [step.at for step in life.trace] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    life.to(S.ROUTING)
    life.to(S.FAILED)  # no nodes available
    life.to(S.READY)
    assert life.state is S.READY


def test_retry_and_resume_paths() -> None:
    life = RequestLifecycle("r", start=S.READY)
    for state in (S.ROUTING, S.INFERRING, S.RETRYING, S.ROUTING, S.INFERRING, S.STREAMING,
                  S.RETRYING, S.ROUTING, S.INFERRING, S.COMPLETED):  # fmt: skip
        life.to(state)
    assert life.done
    other = RequestLifecycle("r2", start=S.READY)
    for state in (S.ROUTING, S.INFERRING, S.RETRYING, S.FAILED):
        other.to(state)
    assert other.done and other.state is S.FAILED


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ((), S.INITIALIZING, S.INFERRING),
        ((S.READY, S.ROUTING, S.FAILED), S.FAILED, S.INFERRING),
        ((S.READY, S.ROUTING, S.INFERRING, S.STREAMING), S.STREAMING, S.ROUTING),
        ((S.READY,), S.READY, S.COMPLETED),
        ((S.READY, S.ROUTING, S.INFERRING, S.COMPLETED), S.COMPLETED, S.FAILED),
    ],
)
def test_forbidden_moves_raise_naming_both_states(
    path: tuple[RequestState, ...], old: RequestState, new: RequestState
) -> None:
    life = RequestLifecycle("req-9")
    for state in path:
        life.to(state)
    with pytest.raises(InvalidTransitionError, match=f"{old.name} -> {new.name}") as info:
        life.to(new)
    assert isinstance(info.value, ValueError)
    assert (info.value.old, info.value.new) == (old, new)
    assert life.state is old  # unchanged


def test_the_allowed_set_is_exactly_the_documented_one() -> None:
    allowed = {(a.name, b.name) for a, b in ALLOWED_TRANSITIONS}
    assert allowed == {
        ("INITIALIZING", "READY"), ("READY", "ROUTING"), ("ROUTING", "INFERRING"),
        ("ROUTING", "FAILED"), ("INFERRING", "STREAMING"), ("INFERRING", "COMPLETED"),
        ("INFERRING", "FAILED"), ("INFERRING", "RETRYING"), ("STREAMING", "COMPLETED"),
        ("STREAMING", "READY"), ("STREAMING", "FAILED"), ("STREAMING", "RETRYING"),
        ("RETRYING", "ROUTING"), ("RETRYING", "FAILED"), ("COMPLETED", "READY"),
        ("FAILED", "READY"),
    }  # fmt: skip
    for a in RequestState:
        life = RequestLifecycle(start=a, trace=False)
        for b in RequestState:
            assert life.can(b) == ((a, b) in ALLOWED_TRANSITIONS)


def test_the_hook_sees_every_transition() -> None:
    seen: list[tuple[str, RequestState, RequestState, float]] = []
    clock = ManualClock(5.0)
    life = RequestLifecycle("req-1", clock=clock, hook=lambda *e: seen.append(e), start=S.READY)
    life.to(S.ROUTING)
    clock.advance(0.5)
    life.to(S.INFERRING)
    assert seen == [("req-1", S.READY, S.ROUTING, 5.0), ("req-1", S.ROUTING, S.INFERRING, 5.5)]
    with pytest.raises(TypeError):
        life.to("COMPLETED")  # type: ignore[arg-type]
