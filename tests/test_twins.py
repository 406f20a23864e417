"""The twins of each compiled component follow one spec: codes, docstrings, the C header.

Behaviour is compared by the table tests through the ``core`` fixture; this
file holds the shared parts to their one source: ``fedgate._core.codes`` for
the routing codes, ``*_spec`` for everything else, and ``breaker_atomic.h``'s
``#define``\\ s to both.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path
from typing import Any

import pytest

from fedgate._core import breaker_spec, codes, latency_spec

HEADER = Path(__file__).resolve().parents[1] / "_native" / "breaker_atomic.h"


def _header_defines() -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in re.findall(r"^#define FG_BRK_(\w+) (.+)$", HEADER.read_text(), re.M):
        # The values are C integer expressions: 2, 1023u, ((UINT64_C(1) << 36) - 1).
        expr = re.sub(r"UINT64_C\((\d+)\)", r"\1", value)
        expr = re.sub(r"(\d+)u\b", r"\1", expr)
        found[name] = int(eval(expr, {"__builtins__": {}}))  # only digits, shifts, parens
    return found


def test_the_c_header_agrees_with_codes_and_the_breaker_spec() -> None:
    defines = _header_defines()
    assert defines["CLOSED"] == codes.BREAKER_CLOSED == breaker_spec.CLOSED
    assert defines["OPEN"] == codes.BREAKER_OPEN == breaker_spec.OPEN
    assert defines["HALF_OPEN"] == codes.BREAKER_HALF_OPEN == breaker_spec.HALF_OPEN
    assert defines["FAILURES_MAX"] == breaker_spec.MAX_FAILURES
    assert defines["COUNT_MAX"] == breaker_spec.MAX_COUNT
    assert defines["LEVEL_MAX"] == breaker_spec.MAX_LEVEL
    assert defines["TICK_MAX"] == breaker_spec.TICK_MAX
    # The longest duration is the deadline field's range, in seconds.
    assert breaker_spec.MAX_DURATION == breaker_spec.TICK_MAX / 1000.0


def test_the_header_parser_reads_every_define() -> None:
    # A define the regex missed would make the test above pass vacuously.
    assert {"CLOSED", "OPEN", "HALF_OPEN", "FAILURES_MAX", "COUNT_MAX", "LEVEL_MAX",
            "TICK_MAX", "CHUNKS"} <= set(_header_defines())  # fmt: skip


SPECS = {"LatencyTable": latency_spec, "BreakerTable": breaker_spec}


@pytest.mark.parametrize("table", sorted(SPECS))
def test_both_twins_carry_the_specs_docstrings(core: types.SimpleNamespace, table: str) -> None:
    spec = SPECS[table]
    cls = getattr(core, table)
    for name, text in spec.DOCS.items():
        if name == "":
            continue
        assert inspect.getdoc(getattr(cls, name)) == inspect.cleandoc(text), name
    # A compiled class's docstring is fixed at build time (Cython puts the
    # constructor's signature first): it keeps the spec's summary line.
    summary = inspect.cleandoc(spec.DOCS[""]).splitlines()[0]
    assert summary in (inspect.getdoc(cls) or "").splitlines()


@pytest.mark.parametrize("spec", [latency_spec, breaker_spec], ids=["latency", "breaker"])
def test_both_twins_export_the_specs_names(core: types.SimpleNamespace, spec: Any) -> None:
    table = core.LatencyTable if spec is latency_spec else core.BreakerTable
    module = importlib.import_module(table.__module__)
    assert set(module.__all__) == {*spec.__all__, table.__name__}
    for name in spec.__all__:
        assert getattr(module, name) is getattr(spec, name), name
