"""Circuit breaker: R1-R4 with a manual clock, transition events — on both table implementations."""

from __future__ import annotations

import math
import threading
import types
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fedgate.clock import ManualClock
from fedgate.federation.breaker import (
    Admission,
    BreakerConfig,
    BreakerTransition,
    CircuitBreaker,
    CircuitState,
)
from fedgate.types import NodeId

N = NodeId("problem-node")
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
MS = 0.001


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def make(core: types.SimpleNamespace, clock: ManualClock):  # type: ignore[no-untyped-def]
    def build(**config: object) -> CircuitBreaker:
        return CircuitBreaker(BreakerConfig(**config), clock=clock, table_factory=core.BreakerTable)  # type: ignore[arg-type]

    return build


@pytest.fixture
def events() -> list[BreakerTransition]:
    return []


@pytest.fixture
def cb(make, events: list[BreakerTransition]) -> CircuitBreaker:  # type: ignore[no-untyped-def]
    breaker = make()
    breaker.subscribe(events.append)
    return breaker


def test_uses_the_requested_core(core: types.SimpleNamespace, cb: CircuitBreaker) -> None:
    assert type(cb.table) is core.BreakerTable


# ---------------------------------------------------------------- config (R15)


@pytest.mark.parametrize(
    ("field_", "value", "error"),
    [
        ("failure_threshold", 0, ValueError),
        ("failure_threshold", 2.0, TypeError),
        ("open_timeout", 0.0, ValueError),
        ("open_timeout", -1, ValueError),
        ("open_timeout", math.nan, ValueError),
        ("open_timeout", math.inf, ValueError),
        ("probe_timeout", timedelta(0), ValueError),
        ("half_open_max_probes", 0, ValueError),
        ("success_threshold", True, TypeError),
        ("max_open_timeout", "5m", TypeError),
    ],
)
def test_config_rejects_bad_values_naming_the_field(
    field_: str, value: object, error: type
) -> None:
    with pytest.raises(error, match=rf"BreakerConfig\.{field_}"):
        BreakerConfig(**{field_: value})  # type: ignore[arg-type]


def test_config_cap_must_not_be_below_the_timeout() -> None:
    with pytest.raises(ValueError, match="max_open_timeout"):
        BreakerConfig(open_timeout=60, max_open_timeout=30)
    assert BreakerConfig(open_timeout=timedelta(seconds=5)).open_timeout == 5.0


# ---------------------------------------------------------------- R1


def test_r1_success_resets_the_failure_count(cb: CircuitBreaker) -> None:
    for _ in range(4):
        cb.record_failure(N)
    cb.record_success(N)
    for _ in range(4):
        cb.record_failure(N)
    assert cb.state(N) is CLOSED
    assert cb.status(N).failures == 4


def test_r1_five_failures_in_a_row_open_on_the_fifth(
    cb: CircuitBreaker, events: list[BreakerTransition]
) -> None:
    for i in range(5):
        assert cb.state(N) is CLOSED, f"opened after {i} failures"
        cb.record_failure(N)
    assert cb.state(N) is OPEN and cb.is_open(N)
    assert events == [BreakerTransition(N, CLOSED, OPEN, 1000.0)]
    assert cb.trips == 1


def test_r1_open_rejects_locally(cb: CircuitBreaker, clock: ManualClock) -> None:
    for _ in range(5):
        cb.record_failure(N)
    admitted = 0
    for _ in range(1000):
        clock.advance(0.01)  # 10 s in all, inside the 30 s open timeout
        admitted += cb.allow(N)
    assert admitted == 0
    assert cb.state(N) is OPEN


# ---------------------------------------------------------------- R2


def test_r2_open_then_half_open_exactly_at_the_timeout(
    cb: CircuitBreaker, clock: ManualClock, events: list[BreakerTransition]
) -> None:
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(30.0 - MS)
    assert cb.state(N) is OPEN
    clock.advance(MS)
    assert cb.state(N) is HALF_OPEN  # by the clock alone, no request needed
    assert events[-1] == BreakerTransition(N, OPEN, HALF_OPEN, pytest.approx(1030.0))


