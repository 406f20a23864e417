"""asv: the latency table (record, percentiles, all nodes) beside numpy on the same data.

The table is the one ``fedgate._core`` chose (normally the compiled core).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedgate._core import LatencyTable

TRIPLE = [50, 95, 99]


def latencies(n: int, seed: int = 0) -> np.ndarray:
    # Latency-like: log-normal around 50 ms with a long tail.
    return np.random.default_rng(seed).lognormal(np.log(0.05), 0.6, n)


class LatencyWindow:
    """One node's full window, for each window size."""

    params: ClassVar[list[int]] = [64, 1024, 8192]
    param_names: ClassVar[list[str]] = ["window"]

    def setup(self, window: int) -> None:
        self.table = LatencyTable(window=window, nodes=1)
        self.table.record_many(0, latencies(window))
        self.samples = self.table.samples(0)

    def time_record(self, window: int) -> None:
        self.table.record(0, 0.045)

    def time_percentiles(self, window: int) -> None:
        self.table.percentiles(0)

    def time_percentile_p99(self, window: int) -> None:
        self.table.percentile(0, 99.0)

    def time_numpy_percentile(self, window: int) -> None:
        np.percentile(self.samples, TRIPLE)


class AllNodes:
    """p50/p95/p99 of every node in one call, against numpy over the same matrix."""

    params: ClassVar[list[int]] = [100, 1000, 10000]
    param_names: ClassVar[list[str]] = ["nodes"]
    timeout = 120

    def setup(self, nodes: int) -> None:
        self.table = LatencyTable(window=1024, nodes=nodes)
        for slot in range(nodes):
            self.table.record_many(slot, latencies(1024, slot))
        self.matrix = np.stack([self.table.samples(slot) for slot in range(nodes)])
        self.out = np.empty((nodes, 3))

    def time_all_percentiles(self, nodes: int) -> None:
        self.table.all_percentiles(self.out)

    def time_numpy_percentile_axis1(self, nodes: int) -> None:
        np.percentile(self.matrix, TRIPLE, axis=1)


class Memory:
    """Peak memory of 10 000 nodes with full 1024-sample windows (80 MiB of samples)."""

    timeout = 120

    def setup(self) -> None:
        self.block = latencies(1024)

    def peakmem_10000_nodes(self) -> None:
        table = LatencyTable(window=1024, nodes=10000)
        for slot in range(10000):
            table.record_many(slot, self.block)

    def peakmem_10000_nodes_added_one_by_one(self) -> None:
        # Growth by doubling: the last realloc briefly holds old and new blocks.
        table = LatencyTable(window=1024)
        for _ in range(10000):
            table.record_many(table.add_node(), self.block)

    def peakmem_numpy_matrix_baseline(self) -> None:
        matrix = np.empty((10000, 1024))
        matrix[:] = self.block
