"""The circuit-breaker state table: R1-R4 at table level, validation, threads.

Every behavioural test runs on the compiled (C11 atomics) table and on its
pure-Python twin through the ``core`` fixture. Time is always passed in
explicitly (the table never reads a clock), so boundaries are asserted to
the millisecond without sleeping.
"""

from __future__ import annotations

import importlib
import math
import random
import threading
import types
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
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

from fedgate._core import _breaker_table_py

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
REJECT, ADMIT, PROBE = 0, 1, 2
NONE, TRIPPED, PROBING, RECOVERED, REOPENED, REOPENED_AND_PROBING = -1, 1, 5, 6, 7, 8
REOPENED_UNPROBED = 4

T0 = 1000.0


def module_of(core: types.SimpleNamespace) -> Any:
    return importlib.import_module(core.BreakerTable.__module__)


def trip(table: Any, slot: int, now: float) -> None:
    for _ in range(table.failure_threshold - 1):
        assert table.record_failure(slot, now) == NONE
    assert table.record_failure(slot, now) == TRIPPED


# ---------------------------------------------------------------- the module


def test_both_modules_export_the_same_constants(core: types.SimpleNamespace) -> None:
    mod = module_of(core)
    assert sorted(mod.__all__) == sorted(_breaker_table_py.__all__)
    for name in mod.__all__:
        if name.isupper():
            assert getattr(mod, name) == getattr(_breaker_table_py, name), name
    assert (mod.CLOSED, mod.OPEN, mod.HALF_OPEN) == (CLOSED, OPEN, HALF_OPEN)
    assert (mod.REJECT, mod.ADMIT, mod.PROBE) == (REJECT, ADMIT, PROBE)
    public = {name for name in dir(core.BreakerTable) if not name.startswith("_")}
    twin = {name for name in dir(_breaker_table_py.BreakerTable) if not name.startswith("_")}
    assert public == twin


def test_decode_transition(core: types.SimpleNamespace) -> None:
    decode = module_of(core).decode_transition
    assert decode(TRIPPED) == (CLOSED, OPEN)
    assert decode(PROBING) == (OPEN, HALF_OPEN)
    assert decode(RECOVERED) == (HALF_OPEN, CLOSED)
    assert decode(REOPENED) == (HALF_OPEN, OPEN)
    assert decode(REOPENED_AND_PROBING) == (HALF_OPEN, HALF_OPEN)
    assert decode(REOPENED_UNPROBED) == (OPEN, OPEN)
    assert module_of(core).REOPENED_UNPROBED == REOPENED_UNPROBED
    for bad in (NONE, 9, True, 1.0, "1"):
        with pytest.raises(ValueError, match=r"code: expected a transition code in \[0, 8\]"):
            decode(bad)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("failure_threshold", 0, ValueError),
        ("failure_threshold", 1024, ValueError),
        ("failure_threshold", -5, ValueError),
        ("failure_threshold", 2.0, TypeError),
        ("failure_threshold", True, TypeError),
        ("half_open_max_probes", 0, ValueError),
        ("half_open_max_probes", 64, ValueError),
        ("success_threshold", 0, ValueError),
        ("success_threshold", 64, ValueError),
        ("open_timeout", 0.0, ValueError),
        ("open_timeout", -1.0, ValueError),
        ("open_timeout", math.nan, ValueError),
        ("open_timeout", math.inf, ValueError),
        ("open_timeout", 0.0004, ValueError),
        ("open_timeout", "30", TypeError),
        ("max_open_timeout", 1e9, ValueError),
        ("probe_timeout", 0.0, ValueError),
        ("probe_timeout", -math.inf, ValueError),
        ("epoch", math.nan, ValueError),
        ("epoch", math.inf, ValueError),
        ("epoch", "0", TypeError),
        ("nodes", -1, ValueError),
        ("nodes", 1.5, TypeError),
    ],
)
def test_constructor_rejects_bad_values_naming_the_field(
    core: types.SimpleNamespace, field: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=rf"^{field}: expected .*got {value!r}"):
        core.BreakerTable(**{field: value})


def test_max_open_timeout_below_open_timeout_is_rejected(core: types.SimpleNamespace) -> None:
    with pytest.raises(ValueError, match=r"^max_open_timeout: expected >= open_timeout \(30.0\)"):
        core.BreakerTable(open_timeout=30.0, max_open_timeout=29.999)


def test_constructor_accepts_the_bit_width_limits_and_timedeltas(
    core: types.SimpleNamespace,
) -> None:
    table = core.BreakerTable(
        failure_threshold=1023,
        half_open_max_probes=63,
        success_threshold=63,
        open_timeout=timedelta(milliseconds=1),
        max_open_timeout=timedelta(days=1),
        probe_timeout=timedelta(seconds=2),
        epoch=-5,
        nodes=3,
    )
    assert len(table) == 3
    assert (table.failure_threshold, table.half_open_max_probes, table.success_threshold) == (
        1023,
        63,
        63,
    )
    assert (table.open_timeout, table.max_open_timeout, table.probe_timeout) == (
        0.001,
        86400.0,
        2.0,
    )
    assert table.epoch == -5.0
    assert "nodes=3" in repr(table)


