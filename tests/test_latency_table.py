"""The latency table: sliding windows per node and numpy-identical percentiles.

Every behavioural test runs on the compiled table and on its pure twin (the
``core`` fixture). The oracle is ``numpy.percentile`` on the samples a plain
``deque(maxlen=window)`` would hold, and results must match it exactly.
"""

from __future__ import annotations

import copy
import math
import pickle
import re
import sys
import types
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TRIPLE = [50, 95, 99]

# `core` only hands out classes, so sharing it across examples is safe.
prop = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

latencies = st.one_of(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    # Repeated values: real latencies collide, and ties stress the partition.
    st.sampled_from([0.0, 0.001, 0.045, 0.045, 0.1, 2.5]),
)


def assert_matches_numpy(table: object, slot: int, window_samples: list[float]) -> None:
    """Everything the table says about `slot` agrees with numpy on `window_samples`."""
    expected = np.asarray(window_samples, dtype=np.float64)
    np.testing.assert_array_equal(table.samples(slot), expected)
    assert table.count(slot) == len(expected)
    if len(expected) == 0:
        assert all(math.isnan(p) for p in table.percentiles(slot))
        assert math.isnan(table.percentile(slot, 50.0))
        return
    np.testing.assert_array_equal(table.percentiles(slot), np.percentile(expected, TRIPLE))
    for q in (0.0, 1.0, 25.0, 33.3, 50.0, 66.7, 90.0, 99.9, 100.0):
        assert table.percentile(slot, q) == np.percentile(expected, q), q


# ---------------------------------------------------------------- windows


def test_empty_window_gives_nan(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=16, nodes=1)
    assert table.count(0) == 0
    assert math.isnan(table.percentile(0, 50))
    p50, p95, p99 = table.percentiles(0)
    assert math.isnan(p50) and math.isnan(p95) and math.isnan(p99)
    assert table.samples(0).shape == (0,)
    assert np.isnan(table.all_percentiles()).all()


def test_three_reports_of_45ms_give_p50_of_45ms(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable()
    slot = table.add_node()
    for _ in range(3):
        table.record(slot, 0.045)
    assert table.percentiles(slot) == (0.045, 0.045, 0.045)


def test_partly_filled_window_uses_only_its_samples(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=1024, nodes=1)
    values = [0.3, 0.01, 0.2, 0.05, 0.7]
    for v in values:
        table.record(0, v)
    assert_matches_numpy(table, 0, values)
    assert table.percentile(0, 50) == 0.2


def test_wrap_around_keeps_only_the_latest_window(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=8, nodes=1)
    values = [0.001 * (i * 7 % 20 + 1) for i in range(20)]
    for v in values:
        table.record(0, v)
    assert table.count(0) == 8
    assert_matches_numpy(table, 0, values[-8:])


def test_window_of_one_holds_the_last_sample(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=1, nodes=1)
    for v in (0.5, 0.2, 0.9):
        table.record(0, v)
    assert table.percentiles(0) == (0.9, 0.9, 0.9)
    assert table.samples(0).tolist() == [0.9]


@pytest.mark.parametrize(
    "pattern",
    ["sorted", "reversed", "constant", "organ_pipe", "two_values", "sawtooth", "random"],
)
def test_full_window_of_adversarial_patterns(core: types.SimpleNamespace, pattern: str) -> None:
    # Orders that break naive quickselect pivots (or hide off-by-one ranks)
    # on the default 1024-sample window.
    n = 1024
    i = np.arange(n, dtype=np.float64)
    values = {
        "sorted": i * 1e-3,
        "reversed": (n - i) * 1e-3,
        "constant": np.full(n, 0.045),
        "organ_pipe": np.minimum(i, n - 1 - i) * 1e-3,
        "two_values": np.where(i % 3 == 0, 0.01, 0.2),
        "sawtooth": (i % 17) * 1e-3,
        "random": np.random.default_rng(7).lognormal(-3.0, 1.0, n),
    }[pattern]
    table = core.LatencyTable(window=n, nodes=1)
    table.record_many(0, values)
    assert_matches_numpy(table, 0, values.tolist())


def test_extreme_magnitudes(core: types.SimpleNamespace) -> None:
    values = [0.0, 5e-324, 1e-300, 1.0, 1e300, sys.float_info.max, 0.0, 1e-9]
    table = core.LatencyTable(window=8, nodes=1)
    table.record_many(0, values)
    assert_matches_numpy(table, 0, values)


@prop
@given(
    window=st.integers(min_value=1, max_value=64),
    values=st.lists(latencies, max_size=150),
    q=st.floats(min_value=0.0, max_value=100.0),
)
def test_percentiles_match_numpy(
    core: types.SimpleNamespace, window: int, values: list[float], q: float
) -> None:
    table = core.LatencyTable(window=window, nodes=1)
    for v in values:
        table.record(0, v)
    kept = values[-window:] if values else []
    assert_matches_numpy(table, 0, kept)
    if kept:
        assert table.percentile(0, q) == np.percentile(kept, q)


@prop
@given(
    window=st.integers(min_value=60, max_value=300),
    values=st.lists(latencies, min_size=1, max_size=400),
    qs=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=4),
)
def test_large_windows_match_numpy(
    core: types.SimpleNamespace, window: int, values: list[float], qs: list[float]
) -> None:
    # From 64 samples up the compiled table partitions while it copies; cover
    # both sides of that threshold with fills below and above the window.
    table = core.LatencyTable(window=window, nodes=1)
    table.record_many(0, values)
    kept = values[-window:]
    np.testing.assert_array_equal(table.percentiles(0), np.percentile(kept, TRIPLE))
    for q in qs:
        assert table.percentile(0, q) == np.percentile(kept, q), q


