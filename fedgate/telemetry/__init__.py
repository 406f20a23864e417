"""A running gateway's state, published for dashboards and Prometheus.

::

    Gateway ──read──► Telemetry.snapshot() / build() (in slices) ──► plain dict   snapshots.py
                         │                        │
                         │                        ├─► TelemetryServer: ZeroMQ ROUTER   server.py
                         │                        │     └─► TelemetryClient.fetch()    client.py
                         │                        │           └─► `fedgate top`
                         │                        └─► Prometheus collector/exporter    prometheus.py
                         └─ keeps what the gateway forgets: the last breaker
                            transitions and a ring of counter samples (request rates, sparklines)

The snapshot's keys are listed in :mod:`fedgate.telemetry.snapshots`.

This file only names things: :data:`DEFAULT_ENDPOINT` is defined here, so
that the configuration and the command line can name it without importing
ZeroMQ; every other public name loads its module on first use (PEP 562), so
``from fedgate.telemetry import TelemetryServer`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedgate.telemetry.client import TelemetryClient, TelemetryError, TelemetryTimeout
    from fedgate.telemetry.server import TelemetryServer
    from fedgate.telemetry.snapshots import (
        PAGE_SIZE,
        PROBE_NOTE,
        SCHEMA_VERSION,
        SLICE_BUDGET,
        Built,
        SnapshotCache,
        Telemetry,
        page,
        snapshot,
        telemetry_for,
    )

__all__ = [
    "DEFAULT_ENDPOINT",
    "PAGE_SIZE",
    "PROBE_NOTE",
    "SCHEMA_VERSION",
    "SLICE_BUDGET",
    "Built",
    "SnapshotCache",
    "Telemetry",
    "TelemetryClient",
    "TelemetryError",
    "TelemetryServer",
    "TelemetryTimeout",
    "page",
    "snapshot",
    "telemetry_for",
]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where ``fedgate top`` looks for a gateway's telemetry by default."""

# Public name -> the module defining it, loaded on first access.
_LAZY = {
    "PAGE_SIZE": "snapshots",
    "PROBE_NOTE": "snapshots",
    "SCHEMA_VERSION": "snapshots",
    "SLICE_BUDGET": "snapshots",
    "Built": "snapshots",
    "SnapshotCache": "snapshots",
    "page": "snapshots",
    "Telemetry": "snapshots",
    "snapshot": "snapshots",
    "telemetry_for": "snapshots",
    "TelemetryServer": "server",
    "TelemetryClient": "client",
    "TelemetryError": "client",
    "TelemetryTimeout": "client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedgate.telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
