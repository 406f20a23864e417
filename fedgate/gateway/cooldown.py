"""Nodes left alone after an overload (SPEC §2 Gateway, R24).

A worker's ``overloaded`` error (its own concurrency limit, or its upstream's
429 or 503) is not the node's fault, but asking it again at once only adds to
its load. The node *cools down*: no request of this gateway is sent to it
until the cooldown ends. A cooldown lasts the ``Retry-After`` the node
carried, exactly when it carried one (never shorter: the upstream said when),
otherwise a backoff that doubles with each overload in a row, from
``retry_delay`` up to :data:`MAX_COOLDOWN`, with jitter (0.5–1.5×) so that
gateways do not come back in step: at most one attempt per node per backoff
step. A success on the node ends its streak. A request that finds every
eligible node cooling waits for the first to cool, inside its deadline
(:class:`fedgate.gateway.call.Call`).
"""

from __future__ import annotations

import random

from fedgate.types import NodeId

__all__ = ["MAX_COOLDOWN", "Cooldowns"]

MAX_COOLDOWN = 30.0
"""Longest backoff of a node overloaded many times in a row, in seconds."""


class Cooldowns:
    """Per node: the loop time before which it is not asked, and its overloads in a row.

    Empty (falsy) while no node is cooling, so the request path tests it once.
    """

    __slots__ = ("retry_delay", "rng", "streaks", "until")

    def __init__(self, retry_delay: float, rng: random.Random) -> None:
        self.retry_delay = retry_delay
        self.rng = rng
        self.until: dict[NodeId, float] = {}
        self.streaks: dict[NodeId, int] = {}

    def __bool__(self) -> bool:
        return bool(self.until)

    def overloaded(self, node: NodeId, retry_after: float, now: float) -> None:
        """``node`` said it is busy: leave it alone for ``retry_after``, or a backoff."""
        streak = self.streaks[node] = self.streaks.get(node, 0) + 1
        if retry_after > 0:
            pause = retry_after
        else:
            step = min(self.retry_delay * 2 ** min(streak - 1, 30), MAX_COOLDOWN)
            pause = step * (0.5 + self.rng.random())
        until = now + pause
        if until > self.until.get(node, 0.0):
            self.until[node] = until

    def succeeded(self, node: NodeId) -> None:
        """``node`` answered: its overload streak is over."""
        if self.streaks:
            self.streaks.pop(node, None)

    def cooling(self, now: float) -> set[NodeId]:
        """The nodes cooling at ``now`` (cooldowns that ended are dropped)."""
        until = self.until
        cooling = {node for node, end in until.items() if end > now}
        if len(cooling) < len(until):
            for node in [n for n in until if n not in cooling]:
                del until[node]
        return cooling

    def first_free(self, tried: set[NodeId], deadline: float) -> float | None:
        """When the first cooling node not in ``tried`` is free, if before ``deadline``."""
        wake = min((end for node, end in self.until.items() if node not in tried), default=None)
        return wake if wake is not None and wake < deadline else None

    def pending(self, tried: set[NodeId], now: float) -> list[tuple[float, NodeId]]:
        """``(until, node)`` per node cooling past ``now``, not in ``tried``; earliest first."""
        return sorted((end, node) for node, end in self.until.items()
                      if end > now and node not in tried)  # fmt: skip