def test_init_runs_once(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1)
    with pytest.raises(RuntimeError, match="may only run once"):
        table.__init__(failure_threshold=1)  # type: ignore[misc]
    assert table.failure_threshold == 5


def test_bad_slot_and_bad_now(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=2)
    for call in (
        lambda s: table.allow(s, T0),
        lambda s: table.admit(s, T0),
        lambda s: table.record_success(s, T0),
        lambda s: table.record_failure(s, T0),
        lambda s: table.state(s, T0),
        lambda s: table.snapshot(s, T0),
        table.reset,
        table.failures,
        table.probes,
        table.level,
        table.open_timeout_of,
        table.opened_at,
        table.reset_at,
        table.raw,
    ):
        for slot in (2, -1, 99):
            with pytest.raises(IndexError, match=rf"^slot: expected 0 <= slot < 2, got {slot}$"):
                call(slot)
    for now in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^now: expected a finite clock reading"):
            table.allow(0, now)
        with pytest.raises(ValueError, match=r"^now: expected a finite clock reading"):
            table.state(0, now)
    with pytest.raises(TypeError):
        table.allow(0, "1000")
    assert table.raw(0) == 0 and table.raw(1) == 0, "a rejected call must not write"


# ---------------------------------------------------------------- R1


def test_r1_consecutive_failures_trip_on_the_fifth(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1)
    now = T0
    for _ in range(4):
        assert table.record_failure(0, now) == NONE
    assert table.failures(0) == 4
    assert table.record_success(0, now) == NONE
    assert table.failures(0) == 0
    for _ in range(4):
        assert table.record_failure(0, now) == NONE
    assert table.state(0, now) == CLOSED and table.failures(0) == 4

    table.reset(0)
    for i in range(5):
        code = table.record_failure(0, now + i)
        assert code == (TRIPPED if i == 4 else NONE)
        assert table.state(0, now + i) == (OPEN if i == 4 else CLOSED)
    opened = now + 4
    rejections = sum(table.allow(0, opened + k * 0.01) == REJECT for k in range(1000))
    assert rejections == 1000
    assert table.state(0, opened + 9.99) == OPEN
    assert table.opened_at(0) == opened and table.reset_at(0) == opened + 30.0


# ---------------------------------------------------------------- R2


def test_r2_open_becomes_half_open_by_time_alone(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, open_timeout=30.0)
    trip(table, 0, T0)
    word = table.raw(0)
    assert table.state(0, T0 + 30.0 - 0.001) == OPEN
    assert table.state(0, T0 + 30.0) == HALF_OPEN
    assert table.raw(0) == word, "reading must not write"
    out = np.full(1, -1, dtype=np.int8)
    table.states_into(T0 + 30.0 - 0.001, out)
    assert out[0] == OPEN
    table.states_into(T0 + 30.0, out)
    assert out[0] == HALF_OPEN
    assert table.snapshot(0, T0 + 30.0) == (
        HALF_OPEN,
        5,
        0,
        pytest.approx(math.nan, nan_ok=True),
        30.0,
        pytest.approx(math.nan, nan_ok=True),
    )
    assert table.allow(0, T0 + 30.0 - 0.001) == REJECT


def test_r2_probes_admitted_up_to_the_limit_and_success_closes(
    core: types.SimpleNamespace,
) -> None:
    table = core.BreakerTable(nodes=1, half_open_max_probes=3)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.admit(0, t) == (PROBE, PROBING)
    assert table.admit(0, t) == (PROBE, NONE)
    assert table.admit(0, t + 1) == (PROBE, NONE)
    assert table.probes(0) == 3
    for _ in range(5):
        assert table.admit(0, t + 2) == (REJECT, NONE)
    assert table.record_success(0, t + 3) == RECOVERED
    assert table.snapshot(0, t + 3)[:3] == (CLOSED, 0, 0)
    assert (table.level(0), table.failures(0), table.probes(0)) == (0, 0, 0)
    assert math.isnan(table.reset_at(0)) and math.isnan(table.opened_at(0))
    assert table.allow(0, t + 3) == ADMIT


def test_release_gives_a_probe_slot_back_without_a_verdict(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, half_open_max_probes=1, probe_timeout=10.0)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.admit(0, t) == (PROBE, PROBING)
    assert table.admit(0, t) == (REJECT, NONE)
    deadline = table.reset_at(0)
    assert table.release(0, t + 1) == NONE
    # Still half-open, nothing counted either way, and the slot is free again.
    assert table.snapshot(0, t + 1)[:3] == (HALF_OPEN, 5, 0)
    assert table.level(0) == 0 and table.reset_at(0) == deadline
    assert table.admit(0, t + 2) == (PROBE, NONE)
    # Releasing anything else changes nothing.
    closed = core.BreakerTable(nodes=1)
    assert closed.release(0, t) == NONE and closed.state(0, t) == CLOSED
    tripped = core.BreakerTable(nodes=1)
    trip(tripped, 0, T0)
    assert tripped.release(0, T0 + 1) == NONE and tripped.state(0, T0 + 1) == OPEN


