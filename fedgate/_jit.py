"""Every Numba setting fedgate uses, in one place.

Kernels are decorated with :func:`jit` and nothing else, so a change of policy
(say, turning bounds checks on while hunting a bug) is one edit here. Kernels
are compiled lazily: the decorator registers a plain ``numba.njit`` dispatcher
without a signature, which compiles on its first call, so ``import fedgate``
compiles nothing. A gateway calls :func:`warm_up` at start so the first routed
request does not pay the compile.

``NUMBA_DISABLE_JIT=1`` makes every kernel run as the plain Python function it
was written as (the test suite runs the kernels that way too);
:func:`jit_disabled` says whether that is in force.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numba

__all__ = ["JIT_OPTIONS", "KERNEL_MODULES", "jit", "jit_disabled", "kernels", "warm_up"]

F = TypeVar("F", bound=Callable[..., Any])

# Passed to numba.njit, which is always nopython: a kernel that silently fell
# back to object mode would be slower than NumPy, so a type error must fail the
# compile instead.
JIT_OPTIONS: dict[str, Any] = {
    # nogil: the gateway may score from a worker thread while the event loop
    # keeps running; the kernels touch no Python object.
    "nogil": True,
    # cache=False: an on-disk cache writes beside the sources (or into a user
    # directory when the install is read-only), races between several gateway
    # processes starting together, and can serve stale machine code after an
    # upgrade. The compile is paid once per process in warm_up() at gateway
    # start, which is cheap next to a worker's model load.
    "cache": False,
    # fastmath off: the kernels rely on IEEE NaN semantics (NaN latency means
    # "no samples yet", NaN comparisons are False), which fastmath's nnan flag
    # lets LLVM assume away; it would also let results drift from the reference.
    "fastmath": False,
    # boundscheck off: every index is < n, and the public wrappers check all
    # lengths against n before entering a kernel.
    "boundscheck": False,
    # error_model="numpy": float division by zero gives inf/NaN instead of a
    # per-division zero test raising ZeroDivisionError; the wrappers already
    # reject zero scales and all-zero weights, so the test would be dead weight
    # in the hot loop.
    "error_model": "numpy",
}

# Modules that define kernels; warm_up() imports them so their kernels register.
KERNEL_MODULES: tuple[str, ...] = ("fedgate._scoring",)

# Example arguments for warm_up(): a callable, so that nothing is built at import.
Examples = Callable[[], Sequence[tuple[Any, ...]]]

# name -> (dispatcher, its example arguments)
_REGISTRY: dict[str, tuple[Any, Examples]] = {}


def jit_disabled() -> bool:
    """Whether ``NUMBA_DISABLE_JIT`` is in force (kernels run as plain Python).

    Returns
    -------
    bool
        True when Numba read ``NUMBA_DISABLE_JIT=1`` at import.
    """
    return bool(numba.config.DISABLE_JIT)  # type: ignore[attr-defined]


def jit(*, warm: Examples | None = None, inline: bool = False) -> Callable[[F], F]:
    """Decorate a kernel or a kernel helper with fedgate's Numba settings.

    Parameters
    ----------
    warm : callable, optional
        For a kernel: returns example argument tuples with the types the
        router passes and no work to do (zero nodes). :func:`warm_up` calls
        the kernel with each. None for helpers, which compile inside their
        callers.
    inline : bool
        Inline the function into its callers at Numba IR level. The small
        per-node helpers shared by several kernels need it: left to LLVM, the
        calls stay opaque to the loop vectoriser and the score loop ran
        scalar (measured ~2× slower).

    Returns
    -------
    callable
        A decorator returning a lazy dispatcher (the function itself when
        ``NUMBA_DISABLE_JIT=1``).
    """

    def decorate(fn: F) -> F:
        options = dict(JIT_OPTIONS)
        if inline:
            options["inline"] = "always"
        # No signature given: numba.njit then compiles on first call, never here.
        dispatcher = numba.njit(**options)(fn)
        if warm is not None:
            _REGISTRY[f"{fn.__module__}.{fn.__qualname__}"] = (dispatcher, warm)
        return dispatcher

    return decorate


def kernels() -> dict[str, Any]:
    """Every registered kernel by qualified name, importing the kernel modules first.

    Returns
    -------
    dict
        ``"fedgate._scoring._score_kernel"`` → dispatcher (or plain function
        when the JIT is disabled).
    """
    for module in KERNEL_MODULES:
        importlib.import_module(module)
    return {name: entry[0] for name, entry in _REGISTRY.items()}


def warm_up() -> dict[str, float]:
    """Compile every kernel for the argument types the router passes.

    Called once at gateway start so that no request pays a compile. Each
    kernel is *called* with its example arguments rather than compiled from a
    signature: the call also primes Numba's argument-type cache, whose first
    miss costs ~30 ms (it imports ``numpy.ma``) and would otherwise land on
    the first routed request. Idempotent: a second call only re-runs the
    zero-node calls. A no-op when the JIT is disabled.

    Returns
    -------
    dict
        Seconds spent, by kernel name (about 0.0 for a kernel already warm).
    """
    kernels()
    spent: dict[str, float] = {}
    for name, (dispatcher, examples) in _REGISTRY.items():
        start = time.perf_counter()
        if not jit_disabled():
            for args in examples():
                dispatcher(*args)
        spent[name] = time.perf_counter() - start
    return spent
