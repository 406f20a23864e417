"""One request's attempt loop: route, admit, send, read the answer, fail over, resume.

A :class:`Call` is made per ``infer`` / ``infer_stream`` and talks to a few
collaborators, gathered once per gateway in a :class:`CallEnv`: the router
(with the health checker and breaker it routes by), the worker registry, the
attempt book (which sends through the socket pump) and the counters. See
:mod:`fedgate.gateway.gateway` for the whole request path.

Failover is not a retry storm (SPEC §2 Gateway, R10 and R20)
-------------------------------------------------------------
A failed attempt is one of two kinds, and they are treated differently:

* **Stranded** — the node never answered because it is gone: its process
  died, its connection was lost, it was replaced, or the socket refused the
  REQUEST because the node is no longer connected
  (:attr:`LostCause.CRASH <fedgate.gateway.attempt.LostCause>`). The request
  did nothing wrong and nothing about it says the fleet is failing; it
  *moves*: to the next node at once (no backoff: the dead node will not get
  better by waiting), still bounded by ``max_retries`` and its deadline, but
  **not charged to the retry budget**. The crash still counts against the
  node (its health and breaker: SPEC §2 counts crashes), and the registry
  has already taken it out of routing (:meth:`Registry.lose
  <fedgate.gateway.registry.Registry.lose>`). A moved request that finds
  every survivor full queues for a slot inside its deadline
  (:meth:`Attempts.wait_for_capacity
  <fedgate.gateway.attempt.Attempts.wait_for_capacity>`), as any request does.
  This cannot become a storm: a death strands at most what was in flight on
  that node, each stranded request is re-sent once per death, and only to a
  node it has not tried.
* **Answered badly** — the node answered with an error, stalled, overran
  the deadline, or the send failed for an unexpected reason. These are what
  a fleet failing as a whole produces, so a retry is **charged**: a request
  holds one budget slot from its first charged retry until it ends, and at
  most ``max(retry_budget_min, retry_budget_ratio × active)`` requests hold
  one at once. A request that finds the budget spent **waits for room**
  (a slot freed by a request that ends, or the budget grown with the load)
  inside its deadline, instead of failing at once; the deadline, not the
  budget, decides when it gives up (:class:`DeadlineExceededError` naming
  the last failure). The budget still bounds how many retries run at once,
  so a failing fleet sees no more than that many extra attempts in flight,
  and the breakers and health take the failing nodes out of routing in the
  meantime (a waiting request then fails as soon as no node is left).

A busy node is left alone for a while (SPEC §2 Gateway, R24)
-------------------------------------------------------------
A worker's ``overloaded`` error (its own concurrency limit, or its upstream's
429 or 503) is not the node's fault, but asking it again at once only adds to
its load. The node *cools down*: no request of this gateway is sent to it
until the cooldown ends. A cooldown lasts the ``Retry-After`` the node
carried, exactly when it carried one (never shorter: the upstream said when),
otherwise a backoff that doubles with each overload in a row, from
``retry_delay`` up to :data:`MAX_COOLDOWN`, with jitter (0.5–1.5×) so that
gateways do not come back in step: at most one attempt per node per backoff
step. A success on the node ends its streak. A request that finds every
eligible node cooling waits for the first to cool, inside its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

from fedgate.errors import (
    BackpressureError,
    CircuitOpenError,
    DeadlineExceededError,
    FederationError,
    NoCapacityError,
    NodeUnreachableError,
    StreamInterruptedError,
    WorkerError,
)
from fedgate.federation.breaker import Admission, CircuitBreaker
from fedgate.federation.health import HealthChecker
from fedgate.federation.statemachine import RequestLifecycle, RequestState, TransitionHook
from fedgate.gateway.attempt import Attempt, Attempts, Lost, LostCause
from fedgate.gateway.config import GatewayConfig
from fedgate.gateway.registry import Registry, Worker
from fedgate.gateway.stats import GatewayCounters, NodeStats, RouteRecord
from fedgate.gateway.tenants import TenantBook, Ticket
from fedgate.routing.router import Router
from fedgate.transport import protocol as wire
from fedgate.types import InferenceRequest, InferenceResponse, NodeId, RegionId

__all__ = ["MAX_COOLDOWN", "Call", "CallEnv", "Failure"]

MAX_COOLDOWN = 30.0
"""Longest backoff of a node overloaded many times in a row, in seconds."""

_S = RequestState


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class CallEnv:
    """What every call of one gateway talks to (``loop`` is set while it runs)."""

    __slots__ = (
        "attempts",
        "breaker",
        "budget_waiters",
        "config",
        "cooldown",
        "counters",
        "health",
        "hooks",
        "loop",
        "overloads",
        "recent_routes",
        "registry",
        "rng",
        "router",
        "tenants",
    )

    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        health: HealthChecker,
        breaker: CircuitBreaker,
        registry: Registry,
        attempts: Attempts,
        counters: GatewayCounters,
        recent_routes: deque[RouteRecord],
        tenants: TenantBook | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.health = health
        self.breaker = breaker
        self.registry = registry
        self.attempts = attempts
        # Quotas (admission) and the fair queue (tenants): gateway/tenants.py.
        self.tenants = tenants if tenants is not None else TenantBook(max_queued=config.max_queued)
        # node → loop time before which it is not asked (see "A busy node …" above)
        self.cooldown: dict[NodeId, float] = {}
        self.overloads: dict[NodeId, int] = {}  # node → overloads in a row
        self.counters = counters
        self.recent_routes = recent_routes
        self.hooks: list[TransitionHook] = []
        self.rng = random.Random()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Requests whose charged retry waits for room in the retry budget.
        self.budget_waiters: deque[asyncio.Future[None]] = deque()

    def fire(self, request_id: str, old: RequestState, new: RequestState, at: float) -> None:
        for hook in list(self.hooks):
            hook(request_id, old, new, at)


class Failure(NamedTuple):
    """Why an attempt ended without an answer, and what that means for the node and the request."""

    error: Exception
    node_caused: bool  # counts against the node's health and breaker
    retryable: bool  # another node may still serve the request
    stranded: bool = False  # the node is gone: the request moves, uncharged to the budget
    answered: bool = False  # the worker's own Error: its side is done, nothing to cancel


class Call:
    """One request's attempt loop: routing, dispatch, failover, resume.

    :meth:`run_unary` (``infer``) and :meth:`run` (``infer_stream``, an async
    generator of token chunks) are the same loop; the steps they share are the
    methods below. The unary loop is a plain coroutine because an async
    generator costs every call a registration with the loop's shutdown set and
    an extra frame per resumption, which ``infer`` never needs.
    """

    __slots__ = (
        "attempts",
        "deadline",
        "env",
        "first_token_at",
        "last_error",
        "lifecycle",
        "next_index",
        "node",
        "output",
        "region",
        "request",
        "retrying",
        "rid",
        "score",
        "started",
        "stream",
        "tenant",
        "ticket",
        "tried",
    )

    def __init__(self, env: CallEnv, request: InferenceRequest, stream: bool) -> None:
        self.env = env
        self.request = request
        self.stream = stream
        self.rid = wire.new_rid()
        loop = env.loop
        assert loop is not None
        self.started = loop.time()
        timeout = request.deadline if request.deadline is not None else env.config.request_timeout
        self.deadline = self.started + timeout
        self.lifecycle = RequestLifecycle(
            request.request_id,
            clock=loop.time,
            start=_S.READY,
            trace=False,
            hook=env.fire if env.hooks else None,
        )
        self.next_index = 0
        self.attempts = 0
        self.tried: set[NodeId] = set()
        self.last_error: Exception | None = None
        self.first_token_at = -1.0
        self.output = b""
        self.node = NodeId("")
        self.region = RegionId("")
        self.score = 0.0
        self.retrying = False
        self.tenant: NodeStats | None = None
        self.ticket: Ticket | None = None

    def response(self) -> InferenceResponse:
        loop = self.env.loop
        assert loop is not None
        return InferenceResponse(
            output=self.output,
            node_id=self.node,
            region_id=self.region,
            score=self.score,
            latency=loop.time() - self.started,
            tokens=self.next_index,
            attempts=self.attempts,
            request_id=self.request.request_id,
        )

    # ------------------------------------------------------------- the two loops
    async def run_unary(self) -> None:
        """Run the request to its answer (``self.output``), failing over as needed."""
        loop = self.env.loop
        assert loop is not None
        outcome = self._begin()
        try:
            self.lifecycle.to(_S.ROUTING)
            while True:
                choice = self._choose()
                while not isinstance(choice, tuple):
                    # Every eligible node is at its concurrency limit, or cooling down.
                    await self._wait_for(choice)
                    choice = self._choose()
                worker, score, admission = choice
                att = self._send_attempt(worker, score)
                failure: Failure | None = None
                if isinstance(att, Attempt):
                    finished = False
                    try:
                        while True:
                            step = self._step(await att.next(loop), att)
                            if step is None:
                                finished = True
                                break
                            if isinstance(step, Failure):
                                failure = step
                                break
                    finally:
                        self._end_attempt(att, admission, finished, failure)
                    if finished:
                        outcome = self._completed(att)
                        return
                else:
                    failure = att
                assert failure is not None
                await self._after_failure(worker.node, admission, failure)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._end(outcome)

    async def run(self) -> AsyncGenerator[list[bytes], None]:
        """Run the request as a stream: yields each chunk of new tokens, in order."""
        loop = self.env.loop
        assert loop is not None
        outcome = self._begin()
        try:
            self.lifecycle.to(_S.ROUTING)
            while True:
                choice = self._choose()
                while not isinstance(choice, tuple):
                    # Every eligible node is at its concurrency limit, or cooling down.
                    await self._wait_for(choice)
                    choice = self._choose()
                worker, score, admission = choice
                att = self._send_attempt(worker, score)
                failure: Failure | None = None
                if isinstance(att, Attempt):
                    finished = False
                    try:
                        while True:
                            step = self._step(await att.next(loop), att)
                            if step is None:
                                finished = True
                                break
                            if isinstance(step, Failure):
                                failure = step
                                break
                            if step:
                                yield step
                    finally:
                        # Reached on success, failure, and when the caller stops reading.
                        self._end_attempt(att, admission, finished, failure)
                    if finished:
                        outcome = self._completed(att)
                        return
                else:
                    failure = att
                assert failure is not None
                await self._after_failure(worker.node, admission, failure)
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self._end(outcome)

    # ------------------------------------------------------------ shared steps
    def _begin(self) -> str:
        counters = self.env.counters
        req = self.request
        # Tenants: over quota → QuotaExceededError, before anything is routed.
        self.ticket = self.env.tenants.admit(req.tenant_id)
        counters.total += 1
        counters.active += 1
        if req.tenant_id:
            self.tenant = tenant = counters.per_tenant[req.tenant_id]
            tenant.requests += 1
        return "failed"  # the outcome until the request completes or is cancelled

    def _end(self, outcome: str) -> None:
        counters = self.env.counters
        tenant = self.tenant
        assert self.ticket is not None
        self.env.tenants.release(self.ticket, outcome, self.next_index)  # tenants: quotas
        counters.active -= 1
        if self.retrying:
            counters.retrying -= 1
            waiters = self.env.budget_waiters
            while waiters:  # a budget slot is free: the longest waiter takes it
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
                    break
        if outcome == "ok":
            counters.ok += 1
            if tenant is not None:
                tenant.successes += 1
                tenant.tokens += self.next_index
        elif outcome == "cancelled":
            counters.cancelled += 1
        else:
            counters.failed += 1
            if tenant is not None:
                tenant.failures += 1

    def _exclude(self) -> set[NodeId]:
        exclude = self.tried
        cooldown = self.env.cooldown
        if cooldown:
            loop = self.env.loop
            assert loop is not None
            now = loop.time()
            cooling = {node for node, until in cooldown.items() if until > now}
            if len(cooling) < len(cooldown):
                for node in [n for n in cooldown if n not in cooling]:
                    del cooldown[node]
            if cooling:
                exclude = exclude | cooling
        if not self.stream or self.next_index == 0:
            return exclude
        # Past the commit point only a node that can continue the generation may serve.
        return exclude | {w.node for w in self.env.registry.by_node.values() if not w.resumable}

    def _cooled_at(self) -> float | None:
        """When the first cooling node this request has not tried is free, if before the
        deadline: the time to route again once every other node is out."""
        tried = self.tried
        wake = min(
            (until for node, until in self.env.cooldown.items() if node not in tried),
            default=None,
        )
        return wake if wake is not None and wake < self.deadline else None

    async def _wait_for(self, what: BackpressureError | float) -> None:
        if isinstance(what, BackpressureError):
            await self._wait_for_capacity(what)
            return
        loop = self.env.loop
        assert loop is not None
        await asyncio.sleep(max(what - loop.time(), 0.0))

    def _choose(self) -> tuple[Worker, float, Admission] | BackpressureError | float:
        """The next node to try, admitted by its breaker; the router's
        BackpressureError when every eligible node is full (wait for capacity);
        the loop time the first cooling node is free when only cooling nodes are
        left (wait for it).

        Raises the caller's error when no node is left.
        """
        env = self.env
        req = self.request
        tried = self.tried
        assert self.ticket is not None
        if env.attempts.fair.blocks(self.ticket):  # tenants: a freed slot is promised to a waiter
            return BackpressureError(
                f"request {req.request_id!r}: every eligible node is busy (waiting its turn)"
            )
        while True:
            try:
                decision = env.router.route(req, exclude=self._exclude())
            except BackpressureError as exc:
                return exc
            except FederationError as exc:
                wake = self._cooled_at() if self.env.cooldown else None
                if wake is not None:
                    return wake
                self.lifecycle.to(_S.FAILED)
                raise self._final_error(exc) from exc
            node = decision.node_id
            worker = env.registry.by_node.get(node)
            if worker is None or not worker.alive:
                tried.add(node)
                continue
            admission = env.breaker.admit(node)
            if admission is Admission.REJECT:
                env.counters.local_rejections += 1
                tried.add(node)
                if self.last_error is None:
                    self.last_error = CircuitOpenError(f"node {node}: circuit breaker open")
                continue
            self.lifecycle.to(_S.INFERRING)
            self.attempts += 1
            tried.add(node)
            return worker, decision.score, admission

    async def _wait_for_capacity(self, full: BackpressureError) -> None:
        """Wait in the bounded admission queue for a slot, within the deadline.

        Slots are granted across tenants in weighted fair order (gateway/tenants.py).
        Raises the caller's error (``full``) when the queue is full or the deadline passes.
        """
        assert self.ticket is not None
        if not await self.env.attempts.wait_for_capacity(self.ticket, self.deadline):
            self.lifecycle.to(_S.FAILED)
            raise self._final_error(full) from full

    def _send_attempt(self, worker: Worker, score: float) -> Attempt | Failure:
        """Start the attempt on ``worker`` (a failed send arrives in its inbox)."""
        env = self.env
        try:
            att = env.attempts.open(self, worker, self.attempts)
        except NodeUnreachableError as exc:  # the gateway stopped under this request
            return Failure(exc, False, False)
        self.node, self.region, self.score = worker.node, worker.region, score
        recent = env.recent_routes
        if recent.maxlen:  # for the dashboard; after the send, off the latency path
            req = self.request
            recent.append(
                RouteRecord(
                    time.time(),
                    req.request_id,
                    req.tenant_id,
                    str(req.capability),
                    worker.node,
                    worker.region,
                    score,
                    self.attempts,
                )
            )
        return att

    def _step(self, event: Any, att: Attempt) -> list[bytes] | Failure | None:
        """Apply one inbox event: new tokens to pass on, None when done, or the failure."""
        kind = type(event)
        if kind is wire.Final:
            if not self.stream:
                self.output = event.output
                self.next_index = event.tokens
                return None
            if event.tokens != self.next_index:
                return Failure(
                    NodeUnreachableError(
                        f"node {self.node} ended the stream at {self.next_index} "
                        f"tokens but reported {event.tokens}"
                    ),
                    True,
                    True,
                )
            return None
        if kind is wire.Partial:
            loop = self.env.loop
            assert loop is not None
            att.last_frame = loop.time()
            fresh = self._accept(event)
            if fresh is None:  # a gap: the node broke the stream
                return Failure(
                    NodeUnreachableError(
                        f"node {self.node} skipped tokens (expected index "
                        f"{self.next_index}, got {event.index})"
                    ),
                    True,
                    True,
                )
            if fresh and self.first_token_at < 0:
                self.first_token_at = loop.time()
                self.lifecycle.to(_S.STREAMING)
            return fresh
        if kind is wire.Error:
            return self._worker_error(event)
        return self._local_error(event, self.node)  # crash, stall, deadline, overflow, shutdown

    def _end_attempt(
        self, att: Attempt, admission: Admission, finished: bool, failure: Failure | None
    ) -> None:
        env = self.env
        # A worker that answered (Final, or its own Error) has nothing left to stop.
        answered = finished or (failure is not None and failure.answered)
        env.attempts.abandon(att, cancel=not answered and att.worker.alive)
        if failure is None and not finished and admission is Admission.PROBE:
            # The caller stopped: no verdict on the node, free the probe.
            env.breaker.release(att.worker.node)

    def _completed(self, att: Attempt) -> str:
        self._succeeded(att.worker.node, att.started)
        self.lifecycle.to(_S.COMPLETED)
        return "ok"

    async def _after_failure(self, node: NodeId, admission: Admission, failure: Failure) -> None:
        """Book a failed attempt, then back off for the next one or raise the caller's error."""
        env = self.env
        counters = env.counters
        loop = env.loop
        assert loop is not None
        lc = self.lifecycle
        error = failure.error
        self.last_error = error
        if failure.node_caused:
            env.health.report_failure(node)
            env.breaker.record_failure(node)
            counters.per_node[node].failures += 1
        elif admission is Admission.PROBE:
            env.breaker.release(node)
        if not (failure.retryable and self._may_retry()):
            lc.to(_S.FAILED)
            raise self._final_error(error)
        lc.to(_S.RETRYING)
        if not failure.stranded and not self.retrying:
            # A charged retry: it needs a slot of the budget, and waits for one.
            if not self._budget_room():
                await self._wait_for_budget(error)
            self.retrying = True
            counters.retrying += 1
        counters.retries += 1
        if failure.node_caused or failure.stranded:
            counters.failovers += 1
        if self.next_index:
            counters.resumes += 1
        if failure.stranded:
            # The node is gone: waiting would not make it better, move now.
            lc.to(_S.ROUTING)
            return
        delay = env.config.retry_delay * (2 ** (self.attempts - 1)) * (0.5 + env.rng.random())
        if loop.time() + delay >= self.deadline:
            lc.to(_S.FAILED)
            raise DeadlineExceededError(
                f"request {self.request.request_id!r}: deadline passed while retrying "
                f"after {self.attempts} attempt(s): {error}"
            ) from error
        if delay > 0:
            await asyncio.sleep(delay)
        lc.to(_S.ROUTING)

    def _accept(self, msg: wire.Partial) -> list[bytes] | None:
        """New tokens of a Partial, in order; [] for a duplicate, None for a gap."""
        start = msg.index
        if start > self.next_index:
            return None
        tokens = msg.tokens
        end = start + len(tokens)
        if end <= self.next_index:
            return []
        if start < self.next_index:
            tokens = tokens[self.next_index - start :]
        self.next_index = end
        return tokens

    def _succeeded(self, node: NodeId, attempt_started: float) -> None:
        env = self.env
        counters = env.counters
        assert env.loop is not None
        now = env.loop.time()
        latency = now - self.started
        # The node's health sees its own attempt's latency, not the backoffs before it.
        env.health.report_success(node, now - attempt_started)
        env.breaker.record_success(node)
        if env.overloads:
            env.overloads.pop(node, None)  # its overload streak is over
        stats = counters.per_node[node]
        stats.successes += 1
        stats.tokens += self.next_index
        counters.tokens += self.next_index
        counters.latency_sum += latency
        counters.latency.record(0, latency)
        if self.first_token_at >= 0:
            counters.latency.record(1, self.first_token_at - self.started)

    def _worker_error(self, msg: wire.Error) -> Failure:
        """The failure a worker's Error frame reports."""
        code = msg.code
        text = f"node {self.node} failed request {self.request.request_id!r}: {code}: {msg.message}"
        if code == wire.ERR_BAD_INPUT:
            # The caller's input: never the node's fault, and no other node will like it more.
            return Failure(
                WorkerError(text, code=code, node_caused=False), False, False, answered=True
            )
        node_caused = msg.node_caused or wire.is_node_caused(code)
        if code == wire.ERR_OVERLOADED:
            self._cool(self.node, msg.retry_after)
        if code == wire.ERR_DEADLINE:
            return Failure(DeadlineExceededError(text), node_caused, False, answered=True)
        return Failure(
            WorkerError(text, code=code, node_caused=node_caused), node_caused, True, answered=True
        )

    def _cool(self, node: NodeId, retry_after: float) -> None:
        """Leave an overloaded node alone: for its Retry-After, or a jittered backoff."""
        env = self.env
        loop = env.loop
        assert loop is not None
        streak = env.overloads[node] = env.overloads.get(node, 0) + 1
        if retry_after > 0:
            pause = retry_after
        else:
            step = min(env.config.retry_delay * 2 ** min(streak - 1, 30), MAX_COOLDOWN)
            pause = step * (0.5 + env.rng.random())
        until = loop.time() + pause
        if until > env.cooldown.get(node, 0.0):
            env.cooldown[node] = until

    def _local_error(self, event: Lost, node: NodeId) -> Failure:
        """The failure the gateway observed itself (no frame from the node)."""
        rid = self.request.request_id
        cause = event.cause
        if cause is LostCause.OVERFLOW:
            config = self.env.config
            error: Exception = BackpressureError(
                f"request {rid!r}: reader too slow, more than {config.stream_buffer} "
                f"tokens or {config.stream_buffer_bytes} bytes buffered"
            )
        elif cause is LostCause.DEADLINE:
            error = DeadlineExceededError(f"request {rid!r} exceeded its deadline on node {node}")
        elif cause is LostCause.LAGGING:
            error = DeadlineExceededError(
                f"request {rid!r} exceeded its deadline while its reader lagged behind node {node}"
            )
        elif cause is LostCause.BACKPRESSURE:
            error = BackpressureError(f"request {rid!r}: {event.message}")
        elif cause is LostCause.SHUTDOWN:
            error = NodeUnreachableError(f"request {rid!r}: {event.message}")
        else:  # crash, stall, a failed send: the node's connection or process
            error = NodeUnreachableError(f"request {rid!r} on node {node}: {event.message}")
        return Failure(error, cause.node_caused, cause.retryable, cause.stranded)

    def _may_retry(self) -> bool:
        """Attempts left and time left (the budget is waited for, see :meth:`_wait_for_budget`)."""
        env = self.env
        if env.attempts.pump is None or self.attempts > env.config.max_retries:
            return False
        assert env.loop is not None
        return env.loop.time() < self.deadline

    def _budget_room(self) -> bool:
        """Whether the retry budget has a slot for one more retrying request."""
        config = self.env.config
        counters = self.env.counters
        budget = max(config.retry_budget_min, int(config.retry_budget_ratio * counters.active))
        return counters.retrying < budget

    async def _wait_for_budget(self, error: Exception) -> None:
        """Wait until the retry budget has room, inside the deadline.

        Woken when a retrying request ends; re-checked on a short timer too,
        since the budget also grows with the active load. Raises
        :class:`DeadlineExceededError` (naming ``error``, the last failure)
        when the deadline passes first.
        """
        env = self.env
        loop = env.loop
        assert loop is not None
        waiters = env.budget_waiters
        while not self._budget_room():
            now = loop.time()
            if now >= self.deadline:
                self.lifecycle.to(_S.FAILED)
                raise DeadlineExceededError(
                    f"request {self.request.request_id!r}: deadline passed while waiting for "
                    f"the retry budget after {self.attempts} attempt(s): {error}"
                ) from error
            fut: asyncio.Future[None] = loop.create_future()
            waiters.append(fut)
            timer = loop.call_at(min(self.deadline, now + 0.05), _resolve, fut)
            try:
                await fut
            finally:
                timer.cancel()
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)

    def _final_error(self, error: Exception) -> Exception:
        """The error a caller sees: past the commit point, an explicit stream interruption."""
        # Backpressure is the reader's own doing, not the node's: it stays typed as such.
        if (
            self.stream
            and self.next_index > 0
            and not isinstance(error, (StreamInterruptedError, BackpressureError))
        ):
            out = StreamInterruptedError(
                f"stream {self.request.request_id!r} interrupted after {self.next_index} tokens: "
                f"{self.last_error or error}"
            )
            out.__cause__ = error
            return out
        if isinstance(error, NoCapacityError) and self.last_error is not None:
            # Every node was tried: report why the last one failed, not "no capacity".
            return self.last_error
        return error
