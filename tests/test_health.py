"""Health checker: states, percentiles, heartbeats — on both latency-table implementations."""

from __future__ import annotations

import math
import types
from datetime import timedelta

import numpy as np
import pytest

from fedgate.clock import ManualClock
from fedgate.federation.health import (
    HealthChecker,
    HealthConfig,
    HealthState,
    HealthTransition,
)
from fedgate.types import NodeId

A = NodeId("node-a")
B = NodeId("node-b")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def make(core: types.SimpleNamespace, clock: ManualClock):  # type: ignore[no-untyped-def]
    def build(**config: object) -> HealthChecker:
        return HealthChecker(HealthConfig(**config), clock=clock, table_factory=core.LatencyTable)  # type: ignore[arg-type]

    return build


@pytest.fixture
def health(make) -> HealthChecker:  # type: ignore[no-untyped-def]
    return make()


def test_uses_the_requested_core(core: types.SimpleNamespace, health: HealthChecker) -> None:
    assert type(health.latency_table) is core.LatencyTable


# ---------------------------------------------------------------- config (R15)


def test_config_defaults_are_the_seed_values() -> None:
    config = HealthConfig()
    assert (config.failure_threshold, config.recovery_threshold, config.degraded_latency) == (
        3,
        2,
        1.0,
    )
    assert (config.window, config.heartbeat_interval, config.heartbeat_liveness) == (1024, 1.0, 3)
    assert config.liveness_timeout == 3.0


