"""Which routing kernels run: compiled ahead of time at install, or just in time.

``fedgate.routing._kernels_aot`` is the Numba source of :mod:`fedgate.routing._kernels`
compiled by ``pycc`` when fedgate is installed (``_native/build_kernels_aot.py``);
without it (``FEDGATE_NO_EXTENSIONS=1``, ``NUMBA_DISABLE_JIT=1``, or a build that
skipped the step) the same functions are compiled just in time, which loads
Numba (~70 MB and seconds of compile, or a disk-cache load, per process).
``NUMBA_DISABLE_JIT=1`` runs them as plain Python.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from fedgate._core import NO_EXTENSIONS

__all__ = ["Kernel", "routing_kernels"]

Kernel = Callable[..., Any]


@functools.cache
def routing_kernels() -> tuple[str, Kernel, Kernel]:
    """(how, score kernel, components kernel) for the router; ``how`` is "aot" or "jit".

    Both pairs take the same arguments and give bit-identical results (see
    :mod:`fedgate.routing._kernels`); the ahead-of-time pair skips Numba's per-call
    type dispatch too (~0.3 µs a call against ~2 µs).
    """
    jit_off = os.environ.get("NUMBA_DISABLE_JIT", "") not in ("", "0")
    if not NO_EXTENSIONS and not jit_off:
        try:
            from fedgate.routing import _kernels_aot
        except ImportError:
            pass
        else:
            return "aot", _kernels_aot.score, _kernels_aot.components
    from fedgate.routing import _kernels

    return "jit", _kernels._score_kernel, _kernels._components_kernel
