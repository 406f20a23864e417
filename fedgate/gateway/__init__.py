"""The gateway layer: the public :class:`Gateway`, its builder and config, and the ingress.

A request enters through :meth:`Gateway.infer` / :meth:`Gateway.infer_stream`
(or a client of the ZeroMQ ingress, :mod:`fedgate.gateway.ingress`), is routed
by :mod:`fedgate.routing`, and goes to a worker over :mod:`fedgate.transport`.
See ``docs/ARCHITECTURE.md`` for the whole path.
"""

from __future__ import annotations

from fedgate.gateway.builder import GatewayBuilder
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.gateway import Gateway
from fedgate.gateway.stats import GatewayStats, NodeStats, RouteRecord

__all__ = ["Gateway", "GatewayBuilder", "GatewayConfig", "GatewayStats", "NodeStats", "RouteRecord"]