def test_config_accepts_timedelta() -> None:
    config = HealthConfig(
        degraded_latency=timedelta(milliseconds=500), heartbeat_interval=timedelta(seconds=2)
    )
    assert config.degraded_latency == 0.5 and config.heartbeat_interval == 2.0


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("degraded_latency", 0.0, ValueError),
        ("degraded_latency", -1.0, ValueError),
        ("degraded_latency", math.nan, ValueError),
        ("degraded_latency", math.inf, ValueError),
        ("heartbeat_interval", 0, ValueError),
        ("heartbeat_interval", timedelta(0), ValueError),
        ("heartbeat_interval", "1s", TypeError),
        ("failure_threshold", 0, ValueError),
        ("recovery_threshold", -1, ValueError),
        ("heartbeat_liveness", 1.5, TypeError),
        ("window", 0, ValueError),
        ("window", True, TypeError),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match=rf"HealthConfig\.{field}"):
        HealthConfig(**{field: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------- states


def test_unknown_until_the_first_report(health: HealthChecker) -> None:
    health.register_node(A)
    assert health.state(A) is HealthState.UNKNOWN
    status = health.status(A)
    assert status.latency_p50 is None and status.samples == 0 and status.last_check is None
    health.report_success(A, 0.045)
    assert health.state(A) is HealthState.HEALTHY


def test_three_reports_of_45ms_give_p50_of_45ms(health: HealthChecker) -> None:
    health.register_node(A)
    for _ in range(3):
        health.report_success(A, timedelta(milliseconds=45))
    status = health.status(A)
    assert status.latency_p50 == pytest.approx(0.045, abs=1e-12)
    assert status.latency_p95 == pytest.approx(0.045, abs=1e-12)
    assert status.latency_p99 == pytest.approx(0.045, abs=1e-12)
    assert status.samples == 3 and status.consecutive_successes == 3


def test_percentiles_are_real_percentiles_over_the_window(make) -> None:  # type: ignore[no-untyped-def]
    health = make(window=100)
    samples = np.random.default_rng(7).lognormal(np.log(0.05), 0.5, 250)
    for x in samples:
        health.report_success(A, float(x))
    status = health.status(A)
    recent = samples[-100:]
    assert status.samples == 100
    assert status.latency_p50 == pytest.approx(np.percentile(recent, 50), rel=1e-12)
    assert status.latency_p95 == pytest.approx(np.percentile(recent, 95), rel=1e-12)
    assert status.latency_p99 == pytest.approx(np.percentile(recent, 99), rel=1e-12)


def test_failures_degrade_then_make_unhealthy(health: HealthChecker) -> None:
    health.report_success(A, 0.01)
    health.report_failure(A)
    assert health.state(A) is HealthState.DEGRADED
    health.report_failure(A)
    assert health.state(A) is HealthState.DEGRADED
    health.report_failure(A)
    assert health.state(A) is HealthState.UNHEALTHY
    assert health.status(A).consecutive_failures == 3


def test_recovery_needs_consecutive_fast_successes(health: HealthChecker) -> None:
    for _ in range(3):
        health.report_failure(A)
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.UNHEALTHY
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.HEALTHY
    assert health.status(A).consecutive_failures == 0


def test_a_slow_success_degrades_and_breaks_the_streak(health: HealthChecker) -> None:
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.HEALTHY
    health.report_success(A, 1.5)
    assert health.state(A) is HealthState.DEGRADED
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.DEGRADED
    health.report_success(A, 2.0)
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.DEGRADED
    health.report_success(A, 1.0)  # exactly the threshold is not slower than it
    assert health.state(A) is HealthState.HEALTHY


def test_a_failure_between_successes_resets_the_streak(health: HealthChecker) -> None:
    health.report_failure(A)
    health.report_success(A, 0.01)
    health.report_failure(A)
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.DEGRADED
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.HEALTHY


@pytest.mark.parametrize("bad", [math.nan, -0.001, math.inf])
def test_bad_latency_is_rejected_and_not_recorded(health: HealthChecker, bad: float) -> None:
    health.report_success(A, 0.01)
    with pytest.raises(ValueError, match="latency: expected finite seconds >= 0"):
        health.report_success(A, bad)
    assert health.status(A).samples == 1


def test_unregistered_nodes_register_on_first_report(health: HealthChecker) -> None:
    health.report_failure(B)
    assert B in health and health.state(B) is HealthState.DEGRADED
    with pytest.raises(KeyError, match="node-x"):
        health.status(NodeId("node-x"))


def test_codes_and_versions_follow_changes(health: HealthChecker) -> None:
    a = health.register_node(A)
    b = health.register_node(B)
    v0, lv0 = health.version, health.latency_version
    health.report_success(A, 0.01)
    assert health.codes.tolist() == [HealthState.HEALTHY.value, HealthState.UNKNOWN.value]
    assert health.version == v0 + 1 and health.latency_version == lv0 + 1
    health.report_success(A, 0.01)  # no state change
    assert health.version == v0 + 1
    assert health.latency_seq[a] == 2 and health.latency_seq[b] == 0


def test_listeners_see_transitions_with_cause(health: HealthChecker, clock: ManualClock) -> None:
    heard: list[HealthTransition] = []
    health.subscribe(heard.append)
    health.report_success(A, 0.01)
    clock.advance(1)
    health.report_failure(A)
    assert heard == [
        HealthTransition(A, HealthState.UNKNOWN, HealthState.HEALTHY, 1000.0, "report"),
        HealthTransition(A, HealthState.HEALTHY, HealthState.DEGRADED, 1001.0, "report"),
    ]


def test_deregister_resets_history(health: HealthChecker) -> None:
    for _ in range(3):
        health.report_failure(A)
    assert health.deregister_node(A)
    status = health.status(A)
    assert status.state is HealthState.UNKNOWN and status.samples == 0
    assert status.consecutive_failures == 0
    assert not health.deregister_node(B)


# ---------------------------------------------------------------- heartbeats


def test_missed_heartbeats_make_a_node_unhealthy_at_once(
    health: HealthChecker, clock: ManualClock
) -> None:
    heard: list[HealthTransition] = []
    health.subscribe(heard.append)
    for _ in range(2):
        health.report_success(A, 0.01)
    health.heartbeat(A)
    clock.advance(3.0)  # exactly interval x liveness: not older than it yet
    assert health.expire() == []
    assert health.state(A) is HealthState.HEALTHY
    clock.advance(0.001)
    assert health.state(A) is HealthState.UNHEALTHY  # reads commit the expiry
    assert not health.is_alive(A)
    assert health.expire() == []  # declared once
    assert heard[-1] == HealthTransition(
        A, HealthState.HEALTHY, HealthState.UNHEALTHY, 1003.0, "heartbeat_missed"
    )
    # Reports do not revive a dead node; a heartbeat does, to its reported state.
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.UNHEALTHY
    assert health.status(A).reported_state is HealthState.HEALTHY
    health.heartbeat(A)
    assert health.state(A) is HealthState.HEALTHY
    assert heard[-1].cause == "heartbeat"


def test_expire_returns_newly_dead_nodes(health: HealthChecker, clock: ManualClock) -> None:
    health.heartbeat(A)
    clock.advance(1.0)
    health.heartbeat(B)
    clock.advance(2.5)
    assert health.expire() == [A]
    clock.advance(1.0)
    assert health.expire() == [B]
    assert health.next_expiry == math.inf


def test_untracked_nodes_never_expire(health: HealthChecker, clock: ManualClock) -> None:
    health.report_success(A, 0.01)
    clock.advance(3600)
    assert health.expire() == [] and health.state(A) is HealthState.HEALTHY
    assert health.status(A).last_heartbeat is None and health.status(A).alive


def test_expect_heartbeats_starts_the_liveness_clock_at_registration(
    make,
    clock: ManualClock,  # type: ignore[no-untyped-def]
) -> None:
    health = make(heartbeat_interval=0.5, heartbeat_liveness=2)
    health.register_node(A, expect_heartbeats=True)
    clock.advance(1.0)
    assert health.expire() == []
    clock.advance(0.01)
    assert health.expire() == [A]
    assert health.state(A) is HealthState.UNHEALTHY


def test_all_statuses_lists_every_node(health: HealthChecker) -> None:
    health.register_node(A)
    health.report_success(B, 0.2)
    statuses = health.all_statuses()
    assert [s.node_id for s in statuses] == [A, B]
    assert [s.state for s in statuses] == [HealthState.UNKNOWN, HealthState.HEALTHY]
    assert health.counts()[HealthState.HEALTHY] == 1


def test_r23_report_driven_unhealthy_has_no_timer_and_is_not_liveness(
    health: HealthChecker, clock: ManualClock
) -> None:
    # SPEC §2 Health: failures are the breaker's. UNHEALTHY by reports is the
    # seed's state (scored 0 by the health policy), not an exclusion with a
    # cooldown of its own: time alone changes nothing, and the node is alive.
    version = health.version
    for _ in range(3):
        health.report_failure(A)
    assert health.state(A) is HealthState.UNHEALTHY
    assert health.is_alive(A) and not health.dead.any()
    assert health.version > version
    clock.advance(3600)
    assert health.expire() == []
    assert health.state(A) is HealthState.UNHEALTHY
    health.report_success(A, 0.01)
    health.report_success(A, 0.01)
    assert health.state(A) is HealthState.HEALTHY


def test_r23_liveness_is_the_dead_column_and_moves_the_version(
    make, clock: ManualClock  # type: ignore[no-untyped-def]
) -> None:
    health = make(heartbeat_interval=1.0, heartbeat_liveness=2)
    health.register_node(A, expect_heartbeats=True)
    health.register_node(B, expect_heartbeats=True)
    for _ in range(3):
        health.report_failure(A)  # UNHEALTHY by reports, still alive
    assert health.dead.tolist() == [False, False]
    clock.advance(2.5)
    version = health.version
    assert health.expire() == [A, B]
    # A was UNHEALTHY already: no state change, but its liveness did change,
    # and a router keyed on the version must see it.
    assert health.dead.tolist() == [True, True] and health.version > version
    assert health.state(A) is HealthState.UNHEALTHY
    version = health.version
    health.heartbeat(A)
    assert health.dead.tolist() == [False, True] and health.version > version
    assert health.state(A) is HealthState.UNHEALTHY  # its reports say so; alive again
    version = health.version
    health.deregister_node(B)
    assert health.dead.tolist() == [False, False] and health.version > version
