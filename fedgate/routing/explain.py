"""Why a node is, or is not, eligible: the candidates() breakdown and the routing errors.

::

    Router.candidates(request) ──► components kernel ──► Candidate per serving node:
                                   (per-policy scores)    eligible, total, breakdown,
                                                          reason in words, inflight
    Router.route() finds no node ──► _explain() ──► the first cause that applies, as the
                                                    error to raise (order: router.py)

Both read the router's state under its lock: :class:`Explain` sits between
:class:`~fedgate.routing.fleet.Fleet` and :class:`~fedgate.routing.router.Router`
and puts the kernel's reason codes into words, kept apart from the decision
path it never runs on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedgate._core import codes
from fedgate._core.codes import (
    REASON_BREAKER_OPEN,
    REASON_LATENCY,
    REASON_NOT_SERVING,
    REASON_OK,
    REASON_PRIVACY,
)
from fedgate.errors import (
    AllNodesUnhealthyError,
    BackpressureError,
    FederationError,
    NoCapacityError,
    PrivacyViolationError,
    QoSViolationError,
)
from fedgate.federation.breaker import CircuitState
from fedgate.federation.policy import CompositePolicy
from fedgate.routing.fleet import Fleet
from fedgate.types import InferenceRequest, NodeId, PrivacyLevel, RegionId

__all__ = ["Candidate", "Explain"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One node's standing for one request (``router.candidates()``).

    ``total`` is NaN when ineligible; ``reason`` says why (None when
    eligible); ``breakdown`` maps each policy of the composite to its
    component score.
    """

    node_id: NodeId
    region_id: RegionId
    eligible: bool
    reason: str | None
    total: float
    breakdown: dict[str, float] = field(default_factory=dict)
    inflight: int = 0


