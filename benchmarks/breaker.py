"""asv benchmarks of the circuit-breaker state table, with its baselines in the same suite.

``impl`` is ``compiled`` (the C11-atomics table), ``pure`` (its pure-Python
twin) or ``dict`` (:class:`DictBreaker`, the obvious Python breaker: a dict of
per-node records behind a lock, as a service would write it by hand).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

NOW = 1000.0
IMPLS = ["compiled", "pure", "dict"]

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
REJECT, ADMIT, PROBE = 0, 1, 2


class DictBreaker:
    """The baseline: one mutable record per node in a dict, one lock for all writes.

    Same rules as the table (threshold, doubling capped open timeout, bounded
    probes, probe timeout), with float seconds instead of packed ticks.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        open_timeout: float = 30.0,
        max_open_timeout: float = 300.0,
        half_open_max_probes: int = 1,
        success_threshold: int = 1,
        probe_timeout: float = 10.0,
        nodes: int = 0,
    ) -> None:
        self.threshold = failure_threshold
        self.open_timeout = open_timeout
        self.max_open_timeout = max_open_timeout
        self.max_probes = half_open_max_probes
        self.needed = success_threshold
        self.probe_timeout = probe_timeout
        self.nodes: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        for _ in range(nodes):
            self.add_node()

    def __len__(self) -> int:
        return len(self.nodes)

    def add_node(self) -> int:
        slot = len(self.nodes)
        self.nodes[slot] = dict(
            state=CLOSED, failures=0, probes=0, successes=0, level=0, deadline=0.0
        )
        return slot

    def _open(self, node: dict[str, Any], at: float) -> None:
        timeout = min(self.open_timeout * 2 ** node["level"], self.max_open_timeout)
        node.update(state=OPEN, probes=0, successes=0, deadline=at + timeout)

    def _fail(self, node: dict[str, Any], at: float) -> None:
        node["failures"] += 1
        if node["state"] == CLOSED:
            if node["failures"] >= self.threshold:
                self._open(node, at)
        else:
            node["level"] = min(node["level"] + 1, 15)
            self._open(node, at)

    def _settle(self, node: dict[str, Any], now: float) -> None:
        if node["state"] == HALF_OPEN and node["probes"] > 0 and now >= node["deadline"]:
            self._fail(node, node["deadline"])

    def state(self, slot: int, now: float) -> int:
        with self.lock:
            node = dict(self.nodes[slot])
        self._settle(node, now)
        if node["state"] == OPEN and now >= node["deadline"]:
            return HALF_OPEN
        return int(node["state"])

    def allow(self, slot: int, now: float) -> int:
        with self.lock:
            node = self.nodes[slot]
            self._settle(node, now)
            if node["state"] == CLOSED:
                return ADMIT
            if node["state"] == OPEN:
                if now < node["deadline"]:
                    return REJECT
                node.update(
                    state=HALF_OPEN, probes=1, successes=0, deadline=now + self.probe_timeout
                )
                return PROBE
            if node["probes"] >= self.max_probes:
                return REJECT
            if node["probes"] == 0:
                node["deadline"] = now + self.probe_timeout
            node["probes"] += 1
            return PROBE

    def record_success(self, slot: int, now: float) -> int:
        with self.lock:
            node = self.nodes[slot]
            self._settle(node, now)
            if node["state"] == CLOSED:
                node["failures"] = 0
            elif node["state"] == HALF_OPEN:
                node["successes"] += 1
                node["failures"] = 0
                node["probes"] = max(node["probes"] - 1, 0)
                if node["successes"] >= self.needed:
                    node.update(state=CLOSED, probes=0, successes=0, level=0, deadline=0.0)
                    return 6
            return -1

    def record_failure(self, slot: int, now: float) -> int:
        with self.lock:
            node = self.nodes[slot]
            self._settle(node, now)
            before = node["state"]
            if before == OPEN:
                return -1
            self._fail(node, now)
            return -1 if node["state"] == before else before * 3 + node["state"]

    def states_into(self, now: float, out: np.ndarray) -> None:
        out[: len(self.nodes)] = [self.state(slot, now) for slot in range(len(self.nodes))]


def make_table(impl: str, **config: Any) -> Any:
    """A table of the given implementation; NotImplementedError if it cannot load."""
    if impl == "dict":
        return DictBreaker(**config)
    if impl == "pure":
        from fedgate._core import _breaker_table_py

        return _breaker_table_py.BreakerTable(**config)
    try:
        from fedgate._core import _breaker_table
    except ImportError as exc:  # asv skips a benchmark whose setup raises this
        raise NotImplementedError("the compiled core is not built") from exc
    return _breaker_table.BreakerTable(**config)


class BreakerTableSuite:
    """Admission and transitions on one slot; a bulk state read over many."""

    params = (IMPLS,)
    param_names = ("impl",)

    def setup(self, impl: str) -> None:
        self.closed = make_table(impl, nodes=1)
        self.open = make_table(impl, nodes=1, failure_threshold=1)
        self.open.record_failure(0, NOW)
        self.pair = make_table(impl, nodes=1)
        self.cycle = make_table(impl, nodes=1, failure_threshold=1, open_timeout=0.001)
        self.fleet = make_table(impl, nodes=1000, failure_threshold=1)
        for slot in range(0, 1000, 3):
            self.fleet.record_failure(slot, NOW)
        self.out = np.zeros(1000, dtype=np.int8)

    def time_allow_closed(self, impl: str) -> None:
        self.closed.allow(0, NOW)

    def time_allow_open(self, impl: str) -> None:
        self.open.allow(0, NOW + 1.0)

    def time_failure_success_pair(self, impl: str) -> None:
        self.pair.record_failure(0, NOW)
        self.pair.record_success(0, NOW)

    def time_trip_probe_close(self, impl: str) -> None:
        self.cycle.record_failure(0, NOW)
        self.cycle.allow(0, NOW + 0.001)
        self.cycle.record_success(0, NOW + 0.001)

    def time_states_into_1000(self, impl: str) -> None:
        self.fleet.states_into(NOW + 1.0, self.out)


class BreakerTableMemory:
    """Peak memory of a 100 000-node table."""

    params = (IMPLS,)
    param_names = ("impl",)

    def setup(self, impl: str) -> None:
        make_table(impl)  # fail early (NotImplementedError) when the impl cannot load

    def peakmem_100k_nodes(self, impl: str) -> None:
        make_table(impl, nodes=100_000)