def test_r2_success_threshold_counts_probe_successes(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, half_open_max_probes=1, success_threshold=3)
    trip(table, 0, T0)
    t = T0 + 30.0
    for k in range(2):
        assert table.allow(0, t + k) == PROBE
        assert table.allow(0, t + k) == REJECT
        assert table.record_success(0, t + k) == NONE
        assert table.state(0, t + k) == HALF_OPEN and table.successes(0) == k + 1
    assert table.allow(0, t + 2) == PROBE
    assert table.record_success(0, t + 2) == RECOVERED


def test_r2_probe_failure_reopens_with_a_doubled_capped_timeout(
    core: types.SimpleNamespace,
) -> None:
    table = core.BreakerTable(nodes=1, open_timeout=30.0, max_open_timeout=100.0)
    trip(table, 0, T0)
    assert (table.level(0), table.open_timeout_of(0)) == (0, 30.0)
    t = T0
    expected = [60.0, 100.0, 100.0, 100.0]
    timeout = 30.0
    for level, longer in enumerate(expected, start=1):
        t += timeout
        assert table.admit(0, t) == (PROBE, PROBING)
        assert table.record_failure(0, t + 0.5) == REOPENED
        reopened = t + 0.5
        assert table.level(0) == level
        assert table.open_timeout_of(0) == longer
        assert table.opened_at(0) == reopened
        assert table.reset_at(0) == reopened + longer
        assert table.snapshot(0, reopened) == (
            OPEN,
            5 + level,
            0,
            reopened,
            longer,
            reopened + longer,
        )
        assert table.state(0, reopened + longer - 0.001) == OPEN
        assert table.allow(0, reopened + longer - 0.001) == REJECT
        assert table.state(0, reopened + longer) == HALF_OPEN
        t, timeout = reopened, longer


def test_late_answers_while_open_are_ignored(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1)
    trip(table, 0, T0)
    word = table.raw(0)
    for now in (T0, T0 + 10.0, T0 + 29.999):
        assert table.record_success(0, now) == NONE
        assert table.record_failure(0, now) == NONE
    assert table.raw(0) == word


def test_r22_a_failure_after_the_open_timeout_reopens_at_the_next_level(
    core: types.SimpleNamespace,
) -> None:
    # Nobody asked allow() after the open period: HALF_OPEN in effect all the
    # same, and a failure recorded then is evidence, not a late answer.
    table = core.BreakerTable(nodes=1, open_timeout=30.0, max_open_timeout=300.0)
    trip(table, 0, T0)
    t = T0 + 30.0
    for level, timeout in ((1, 60.0), (2, 120.0), (3, 240.0), (4, 300.0), (5, 300.0)):
        assert table.state(0, t) == HALF_OPEN
        assert table.record_success(0, t) == NONE  # an answer nobody was admitted for
        assert table.record_failure(0, t) == REOPENED_UNPROBED
        assert (table.level(0), table.open_timeout_of(0)) == (level, timeout)
        assert table.state(0, t + timeout - 0.001) == OPEN
        assert table.reset_at(0) == pytest.approx(t + timeout)
        t += timeout
    assert table.allow(0, t) == PROBE  # still probed on the (capped) schedule


def test_r22_a_failure_after_a_stuck_probe_and_its_reopen_counts_twice(
    core: types.SimpleNamespace,
) -> None:
    table = core.BreakerTable(nodes=1, open_timeout=30.0, probe_timeout=10.0)
    trip(table, 0, T0)
    assert table.allow(0, T0 + 30.0) == PROBE  # never answered
    # The probe failed at T0 + 40 (level 1, open until T0 + 100); at T0 + 100
    # the breaker is HALF_OPEN in effect again, and this failure reopens it.
    assert table.record_failure(0, T0 + 100.0) == REOPENED
    assert (table.level(0), table.reset_at(0)) == (2, pytest.approx(T0 + 220.0))


# ---------------------------------------------------------------- R3


def test_r3_a_silent_probe_fails_by_its_timeout(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, open_timeout=30.0, probe_timeout=10.0)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.allow(0, t) == PROBE
    # Never HALF_OPEN longer than the probe timeout, to the millisecond.
    for ms in range(0, 10_001, 7):
        assert table.state(0, t + ms / 1000) == (HALF_OPEN if ms < 10_000 else OPEN), ms
    assert table.state(0, t + 9.999) == HALF_OPEN
    assert table.state(0, t + 10.0) == OPEN
    assert table.snapshot(0, t + 9.999)[5] == t + 10.0
    # Read as if the probe failed at its deadline: one level up, 60 s from there.
    assert table.snapshot(0, t + 10.0) == (OPEN, 6, 0, t + 10.0, 60.0, t + 70.0)
    assert table.admit(0, t + 10.0) == (REJECT, REOPENED)
    assert (table.level(0), table.open_timeout_of(0), table.reset_at(0)) == (1, 60.0, t + 70.0)
    assert table.admit(0, t + 10.0) == (REJECT, NONE)
    assert table.state(0, t + 69.999) == OPEN
    assert table.state(0, t + 70.0) == HALF_OPEN


