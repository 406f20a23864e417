"""Shared fixtures: every behavioural test of the core runs on both implementations."""

from __future__ import annotations

import types

import pytest

from fedgate import _core


@pytest.fixture(params=["compiled", "pure"])
def core(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    """The compiled core or its pure-Python twin, with the same names.

    ``core.LatencyTable``, ``core.BreakerTable``; ``core.name`` says which.
    """
    found = _core.twins()
    if request.param not in found:
        if _core.NO_EXTENSIONS:
            pytest.skip("FEDGATE_NO_EXTENSIONS=1: compiled core disabled")
        pytest.fail("the compiled core did not load; run `pip install -e .` to build it")
    latency, breaker = found[request.param]
    return types.SimpleNamespace(
        name=request.param, LatencyTable=latency.LatencyTable, BreakerTable=breaker.BreakerTable
    )
