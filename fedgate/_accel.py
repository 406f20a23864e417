"""The one place that chooses between the compiled core and its pure-Python twins.

Every compiled module (``fedgate._latency``, ``fedgate._breaker_table``) has a
twin with identical behaviour (``_latency_py``, ``_breaker_table_py``).
Components import the chosen classes from here and nowhere else.

``FEDGATE_NO_EXTENSIONS=1`` forces the pure path. Without it a failed import of
the compiled modules also falls back (a source checkout that was never built
still works), and ``COMPILED`` says which path won; the test suite fails a
normal install whose compiled modules did not load.

The routing kernels (:func:`routing_kernels`) are chosen the same way, lazily:
``fedgate._kernels_aot``, compiled by Numba ahead of time at install, or else
the same kernels compiled just in time from ``fedgate._kernels`` (which loads
Numba: ~70 MB and seconds of compile, or a disk-cache load, per process).
``NUMBA_DISABLE_JIT=1`` also takes the just-in-time path, where the kernels
then run as plain Python.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = [
    "COMPILED",
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
    "BreakerTable",
    "LatencyTable",
    "routing_kernels",
    "twins",
]

NO_EXTENSIONS = os.environ.get("FEDGATE_NO_EXTENSIONS", "") not in ("", "0")


def _load(compiled: bool) -> tuple[ModuleType, ModuleType]:
    if compiled:
        from . import _breaker_table, _latency

        return _latency, _breaker_table
    from . import _breaker_table_py, _latency_py

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


Kernel = Callable[..., Any]


@functools.cache
def routing_kernels() -> tuple[str, Kernel, Kernel]:
    """(how, score kernel, components kernel) for the router; ``how`` is "aot" or "jit".

    Both pairs take the same arguments and give bit-identical results (see
    :mod:`fedgate._kernels`); the ahead-of-time pair skips Numba's per-call
    type dispatch too (~0.3 µs a call against ~2 µs).
    """
    jit_off = os.environ.get("NUMBA_DISABLE_JIT", "") not in ("", "0")
    if not NO_EXTENSIONS and not jit_off:
        try:
            from . import _kernels_aot
        except ImportError:
            pass
        else:
            return "aot", _kernels_aot.score, _kernels_aot.components
    from . import _kernels

    return "jit", _kernels._score_kernel, _kernels._components_kernel