def test_r3_a_stuck_probe_nobody_writes_to_still_recovers(core: types.SimpleNamespace) -> None:
    # The router skips OPEN nodes, so time alone must bring the node back.
    table = core.BreakerTable(nodes=1, open_timeout=30.0, probe_timeout=10.0)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.allow(0, t) == PROBE
    word = table.raw(0)
    assert table.state(0, t + 69.999) == OPEN
    assert table.state(0, t + 70.0) == HALF_OPEN
    assert table.raw(0) == word
    assert table.admit(0, t + 500.0) == (PROBE, REOPENED_AND_PROBING)
    assert (table.level(0), table.probes(0), table.reset_at(0)) == (1, 1, t + 510.0)


@pytest.mark.parametrize("answer", ["record_success", "record_failure"])
def test_r3_an_answer_after_the_probe_deadline_is_late(
    core: types.SimpleNamespace, answer: str
) -> None:
    table = core.BreakerTable(nodes=1, open_timeout=30.0, probe_timeout=10.0)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.allow(0, t) == PROBE
    assert getattr(table, answer)(0, t + 10.0) == REOPENED
    assert (table.state(0, t + 10.0), table.level(0), table.reset_at(0)) == (OPEN, 1, t + 70.0)


def test_r3_later_probes_share_the_first_deadline(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, half_open_max_probes=2, success_threshold=3)
    trip(table, 0, T0)
    t = T0 + 30.0
    assert table.allow(0, t) == PROBE
    assert table.allow(0, t + 5.0) == PROBE
    assert table.reset_at(0) == t + 10.0, "a later probe must not stretch the first one's wait"
    assert table.record_success(0, t + 6.0) == NONE
    assert table.state(0, t + 9.999) == HALF_OPEN
    assert table.state(0, t + 10.0) == OPEN
    # Once every probe has answered, a new one gets a fresh deadline.
    table2 = core.BreakerTable(nodes=1, half_open_max_probes=1, success_threshold=2)
    trip(table2, 0, T0)
    assert table2.allow(0, t) == PROBE
    assert table2.record_success(0, t + 1.0) == NONE
    assert table2.state(0, t + 100.0) == HALF_OPEN, "no probe out: nothing can be stuck"
    assert table2.allow(0, t + 100.0) == PROBE
    assert table2.reset_at(0) == t + 110.0


# ---------------------------------------------------------------- counters, rounding, storage


