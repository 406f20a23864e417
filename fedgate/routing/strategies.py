"""Load-balancing strategies: which eligible node takes the request.

The scoring kernel has already scored every node and excluded the
ineligible ones (their score is NaN); it also returns the best-scored node,
in-flight discount included. A strategy only chooses among the eligible::

    Router.route() ──► kernel: scores (NaN = ineligible), best
                          │
                          ├─ least-latency ───► best, as is (no picker: the default costs nothing)
                          └─ any other ───────► Picker.pick(request, key, scores, best)
                                                 RoundRobin · LeastConnections ·
                                                 WeightedRandom · ConsistentHash

``least-latency`` (default)
    The best composite score, discounted by in-flight requests
    (``score / (1 + load_penalty × inflight)``), so concurrent requests spread
    over equally good nodes instead of herding onto the first.
``round-robin``
    The next eligible node after the last one chosen for this capability/model.
``least-connections``
    The eligible node with the fewest in-flight requests (best score on ties).
``weighted-random``
    An eligible node drawn with probability proportional to its score
    (seeded: ``Router(seed=…)``).
``consistent-hash``
    A hash ring (64 virtual points per node) over the eligible nodes, keyed
    by ``request.affinity_key`` or else ``request.tenant_id``; a key keeps its
    node while that node stays eligible, and only the keys of a node that
    leaves move. Requests with neither key use ``least-latency``.

A picker keeps whatever state its strategy needs (the round-robin cursor, the
random generator, the ring) for the router's lifetime, so switching strategy
and back resumes where it was. To add a strategy: a picker here, its name in
:data:`STRATEGIES`, and its instance in the router's table of pickers
(``Router.__init__``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fedgate.routing.arrays import NodeArrays
from fedgate.routing.fleet import MaskKey
from fedgate.types import InferenceRequest, NodeId

__all__ = [
    "STRATEGIES",
    "ConsistentHash",
    "LeastConnections",
    "Picker",
    "RoundRobin",
    "WeightedRandom",
]

STRATEGIES = (
    "least-latency",
    "round-robin",
    "least-connections",
    "weighted-random",
    "consistent-hash",
)

VIRTUAL_POINTS = 64
# Walking the ring in Python beats a vectorised scan until this many steps.
_RING_WALK = 128


class Picker(Protocol):
    """Chooses among the eligible nodes of one decision."""

    def pick(
        self, request: InferenceRequest, key: MaskKey, scores: npt.NDArray[np.float64], best: int
    ) -> int:
        """The chosen slot. ``scores`` covers the router's ``n`` nodes, NaN where
        ineligible (at least one is eligible); ``best`` is the kernel's choice."""
        ...


class RoundRobin:
    """The next eligible node after the last one chosen for the same capability/model."""

    def __init__(self) -> None:
        self._last: dict[MaskKey, int] = {}

    def forget(self, key: MaskKey) -> None:
        """No node serves ``key`` any more: drop its cursor."""
        self._last.pop(key, None)

    def pick(
        self, request: InferenceRequest, key: MaskKey, scores: npt.NDArray[np.float64], best: int
    ) -> int:
        eligible = np.flatnonzero(~np.isnan(scores))
        last = self._last.get(key, -1)
        i = int(np.searchsorted(eligible, last, side="right"))
        chosen = int(eligible[i if i < eligible.size else 0])
        self._last[key] = chosen
        return chosen


class LeastConnections:
    """The eligible node with the fewest requests in flight (best score on ties)."""

    def __init__(self, arrays: NodeArrays) -> None:
        self._arrays = arrays

    def pick(
        self, request: InferenceRequest, key: MaskKey, scores: npt.NDArray[np.float64], best: int
    ) -> int:
        eligible = np.flatnonzero(~np.isnan(scores))
        inflight = self._arrays.inflight[eligible]
        fewest = eligible[inflight == inflight.min()]
        return int(fewest[np.argmax(scores[fewest])])


