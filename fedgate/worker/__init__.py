"""The worker side of fedgate: one process per node (``fedgate worker …``).

:class:`Worker` is usable in-process too (``await Worker(config).run()``, or
``async with Worker(config):``), which is how gateway tests get fast, real
workers on loopback without starting processes.
"""

from __future__ import annotations

from fedgate.worker.process import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    Worker,
    WorkerConfig,
    WorkerStats,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_REFUSED", "Worker", "WorkerConfig", "WorkerStats"]