@prop
@given(
    window=st.integers(min_value=1, max_value=16),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add")),
            st.tuples(st.just("record"), st.integers(0, 5), latencies),
            st.tuples(st.just("many"), st.integers(0, 5), st.lists(latencies, max_size=40)),
            st.tuples(st.just("reset"), st.integers(0, 5)),
        ),
        max_size=40,
    ),
)
def test_random_operations_match_a_deque_model(
    core: types.SimpleNamespace, window: int, ops: list[tuple[object, ...]]
) -> None:
    table = core.LatencyTable(window=window, nodes=1)
    model: list[deque[float]] = [deque(maxlen=window)]
    for op in ops:
        if op[0] == "add":
            assert table.add_node() == len(model)
            model.append(deque(maxlen=window))
            continue
        slot = int(op[1]) % len(model)
        if op[0] == "record":
            table.record(slot, op[2])
            model[slot].append(op[2])
        elif op[0] == "many":
            table.record_many(slot, op[2])
            model[slot].extend(op[2])
        else:
            table.reset(slot)
            model[slot].clear()
    assert len(table) == len(model)
    rows = table.all_percentiles()
    for slot, kept in enumerate(model):
        assert_matches_numpy(table, slot, list(kept))
        np.testing.assert_array_equal(rows[slot], table.percentiles(slot))


# ---------------------------------------------------------------- all nodes at once


def make_mixed_table(core: types.SimpleNamespace) -> tuple[object, list[list[float]]]:
    """Full, wrapped, partly filled and empty windows side by side."""
    rng = np.random.default_rng(3)
    table = core.LatencyTable(window=100, nodes=6)
    kept: list[list[float]] = []
    for slot, n in enumerate([100, 170, 5, 0, 1, 70]):
        values = rng.exponential(0.05, n).tolist()
        table.record_many(slot, values)
        kept.append(values[-100:])
    return table, kept


def test_all_percentiles_match_each_slot(core: types.SimpleNamespace) -> None:
    table, kept = make_mixed_table(core)
    rows = table.all_percentiles()
    assert rows.shape == (6, 3) and rows.dtype == np.float64
    for slot, values in enumerate(kept):
        if values:
            np.testing.assert_array_equal(rows[slot], np.percentile(values, TRIPLE))
            np.testing.assert_array_equal(rows[slot], table.percentiles(slot))
        else:
            assert np.isnan(rows[slot]).all()


def test_all_percentiles_fills_out_in_place(core: types.SimpleNamespace) -> None:
    table, _ = make_mixed_table(core)
    out = np.full((8, 3), -1.0)
    result = table.all_percentiles(out=out)
    assert result is out
    np.testing.assert_array_equal(out[:6], table.all_percentiles())
    # Rows past the table's nodes belong to the caller.
    assert (out[6:] == -1.0).all()


def test_all_percentiles_of_no_nodes(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4)
    assert table.all_percentiles().shape == (0, 3)
    out = np.zeros((2, 3))
    assert table.all_percentiles(out) is out
    assert (out == 0).all()