class Explain(Fleet):
    """The fleet's standing in words: the base of :class:`~fedgate.routing.router.Router`.

    Reads the fleet's arrays, and the router's policy and kernels (annotated
    below: the router sets them).
    """

    _policy: CompositePolicy
    _weights: npt.NDArray[np.float64]
    _components: Callable[..., Any]
    _fill_params: Callable[[InferenceRequest], npt.NDArray[np.float64]]

    # ================================================================ errors

    def _clearances(self, n: int) -> npt.NDArray[np.int8]:
        # A region id the clearance table does not know fails closed to
        # INTERNAL, as in the kernel.
        table = self._arrays.clearance
        regions = self._arrays.region[:n]
        out = np.full(n, codes.DEFAULT_CLEARANCE, dtype=np.int8)
        known = regions < table.size
        out[known] = table[regions[known]]
        return out

    def _only_saturated(self, s: int, request: InferenceRequest) -> bool:
        """Whether node ``s`` would be eligible but for its concurrency limit."""
        a = self._arrays
        bound = request.qos.max_latency
        return (
            s in self._saturated
            and self._alive_flag[s]
            and not self._dead[s]
            and int(a.breaker[s]) != codes.BREAKER_OPEN
            and not (bound is not None and float(a.p50[s]) > bound)
        )

    def _no_capacity(self, request: InferenceRequest) -> NoCapacityError:
        if request.model is not None:
            return NoCapacityError(
                f"no node serves model {request.model!r} "
                f"with capability {str(request.capability)!r}"
            )
        return NoCapacityError(f"no node serves capability {str(request.capability)!r}")

    def _explain(self, request: InferenceRequest, base: npt.NDArray[np.uint8],
                 excluded: set[NodeId] | frozenset[NodeId]) -> FederationError:  # fmt: skip
        n = self._arrays.n
        what = f"capability {str(request.capability)!r}"
        if request.model is not None:
            what = f"model {request.model!r} with {what}"
        serving = base[:n].astype(bool)
        privacy = request.qos.privacy
        region_clearance = self._clearances(n)
        cleared = serving & (region_clearance >= int(privacy))
        if not cleared.any():
            regions = sorted(
                {self._region_name[s] or "?" for s in np.flatnonzero(serving).tolist()}
            )
            return PrivacyViolationError(
                f"no region cleared for {privacy.name} serves {what}: the "
                f"{int(serving.sum())} node(s) serving it are in {', '.join(regions)} "
                f"(cleared for at most {PrivacyLevel(int(region_clearance[serving].max())).name})"
            )
        remaining = cleared.copy()
        for node in excluded:
            s = self._slot_of.get(node)
            if s is not None and s < n:
                remaining[s] = False
        if not remaining.any():
            return NoCapacityError(
                f"every node serving {what} in a region cleared for {privacy.name} "
                f"({int(cleared.sum())}) was excluded (already tried)"
            )
        candidates = np.flatnonzero(remaining)
        reasons = self._reasons[candidates]
        not_serving = candidates[reasons == REASON_NOT_SERVING]
        busy = sum(1 for s in not_serving.tolist() if self._only_saturated(s, request))
        if busy:
            # A node at its concurrency limit frees up as soon as a request
            # ends: the caller should back off and retry, not give up.
            return BackpressureError(
                f"no node serving {what} has room: {busy} at its concurrency limit, "
                f"{candidates.size - busy} unavailable"
            )
        latency = candidates[reasons == REASON_LATENCY]
        if latency.size:
            bound = request.qos.max_latency or math.inf
            fastest = float(np.nanmin(self._arrays.p50[latency]))
            return QoSViolationError(
                f"no node serving {what} meets max_latency {bound * 1000:.1f} ms: "
                f"{latency.size} healthy node(s), fastest p50 {fastest * 1000:.1f} ms"
            )
        dead = int(self._dead[not_serving].sum())
        open_ = int((reasons == REASON_BREAKER_OPEN).sum())
        down = int(not_serving.size) - dead
        # Name the privacy level: with every cleared node down, the caller must
        # see that sovereignty is why no other node was used.
        return AllNodesUnhealthyError(
            f"no healthy node serves {what} in a region cleared for {privacy.name}: "
            f"{dead} missed heartbeats, {open_} with an open breaker, {down} not alive "
            f"(of {candidates.size}); nodes in other regions are never used"
        )

    # ================================================================ introspection

    def _reason_text(self, s: int, reason: int, request: InferenceRequest) -> str | None:
        if reason == REASON_OK:
            return None
        if reason == REASON_NOT_SERVING:
            if s in self._saturated:
                busy = int(self._arrays.inflight[s])
                return f"not serving: at its concurrency limit ({busy} in flight)"
            if not self._alive_flag[s]:
                return "not serving: node is not alive (disconnected)"
            if self._dead[s]:
                return "not serving: node is not alive (heartbeat missed)"
            return "not serving: no such capability/model on this node"
        if reason == REASON_PRIVACY:
            region = self._region_name[s]
            level = PrivacyLevel(int(self._arrays.clearance[self._arrays.region[s]]))
            return f"privacy: region {region} cleared for {level.name} < {request.qos.privacy.name}"
        if reason == REASON_BREAKER_OPEN:
            state = self._breaker.state(self._ids[s])
            if state is CircuitState.HALF_OPEN:
                return "breaker: HALF_OPEN, every probe slot taken"
            return f"breaker: {state.name}"
        if reason == REASON_LATENCY:
            bound = request.qos.max_latency or math.inf
            return (f"latency: p50 {float(self._arrays.p50[s]) * 1000:.1f} ms > "
                    f"max_latency {bound * 1000:.1f} ms")  # fmt: skip
        return f"reason {reason}"

    def candidates(
        self, request: InferenceRequest, *, limit: int | None = None
    ) -> list[Candidate]:
        """Every node serving the request's capability/model, with its standing.

        Eligible nodes first, best total first; then the ineligible ones with
        the reason. Empty when no node serves the capability at all. With
        ``limit``, the first ``limit`` of that same list, chosen before any
        :class:`Candidate` is built (a dashboard showing 64 of 10 000 nodes
        pays for 64).
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):  # fmt: skip
            raise ValueError(f"limit: expected an int >= 0 or None, got {limit!r}")
        if not isinstance(request, InferenceRequest):
            raise TypeError(f"request: expected an InferenceRequest, got {type(request).__name__}")
        with self._lock:
            self._refresh(force=True)
            base = self._masks.get((request.model, request.capability))
            if base is None:
                return []
            n = self._arrays.n
            components = np.empty((n, codes.N_WEIGHTS), dtype=np.float64)
            scores = np.empty(n, dtype=np.float64)
            reasons = np.empty(n, dtype=np.int8)
            # The router's own arrays, valid by construction: the kernel directly,
            # not the validating score_components() (which always runs the JIT one).
            self._components(*self._columns, base, self._arrays.clearance, self._weights,
                             self._fill_params(request), components, scores, reasons)  # fmt: skip
            names = [(p.name, p.index) for p in self._policy.policies]
            serving = np.flatnonzero(base[:n])
            if limit is not None:
                # The order the sort below gives, as array keys (lexsort: last key first).
                ok = reasons[serving] == REASON_OK
                key = np.where(ok, -scores[serving], 0.0)
                serving = serving[np.lexsort((serving, key, ~ok))][:limit]
            out: list[Candidate] = []
            for s in serving.tolist():
                reason = int(reasons[s])
                total = float(scores[s])
                out.append(
                    Candidate(
                        node_id=self._ids[s],
                        region_id=RegionId(self._region_name[s] or ""),
                        eligible=reason == REASON_OK,
                        reason=self._reason_text(s, reason, request),
                        total=total,
                        breakdown={name: float(components[s, k]) for name, k in names},
                        inflight=int(self._arrays.inflight[s]),
                    )
                )
        out.sort(key=lambda c: (not c.eligible, -c.total if c.eligible else 0.0))
        return out