def test_r2_probes_admitted_up_to_the_limit(make, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    cb = make(failure_threshold=2, open_timeout=10, half_open_max_probes=3, success_threshold=3)
    cb.record_failure(N)
    cb.record_failure(N)
    clock.advance(10)
    assert [cb.admit(N) for _ in range(4)] == [Admission.PROBE] * 3 + [Admission.REJECT]
    assert cb.status(N).probes == 3
    cb.record_success(N)
    assert cb.state(N) is HALF_OPEN
    assert cb.admit(N) is Admission.PROBE  # a slot came free
    cb.record_success(N)
    cb.record_success(N)
    assert cb.state(N) is CLOSED
    assert cb.admit(N) is Admission.ADMIT


def test_r2_probe_success_closes(cb: CircuitBreaker, clock: ManualClock) -> None:
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(30)
    assert cb.admit(N).probe
    cb.record_success(N)
    assert cb.state(N) is CLOSED
    assert cb.status(N).failures == 0


def test_r2_probe_failure_reopens_with_a_longer_capped_timeout(
    make,
    clock: ManualClock,
    events: list[BreakerTransition],  # type: ignore[no-untyped-def]
) -> None:
    cb = make(open_timeout=30, max_open_timeout=100)
    cb.subscribe(events.append)
    for _ in range(5):
        cb.record_failure(N)
    timeouts = []
    for _ in range(4):
        status = cb.status(N)
        timeouts.append(status.open_timeout)
        clock.advance(status.open_timeout - MS)
        assert cb.state(N) is OPEN
        clock.advance(MS)
        assert cb.admit(N) is Admission.PROBE
        cb.record_failure(N)
        assert cb.state(N) is OPEN
    assert timeouts == [30.0, 60.0, 100.0, 100.0]
    kinds = [(e.old, e.new) for e in events]
    assert kinds == [(CLOSED, OPEN)] + [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)] * 4
    assert cb.trips == 5


# ---------------------------------------------------------------- R3


def test_r3_a_stuck_probe_fails_by_its_timeout(
    make,
    clock: ManualClock,
    events: list[BreakerTransition],  # type: ignore[no-untyped-def]
) -> None:
    cb = make(open_timeout=30, probe_timeout=10)
    cb.subscribe(events.append)
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(30)
    assert cb.admit(N) is Admission.PROBE  # ... and the probe never answers
    clock.advance(10 - MS)
    assert cb.state(N) is HALF_OPEN
    assert not cb.allow(N)  # the probe slot is still taken
    clock.advance(MS)
    assert cb.state(N) is OPEN  # never HALF_OPEN longer than the probe timeout
    assert events[-1] == BreakerTransition(N, HALF_OPEN, OPEN, pytest.approx(1040.0))
    assert cb.status(N).open_timeout == 60.0
    clock.advance(60)
    assert cb.state(N) is HALF_OPEN


def test_r3_poll_announces_time_driven_transitions_nobody_asked_about(
    make,
    clock: ManualClock,
    events: list[BreakerTransition],  # type: ignore[no-untyped-def]
) -> None:
    cb = make(open_timeout=30, probe_timeout=10)
    cb.subscribe(events.append)
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(30)
    assert cb.admit(N).probe
    # Nobody looks while the probe times out (t=1040) and the reopened breaker's
    # 60 s run out (t=1100): poll still reports both, at the times they happened.
    clock.advance(100)
    emitted = cb.poll()
    assert emitted == [
        BreakerTransition(N, HALF_OPEN, OPEN, pytest.approx(1040.0)),
        BreakerTransition(N, OPEN, HALF_OPEN, pytest.approx(1100.0)),
    ]
    assert cb.poll() == []