@pytest.mark.parametrize(
    "out",
    [
        np.zeros((6, 3), dtype=np.float32),
        np.zeros((5, 3)),
        np.zeros((6, 4)),
        np.zeros(18),
        np.zeros((6, 3, 1)),
        np.zeros((3, 6)).T,
        np.zeros((6, 3), dtype=">f8"),
    ],
    ids=["float32", "too_few_rows", "four_columns", "1d", "3d", "fortran", "big_endian"],
)
def test_all_percentiles_rejects_a_bad_out(core: types.SimpleNamespace, out: object) -> None:
    table, _ = make_mixed_table(core)
    with pytest.raises(ValueError, match=r"out: expected .*float64.*\(>=6, 3\), got"):
        table.all_percentiles(out=out)


def test_all_percentiles_rejects_read_only_or_non_array_out(
    core: types.SimpleNamespace,
) -> None:
    table, _ = make_mixed_table(core)
    frozen = np.zeros((6, 3))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        table.all_percentiles(out=frozen)
    with pytest.raises(TypeError, match="got list"):
        table.all_percentiles(out=[[0.0] * 3] * 6)


# ---------------------------------------------------------------- slots


def test_growth_past_capacity_keeps_old_data(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4, nodes=2)
    assert len(table) == 2 and table.capacity == 2
    table.record_many(0, [0.1, 0.2, 0.3, 0.4, 0.5])
    table.record_many(1, [0.9, 0.8])
    capacities = []
    for expected_slot in range(2, 9):
        assert table.add_node() == expected_slot
        capacities.append(table.capacity)
    assert capacities == [4, 4, 8, 8, 8, 8, 16]
    assert len(table) == 9
    assert table.samples(0).tolist() == [0.2, 0.3, 0.4, 0.5]
    assert table.samples(1).tolist() == [0.9, 0.8]
    for slot in range(2, 9):
        assert table.count(slot) == 0
    table.record(8, 0.25)
    assert table.percentiles(8) == (0.25, 0.25, 0.25)
    assert table.percentiles(0) == tuple(np.percentile([0.2, 0.3, 0.4, 0.5], TRIPLE))


def test_table_starting_empty_grows_by_doubling(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=2)
    assert len(table) == 0 and table.capacity == 0
    seen = []
    for _ in range(5):
        table.add_node()
        seen.append(table.capacity)
    assert seen == [1, 2, 4, 4, 8]


def test_reset_empties_one_slot_only(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4, nodes=2)
    table.record_many(0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    table.record_many(1, [0.7])
    table.reset(0)
    assert table.count(0) == 0
    assert math.isnan(table.percentile(0, 99))
    assert table.samples(1).tolist() == [0.7]
    # A reused slot starts a fresh window: nothing of the old node leaks in.
    table.record_many(0, [0.05, 0.02])
    assert table.samples(0).tolist() == [0.05, 0.02]
    assert_matches_numpy(table, 0, [0.05, 0.02])


def test_record_many_equals_record_one_by_one(core: types.SimpleNamespace) -> None:
    values = np.random.default_rng(5).exponential(0.1, 50)
    one = core.LatencyTable(window=16, nodes=1)
    many = core.LatencyTable(window=16, nodes=1)
    for chunk in np.array_split(values, [3, 4, 30]):
        for v in chunk:
            one.record(0, v)
        many.record_many(0, chunk)
        np.testing.assert_array_equal(many.samples(0), one.samples(0))
        assert many.percentiles(0) == one.percentiles(0)
    many.record_many(0, [])
    many.record_many(0, (0.5, 1))
    assert many.samples(0)[-2:].tolist() == [0.5, 1.0]


def test_basic_properties(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=32, nodes=3)
    assert table.window == 32
    assert len(table) == 3
    assert repr(table) == "LatencyTable(window=32, nodes=3)"
    assert core.LatencyTable().window == 1024
    assert core.LatencyTable(np.int64(5)).window == 5


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("value", "shown"),
    [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (-0.001, "-0.001")],
)
def test_record_rejects_bad_latencies(
    core: types.SimpleNamespace, value: float, shown: str
) -> None:
    table = core.LatencyTable(window=4, nodes=1)
    table.record(0, 0.1)
    with pytest.raises(ValueError, match=f"^latency: expected finite seconds >= 0, got {shown}$"):
        table.record(0, value)
    assert table.samples(0).tolist() == [0.1]


def test_zero_latency_is_valid(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4, nodes=1)
    table.record(0, 0.0)
    table.record(0, 0)
    assert table.percentiles(0) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("slot", [-1, 3, 10**6])
