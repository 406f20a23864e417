"""Per-node slots, growth and listeners shared by the health checker and the circuit breaker.

Both keep, for every node they have seen, one slot in a core table
(``LatencyTable``, ``BreakerTable``) and in a few NumPy arrays that the router
gathers in bulk::

    node id ──slot()──► s ──► core table row s, arrays[s], per-node lists[s]

:class:`NodeSlots` owns what they share: the node → slot map (slots are never
reused, so a router can keep them), registration (check the id, add the
table's row, grow the arrays by doubling, let the subclass append its
per-node values), the injected clock and config, the version a router
compares, and the listeners, called synchronously, in order, under the
component's lock. The subclass owns the rules: what a report or an admission
does to a slot, and what an event says.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from fedgate.clock import Clock
from fedgate.federation._listeners import add_listener
from fedgate.types import NodeId

__all__ = ["NodeSlots", "checked_clock", "checked_config", "optional"]

C = TypeVar("C")
E = TypeVar("E")

_INITIAL_CAPACITY = 16


def checked_config(config: C | None, kind: type[C]) -> C:
    """``config``, or ``kind()`` when None; TypeError for anything else."""
    if config is None:
        return kind()
    if not isinstance(config, kind):
        raise TypeError(f"config: expected a {kind.__name__}, got {config!r}")
    return config


def checked_clock(clock: Clock) -> Clock:
    if not callable(clock):
        raise TypeError(f"clock: expected a callable returning seconds, got {clock!r}")
    return clock


def optional(x: float) -> float | None:
    """None for NaN (the tables' "no value"), else ``x``."""
    return None if math.isnan(x) else x


class NodeSlots(Generic[C, E]):
    """Node ids mapped to the slots of a core table, with bulk arrays and listeners.

    Subclasses make their per-slot arrays with :meth:`_array` (they grow
    together), name their table in ``_TABLE`` for errors, and append their
    per-node list values in :meth:`_add_slot`.
    """

    _TABLE: ClassVar[str]

    def __init__(self, config: C, clock: Clock, table: Any) -> None:
        self._config = config
        self._clock = clock
        self._table = table
        self._lock = threading.RLock()
        self._slots: dict[NodeId, int] = {}
        self._ids: list[NodeId] = []
        self._capacity = _INITIAL_CAPACITY
        self._fills: dict[str, Any] = {}
        self._version = 0
        self._listeners: list[Callable[[E], None]] = []

    @property
    def config(self) -> C:
        """The thresholds in force."""
        return self._config

    @property
    def clock(self) -> Clock:
        """The clock every time-dependent decision reads."""
        return self._clock

    @property
    def version(self) -> int:
        """Bumped whenever any node's observed state changes."""
        return self._version

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node: object) -> bool:
        return node in self._slots

    def nodes(self) -> list[NodeId]:
        """Every registered node, in registration order."""
        return list(self._ids)

    def subscribe(self, listener: Callable[[E], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on every transition, in order.

        Listeners run synchronously under the component's lock: keep them
        short (count, log, schedule) and do not report outcomes from inside one.

        Returns
        -------
        callable
            Call it to unsubscribe.
        """
        return add_listener(self._listeners, listener, self._lock)

    def _notify(self, event: E) -> None:
        for listener in tuple(self._listeners):
            listener(event)

    def slot(self, node: NodeId, *, create: bool = True) -> int:
        """The node's slot in the core table and the bulk arrays (:attr:`codes`).

        Registers an unknown node when ``create`` (else returns -1). Slots are
        never reused, so a router can keep them.
        """
        s = self._slots.get(node)
        if s is not None:
            return s
        if not create:
            return -1
        if not isinstance(node, str) or not node:
            raise ValueError(f"node: expected a non-empty node id, got {node!r}")
        with self._lock:
            s = self._slots.get(node)
            if s is not None:
                return s
            s = self._table.add_node()
            if s != len(self._ids):
                raise RuntimeError(
                    f"{self._TABLE} slot {s} out of step with {len(self._ids)} nodes"
                )
            if s == self._capacity:
                self._grow()
            node = NodeId(node)
            self._ids.append(node)
            self._add_slot()
            self._slots[node] = s
            return s

    def _array(self, name: str, dtype: Any, fill: Any) -> npt.NDArray[Any]:
        """A per-slot array for attribute ``name``, grown with the others; ``fill``: fresh slots."""
        self._fills[name] = fill
        return np.full(self._capacity, fill, dtype=dtype)

    def _add_slot(self) -> None:
        """Append a fresh slot's value to every per-node list."""

    def _grow(self) -> None:
        cap = self._capacity * 2
        for name, fill in self._fills.items():
            old = getattr(self, name)
            new = np.full(cap, fill, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self._capacity = cap