def test_failures_and_level_saturate(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(
        nodes=1, failure_threshold=1023, open_timeout=0.001, max_open_timeout=1000.0
    )
    for _ in range(1022):
        assert table.record_failure(0, T0) == NONE
    assert table.failures(0) == 1022
    assert table.record_failure(0, T0) == TRIPPED
    assert table.failures(0) == 1023
    t = T0
    for _ in range(20):
        t = table.reset_at(0)
        assert table.allow(0, t) == PROBE
        assert table.record_failure(0, t) == REOPENED
        assert table.failures(0) == 1023
    assert table.level(0) == 15
    assert table.open_timeout_of(0) == 32.768
    assert table.state(0, t) == OPEN


def test_times_round_half_away_from_zero_to_milliseconds(core: types.SimpleNamespace) -> None:
    # 2.5 ms: llround gives 3 where Python's round() would give 2.
    table = core.BreakerTable(nodes=1, failure_threshold=1, open_timeout=0.0025, epoch=0.0)
    assert table.open_timeout_of(0) == 0.003
    assert table.record_failure(0, 0.0105) == TRIPPED  # 10.5 ms -> tick 11
    assert table.reset_at(0) == 0.014
    assert table.state(0, 0.0134) == OPEN  # 13.4 -> 13
    assert table.state(0, 0.0135) == HALF_OPEN  # 13.5 -> 14
    # Before the epoch everything is tick 0; far beyond, the 36-bit end.
    early = core.BreakerTable(nodes=1, failure_threshold=1, open_timeout=1.0, epoch=500.0)
    early.record_failure(0, 10.0)
    assert early.reset_at(0) == 501.0
    late = core.BreakerTable(nodes=1, failure_threshold=1, open_timeout=1.0, epoch=0.0)
    late.record_failure(0, 1e12)
    assert late.reset_at(0) == ((1 << 36) - 1) / 1000.0


def test_snapshot_and_accessors_of_a_fresh_slot(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(open_timeout=12.0)
    assert len(table) == 0
    assert table.add_node() == 0 and table.add_node() == 1 and len(table) == 2
    state, failures, probes, opened, timeout, reset = table.snapshot(1, T0)
    assert (state, failures, probes, timeout) == (CLOSED, 0, 0, 12.0)
    assert math.isnan(opened) and math.isnan(reset)
    assert (table.failures(1), table.probes(1), table.level(1), table.successes(1)) == (0, 0, 0, 0)
    assert table.open_timeout_of(1) == 12.0
    assert table.allow(1, T0) == ADMIT


def test_reset_returns_to_closed(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=1, failure_threshold=1)
    table.record_failure(0, T0)
    table.allow(0, T0 + 30.0)
    assert table.record_failure(0, T0 + 31.0) == REOPENED
    table.reset(0)
    assert table.raw(0) == 0
    assert table.state(0, T0 + 31.0) == CLOSED and table.level(0) == 0


def test_slots_across_storage_chunks_are_independent(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(failure_threshold=1, nodes=5)
    for _ in range(1200 - 5):
        table.add_node()
    edges = [0, 62, 63, 64, 65, 190, 191, 192, 447, 448, 959, 960, 1199]
    for slot in edges:
        assert table.record_failure(slot, T0 + slot) == TRIPPED
    out = np.full(1300, 9, dtype=np.int8)
    table.states_into(T0 + 10.0, out)
    assert out[1200:].tolist() == [9] * 100, "states_into wrote past len(table)"
    for slot in range(1200):
        expected = CLOSED
        if slot in edges:
            expected = OPEN
            assert table.opened_at(slot) == T0 + slot
        assert out[slot] == expected, slot
        assert table.state(slot, T0 + 10.0) == expected


def test_states_into_validates_its_output(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=4)
    with pytest.raises(ValueError, match=r"^out: expected at least 4 elements, got 3"):
        table.states_into(T0, np.zeros(3, dtype=np.int8))
    with pytest.raises(ValueError, match=r"^out: expected a 1-D C-contiguous array of int8"):
        table.states_into(T0, np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match=r"^out: expected a 1-D C-contiguous array of int8"):
        table.states_into(T0, np.zeros(8, dtype=np.int8)[::2])
    readonly = np.zeros(4, dtype=np.int8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: expected a writable array"):
        table.states_into(T0, readonly)
    with pytest.raises(TypeError, match=r"^out: expected a numpy array of int8, got list"):
        table.states_into(T0, [0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"^now: expected a finite clock reading"):
        table.states_into(math.nan, np.zeros(4, dtype=np.int8))
    empty = core.BreakerTable()
    empty.states_into(T0, np.zeros(0, dtype=np.int8))


def random_ops(rng: random.Random, n: int, slots: int, start: float) -> tuple[np.ndarray, ...]:
    ops = np.array(rng.choices([0, 1, 2], weights=[5, 2, 3], k=n), dtype=np.int8)
    where = np.array([rng.randrange(slots) for _ in range(n)], dtype=np.int64)
    steps = np.array([rng.choice([0.0, 0.0005, 0.001, 0.0013, 0.004]) for _ in range(n)])
    return ops, where, start + np.cumsum(steps)


def test_run_batch_matches_one_call_at_a_time(core: types.SimpleNamespace) -> None:
    config = dict(
        failure_threshold=2,
        open_timeout=0.003,
        max_open_timeout=0.02,
        half_open_max_probes=2,
        success_threshold=2,
        probe_timeout=0.002,
        nodes=3,
    )
    batch, single = core.BreakerTable(**config), core.BreakerTable(**config)
    ops, slots, nows = random_ops(random.Random(7), 3000, 3, T0)
    decisions = np.zeros(len(ops), dtype=np.int8)
    transitions = np.zeros(len(ops), dtype=np.int8)
    batch.run_batch(ops, slots, nows, decisions, transitions)
    for i, (op, slot, now) in enumerate(
        zip(ops.tolist(), slots.tolist(), nows.tolist(), strict=True)
    ):
        if op == 0:
            assert (decisions[i], transitions[i]) == single.admit(slot, now), i
        else:
            call = single.record_success if op == 1 else single.record_failure
            assert (decisions[i], transitions[i]) == (-1, call(slot, now)), i
    assert [batch.raw(s) for s in range(3)] == [single.raw(s) for s in range(3)]
    assert set(transitions.tolist()) >= {NONE, TRIPPED, PROBING, RECOVERED, REOPENED}


def test_run_batch_validates_everything_before_applying(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(nodes=2, failure_threshold=1)
    ops = np.array([2, 2, 2], dtype=np.int8)
    slots = np.array([0, 1, 0], dtype=np.int64)
    nows = np.array([T0, T0, T0])
    out_d, out_t = np.zeros(3, dtype=np.int8), np.zeros(3, dtype=np.int8)
    with pytest.raises(IndexError, match=r"^slots\[1\]: expected 0 <= slot < 2, got 5"):
        table.run_batch(ops, np.array([0, 5, 0], dtype=np.int64), nows, out_d, out_t)
    with pytest.raises(ValueError, match=r"^ops\[2\]: expected 0, 1 or 2, got 3"):
        table.run_batch(np.array([2, 2, 3], dtype=np.int8), slots, nows, out_d, out_t)
    with pytest.raises(ValueError, match=r"^nows\[0\]: expected a finite clock reading"):
        table.run_batch(ops, slots, np.array([math.nan, T0, T0]), out_d, out_t)
    with pytest.raises(ValueError, match=r"^slots: expected a 1-D C-contiguous array of int64"):
        table.run_batch(ops, slots.astype(np.int32), nows, out_d, out_t)
    with pytest.raises(ValueError, match=r"^transitions: expected length 3 \(as ops\), got 2"):
        table.run_batch(ops, slots, nows, out_d, out_t[:2])
    assert table.raw(0) == 0 and table.raw(1) == 0
    table.run_batch(ops, slots, nows, out_d, out_t)
    assert out_d.tolist() == [-1, -1, -1] and out_t.tolist() == [TRIPPED, TRIPPED, NONE]


# ---------------------------------------------------------------- R4: model-based


def round_ms(ms: float) -> int:
    """Whole milliseconds, half away from zero, from the exact value of the double."""
    if ms <= 0:
        return 0
    return min(int(Decimal(ms).quantize(Decimal(1), rounding=ROUND_HALF_UP)), (1 << 36) - 1)


def ref_ticks(t: float, epoch: float) -> int:
    return round_ms((t - epoch) * 1000.0)


class Reference:
    """The breaker's rules, spelled out one state at a time, with no bit packing."""

    def __init__(
        self,
        threshold: int,
        open_s: float,
        max_s: float,
        probes: int,
        successes: int,
        probe_s: float,
    ) -> None:
        self.threshold, self.max_probes, self.needed = threshold, probes, successes
        self.timeouts = [round_ms(min(open_s * 2**k, max_s) * 1000.0) for k in range(16)]
        self.probe_ticks = round_ms(probe_s * 1000.0)
        self.state, self.failures, self.probes, self.successes = CLOSED, 0, 0, 0
        self.level, self.deadline = 0, 0

    def _open(self, at: int) -> None:
        self.state, self.probes, self.successes = OPEN, 0, 0
        self.deadline = min(at + self.timeouts[self.level], (1 << 36) - 1)

    def _counted_failure(self, at: int) -> None:
        self.failures = min(self.failures + 1, 1023)
        if self.state == CLOSED:
            if self.failures >= self.threshold:
                self.level = 0
                self._open(at)
        else:
            self.level = min(self.level + 1, 15)
            self._open(at)

    def _stuck(self, now: int) -> bool:
        return self.state == HALF_OPEN and self.probes > 0 and now >= self.deadline

    def effective(self, now: int) -> tuple[int, int, int, int, int]:
        """(state, failures, probes, level, deadline) as read at `now`, without writing."""
        saved = vars(self).copy()
        if self._stuck(now):
            self._counted_failure(self.deadline)
        view = (self.state, self.failures, self.probes, self.level, self.deadline)
        vars(self).update(saved)
        if view[0] == OPEN and now >= view[4]:
            return (HALF_OPEN, *view[1:])
        return view

    def allow(self, now: int) -> tuple[int, int]:
        reopened = False
        if self._stuck(now):
            self._counted_failure(self.deadline)
            reopened = True
        if self.state == CLOSED:
            return ADMIT, NONE
        if self.state == OPEN:
            if now < self.deadline:
                return REJECT, REOPENED if reopened else NONE
            self.state, self.probes, self.successes = HALF_OPEN, 1, 0
            self.deadline = min(now + self.probe_ticks, (1 << 36) - 1)
            return PROBE, REOPENED_AND_PROBING if reopened else PROBING
        if self.probes < self.max_probes:
            if self.probes == 0:
                self.deadline = min(now + self.probe_ticks, (1 << 36) - 1)
            self.probes += 1
            return PROBE, NONE
        return REJECT, NONE

    def success(self, now: int) -> int:
        if self._stuck(now):
            self._counted_failure(self.deadline)
            return REOPENED
        if self.state == CLOSED:
            self.failures = 0
            return NONE
        if self.state == OPEN:
            return NONE
        self.successes += 1
        self.failures = 0
        self.probes = max(self.probes - 1, 0)
        if self.successes >= self.needed:
            self.state, self.failures, self.probes, self.successes = CLOSED, 0, 0, 0
            self.level, self.deadline = 0, 0
            return RECOVERED
        return NONE

    def failure(self, now: int) -> int:
        reopened = self._stuck(now)
        if reopened:
            self._counted_failure(self.deadline)
        if self.state == OPEN:
            if now < self.deadline:  # a late answer from before the trip
                return REOPENED if reopened else NONE
            # HALF_OPEN in effect, nobody probed yet: it counts (SPEC §2, R22).
            self._counted_failure(now)
            return REOPENED if reopened else REOPENED_UNPROBED
        was = self.state
        self._counted_failure(now)
        if was == HALF_OPEN:
            return REOPENED
        return TRIPPED if self.state == OPEN else NONE

    def release(self, now: int) -> int:
        if self._stuck(now):
            self._counted_failure(self.deadline)
            return REOPENED
        if self.state == HALF_OPEN and self.probes > 0:
            self.probes -= 1
        return NONE

    def boundary(self, now: int) -> int | None:
        """The next tick at which time alone changes the state, or None if none will."""
        state, _, probes, _, deadline = self.effective(now)
        if state == OPEN or (state == HALF_OPEN and probes > 0):
            return deadline
        return None


# Where a step lands relative to the acted-on slot's next deadline, in ticks
# (whole milliseconds); None: an ordinary step of 0 to 120 ms. Half ticks land
# on the rounding ties. Off-by-one-tick bugs live exactly here, and random
# steps of a few dozen milliseconds hit the deadline tick itself only rarely.
AROUND_DEADLINE: list[float | None] = [None, 0, -1, 1, -0.5, 0.5]
# Calls in a row at one instant: the limit plus -1, 0 or +1 (probes admitted,
# failures to trip, successes to close), so the one-too-many call is made.
AROUND_LIMIT = [1, 0, -1]


def make_machine(table_class: type) -> type[RuleBasedStateMachine]:
    class BreakerMachine(RuleBasedStateMachine):
        @initialize(
            threshold=st.integers(1, 4),
            open_ms=st.integers(1, 40),
            growth=st.integers(1, 20),
            probes=st.sampled_from([1, 2, 3, 63]),
            successes=st.integers(1, 3),
            probe_ms=st.integers(1, 40),
            odd_ms=st.sampled_from([0.0, 0.5, 0.25, 0.7]),
            epoch=st.sampled_from([0.0, 1000.0, 123.456, -50.0]),
            start=st.floats(-0.1, 2000.0, allow_nan=False),
            slots=st.integers(1, 3),
        )
        def configure(
            self,
            threshold: int,
            open_ms: int,
            growth: int,
            probes: int,
            successes: int,
            probe_ms: int,
            odd_ms: float,
            epoch: float,
            start: float,
            slots: int,
        ) -> None:
            open_s = (open_ms + odd_ms) / 1000
            max_s = open_s * growth
            probe_s = (probe_ms + odd_ms) / 1000
            self.table = table_class(
                failure_threshold=threshold,
                open_timeout=open_s,
                max_open_timeout=max_s,
                half_open_max_probes=probes,
                success_threshold=successes,
                probe_timeout=probe_s,
                epoch=epoch,
                nodes=slots,
            )
            self.config = (threshold, open_s, max_s, probes, successes, probe_s)
            self.limits = {"allow": probes, "failure": threshold, "success": successes}
            self.models = [Reference(*self.config) for _ in range(slots)]
            self.epoch = epoch
            self.now = epoch + start

        def ticks(self) -> int:
            return ref_ticks(self.now, self.epoch)

        def advance(self, model: Reference, half_ms: int, around: float | None) -> None:
            if around is None:
                self.now += half_ms / 2000
                return
            deadline = model.boundary(self.ticks())
            if deadline is None:
                return
            # The clock never goes back: a deadline already behind stays behind.
            self.now = max(self.now, self.epoch + (deadline + around) / 1000)

        def call(self, slot: int, op: str) -> None:
            model, now, ticks = self.models[slot], self.now, self.ticks()
            if op == "allow":
                before = model.effective(ticks)[0]
                assert self.table.state(slot, now) == before
                decision, transition = self.table.admit(slot, now)
                assert (decision, transition) == model.allow(ticks)
                if before == OPEN:
                    assert decision == REJECT, "admitted a call while effectively OPEN"
            elif op == "success":
                assert self.table.record_success(slot, now) == model.success(ticks)
            elif op == "failure":
                assert self.table.record_failure(slot, now) == model.failure(ticks)
            else:
                assert self.table.release(slot, now) == model.release(ticks)

        @rule(
            slot=st.integers(0, 2),
            op=st.sampled_from(["allow", "allow", "success", "failure", "release"]),
            half_ms=st.integers(0, 240),
            around=st.sampled_from(AROUND_DEADLINE),
        )
        def act(self, slot: int, op: str, half_ms: int, around: float | None) -> None:
            # One rule for time and calls, since Hypothesis's cost is per step
            # and per draw.
            slot %= len(self.models)
            self.advance(self.models[slot], half_ms, around)
            self.call(slot, op)

        @rule(
            slot=st.integers(0, 2),
            op=st.sampled_from(["allow", "failure", "success"]),
            beyond=st.sampled_from(AROUND_LIMIT),
            around=st.sampled_from(AROUND_DEADLINE[1:]),
        )
        def burst(self, slot: int, op: str, beyond: int, around: float) -> None:
            slot %= len(self.models)
            self.advance(self.models[slot], 0, around)
            for _ in range(self.limits[op] + beyond):
                self.call(slot, op)

        @rule(slot=st.integers(0, 2), dice=st.integers(0, 9))
        def reset(self, slot: int, dice: int) -> None:
            if dice:  # rare: it erases the history under test
                return
            slot %= len(self.models)
            self.table.reset(slot)
            self.models[slot] = Reference(*self.config)

        @invariant()
        def agrees_with_the_model(self) -> None:
            now, ticks = self.now, self.ticks()
            states = np.full(len(self.models), -1, dtype=np.int8)
            self.table.states_into(now, states)
            for slot, model in enumerate(self.models):
                state, failures, probes, level, deadline = model.effective(ticks)
                snap = self.table.snapshot(slot, now)
                assert snap[:3] == (state, failures, probes)
                assert states[slot] == state
                assert snap[4] == model.timeouts[level] / 1000
                if state == OPEN:
                    assert snap[3] == self.epoch + (deadline - model.timeouts[level]) / 1000
                else:
                    assert math.isnan(snap[3])
                if state == OPEN or (state == HALF_OPEN and probes > 0):
                    assert snap[5] == self.epoch + deadline / 1000
                else:
                    assert math.isnan(snap[5])
                stored = (
                    self.table.failures(slot),
                    self.table.probes(slot),
                    self.table.successes(slot),
                    self.table.level(slot),
                )
                assert stored == (model.failures, model.probes, model.successes, model.level)
                assert (self.table.raw(slot) & 3) == model.state

    return BreakerMachine


R4_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    # Deterministic: the same runs every time, and no database replaying a
    # failure found on another checkout.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_r4_matches_the_reference_model(core: types.SimpleNamespace) -> None:
    run_state_machine_as_test(make_machine(core.BreakerTable), settings=R4_SETTINGS)


# ---------------------------------------------------------------- threads


# The pure twin serialises on its lock anyway and runs ~50x slower, so it gets
# fewer operations; the compiled table gets the full load.
THREADS = 8
OPS = {"compiled": 20_000, "pure": 5_000}
CONCURRENT = dict(
    failure_threshold=3,
    open_timeout=0.002,
    max_open_timeout=0.016,
    half_open_max_probes=3,
    success_threshold=1,
    probe_timeout=0.003,
    nodes=3,
)


def check_history(table: Any, results: list[tuple[np.ndarray, ...]]) -> None:
    """Replay every thread's returned codes against the final words.

    Every stored state change is reported by exactly one call, so per slot
    the entries into and exits from each state must balance against the final
    state; and with success_threshold=1 a half-open episode admits at most
    ``half_open_max_probes`` probes. A read-modify-write that is not atomic
    loses updates, and two callers then report the same transition (or one
    episode admits too many probes): these counts catch it.
    """
    limit = table.half_open_max_probes
    for slot in range(len(table)):
        entries, exits = [0, 0, 0], [0, 0, 0]
        probes = episodes = 0
        for ops, slots, decisions, transitions in results:
            mine = slots == slot
            codes = transitions[mine]
            for code in codes[codes >= 0].tolist():
                old, new = divmod(code, 3)
                exits[old] += 1
                entries[new] += 1
                if code == REOPENED_AND_PROBING:  # through OPEN and back
                    entries[OPEN] += 1
                    exits[OPEN] += 1
            allows = mine & (ops == 0)
            probes += int(np.count_nonzero(decisions[allows] == PROBE))
            episodes += int(np.count_nonzero(np.isin(transitions[allows], [5, 8])))
        final = table.raw(slot) & 3
        for state in (CLOSED, OPEN, HALF_OPEN):
            expected = (state == final) - (state == CLOSED)
            assert entries[state] - exits[state] == expected, (slot, state, entries, exits)
        assert probes <= limit * episodes, (slot, probes, episodes)
        assert sum(entries) > 100, "the workload must actually move the breakers"

        word = table.raw(slot)
        state, failures = word & 3, (word >> 2) & 0x3FF
        probes_now, successes, level = (word >> 12) & 0x3F, (word >> 18) & 0x3F, (word >> 24) & 0xF
        assert state in (CLOSED, OPEN, HALF_OPEN)
        assert probes_now <= limit and successes < table.success_threshold
        if state == CLOSED:
            assert (probes_now, level) == (0, 0) and failures < table.failure_threshold
        if state == OPEN:
            assert probes_now == 0


def run_threads(work: Any, ops_per_thread: int) -> list[tuple[np.ndarray, ...]]:
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def body(k: int) -> None:
        try:
            rng = random.Random(1000 + k)
            ops, slots, nows = random_ops(rng, ops_per_thread, CONCURRENT["nodes"], T0)
            barrier.wait()
            results[k] = work(ops, slots, nows)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_threads_batches_interleave_in_c_and_keep_every_invariant(
    core: types.SimpleNamespace,
) -> None:
    # run_batch releases the GIL once for all its operations, so on the
    # compiled table 8 threads really race on the same few words.
    table = core.BreakerTable(**CONCURRENT)

    def work(ops: np.ndarray, slots: np.ndarray, nows: np.ndarray) -> tuple[np.ndarray, ...]:
        decisions = np.zeros(len(ops), dtype=np.int8)
        transitions = np.zeros(len(ops), dtype=np.int8)
        table.run_batch(ops, slots, nows, decisions, transitions)
        return ops, slots, decisions, transitions

    check_history(table, run_threads(work, OPS[core.name]))


def test_threads_single_calls_keep_every_invariant(core: types.SimpleNamespace) -> None:
    table = core.BreakerTable(**CONCURRENT)

    def work(ops: np.ndarray, slots: np.ndarray, nows: np.ndarray) -> tuple[np.ndarray, ...]:
        decisions = np.full(len(ops), -1, dtype=np.int8)
        transitions = np.zeros(len(ops), dtype=np.int8)
        admit, success, failure = table.admit, table.record_success, table.record_failure
        for i, (op, slot, now) in enumerate(
            zip(ops.tolist(), slots.tolist(), nows.tolist(), strict=True)
        ):
            if op == 0:
                decisions[i], transitions[i] = admit(slot, now)
            elif op == 1:
                transitions[i] = success(slot, now)
            else:
                transitions[i] = failure(slot, now)
        return ops, slots, decisions, transitions

    check_history(table, run_threads(work, OPS[core.name]))
