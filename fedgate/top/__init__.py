"""``fedgate top``: the terminal dashboard of a running gateway.

:class:`~fedgate.top.app.TopApp` is the Textual app (it polls any snapshot
source); :mod:`fedgate.cli.top` is the command, which polls a gateway's
telemetry endpoint (:class:`fedgate.telemetry.TelemetryServer`). Importing
this package does not import Textual: the app loads with the command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedgate.top.app import TopApp

__all__ = ["TopApp"]


def __getattr__(name: str) -> Any:
    if name == "TopApp":
        from fedgate.top.app import TopApp

        return TopApp
    raise AttributeError(f"module 'fedgate.top' has no attribute {name!r}")