def test_bad_slot_names_the_slot_and_range(core: types.SimpleNamespace, slot: int) -> None:
    table = core.LatencyTable(window=4, nodes=3)
    calls = [
        lambda: table.record(slot, 0.1),
        lambda: table.record_many(slot, [0.1]),
        lambda: table.count(slot),
        lambda: table.reset(slot),
        lambda: table.percentile(slot, 50),
        lambda: table.percentiles(slot),
        lambda: table.samples(slot),
    ]
    for call in calls:
        with pytest.raises(IndexError, match=rf"^slot: expected 0 <= slot < 3, got {slot}$"):
            call()


@pytest.mark.parametrize("q", [-0.5, 100.5, math.nan, math.inf])
def test_bad_q_is_rejected(core: types.SimpleNamespace, q: float) -> None:
    table = core.LatencyTable(window=4, nodes=1)
    table.record(0, 0.1)
    with pytest.raises(ValueError, match=rf"^q: expected a percentile in \[0, 100\], got {q!r}$"):
        table.percentile(0, q)


@pytest.mark.parametrize("window", [0, -3, 1.5, True, "8", None, (1 << 20) + 1])
def test_bad_window_is_rejected(core: types.SimpleNamespace, window: object) -> None:
    with pytest.raises(ValueError, match=r"^window: expected an int in \[1, 1048576\], got "):
        core.LatencyTable(window=window)
    with pytest.raises(ValueError, match=re.escape(f"got {window!r}") + "$"):
        core.LatencyTable(window=window)


@pytest.mark.parametrize("nodes", [-1, 2.0, False])
def test_bad_node_count_is_rejected(core: types.SimpleNamespace, nodes: object) -> None:
    with pytest.raises(ValueError, match=rf"^nodes: expected an int >= 0, got {nodes!r}$"):
        core.LatencyTable(window=4, nodes=nodes)


def test_impossible_size_is_a_memory_error(core: types.SimpleNamespace) -> None:
    with pytest.raises(MemoryError, match="cannot hold"):
        core.LatencyTable(window=1 << 20, nodes=1 << 50)


def test_record_many_is_atomic(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=8, nodes=1)
    table.record_many(0, [0.1, 0.2, 0.3])
    for bad, shown in [
        ([0.4, 0.5, math.nan, 0.6], "nan at values\\[2\\]"),
        (np.array([0.4, -1.0]), "-1.0 at values\\[1\\]"),
        ([math.inf], "inf at values\\[0\\]"),
    ]:
        with pytest.raises(
            ValueError, match=f"^latency: expected finite seconds >= 0, got {shown}$"
        ):
            table.record_many(0, bad)
        assert table.samples(0).tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"^values: expected a 1-D sequence.*\(2, 2\)$"):
        table.record_many(0, [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"got an array of shape \(\)$"):
        table.record_many(0, 0.5)
    assert table.samples(0).tolist() == [0.1, 0.2, 0.3]


def test_wrong_argument_types_are_type_errors(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4, nodes=1)
    with pytest.raises(TypeError):
        table.record(0, "0.1")
    with pytest.raises(TypeError):
        table.record(0.0, 0.1)
    with pytest.raises(TypeError):
        table.percentile(0, "50")
    with pytest.raises(TypeError):
        table.count(None)
    assert table.count(0) == 0


def test_tables_do_not_pickle(core: types.SimpleNamespace) -> None:
    table = core.LatencyTable(window=4, nodes=1)
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(table)
    with pytest.raises(TypeError, match="cannot pickle"):
        copy.copy(table)


# ---------------------------------------------------------------- selection kernel


@pytest.mark.parametrize("depth", [0, 1, 2, -1])
def test_selection_kernel_including_its_heapsort_fallback(
    core: types.SimpleNamespace, depth: int
) -> None:
    # depth 0 sends every call straight to the heapsort fallback, which
    # random data would almost never reach on its own.
    if core.name == "pure":
        pytest.skip("the pure twin delegates selection to numpy")
    nth_element = sys.modules[core.LatencyTable.__module__]._nth_element
    rng = np.random.default_rng(11)
    for n in (1, 2, 15, 16, 17, 100, 1000):
        for k in sorted({0, n // 3, n // 2, n - 1}):
            for values in (rng.permutation(n) * 1.0, np.floor(rng.random(n) * 4)):
                a = values.copy()
                nth_element(a, k, depth)
                kth = np.sort(values)[k]
                assert a[k] == kth
                assert (a[:k] <= kth).all() and (a[k + 1 :] >= kth).all()
                np.testing.assert_array_equal(np.sort(a), np.sort(values))
