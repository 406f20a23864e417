"""The per-request lifecycle state machine (SPEC §2 Gateway, the case study's diagram).

::

    INITIALIZING ─model_registered─► READY ─inference_requested─► ROUTING
    ROUTING ─node_selected─► INFERRING        ROUTING ─no_nodes_available─► FAILED
    INFERRING ─► STREAMING | COMPLETED | FAILED | RETRYING
    STREAMING ─► COMPLETED | READY (response sent) | FAILED | RETRYING (resume)
    RETRYING ─► ROUTING | FAILED (deadline or retry budget spent while backing off)
    COMPLETED ─response_sent─► READY          FAILED ─► READY

Anything else (``INITIALIZING → INFERRING``, ``FAILED → INFERRING``,
``STREAMING → ROUTING`` …) raises :class:`InvalidTransitionError`.

The gateway creates one :class:`RequestLifecycle` per request, so a transition
is one table lookup and a bit test: the allowed moves are precomputed as a
bitmask per state, indexed by the state's integer value.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import NamedTuple

from fedgate.clock import Clock

__all__ = [
    "ALLOWED_TRANSITIONS",
    "InvalidTransitionError",
    "RequestLifecycle",
    "RequestState",
    "TraceStep",
    "TransitionHook",
]


class RequestState(enum.IntEnum):
    """Where one request is in its lifecycle."""

    INITIALIZING = 0
    READY = 1
    ROUTING = 2
    INFERRING = 3
    STREAMING = 4
    COMPLETED = 5
    FAILED = 6
    RETRYING = 7

    def __str__(self) -> str:
        return self.name


_S = RequestState

ALLOWED_TRANSITIONS: frozenset[tuple[RequestState, RequestState]] = frozenset(
    {
        (_S.INITIALIZING, _S.READY),
        (_S.READY, _S.ROUTING),
        (_S.ROUTING, _S.INFERRING),
        (_S.ROUTING, _S.FAILED),
        (_S.INFERRING, _S.STREAMING),
        (_S.INFERRING, _S.COMPLETED),
        (_S.INFERRING, _S.FAILED),
        (_S.INFERRING, _S.RETRYING),
        (_S.STREAMING, _S.COMPLETED),
        (_S.STREAMING, _S.READY),
        (_S.STREAMING, _S.FAILED),
        # A stream whose node died after the first token resumes elsewhere.
        (_S.STREAMING, _S.RETRYING),
        (_S.RETRYING, _S.ROUTING),
        # The deadline (or the retry budget) can run out during the backoff
        # itself; going through ROUTING just to fail would lie in the trace.
        (_S.RETRYING, _S.FAILED),
        (_S.COMPLETED, _S.READY),
        (_S.FAILED, _S.READY),
    }
)
"""Every allowed ``(from, to)`` pair."""

# Bit ``to`` of _ALLOWED_MASK[from] is set when from → to is allowed.
_ALLOWED_MASK: tuple[int, ...] = tuple(
    sum(1 << dst for (src, dst) in ALLOWED_TRANSITIONS if src == state) for state in RequestState
)
_STATES: tuple[RequestState, ...] = tuple(RequestState)


class InvalidTransitionError(ValueError):
    """A lifecycle move the state machine forbids (names both states)."""

    def __init__(self, old: RequestState, new: RequestState, request_id: str = "") -> None:
        allowed = ", ".join(s.name for s in _STATES if _ALLOWED_MASK[old] >> s & 1) or "none"
        who = f"request {request_id!r}: " if request_id else ""
        super().__init__(
            f"{who}invalid transition {old.name} -> {new.name}: "
            f"expected one of {allowed} after {old.name}"
        )
        self.old = old
        self.new = new


class TraceStep(NamedTuple):
    """One step of a request's path: the state entered and when (clock seconds)."""

    state: RequestState
    at: float


TransitionHook = Callable[[str, RequestState, RequestState, float], None]
"""``hook(request_id, old, new, at)``, called after every transition."""


class RequestLifecycle:
    """One request's state, its trace, and an optional hook.

    Parameters
    ----------
    request_id : str
        Shown in errors and passed to the hook.
    clock : callable
        Monotonic seconds (default :func:`time.monotonic`).
    hook : callable, optional
        ``hook(request_id, old, new, at)`` after every transition (stats,
        dashboard, tests). An exception from the hook propagates: the
        transition itself has already happened.
    start : RequestState
        The initial state (``READY`` for a gateway whose models are
        registered; ``INITIALIZING`` to trace the whole diagram).
    trace : bool
        Record every step in :attr:`trace` (on by default; the gateway may
        turn it off when nothing reads it).
    """

    __slots__ = ("_clock", "_hook", "_state", "_trace", "request_id")

    def __init__(
        self,
        request_id: str = "",
        *,
        clock: Clock = time.monotonic,
        hook: TransitionHook | None = None,
        start: RequestState = RequestState.INITIALIZING,
        trace: bool = True,
    ) -> None:
        if not isinstance(start, RequestState):
            raise TypeError(f"start: expected a RequestState, got {start!r}")
        self.request_id = request_id
        self._clock = clock
        self._hook = hook
        self._state = start
        self._trace: list[TraceStep] | None = [TraceStep(start, clock())] if trace else None

    @property
    def state(self) -> RequestState:
        """The current state."""
        return self._state

    @property
    def trace(self) -> list[TraceStep]:
        """Every state entered, in order, with its time (empty when tracing is off)."""
        return list(self._trace) if self._trace is not None else []

    @property
    def done(self) -> bool:
        """True in COMPLETED or FAILED (the request has its outcome)."""
        return self._state is RequestState.COMPLETED or self._state is RequestState.FAILED

    def can(self, new: RequestState) -> bool:
        """Whether ``new`` may follow the current state."""
        if type(new) is not RequestState:
            raise TypeError(f"state: expected a RequestState, got {new!r}")
        return bool(_ALLOWED_MASK[self._state] >> new & 1)

    def to(self, new: RequestState) -> RequestState:
        """Move to ``new``.

        Parameters
        ----------
        new : RequestState
            The next state.

        Returns
        -------
        RequestState
            The state left.

        Raises
        ------
        InvalidTransitionError
            When the move is not allowed; the state is unchanged.
        """
        old = self._state
        if type(new) is not RequestState:
            raise TypeError(f"state: expected a RequestState, got {new!r}")
        if not (_ALLOWED_MASK[old] >> new & 1):
            raise InvalidTransitionError(old, new, self.request_id)
        self._state = new
        if self._trace is not None or self._hook is not None:
            at = self._clock()
            if self._trace is not None:
                self._trace.append(TraceStep(new, at))
            if self._hook is not None:
                self._hook(self.request_id, old, new, at)
        return old

    def path(self) -> list[RequestState]:
        """The states of :attr:`trace`, without times."""
        return [step.state for step in self._trace] if self._trace is not None else []

    def __repr__(self) -> str:
        return f"RequestLifecycle({self.request_id!r}, state={self._state.name})"
