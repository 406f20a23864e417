"""Routing policies: validation (R15), immutability, the kernel's weight vector."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from fedgate._core import codes
from fedgate.federation.policy import (
    CompositePolicy,
    CostPolicy,
    GpuPolicy,
    HealthPolicy,
    LatencyPolicy,
    LocalityPolicy,
    Policy,
    PrivacyPolicy,
)
from fedgate.routing import arrays as _arrays

ALL_KINDS = (HealthPolicy, LatencyPolicy, PrivacyPolicy, LocalityPolicy, CostPolicy, GpuPolicy)


def test_enterprise_default_is_the_seed_table() -> None:
    composite = CompositePolicy.enterprise_default()
    assert [(type(p), p.weight) for p in composite.policies] == [
        (HealthPolicy, 2.0),
        (LatencyPolicy, 1.0),
        (PrivacyPolicy, 1.0),
        (LocalityPolicy, 1.0),
        (CostPolicy, 1.0),
    ]
    # No GPU policy: prefer_gpu does not move the score until one is added.
    assert composite.weights().tolist() == [2.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert np.array_equal(composite.weights(), _arrays.make_weights())


def test_weight_indices_match_the_kernel() -> None:
    for kind in ALL_KINDS:
        assert codes.WEIGHT_NAMES[kind.index] == kind.name


def test_with_policy_returns_a_new_composite_and_replaces_same_kind() -> None:
    base = CompositePolicy()
    one = base.with_policy(HealthPolicy(weight=3.0))
    two = one.with_policy(LatencyPolicy()).with_policy(PrivacyPolicy())
    assert base.policies == ()
    assert one.policies == (HealthPolicy(weight=3.0),)
    assert [p.name for p in two.policies] == ["health", "latency", "privacy"]
    replaced = two.with_policy(HealthPolicy(weight=0.5))
    assert [p.name for p in replaced.policies] == ["health", "latency", "privacy"]
    assert replaced.get("health") == HealthPolicy(weight=0.5)
    assert two.get(HealthPolicy) == HealthPolicy(weight=3.0)
    assert replaced.without("latency").get("latency") is None


def test_policies_are_frozen() -> None:
    policy = HealthPolicy(weight=1.0)
    with pytest.raises(AttributeError):
        policy.weight = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0, -1e-9, 1e6 + 1, 1e308])
def test_bad_weights_are_rejected_naming_the_field(kind: type[Policy], bad: float) -> None:
    with pytest.raises(
        ValueError, match=rf"^{kind.__name__}\.weight: expected a number in \[0, 1000000\], got"
    ):
        kind(weight=bad)


def test_weight_message_names_the_value() -> None:
    with pytest.raises(ValueError) as info:
        HealthPolicy(weight=math.nan)
    assert str(info.value) == "HealthPolicy.weight: expected a number in [0, 1000000], got nan"


@pytest.mark.parametrize("bad", ["1", None, True, [1.0]])
def test_non_numeric_weights_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match=r"HealthPolicy\.weight"):
        HealthPolicy(weight=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0.0, -0.1, math.nan, math.inf, timedelta(0)])
def test_scales_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match=r"LatencyPolicy\.latency_scale"):
        LatencyPolicy(latency_scale=bad)  # type: ignore[arg-type]
    if not isinstance(bad, timedelta):
        with pytest.raises(ValueError, match=r"CostPolicy\.cost_scale"):
            CostPolicy(cost_scale=bad)  # type: ignore[arg-type]


def test_latency_scale_accepts_timedelta() -> None:
    assert LatencyPolicy(latency_scale=timedelta(milliseconds=100)).latency_scale == 0.1


def test_locality_origin_must_be_a_region_id() -> None:
    assert LocalityPolicy(origin="eu-west-1").origin == "eu-west-1"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"LocalityPolicy\.origin"):
        LocalityPolicy(origin="")  # type: ignore[arg-type]


def test_base_policy_is_abstract() -> None:
    with pytest.raises(TypeError):
        Policy(weight=1.0)
    with pytest.raises(TypeError, match="expected a Policy"):
        CompositePolicy().with_policy("health")  # type: ignore[arg-type]


def test_zero_total_weight_is_rejected() -> None:
    empty = CompositePolicy()
    with pytest.raises(ValueError, match="at least one policy with weight > 0"):
        empty.weights()
    zeros = CompositePolicy([HealthPolicy(weight=0.0), LatencyPolicy(weight=0.0)])
    with pytest.raises(ValueError, match=r"health=0\.0, latency=0\.0"):
        zeros.validate()


def test_privacy_weight_zero_still_scores_other_components() -> None:
    composite = CompositePolicy([HealthPolicy(), PrivacyPolicy(weight=0.0)])
    assert composite.weights().tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_scales_and_origin_come_from_policies_or_defaults() -> None:
    default = CompositePolicy([HealthPolicy()])
    assert (default.latency_scale, default.cost_scale, default.origin) == (0.25, 1.0, None)
    custom = CompositePolicy(
        [LatencyPolicy(latency_scale=0.5), CostPolicy(cost_scale=2.0), LocalityPolicy(origin="x")]  # type: ignore[arg-type]
    )
    assert (custom.latency_scale, custom.cost_scale, custom.origin) == (0.5, 2.0, "x")


def test_mapping_round_trip_keeps_order_and_values() -> None:
    config = {
        "latency": {"weight": 1.5, "latency_scale": 0.1},
        "health": 2,
        "locality": {"weight": 1.0, "origin": "eu-west-1"},
        "gpu": {"weight": 0.5},
    }
    composite = CompositePolicy.from_mapping(config)
    assert [p.name for p in composite.policies] == ["latency", "health", "locality", "gpu"]
    assert composite.get("health") == HealthPolicy(weight=2.0)
    again = CompositePolicy.from_mapping(composite.to_mapping())
    assert again == composite
    assert (
        CompositePolicy.from_mapping(CompositePolicy.enterprise_default().to_mapping())
        == CompositePolicy.enterprise_default()
    )


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"helth": 2.0}, ValueError, "unknown policy 'helth'"),
        ({"latency": {"wieght": 1.0}}, ValueError, r"policies\.latency: unknown field 'wieght'"),
        (
            {"latency": {"weight": math.nan}},
            ValueError,
            r"policies\.latency: LatencyPolicy\.weight",
        ),
        ({"cost": -1}, ValueError, r"policies\.cost: CostPolicy\.weight"),
        ({"health": math.inf}, ValueError, r"policies\.health: HealthPolicy\.weight"),
        ({"latency": {"latency_scale": 0}}, ValueError, "latency_scale"),
        ({"health": "heavy"}, TypeError, r"policies\.health"),
        ({"health": 0.0}, ValueError, "at least one policy with weight > 0"),
        (["health"], TypeError, "expected a mapping"),
    ],
)
def test_bad_configuration_is_rejected_naming_the_field(
    config: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CompositePolicy.from_mapping(config)  # type: ignore[arg-type]


def test_composites_compare_and_hash_by_policies() -> None:
    a = CompositePolicy.enterprise_default()
    b = CompositePolicy.enterprise_default()
    assert a == b and hash(a) == hash(b)
    assert a != a.with_policy(GpuPolicy(weight=0.5))
    assert len(a) == 5 and list(a) == list(a.policies)