def test_next_deadline_and_codes_track_the_table(cb: CircuitBreaker, clock: ManualClock) -> None:
    other = NodeId("other")
    cb.record_success(other)
    assert cb.next_deadline == math.inf
    for _ in range(5):
        cb.record_failure(N)
    s = cb.slot(N)
    assert cb.next_deadline == pytest.approx(1030.0)
    assert cb.codes[s] == OPEN.value and cb.routable_codes[s] == OPEN.value
    clock.advance(30)
    cb.poll()
    assert cb.codes[s] == HALF_OPEN.value and cb.routable_codes[s] == HALF_OPEN.value
    cb.admit(N)
    # HALF_OPEN with every probe slot taken is not routable.
    assert cb.codes[s] == HALF_OPEN.value and cb.routable_codes[s] == OPEN.value


def test_unknown_nodes_read_closed_without_registering(cb: CircuitBreaker) -> None:
    ghost = NodeId("ghost")
    assert cb.state(ghost) is CLOSED and not cb.is_open(ghost)
    assert cb.status(ghost).state is CLOSED
    assert ghost not in cb
    assert cb.allow(ghost) and ghost in cb


def test_status_and_all_states(cb: CircuitBreaker, clock: ManualClock) -> None:
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(12)
    status = cb.status(N)
    assert status.state is OPEN and status.failures == 5
    assert status.opened_at == pytest.approx(1000.0)
    assert status.reset_at == pytest.approx(1030.0)
    assert status.time_to_reset == pytest.approx(18.0)
    assert status.last_failure == 1000.0 and status.trips == 1
    cb.record_success(NodeId("fine"))
    assert cb.all_states() == {N: OPEN, NodeId("fine"): CLOSED}
    assert [s.node_id for s in cb.all_statuses()] == [N, NodeId("fine")]


def test_reset_closes_and_is_announced(cb: CircuitBreaker, events: list[BreakerTransition]) -> None:
    for _ in range(5):
        cb.record_failure(N)
    cb.reset(N)
    assert cb.state(N) is CLOSED
    assert events[-1].old is OPEN and events[-1].new is CLOSED


def test_late_answers_while_open_do_not_count(cb: CircuitBreaker, clock: ManualClock) -> None:
    for _ in range(5):
        cb.record_failure(N)
    cb.record_success(N)  # an answer to a call admitted before the trip
    cb.record_failure(N)
    assert cb.state(N) is OPEN
    assert cb.status(N).reset_at == pytest.approx(1030.0)


def test_concurrent_failures_trip_exactly_once(make) -> None:  # type: ignore[no-untyped-def]
    cb = make(failure_threshold=50)
    heard: list[BreakerTransition] = []
    cb.subscribe(heard.append)
    barrier = threading.Barrier(4)

    def hammer() -> None:
        barrier.wait()
        for _ in range(100):
            cb.record_failure(N)
            cb.allow(N)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cb.state(N) is OPEN
    assert [(e.old, e.new) for e in heard] == [(CLOSED, OPEN)]


# ---------------------------------------------------------------- R22: the seed's pattern


def seed_pattern(cb: CircuitBreaker, clock: ManualClock, *, seconds: float, every: float,
                 latency: float = 0.0, node_fails: bool = True,
                 ) -> tuple[list[int], list[CircuitState]]:  # fmt: skip
    """The seed's loop: ``if not cb.is_open(node)``, call the node, report the outcome.

    One step every ``every`` seconds; each call's outcome is reported
    ``latency`` seconds after it was made (at the first step at or after
    that), before that step asks ``is_open``. Returns the milliseconds (from
    the start) at which the node was called, and the state read at each step.
    """
    start = clock()
    step, answer_in = round(every * 1000), round(latency * 1000)
    calls: list[int] = []
    pending: list[int] = []  # when each outstanding call answers
    seen: list[CircuitState] = []

    def answers_due(ms: int) -> None:
        while pending and pending[0] <= ms:
            pending.pop(0)
            if node_fails:
                cb.record_failure(N)
            else:
                cb.record_success(N)

    for k in range(round(seconds / every)):
        ms = k * step
        clock.now = start + ms / 1000
        answers_due(ms)
        seen.append(cb.state(N))
        if not cb.is_open(N):
            calls.append(ms)
            pending.append(ms + answer_in)
            answers_due(ms)  # latency 0: the outcome is reported at once
    return calls, seen


