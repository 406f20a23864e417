"""Model backends a worker can serve, by name.

Built in: ``synthetic`` (deterministic tokens, timing and faults: what tests
and benchmarks use), ``openai`` (any OpenAI-compatible server, streaming) and
``python`` (a user's ``module:function``). Each is imported only when asked
for, so a worker never loads an HTTP client unless it proxies.

>>> from fedgate.worker.backends import create_backend
>>> backend = create_backend("synthetic", tokens=4, token_rate=100.0)

:func:`register_backend` adds a backend under a new name (a factory taking
keyword options and returning a :class:`Backend`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from fedgate.worker.backends.base import (
    Backend,
    BackendRequest,
    backend_failure,
    bad_input,
    unsupported,
)

__all__ = [
    "BUILTIN_BACKENDS",
    "Backend",
    "BackendFactory",
    "BackendRequest",
    "backend_failure",
    "backend_names",
    "bad_input",
    "create_backend",
    "register_backend",
    "unsupported",
]

BackendFactory = Callable[..., Backend]
"""Builds a backend from keyword options: ``factory(**options) -> Backend``."""

BUILTIN_BACKENDS: Mapping[str, str] = {
    "synthetic": "fedgate.worker.backends.synthetic",
    "openai": "fedgate.worker.backends.openai",
    "python": "fedgate.worker.backends.python",
}
"""Built-in backend names and the module whose ``create(**options)`` builds each."""

_registered: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``factory`` available as backend ``name`` (replacing a registration of that name).

    Built-in names cannot be replaced.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend name: expected a non-empty str, got {name!r}")
    if name in BUILTIN_BACKENDS:
        raise ValueError(f"backend name: {name!r} is built in and cannot be replaced")
    if not callable(factory):
        raise TypeError(f"backend factory: expected a callable, got {factory!r}")
    _registered[name] = factory


def backend_names() -> list[str]:
    """Every backend name that :func:`create_backend` accepts."""
    return [*BUILTIN_BACKENDS, *sorted(_registered)]


def get_factory(name: str) -> BackendFactory:
    """The factory of backend ``name``; raises ``ValueError`` naming the known ones."""
    if name in BUILTIN_BACKENDS:
        module = importlib.import_module(BUILTIN_BACKENDS[name])
        factory: BackendFactory = module.create
        return factory
    try:
        return _registered[name]
    except KeyError:
        raise ValueError(
            f"backend: expected one of {', '.join(backend_names())}, got {name!r}"
        ) from None


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend ``name`` with keyword ``options``.

    Raises
    ------
    ValueError
        Unknown name, or options the backend rejects (the message names the option).
    """
    return get_factory(name)(**options)
