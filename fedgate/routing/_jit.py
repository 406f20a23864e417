"""Every Numba setting fedgate uses, in one place.

Kernels are decorated with :func:`jit` and nothing else, so a change of policy
(say, turning bounds checks on while hunting a bug) is one edit here. Kernels
are compiled lazily: the decorator registers a plain ``numba.njit`` dispatcher
without a signature, which compiles on its first call, so ``import fedgate``
compiles nothing. A gateway calls :func:`warm_up` at start so the first routed
request does not pay the compile; warm_up loads the kernels from Numba's
on-disk cache when an earlier process compiled them (see ``JIT_OPTIONS``).

``NUMBA_DISABLE_JIT=1`` makes every kernel run as the plain Python function it
was written as (the test suite runs the kernels that way too);
:func:`jit_disabled` says whether that is in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numba
from numba.core.caching import FunctionCache

__all__ = ["JIT_OPTIONS", "KERNEL_MODULES", "jit", "jit_disabled", "kernels", "warm_up"]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("fedgate.jit")

# Passed to numba.njit (all but "cache", which warm_up() applies), which is
# always nopython: a kernel that silently fell back to object mode would be
# slower than NumPy, so a type error must fail the compile instead.
JIT_OPTIONS: dict[str, Any] = {
    # nogil: the gateway may score from a worker thread while the event loop
    # keeps running; the kernels touch no Python object.
    "nogil": True,
    # cache=True: compiling the kernels costs ~4 s of every gateway start and
    # leaves ~70 MB of LLVM state in the process for good; loading the machine
    # code from Numba's on-disk cache costs ~0.2 s and ~25 MB less RSS. What
    # kept the cache off is handled, by Numba (0.68, numba/core/caching.py) or
    # by _KernelCache below:
    # - staleness: Numba drops the whole index when the source file's content
    #   hash or the Numba version differs (an upgrade recompiles), and keys
    #   each entry by signature, CPU name and features, bytecode and Python
    #   version. It does not key by the options given here or NUMBA_* codegen
    #   settings (a kernel compiled without boundscheck would be served to a
    #   process that asked for it): _KernelCache adds a digest of those and of
    #   this file to the key.
    # - concurrent gateway starts: every file is written to a unique temporary
    #   name and os.replace()d, so a reader sees an old file or a whole new
    #   one; at worst two processes both compile and the last write wins.
    # - where it writes: $NUMBA_CACHE_DIR if set and writable, else
    #   __pycache__ beside the source, else (read-only install) the user cache
    #   directory ($XDG_CACHE_HOME/numba or ~/.cache/numba). With none
    #   writable Numba raises RuntimeError instead of compiling in memory, and
    #   a cache file that cannot be read or written fails the kernel's call:
    #   _cache_on_disk() and _KernelCache turn both into an in-memory compile
    #   and a log warning.
    # - import writes nothing: numba.njit(cache=True) probes (creates) the
    #   directory when decorating, i.e. at import, so jit() leaves the cache
    #   off and warm_up() turns it on, for kernels only (helpers are inlined
    #   into a kernel and cached with it). A kernel called without warm_up()
    #   compiles in memory as before.
    "cache": True,
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
KERNEL_MODULES: tuple[str, ...] = ("fedgate.routing._kernels",)

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
        # warm_up() enables the cache: see the "cache" entry of JIT_OPTIONS.
        options["cache"] = False
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
        ``"fedgate.routing._kernels._score_kernel"`` → dispatcher (or plain function
        when the JIT is disabled).
    """
    for module in KERNEL_MODULES:
        importlib.import_module(module)
    return {name: entry[0] for name, entry in _REGISTRY.items()}


def warm_up() -> dict[str, float]:
    """Compile every kernel for the argument types the router passes.

    Called once at gateway start so that no request pays a compile. With
    ``JIT_OPTIONS["cache"]`` each kernel first gets Numba's on-disk cache, so
    a kernel an earlier process compiled is loaded instead (~0.2 s for both
    instead of ~4 s), and one compiled here is saved; a cache that cannot be
    used only costs the compile. Each kernel is *called* with its example
    arguments rather than compiled from a signature: the call also primes
    Numba's argument-type cache, whose first miss costs ~30 ms (it imports
    ``numpy.ma``) and would otherwise land on the first routed request.
    Idempotent: a second call only re-runs the zero-node calls. A no-op when
    the JIT is disabled.

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
            if JIT_OPTIONS["cache"]:
                _cache_on_disk(name, dispatcher)
            for args in examples():
                dispatcher(*args)
        spent[name] = time.perf_counter() - start
    return spent


# Numba settings that change the machine code a kernel compiles to (they come
# from NUMBA_* environment variables) and that Numba's cache key leaves out.
_CODEGEN_CONFIG = (
    "OPT", "BOUNDSCHECK", "LOOP_VECTORIZE", "SLP_VECTORIZE", "ENABLE_AVX", "DEBUGINFO_DEFAULT",
)  # fmt: skip

# Kernels whose cache warm_up() has already set up (or failed to): it logs once.
_CACHE_TRIED: set[str] = set()


def _settings_digest(dispatcher: Any) -> str:
    """What shapes a kernel's machine code besides its own source file and Numba."""
    digest = hashlib.sha256()
    # This file: a change to how jit() builds a kernel or its helpers.
    with contextlib.suppress(OSError):
        digest.update(Path(__file__).read_bytes())
    digest.update(repr(sorted(dispatcher.targetoptions.items())).encode())
    for key in _CODEGEN_CONFIG:
        digest.update(f"{key}={getattr(numba.config, key, None)!r};".encode())
    return digest.hexdigest()[:16]


class _KernelCache(FunctionCache):
    """Numba's per-function disk cache, keyed by fedgate's settings too, never fatal.

    A cache is a start-up optimisation: a file it cannot read or write (a
    full disk, a directory made read-only after the start, a file truncated
    by hand) must cost a compile, never the gateway's start, so every failure
    here is logged and treated as a miss.
    """

    def __init__(self, py_func: Callable[..., Any], settings: str) -> None:
        self._settings = settings
        super().__init__(py_func)

    def _index_key(self, sig: Any, codegen: Any) -> tuple[Any, ...]:
        return (*super()._index_key(sig, codegen), self._settings)

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            return super().load_overload(sig, target_context)
        except Exception:
            log.warning("unreadable Numba cache in %s; compiling instead", self.cache_path,
                        exc_info=True)  # fmt: skip
            # An empty index lets this process's compile replace the bad entry
            # instead of every later start failing on it again.
            with contextlib.suppress(Exception):
                self.flush()
            return None

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)
        except Exception:
            log.warning("could not write the Numba cache in %s; the kernel stays compiled in "
                        "memory", self.cache_path, exc_info=True)  # fmt: skip


def _cache_on_disk(name: str, dispatcher: Any) -> None:
    """Give a kernel's dispatcher the on-disk cache (what ``enable_caching()`` does)."""
    if name in _CACHE_TRIED:
        return
    _CACHE_TRIED.add(name)
    try:
        cache = _KernelCache(dispatcher.py_func, _settings_digest(dispatcher))
    except Exception as exc:  # a cache must never cost the start
        # RuntimeError: Numba found no writable cache directory.
        log.warning("%s: no usable Numba cache, compiling in memory (%s)", name, exc)
        return
    dispatcher._cache = cache