@pytest.mark.parametrize("probes", [1, 3])
@pytest.mark.parametrize("latency", [0.0, 0.5])
def test_r22_the_seed_pattern_makes_at_most_max_probes_calls_per_open_period(
    make,
    clock: ManualClock,
    events: list[BreakerTransition],  # type: ignore[no-untyped-def]
    probes: int,
    latency: float,
) -> None:
    # RELIABILITY R22: an always-failing node, one call per 100 ms for 60 s of
    # fake time, open_timeout=10. Before is_open admitted, 501 calls got through.
    cb = make(open_timeout=10, half_open_max_probes=probes)
    cb.subscribe(events.append)
    start = clock()
    called, seen = seed_pattern(cb, clock, seconds=60, every=0.1, latency=latency)
    opened = [round((e.at - start) * 1000) for e in events if e.new is OPEN]
    for begin, end in zip(opened, [*opened[1:], math.inf], strict=True):
        period = [t for t in called if begin < t <= end]  # the probes that end it included
        assert len(period) <= probes, (begin, period)
    # Never stuck HALF_OPEN: each probe's failure reopened it, at a longer timeout.
    assert [cb.status(N).open_timeout, cb.trips, cb.state(N)] == [40.0, 3, OPEN]
    if latency == 0.0:
        # 5 calls trip it at t=0.4 s; then open periods of 10, 20, 40 s, each
        # ended by one failed probe: [0.4, 10.4), [10.4, 30.4), [30.4, 70.4).
        assert opened == [400, 10_400, 30_400]
        assert called == [0, 100, 200, 300, 400, 10_400, 30_400]
        assert seen.count(HALF_OPEN) == 2
    else:
        # Calls overlap: 9 go out before the 5th failure comes back at 0.9 s;
        # each HALF_OPEN period then lets its probe slots out, no more, until
        # the first probe's failure reopens it 0.5 s later.
        assert opened == [900, 11_400, 31_900]
        assert called[:9] == list(range(0, 900, 100))
        assert called[9:] == [10_900, 11_000, 11_100][:probes] + [31_400, 31_500, 31_600][:probes]
        assert seen.count(HALF_OPEN) == 10


