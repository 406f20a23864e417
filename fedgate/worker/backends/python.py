"""The python backend: serve a user's ``module:function``.

The callable receives the input bytes as its first argument, plus any of the
keywords ``request_id``, ``tenant``, ``capability``, ``model``,
``resume_from`` and ``stream`` that it declares (or all of them if it takes
``**kwargs``). It may be:

- a plain function returning ``bytes``/``str`` (one token) or an iterable of
  tokens (a list, a generator …). It runs in a worker thread, so a slow model
  call never stops the worker's heartbeats; tokens a generator produced while
  the event loop was busy arrive together as one chunk;
- an ``async def`` returning ``bytes``/``str`` or a list of tokens;
- an async generator yielding tokens or lists of tokens (chunks).

Tokens are ``bytes`` or ``str`` (UTF-8 encoded). A ``ValueError`` from the
callable is the caller's bad input; a :class:`fedgate.errors.WorkerError`
keeps its code; anything else is a ``backend`` failure.

The backend is resumable if the callable declares a ``resume_from``
parameter: it promises then to produce, from that index, exactly the tokens an
uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import importlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fedgate.errors import WorkerError
from fedgate.worker.backends.base import BackendRequest, backend_failure, bad_input

__all__ = ["PythonBackend", "add_arguments", "create", "load_callable", "options_from_args"]

_KEYWORDS = ("request_id", "tenant", "capability", "model", "resume_from", "stream")


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (``module:Class.method`` works too).

    Raises
    ------
    ValueError
        The spec is malformed, the module cannot be imported, or the attribute
        is missing or not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"callable: expected module:function, got {spec!r}")
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"callable: expected module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise ValueError(f"callable: cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"callable: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"callable: expected a callable at {spec!r}, got {type(obj).__name__}")
    return obj


def _as_token(item: Any) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    raise backend_failure(
        f"python backend: expected bytes or str tokens, got {type(item).__name__}"
    )


def _as_tokens(result: Any) -> list[bytes]:
    """A return value as a list of tokens: one token for bytes/str, else each item."""
    if isinstance(result, (bytes, str, bytearray, memoryview)):
        return [_as_token(result)]
    if result is None:
        return []
    try:
        items = iter(result)
    except TypeError:
        raise backend_failure(
            "python backend: expected bytes, str or an iterable of tokens, "
            f"got {type(result).__name__}"
        ) from None
    return [_as_token(item) for item in items]


class PythonBackend:
    """Serve a Python callable (function, coroutine function or async generator).

    Parameters
    ----------
    func : callable or str
        The callable, or ``"module:function"`` to import.
    threads : int
        Threads for plain (blocking) functions.
    """

    def __init__(self, func: Callable[..., Any] | str, threads: int = 32) -> None:
        self.spec = func if isinstance(func, str) else getattr(func, "__qualname__", repr(func))
        self.func: Callable[..., Any] = load_callable(func) if isinstance(func, str) else func
        if not callable(self.func):
            raise ValueError(f"callable: expected a callable, got {type(self.func).__name__}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an int >= 1, got {threads!r}")
        self.threads = threads
        target = inspect.unwrap(self.func)
        self._asyncgen = inspect.isasyncgenfunction(target)
        self._coroutine = inspect.iscoroutinefunction(target)
        try:
            params = inspect.signature(self.func).parameters
        except (TypeError, ValueError):  # some builtins have no signature: input only
            params = {}  # type: ignore[assignment]
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._keywords = tuple(k for k in _KEYWORDS if takes_all or k in params)
        self.resumable = "resume_from" in params
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        kind = "asyncgen" if self._asyncgen else "async" if self._coroutine else "sync"
        return f"PythonBackend({self.spec!r}, kind={kind}, resumable={self.resumable})"

    def _call(self, req: BackendRequest) -> functools.partial[Any]:
        kwargs = {k: getattr(req, k) for k in self._keywords}
        return functools.partial(self.func, req.input, **kwargs)

    async def generate(self, req: BackendRequest) -> AsyncIterator[list[bytes]]:
        """Run the callable for ``req`` and yield its tokens as chunks."""
        call = self._call(req)
        try:
            if self._asyncgen:
                async for item in call():
                    chunk = _as_tokens(item)
                    if chunk:
                        yield chunk
            elif self._coroutine:
                chunk = _as_tokens(await call())
                if chunk:
                    yield chunk
            else:
                async for chunk in self._in_thread(call):
                    yield chunk
        except WorkerError:
            raise
        except ValueError as exc:
            raise bad_input(f"python backend: {self.spec}: {exc}") from exc
        except Exception as exc:
            raise backend_failure(
                f"python backend: {self.spec}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _in_thread(self, call: Callable[[], Any]) -> AsyncIterator[list[bytes]]:
        """Run a blocking callable and iterate its result in a thread; yield tokens as they come."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="fedgate-python")
        loop = asyncio.get_running_loop()
        ready: collections.deque[bytes] = collections.deque()
        wake = asyncio.Event()
        stop = threading.Event()
        outcome: list[BaseException] = []
        # ``signalled`` coalesces wake-ups: one call_soon_threadsafe per batch of
        # tokens, not per token. The thread appends before it checks the flag and
        # the loop clears the flag before it drains, so no token is ever stranded.
        state = {"signalled": False}

        def signal() -> None:
            if not state["signalled"]:
                state["signalled"] = True
                loop.call_soon_threadsafe(wake.set)

        def work() -> None:
            try:
                result = call()
                if isinstance(result, (bytes, str, bytearray, memoryview)) or result is None:
                    ready.extend(_as_tokens(result))
                else:
                    items: Iterable[Any] = result
                    for item in items:
                        if stop.is_set():
                            break
                        ready.append(_as_token(item))
                        signal()
            except BaseException as exc:  # handed to the event loop, re-raised there
                outcome.append(exc)
            finally:
                outcome.append(StopIteration())
                state["signalled"] = False
                signal()

        loop.run_in_executor(self._executor, work)  # work() never raises: no result to collect
        try:
            while True:
                await wake.wait()
                wake.clear()
                state["signalled"] = False
                chunk: list[bytes] = []
                while ready:
                    chunk.append(ready.popleft())
                if chunk:
                    yield chunk
                if outcome and not ready:
                    break
            if not isinstance(outcome[0], StopIteration):
                raise outcome[0]
        finally:
            stop.set()  # a cancelled request stops the iteration at its next token

    async def aclose(self) -> None:
        """Stop the thread pool (running calls finish in the background)."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False, cancel_futures=True)


def create(**options: Any) -> PythonBackend:
    """Build a :class:`PythonBackend` from keyword options (the registry's factory)."""
    return PythonBackend(**options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--backend python`` options to the worker's parser."""
    group = parser.add_argument_group(
        "python backend (--backend python)",
        "Serve a Python callable: a function (run in a thread), an async function or an "
        "async generator. It gets the input bytes and returns or yields tokens.",
    )
    group.add_argument(
        "--callable",
        dest="callable",
        default=None,
        metavar="MODULE:FUNCTION",
        help="the callable to serve (required), e.g. --callable mypkg.models:generate",
    )


OPTION_FLAGS: dict[str, str] = {"callable": "--callable"}


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The factory's keyword options from parsed flags."""
    if not args.callable:
        raise ValueError("argument --callable: required with --backend python")
    return {"func": args.callable}
