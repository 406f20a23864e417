"""pytest-benchmark settings shared by every benchmark file.

Each benchmark measures its baseline in the same run and prints both with the
ratio, so the figure holds on a noisy two-core machine. Run them with
``pytest benchmarks -s`` (``--benchmark-disable`` runs each body once).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Benchmarks are timed work, not behaviour: keep them out of `-m "not benchmark"` runs.
    for item in items:
        item.add_marker(pytest.mark.benchmark)
