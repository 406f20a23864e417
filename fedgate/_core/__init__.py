"""The one place that chooses between the compiled core and its pure-Python twins.

Every compiled module (``fedgate._core._latency``, ``fedgate._core._breaker_table``) has a
twin with identical behaviour (``_latency_py``, ``_breaker_table_py``). What both
twins share (codes, limits, defaults, argument checks, error texts, docstrings)
is in one spec per component (``latency_spec``, ``breaker_spec``), so the twins
differ only in how they apply the rules. Components import the chosen classes
from here and nowhere else.

``FEDGATE_NO_EXTENSIONS=1`` forces the pure path. Without it a failed import of
the compiled modules also falls back (a source checkout that was never built
still works), and ``COMPILED`` says which path won; the test suite fails a
normal install whose compiled modules did not load.

The routing kernels are chosen the same way by :mod:`fedgate.routing.kernels`.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

__all__ = [
    "COMPILED",
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "BreakerTable",
    "LatencyTable",
    "twins",
]

NO_EXTENSIONS = os.environ.get("FEDGATE_NO_EXTENSIONS", "") not in ("", "0")


def _load(compiled: bool) -> tuple[ModuleType, ModuleType]:
    if compiled:
        from fedgate._core import _breaker_table, _latency

        return _latency, _breaker_table
    from fedgate._core import _breaker_table_py, _latency_py

    return _latency_py, _breaker_table_py


def twins() -> dict[str, tuple[ModuleType, ModuleType]]:
    """Both implementations that can load here, by name ("compiled", "pure")."""
    found = {"pure": _load(False)}
    with contextlib.suppress(ImportError):
        found["compiled"] = _load(True)
    return found


COMPILED = False
if not NO_EXTENSIONS:
    try:
        _lat, _brk = _load(True)
        COMPILED = True
    except ImportError:
        _lat, _brk = _load(False)
else:
    _lat, _brk = _load(False)

IMPLEMENTATION = "compiled" if COMPILED else "pure"
LatencyTable = _lat.LatencyTable
BreakerTable = _brk.BreakerTable
