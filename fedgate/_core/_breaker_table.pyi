"""Stub of the compiled lock-free circuit-breaker state table (``_native/_breaker_table.pyx``).

The pure-Python twin ``fedgate._core._breaker_table_py`` has the same interface.
"""

from datetime import timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

__all__ = [
    "ADMIT",
    "CLOSED",
    "HALF_OPEN",
    "MAX_FAILURES",
    "NO_TRANSITION",
    "OPEN",
    "OP_ALLOW",
    "OP_FAILURE",
    "OP_SUCCESS",
    "PROBE",
    "PROBING",
    "RECOVERED",
    "REJECT",
    "REOPENED",
    "REOPENED_AND_PROBING",
    "TRIPPED",
    "BreakerTable",
    "decode_transition",
]

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2

REJECT: Final = 0
ADMIT: Final = 1
PROBE: Final = 2

NO_TRANSITION: Final = -1
TRIPPED: Final = 1
PROBING: Final = 5
RECOVERED: Final = 6
REOPENED: Final = 7
REOPENED_AND_PROBING: Final = 8

OP_ALLOW: Final = 0
OP_SUCCESS: Final = 1
OP_FAILURE: Final = 2

MAX_FAILURES: Final = 1023

def decode_transition(code: int) -> tuple[int, int]: ...

@disjoint_base  # a cdef class: it cannot share a subclass with another C layout
class BreakerTable:
    @property
    def failure_threshold(self) -> int: ...
    @property
    def open_timeout(self) -> float: ...
    @property
    def max_open_timeout(self) -> float: ...
    @property
    def half_open_max_probes(self) -> int: ...
    @property
    def success_threshold(self) -> int: ...
    @property
    def probe_timeout(self) -> float: ...
    @property
    def epoch(self) -> float: ...
    def __init__(
        self,
        failure_threshold: int = 5,
        open_timeout: float | timedelta = 30.0,
        max_open_timeout: float | timedelta = 300.0,
        half_open_max_probes: int = 1,
        success_threshold: int = 1,
        probe_timeout: float | timedelta = 10.0,
        epoch: float = 0.0,
        nodes: int = 0,
    ) -> None: ...
    def __len__(self) -> int: ...
    def add_node(self) -> int: ...
    def reset(self, slot: int) -> None: ...
    def allow(self, slot: int, now: float) -> int: ...
    def admit(self, slot: int, now: float) -> tuple[int, int]: ...
    def record_success(self, slot: int, now: float) -> int: ...
    def record_failure(self, slot: int, now: float) -> int: ...
    def release(self, slot: int, now: float) -> int: ...
    def run_batch(
        self,
        ops: npt.NDArray[np.int8],
        slots: npt.NDArray[np.int64],
        nows: npt.NDArray[np.float64],
        decisions: npt.NDArray[np.int8],
        transitions: npt.NDArray[np.int8],
    ) -> None: ...
    def state(self, slot: int, now: float) -> int: ...
    def states_into(self, now: float, out: npt.NDArray[np.int8]) -> None: ...
    def raw(self, slot: int) -> int: ...
    def failures(self, slot: int) -> int: ...
    def probes(self, slot: int) -> int: ...
    def successes(self, slot: int) -> int: ...
    def level(self, slot: int) -> int: ...
    def open_timeout_of(self, slot: int) -> float: ...
    def opened_at(self, slot: int) -> float: ...
    def reset_at(self, slot: int) -> float: ...
    def snapshot(self, slot: int, now: float) -> tuple[int, int, int, float, float, float]: ...
