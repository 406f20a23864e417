"""Subscriptions shared by the catalog and the per-node slots (health, breaker: ``_slots``).

Each keeps a plain list of listeners that it calls synchronously, in order,
under its own lock; this module only owns adding one and the handle that
removes it, so the three cannot drift apart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["add_listener"]

L = TypeVar("L", bound=Callable[..., object])


def add_listener(
    listeners: list[L], listener: L, lock: threading.RLock | threading.Lock
) -> Callable[[], None]:
    """Append ``listener`` under ``lock``; return a function that removes it (idempotent).

    Raises ``TypeError`` for a listener that is not callable.
    """
    if not callable(listener):
        raise TypeError(f"listener: expected a callable, got {listener!r}")
    with lock:
        listeners.append(listener)

    def unsubscribe() -> None:
        with lock:
            if listener in listeners:
                listeners.remove(listener)

    return unsubscribe