class WeightedRandom:
    """An eligible node drawn with probability proportional to its score."""

    def __init__(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def pick(
        self, request: InferenceRequest, key: MaskKey, scores: npt.NDArray[np.float64], best: int
    ) -> int:
        eligible = np.flatnonzero(~np.isnan(scores))
        # Inverse-CDF draw (Generator.choice re-validates p on every call).
        cumulative = np.cumsum(scores[eligible])
        total = float(cumulative[-1])
        if not total > 0.0:
            return int(eligible[self._rng.integers(eligible.size)])
        i = int(np.searchsorted(cumulative, self._rng.random() * total, side="right"))
        return int(eligible[min(i, eligible.size - 1)])


def ring_points(node: str) -> npt.NDArray[np.uint64]:
    """A node's :data:`VIRTUAL_POINTS` positions on the hash ring."""
    # blake2b, not hash(): the ring must agree across processes and restarts
    # (hash() is salted per process), or affinity would reshuffle on deploy.
    chunks = [
        hashlib.blake2b(f"{node}#{i}".encode(), digest_size=64).digest()
        for i in range(VIRTUAL_POINTS // 8)
    ]
    return np.frombuffer(b"".join(chunks), dtype="<u8").astype(np.uint64)


def key_hash(key: str) -> int:
    """An affinity key's position on the hash ring."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class ConsistentHash:
    """A hash ring over the router's nodes, keyed by affinity key or tenant.

    The ring holds every node the router knows (a node keeps its slot, so
    the ring only grows: a pick that sees more nodes adds their points and
    sorts again); a key goes to the first eligible node clockwise from it,
    so it keeps its node while that node stays eligible.

    Parameters
    ----------
    ids : sequence of NodeId
        The router's node ids by slot (the router's own list: it only grows).
    arrays : NodeArrays
        The router's arrays, for their capacity when the ring grows.
    """

    def __init__(self, ids: Sequence[NodeId], arrays: NodeArrays) -> None:
        self._ids = ids
        self._arrays = arrays
        # Allocated on the first pick: 512 bytes a node that the other
        # strategies never read (8 MB for 16 384 slots).
        self._points = np.zeros((0, VIRTUAL_POINTS), dtype=np.uint64)
        self._ready = 0  # slots [0, _ready) have their points computed
        self._sorted: npt.NDArray[np.uint64] | None = None
        self._owner: npt.NDArray[np.intp] | None = None

    def pick(
        self, request: InferenceRequest, key: MaskKey, scores: npt.NDArray[np.float64], best: int
    ) -> int:
        affinity = request.affinity_key or request.tenant_id
        if affinity is None:
            return best
        n = scores.shape[0]
        if self._ready < n:
            if self._points.shape[0] < n:
                points = np.zeros((self._arrays.capacity, VIRTUAL_POINTS), dtype=np.uint64)
                points[: self._ready] = self._points[: self._ready]
                self._points = points
            for s in range(self._ready, n):
                self._points[s] = ring_points(self._ids[s])
            self._ready = n
            self._sorted = None
        if self._sorted is None or self._sorted.size != n * VIRTUAL_POINTS:
            flat = self._points[:n].ravel()
            order = np.argsort(flat, kind="stable")
            self._sorted = flat[order]
            self._owner = order // VIRTUAL_POINTS
        h = np.uint64(key_hash(affinity))
        points, owners = self._sorted, self._owner
        assert owners is not None
        size = points.size
        start = int(np.searchsorted(points, h, side="left"))
        for step in range(min(_RING_WALK, size)):
            owner = int(owners[(start + step) % size])
            if scores[owner] == scores[owner]:  # not NaN: eligible
                return owner
        # Few eligible nodes: the eligible point nearest clockwise, vectorised
        # (unsigned subtraction wraps, which is exactly the ring distance).
        eligible = np.flatnonzero(~np.isnan(scores))
        distance = self._points[eligible] - h
        nearest = int(np.argmin(distance))
        return int(eligible[nearest // VIRTUAL_POINTS])