def test_r22_is_open_takes_probe_slots_and_state_does_not(make, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    cb = make(open_timeout=10, half_open_max_probes=2)
    assert not cb.is_open(N) and N not in cb  # an unknown node: not registered by asking
    for _ in range(5):
        cb.record_failure(N)
    assert cb.is_open(N)
    clock.advance(10)
    for _ in range(5):
        assert cb.state(N) is HALF_OPEN  # the query admits nothing
    assert cb.status(N).probes == 0
    assert not cb.is_open(N) and not cb.is_open(N)  # two probes admitted ...
    assert cb.status(N).probes == 2
    assert cb.is_open(N)  # ... and the third caller is told to stay away
    assert cb.state(N) is HALF_OPEN
    cb.record_success(N)
    assert cb.state(N) is CLOSED and not cb.is_open(N)


def test_r22_a_recovered_node_closes_through_the_seed_pattern(make, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    cb = make(open_timeout=10)
    for _ in range(5):
        cb.record_failure(N)
    clock.advance(10)
    calls, _ = seed_pattern(cb, clock, seconds=1, every=0.1, node_fails=False)
    assert calls == list(range(0, 1000, 100)) and cb.state(N) is CLOSED


def test_r22_a_failure_after_the_open_timeout_reopens_at_the_next_level(
    make,
    clock: ManualClock,
    events: list[BreakerTransition],  # type: ignore[no-untyped-def]
) -> None:
    cb = make(open_timeout=10, max_open_timeout=300)
    for _ in range(5):
        cb.record_failure(N)
    cb.subscribe(events.append)
    clock.advance(15)  # HALF_OPEN in effect; nobody asks, nobody probes
    cb.record_failure(N)  # e.g. a call that was admitted long ago answers now
    assert cb.state(N) is OPEN
    status = cb.status(N)
    assert (status.open_timeout, status.reset_at) == (20.0, pytest.approx(1035.0))
    assert [(e.old, e.new, e.at) for e in events] == [
        (OPEN, HALF_OPEN, pytest.approx(1010.0)),
        (HALF_OPEN, OPEN, pytest.approx(1015.0)),
    ]
    # Before the timeout a failure is a late answer and changes nothing.
    clock.advance(19)
    cb.record_failure(N)
    assert cb.status(N).reset_at == pytest.approx(1035.0)
    clock.advance(1)
    cb.record_failure(N)
    assert cb.status(N).open_timeout == 40.0 and cb.trips == 3


# ---------------------------------------------------------------- R4: model-based


@dataclass
class RefBreaker:
    """An independent reference model of the breaker, in integer milliseconds."""

    threshold: int
    base: int
    cap: int
    max_probes: int
    successes_needed: int
    probe_ms: int
    state: CircuitState = CLOSED
    failures: int = 0
    probes: int = 0
    successes: int = 0
    level: int = 0
    deadline: int = 0
    trace: list[str] = field(default_factory=list)

    def timeout(self, level: int) -> int:
        return min(self.base * 2**level, self.cap)

    def _open(self, at: int, level: int) -> None:
        self.state, self.level, self.deadline = (
            OPEN,
            min(level, 15),
            at + self.timeout(min(level, 15)),
        )
        self.probes = self.successes = 0

    def settle(self, t: int) -> None:
        # A probe that outlived its timeout failed at its deadline.
        if self.state is HALF_OPEN and self.probes > 0 and t >= self.deadline:
            self.failures += 1
            self._open(self.deadline, self.level + 1)

    def effective(self, t: int) -> CircuitState:
        self.settle(t)
        if self.state is OPEN and t >= self.deadline:
            return HALF_OPEN
        return self.state

    def allow(self, t: int) -> Admission:
        self.settle(t)
        if self.state is CLOSED:
            return Admission.ADMIT
        if self.state is OPEN:
            if t < self.deadline:
                return Admission.REJECT
            self.state, self.probes, self.successes = HALF_OPEN, 1, 0
            self.deadline = t + self.probe_ms
            return Admission.PROBE
        if self.probes >= self.max_probes:
            return Admission.REJECT
        if self.probes == 0:
            self.deadline = t + self.probe_ms
        self.probes += 1
        return Admission.PROBE

    def success(self, t: int) -> None:
        self.settle(t)
        if self.state is CLOSED:
            self.failures = 0
        elif self.state is HALF_OPEN:
            self.successes += 1
            if self.successes >= self.successes_needed:
                self.state, self.failures, self.probes, self.successes, self.level = (
                    CLOSED,
                    0,
                    0,
                    0,
                    0,
                )
            else:
                self.failures = 0
                self.probes = max(0, self.probes - 1)

    def failure(self, t: int) -> None:
        self.settle(t)
        if self.state is CLOSED:
            self.failures += 1
            if self.failures >= self.threshold:
                self._open(t, 0)
        elif self.state is HALF_OPEN or t >= self.deadline:
            # HALF_OPEN stored, or in effect (OPEN past its deadline, nobody
            # asked yet): the failure reopens one level up (SPEC §2, R22).
            self.failures += 1
            self._open(t, self.level + 1)


class BreakerMachine(RuleBasedStateMachine):
    """CircuitBreaker against RefBreaker over random operations and clock steps.

    ``table`` is the BreakerTable class under test (one run per implementation:
    sampling it per example left each with too few of the rare sequences).
    """

    table: type

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(1000.0)
        self.t = 0
        self.events: list[BreakerTransition] = []

    @initialize(
        threshold=st.integers(1, 4),
        base=st.integers(1, 50),
        extra=st.integers(0, 200),
        max_probes=st.integers(1, 3),
        successes=st.integers(1, 3),
        probe_ms=st.integers(1, 40),
    )
    def setup(self, threshold: int, base: int, extra: int, max_probes: int, successes: int,
              probe_ms: int) -> None:  # fmt: skip
        table = self.table
        config = BreakerConfig(
            failure_threshold=threshold,
            open_timeout=base * MS,
            max_open_timeout=(base + extra) * MS,
            half_open_max_probes=max_probes,
            success_threshold=successes,
            probe_timeout=probe_ms * MS,
        )
        self.cb = CircuitBreaker(config, clock=self.clock, table_factory=table)
        self.cb.subscribe(self.events.append)
        self.ref = RefBreaker(threshold, base, base + extra, max_probes, successes, probe_ms)

    def _now(self) -> None:
        self.clock.now = 1000.0 + self.t * MS

    @rule(ms=st.integers(0, 120))
    def advance(self, ms: int) -> None:
        self.t += ms
        self._now()

    @rule()
    def admit(self) -> None:
        got = self.cb.admit(N)
        want = self.ref.allow(self.t)
        assert got is want, (got, want)

    @rule(offset=st.sampled_from([0, -1, 1]))
    def to_deadline(self, offset: int) -> None:
        # Land on the next deadline, one millisecond before or after: random
        # steps of up to 120 ms hit the deadline's own millisecond only rarely.
        if self.ref.effective(self.t) is CLOSED or (
            self.ref.state is HALF_OPEN and self.ref.probes == 0
        ):
            return
        self.t = max(self.t, self.ref.deadline + offset)
        self._now()

    @rule(beyond=st.sampled_from([1, 0]))
    def admit_burst(self, beyond: int) -> None:
        # The probe limit, and one call past it.
        for _ in range(self.ref.max_probes + beyond):
            got = self.cb.admit(N)
            want = self.ref.allow(self.t)
            assert got is want, (got, want)

    @rule()
    def is_open(self) -> None:
        # The seed's gate admits exactly as admit() does.
        got = self.cb.is_open(N)
        want = self.ref.allow(self.t) is Admission.REJECT
        assert got is want, (got, want)

    @rule()
    def success(self) -> None:
        self.cb.record_success(N)
        self.ref.success(self.t)

    @rule()
    def failure(self) -> None:
        self.cb.record_failure(N)
        self.ref.failure(self.t)

    @rule()
    def poll(self) -> None:
        self.cb.poll()

    @invariant()
    def agrees_with_the_reference(self) -> None:
        if not hasattr(self, "cb"):
            return
        want = self.ref.effective(self.t)
        assert self.cb.state(N) is want
        status = self.cb.status(N)
        assert (status.failures, status.probes) == (min(self.ref.failures, 1023), self.ref.probes)
        if want is OPEN:
            assert not self.cb.allow(N) and self.ref.allow(self.t) is Admission.REJECT

    @invariant()
    def events_form_a_chain_ending_in_the_current_state(self) -> None:
        if not hasattr(self, "cb") or N not in self.cb:
            return
        current = self.cb.state(N)
        state = CLOSED
        last_at = -math.inf
        for event in self.events:
            assert event.old is state and event.new is not state
            assert event.at >= last_at - 1e-9
            state, last_at = event.new, event.at
        assert state is current


def test_r4_circuit_breaker_matches_the_reference_model(core: types.SimpleNamespace) -> None:
    machine = type("BreakerMachine", (BreakerMachine,), {"table": core.BreakerTable})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
