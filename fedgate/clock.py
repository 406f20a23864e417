"""Injectable time: every time-dependent component takes ``clock=``.

A clock is any callable returning monotonic seconds as a float. Production
code uses :func:`time.monotonic`; tests drive a :class:`ManualClock` so that
breaker and health boundaries are asserted exactly, without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

__all__ = ["Clock", "ManualClock", "monotonic", "to_seconds"]

Clock = Callable[[], float]

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock that moves only when told to.

    Parameters
    ----------
    start : float
        The initial reading, in seconds.
    """

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float | timedelta) -> float:
        """Move forward by ``seconds`` and return the new reading."""
        step = to_seconds(seconds, "seconds")
        if step < 0:
            raise ValueError(f"a clock only moves forward: expected seconds >= 0, got {step!r}")
        self.now += step
        return self.now


def to_seconds(value: float | timedelta, name: str) -> float:
    """Turn a duration given as float seconds or a ``timedelta`` into float seconds.

    Raises ``TypeError`` for anything else, naming ``name``; range checks are
    the caller's (each config knows its own bounds).
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected seconds as a number or timedelta, got {value!r}")
    return float(value)
